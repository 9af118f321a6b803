//! Incremental exports: built on a completed export, complete on their own, refetching MFA only
//! for users the tenant logs (or the export) say may have changed; and falling back to a full
//! run, saying why, whenever that cannot be trusted.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::*;

const ENRICH: [&str; 2] = ["roles", "authentication_methods"];

/// Every profile of a completed export, from its NDJSON download, by user id.
async fn download(app: &TestApp, id: &str) -> Vec<(String, Exact)> {
    let text = app.get(&format!("/v1/exports/{id}/download"), READ_TOKEN).await.text().await.unwrap();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["user_id"].as_str().unwrap().to_owned(), exact(line))
        })
        .collect()
}

/// The user ids of every change of `kind`, walked page by page.
async fn changes(app: &TestApp, id: &str, kind: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/exports/{id}/changes?kind={kind}&limit=7");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get_json(&path).await;
        for change in page["data"].as_array().unwrap() {
            assert_eq!(change["kind"], kind);
            assert_eq!(change["profile"]["user_id"], change["user_id"]);
            assert!(out.insert(change["user_id"].as_str().unwrap().to_owned()), "a change listed twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test]
async fn an_incremental_export_equals_a_full_one_and_lists_exactly_what_changed() {
    let app = spawn_app_with(sim_config(300), 2000.0).await;
    let first = app.create_export(json!({})).await;
    let first = app.wait_for(&first, "completed").await;
    let full_calls = first["stats"]["api_calls"].as_i64().unwrap();

    let mutations = app.sim.mutate_random(0.1, 7);
    assert!(
        !mutations.added.is_empty() && !mutations.deleted.is_empty() && !mutations.mfa_changed.is_empty(),
        "{:?} {:?} {:?}",
        mutations.added,
        mutations.deleted,
        mutations.mfa_changed
    );
    let deleted_before: Vec<(String, Exact)> = download(&app, first["id"].as_str().unwrap())
        .await
        .into_iter()
        .filter(|(u, _)| mutations.deleted.contains(u))
        .collect();

    let incremental = app.create_export(json!({"base": "latest"})).await;
    let incremental = app.wait_for(&incremental, "completed").await;
    let id = incremental["id"].as_str().unwrap().to_owned();
    assert_eq!(incremental["incremental"]["base"], first["id"]);
    assert_eq!(incremental["incremental"]["mode"], "incremental", "{incremental}");
    let full = app.create_export(json!({})).await;
    app.wait_for(&full, "completed").await;

    // Complete on its own: profile for profile what a full export of the same moment holds, and
    // what the tenant holds.
    let served = download(&app, &id).await;
    assert_eq!(served, download(&app, &full).await);
    assert_eq!(served, exact_truth(&app.sim, &ENRICH));

    // The change lists are exact, and deleted users keep their last known profile.
    assert_eq!(changes(&app, &id, "added").await, set(&mutations.added));
    assert_eq!(changes(&app, &id, "deleted").await, set(&mutations.deleted));
    let changed: BTreeSet<String> = [&mutations.fields_changed, &mutations.mfa_changed, &mutations.roles_changed]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    assert_eq!(changes(&app, &id, "changed").await, changed);
    // Read as text: every digit of the stored document must be served.
    #[derive(serde::Deserialize)]
    struct Change {
        user_id: String,
        profile: Box<serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Changes {
        data: Vec<Change>,
    }
    let text = app.get(&format!("/v1/exports/{id}/changes?kind=deleted&limit=1000"), READ_TOKEN).await.text().await;
    let page: Changes = serde_json::from_str(&text.unwrap()).unwrap();
    assert_eq!(page.data.len(), mutations.deleted.len());
    for change in page.data {
        let before = &deleted_before.iter().find(|(u, _)| *u == change.user_id).unwrap().1;
        assert_eq!(&exact(change.profile.get()), before, "{}'s last known profile", change.user_id);
    }
    assert_eq!(incremental["incremental"]["users_added"], mutations.added.len());
    assert_eq!(incremental["incremental"]["users_deleted"], mutations.deleted.len());
    assert_eq!(incremental["incremental"]["users_changed"], changed.len());

    // Only users who may have changed were fetched again: far fewer calls than a full export.
    let refetched = incremental["incremental"]["mfa_refetched"].as_i64().unwrap();
    let may_have_changed = (mutations.added.len() + mutations.mfa_changed.len()) as i64;
    assert!(refetched >= may_have_changed && refetched < 300 / 4, "{refetched} refetched");
    let calls = incremental["stats"]["api_calls"].as_i64().unwrap();
    assert!(calls * 3 < full_calls, "{calls} calls against {full_calls} for a full export");
    assert!(incremental["stats"]["calls_saved"].as_i64().unwrap() > 200);
}

#[tokio::test]
async fn untraceable_changes_fall_back_to_a_full_run_with_the_reason() {
    let app = spawn_app_with(sim_config(60), 2000.0).await;
    let base = app.create_export(json!({})).await;
    app.wait_for(&base, "completed").await;

    // A tenant-wide MFA setting changes every user's factors at once.
    app.sim.set_mfa_factor("otp", false).unwrap();
    let tenant_wide = app.create_export(json!({"base": base})).await;
    let tenant_wide = app.wait_for(&tenant_wide, "completed").await;
    assert_eq!(tenant_wide["incremental"]["mode"], "full", "{tenant_wide}");
    assert!(tenant_wide["incremental"]["full_reason"].as_str().unwrap().contains("tenant-wide MFA change"));
    assert_eq!(download(&app, tenant_wide["id"].as_str().unwrap()).await, exact_truth(&app.sim, &ENRICH));

    // A checkpoint Auth0 no longer knows (purged early, or from another tenant).
    sqlx::query("UPDATE exports SET log_checkpoint = '90020200101000000000000000000000000000000000000000000001' WHERE id = $1::uuid")
        .bind(&base)
        .execute(&app.pool)
        .await
        .unwrap();
    let rejected = app.create_export(json!({"base": base})).await;
    let rejected = app.wait_for(&rejected, "completed").await;
    assert_eq!(rejected["incremental"]["mode"], "full");
    assert!(rejected["incremental"]["full_reason"].as_str().unwrap().contains("checkpoint was rejected"), "{rejected}");

    // A base older than the tenant's log retention: its checkpoint is gone.
    app.sim.age_logs(2 * 86_400);
    sqlx::query("UPDATE exports SET started_at = now() - interval '2 days', created_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.sim.mutate_random(0.1, 3);
    let old = app.create_export(json!({"base": base})).await;
    let old = app.wait_for(&old, "completed").await;
    assert_eq!(old["incremental"]["mode"], "full");
    assert!(old["incremental"]["full_reason"].as_str().unwrap().contains("log retention"), "{old}");
    assert_eq!(download(&app, old["id"].as_str().unwrap()).await, exact_truth(&app.sim, &ENRICH));

    // A bulk import: its users are named nowhere in the logs.
    let latest = old["id"].as_str().unwrap().to_owned();
    app.sim.import_users(3).unwrap();
    let imported = app.create_export(json!({"base": latest})).await;
    let imported = app.wait_for(&imported, "completed").await;
    assert_eq!(imported["incremental"]["mode"], "full");
    assert!(imported["incremental"]["full_reason"].as_str().unwrap().contains("import"), "{imported}");

    // Every user enrolled a factor since: refetching them all costs what a full run does.
    let everyone: Vec<String> = app.sim.truth().iter().map(|u| u["user_id"].as_str().unwrap().to_owned()).collect();
    for user in &everyone {
        app.sim.enroll_mfa(user, "totp", auth0_sim::Via::User).unwrap();
    }
    let latest = imported["id"].as_str().unwrap().to_owned();
    let busy = app.create_export(json!({"base": latest})).await;
    let busy = app.wait_for(&busy, "completed").await;
    assert_eq!(busy["incremental"]["mode"], "full");
    assert!(busy["incremental"]["full_reason"].as_str().unwrap().contains("more users"), "{busy}");
    assert_eq!(download(&app, busy["id"].as_str().unwrap()).await, exact_truth(&app.sim, &ENRICH));

    // A base that cannot serve is refused with the reason; "latest" with none runs in full.
    let resp = app.post("/v1/exports", WRITE_TOKEN, &json!({"base": base, "fields": ["email"]})).await;
    assert_eq!(resp.status(), 409);
    let resp = app.post("/v1/exports", WRITE_TOKEN, &json!({"base": uuid::Uuid::now_v7()})).await;
    assert_eq!(resp.status(), 404);
    let resp = app.post("/v1/exports", WRITE_TOKEN, &json!({"base": "yesterday"})).await;
    assert_eq!(resp.status(), 400);
    let none = app.create_export(json!({"base": "latest", "fields": ["email"]})).await;
    let none = app.wait_for(&none, "completed").await;
    assert_eq!(none["incremental"]["mode"], "full");
    assert!(none["incremental"]["full_reason"].as_str().unwrap().contains("no completed export"));
}
