//! The `exports` table: creation (idempotent), reads, listing, cancellation and counters.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::{model::ExportRequest, queue};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExportRow {
    pub id: Uuid,
    pub tenant: String,
    pub request: Json<ExportRequest>,
    pub status: String,
    pub stage: String,
    pub auth0_job_id: Option<String>,
    pub auth0_jobs_created: i32,
    pub job_percent_done: Option<i32>,
    pub users_total: Option<i64>,
    pub users_downloaded: i64,
    pub users_enriched: i64,
    pub api_calls: i64,
    pub rate_limited: i64,
    pub retries: i64,
    pub roles_strategy: Option<String>,
    pub roles_fetched: bool,
    pub error: Option<Json<Value>>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub enrich_started_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant, request, status, stage, auth0_job_id, auth0_jobs_created, job_percent_done,
    users_total, users_downloaded, users_enriched, api_calls, rate_limited, retries, roles_strategy, roles_fetched,
    error, cancel_requested, created_at, started_at, finished_at, enrich_started_at";

pub enum Created {
    New(ExportRow),
    /// Same idempotency key and same body: the export made the first time.
    Existing(ExportRow),
    /// Same idempotency key, another body.
    Conflict(ExportRow),
}

/// Inserts the export and its first queue job in one transaction.
pub async fn create(
    pool: &PgPool,
    request: &ExportRequest,
    request_hash: &str,
    idempotency_key: Option<&str>,
) -> sqlx::Result<Created> {
    let mut tx = pool.begin().await?;
    let inserted: Option<ExportRow> = sqlx::query_as(&format!(
        "INSERT INTO exports (id, tenant, request, request_hash, idempotency_key)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&request.tenant)
    .bind(Json(request))
    .bind(request_hash)
    .bind(idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = inserted {
        queue::enqueue(&mut tx, row.id, queue::JobKind::CreateJob).await?;
        tx.commit().await?;
        return Ok(Created::New(row));
    }
    tx.rollback().await?;
    let row =
        sqlx::query(&format!("SELECT {COLUMNS}, request_hash FROM exports WHERE tenant = $1 AND idempotency_key = $2"))
            .bind(&request.tenant)
            .bind(idempotency_key)
            .fetch_one(pool)
            .await?;
    let hash: String = row.try_get("request_hash")?;
    let existing = ExportRow::from_row(&row)?;
    Ok(if hash == request_hash { Created::Existing(existing) } else { Created::Conflict(existing) })
}

pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ExportRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM exports WHERE id = $1")).bind(id).fetch_optional(pool).await
}

/// Newest first, keyset on the time-ordered id; `limit + 1` rows tell whether a next page exists.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    tenant: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ExportRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM exports
          WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR tenant = $2)
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
pub async fn cancel(pool: &PgPool, id: Uuid) -> sqlx::Result<Cancelled> {
    let mut tx = pool.begin().await?;
    let row: Option<ExportRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM exports WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(Cancelled::NotFound) };
    if matches!(row.status.as_str(), "completed" | "failed" | "cancelled") {
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
    if row.status == "cancelled" {
        metrics::counter!("exporter_exports_total", "status" => "cancelled").increment(1);
    }
    Ok(Cancelled::Done(row))
}

/// Adds a stage's Auth0 call accounting to the export.
pub async fn add_call_stats(
    conn: &mut PgConnection,
    id: Uuid,
    (calls, limited, retries): (i64, i64, i64),
) -> sqlx::Result<()> {
    if calls == 0 && limited == 0 && retries == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE exports SET api_calls = api_calls + $2, rate_limited = rate_limited + $3, retries = retries + $4
          WHERE id = $1",
    )
    .bind(id)
    .bind(calls)
    .bind(limited)
    .bind(retries)
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
pub async fn count_by_status(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM exports GROUP BY status").fetch_all(pool).await
}
