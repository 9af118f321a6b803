//! Postgres: the pool, the embedded migrations, and one module per table.

pub mod exports;
pub mod incremental;
pub mod profiles;
pub mod rate_limits;
pub mod roles;
pub mod schedules;
pub mod webhooks;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::{postgres::PgPoolOptions, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows deleted per statement when pruning history: short transactions beside live traffic.
const PRUNE_BATCH: i64 = 5000;

/// Runs `delete` (deleting at most `$2` rows older than `$1` seconds) until a statement deletes
/// less than a batch; returns how many rows went.
pub async fn delete_in_batches(pool: &PgPool, delete: &str, age: Duration) -> sqlx::Result<u64> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(delete).bind(age.as_secs_f64()).bind(PRUNE_BATCH).execute(pool).await?.rows_affected();
        deleted += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // Short: while Postgres is down, requests answer 503 within a second instead of queueing.
        .acquire_timeout(Duration::from_millis(800))
        // No ping before each use: it doubles the round trips of a page. A broken connection
        // fails its query instead, which callers already treat as the database being away.
        .test_before_acquire(false)
        // A future dropped while `BEGIN` was in flight (a stage cut short by a cancel or a lost
        // lease) leaves a transaction open on the server that sqlx does not know of; such a
        // connection is closed instead of handed to the next caller. Sent as a simple query,
        // outside a block `now()` and `statement_timestamp()` are the same instant; inside one,
        // `now()` is the block's start; in a failed block the query errors. Runs as the
        // connection goes back to the pool, off any request's path.
        .after_release(|conn, _| Box::pin(outside_transaction(conn)))
        .connect(url.expose_secret())
        .await
        // The URL may hold a password: name the failure, not the URL.
        .map_err(|e| anyhow::anyhow!("connecting to DATABASE_URL failed: {e}"))?;
    Ok(pool)
}

/// Whether the connection is outside any transaction block (see `connect`).
async fn outside_transaction(conn: &mut sqlx::PgConnection) -> sqlx::Result<bool> {
    use sqlx::{Executor, Row};
    let row = conn.fetch_one(sqlx::raw_sql("SELECT now() = statement_timestamp()")).await?;
    row.try_get::<bool, _>(0)
}

/// Applies pending migrations; sqlx holds an advisory lock, so replicas starting together are safe.
#[tracing::instrument(skip_all)]
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the database has every migration this binary embeds.
#[tracing::instrument(skip_all)]
pub async fn migrations_current(pool: &PgPool) -> sqlx::Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(applied.unwrap_or(0) >= latest)
}

/// Whether an error says the database is unreachable, restarting or briefly overloaded (worth
/// waiting for) rather than that the statement is wrong.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exceptions; 57P0x: shutdown, crash recovery; 53300: too many
        // connections; 40001/40P01: serialization failure and deadlock, retried by design.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || matches!(&*c, "53300" | "40001" | "40P01")),
        _ => false,
    }
}

/// How long work that already paid for Auth0 answers keeps trying to store them.
pub const RETRY_FOR: Duration = Duration::from_secs(300);

/// Runs `op` until it succeeds, fails for a reason retrying cannot fix, or the database has been
/// unavailable for [`RETRY_FOR`]; waits grow from 100 ms to 5 s with jitter.
pub async fn retry<T, F, Fut>(what: &str, mut op: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_unavailable(&e) && started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %e, what, ?delay, "database unavailable; retrying");
                metrics::counter!("exporter_database_retries_total").increment(1);
                tokio::time::sleep(delay.mul_f64(0.75 + fastrand::f64() * 0.5)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}
