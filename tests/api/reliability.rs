//! Crashes, lost leases, shutdowns and replicas: nothing lost, nothing doubled, the limit kept.

use std::time::Duration;

use auth0_exporter::{
    app::Role,
    queue::{self, Heartbeat, JobKind, JobState, Requeue, Rescued},
};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::*;

#[tokio::test]
async fn kill_9_mid_enrichment_resumes_exactly() {
    let mut sim = sim_config(200);
    sim.rate = 60.0;
    sim.burst = 60;
    let app = spawn_app_with(sim, 60.0).await;
    // The in-process app only serves the API for this test: its workers must not pick the job.
    let api = spawn_replica(app.sim.clone(), &app.database_url, 60.0, Role::Api).await;
    app.shutdown().await;

    let mut worker = spawn_process(&api.sim.base_url(), &api.database_url, 60.0, "");
    let id = api.create_export(json!({"enrich": {"roles": true, "authentication_methods": true}})).await;
    api.wait_until(&id, "some users enriched", |e| e["progress"]["users_enriched"].as_u64().unwrap_or(0) >= 40).await;
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let at_crash = api.get_json(&format!("/v1/exports/{id}")).await;
    assert_eq!(at_crash["status"], "running");

    // A new process finds the job once its lease expires (the rescuer) and resumes it.
    let _worker = spawn_process(&api.sim.base_url(), &api.database_url, 60.0, "");
    let export = api.wait_for(&id, "completed").await;
    let served = api.all_profiles(&id, "", 100).await;
    assert_profiles_equal(&served, &expected(&api.sim.truth(), &["roles", "authentication_methods"]));
    assert_eq!(export["progress"]["users_enriched"], 200, "each user counted once");
    // Resuming skipped users already enriched: at most a batch in flight is repeated.
    let methods_calls = api.sim.stats().by_endpoint["GET /api/v2/users/{id}/authentication-methods"];
    assert!(methods_calls < 200 + 60, "{methods_calls} per-user calls for 200 users");
}

async fn fresh_pool() -> PgPool {
    let url = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    auth0_exporter::db::migrate(&pool).await.unwrap();
    pool
}

async fn new_export(pool: &PgPool) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO exports (id, tenant, request, request_hash) VALUES ($1, 'sim', '{}', 'h')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    queue::enqueue(&mut tx, id, JobKind::CreateJob).await.unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn a_lost_lease_fences_the_old_worker_out() {
    let pool = fresh_pool().await;
    let export = new_export(&pool).await;
    let lease = Duration::from_secs(30);
    let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    let first = queue::claim(&mut a, "a", lease).await.unwrap().expect("a job");
    assert_eq!(first.export_id, export);
    assert!(queue::claim(&mut b, "b", lease).await.unwrap().is_none(), "a claimed job is not claimed twice");
    assert_eq!(queue::rescue_abandoned(&pool, true).await.unwrap(), Rescued::default(), "a live worker keeps its job");

    // Worker a stalls: its lease runs out and the rescuer hands the job to b.
    sqlx::query("UPDATE queue_jobs SET lease_expires_at = now() - interval '1 second'").execute(&pool).await.unwrap();
    assert_eq!(queue::rescue_abandoned(&pool, true).await.unwrap(), Rescued { requeued: 1, discarded: 0 });
    queue::unlock(&mut a, &first).await.unwrap();
    let second = queue::claim(&mut b, "b", lease).await.unwrap().expect("rescued job");
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempt, first.attempt + 1);
    assert_eq!(second.errors, 1, "a worker that stopped counts as a failure");

    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(queue::heartbeat(&mut conn, &first, lease).await.unwrap(), Heartbeat::Lost);
    assert!(
        !queue::finish(&mut conn, &first, JobState::Completed, None).await.unwrap(),
        "the old attempt cannot finish"
    );
    assert!(!queue::reschedule(&pool, &first, Duration::ZERO, Requeue::Snooze, None).await.unwrap());
    assert_eq!(queue::heartbeat(&mut conn, &second, lease).await.unwrap(), Heartbeat::Held { cancel_requested: false });
    assert!(queue::finish(&mut conn, &second, JobState::Completed, None).await.unwrap());
}

#[tokio::test]
async fn a_closed_session_is_rescued_at_once_without_waiting_for_the_lease() {
    let pool = fresh_pool().await;
    new_export(&pool).await;
    let lease = Duration::from_secs(600);
    let mut session = pool.acquire().await.unwrap().detach();
    let job = queue::claim(&mut session, "a", lease).await.unwrap().expect("a job");
    assert_eq!(queue::rescue_abandoned(&pool, true).await.unwrap(), Rescued::default());
    // The process dies: Postgres drops its session and with it the advisory lock.
    drop(session);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rescued = queue::rescue_abandoned(&pool, true).await.unwrap();
        if rescued.requeued == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the dead session's job was never rescued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut other = pool.acquire().await.unwrap();
    let again = queue::claim(&mut other, "b", lease).await.unwrap().expect("the job is claimable again");
    assert_eq!((again.id, again.attempt), (job.id, job.attempt + 1));
}

#[tokio::test]
async fn failures_in_a_row_exhaust_the_budget_but_progress_restores_it() {
    let pool = fresh_pool().await;
    let export = new_export(&pool).await;
    let lease = Duration::from_secs(30);
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("UPDATE queue_jobs SET max_attempts = 3").execute(&pool).await.unwrap();
    for round in 0..5 {
        // Two failures, then progress: never three in a row.
        for _ in 0..2 {
            let job = queue::claim(&mut conn, "a", lease).await.unwrap().expect("a job");
            assert!(queue::reschedule(&pool, &job, Duration::ZERO, Requeue::Failed, Some("boom")).await.unwrap());
            queue::unlock(&mut conn, &job).await.unwrap();
        }
        let job = queue::claim(&mut conn, "a", lease).await.unwrap().expect("a job");
        assert_eq!(job.errors, 2, "round {round}");
        queue::reset_errors(&mut conn, &job).await.unwrap();
        assert!(queue::reschedule(&pool, &job, Duration::ZERO, Requeue::Snooze, None).await.unwrap());
        queue::unlock(&mut conn, &job).await.unwrap();
    }
    let job = queue::claim(&mut conn, "a", lease).await.unwrap().expect("a job");
    assert_eq!((job.errors, job.attempt), (0, 16), "attempt keeps growing as the fencing token");
    let _ = export;
}

#[tokio::test]
async fn snoozes_and_shutdowns_do_not_burn_attempts() {
    let pool = fresh_pool().await;
    new_export(&pool).await;
    let lease = Duration::from_secs(30);
    let mut conn = pool.acquire().await.unwrap();
    let job = queue::claim(&mut conn, "a", lease).await.unwrap().unwrap();
    assert_eq!((job.attempt, job.errors), (1, 0));
    assert!(queue::reschedule(&pool, &job, Duration::ZERO, Requeue::Snooze, None).await.unwrap());
    queue::unlock(&mut conn, &job).await.unwrap();
    let again = queue::claim(&mut conn, "a", lease).await.unwrap().unwrap();
    assert_eq!(again.errors, 0, "a snooze counts no failure");
    assert!(queue::reschedule(&pool, &again, Duration::from_secs(60), Requeue::Failed, Some("boom")).await.unwrap());
    assert!(queue::claim(&mut conn, "a", lease).await.unwrap().is_none(), "a retry waits for its run_at");
}

#[tokio::test]
async fn many_workers_run_each_export_once() {
    let app = spawn_app_with(sim_config(30), 500.0).await;
    let replicas = [
        spawn_replica(app.sim.clone(), &app.database_url, 500.0, Role::Worker).await,
        spawn_replica(app.sim.clone(), &app.database_url, 500.0, Role::Worker).await,
    ];
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(app.create_export(json!({"enrich": {"roles": true, "authentication_methods": false}})).await);
    }
    for id in &ids {
        app.wait_for(id, "completed").await;
    }
    assert_eq!(app.sim.stats().jobs_created, 6, "one Auth0 job per export");
    let per_stage: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM queue_jobs WHERE state = 'completed' GROUP BY kind ORDER BY kind")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    for (kind, n) in per_stage {
        if kind != "wait_job" {
            assert_eq!(n, 6, "{kind} completed once per export");
        }
    }
    drop(replicas);
}

#[tokio::test]
async fn shutdown_hands_running_work_back() {
    let mut sim = sim_config(100);
    sim.rate = 25.0;
    sim.burst = 25;
    let app = spawn_app_with(sim, 25.0).await;
    let api = spawn_replica(app.sim.clone(), &app.database_url, 25.0, Role::Api).await;
    let id = api.create_export(json!({})).await;
    api.wait_until(&id, "enriching", |e| e["progress"]["users_enriched"].as_u64().unwrap_or(0) > 5).await;
    app.shutdown().await;
    let (state, errors): (String, i32) =
        sqlx::query_as("SELECT state, errors FROM queue_jobs WHERE export_id = $1::uuid AND kind = 'enrich'")
            .bind(&id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), errors), ("available", 0), "the interrupted stage is queued again, no failure counted");
    let _worker = spawn_replica(api.sim.clone(), &api.database_url, 25.0, Role::Worker).await;
    api.wait_for(&id, "completed").await;
    let served = api.all_profiles(&id, "", 100).await;
    assert_profiles_equal(&served, &expected(&api.sim.truth(), &["roles", "authentication_methods"]));
}

#[tokio::test]
async fn three_replicas_together_stay_within_the_rate_limit() {
    const LIMIT: f64 = 20.0;
    let mut sim = sim_config(40);
    // The tenant would allow far more: only our shared limiter keeps the pace.
    sim.rate = 500.0;
    sim.burst = 500;
    let app = spawn_app_with(sim, LIMIT).await;
    let others = [
        spawn_replica(app.sim.clone(), &app.database_url, LIMIT, Role::All).await,
        spawn_replica(app.sim.clone(), &app.database_url, LIMIT, Role::All).await,
    ];
    let mut ids = Vec::new();
    for replica in [&app, &others[0], &others[1]] {
        ids.push(
            replica
                .create_export(json!({"enrich": {"roles": true, "authentication_methods": true, "enrollments": true}}))
                .await,
        );
    }
    let started = std::time::Instant::now();
    for id in &ids {
        app.wait_for(id, "completed").await;
    }
    let stats = app.sim.stats();
    let calls = stats.api_calls as f64;
    assert!(calls > 240.0, "{calls} calls");
    let elapsed = started.elapsed().as_secs_f64();
    // Sent on a 50 ms grid, requests still arrive with scheduling and network jitter: a sliding
    // one-second window at the sim may catch one or two early arrivals, never a burst.
    assert!(
        stats.peak_per_second <= (LIMIT * 1.1) as u64,
        "peak {} requests/s over a limit of {LIMIT}",
        stats.peak_per_second
    );
    assert!(calls / elapsed <= LIMIT, "{calls} calls in {elapsed:.1}s exceed {LIMIT}/s on average");
    assert_eq!(stats.rate_limited, 0);
    // Paced, not stalled: the whole run is close to calls / limit.
    assert!(elapsed < calls / LIMIT * 1.5 + 5.0, "{elapsed:.1}s");
}

/// A caller cut short while its `BEGIN` was in flight leaves a transaction open that sqlx does not
/// track; the pool must never hand that connection to the next caller.
#[tokio::test]
async fn a_connection_left_inside_a_transaction_is_not_reused() {
    let url = fresh_database().await;
    let pool = auth0_exporter::db::connect(&secrecy::SecretString::from(url), 1).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1").execute(&mut *conn).await.unwrap();
    drop(conn);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A simple query: outside a transaction block both are the instant this message arrived.
        let row = sqlx::raw_sql("SELECT now() = statement_timestamp()").fetch_one(&pool).await.unwrap();
        let idle: bool = sqlx::Row::get(&row, 0);
        assert!(idle, "the next caller got a connection inside someone else's transaction");
    }
}
