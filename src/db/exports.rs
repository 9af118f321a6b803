//! The `exports` table: creation (idempotent), reads, listing, cancellation and counters.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{types::Json, FromRow, PgConnection, PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{auth0::CallCounts, model::ExportRequest, queue};

/// An export's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl ExportStatus {
    pub const ALL: [ExportStatus; 5] = [
        ExportStatus::Queued,
        ExportStatus::Running,
        ExportStatus::Completed,
        ExportStatus::Failed,
        ExportStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportStatus::Queued => "queued",
            ExportStatus::Running => "running",
            ExportStatus::Completed => "completed",
            ExportStatus::Failed => "failed",
            ExportStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<ExportStatus> {
        ExportStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, ExportStatus::Completed | ExportStatus::Failed | ExportStatus::Cancelled)
    }
}

/// The pipeline stage an export is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Queued,
    CreatingJob,
    WaitingForJob,
    Downloading,
    Enriching,
    Finished,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::CreatingJob => "creating_job",
            Stage::WaitingForJob => "waiting_for_job",
            Stage::Downloading => "downloading",
            Stage::Enriching => "enriching",
            Stage::Finished => "finished",
        }
    }
}

/// How an export fetches roles: by enumerating each role's members, or one call per user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RolesStrategy {
    ByRole,
    PerUser,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExportRow {
    pub id: Uuid,
    pub tenant: String,
    pub request: Json<ExportRequest>,
    pub status: ExportStatus,
    pub stage: Stage,
    pub auth0_job_id: Option<String>,
    pub auth0_jobs_created: i32,
    pub job_percent_done: Option<i32>,
    pub users_total: Option<i64>,
    pub users_downloaded: i64,
    pub users_enriched: i64,
    pub api_calls: i64,
    pub rate_limited: i64,
    pub retries: i64,
    pub roles_strategy: Option<RolesStrategy>,
    pub roles_fetched: bool,
    pub roles_folded_after: Option<String>,
    pub error: Option<Json<Value>>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub enrich_started_at: Option<DateTime<Utc>>,
    /// The completed export this one builds on (incremental exports).
    pub base_id: Option<Uuid>,
    /// `incremental`, or `full` when an export with a base could not build on it.
    pub mode: Option<String>,
    pub full_reason: Option<String>,
    /// The newest tenant log id before the Auth0 job was created: where a later export's log
    /// reading starts when it builds on this one.
    pub log_checkpoint: Option<String>,
    pub users_added: Option<i64>,
    pub users_deleted: Option<i64>,
    pub users_changed: Option<i64>,
    pub mfa_refetched: Option<i64>,
    pub calls_saved: Option<i64>,
    /// The schedule that started this export.
    pub schedule_id: Option<Uuid>,
}

const COLUMNS: &str = "id, tenant, request, status, stage, auth0_job_id, auth0_jobs_created, job_percent_done,
    users_total, users_downloaded, users_enriched, api_calls, rate_limited, retries, roles_strategy, roles_fetched,
    roles_folded_after, error, cancel_requested, created_at, started_at, finished_at, enrich_started_at,
    base_id, mode, full_reason, log_checkpoint, users_added, users_deleted, users_changed, mfa_refetched, calls_saved, schedule_id";

/// What a new export builds on.
pub enum BaseChoice {
    /// A full export, as asked.
    None,
    /// An incremental export on this completed export.
    Base(Uuid),
    /// Asked to be incremental, but runs in full from the start, for this reason.
    Full(String),
}

/// What `"base": "latest"` builds on: the newest completed export asking for the same data as
/// `request`, or, with none, a full run that says why.
pub async fn latest_base(conn: &mut PgConnection, request: &ExportRequest) -> sqlx::Result<BaseChoice> {
    let rows: Vec<(Uuid, Json<ExportRequest>)> = sqlx::query_as(
        "SELECT id, request FROM exports WHERE tenant = $1 AND status = 'completed' ORDER BY id DESC LIMIT 200",
    )
    .bind(&request.tenant)
    .fetch_all(conn)
    .await?;
    Ok(match rows.into_iter().find(|(_, r)| r.same_data(request)) {
        Some((id, _)) => BaseChoice::Base(id),
        None => BaseChoice::Full("no completed export of this tenant asked for the same data".into()),
    })
}

/// The tenant's newest completed export (by creation: the freshest data) of all its users (no
/// `limit`, no `connection_id`), or the newest `schedule` completed; one statement, so a reader
/// sees the old export or the new one, never a mix.
pub async fn latest_of_tenant(pool: &PgPool, tenant: &str, schedule: Option<Uuid>) -> sqlx::Result<Option<ExportRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM exports
          WHERE tenant = $1 AND status = 'completed'
            AND CASE WHEN $2::uuid IS NULL
                     THEN request->>'limit' IS NULL AND request->>'connection_id' IS NULL
                     ELSE schedule_id = $2 END
          ORDER BY id DESC LIMIT 1"
    ))
    .bind(tenant)
    .bind(schedule)
    .fetch_optional(pool)
    .await
}

/// What a new export is asked for: the request, its hash, and where it came from.
pub struct NewExport<'a> {
    pub request: &'a ExportRequest,
    pub request_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub base: &'a BaseChoice,
    pub schedule_id: Option<Uuid>,
}

/// Inserts the export and its first queue job in the caller's transaction; `None` when the
/// idempotency key is taken.
pub async fn insert(conn: &mut PgConnection, new: &NewExport<'_>) -> sqlx::Result<Option<ExportRow>> {
    let (base_id, full_reason) = match new.base {
        BaseChoice::None => (None, None),
        BaseChoice::Base(id) => (Some(*id), None),
        BaseChoice::Full(reason) => (None, Some(reason.as_str())),
    };
    let inserted: Option<ExportRow> = sqlx::query_as(&format!(
        "INSERT INTO exports (id, tenant, request, request_hash, idempotency_key, base_id, mode, full_reason, schedule_id)
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $7::text IS NOT NULL THEN 'full' END, $7, $8)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&new.request.tenant)
    .bind(Json(new.request))
    .bind(new.request_hash)
    .bind(new.idempotency_key)
    .bind(base_id)
    .bind(full_reason)
    .bind(new.schedule_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = &inserted {
        queue::enqueue(conn, row.id, queue::JobKind::CreateJob).await?;
    }
    Ok(inserted)
}

pub enum Created {
    New(ExportRow),
    /// Same idempotency key and same body: the export made the first time.
    Existing(ExportRow),
    /// Same idempotency key, another body (or another tenant).
    Conflict(ExportRow),
}

/// Inserts the export and its first queue job in one transaction.
#[tracing::instrument(skip_all)]
pub async fn create(pool: &PgPool, new: &NewExport<'_>) -> sqlx::Result<Created> {
    let mut tx = pool.begin().await?;
    if let Some(row) = insert(&mut tx, new).await? {
        tx.commit().await?;
        return Ok(Created::New(row));
    }
    tx.rollback().await?;
    // The key is unique across tenants, so it is looked up alone; another tenant's use conflicts.
    let row = sqlx::query(&format!("SELECT {COLUMNS}, request_hash FROM exports WHERE idempotency_key = $1"))
        .bind(new.idempotency_key)
        .fetch_one(pool)
        .await?;
    let hash: String = row.try_get("request_hash")?;
    let existing = ExportRow::from_row(&row)?;
    Ok(if hash == new.request_hash { Created::Existing(existing) } else { Created::Conflict(existing) })
}

#[tracing::instrument(skip_all)]
pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ExportRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM exports WHERE id = $1")).bind(id).fetch_optional(pool).await
}

/// Newest first, keyset on the time-ordered id; `limit + 1` rows tell whether a next page exists.
#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    status: Option<ExportStatus>,
    tenant: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ExportRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM exports
          WHERE ($1::text IS NULL OR status = $1::text) AND ($2::text IS NULL OR tenant = $2)
            AND ($3::uuid IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4"
    ))
    .bind(status)
    .bind(tenant)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

pub enum Cancelled {
    NotFound,
    AlreadyFinished(ExportRow),
    Done(ExportRow),
}

/// Cancels at once what no worker holds; a running stage sees `cancel_requested` at its next heartbeat.
#[tracing::instrument(skip_all)]
pub async fn cancel(pool: &PgPool, id: Uuid) -> sqlx::Result<Cancelled> {
    let mut tx = pool.begin().await?;
    let row: Option<ExportRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM exports WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(Cancelled::NotFound) };
    if row.status.is_final() {
        return Ok(Cancelled::AlreadyFinished(row));
    }
    let running = queue::cancel_idle_jobs(&mut tx, id).await?;
    let row: ExportRow = sqlx::query_as(&format!(
        "UPDATE exports SET cancel_requested = true,
                status = CASE WHEN $2 THEN status ELSE 'cancelled' END,
                finished_at = CASE WHEN $2 THEN finished_at ELSE now() END
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(running)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if row.status == ExportStatus::Cancelled {
        metrics::counter!("exporter_exports_total", "status" => "cancelled").increment(1);
    }
    Ok(Cancelled::Done(row))
}

/// Adds a stage's Auth0 call accounting to the export.
#[tracing::instrument(skip_all)]
pub async fn add_call_stats(conn: &mut PgConnection, id: Uuid, counts: CallCounts) -> sqlx::Result<()> {
    if counts.is_zero() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE exports SET api_calls = api_calls + $2, rate_limited = rate_limited + $3, retries = retries + $4
          WHERE id = $1",
    )
    .bind(id)
    .bind(counts.calls)
    .bind(counts.rate_limited)
    .bind(counts.retries)
    .execute(conn)
    .await?;
    Ok(())
}

/// A progress counter of the export resource.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    Downloaded,
    Enriched,
}

#[tracing::instrument(skip_all)]
pub async fn add_progress(conn: &mut PgConnection, id: Uuid, counter: Counter, n: u64) -> sqlx::Result<()> {
    let column = match counter {
        Counter::Downloaded => "users_downloaded",
        Counter::Enriched => "users_enriched",
    };
    if n > 0 {
        sqlx::query(&format!("UPDATE exports SET {column} = {column} + $2 WHERE id = $1"))
            .bind(id)
            .bind(n as i64)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Current number of exports per status, for the `exporter_exports` gauge.
#[tracing::instrument(skip_all)]
pub async fn count_by_status(pool: &PgPool) -> sqlx::Result<Vec<(ExportStatus, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM exports GROUP BY status").fetch_all(pool).await
}

/// Locks the export row while it still downloads Auth0 job `job_id`; false once the job was replaced.
#[tracing::instrument(skip_all)]
pub async fn lock_for_auth0_job(conn: &mut PgConnection, id: Uuid, job_id: &str) -> sqlx::Result<bool> {
    let held: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM exports WHERE id = $1 AND auth0_job_id = $2 FOR UPDATE")
            .bind(id)
            .bind(job_id)
            .fetch_optional(conn)
            .await?;
    Ok(held.is_some())
}

/// Records the stored file's user count once the download is complete; returns it.
#[tracing::instrument(skip(pool))]
pub async fn set_downloaded(pool: &PgPool, id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "UPDATE exports SET users_total = c.n, users_downloaded = c.n
           FROM (SELECT count(*) AS n FROM profiles WHERE export_id = $1) c
          WHERE id = $1 RETURNING c.n",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

/// Counts the final result; the export is marked completed by the runner.
#[tracing::instrument(skip_all)]
pub async fn set_total(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET users_total = (SELECT count(*) FROM profiles WHERE export_id = $1) WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .map(drop)
}

/// Stores the Auth0 job just created, only while `job` (the creating attempt) still holds its lease.
#[tracing::instrument(skip_all)]
pub async fn store_auth0_job(
    pool: &PgPool,
    id: Uuid,
    auth0_job_id: &str,
    job: &crate::queue::Job,
) -> sqlx::Result<bool> {
    let stored = sqlx::query(
        "UPDATE exports SET auth0_job_id = $2, auth0_jobs_created = auth0_jobs_created + 1, job_percent_done = 0
          WHERE id = $1 AND auth0_job_id IS NULL
            AND EXISTS (SELECT 1 FROM queue_jobs WHERE id = $3 AND attempt = $4 AND state = 'running')",
    )
    .bind(id)
    .bind(auth0_job_id)
    .bind(job.id)
    .bind(job.attempt)
    .execute(pool)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Forgets a dead Auth0 job and everything downloaded from it, in the caller's fenced transaction.
#[tracing::instrument(skip_all)]
pub async fn forget_auth0_job(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    // The export row first: a download batch of the old job holds it while it inserts, so the
    // delete below runs after that batch committed and sees its rows.
    sqlx::query("UPDATE exports SET auth0_job_id = NULL, users_downloaded = 0, job_percent_done = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM profiles WHERE export_id = $1").bind(id).execute(conn).await.map(drop)
}

/// Keeps the last known figure when Auth0 omits `percentage_done`.
#[tracing::instrument(skip_all)]
pub async fn set_job_percent_done(pool: &PgPool, id: Uuid, percent: Option<i32>) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET job_percent_done = COALESCE($2, job_percent_done) WHERE id = $1")
        .bind(id)
        .bind(percent)
        .execute(pool)
        .await
        .map(drop)
}

#[tracing::instrument(skip_all)]
pub async fn set_roles_strategy(pool: &PgPool, id: Uuid, strategy: RolesStrategy) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET roles_strategy = $2 WHERE id = $1")
        .bind(id)
        .bind(strategy)
        .execute(pool)
        .await
        .map(drop)
}

/// Marks the export running in `stage`; `None` when it is finished or cancelled.
#[tracing::instrument(skip(pool))]
pub async fn start_stage(pool: &PgPool, id: Uuid, stage: Stage) -> sqlx::Result<Option<ExportRow>> {
    sqlx::query_as(&format!(
        "UPDATE exports SET status = 'running', started_at = COALESCE(started_at, now()),
                stage_started_at = CASE WHEN stage = $2 AND stage_started_at IS NOT NULL THEN stage_started_at ELSE now() END,
                stage = $2,
                enrich_started_at = CASE WHEN $2 = 'enriching' THEN COALESCE(enrich_started_at, now()) ELSE enrich_started_at END
          WHERE id = $1 AND status IN ('queued', 'running') AND NOT cancel_requested
      RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(stage)
    .fetch_optional(pool)
    .await
}

/// Moves the export to `stage` (and `status`) in the caller's transaction; returns the seconds
/// the previous stage took when the stage changed.
#[tracing::instrument(skip_all)]
pub async fn move_to_stage(
    conn: &mut PgConnection,
    id: Uuid,
    stage: Stage,
    status: ExportStatus,
) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar(
        "WITH old AS (SELECT stage, stage_started_at FROM exports WHERE id = $1 FOR UPDATE)
         UPDATE exports e SET stage = $2, status = $3,
                stage_started_at = CASE WHEN old.stage = $2 THEN old.stage_started_at ELSE now() END,
                finished_at = CASE WHEN $3 = 'completed' THEN now() ELSE e.finished_at END
           FROM old WHERE e.id = $1
       RETURNING CASE WHEN old.stage = $2 THEN NULL
                      ELSE extract(epoch FROM now() - old.stage_started_at)::float8 END",
    )
    .bind(id)
    .bind(stage)
    .bind(status)
    .fetch_one(conn)
    .await
}

/// Ends a queued or running export as failed or cancelled; false when it had already ended.
#[tracing::instrument(skip_all)]
pub async fn end(conn: &mut PgConnection, id: Uuid, status: ExportStatus, message: Option<&str>) -> sqlx::Result<bool> {
    let ended = sqlx::query(
        "UPDATE exports SET status = $2, finished_at = now(),
                error = CASE WHEN $3::text IS NULL THEN NULL
                             ELSE jsonb_build_object('stage', stage, 'message', $3::text) END
          WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .bind(status)
    .bind(message)
    .execute(conn)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// Records the fold checkpoint (the last user whose roles were written) and, at the end, that
/// roles are complete.
#[tracing::instrument(skip_all)]
pub async fn set_roles_folded(conn: &mut PgConnection, id: Uuid, after: Option<&str>, done: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET roles_folded_after = $2, roles_fetched = $3 WHERE id = $1")
        .bind(id)
        .bind(after)
        .bind(done)
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes a finished export: the row with its queue jobs, and the rows of an export stored
/// before partitioning. Its own partition and role scratch rows are left for [`purge`], which the
/// caller runs next, off the request (nothing reads them once the export is gone). False when it
/// is no longer finished.
#[tracing::instrument(skip(pool))]
pub async fn delete(pool: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let finished: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM exports WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled') FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if finished.is_none() {
        return Ok(false);
    }
    crate::db::profiles::delete_legacy_rows(&mut tx, id).await?;
    sqlx::query("DELETE FROM exports WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(true)
}

/// Removes what a deleted export left: its partition and its role scratch rows.
#[tracing::instrument(skip(pool))]
pub async fn purge(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    crate::db::profiles::drop_partition(pool, id).await?;
    let mut tx = pool.begin().await?;
    crate::db::roles::clear(&mut tx, id).await?;
    crate::db::incremental::clear(&mut tx, id).await?;
    tx.commit().await
}

/// Deleted exports whose [`purge`] was interrupted (a crash between the DELETE and the purge).
pub async fn unpurged(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT substr(c.relname, 10)::uuid FROM pg_class c
          WHERE c.relkind = 'r' AND c.relname ~ '^profiles_[0-9a-f]{32}$'
            AND NOT EXISTS (SELECT 1 FROM exports e WHERE e.id = substr(c.relname, 10)::uuid)
         UNION
         SELECT DISTINCT r.export_id FROM export_roles r
          WHERE NOT EXISTS (SELECT 1 FROM exports e WHERE e.id = r.export_id)
         UNION
         SELECT DISTINCT c.export_id FROM export_changes c
          WHERE NOT EXISTS (SELECT 1 FROM exports e WHERE e.id = c.export_id)",
    )
    .fetch_all(pool)
    .await
}

/// Finished exports that finished longer than `retention` ago, oldest first.
pub async fn expired(pool: &PgPool, retention: std::time::Duration, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM exports
          WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < now() - make_interval(secs => $1)
          ORDER BY finished_at LIMIT $2",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Stores the log checkpoint taken before the Auth0 job was created.
pub async fn set_log_checkpoint(pool: &PgPool, id: Uuid, checkpoint: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET log_checkpoint = $2 WHERE id = $1")
        .bind(id)
        .bind(checkpoint)
        .execute(pool)
        .await
        .map(drop)
}

/// Records how an export with a base runs: `incremental` (with the users whose MFA is fetched
/// again) or `full` with the reason. The first decision stands.
pub async fn set_mode(pool: &PgPool, id: Uuid, full_reason: Option<&str>, refetched: Option<i64>) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE exports SET mode = COALESCE(mode, CASE WHEN $2::text IS NULL THEN 'incremental' ELSE 'full' END),
                full_reason = COALESCE(full_reason, $2), mfa_refetched = COALESCE(mfa_refetched, $3)
          WHERE id = $1",
    )
    .bind(id)
    .bind(full_reason)
    .bind(refetched)
    .execute(pool)
    .await
    .map(drop)
}

/// Records the diff and the per-user calls an incremental export did not make.
pub async fn set_diff(
    conn: &mut PgConnection,
    id: Uuid,
    diff: &crate::db::incremental::Diff,
    calls_saved: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE exports SET users_added = $2, users_deleted = $3, users_changed = $4, calls_saved = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(diff.added)
    .bind(diff.deleted)
    .bind(diff.changed)
    .bind(calls_saved)
    .execute(conn)
    .await
    .map(drop)
}
