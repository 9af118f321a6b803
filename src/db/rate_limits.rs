//! The `rate_limits` table: each tenant's GCRA theoretical arrival time, on the database clock.

use sqlx::PgPool;

/// Moves the tenant's theoretical arrival time `secs` past `max(tat, now)`; returns how far the
/// new arrival time lies ahead of the database clock, in seconds.
#[tracing::instrument(skip_all)]
pub async fn reserve(pool: &PgPool, tenant: &str, secs: f64) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "INSERT INTO rate_limits (tenant, tat) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
         ON CONFLICT (tenant) DO UPDATE
            SET tat = GREATEST(rate_limits.tat, clock_timestamp()) + make_interval(secs => $2)
         RETURNING extract(epoch FROM tat - clock_timestamp())::float8",
    )
    .bind(tenant)
    .bind(secs)
    .fetch_one(pool)
    .await
}

/// Holds every replica's next request back to at least `secs` from now, never pulling `tat` earlier.
#[tracing::instrument(skip_all)]
pub async fn push_back(pool: &PgPool, tenant: &str, secs: f64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO rate_limits (tenant, tat) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
         ON CONFLICT (tenant) DO UPDATE
            SET tat = GREATEST(rate_limits.tat, clock_timestamp() + make_interval(secs => $2))",
    )
    .bind(tenant)
    .bind(secs)
    .execute(pool)
    .await
    .map(drop)
}
