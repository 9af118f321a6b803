//! The production surface: conditional GETs for polling clients, request timeouts answered as
//! the contract says, and retention of finished exports.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Every read of a completed export carries validators; presenting them gets `304` with no body,
/// answered without the profiles table (it is locked away while the 304s are served).
#[tokio::test]
async fn polling_clients_get_304_for_what_did_not_change() {
    let app = spawn_app_with(sim_config(30), 500.0).await;
    let id = app.create_export(json!({})).await;
    app.wait_for(&id, "completed").await;
    let user: String = sqlx::query_scalar("SELECT user_id FROM profiles WHERE export_id = $1::uuid LIMIT 1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let paths = [
        format!("/v1/exports/{id}"),
        format!("/v1/exports/{id}/profiles?limit=5"),
        format!("/v1/exports/{id}/profiles/{}", user.replace('|', "%7C")),
        format!("/v1/exports/{id}/download?format=csv"),
    ];
    let mut validators = Vec::new();
    for path in &paths {
        let resp = app.get(path, READ_TOKEN).await;
        assert_eq!(resp.status(), 200, "{path}");
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with("W/\""), "{path}: {etag}");
        assert_eq!(resp.headers()["cache-control"], "private, no-cache", "{path}");
        let modified = resp.headers()["last-modified"].to_str().unwrap().to_owned();
        validators.push((etag, modified));
    }
    // Another page is another representation.
    let other = app.get(&format!("/v1/exports/{id}/profiles?limit=6"), READ_TOKEN).await;
    assert_ne!(other.headers()["etag"], validators[1].0.as_str());

    // While a transaction holds the profiles locked, revalidation still answers at once.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE profiles IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    for (path, (etag, modified)) in paths.iter().zip(&validators) {
        let started = Instant::now();
        let resp =
            app.http.get(app.url(path)).bearer_auth(READ_TOKEN).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(resp.status(), 304, "{path}");
        assert_eq!(resp.headers()["etag"], etag.as_str());
        assert!(started.elapsed() < Duration::from_secs(2), "{path} waited for the profiles");
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = app
            .http
            .get(app.url(path))
            .bearer_auth(READ_TOKEN)
            .header("if-modified-since", modified)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{path} with If-Modified-Since");
    }
    blocker.rollback().await.unwrap();
    // A stale tag gets the full answer.
    let resp = app
        .http
        .get(app.url(&paths[1]))
        .bearer_auth(READ_TOKEN)
        .header("if-none-match", "W/\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A running export's pages may change: no validator, and the export resource's tag moves
    // with its progress.
    app.sim.set_faults(auth0_sim::Faults { latency_min_ms: 300, latency_max_ms: 300, ..Default::default() });
    let running = app.create_export(json!({})).await;
    let first = app.get(&format!("/v1/exports/{running}"), READ_TOKEN).await;
    let first_tag = first.headers()["etag"].to_str().unwrap().to_owned();
    let page = app.get(&format!("/v1/exports/{running}/profiles"), READ_TOKEN).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers().get("etag").is_none());
    assert_eq!(page.headers()["cache-control"], "private, no-cache");
    app.wait_for(&running, "completed").await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/exports/{running}")))
        .bearer_auth(READ_TOKEN)
        .header("if-none-match", &first_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the export changed since its first poll");

    // And a deleted export is gone, whatever the client holds.
    let resp = app.http.delete(app.url(&format!("/v1/exports/{id}"))).bearer_auth(WRITE_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    for (path, (etag, _)) in paths.iter().zip(&validators) {
        let resp =
            app.http.get(app.url(path)).bearer_auth(READ_TOKEN).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
}

fn count_of(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// A request that outlives REQUEST_TIMEOUT_SECS answers 503 problem+json with Retry-After, and
/// is counted in the request metrics.
#[tokio::test]
async fn a_request_that_times_out_answers_503_and_is_counted() {
    let sim = std::sync::Arc::new(auth0_sim::Sim::start(sim_config(5), "127.0.0.1:0".parse().unwrap()).await.unwrap());
    let url = fresh_database().await;
    let app = spawn_with_settings(
        sim,
        |sim| {
            let mut s = settings(sim, &url, 500.0);
            s.request_timeout = Duration::from_secs(1);
            s
        },
        auth0_exporter::app::Role::Api,
    )
    .await;
    let id = app.create_export(json!({})).await;
    let series = r#"exporter_http_request_duration_seconds_count{method="GET",route="/v1/exports/{id}",status="503"}"#;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let before = count_of(&metrics, series);

    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE exports IN ACCESS EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let started = Instant::now();
    let resp = app.get(&format!("/v1/exports/{id}"), READ_TOKEN).await;
    let took = started.elapsed();
    blocker.rollback().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(resp.headers()["retry-after"], "2");
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert!(problem["detail"].as_str().unwrap().contains("longer than 1 s"), "{problem}");

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(count_of(&metrics, series) >= before + 1.0, "the timeout was not counted:\n{series}");
    // The service answers normally again.
    assert_eq!(app.get(&format!("/v1/exports/{id}"), READ_TOKEN).await.status(), 200);
}

/// With EXPORT_RETENTION set, finished exports older than it are deleted with their profiles;
/// newer ones and running ones stay.
#[tokio::test]
async fn exports_older_than_the_retention_are_deleted() {
    let app = spawn_app_with(sim_config(20), 500.0).await;
    let old = app.create_export(json!({})).await;
    app.wait_for(&old, "completed").await;
    let recent = app.create_export(json!({})).await;
    app.wait_for(&recent, "completed").await;
    // `old` finished two days ago; `recent` just now.
    sqlx::query("UPDATE exports SET finished_at = now() - interval '2 days' WHERE id = $1::uuid")
        .bind(&old)
        .execute(&app.pool)
        .await
        .unwrap();

    // A replica configured with a one-day retention sweeps as it starts.
    let url = app.database_url.clone();
    let sweeper = spawn_with_settings(
        app.sim.clone(),
        |sim| {
            let mut s = settings(sim, &url, 500.0);
            s.worker.export_retention = Some(Duration::from_secs(86_400));
            s
        },
        auth0_exporter::app::Role::Worker,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get(&format!("/v1/exports/{old}"), READ_TOKEN).await.status() != 404 {
        assert!(Instant::now() < deadline, "the expired export was never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let part = format!("profiles_{}", old.replace('-', ""));
    while sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
        .bind(&part)
        .fetch_one(&app.pool)
        .await
        .unwrap()
        .is_some()
    {
        assert!(Instant::now() < deadline, "the expired export's profiles were never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get(&format!("/v1/exports/{recent}"), READ_TOKEN).await.status(), 200);
    assert_eq!(app.get(&format!("/v1/exports/{recent}/profiles"), READ_TOKEN).await.status(), 200);

    // A worker-only replica serves its probes and its (the pipeline's) metrics, nothing else.
    assert_eq!(sweeper.http.get(sweeper.url("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(sweeper.http.get(sweeper.url("/readyz")).send().await.unwrap().status(), 200);
    let metrics = sweeper.http.get(sweeper.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("exporter_exports_expired_total"), "{metrics}");
    assert_eq!(sweeper.get(&format!("/v1/exports/{recent}"), READ_TOKEN).await.status(), 404);
}
