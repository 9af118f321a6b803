//! Whole exports through the pipeline, compared field by field with the sim's ground truth.

use std::{collections::BTreeSet, io::Read};

use auth0_sim::Faults;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn whole_export_equals_ground_truth_and_pages_cleanly() {
    let app = spawn_app_with(sim_config(150), 500.0).await;
    let id = app.create_export(json!({"enrich": all_enrichments()})).await;
    let export = app.wait_for(&id, "completed").await;
    assert_eq!(export["stage"], "finished");
    assert_eq!(export["progress"]["users_total"], 150);
    assert_eq!(export["progress"]["users_enriched"], 150);
    assert_eq!(export["progress"]["percent"], 100.0);
    assert_eq!(export["progress"]["auth0_job_percent_done"], 100);
    assert_eq!(export["stats"]["roles_strategy"], "by_role");
    assert!(export["auth0_job_id"].as_str().unwrap().starts_with("job_"));

    let truth = app.sim.truth();
    // An odd page size: the last page is partial, every boundary is crossed.
    let served = app.all_profiles(&id, "", 37).await;
    assert_profiles_equal(&served, &truth);

    // One profile by its percent-encoded id.
    let samlp = truth.iter().find(|t| t["user_id"].as_str().unwrap().starts_with("samlp|")).expect("a SAML user");
    let encoded = samlp["user_id"].as_str().unwrap().replace('|', "%7C").replace('@', "%40");
    assert_eq!(&app.get_json(&format!("/v1/exports/{id}/profiles/{encoded}")).await, samlp);

    // Calls: one per user per MFA enrichment, a few for roles, the job and the token.
    let stats = app.sim.stats();
    assert_eq!(stats.rate_limited, 0);
    let per_user = stats.by_endpoint.iter().filter(|(k, _)| k.contains("/users/{id}/")).map(|(_, v)| v).sum::<u64>();
    assert_eq!(per_user, 150 * 3, "no per-user roles calls when enumerating by role");
    assert!(export["stats"]["api_calls"].as_u64().unwrap() >= stats.api_calls);
}

#[tokio::test]
async fn filters_match_the_ground_truth() {
    let app = spawn_app_with(sim_config(200), 500.0).await;
    let id = app.create_export(json!({"enrich": all_enrichments()})).await;
    app.wait_for(&id, "completed").await;
    let truth = app.sim.truth();
    let ids =
        |profiles: &[Value]| profiles.iter().map(|p| p["user_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();

    // A role name with a space or non-ASCII letters, percent-encoded in the query.
    let role = truth
        .iter()
        .flat_map(|t| t["roles"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()))
        .find(|n| n.contains(' ') || !n.is_ascii())
        .expect("a role name with a space or unicode");
    let encoded: String = role.bytes().map(|b| format!("%{b:02X}")).collect();
    let with_role = app.all_profiles(&id, &format!("&role={encoded}"), 10).await;
    let expected: Vec<_> = truth
        .iter()
        .filter(|t| t["roles"].as_array().unwrap().iter().any(|r| r["name"] == role.as_str()))
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(ids(&with_role), ids(&expected));

    for has in [true, false] {
        let served = app.all_profiles(&id, &format!("&has_mfa={has}"), 50).await;
        let expected: Vec<_> = truth.iter().filter(|t| truth_has_mfa(t) == has).cloned().collect();
        assert!(!expected.is_empty());
        assert_eq!(ids(&served), ids(&expected), "has_mfa={has}");
    }

    let served = app.all_profiles(&id, "&connection=google-oauth2", 50).await;
    let expected: Vec<_> =
        truth.iter().filter(|t| t["identities"][0]["connection"] == "google-oauth2").cloned().collect();
    assert!(!expected.is_empty());
    assert_eq!(ids(&served), ids(&expected));

    let with_email = truth.iter().find(|t| t["email"].is_string()).unwrap();
    let email: String = with_email["email"].as_str().unwrap().bytes().map(|b| format!("%{b:02X}")).collect();
    let served = app.all_profiles(&id, &format!("&email={email}&has_mfa={}", truth_has_mfa(with_email)), 10).await;
    assert_eq!(served, vec![with_email.clone()]);
}

#[tokio::test]
async fn downloads_stream_every_format() {
    let app = spawn_app_with(sim_config(80), 500.0).await;
    let id = app.create_export(json!({"enrich": {"roles": true, "authentication_methods": true}})).await;
    app.wait_for(&id, "completed").await;
    let truth = expected(&app.sim.truth(), &["roles", "authentication_methods"]);

    let ndjson = app.get(&format!("/v1/exports/{id}/download"), READ_TOKEN).await.text().await.unwrap();
    let lines: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_profiles_equal(&lines, &truth);

    let array: Vec<Value> =
        app.get(&format!("/v1/exports/{id}/download?format=json"), READ_TOKEN).await.json().await.unwrap();
    assert_profiles_equal(&array, &truth);

    let gz = app
        .http
        .get(app.url(&format!("/v1/exports/{id}/download?format=csv")))
        .bearer_auth(READ_TOKEN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let bytes = gz.bytes().await.unwrap();
    let mut csv_text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut csv_text).unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[0], "user_id");
    assert!(header.contains(&"roles".to_owned()) && header.contains(&"user_metadata".to_owned()));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), truth.len());
    let meta = header.iter().position(|h| h == "user_metadata").unwrap();
    for (row, t) in rows.iter().zip(&truth) {
        assert_eq!(&row[0], t["user_id"].as_str().unwrap());
        // Quotes, commas and newlines inside metadata survive the round trip.
        let cell: Value = if row[meta].is_empty() { Value::Null } else { serde_json::from_str(&row[meta]).unwrap() };
        assert_eq!(cell, t.get("user_metadata").cloned().unwrap_or(Value::Null));
    }
}

#[tokio::test]
async fn field_subset_and_connection_and_limit_reach_auth0() {
    let app = spawn_app_with(sim_config(120), 500.0).await;
    let (con_id, con_name) = app.sim.connections().into_iter().find(|(_, n)| n == "google-oauth2").unwrap();
    let id = app
        .create_export(json!({"connection_id": con_id, "limit": 7, "fields": ["email", "identities"], "enrich": {"roles": true, "authentication_methods": false}}))
        .await;
    let export = app.wait_for(&id, "completed").await;
    assert_eq!(export["request"]["fields"], json!(["user_id", "email", "identities"]));
    let served = app.all_profiles(&id, "", 100).await;
    assert_eq!(served.len(), 7);
    for p in &served {
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(keys.is_subset(&BTreeSet::from(["user_id", "email", "identities", "roles"])), "{keys:?}");
        assert_eq!(p["identities"][0]["connection"], con_name.as_str());
        let truth = app.sim.truth().into_iter().find(|t| t["user_id"] == p["user_id"]).unwrap();
        assert_eq!(p["roles"], truth["roles"]);
    }
    // Seven users and eight roles: per-user role calls are cheaper than enumerating.
    assert_eq!(export["stats"]["roles_strategy"], "per_user");
}

#[tokio::test]
async fn expired_links_and_cut_downloads_are_retried() {
    let app = spawn_app_with(sim_config(300), 500.0).await;
    app.sim.set_faults(Faults { expire_downloads: 1, cut_downloads: 2, ..Faults::default() });
    let id = app.create_export(json!({"enrich": {"roles": true, "authentication_methods": true}})).await;
    let export = app.wait_for(&id, "completed").await;
    assert!(export["stats"]["retries"].as_u64().unwrap() >= 3, "{export}");
    assert!(app.sim.stats().downloads >= 4);
    let served = app.all_profiles(&id, "", 100).await;
    assert_profiles_equal(&served, &expected(&app.sim.truth(), &["roles", "authentication_methods"]));
    assert_eq!(app.sim.stats().jobs_created, 1);
    report(
        "1 expired link + 2 cut downloads",
        &[("auth0_jobs", "1".into()), ("downloads", app.sim.stats().downloads.to_string()), ("wrong", "0".into())],
    );
}

#[tokio::test]
async fn server_errors_429s_and_revoked_tokens_are_survived() {
    let mut sim = sim_config(150);
    // The tenant allows far less than the service is configured for: 429s must be honoured.
    sim.rate = 40.0;
    sim.burst = 5;
    sim.faults = Faults { error_rate: 0.10, ..Faults::default() };
    let app = spawn_app_with(sim, 400.0).await;
    let id = app
        .create_export(json!({"enrich": {"roles": true, "authentication_methods": true, "enrollments": true}}))
        .await;
    app.wait_until(&id, "enrichment under way", |e| e["progress"]["users_enriched"].as_u64().unwrap_or(0) > 10).await;
    app.sim.revoke_tokens();
    let export = app.wait_for(&id, "completed").await;
    let stats = app.sim.stats();
    assert!(stats.rate_limited > 0 && stats.faults_injected > 0, "{stats:?}");
    assert!(stats.token_requests >= 2, "a revoked token is refreshed");
    assert!(export["stats"]["rate_limited"].as_u64().unwrap() > 0);
    assert!(export["stats"]["retries"].as_u64().unwrap() > 0);
    let served = app.all_profiles(&id, "", 100).await;
    assert_profiles_equal(&served, &expected(&app.sim.truth(), &["roles", "authentication_methods", "enrollments"]));
    assert_eq!(stats.jobs_created, 1);
    report(
        "10 % 5xx + 429s + revoked token",
        &[
            ("faults", stats.faults_injected.to_string()),
            ("rate_limited", stats.rate_limited.to_string()),
            ("auth0_jobs", stats.jobs_created.to_string()),
            ("repeated_user_calls", stats.repeated_user_calls.to_string()),
            ("wrong", "0".into()),
        ],
    );
}

#[tokio::test]
async fn a_user_deleted_before_enrichment_keeps_its_fields() {
    let mut sim = sim_config(60);
    sim.rate = 20.0;
    sim.burst = 20;
    let app = spawn_app_with(sim, 20.0).await;
    let truth = app.sim.truth();
    let last = truth.last().unwrap().clone();
    let id = app.create_export(json!({"enrich": {"roles": false, "authentication_methods": true}})).await;
    app.wait_until(&id, "enriching", |e| e["stage"] == "enriching").await;
    assert!(app.sim.delete_user(last["user_id"].as_str().unwrap()));
    app.wait_for(&id, "completed").await;
    let user = last["user_id"].as_str().unwrap().replace('|', "%7C").replace('@', "%40");
    let served = app.get_json(&format!("/v1/exports/{id}/profiles/{user}")).await;
    assert_eq!(served["enrichment_error"], "user_not_found");
    assert_eq!(served["email"], last["email"]);
    assert_eq!(served["authentication_methods"], json!([]), "a deleted user has no factors left");
    let with_mfa = app.all_profiles(&id, "&has_mfa=false", 100).await;
    assert!(with_mfa.iter().any(|p| p["user_id"] == last["user_id"]));
}

#[tokio::test]
async fn progress_reports_an_eta_while_enriching() {
    let mut sim = sim_config(200);
    sim.rate = 50.0;
    sim.burst = 50;
    let app = spawn_app_with(sim, 50.0).await;
    let id = app.create_export(json!({})).await;
    let export = app
        .wait_until(&id, "enrichment progress", |e| e["progress"]["users_enriched"].as_u64().unwrap_or(0) >= 30)
        .await;
    let eta = export["progress"]["eta_seconds"].as_f64().expect("an ETA while enriching");
    // 170 users left at 50 calls/s is about 3.4 s; allow for the measured pace.
    assert!(eta > 0.5 && eta < 15.0, "eta {eta}");
    let percent = export["progress"]["percent"].as_f64().unwrap();
    assert!(percent > 10.0 && percent < 100.0);
    let done = app.wait_for(&id, "completed").await;
    assert_eq!(done["progress"]["eta_seconds"], 0.0);
}

#[tokio::test]
async fn wrong_credentials_fail_the_export_with_a_clear_message() {
    let mut sim = sim_config(10);
    sim.client_secret = "rotated-secret".into();
    let app = spawn_app_with(sim, 500.0).await;
    let id = app.create_export(json!({})).await;
    let export = app.wait_for(&id, "failed").await;
    let message = export["error"]["message"].as_str().unwrap();
    assert!(message.contains("token") && message.contains("401"), "{message}");
    assert!(!message.contains("sim-secret"), "no secret in errors");
    assert_eq!(export["error"]["stage"], "creating_job");
    assert!(export["finished_at"].is_string());
}

#[tokio::test]
async fn enumerating_roles_stops_when_per_user_calls_are_cheaper() {
    let app = spawn_app_with(sim_config(2000), 1000.0).await;
    // 12 users but 8 roles with thousands of memberships: enumeration would cost more than 12 calls.
    let id = app.create_export(json!({"limit": 12, "enrich": {"roles": true, "authentication_methods": false}})).await;
    let export = app.wait_for(&id, "completed").await;
    assert_eq!(export["stats"]["roles_strategy"], "per_user");
    let stats = app.sim.stats();
    let member_pages = stats.by_endpoint["GET /api/v2/roles/{id}/users"];
    let per_user = stats.by_endpoint["GET /api/v2/users/{id}/roles"];
    assert!(member_pages <= 12 && per_user == 12, "{member_pages} member pages, {per_user} per-user calls");
    let truth = app.sim.truth();
    for p in app.all_profiles(&id, "", 100).await {
        let t = truth.iter().find(|t| t["user_id"] == p["user_id"]).unwrap();
        assert_eq!(p["roles"], t["roles"], "{}", p["user_id"]);
    }
}
