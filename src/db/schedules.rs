//! The `schedules` and `schedule_runs` tables.

use chrono::{DateTime, Utc};
use sqlx::{types::Json, PgConnection, PgPool};
use uuid::Uuid;

use crate::model::ExportRequest;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub tenant: String,
    pub cron: String,
    pub timezone: String,
    /// The export body of every run (`base` unset; runs of an incremental schedule add `latest`).
    pub request: Json<ExportRequest>,
    pub incremental: bool,
    pub enabled: bool,
    pub description: Option<String>,
    pub next_run_at: DateTime<Utc>,
    pub runs_started: i64,
    pub runs_skipped: i64,
    pub last_due_at: Option<DateTime<Utc>>,
    pub last_export_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant, cron, timezone, request, incremental, enabled, description, next_run_at,
    runs_started, runs_skipped, last_due_at, last_export_id, created_at, updated_at";

/// What a schedule is set to: everything a client chooses.
pub struct ScheduleSpec {
    pub cron: String,
    pub timezone: String,
    pub request: ExportRequest,
    pub incremental: bool,
    pub enabled: bool,
    pub description: Option<String>,
}

pub async fn insert(pool: &PgPool, spec: &ScheduleSpec, next_run_at: DateTime<Utc>) -> sqlx::Result<ScheduleRow> {
    sqlx::query_as(&format!(
        "INSERT INTO schedules (id, tenant, cron, timezone, request, incremental, enabled, description, next_run_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&spec.request.tenant)
    .bind(&spec.cron)
    .bind(&spec.timezone)
    .bind(Json(&spec.request))
    .bind(spec.incremental)
    .bind(spec.enabled)
    .bind(&spec.description)
    .bind(next_run_at)
    .fetch_one(pool)
    .await
}

/// Replaces what the client chose; `next_run_at` is recomputed by the caller from now, so a
/// changed or re-enabled schedule never fires for times that passed meanwhile.
pub async fn update(
    conn: &mut PgConnection,
    id: Uuid,
    spec: &ScheduleSpec,
    next_run_at: DateTime<Utc>,
) -> sqlx::Result<Option<ScheduleRow>> {
    sqlx::query_as(&format!(
        "UPDATE schedules SET tenant = $2, cron = $3, timezone = $4, request = $5, incremental = $6, enabled = $7,
                description = $8, next_run_at = $9, updated_at = now()
          WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&spec.request.tenant)
    .bind(&spec.cron)
    .bind(&spec.timezone)
    .bind(Json(&spec.request))
    .bind(spec.incremental)
    .bind(spec.enabled)
    .bind(&spec.description)
    .bind(next_run_at)
    .fetch_optional(conn)
    .await
}

/// The row, locked for an update in the caller's transaction.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<ScheduleRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ScheduleRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM schedules WHERE id = $1")).bind(id).fetch_optional(pool).await
}

pub async fn delete(pool: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM schedules WHERE id = $1").bind(id).execute(pool).await?.rows_affected() == 1)
}

/// Newest first, keyset on the time-ordered id; `limit + 1` rows tell whether a next page exists.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ScheduleRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM schedules
          WHERE ($1::text IS NULL OR tenant = $1) AND ($2::uuid IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

/// Enabled schedules due by the database's clock, locked so that no other replica acts on
/// them until the caller commits (others skip them), with that clock's reading.
pub async fn lock_due(conn: &mut PgConnection, limit: i64) -> sqlx::Result<(Vec<ScheduleRow>, DateTime<Utc>)> {
    let now = db_now(conn).await?;
    let due = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE enabled AND next_run_at <= $1
          ORDER BY next_run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok((due, now))
}

/// The schedule's export still queued or running, if any.
pub async fn active_export(conn: &mut PgConnection, schedule: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM exports WHERE schedule_id = $1 AND status IN ('queued', 'running') LIMIT 1")
        .bind(schedule)
        .fetch_optional(conn)
        .await
}

/// How one due time was acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Started,
    Skipped,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Started => "started",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// Records how the schedule's current due time is acted on; false when it was recorded before
/// (the key refuses a second run of one due time, whichever replica or edit tries).
pub async fn claim_run(
    conn: &mut PgConnection,
    schedule: &ScheduleRow,
    outcome: RunOutcome,
    export_id: Option<Uuid>,
    missed: u32,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO schedule_runs (schedule_id, due_at, outcome, export_id, missed) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (schedule_id, due_at) DO NOTHING",
    )
    .bind(schedule.id)
    .bind(schedule.next_run_at)
    .bind(outcome.as_str())
    .bind(export_id)
    .bind(missed as i32)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Names the export a started run created.
pub async fn set_run_export(conn: &mut PgConnection, schedule: &ScheduleRow, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE schedule_runs SET export_id = $3 WHERE schedule_id = $1 AND due_at = $2")
        .bind(schedule.id)
        .bind(schedule.next_run_at)
        .bind(export_id)
        .execute(conn)
        .await
        .map(drop)
}

/// Moves the schedule on to its next due time, counting the run of the current one (if any).
pub async fn advance(
    conn: &mut PgConnection,
    schedule: &ScheduleRow,
    outcome: Option<RunOutcome>,
    export_id: Option<Uuid>,
    next_run_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE schedules SET next_run_at = $2, last_due_at = next_run_at,
                runs_started = runs_started + CASE WHEN $3 = 'started' THEN 1 ELSE 0 END,
                runs_skipped = runs_skipped + CASE WHEN $3 = 'skipped' THEN 1 ELSE 0 END,
                last_export_id = COALESCE($4, last_export_id)
          WHERE id = $1",
    )
    .bind(schedule.id)
    .bind(next_run_at)
    .bind(outcome.map(RunOutcome::as_str))
    .bind(export_id)
    .execute(conn)
    .await
    .map(drop)
}

/// The database's clock: every replica reads due times against the same one.
pub async fn db_now(conn: &mut PgConnection) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

/// Deletes the records of due times older than `age`, in short batches; returns how many.
pub async fn prune_runs(pool: &PgPool, age: std::time::Duration) -> sqlx::Result<u64> {
    super::delete_in_batches(
        pool,
        "DELETE FROM schedule_runs WHERE (schedule_id, due_at) IN (
            SELECT schedule_id, due_at FROM schedule_runs WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        age,
    )
    .await
}
