//! One Management API budget per tenant, shared by every worker and replica (GCRA in Postgres).
//!
//! A process reserves a small batch of emission slots in `rate_limits.tat` with one statement and
//! hands them to its requests one by one; every replica advances the same row, so together they
//! never exceed the configured rate. Auth0's own headers push the row forward when the tenant is
//! closer to its limit than we are.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

pub struct RateLimiter {
    pool: PgPool,
    tenant: String,
    /// Seconds between two requests: 1 / rate.
    interval: f64,
    /// Slots reserved per database round trip: about a tenth of a second's worth.
    batch: u32,
    /// Slots this process reserved and has not handed out yet. A mutex, so that one task at a
    /// time talks to the row and the others wait in memory instead of on row locks.
    local: Mutex<Reserved>,
}

#[derive(Default)]
struct Reserved {
    next: Option<Instant>,
    left: u32,
}

/// What one response said about the tenant's bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimitHeaders {
    /// The bucket's size.
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// UNIX seconds when tokens are next added.
    pub reset: Option<i64>,
    pub retry_after: Option<Duration>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> RateLimitHeaders {
        let num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        RateLimitHeaders {
            limit: num("x-ratelimit-limit").map(|v| v.max(0.0) as u64),
            remaining: num("x-ratelimit-remaining").map(|v| v.max(0.0) as u64),
            reset: num("x-ratelimit-reset").map(|v| v as i64),
            retry_after: num("retry-after").filter(|s| *s >= 0.0).map(Duration::from_secs_f64),
        }
    }
}

impl RateLimiter {
    pub fn new(pool: PgPool, tenant: &str, rate: f64) -> RateLimiter {
        RateLimiter {
            pool,
            tenant: tenant.to_owned(),
            interval: 1.0 / rate,
            batch: ((rate / 10.0).ceil() as u32).clamp(1, 20),
            local: Mutex::new(Reserved::default()),
        }
    }

    /// Takes the next slot (reserving a batch when none is left) and sleeps until it comes.
    pub async fn acquire(&self) -> sqlx::Result<Duration> {
        let slot = {
            let mut local = self.local.lock().await;
            if local.left == 0 {
                let first = self.reserve(self.batch).await?;
                *local = Reserved { next: Some(first), left: self.batch };
            }
            let slot = local.next.expect("set with left > 0");
            local.next = Some(slot + Duration::from_secs_f64(self.interval));
            local.left -= 1;
            slot
        };
        let wait = slot.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            add_wait_seconds(wait);
        }
        Ok(wait)
    }

    /// Reserves `k` consecutive slots; returns when the first may be used.
    async fn reserve(&self, k: u32) -> sqlx::Result<Instant> {
        // The statement returns how far the new theoretical arrival time lies ahead of the
        // database clock; our k slots end there.
        let ahead: f64 = sqlx::query_scalar(
            "INSERT INTO rate_limits (tenant, tat) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (tenant) DO UPDATE
                SET tat = GREATEST(rate_limits.tat, clock_timestamp()) + make_interval(secs => $2)
             RETURNING extract(epoch FROM tat - clock_timestamp())::float8",
        )
        .bind(&self.tenant)
        .bind(self.interval * f64::from(k))
        .fetch_one(&self.pool)
        .await?;
        let first = ahead - self.interval * f64::from(k);
        let now = Instant::now();
        Ok(if first >= 0.0 { now + Duration::from_secs_f64(first) } else { now })
    }

    /// Feeds a response's headers back: when the tenant's bucket runs low, everyone slows down.
    pub async fn observe(&self, headers: RateLimitHeaders) -> sqlx::Result<()> {
        match pace_until(headers, chrono::Utc::now().timestamp_millis() as f64 / 1000.0) {
            Some(until) => self.push_back_to(until).await,
            None => Ok(()),
        }
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
        // Slots reserved before the push are void: the next request reserves after it.
        self.local.lock().await.left = 0;
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

/// Where the headers say the next request should wait until, if anywhere. An empty bucket holds
/// everyone until the reset; a nearly empty one (under a tenth of its size) spreads the tokens
/// left over the time to the reset. Otherwise our own pacing stands.
fn pace_until(headers: RateLimitHeaders, now: f64) -> Option<f64> {
    let (remaining, reset) = (headers.remaining?, headers.reset? as f64);
    if reset <= now {
        return None;
    }
    let low = headers.limit.map_or(2, |l| (l / 10).max(2));
    match remaining {
        0 => Some(reset),
        r if r < low => Some(now + (reset - now) / (r as f64 + 1.0)),
        _ => None,
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

    #[test]
    fn low_buckets_slow_everyone_down() {
        let h = |remaining, reset| RateLimitHeaders {
            limit: Some(50),
            remaining: Some(remaining),
            reset: Some(reset),
            retry_after: None,
        };
        assert_eq!(pace_until(h(0, 110), 100.0), Some(110.0), "empty: wait for the reset");
        assert_eq!(pace_until(h(3, 110), 100.0), Some(102.5), "4 slots left before the reset");
        assert_eq!(pace_until(h(30, 110), 100.0), None, "plenty left: our own pacing stands");
        assert_eq!(pace_until(h(0, 90), 100.0), None, "a reset in the past says nothing");
        assert_eq!(pace_until(RateLimitHeaders::default(), 100.0), None);
    }
}
