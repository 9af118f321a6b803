//! Webhook endpoints, their events and deliveries, and the delivery jobs on the queue.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, PgConnection, PgPool};
use uuid::Uuid;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, url, events, description, enabled, created_at, updated_at";

/// What a client sets on an endpoint.
pub struct WebhookSpec {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
}

pub async fn insert(pool: &PgPool, spec: &WebhookSpec, secret: &str) -> sqlx::Result<WebhookRow> {
    sqlx::query_as(&format!(
        "INSERT INTO webhooks (id, url, events, secret, description, enabled) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&spec.url)
    .bind(&spec.events)
    .bind(secret)
    .bind(&spec.description)
    .bind(spec.enabled)
    .fetch_one(pool)
    .await
}

pub async fn update(pool: &PgPool, id: Uuid, spec: &WebhookSpec) -> sqlx::Result<Option<WebhookRow>> {
    sqlx::query_as(&format!(
        "UPDATE webhooks SET url = $2, events = $3, description = $4, enabled = $5, updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&spec.url)
    .bind(&spec.events)
    .bind(&spec.description)
    .bind(spec.enabled)
    .fetch_optional(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<WebhookRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1")).bind(id).fetch_optional(pool).await
}

/// Deletes the endpoint with its deliveries and their queued jobs.
pub async fn delete(pool: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(pool).await?.rows_affected() == 1)
}

/// Newest first, keyset on the time-ordered id.
pub async fn list(pool: &PgPool, before: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<WebhookRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

/// Records an event and queues its deliveries in the caller's transaction (see
/// `emit_webhook_event` in the migrations, which export status changes call too).
pub async fn emit_event(conn: &mut PgConnection, event_type: &str, data: &Value) -> sqlx::Result<()> {
    sqlx::query("SELECT emit_webhook_event($1, $2)").bind(event_type).bind(Json(data)).execute(conn).await.map(drop)
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub seq: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_latency_ms: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.seq, d.event_id, e.type AS event_type, d.status, d.attempts, d.next_attempt_at,
    d.last_status_code, d.last_latency_ms, d.last_error, d.created_at, d.finished_at";

/// An endpoint's deliveries, newest first (keyset on `seq`), with their attempts.
pub async fn deliveries(
    pool: &PgPool,
    webhook: Uuid,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<(Vec<DeliveryRow>, Vec<AttemptRow>)> {
    let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
          WHERE d.webhook_id = $1 AND ($2::text IS NULL OR d.status = $2) AND ($3::int8 IS NULL OR d.seq < $3)
          ORDER BY d.seq DESC LIMIT $4"
    ))
    .bind(webhook)
    .bind(status)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let attempts = sqlx::query_as(
        "SELECT delivery_id, attempt, started_at, status_code, latency_ms, error FROM webhook_attempts
          WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok((rows, attempts))
}

pub enum Redelivery {
    Queued,
    NotFound,
    /// It is being delivered or waits for its next try already.
    Pending,
}

/// Starts a new series of attempts for a finished delivery.
pub async fn redeliver(pool: &PgPool, webhook: Uuid, delivery: Uuid) -> sqlx::Result<Redelivery> {
    let mut tx = pool.begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2 FOR UPDATE")
            .bind(delivery)
            .bind(webhook)
            .fetch_optional(&mut *tx)
            .await?;
    match status.as_deref() {
        None => return Ok(Redelivery::NotFound),
        Some("pending") => return Ok(Redelivery::Pending),
        Some(_) => {}
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', series_start = attempts, next_attempt_at = now(),
                finished_at = NULL WHERE id = $1",
    )
    .bind(delivery)
    .execute(&mut *tx)
    .await?;
    crate::queue::enqueue_delivery(&mut tx, delivery).await?;
    tx.commit().await?;
    Ok(Redelivery::Queued)
}

/// A claimed delivery job: its queue row, fenced by `attempt`, and everything one try needs.
#[derive(Clone, sqlx::FromRow)]
pub struct DeliveryJob {
    pub job_id: i64,
    /// The queue row's claim count: the fencing token of this try.
    pub job_attempt: i32,
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub payload: String,
    pub url: String,
    pub secret: String,
    pub enabled: bool,
    /// Attempts recorded so far, and those made before the current series began.
    pub attempts: i32,
    pub series_start: i32,
}

impl std::fmt::Debug for DeliveryJob {
    /// Without the secret and the URL (whose query may carry a token of the receiver's).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryJob")
            .field("job_id", &self.job_id)
            .field("job_attempt", &self.job_attempt)
            .field("delivery_id", &self.delivery_id)
            .field("event_id", &self.event_id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Claims the oldest due delivery job under a lease. No advisory lock and no heartbeat: a try
/// lasts at most the outbound timeout, well inside the lease, which alone guards it.
pub async fn claim(pool: &PgPool, worker: &str, lease: std::time::Duration) -> sqlx::Result<Option<DeliveryJob>> {
    sqlx::query_as(
        "WITH job AS (
            UPDATE queue_jobs SET state = 'running', attempt = attempt + 1, locked_by = $1,
                   lease_expires_at = now() + make_interval(secs => $2), claimed_at = NULL, heartbeat_at = NULL
             WHERE id = (SELECT id FROM queue_jobs
                          WHERE kind = 'deliver_webhook' AND state IN ('available', 'retryable') AND run_at <= now()
                          ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, attempt, delivery_id)
         SELECT job.id AS job_id, job.attempt AS job_attempt, d.id AS delivery_id, e.id AS event_id, e.payload,
                w.url, w.secret, w.enabled, d.attempts, d.series_start
           FROM job JOIN webhook_deliveries d ON d.id = job.delivery_id
                    JOIN webhook_events e ON e.id = d.event_id
                    JOIN webhooks w ON w.id = d.webhook_id",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// One try's result.
pub struct Attempt {
    pub started_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
}

/// What follows a try.
pub enum AfterAttempt {
    Succeeded,
    /// Try again after this long.
    Retry(std::time::Duration),
    /// The series is used up (or the endpoint was disabled): the delivery failed.
    GiveUp,
}

/// Records a try and what follows it, in one transaction fenced by the job's claim: a worker
/// whose lease ran out records nothing (the try it made counts as at-least-once).
pub async fn record_attempt(
    pool: &PgPool,
    job: &DeliveryJob,
    attempt: &Attempt,
    after: &AfterAttempt,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    if !crate::queue::hold_claim(&mut tx, job.job_id, job.job_attempt).await? {
        return Ok(false);
    }
    let n: i32 = sqlx::query_scalar(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status_code = $2, last_latency_ms = $3,
                last_error = $4,
                status = CASE $5 WHEN 'retry' THEN 'pending' WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END,
                next_attempt_at = CASE WHEN $5 = 'retry' THEN now() + make_interval(secs => $6) END,
                finished_at = CASE WHEN $5 = 'retry' THEN NULL ELSE now() END
          WHERE id = $1 RETURNING attempts",
    )
    .bind(job.delivery_id)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(&attempt.error)
    .bind(match after {
        AfterAttempt::Succeeded => "succeeded",
        AfterAttempt::Retry(_) => "retry",
        AfterAttempt::GiveUp => "failed",
    })
    .bind(match after {
        AfterAttempt::Retry(delay) => delay.as_secs_f64(),
        _ => 0.0,
    })
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, status_code, latency_ms, error)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job.delivery_id)
    .bind(n)
    .bind(attempt.started_at)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    match after {
        AfterAttempt::Retry(delay) => {
            sqlx::query(
                "UPDATE queue_jobs SET state = 'retryable', run_at = now() + make_interval(secs => $2), locked_by = NULL,
                        lease_expires_at = NULL, last_error = $3
                  WHERE id = $1",
            )
            .bind(job.job_id)
            .bind(delay.as_secs_f64())
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        }
        _ => {
            let state = if matches!(after, AfterAttempt::Succeeded) { "completed" } else { "discarded" };
            sqlx::query(
                "UPDATE queue_jobs SET state = $2, finished_at = now(), lease_expires_at = NULL, last_error = $3
                  WHERE id = $1",
            )
            .bind(job.job_id)
            .bind(state)
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// Ends a job whose delivery cannot be tried (its endpoint is disabled): the delivery fails
/// without an attempt, and may be redelivered once the endpoint is enabled again.
pub async fn abandon(pool: &PgPool, job: &DeliveryJob, reason: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = 'cancelled', finished_at = now(), lease_expires_at = NULL, last_error = $3
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(job.job_id)
    .bind(job.job_attempt)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 1 {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $2, next_attempt_at = NULL, finished_at = now()
              WHERE id = $1",
        )
        .bind(job.delivery_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Deletes finished deliveries (with their attempts) older than `age`, then events no delivery
/// refers to any more; returns how many deliveries went.
pub async fn prune(pool: &PgPool, age: std::time::Duration) -> sqlx::Result<u64> {
    let deliveries = super::delete_in_batches(
        pool,
        "DELETE FROM webhook_deliveries WHERE id IN (
            SELECT id FROM webhook_deliveries
             WHERE status <> 'pending' AND finished_at < now() - make_interval(secs => $1) LIMIT $2)",
        age,
    )
    .await?;
    super::delete_in_batches(
        pool,
        "DELETE FROM webhook_events WHERE id IN (
            SELECT e.id FROM webhook_events e
             WHERE e.created_at < now() - make_interval(secs => $1)
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id) LIMIT $2)",
        age,
    )
    .await?;
    Ok(deliveries)
}
