//! One Management API budget per tenant, shared by every worker and replica (GCRA in Postgres).
//!
//! Each request reserves the next emission slot in `rate_limits.tat` with one statement; every
//! replica reads and advances the same row, so together they never exceed the configured rate.
//! Auth0's own headers push the row forward when the tenant is closer to its limit than we are.

use std::time::Duration;

use sqlx::PgPool;

#[derive(Clone)]
pub struct RateLimiter {
    pool: PgPool,
    tenant: String,
    /// Seconds between two requests: 1 / rate.
    interval: f64,
}

/// What one response said about the tenant's bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimitHeaders {
    pub remaining: Option<u64>,
    /// UNIX seconds when tokens are next added.
    pub reset: Option<i64>,
    pub retry_after: Option<Duration>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> RateLimitHeaders {
        let num = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        RateLimitHeaders {
            remaining: num("x-ratelimit-remaining").map(|v| v.max(0.0) as u64),
            reset: num("x-ratelimit-reset").map(|v| v as i64),
            retry_after: num("retry-after").filter(|s| *s >= 0.0).map(Duration::from_secs_f64),
        }
    }
}

impl RateLimiter {
    pub fn new(pool: PgPool, tenant: &str, rate: f64) -> RateLimiter {
        RateLimiter { pool, tenant: tenant.to_owned(), interval: 1.0 / rate }
    }

    /// Reserves the next slot and sleeps until it comes; returns the time slept.
    pub async fn acquire(&self) -> sqlx::Result<Duration> {
        // The statement returns how far the new theoretical arrival time lies ahead of the
        // database clock; our slot starts one interval before it.
        let ahead: f64 = sqlx::query_scalar(
            "INSERT INTO rate_limits (tenant, tat) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (tenant) DO UPDATE
                SET tat = GREATEST(rate_limits.tat, clock_timestamp()) + make_interval(secs => $2)
             RETURNING extract(epoch FROM tat - clock_timestamp())::float8",
        )
        .bind(&self.tenant)
        .bind(self.interval)
        .fetch_one(&self.pool)
        .await?;
        let wait = Duration::from_secs_f64((ahead - self.interval).max(0.0));
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            add_wait_seconds(wait);
        }
        Ok(wait)
    }

    /// Feeds a response's headers back: an empty bucket holds everyone until Auth0's reset.
    pub async fn observe(&self, headers: RateLimitHeaders) -> sqlx::Result<()> {
        if let (Some(remaining), Some(reset)) = (headers.remaining, headers.reset) {
            if remaining == 0 {
                self.push_back_to(reset as f64).await?;
            }
        }
        Ok(())
    }

    /// After a 429: nobody sends before `max(Retry-After, reset - now, 1 s)` plus jitter.
    pub async fn back_off(&self, headers: RateLimitHeaders) -> sqlx::Result<()> {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let mut until = now + 1.0;
        if let Some(reset) = headers.reset {
            until = until.max(reset as f64);
        }
        if let Some(after) = headers.retry_after {
            until = until.max(now + after.as_secs_f64());
        }
        // Jitter spreads the replicas' first requests after the reset.
        until += fastrand::f64() * 0.25;
        self.push_back_to(until).await
    }

    async fn push_back_to(&self, epoch_secs: f64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO rate_limits (tenant, tat) VALUES ($1, to_timestamp($2))
             ON CONFLICT (tenant) DO UPDATE SET tat = GREATEST(rate_limits.tat, to_timestamp($2))",
        )
        .bind(&self.tenant)
        .bind(epoch_secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn add_wait_seconds(wait: Duration) {
    // Prometheus counters here are integers: accumulate milliseconds and export whole seconds,
    // so many short waits still add up.
    use std::sync::atomic::{AtomicU64, Ordering};
    static MILLIS: AtomicU64 = AtomicU64::new(0);
    let before = MILLIS.fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
    let after = before + wait.as_millis() as u64;
    let whole = after / 1000 - before / 1000;
    if whole > 0 {
        metrics::counter!("exporter_rate_limiter_wait_seconds_total").increment(whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn headers_parse_and_tolerate_garbage() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("7"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1675452600"));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        let parsed = RateLimitHeaders::from_headers(&h);
        assert_eq!(parsed.remaining, Some(7));
        assert_eq!(parsed.reset, Some(1675452600));
        assert_eq!(parsed.retry_after, None);
    }
}
