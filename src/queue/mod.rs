//! The Postgres job queue: enqueue, claim (`SKIP LOCKED`), lease heartbeats, fenced finishes, rescue.
//!
//! Every state change of a running job is fenced by `attempt`, so a worker that lost its lease
//! cannot overwrite the one that took over. A claiming session also holds a session-level
//! advisory lock on the job: Postgres drops it the moment the process's connection dies, so the
//! rescuer sees a crashed worker at once instead of waiting for its lease to run out.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The channel LISTEN/NOTIFY uses to wake idle workers.
pub const CHANNEL: &str = "queue_jobs";
/// The channel that tells the process running an export that it was cancelled (payload: its id).
pub const CANCEL_CHANNEL: &str = "export_cancel";
/// Running jobs beat this often (or every third of the lease, if shorter).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A lock-less job whose beat is older than this has lost its worker.
const BEAT_STALE: Duration = Duration::from_millis(2500);
/// First key of the two-key advisory locks held on running jobs (the second is the job id).
const LOCK_CLASS: i32 = 0x0A0E_0001;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    CreateJob,
    WaitJob,
    Download,
    Enrich,
    Finalize,
}

impl JobKind {
    pub const ALL: [JobKind; 5] =
        [JobKind::CreateJob, JobKind::WaitJob, JobKind::Download, JobKind::Enrich, JobKind::Finalize];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CreateJob => "create_job",
            JobKind::WaitJob => "wait_job",
            JobKind::Download => "download",
            JobKind::Enrich => "enrich",
            JobKind::Finalize => "finalize",
        }
    }

    /// The export stage a job of this kind runs.
    pub fn stage(self) -> crate::db::exports::Stage {
        use crate::db::exports::Stage;
        match self {
            JobKind::CreateJob => Stage::CreatingJob,
            JobKind::WaitJob => Stage::WaitingForJob,
            JobKind::Download => Stage::Downloading,
            JobKind::Enrich | JobKind::Finalize => Stage::Enriching,
        }
    }
}

/// River's job states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobState {
    Available,
    Running,
    Retryable,
    Completed,
    Cancelled,
    Discarded,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub export_id: Uuid,
    pub kind: JobKind,
    /// Grows with every claim: the fencing token of this run.
    pub attempt: i32,
    /// Failures since the job last made progress; `max_attempts` bounds these.
    pub errors: i32,
    pub max_attempts: i32,
    /// Whether the claiming session took the job's advisory lock.
    #[sqlx(default)]
    pub locked: bool,
}

/// Adds a job inside the caller's transaction and wakes listeners when it commits.
pub async fn enqueue(conn: &mut PgConnection, export_id: Uuid, kind: JobKind) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO queue_jobs (export_id, kind) VALUES ($1, $2)")
        .bind(export_id)
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await?;
    Ok(())
}

/// Queues a try of a webhook delivery in the caller's transaction (events queue their first
/// tries in `emit_webhook_event`, in the migrations). Never discarded by the rescuer: the
/// dispatcher decides when a delivery has failed.
pub async fn enqueue_delivery(conn: &mut PgConnection, delivery_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO queue_jobs (kind, delivery_id, max_attempts) VALUES ('deliver_webhook', $1, 2147483647)")
        .bind(delivery_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *conn).await?;
    Ok(())
}

/// Claims the oldest runnable job this binary knows, marking it running under a lease, in one
/// statement that also takes the job's advisory lock on `conn`'s session. Kinds added by a newer
/// release are left for replicas that know them.
#[tracing::instrument(skip_all)]
pub async fn claim(conn: &mut PgConnection, worker: &str, lease: Duration) -> sqlx::Result<Option<Job>> {
    let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
    sqlx::query_as(
        "UPDATE queue_jobs SET state = 'running', attempt = attempt + 1, locked_by = $1,
                lease_expires_at = now() + make_interval(secs => $2), claimed_at = now(), heartbeat_at = now()
          WHERE id = (SELECT id FROM queue_jobs
                       WHERE state IN ('available', 'retryable') AND run_at <= now() AND kind = ANY($3)
                       ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING id, export_id, kind, attempt, errors, max_attempts, pg_try_advisory_lock($4, (id & 2147483647)::int4) AS locked",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .bind(kinds)
    .bind(LOCK_CLASS)
    .fetch_optional(conn)
    .await
}

/// The second key of a job's advisory lock: its id folded into int4 (ids never overflow it).
fn lock_key(id: i64) -> i32 {
    (id & 0x7fff_ffff) as i32
}

/// Releases the advisory lock [`claim`] took on this session.
pub async fn unlock(conn: &mut PgConnection, job: &Job) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1, $2::int4)")
        .bind(LOCK_CLASS)
        .bind(lock_key(job.id))
        .execute(conn)
        .await
        .map(drop)
}

/// Takes the job's advisory lock again on a new session (the old one broke); false if another
/// session holds it.
pub async fn relock(conn: &mut PgConnection, job: &Job) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LOCK_CLASS)
        .bind(lock_key(job.id))
        .fetch_one(conn)
        .await
}

/// What a heartbeat learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    Held { cancel_requested: bool },
    Lost,
}

pub async fn heartbeat(conn: &mut PgConnection, job: &Job, lease: Duration) -> sqlx::Result<Heartbeat> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE queue_jobs q SET lease_expires_at = now() + make_interval(secs => $3), heartbeat_at = now()
          WHERE q.id = $1 AND q.attempt = $2 AND q.state = 'running'
      RETURNING (SELECT e.cancel_requested FROM exports e WHERE e.id = q.export_id)",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(lease.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some(cancel_requested) => Heartbeat::Held { cancel_requested },
        None => Heartbeat::Lost,
    })
}

/// Ends a running job in the caller's transaction; false when the lease was lost meanwhile.
pub async fn finish(conn: &mut PgConnection, job: &Job, state: JobState, error: Option<&str>) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = $3, finished_at = now(), last_error = COALESCE($4, last_error),
                lease_expires_at = NULL, claimed_at = NULL, heartbeat_at = NULL
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

/// Why a running job goes back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Waiting on Auth0 (it answered: progress), a shutdown, a tenant this replica lacks: no
    /// failure is counted and the failure budget is restored.
    Snooze,
    /// The stage failed: one more error against `max_attempts`.
    Failed,
}

/// Runs the job again after `delay`.
pub async fn reschedule(
    pool: &PgPool,
    job: &Job,
    delay: Duration,
    why: Requeue,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE queue_jobs SET state = CASE WHEN $4 THEN 'retryable' ELSE 'available' END,
                errors = CASE WHEN $4 THEN errors + 1 ELSE 0 END,
                -- A cancel that arrived while the stage was finishing: run again at once, so the
                -- next claim winds the export up instead of sleeping through the delay.
                run_at = now() + CASE WHEN (SELECT e.cancel_requested FROM exports e WHERE e.id = export_id)
                                      THEN interval '0' ELSE make_interval(secs => $3) END,
                locked_by = NULL, lease_expires_at = NULL,
                claimed_at = NULL, heartbeat_at = NULL, last_error = COALESCE($5, last_error)
          WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(delay.as_secs_f64())
    .bind(why == Requeue::Failed)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Progress restores the failure budget: a long stage that keeps moving never runs out of it.
pub async fn reset_errors(conn: &mut PgConnection, job: &Job) -> sqlx::Result<()> {
    sqlx::query("UPDATE queue_jobs SET errors = 0 WHERE id = $1 AND attempt = $2 AND errors > 0")
        .bind(job.id)
        .bind(job.attempt)
        .execute(conn)
        .await
        .map(drop)
}

/// Locks the job's row while this attempt still holds it; false when the lease was lost.
pub async fn hold(conn: &mut PgConnection, job: &Job) -> sqlx::Result<bool> {
    hold_claim(conn, job.id, job.attempt).await
}

/// [`hold`] by the job's id and the claim (`attempt`) that holds it.
pub async fn hold_claim(conn: &mut PgConnection, id: i64, attempt: i32) -> sqlx::Result<bool> {
    let held: Option<i64> =
        sqlx::query_scalar("SELECT id FROM queue_jobs WHERE id = $1 AND attempt = $2 AND state = 'running' FOR UPDATE")
            .bind(id)
            .bind(attempt)
            .fetch_optional(conn)
            .await?;
    Ok(held.is_some())
}

/// What one rescue pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Jobs handed back to the queue.
    pub requeued: u64,
    /// Jobs whose workers kept dying without progress: their exports failed.
    pub discarded: u64,
}

/// Returns running jobs whose worker is gone to the queue, in one transaction. A worker is gone
/// when its session no longer holds the job's advisory lock (its connection died) and its
/// heartbeat stopped for [`BEAT_STALE`] (a crash, not a database blip the worker survived), or
/// when its lease expired (the backstop, and the only sign for jobs claimed without a lock). A
/// job whose workers died `max_attempts` times without progress fails its export instead.
#[tracing::instrument(skip_all)]
///
/// `trust_locks` is false right after the caller itself could not reach Postgres: every session
/// died in that outage, and live workers need a moment to beat and take their locks again.
pub async fn rescue_abandoned(pool: &PgPool, trust_locks: bool) -> sqlx::Result<Rescued> {
    let mut tx = pool.begin().await?;
    let abandoned: Vec<(i64, i32, i32)> = sqlx::query_as(
        "SELECT q.id, q.errors, q.max_attempts FROM queue_jobs q
          WHERE q.state = 'running'
            AND (q.lease_expires_at < now()
                 OR ($3 AND q.claimed_at IS NOT NULL AND q.heartbeat_at < now() - make_interval(secs => $2) AND NOT EXISTS (
                        SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = $1::int8::oid AND l.objid = (q.id & 2147483647)::oid AND l.objsubid = 2
                           AND l.granted)))
          FOR UPDATE SKIP LOCKED",
    )
    .bind(LOCK_CLASS)
    .bind(BEAT_STALE.as_secs_f64())
    .bind(trust_locks)
    .fetch_all(&mut *tx)
    .await?;
    let (dead, retry): (Vec<_>, Vec<_>) = abandoned.into_iter().partition(|(_, errors, max)| errors + 1 >= *max);
    let dead: Vec<i64> = dead.into_iter().map(|(id, ..)| id).collect();
    let retry: Vec<i64> = retry.into_iter().map(|(id, ..)| id).collect();
    if !dead.is_empty() {
        sqlx::query(
            "WITH dead AS (
                UPDATE queue_jobs SET state = 'discarded', finished_at = now(), errors = errors + 1,
                       lease_expires_at = NULL, claimed_at = NULL, heartbeat_at = NULL,
                       last_error = 'the worker running this job stopped too many times without progress'
                 WHERE id = ANY($1) RETURNING export_id, errors)
             UPDATE exports e SET status = 'failed', finished_at = now(),
                    error = jsonb_build_object('stage', e.stage, 'message',
                            format('the worker running this stage stopped %s times without making progress', dead.errors))
               FROM dead WHERE e.id = dead.export_id AND e.status IN ('queued', 'running')",
        )
        .bind(&dead)
        .execute(&mut *tx)
        .await?;
    }
    if !retry.is_empty() {
        sqlx::query(
            "UPDATE queue_jobs SET state = 'retryable', run_at = now(), locked_by = NULL, lease_expires_at = NULL,
                    claimed_at = NULL, heartbeat_at = NULL, errors = errors + 1, last_error = 'the worker running this job stopped (crash or lost connection)'
              WHERE id = ANY($1)",
        )
        .bind(&retry)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Rescued { requeued: retry.len() as u64, discarded: dead.len() as u64 })
}

/// Jobs waiting to run (ready now or scheduled).
pub async fn depth(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM queue_jobs WHERE state IN ('available', 'retryable')")
        .fetch_one(pool)
        .await
}

/// Cancels the export's jobs that no worker holds; returns whether one is still running (its
/// worker is woken through [`CANCEL_CHANNEL`] when the caller commits).
pub async fn cancel_idle_jobs(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query(
        "UPDATE queue_jobs SET state = 'cancelled', finished_at = now()
          WHERE export_id = $1 AND state IN ('available', 'retryable')",
    )
    .bind(export_id)
    .execute(&mut *conn)
    .await?;
    let running: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM queue_jobs WHERE export_id = $1 AND state = 'running')")
            .bind(export_id)
            .fetch_one(&mut *conn)
            .await?;
    if running {
        sqlx::query("SELECT pg_notify($1, $2)").bind(CANCEL_CHANNEL).bind(export_id.to_string()).execute(conn).await?;
    }
    Ok(running)
}
