//! Postgres: the pool, the embedded migrations, and one module per table.

pub mod exports;
pub mod profiles;
pub mod roles;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::{postgres::PgPoolOptions, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url.expose_secret())
        .await
        // The URL may hold a password: name the failure, not the URL.
        .map_err(|e| anyhow::anyhow!("connecting to DATABASE_URL failed: {e}"))?;
    Ok(pool)
}

/// Applies pending migrations; sqlx holds an advisory lock, so replicas starting together are safe.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Whether the database has every migration this binary embeds.
pub async fn migrations_current(pool: &PgPool) -> sqlx::Result<bool> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(applied.unwrap_or(0) >= latest)
}
