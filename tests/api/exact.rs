//! Exactness: every served document equals, as a JSON value with every digit and escape, the line
//! Auth0 (the sim) exported, through pages, single profiles and every download format. And a
//! database from the previous schema upgrades in place and still serves its profiles.

use std::path::Path;

use serde_json::{json, value::RawValue};
use sqlx::PgPool;

use crate::helpers::*;

const ALL: [&str; 4] = ["roles", "authentication_methods", "authenticators", "enrollments"];

#[derive(serde::Deserialize)]
struct Page {
    data: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

#[tokio::test]
async fn nasty_documents_round_trip_exactly_through_every_read_path() {
    let app = spawn_app_with(sim_config(150), 500.0).await;
    let truth = exact_truth(&app.sim, &ALL);
    let lines = app.sim.truth_lines();
    // The data really is nasty, so this test cannot pass on tame documents.
    for (shape, needle) in [
        ("escaped backslash before u0000", r#"\\u0000"#),
        ("a real U+0000", r#"\u0000"#),
        ("a surrogate pair", r#"\ud83d\ude00"#),
        ("an escaped slash", r#"\/"#),
        ("an integer past 2^64", "123456789012345678901234567890"),
        ("an empty key", r#""":"#),
    ] {
        assert!(lines.iter().any(|l| l.contains(needle)), "no user holds {shape}");
    }
    assert!(lines.iter().any(|l| l.len() > 60_000), "no very long document");

    let id = app.create_export(json!({"enrich": all_enrichments()})).await;
    app.wait_for(&id, "completed").await;

    // Pages, with an odd size so every boundary is crossed.
    let mut served = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/exports/{id}/profiles?limit=37");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Page = serde_json::from_str(&app.get(&path, READ_TOKEN).await.text().await.unwrap()).unwrap();
        served.extend(page.data.iter().map(|d| exact(d.get())));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(served.len(), truth.len());
    for (s, (user, t)) in served.iter().zip(&truth) {
        assert_eq!(s, t, "page profile {user} differs from what the sim exported");
    }

    // Single profiles of the nastiest users.
    let nasty: Vec<&(String, Exact)> =
        truth.iter().zip(&lines).filter(|(_, l)| l.contains(r#"\u0000"#) || l.len() > 60_000).map(|(t, _)| t).collect();
    assert!(!nasty.is_empty());
    for (user, t) in nasty {
        let encoded: String = url_encode(user);
        let text = app.get(&format!("/v1/exports/{id}/profiles/{encoded}"), READ_TOKEN).await.text().await.unwrap();
        assert_eq!(&exact(&text), t, "single profile {user}");
    }

    // NDJSON and JSON downloads.
    let ndjson = app.get(&format!("/v1/exports/{id}/download"), READ_TOKEN).await.text().await.unwrap();
    let from_ndjson: Vec<Exact> = ndjson.lines().map(exact).collect();
    assert_eq!(from_ndjson.len(), truth.len());
    for (s, (user, t)) in from_ndjson.iter().zip(&truth) {
        assert_eq!(s, t, "NDJSON line {user}");
    }
    let array = app.get(&format!("/v1/exports/{id}/download?format=json"), READ_TOKEN).await.text().await.unwrap();
    let Exact::Arr(from_json) = exact(&array) else { panic!("a JSON array") };
    assert_eq!(from_json.len(), truth.len());
    for (s, (user, t)) in from_json.iter().zip(&truth) {
        assert_eq!(s, t, "JSON element {user}");
    }

    // CSV: strings decoded, everything else in its exported spelling, every digit kept.
    let csv_text = app.get(&format!("/v1/exports/{id}/download?format=csv"), READ_TOKEN).await.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), truth.len());
    let (mut checked, mut neutralised) = (0, 0);
    for (row, (user, t)) in rows.iter().zip(&truth) {
        let Exact::Obj(obj) = t else { unreachable!() };
        for (column, cell) in header.iter().zip(row.iter()) {
            match obj.get(column.as_str()) {
                None | Some(Exact::Null) => assert_eq!(cell, "", "{user}.{column}"),
                Some(Exact::Str(s)) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && !is_number(s) => {
                    // A spreadsheet would run it as a formula: the cell is the text behind a `'`.
                    assert_eq!(cell, format!("'{s}"), "{user}.{column} neutralised");
                    neutralised += 1;
                }
                Some(Exact::Str(s)) => assert_eq!(cell, s, "{user}.{column}"),
                Some(Exact::Num(n)) => assert_eq!(cell, n, "{user}.{column} keeps every digit"),
                Some(value) => assert_eq!(&exact(cell), value, "{user}.{column}"),
            }
            checked += 1;
        }
    }
    assert!(checked > truth.len() * 20, "{checked} cells checked");
    // Every formula-like name of the sim (and its phone numbers) was met.
    assert!(neutralised >= 6, "{neutralised} formula-like cells");
}

/// `+15550100`, `-1.5e3`: text a spreadsheet reads as a number, never as a formula.
fn is_number(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) && s.parse::<f64>().is_ok()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the migrations up to and including version `last`: the schema a field database holds.
pub async fn migrate_through(pool: &PgPool, last: &str) {
    let dir = std::env::temp_dir().join(format!("migrations-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut copied = 0;
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.split('_').next().unwrap() <= last {
            std::fs::copy(&path, dir.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 0, "no migration up to {last}");
    sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap().run(pool).await.unwrap();
}

/// A database that ran only the first migration (jsonb `doc`, attempts as the failure budget)
/// upgrades in place: old profiles are still served and old queue jobs still run.
#[tokio::test]
async fn the_previous_schema_upgrades_in_place() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    migrate_through(&pool, "20261128000001").await;

    // An export completed by the previous release: its document lives in jsonb `doc`.
    let export = uuid::Uuid::now_v7();
    let request = json!({"tenant": "sim", "connection_id": null, "limit": null, "fields": ["user_id", "email"],
                         "enrich": {"roles": true, "authentication_methods": false, "authenticators": false, "enrollments": false}});
    sqlx::query(
        "INSERT INTO exports (id, tenant, request, request_hash, status, stage, users_total, finished_at)
         VALUES ($1, 'sim', $2, 'h', 'completed', 'finished', 1, now())",
    )
    .bind(export)
    .bind(&request)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO profiles (export_id, user_id, doc, email, roles, role_names, enriched_at)
         VALUES ($1, 'auth0|old', '{\"user_id\": \"auth0|old\", \"email\": \"old@example.com\", \"n\": 12345678901234567890}',
                 'old@example.com', '[{\"id\": \"rol_1\", \"name\": \"Old\", \"description\": null}]', '{Old}', now())",
    )
    .bind(export)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // The new release migrates at start and serves the old row.
    let sim = std::sync::Arc::new(
        auth0_sim::Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.expect("sim starts"),
    );
    let app = spawn_replica(sim, &url, 500.0, auth0_exporter::app::Role::All).await;
    let served = app.get(&format!("/v1/exports/{export}/profiles?role=Old"), READ_TOKEN).await.text().await.unwrap();
    let page: Page = serde_json::from_str(&served).unwrap();
    assert_eq!(page.data.len(), 1);
    assert_eq!(
        exact(page.data[0].get()),
        exact(
            r#"{"user_id":"auth0|old","email":"old@example.com","n":12345678901234567890,
                "roles":[{"id":"rol_1","name":"Old","description":null}]}"#
        )
    );
    // And new exports run on the upgraded schema.
    let id = app.create_export(json!({})).await;
    app.wait_for(&id, "completed").await;
}

/// A database at the schema before memberships stopped cascading from exports upgrades in place:
/// deleting an export answers at once and its role scratch rows are purged off the request, and
/// scratch rows of an export deleted before the upgrade are swept at start.
#[tokio::test]
async fn scratch_rows_of_deleted_exports_are_purged_after_the_upgrade() {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    migrate_through(&pool, "20261130000002").await;
    let request = json!({"tenant": "sim", "connection_id": null, "limit": null, "fields": ["user_id"],
                         "enrich": {"roles": true, "authentication_methods": false, "authenticators": false, "enrollments": false}});
    let (cancelled, gone) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for id in [cancelled, gone] {
        sqlx::query(
            "INSERT INTO exports (id, tenant, request, request_hash, status, stage, finished_at)
             VALUES ($1, 'sim', $2, $3, 'cancelled', 'finished', now())",
        )
        .bind(id)
        .bind(&request)
        .bind(id.to_string())
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO export_roles (export_id, role_id, name) VALUES ($1, 'rol_1', 'Admin')")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO role_members (export_id, role_id, user_id)
             SELECT $1, 'rol_1', 'auth0|' || i FROM generate_series(1, 5000) i",
        )
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The upgrade, then an export deleted behind the service's back (or by a replica that died
    // before purging it): the start-up sweep finds its scratch rows.
    auth0_exporter::db::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query("DELETE FROM exports WHERE id = $1").bind(gone).execute(&pool).await.unwrap();
    pool.close().await;

    let sim = std::sync::Arc::new(
        auth0_sim::Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.expect("sim starts"),
    );
    let app = spawn_replica(sim, &url, 500.0, auth0_exporter::app::Role::All).await;
    let cascades: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid IN ('role_members'::regclass, 'export_roles'::regclass)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cascades, 0, "memberships still cascade from exports");

    let resp =
        app.http.delete(app.url(&format!("/v1/exports/{cancelled}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
            "SELECT export_id, count(*) FROM (SELECT export_id FROM role_members UNION ALL SELECT export_id FROM export_roles) s
              GROUP BY export_id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scratch rows left behind: {left:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
