//! The REST contract's edges: tokens and scopes, bad bodies and parameters, idempotency, cancel.

use serde_json::{json, Value};

use crate::helpers::*;

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(), "{body}");
    body
}

fn names_field(body: &Value, field: &str) -> bool {
    body["errors"].as_array().is_some_and(|errs| errs.iter().any(|e| e["field"] == field))
}

#[tokio::test]
async fn tokens_and_scopes_are_enforced() {
    let app = spawn_app().await;
    let resp = app.http.get(app.url("/v1/exports")).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, 401).await;
    problem(app.get("/v1/exports", "wrong-token").await, 401).await;
    let body = problem(app.post("/v1/exports", READ_TOKEN, &json!({})).await, 403).await;
    assert!(body["detail"].as_str().unwrap().contains("write"));
    assert_eq!(app.get("/v1/exports", READ_TOKEN).await.status(), 200);
    // Operations endpoints are open, as probes and scrapers expect.
    assert_eq!(app.http.get(app.url("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn bad_create_bodies_name_each_field() {
    let app = spawn_app().await;
    let raw = app
        .http
        .post(app.url("/v1/exports"))
        .bearer_auth(WRITE_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(names_field(&problem(raw, 400).await, "body"));

    let cases = [
        (json!([1, 2]), "body"),
        (json!({"limit": 0}), "limit"),
        (json!({"limit": "ten"}), "limit"),
        (json!({"tenant": "other"}), "tenant"),
        (json!({"connection_id": "con_short"}), "connection_id"),
        (json!({"fields": []}), "fields"),
        (json!({"fields": ["email", "blocked_for"]}), "fields[1]"),
        (json!({"fields": "email"}), "fields"),
        (json!({"enrich": {"roles": "yes"}}), "enrich.roles"),
        (json!({"enrich": {"groups": true}}), "enrich.groups"),
        (json!({"format": "csv"}), "format"),
    ];
    for (body, field) in cases {
        let p = problem(app.post("/v1/exports", WRITE_TOKEN, &body).await, 400).await;
        assert!(names_field(&p, field), "{body} should name {field}: {p}");
    }
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM exports").fetch_one(&app.pool).await.unwrap();
    assert_eq!(none, 0, "no export is created by a bad request");
}

#[tokio::test]
async fn bad_parameters_and_ids_are_4xx() {
    let app = spawn_app().await;
    let id = app.create_export(json!({"enrich": {"roles": true, "authentication_methods": false}})).await;
    for (path, field) in [
        ("/v1/exports?limit=0".to_owned(), "limit"),
        ("/v1/exports?limit=1001".to_owned(), "limit"),
        ("/v1/exports?cursor=bm9wZQ".to_owned(), "cursor"),
        ("/v1/exports?status=done".to_owned(), "status"),
        ("/v1/exports?colour=red".to_owned(), "colour"),
        (format!("/v1/exports/{id}/profiles?limit=abc"), "limit"),
        (format!("/v1/exports/{id}/profiles?cursor=%%%"), "cursor"),
        (format!("/v1/exports/{id}/profiles?cursor=eyJ2IjoxfQ"), "cursor"),
        (format!("/v1/exports/{id}/profiles?has_mfa=yes"), "has_mfa"),
        // This export fetched no MFA data, so the filter cannot be answered.
        (format!("/v1/exports/{id}/profiles?has_mfa=true"), "has_mfa"),
        (format!("/v1/exports/{id}/download?format=xml"), "format"),
        ("/v1/exports/not-a-uuid".to_owned(), "id"),
    ] {
        let p = problem(app.get(&path, READ_TOKEN).await, 400).await;
        assert!(names_field(&p, field), "{path} should name {field}: {p}");
    }
    let missing = "/v1/exports/01900000-0000-7000-8000-000000000000";
    problem(app.get(missing, READ_TOKEN).await, 404).await;
    problem(app.get(&format!("/v1/exports/{id}/profiles/auth0%7Cnobody"), READ_TOKEN).await, 404).await;
    problem(app.get("/v2/nothing", READ_TOKEN).await, 404).await;
}

#[tokio::test]
async fn idempotency_key_replays_or_conflicts() {
    let app = spawn_app().await;
    let send = |key: &'static str, body: Value| {
        app.http.post(app.url("/v1/exports")).bearer_auth(WRITE_TOKEN).header("idempotency-key", key).json(&body).send()
    };
    let first: Value = send("k1", json!({"limit": 5})).await.unwrap().json().await.unwrap();
    let again = send("k1", json!({"limit": 5})).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let p = problem(send("k1", json!({"limit": 6})).await.unwrap(), 409).await;
    assert!(p["detail"].as_str().unwrap().contains("Idempotency-Key"));
    let other: Value = send("k2", json!({"limit": 5})).await.unwrap().json().await.unwrap();
    assert_ne!(first["id"], other["id"]);
}

#[tokio::test]
async fn exports_list_newest_first_with_filters_and_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_export(json!({"limit": 3})).await);
    }
    let first = app.get_json("/v1/exports?limit=2").await;
    let second = app.get_json(&format!("/v1/exports?limit=2&cursor={}", first["next_cursor"].as_str().unwrap())).await;
    let third = app.get_json(&format!("/v1/exports?limit=2&cursor={}", second["next_cursor"].as_str().unwrap())).await;
    assert!(third["next_cursor"].is_null());
    let listed: Vec<&str> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()))
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let by_tenant = app.get_json("/v1/exports?tenant=sim&limit=100").await;
    assert_eq!(by_tenant["data"].as_array().unwrap().len(), 5);
    let none = app.get_json("/v1/exports?tenant=elsewhere").await;
    assert!(none["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn cancel_stops_an_export_and_refuses_twice() {
    let mut sim = sim_config(50);
    sim.job_base = std::time::Duration::from_secs(30);
    let app = spawn_app_with(sim, 500.0).await;
    let id = app.create_export(json!({})).await;
    app.wait_until(&id, "waiting for the Auth0 job", |e| e["stage"] == "waiting_for_job").await;
    let resp = app.post(&format!("/v1/exports/{id}/cancel"), WRITE_TOKEN, &json!({})).await;
    assert_eq!(resp.status(), 202);
    let export = app.wait_for(&id, "cancelled").await;
    assert!(export["finished_at"].is_string());
    problem(app.post(&format!("/v1/exports/{id}/cancel"), WRITE_TOKEN, &json!({})).await, 409).await;
    problem(app.get(&format!("/v1/exports/{id}/download"), READ_TOKEN).await, 409).await;
    let live: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT kind, state, attempt FROM queue_jobs WHERE state IN ('available','running','retryable')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(live.is_empty(), "no job of a cancelled export stays queued: {live:?}");
}

#[tokio::test]
async fn openapi_and_metrics_describe_the_service() {
    let app = spawn_app().await;
    let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/exports",
        "/v1/exports/{id}",
        "/v1/exports/{id}/cancel",
        "/v1/exports/{id}/profiles",
        "/v1/exports/{id}/profiles/{user_id}",
        "/v1/exports/{id}/download",
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
        // Every error is a problem document; every route documents the 503 a database outage or
        // a timeout gives, and secured routes their 401.
        for (method, op) in doc["paths"][path].as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("503"), "{method} {path}: 503 undocumented");
            assert_eq!(responses["503"]["headers"]["Retry-After"]["required"], true);
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                assert!(responses.contains_key("401"), "{method} {path}: 401 undocumented");
            }
            for (status, response) in responses {
                if status.as_str() >= "400" {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
        }
    }
    // The create body carries each field's bounds, as its validation enforces them.
    let body = &doc["paths"]["/v1/exports"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["additionalProperties"], false);
    assert_eq!(body["properties"]["tenant"]["enum"], json!(["sim", null]));
    assert_eq!(body["properties"]["limit"]["minimum"], 1);
    assert_eq!(body["properties"]["fields"]["maxItems"], 100);
    assert_eq!(body["properties"]["fields"]["items"]["not"]["enum"][0], "blocked_for");
    assert_eq!(body["properties"]["enrich"]["additionalProperties"], false);
    let list = doc["paths"]["/v1/exports"]["get"]["parameters"].as_array().unwrap();
    let status = list.iter().find(|p| p["name"] == "status").unwrap();
    assert_eq!(status["schema"]["enum"].as_array().unwrap().len(), 5);
    let page = doc["paths"]["/v1/exports/{id}/profiles"]["get"].clone();
    assert!(page["responses"]["304"]["headers"]["ETag"].is_object());
    assert!(page["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "If-None-Match"));

    let id = app.create_export(json!({"limit": 10})).await;
    app.wait_for(&id, "completed").await;
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for family in [
        "exporter_exports_total{status=\"completed\"}",
        "exporter_exports{status=\"completed\"}",
        "exporter_stage_duration_seconds_bucket{stage=\"downloading\"",
        "exporter_auth0_requests_total{endpoint=\"GET /api/v2/users/{id}/authentication-methods\",status=\"200\"}",
        "exporter_auth0_rate_limited_total",
        "exporter_rate_limiter_wait_seconds_total",
        "exporter_queue_depth",
        "exporter_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/exports/{id}\",status=\"200\"",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
    assert!(!text.contains("auth0|"), "no user id in metric labels");
}

#[tokio::test]
async fn readiness_fails_while_draining() {
    let sim = std::sync::Arc::new(auth0_sim::Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let url = fresh_database().await;
    let app = spawn_with_settings(
        sim,
        |sim| {
            let mut s = settings(sim, &url, 100.0);
            s.worker.drain_secs = 3;
            s
        },
        auth0_exporter::app::Role::All,
    )
    .await;
    assert_eq!(app.http.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    problem(app.http.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    assert_eq!(app.http.get(app.url("/livez")).send().await.unwrap().status(), 200, "still alive while draining");
}

#[tokio::test]
async fn hostile_input_gets_problem_documents_not_5xx() {
    let app = spawn_app().await;
    let id = app
        .create_export(json!({"fields": ["email"], "enrich": {"roles": false, "authentication_methods": true}}))
        .await;
    for (path, status, field) in [
        (format!("/v1/exports/{id}/profiles?email=a%00b"), 400, Some("email")),
        (format!("/v1/exports/{id}/profiles/auth0%7C%00x"), 400, Some("user_id")),
        (format!("/v1/exports/{id}/profiles/%FF%FE"), 400, Some("path")),
        // The export did not export identities, and fetched no roles: those filters cannot answer.
        (format!("/v1/exports/{id}/profiles?connection=google-oauth2"), 400, Some("connection")),
        (format!("/v1/exports/{id}/profiles?role=admin"), 400, Some("role")),
    ] {
        let p = problem(app.get(&path, READ_TOKEN).await, status).await;
        if let Some(field) = field {
            assert!(names_field(&p, field), "{path} should name {field}: {p}");
        }
    }
    let put = app.http.put(app.url("/v1/exports")).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    problem(put, 405).await;
    let huge = format!("{{\"fields\": [\"{}\"]}}", "a".repeat(3 * 1024 * 1024));
    let resp = app
        .http
        .post(app.url("/v1/exports"))
        .bearer_auth(WRITE_TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    problem(resp, 413).await;
}
