//! The Postgres job queue: enqueue, claim (`SKIP LOCKED`), lease heartbeats, fenced finishes, rescue.
//!
//! Every state change of a running job is fenced by `attempt`, so a worker that lost its lease
//! cannot overwrite the one that took over.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The channel LISTEN/NOTIFY uses to wake idle workers.
pub const CHANNEL: &str = "queue_jobs";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    CreateJob,
    WaitJob,
    Download,
    Enrich,
    Finalize,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateJob => "create_job",
            JobKind::WaitJob => "wait_job",
            JobKind::Download => "download",
            JobKind::Enrich => "enrich",
            JobKind::Finalize => "finalize",
        }
    }

    fn parse(s: &str) -> Option<JobKind> {
        [JobKind::CreateJob, JobKind::WaitJob, JobKind::Download, JobKind::Enrich, JobKind::Finalize]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The export stage a job of this kind runs.
    pub fn stage(self) -> &'static str {
        match self {
            JobKind::CreateJob => "creating_job",
            JobKind::WaitJob => "waiting_for_job",
            JobKind::Download => "downloading",
            JobKind::Enrich | JobKind::Finalize => "enriching",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: i64,
    pub export_id: Uuid,
    pub kind: JobKind,
    pub attempt: i32,
    pub max_attempts: i32,
}

/// Adds a job inside the caller's transaction and wakes listeners when it commits.
pub async fn enqueue(conn: &mut PgConnection, export_id: Uuid, kind: JobKind) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO queue_jobs (export_id, kind) VALUES ($1, $2)")
        .bind(export_id)
        .bind(kind.as_str())
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await?;
    Ok(())
}

/// Claims the oldest runnable job, marking it running under a lease, in one statement.
pub async fn claim(pool: &PgPool, worker: &str, lease: Duration) -> sqlx::Result<Option<Job>> {
    let row: Option<(i64, Uuid, String, i32, i32)> = sqlx::query_as(
        "UPDATE queue_jobs SET state = 'running', attempt = attempt + 1, locked_by = $1,
                lease_expires_at = now() + make_interval(secs => $2)
          WHERE id = (SELECT id FROM queue_jobs
                       WHERE state IN ('available', 'retryable') AND run_at <= now()
                       ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING id, export_id, kind, attempt, max_attempts",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, export_id, kind, attempt, max_attempts)| {
        Some(Job { id, export_id, kind: JobKind::parse(&kind)?, attempt, max_attempts })
    }))
}

/// What a heartbeat learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    Held { cancel_requested: bool },
    Lost,
}

pub async fn heartbeat(pool: &PgPool, job: &Job, lease: Duration) -> sqlx::Result<Heartbeat> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE queue_jobs q SET lease_expires_at = now() + make_interval(secs => $3)
          WHERE q.id = $1 AND q.attempt = $2 AND q.state = 'running'
      RETURNING (SELECT e.cancel_requested FROM exports e WHERE e.id = q.export_id)",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(cancel_requested) => Heartbeat::Held { cancel_requested },
        None => Heartbeat::Lost,
    })
}

/// Ends a running job in the caller's transaction; false when the lease was lost meanwhile.
pub async fn finish(conn: &mut PgConnection, job: &Job, state: &str, error: Option<&str>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = $3, finished_at = now(), last_error = COALESCE($4, last_error),
                lease_expires_at = NULL
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Runs the job again later. A snooze (waiting on Auth0) and a shutdown hand the attempt back;
/// a failure keeps it, so `max_attempts` bounds real failures only.
pub async fn reschedule(
    pool: &PgPool,
    job: &Job,
    delay: Duration,
    give_back_attempt: bool,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = CASE WHEN $4 THEN 'available' ELSE 'retryable' END,
                attempt = attempt - CASE WHEN $4 THEN 1 ELSE 0 END,
                run_at = now() + make_interval(secs => $3), locked_by = NULL, lease_expires_at = NULL,
                last_error = COALESCE($5, last_error)
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(delay.as_secs_f64())
    .bind(give_back_attempt)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks the job's row while this attempt still holds it; false when the lease was lost.
pub async fn hold(conn: &mut PgConnection, job: &Job) -> sqlx::Result<bool> {
    let held: Option<i64> =
        sqlx::query_scalar("SELECT id FROM queue_jobs WHERE id = $1 AND attempt = $2 AND state = 'running' FOR UPDATE")
            .bind(job.id)
            .bind(job.attempt)
            .fetch_optional(conn)
            .await?;
    Ok(held.is_some())
}

/// Returns running jobs whose lease expired (their worker died) to the queue; a job whose
/// workers died `max_attempts` times fails its export instead of looping forever.
pub async fn rescue_expired(pool: &PgPool) -> sqlx::Result<u64> {
    sqlx::query(
        "WITH dead AS (
            UPDATE queue_jobs SET state = 'discarded', finished_at = now(),
                   last_error = 'lease expired on the last attempt: the worker kept dying'
             WHERE state = 'running' AND lease_expires_at < now() AND attempt >= max_attempts
         RETURNING export_id, attempt)
         UPDATE exports e SET status = 'failed', finished_at = now(),
                error = jsonb_build_object('stage', e.stage, 'message',
                        format('the worker running this stage stopped %s times without finishing', dead.attempt))
           FROM dead WHERE e.id = dead.export_id AND e.status IN ('queued', 'running')",
    )
    .execute(pool)
    .await?;
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = 'retryable', run_at = now(), locked_by = NULL,
                last_error = 'lease expired: the worker stopped heartbeating'
          WHERE state = 'running' AND lease_expires_at < now()",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Jobs waiting to run (ready now or scheduled).
pub async fn depth(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM queue_jobs WHERE state IN ('available', 'retryable')")
        .fetch_one(pool)
        .await
}

/// Cancels the export's jobs that no worker holds; returns whether one is still running.
pub async fn cancel_idle_jobs(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query(
        "UPDATE queue_jobs SET state = 'cancelled', finished_at = now()
          WHERE export_id = $1 AND state IN ('available', 'retryable')",
    )
    .bind(export_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_jobs WHERE export_id = $1 AND state = 'running')")
        .bind(export_id)
        .fetch_one(conn)
        .await
}
