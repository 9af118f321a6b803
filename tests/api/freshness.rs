//! Always fresh: schedules (one run per due time across replicas, missed runs once, overlaps
//! skipped), signed webhook deliveries (retried, recorded, never lost) and the latest view.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use auth0_exporter::app::Role;
use auth0_sim::Sim;
use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// One delivery as a receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// How a test receiver answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 500 to the first `n` requests, then 204.
    FailFirst(usize),
    /// Holds the first `n` requests longer than the service waits, then answers at once.
    SlowFirst(usize),
    /// Answers every request with a redirect to the receiver on this port.
    RedirectTo(u16),
}

#[derive(Clone)]
struct Receiver {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Received>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let n = {
        let mut seen = r.seen.lock().unwrap();
        seen.push(Received {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        });
        seen.len()
    };
    match r.behaviour {
        Behaviour::FailFirst(k) if n <= k => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Behaviour::SlowFirst(k) if n <= k => {
            tokio::time::sleep(Duration::from_secs(4)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Behaviour::RedirectTo(port) => {
            (StatusCode::TEMPORARY_REDIRECT, [("location", format!("http://127.0.0.1:{port}/hook"))]).into_response()
        }
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A receiver on `addr` (port 0 for any); returns its URL and what it saw.
async fn start_receiver(addr: SocketAddr, behaviour: Behaviour) -> (String, Arc<Mutex<Vec<Received>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().route("/hook", post(receive)).with_state(Receiver { behaviour, seen: seen.clone() });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Verifies a Standard Webhooks signature with ring's HMAC, not the service's code.
fn verify(secret: &str, r: &Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.body);
    r.signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| STANDARD.decode(sig).is_ok_and(|sig| ring::hmac::verify(&key, &signed, &sig).is_ok()))
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str, body: Option<&Value>) -> reqwest::Response {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(WRITE_TOKEN);
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap()
}

async fn create_webhook(app: &TestApp, url: &str, events: &[&str]) -> (String, String) {
    let resp = app.post("/v1/webhooks", WRITE_TOKEN, &json!({ "url": url, "events": events })).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

/// Settings for in-process instances of these tests: fast retries, a short outbound timeout,
/// plain-http receivers.
fn webhook_settings(database_url: &str) -> impl FnOnce(&Sim) -> auth0_exporter::config::Settings + '_ {
    move |sim| {
        let mut s = settings(sim, database_url, 500.0);
        s.webhooks.allow_http = true;
        s.webhooks.retry_base_ms = 100;
        s.webhooks.timeout_secs = 1;
        s.schedules.poll_interval_ms = 100;
        s
    }
}

async fn deliveries(app: &TestApp, webhook: &str) -> Vec<Value> {
    app.get_json(&format!("/v1/webhooks/{webhook}/deliveries?limit=1000")).await["data"].as_array().unwrap().clone()
}

async fn wait_deliveries(app: &TestApp, webhook: &str, n: usize, status: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = deliveries(app, webhook).await;
        if list.len() >= n && list.iter().all(|d| d["status"] == status) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries never all {status}: {list:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn webhooks_survive_failing_and_slow_receivers_and_verify_independently() {
    let sim = Arc::new(Sim::start(sim_config(30), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let app = spawn_with_settings(sim, webhook_settings(&database_url), Role::All).await;

    // An unknown event is a 400 naming it (the rest of validation: schedule_and_webhook_requests_…).
    let resp =
        app.post("/v1/webhooks", WRITE_TOKEN, &json!({ "url": "http://x/h", "events": ["export.exploded"] })).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["errors"][0]["field"], "events[0]");

    let (failing_url, failing_seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::FailFirst(3)).await;
    let (slow_url, slow_seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::SlowFirst(1)).await;
    let (failing, failing_secret) = create_webhook(&app, &failing_url, &["export.completed", "export.cancelled"]).await;
    // Redirects are not followed: the target never hears of the event.
    let (target_url, target_seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::FailFirst(0)).await;
    let target_port: u16 =
        target_url.trim_start_matches("http://127.0.0.1:").trim_end_matches("/hook").parse().unwrap();
    let (redirect_url, _) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::RedirectTo(target_port)).await;
    let (redirecting, _) = create_webhook(&app, &redirect_url, &["export.completed"]).await;
    let (slow, slow_secret) = create_webhook(&app, &slow_url, &["export.completed"]).await;
    // The secret is shown once: never in a read.
    let read = app.get_json(&format!("/v1/webhooks/{failing}")).await;
    assert!(read.get("secret").is_none() && !read.to_string().contains(&failing_secret));

    let export = app.create_export(json!({ "fields": ["user_id", "email"] })).await;
    app.wait_for(&export, "completed").await;

    // The failing receiver: three 500s, then success; four attempts recorded with their codes.
    let list = wait_deliveries(&app, &failing, 1, "succeeded").await;
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(d["event_type"], "export.completed");
    assert_eq!(d["attempts"], 4);
    assert_eq!(d["response_code"], 204);
    let codes: Vec<Value> = d["attempt_log"].as_array().unwrap().iter().map(|a| a["response_code"].clone()).collect();
    assert_eq!(codes, vec![json!(500), json!(500), json!(500), json!(204)]);
    let seen = failing_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| verify(&failing_secret, r)), "every attempt verifies");
    assert!(seen.iter().all(|r| r.id == seen[0].id && r.body == seen[0].body), "same id and body on every try");
    assert_eq!(seen[0].id, d["event_id"].as_str().unwrap());
    assert!(!verify(&slow_secret, &seen[0]), "another endpoint's secret does not verify");

    // The payload: the export's id, tenant, status, counts and links; no profile data.
    let payload: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(payload["type"], "export.completed");
    assert_eq!(payload["data"]["export_id"], export.as_str());
    assert_eq!(payload["data"]["tenant"], "sim");
    assert_eq!(payload["data"]["counts"]["users_total"], 30);
    assert_eq!(payload["data"]["links"]["profiles"], format!("/v1/exports/{export}/profiles"));
    let first_email = app.sim.truth()[0]["email"].as_str().unwrap().to_owned();
    assert!(!String::from_utf8_lossy(&seen[0].body).contains(&first_email), "no profile data in payloads");

    // The slow receiver: the first try times out (1 s), the retry succeeds.
    let list = wait_deliveries(&app, &slow, 1, "succeeded").await;
    let log = list[0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0]["response_code"].is_null() && log[0]["error"].as_str().unwrap().contains("timed out"));
    assert!(log[0]["latency_ms"].as_i64().unwrap() < 3000, "the timeout cut the try short");
    assert!(slow_seen.lock().unwrap().iter().all(|r| verify(&slow_secret, r)));

    // Manual redelivery: same event id, one more verified try.
    let delivery = list[0]["id"].as_str().unwrap();
    let resp =
        send(&app, reqwest::Method::POST, &format!("/v1/webhooks/{slow}/deliveries/{delivery}/redeliver"), None).await;
    assert_eq!(resp.status(), 202);
    let list = wait_deliveries(&app, &slow, 1, "succeeded").await;
    assert_eq!(list[0]["attempts"], 3);
    let seen = slow_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].id, seen[0].id);
    assert!(verify(&slow_secret, &seen[2]));

    let redirected = deliveries(&app, &redirecting).await;
    assert_eq!(redirected.len(), 1);
    assert_eq!(
        (redirected[0]["status"].clone(), redirected[0]["response_code"].clone()),
        (json!("pending"), json!(307))
    );
    assert!(target_seen.lock().unwrap().is_empty(), "a redirect was followed");

    // Tries are counted by outcome, with their latency.
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for family in [
        r#"exporter_webhook_deliveries_total{outcome="retried"}"#,
        r#"exporter_webhook_deliveries_total{outcome="succeeded"}"#,
        r#"exporter_webhook_delivery_duration_seconds_bucket{outcome="succeeded""#,
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }

    // A cancelled export reaches only the endpoint that asked for export.cancelled.
    let cancelled = app.create_export(json!({})).await;
    let resp = app.post(&format!("/v1/exports/{cancelled}/cancel"), WRITE_TOKEN, &json!({})).await;
    assert_eq!(resp.status(), 202);
    let list = wait_deliveries(&app, &failing, 2, "succeeded").await;
    assert_eq!(list[0]["event_type"], "export.cancelled");
    assert_eq!(deliveries(&app, &slow).await.len(), 1);
}

#[tokio::test]
async fn a_delivery_pending_when_the_service_crashes_arrives_after_restart() {
    let _serial = SERIAL.lock().await;
    let sim = Arc::new(Sim::start(sim_config(20), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let api = spawn_with_settings(sim.clone(), webhook_settings(&database_url), Role::Api).await;
    // A port nothing listens on yet: the receiver is down.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = probe.local_addr().unwrap();
    drop(probe);
    let (webhook, secret) = create_webhook(&api, &format!("http://{down_addr}/hook"), &["export.completed"]).await;
    let worker_env = [("WEBHOOK_ALLOW_HTTP", "true"), ("WEBHOOK_TIMEOUT_SECS", "1")];
    let webhook_toml = "[webhooks]\nretry_base_ms = 200\n";
    let mut worker =
        spawn_process_with(&sim.base_url(), &database_url, 500.0, &format!("\n{webhook_toml}"), &worker_env);

    let export = api.create_export(json!({ "fields": ["user_id"] })).await;
    api.wait_for(&export, "completed").await;
    // The receiver is down: tries fail and are recorded, the delivery stays pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = deliveries(&api, &webhook).await;
        if list.first().is_some_and(|d| d["attempts"].as_i64().unwrap() >= 2) {
            assert_eq!(list[0]["status"], "pending");
            assert!(list[0]["next_attempt_at"].is_string());
            assert_eq!(list[0]["error"], "connection failed");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed tries recorded: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The service dies (kill -9) with the delivery pending; the receiver comes up; a new
    // process finds the delivery in the queue and delivers it.
    worker.kill().await.unwrap();
    let (_, seen) = start_receiver(down_addr, Behaviour::FailFirst(0)).await;
    let _worker = spawn_process_with(&sim.base_url(), &database_url, 500.0, &format!("\n{webhook_toml}"), &worker_env);
    let list = wait_deliveries(&api, &webhook, 1, "succeeded").await;
    assert_eq!(list.len(), 1);
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|r| verify(&secret, r)));
    let payload: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(payload["data"]["export_id"], export.as_str());
}

/// Due times of a schedule's runs, and how many exports it started.
async fn runs(pool: &sqlx::PgPool, schedule: Uuid) -> Vec<(chrono::DateTime<chrono::Utc>, String, i32)> {
    sqlx::query_as("SELECT due_at, outcome, missed FROM schedule_runs WHERE schedule_id = $1 ORDER BY due_at")
        .bind(schedule)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn three_replicas_run_a_schedule_once_per_due_time_even_when_one_dies_at_it() {
    let _serial = SERIAL.lock().await;
    let sim = Arc::new(Sim::start(sim_config(10), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let api = spawn_api(sim.clone(), &database_url, 500.0).await;
    let toml = "\n[schedules]\npoll_interval_ms = 50\n";
    // One replica aborts inside the transaction of the first due time it takes.
    let crash = [("EXPORTER_CRASH_AT", "scheduler.before_commit")];
    let mut replicas = vec![
        spawn_process_with(&sim.base_url(), &database_url, 500.0, toml, &crash),
        spawn_process_with(&sim.base_url(), &database_url, 500.0, toml, &[]),
        spawn_process_with(&sim.base_url(), &database_url, 500.0, toml, &[]),
    ];
    let resp = api
        .post("/v1/schedules", WRITE_TOKEN, &json!({ "cron": "*/2 * * * * *", "timezone": "Europe/Berlin",
                                                     "export": { "fields": ["user_id"], "enrich": { "roles": false, "authentication_methods": false } } }))
        .await;
    assert_eq!(resp.status(), 201);
    let schedule: Value = resp.json().await.unwrap();
    let id: Uuid = schedule["id"].as_str().unwrap().parse().unwrap();

    // Until the crashing replica has died at a due time and five more due times have passed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let crashed = replicas[0].try_wait().unwrap().is_some();
        let done = runs(&api.pool, id).await.len();
        if crashed && done >= 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "crashed={crashed}, runs={done}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every replica down (so the counts below are of one moment), and stays down across three
    // due times.
    for r in &mut replicas {
        let _ = r.kill().await;
    }
    let all = runs(&api.pool, id).await;
    // Every due time between the first and the last is there exactly once, none missed.
    for pair in all.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 2, "consecutive due times: {all:?}");
    }
    assert!(all.iter().all(|(_, _, missed)| *missed == 0), "{all:?}");
    let started = all.iter().filter(|(_, o, _)| o == "started").count() as i64;
    let exports: i64 = sqlx::query_scalar("SELECT count(*) FROM exports WHERE schedule_id = $1")
        .bind(id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    // Each started run names its own export, and every export of the schedule is named by one.
    let named: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT r.export_id) FROM schedule_runs r JOIN exports e ON e.id = r.export_id
          WHERE r.schedule_id = $1 AND r.outcome = 'started' AND e.schedule_id = $1",
    )
    .bind(id)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!((exports, named), (started, started), "one export per started due time: {all:?}");
    let view = api.get_json(&format!("/v1/schedules/{id}")).await;
    assert_eq!(view["runs"]["started"].as_i64().unwrap() + view["runs"]["skipped"].as_i64().unwrap(), all.len() as i64);

    // One replica comes back after three due times: one run, no burst.
    let before = runs(&api.pool, id).await.len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(runs(&api.pool, id).await.len(), before, "nothing runs while every replica is down");
    let _back = spawn_process_with(&sim.base_url(), &database_url, 500.0, toml, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs(&api.pool, id).await.len() == before {
        assert!(tokio::time::Instant::now() < deadline, "no run after recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = runs(&api.pool, id).await;
    let recovered = &after[before];
    assert!(recovered.2 >= 2, "the recovery run folds the missed due times: {after:?}");
    // The next run is a regular due time in the future, not a burst of the missed ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = runs(&api.pool, id).await;
    assert!(now.len() <= before + 2, "no burst: {now:?}");
}

#[tokio::test]
async fn schedules_skip_an_overlapping_run_and_announce_it() {
    let mut config = sim_config(40);
    config.job_base = Duration::from_secs(6); // each export outlives two due times
    let sim = Arc::new(Sim::start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let app = spawn_with_settings(sim, webhook_settings(&database_url), Role::All).await;
    let (url, seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::FailFirst(0)).await;
    let (_, secret) = create_webhook(&app, &url, &["schedule.skipped", "export.completed"]).await;

    // Bad cron and time zone: 400s naming the field.
    for (body, field) in [
        (json!({ "cron": "61 * * * *" }), "cron"),
        (json!({ "cron": "* * *" }), "cron"),
        (json!({ "cron": "0 3 * * *", "timezone": "Mars/Olympus" }), "timezone"),
        (json!({ "cron": "0 3 * * *", "export": { "base": "latest" } }), "export.base"),
        (json!({ "cron": "0 3 * * *", "export": { "limit": 0 } }), "export.limit"),
    ] {
        let resp = app.post("/v1/schedules", WRITE_TOKEN, &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{body}: {problem}");
    }

    let resp = app.post("/v1/schedules", WRITE_TOKEN, &json!({ "cron": "* * * * * *", "incremental": true })).await;
    assert_eq!(resp.status(), 201);
    let schedule: Value = resp.json().await.unwrap();
    let id = schedule["id"].as_str().unwrap().to_owned();
    let view = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let view = app.get_json(&format!("/v1/schedules/{id}")).await;
            if view["runs"]["skipped"].as_i64().unwrap() >= 2 {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("skips counted");
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"exporter_schedule_runs_total{outcome="skipped"}"#), "skips counted in /metrics");
    assert!(metrics.contains(r#"exporter_schedule_runs_total{outcome="started"}"#));

    // Disabled: no more runs; its first export is the only one while it ran.
    let resp =
        send(&app, reqwest::Method::PATCH, &format!("/v1/schedules/{id}"), Some(&json!({ "enabled": false }))).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap()["next_run_at"].is_null());
    assert_eq!(view["runs"]["started"], 1);
    let first = view["last_export_id"].as_str().unwrap().to_owned();
    let export = app.wait_for(&first, "completed").await;
    assert_eq!(export["schedule_id"], id.as_str());
    assert_eq!(export["incremental"]["full_reason"], "no completed export of this tenant asked for the same data");

    // Every skip was announced, signed, naming the export still running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let skipped = loop {
        let skipped: Vec<Received> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["type"] == "schedule.skipped")
            .cloned()
            .collect();
        if skipped.len() as i64 >= view["runs"]["skipped"].as_i64().unwrap() {
            break skipped;
        }
        assert!(tokio::time::Instant::now() < deadline, "skips not all announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for r in &skipped {
        assert!(verify(&secret, r));
        let payload: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(payload["data"]["running_export_id"], first.as_str());
        assert_eq!(payload["data"]["schedule_id"], id.as_str());
    }
    let distinct: BTreeSet<&str> = skipped.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(distinct.len(), skipped.len(), "one event per skipped due time");

    // A second run of the incremental schedule builds on the first.
    let resp =
        send(&app, reqwest::Method::PATCH, &format!("/v1/schedules/{id}"), Some(&json!({ "enabled": true }))).await;
    assert_eq!(resp.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        let view = app.get_json(&format!("/v1/schedules/{id}")).await;
        if view["runs"]["started"] == 2 {
            break view["last_export_id"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no second run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let export = app.get_json(&format!("/v1/exports/{second}")).await;
    assert_eq!(export["incremental"]["base"], first.as_str());
    let resp = send(&app, reqwest::Method::DELETE, &format!("/v1/schedules/{id}"), None).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(app.get(&format!("/v1/schedules/{id}"), READ_TOKEN).await.status(), 404);
}

#[tokio::test]
async fn the_latest_view_switches_atomically_and_pins_page_sequences() {
    let app = spawn_app().await;
    let tenant_path = "/v1/tenants/sim/latest";
    assert_eq!(app.get(tenant_path, READ_TOKEN).await.status(), 404, "no completed export yet");
    assert_eq!(app.get("/v1/tenants/nope/latest", READ_TOKEN).await.status(), 404);

    let first = app.create_export(json!({ "fields": ["user_id", "email"] })).await;
    app.wait_for(&first, "completed").await;
    let resp = app.get(tenant_path, READ_TOKEN).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-location"], format!("/v1/exports/{first}"));
    let etag_first = resp.headers()["etag"].to_str().unwrap().to_owned();
    // Conditional: 304 while the latest is the same export.
    let resp = app
        .http
        .get(app.url(tenant_path))
        .bearer_auth(READ_TOKEN)
        .header("if-none-match", &etag_first)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);

    // A dashboard starts paging the latest view.
    let page1 = app.get_json(&format!("{tenant_path}/profiles?limit=50")).await;
    let mut cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let mut paged: Vec<Value> = page1["data"].as_array().unwrap().clone();

    // Meanwhile the tenant changes and a newer export starts; until it completes, the view and
    // its ETag stay on the first export.
    for i in 0..5 {
        app.sim.delete_user(app.sim.truth()[i]["user_id"].as_str().unwrap());
    }
    let second = app.create_export(json!({ "fields": ["user_id", "email"] })).await;
    loop {
        let export = app.get_json(&format!("/v1/exports/{second}")).await;
        let resp = app.get(tenant_path, READ_TOKEN).await;
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let served: Value = resp.json().await.unwrap();
        if export["status"] != "completed" {
            // Read after the export: if it had completed by then, the view may have switched.
            if served["id"] == first.as_str() {
                assert_eq!(etag, etag_first);
            }
        } else {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = app.get(tenant_path, READ_TOKEN).await;
    assert_eq!(resp.headers()["content-location"], format!("/v1/exports/{second}"));
    assert_ne!(resp.headers()["etag"].to_str().unwrap(), etag_first, "the ETag changes with the switch");

    // The page sequence started on the first export finishes on it.
    loop {
        let page = app.get_json(&format!("{tenant_path}/profiles?limit=50&cursor={cursor}")).await;
        paged.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, app.all_profiles(&first, "", 100).await, "the whole first export, nothing of the second");
    // A new sequence reads the second export; filters work as on /v1/exports/{id}/profiles.
    let fresh = app.get_json(&format!("{tenant_path}/profiles?limit=1000")).await;
    assert_eq!(fresh["data"].as_array().unwrap(), &app.all_profiles(&second, "", 1000).await);
    let email = fresh["data"].as_array().unwrap().iter().find_map(|p| p["email"].as_str()).unwrap();
    let same = app.get_json(&format!("{tenant_path}/profiles?email={}", urlencode(email))).await;
    let same = same["data"].as_array().unwrap();
    assert!(!same.is_empty() && same.iter().all(|p| p["email"] == email));
    let user = fresh["data"][0]["user_id"].as_str().unwrap();
    assert_eq!(app.get_json(&format!("{tenant_path}/profiles/{}", urlencode(user))).await, fresh["data"][0]);
    let resp = app.get(&format!("{tenant_path}/download?format=ndjson"), READ_TOKEN).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-location"], format!("/v1/exports/{second}"));
    let lines = resp.text().await.unwrap().lines().count();
    assert_eq!(lines, fresh["data"].as_array().unwrap().len());

    // An export of part of the tenant (a limit) completes later: the view stays on the whole one.
    let partial = app.create_export(json!({ "fields": ["user_id", "email"], "limit": 3 })).await;
    app.wait_for(&partial, "completed").await;
    let resp = app.get(tenant_path, READ_TOKEN).await;
    assert_eq!(resp.headers()["content-location"], format!("/v1/exports/{second}"));
    // Validators are ETags alone: no date, and If-Modified-Since does not answer 304.
    assert!(resp.headers().get("last-modified").is_none());
    let resp = app
        .http
        .get(app.url(&format!("{tenant_path}/profiles?limit=5")))
        .bearer_auth(READ_TOKEN)
        .header("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("last-modified").is_none() && resp.headers().get("etag").is_some());
    // With `schedule`, the view follows one schedule's exports.
    let resp = app.get(&format!("{tenant_path}?schedule={}", Uuid::now_v7()), READ_TOKEN).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(app.get(&format!("{tenant_path}?schedule=nope"), READ_TOKEN).await.status(), 400);
    let resp = app
        .post(
            "/v1/schedules",
            WRITE_TOKEN,
            &json!({ "cron": "* * * * * *", "export": { "fields": ["user_id"], "limit": 2 } }),
        )
        .await;
    let schedule = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let scheduled = loop {
        let resp = app.get(&format!("{tenant_path}?schedule={schedule}"), READ_TOKEN).await;
        if resp.status() == 200 {
            break resp.json::<Value>().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "the schedule's export never became its latest");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body = json!({ "enabled": false });
    let resp = app
        .http
        .patch(app.url(&format!("/v1/schedules/{schedule}")))
        .bearer_auth(WRITE_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(scheduled["schedule_id"], schedule.as_str());
    let page = app.get_json(&format!("{tenant_path}/profiles?schedule={schedule}")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let resp = app.get(tenant_path, READ_TOKEN).await;
    assert_eq!(
        resp.headers()["content-location"],
        format!("/v1/exports/{second}"),
        "a partial schedule is not the tenant's latest"
    );

    // A sequence pinned to an export that was deleted is told to restart.
    let page = app.get_json(&format!("{tenant_path}/profiles?limit=10")).await;
    let pinned = page["next_cursor"].as_str().unwrap().to_owned();
    let resp =
        app.http.delete(app.url(&format!("/v1/exports/{second}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = app.get(&format!("{tenant_path}/profiles?limit=10&cursor={pinned}"), READ_TOKEN).await;
    assert_eq!(resp.status(), 410);
    // And the view is back on the newest completed export that remains.
    let resp = app.get(tenant_path, READ_TOKEN).await;
    assert_eq!(resp.headers()["content-location"], format!("/v1/exports/{first}"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn an_export_queued_before_the_upgrade_runs_after_it_and_is_announced() {
    let url = fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    crate::exact::migrate_through(&pool, "20261130000004").await;
    let request = json!({"tenant": "sim", "connection_id": null, "limit": null, "fields": ["user_id"],
                         "enrich": {"roles": false, "authentication_methods": false, "authenticators": false, "enrollments": false}});
    let export = Uuid::now_v7();
    sqlx::query("INSERT INTO exports (id, tenant, request, request_hash) VALUES ($1, 'sim', $2, 'h')")
        .bind(export)
        .bind(&request)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO queue_jobs (export_id, kind) VALUES ($1, 'create_job')")
        .bind(export)
        .execute(&pool)
        .await
        .unwrap();
    // The upgrade (schedules, webhooks, delivery jobs on the same queue) keeps that job valid.
    auth0_exporter::db::MIGRATOR.run(&pool).await.unwrap();
    pool.close().await;

    let sim = Arc::new(Sim::start(sim_config(8), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let app = spawn_with_settings(sim, webhook_settings(&url), Role::Api).await;
    let (hook_url, seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::FailFirst(0)).await;
    let (webhook, secret) = create_webhook(&app, &hook_url, &["export.completed"]).await;
    let _worker = spawn_with_settings(app.sim.clone(), webhook_settings(&url), Role::Worker).await;
    app.wait_for(&export.to_string(), "completed").await;
    wait_deliveries(&app, &webhook, 1, "succeeded").await;
    let seen = seen.lock().unwrap().clone();
    assert!(verify(&secret, &seen[0]));
    let payload: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(payload["data"]["export_id"], export.to_string());
    assert_eq!(payload["data"]["counts"]["users_total"], 8);
}

#[tokio::test]
async fn schedule_and_webhook_requests_are_validated_scoped_and_paged() {
    let app = spawn_app().await; // WEBHOOK_ALLOW_HTTP is off
    let problem = |resp: reqwest::Response| async move {
        let status = resp.status();
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        (status, resp.json::<Value>().await.unwrap())
    };
    for (body, field) in [
        (json!({ "url": "http://hooks.example/x", "events": ["export.completed"] }), "url"),
        (json!({ "url": "https://user:pw@hooks.example/x", "events": ["export.completed"] }), "url"),
        (json!({ "url": "https://hooks.example/\u{e9}", "events": ["export.completed"] }), "url"),
        (json!({ "url": "ftp://hooks.example/x", "events": ["export.completed"] }), "url"),
        (json!({ "events": ["export.completed"] }), "url"),
        (json!({ "url": "https://hooks.example/x", "events": [] }), "events"),
        (json!({ "url": "https://hooks.example/x", "events": ["export.failed", "export.failed"] }), "events[1]"),
        (json!({ "url": "https://hooks.example/x", "events": ["export.failed"], "secret": "mine" }), "secret"),
        (
            json!({ "url": "https://hooks.example/x", "events": ["export.failed"], "description": "x".repeat(501) }),
            "description",
        ),
    ] {
        let (status, p) = problem(app.post("/v1/webhooks", WRITE_TOKEN, &body).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(p["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{body}: {p}");
    }
    // Scopes: reading needs read, changing needs write.
    let body = json!({ "url": "https://hooks.example/a", "events": ["export.failed"] });
    assert_eq!(app.post("/v1/webhooks", READ_TOKEN, &body).await.status(), 403);
    assert_eq!(app.post("/v1/schedules", READ_TOKEN, &json!({ "cron": "0 3 * * *" })).await.status(), 403);
    assert_eq!(app.get("/v1/webhooks", "nope").await.status(), 401);

    // Keyset pages of webhooks and schedules, newest first.
    let mut made = Vec::new();
    for i in 0..3 {
        let body = json!({ "url": format!("https://hooks.example/{i}"), "events": ["export.failed"] });
        made.push(create_webhook(&app, body["url"].as_str().unwrap(), &["export.failed"]).await.0);
    }
    let page = app.get_json("/v1/webhooks?limit=2").await;
    assert_eq!(page["data"][0]["id"], made[2].as_str());
    let rest = app.get_json(&format!("/v1/webhooks?limit=2&cursor={}", page["next_cursor"].as_str().unwrap())).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["id"], made[0].as_str());
    assert!(rest["next_cursor"].is_null());
    assert_eq!(app.get("/v1/webhooks?cursor=garbage", READ_TOKEN).await.status(), 400);

    // A PATCH replaces what it names and validates the whole result.
    let resp =
        send(&app, reqwest::Method::PATCH, &format!("/v1/webhooks/{}", made[0]), Some(&json!({ "enabled": false })))
            .await;
    assert_eq!(resp.status(), 200);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!((patched["enabled"].clone(), patched["url"].clone()), (json!(false), json!("https://hooks.example/0")));
    let resp =
        send(&app, reqwest::Method::PATCH, &format!("/v1/webhooks/{}", made[0]), Some(&json!({ "url": null }))).await;
    assert_eq!(problem(resp).await.0, 400);

    // Schedules: an unrelated edit keeps the due time; a new cron moves it.
    let resp = app.post("/v1/schedules", WRITE_TOKEN, &json!({ "cron": "0 3 * * *", "timezone": "Asia/Tokyo" })).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let schedule: Value = resp.json().await.unwrap();
    assert_eq!(location, format!("/v1/schedules/{}", schedule["id"].as_str().unwrap()));
    let due: chrono::DateTime<chrono::Utc> = schedule["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due.format("%H:%M").to_string(), "18:00", "03:00 in Tokyo is 18:00 UTC");
    assert_eq!(schedule["export"]["enrich"]["roles"], true, "the export body's defaults are filled in");
    let resp = send(&app, reqwest::Method::PATCH, &location, Some(&json!({ "description": "nightly" }))).await;
    let edited: Value = resp.json().await.unwrap();
    assert_eq!(edited["next_run_at"], schedule["next_run_at"]);
    assert_eq!(edited["description"], "nightly");
    let resp = send(&app, reqwest::Method::PATCH, &location, Some(&json!({ "cron": "30 4 * * *" }))).await;
    let moved: Value = resp.json().await.unwrap();
    let due: chrono::DateTime<chrono::Utc> = moved["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due.format("%H:%M").to_string(), "19:30");
    let resp = send(&app, reqwest::Method::PATCH, &location, Some(&json!({ "cron": "0 3 * *\t*" }))).await;
    let (status, p) = problem(resp).await;
    assert_eq!((status.as_u16(), p["errors"][0]["field"].clone()), (400, json!("cron")));
    let list = app.get_json("/v1/schedules?tenant=sim").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/v1/schedules/not-a-uuid", READ_TOKEN).await.status(), 400);
    assert_eq!(app.get(&format!("/v1/schedules/{}", Uuid::now_v7()), READ_TOKEN).await.status(), 404);
}

/// The Python of a venv holding the Standard Webhooks library (made on first use).
fn standard_webhooks_python() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(format!("{root}/scripts/python-venv.sh"))
        .args(["target/webhook-venv", "standardwebhooks==1.1.0"])
        .current_dir(root)
        .output()
        .expect("scripts/python-venv.sh runs");
    assert!(out.status.success(), "making the venv failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn the_readme_receiver_verifies_deliveries_with_the_standard_webhooks_library() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let python = standard_webhooks_python();
    let sim = Arc::new(Sim::start(sim_config(10), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let app = spawn_with_settings(sim, webhook_settings(&database_url), Role::All).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/exporter");
    let (webhook, secret) = create_webhook(&app, &url, &["export.completed"]).await;
    let mut receiver = tokio::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/webhook_receiver.py"))
        .env("EXPORTER_WEBHOOK_SECRET", &secret)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the receiver starts");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["listening"], port);

    // A forged delivery (signed with another secret) is refused by the library.
    let now = chrono::Utc::now().timestamp();
    let other = auth0_exporter::webhooks::signature::new_secret();
    let resp = app
        .http
        .post(&url)
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", auth0_exporter::webhooks::signature::sign(&other, "msg_forged", now, b"{}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let rejected: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(rejected["rejected"], "No matching signature found");

    let export = app.create_export(json!({ "fields": ["user_id"] })).await;
    app.wait_for(&export, "completed").await;
    let event: Value = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the receiver got the event")
        .unwrap()
        .map(|l| serde_json::from_str(&l).unwrap())
        .unwrap();
    assert_eq!(event["type"], "export.completed");
    assert_eq!(event["export_id"], export.as_str());
    assert_eq!(event["links"]["export"], format!("/v1/exports/{export}"));
    let list = wait_deliveries(&app, &webhook, 1, "succeeded").await;
    assert_eq!(list[0]["event_id"], event["id"]);
}

#[tokio::test]
async fn delivery_and_schedule_history_older_than_the_retention_is_pruned() {
    let sim = Arc::new(Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let app = spawn_with_settings(sim, webhook_settings(&database_url), Role::All).await;
    let (url, _seen) = start_receiver("127.0.0.1:0".parse().unwrap(), Behaviour::FailFirst(0)).await;
    let (webhook, _) = create_webhook(&app, &url, &["export.completed"]).await;
    for _ in 0..2 {
        let export = app.create_export(json!({ "fields": ["user_id"] })).await;
        app.wait_for(&export, "completed").await;
    }
    let list = wait_deliveries(&app, &webhook, 2, "succeeded").await;
    let (recent, old) = (list[0]["id"].as_str().unwrap(), list[1]["id"].as_str().unwrap());
    let resp = app.post("/v1/schedules", WRITE_TOKEN, &json!({ "cron": "0 3 * * *", "enabled": false })).await;
    let schedule: Uuid = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();
    for (due, age) in [("2026-01-01T03:00:00Z", "40 days"), ("2026-01-02T03:00:00Z", "1 day")] {
        sqlx::query(
            "INSERT INTO schedule_runs (schedule_id, due_at, outcome, created_at)
             VALUES ($1, $2::timestamptz, 'started', now() - $3::interval)",
        )
        .bind(schedule)
        .bind(due)
        .bind(age)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    // One delivery (and its event) finished 40 days ago.
    sqlx::query("UPDATE webhook_deliveries SET finished_at = now() - interval '40 days' WHERE id = $1::uuid")
        .bind(old)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE webhook_events SET created_at = now() - interval '40 days'
          WHERE id = (SELECT event_id FROM webhook_deliveries WHERE id = $1::uuid)",
    )
    .bind(old)
    .execute(&app.pool)
    .await
    .unwrap();

    // A replica with the default 30-day history retention sweeps as it starts.
    let _sweeper = spawn_with_settings(app.sim.clone(), webhook_settings(&database_url), Role::Worker).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> =
            deliveries(&app, &webhook).await.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
        if ids == [recent] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "old delivery kept: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = |sql: &'static str| {
        let pool = app.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count("SELECT count(*) FROM webhook_events").await, 1, "the old event went with its delivery");
    assert_eq!(count("SELECT count(*) FROM webhook_attempts").await, 1);
    let runs = runs(&app.pool, schedule).await;
    assert_eq!(runs.len(), 1, "the 40-day-old run is pruned, the recent one kept: {runs:?}");
}

#[tokio::test]
async fn a_due_time_acted_on_before_is_not_run_again_and_holds_no_schedule_back() {
    let sim = Arc::new(Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let database_url = fresh_database().await;
    let app = spawn_with_settings(sim, webhook_settings(&database_url), Role::All).await;
    let create = |cron: &'static str, enabled: bool| {
        let app = &app;
        async move {
            let body = json!({ "cron": cron, "enabled": enabled, "export": { "fields": ["user_id"] } });
            let resp = app.post("/v1/schedules", WRITE_TOKEN, &body).await;
            assert_eq!(resp.status(), 201);
            resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse::<Uuid>().unwrap()
        }
    };
    // `edited` is put back onto a due time already recorded (as a PATCH from a replica whose
    // clock lags could do); `other` is due at the same polls.
    let edited = create("*/2 * * * * *", false).await;
    let other = create("* * * * * *", true).await;
    let recorded: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO schedule_runs (schedule_id, due_at, outcome) VALUES ($1, date_trunc('second', now()), 'started')
         RETURNING due_at",
    )
    .bind(edited)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE schedules SET enabled = true, next_run_at = $2 WHERE id = $1")
        .bind(edited)
        .bind(recorded)
        .execute(&app.pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let edited_runs = runs(&app.pool, edited).await;
        let other_runs = runs(&app.pool, other).await;
        if edited_runs.len() >= 2 && other_runs.len() >= 2 {
            assert_eq!(edited_runs.iter().filter(|r| r.0 == recorded).count(), 1, "{edited_runs:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "schedules stalled: {edited_runs:?} {other_runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = app.get_json(&format!("/v1/schedules/{edited}")).await;
    assert!(view["next_run_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap() > recorded);
    // The recorded due time was not counted again.
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM exports WHERE schedule_id = $1")
        .bind(edited)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        view["runs"]["started"].as_i64().unwrap() + view["runs"]["skipped"].as_i64().unwrap(),
        runs(&app.pool, edited).await.len() as i64 - 1
    );
    assert!(started >= 1);
}
