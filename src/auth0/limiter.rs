//! One Management API budget per tenant, shared by every worker and replica (GCRA in Postgres).
//!
//! A process reserves a small batch of emission slots in `rate_limits.tat` with one statement and
//! hands them to its requests one by one; every replica advances the same row, so together they
//! never exceed the configured rate. Auth0's own headers push the row forward when the tenant is
//! closer to its limit than we are.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::db;

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

/// Longest hold one response's headers may impose: a bogus far-future reset must not stop a
/// tenant's exports for hours (the SDKs cap at 10 to 60 s too).
const MAX_PUSH: f64 = 60.0;

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
            retry_after: num("retry-after")
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(MAX_PUSH))),
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
            // Slots long past (this process stalled) were already counted against the window the
            // other replicas are now using: sending on them would overshoot. Reserve afresh.
            let interval = Duration::from_secs_f64(self.interval);
            if local.next.is_some_and(|next| next + interval < Instant::now()) {
                local.left = 0;
            }
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
        let secs = self.interval * f64::from(k);
        // A database blip must not fail a stage: the reservation waits for Postgres.
        let ahead =
            db::retry("reserving rate-limit slots", || db::rate_limits::reserve(&self.pool, &self.tenant, secs))
                .await?;
        let first = ahead - self.interval * f64::from(k);
        let now = Instant::now();
        Ok(if first >= 0.0 { now + Duration::from_secs_f64(first) } else { now })
    }

    /// Feeds a response's headers back: when the tenant's bucket runs low, everyone slows down.
    pub async fn observe(&self, headers: RateLimitHeaders) -> sqlx::Result<()> {
        match pace_delay(headers, epoch_now()) {
            Some(delay) => self.push_back(delay).await,
            None => Ok(()),
        }
    }

    /// After a 429: nobody sends before `max(Retry-After, reset - now, 1 s)` plus jitter.
    pub async fn back_off(&self, headers: RateLimitHeaders) -> sqlx::Result<()> {
        let now = epoch_now();
        let reset = headers.reset.map_or(0.0, |r| r as f64 - now);
        let after = headers.retry_after.map_or(0.0, |d| d.as_secs_f64());
        // Jitter spreads the replicas' first requests after the reset.
        self.push_back(reset.max(after).clamp(1.0, MAX_PUSH) + fastrand::f64() * 0.25).await
    }

    /// Holds every replica's next request back by `delay` seconds from now on the database's
    /// clock (the one `tat` lives on), never pulling `tat` earlier.
    async fn push_back(&self, delay: f64) -> sqlx::Result<()> {
        // Slots reserved before the push are void: the next request reserves after it.
        self.local.lock().await.left = 0;
        db::rate_limits::push_back(&self.pool, &self.tenant, delay.clamp(0.0, MAX_PUSH)).await
    }
}

fn epoch_now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

/// How long the headers say the next request should wait, if at all. An empty bucket holds
/// everyone until the reset; a nearly empty one (under a tenth of its size) spreads the tokens
/// left over the time to the reset. Otherwise our own pacing stands.
fn pace_delay(headers: RateLimitHeaders, now: f64) -> Option<f64> {
    let (remaining, to_reset) = (headers.remaining?, headers.reset? as f64 - now);
    if to_reset <= 0.0 {
        return None;
    }
    let low = headers.limit.map_or(2, |l| (l / 10).max(2));
    match remaining {
        0 => Some(to_reset.min(MAX_PUSH)),
        r if r < low => Some((to_reset / (r as f64 + 1.0)).min(MAX_PUSH)),
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
        h.insert("retry-after", HeaderValue::from_static("inf"));
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
        assert_eq!(pace_delay(h(0, 110), 100.0), Some(10.0), "empty: wait for the reset");
        assert_eq!(pace_delay(h(3, 110), 100.0), Some(2.5), "4 slots left before the reset");
        assert_eq!(pace_delay(h(30, 110), 100.0), None, "plenty left: our own pacing stands");
        assert_eq!(pace_delay(h(0, 90), 100.0), None, "a reset in the past says nothing");
        assert_eq!(pace_delay(h(0, 100_000), 100.0), Some(MAX_PUSH), "a bogus reset is capped");
        assert_eq!(pace_delay(RateLimitHeaders::default(), 100.0), None);
    }
}
