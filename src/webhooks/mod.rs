//! Delivers webhook events: claims delivery jobs from the queue, signs and POSTs each, records
//! every try and schedules the next with jittered exponential backoff.

pub mod signature;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    config::WebhookSettings,
    db::{
        self,
        webhooks::{AfterAttempt, Attempt, DeliveryJob},
    },
};

/// Response bytes read at most (for the attempt record); the rest is dropped.
const ERROR_BODY_LIMIT: usize = 256;
/// Backoff grows by this factor per failed try.
const GROWTH: f64 = 4.0;
/// The longest wait between tries, in units of the first wait (6 h at the default 1 s).
const CAP_FACTOR: f64 = 21_600.0;

pub struct Dispatcher {
    pool: PgPool,
    settings: WebhookSettings,
    client: reqwest::Client,
    worker: String,
}

impl Dispatcher {
    pub fn new(pool: PgPool, settings: WebhookSettings, worker: String) -> anyhow::Result<Dispatcher> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("auth0-exporter/", env!("CARGO_PKG_VERSION"), " (Standard Webhooks)"))
            .build()?;
        Ok(Dispatcher { pool, settings, client, worker })
    }

    /// Claims and delivers until shutdown, `concurrency` tries at once. A try in flight at
    /// shutdown finishes (it is bounded by the timeout); a crash leaves its job to the rescuer.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let me = Arc::new(self);
        let slots = Arc::new(Semaphore::new(me.settings.concurrency.max(1)));
        let lease = me.settings.timeout() + Duration::from_secs(20);
        while !shutdown.is_cancelled() {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            match db::webhooks::claim(&me.pool, &me.worker, lease).await {
                Ok(Some(job)) => {
                    let me = me.clone();
                    let span = tracing::info_span!("webhook", delivery_id = %job.delivery_id, event_id = %job.event_id);
                    tokio::spawn(
                        async move {
                            me.deliver(job).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "claiming a webhook delivery failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
        // Let tries in flight record their outcome.
        let _ = tokio::time::timeout(
            me.settings.timeout() + Duration::from_secs(2),
            slots.acquire_many(me.settings.concurrency.max(1) as u32),
        )
        .await;
    }

    async fn deliver(&self, job: DeliveryJob) {
        if !job.enabled {
            if let Err(e) = db::webhooks::abandon(&self.pool, &job, "the endpoint is disabled").await {
                tracing::warn!(error = %e, "recording a delivery to a disabled endpoint failed");
            }
            metrics::counter!("exporter_webhook_deliveries_total", "outcome" => "endpoint_disabled").increment(1);
            return;
        }
        let attempt = self.try_once(&job).await;
        let ok = attempt.status_code.is_some_and(|c| (200..300).contains(&c));
        let tries_in_series = job.attempts - job.series_start + 1;
        let after = if ok {
            AfterAttempt::Succeeded
        } else if tries_in_series >= self.settings.max_attempts {
            AfterAttempt::GiveUp
        } else {
            AfterAttempt::Retry(backoff(self.settings.retry_base(), tries_in_series))
        };
        let outcome = match after {
            AfterAttempt::Succeeded => "succeeded",
            AfterAttempt::Retry(_) => "retried",
            AfterAttempt::GiveUp => "failed",
        };
        metrics::counter!("exporter_webhook_deliveries_total", "outcome" => outcome).increment(1);
        metrics::histogram!("exporter_webhook_delivery_duration_seconds", "outcome" => outcome)
            .record(f64::from(attempt.latency_ms) / 1000.0);
        match db::retry("recording a webhook delivery", || {
            db::webhooks::record_attempt(&self.pool, &job, &attempt, &after)
        })
        .await
        {
            Ok(true) => {
                tracing::info!(outcome, status = ?attempt.status_code, error = ?attempt.error, "webhook delivery tried")
            }
            Ok(false) => tracing::warn!("lease lost while delivering; the delivery is tried again"),
            Err(e) => tracing::warn!(error = %e, "recording a webhook delivery failed; it is tried again"),
        }
    }

    /// One signed POST. Any answer but a 2xx, a timeout or a connection failure is a failed try.
    async fn try_once(&self, job: &DeliveryJob) -> Attempt {
        let started_at = Utc::now();
        let started = Instant::now();
        let msg_id = job.event_id.to_string();
        let timestamp = started_at.timestamp();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let signature = signature::sign(&job.secret, &msg_id, timestamp, job.payload.as_bytes());
        for (name, value) in
            [("webhook-id", msg_id), ("webhook-timestamp", timestamp.to_string()), ("webhook-signature", signature)]
        {
            headers.insert(name, HeaderValue::from_str(&value).expect("ASCII header value"));
        }
        let sent = self.client.post(&job.url).headers(headers).body(job.payload.clone()).send().await;
        let (status_code, error) = match sent {
            Ok(response) => {
                let status = response.status();
                let error = (!status.is_success()).then(|| format!("answered {status}"));
                // Drain a little of the body so the connection can be reused; bounded by the timeout.
                let _ = read_prefix(response, ERROR_BODY_LIMIT).await;
                (Some(i32::from(status.as_u16())), error)
            }
            Err(e) if e.is_timeout() => {
                (None, Some(format!("timed out after {} s", self.settings.timeout().as_secs())))
            }
            Err(e) if e.is_connect() => (None, Some("connection failed".to_owned())),
            Err(e) => (None, Some(format!("request failed: {}", without_url(&e)))),
        };
        Attempt {
            started_at,
            status_code,
            latency_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
            error,
        }
    }
}

async fn read_prefix(mut response: reqwest::Response, limit: usize) -> usize {
    let mut read = 0;
    while read < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    read
}

/// A reqwest error's text without the URL, which may carry credentials in its query.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<endpoint>");
    }
    text
}

/// The wait after the `failures`-th failed try of a series: `base`, then 4× per try, capped,
/// ±20 % jitter. At 1 s: about 1 s, 4 s, 16 s (three retries within a minute), 1 min, 4 min,
/// 17 min, 68 min, 4.6 h, then 6 h.
pub fn backoff(base: Duration, failures: i32) -> Duration {
    let factor = GROWTH.powi((failures - 1).clamp(0, 30)).min(CAP_FACTOR);
    base.mul_f64(factor * (0.8 + 0.4 * fastrand::f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_near_a_second_and_grows_to_hours_over_a_day() {
        let base = Duration::from_secs(1);
        let first_three: f64 = (1..=3).map(|n| backoff(base, n).as_secs_f64()).sum();
        assert!((0.8..1.2).contains(&backoff(base, 1).as_secs_f64()));
        assert!(first_three < 60.0, "{first_three}");
        // Twelve tries (eleven waits) span about a day.
        let total: f64 = (1..=11).map(|n| backoff(base, n).as_secs_f64()).sum();
        assert!((16.0 * 3600.0..30.0 * 3600.0).contains(&total), "{total}");
        assert!(backoff(base, 30) <= Duration::from_secs_f64(21_600.0 * 1.2));
    }
}
