//! The tenant-wide token bucket shared by every /api/v2 call, and its response headers.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};

pub struct Bucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// Outcome of one request against the bucket.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u64,
    /// UNIX seconds of when the next token is added (rounded up).
    pub reset: u64,
}

impl Bucket {
    pub fn new(burst: u32, rate: f64) -> Bucket {
        let capacity = burst.max(1) as f64;
        Bucket { capacity, rate: rate.max(0.001), tokens: capacity, last: Instant::now() }
    }

    pub fn take(&mut self) -> Decision {
        let now = Instant::now();
        // Refill by whole milliseconds, as Auth0 says per-second buckets do.
        let ms = now.duration_since(self.last).as_millis();
        if ms > 0 {
            self.tokens = (self.tokens + self.rate * ms as f64 / 1000.0).min(self.capacity);
            self.last += std::time::Duration::from_millis(ms as u64);
        }
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64;
        let until_next =
            if self.tokens >= self.capacity { 0.0 } else { (1.0 - self.tokens.fract()) / self.rate * 1000.0 };
        Decision {
            allowed,
            limit: self.capacity as u32,
            remaining: self.tokens.floor() as u64,
            reset: ((now_ms + until_next) / 1000.0).ceil() as u64,
        }
    }
}

impl Decision {
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited() {
        let mut b = Bucket::new(3, 1.0);
        assert!(b.take().allowed);
        assert!(b.take().allowed);
        let d = b.take();
        assert!(d.allowed && d.remaining == 0);
        assert!(!b.take().allowed);
    }
}
