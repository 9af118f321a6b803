//! The Auth0 Management API client: token cache, shared rate limiter, retries, accounting.

pub mod limiter;
pub mod token;
pub mod types;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::TenantConfig;
use limiter::{RateLimitHeaders, RateLimiter};
use token::TokenCache;

/// How an Auth0 call failed, classified for the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Auth0Error {
    /// Network errors and 5xx that outlived their bounded retries: try the stage again later.
    #[error("{0}")]
    Transient(String),
    /// 404 from the Management API (user, role or job gone).
    #[error("not found: {0}")]
    NotFound(String),
    /// 400/401/403 and the like: a person has to act; retrying cannot help.
    #[error("{message}")]
    Permanent { status: u16, message: String },
    #[error("rate limiter database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The stage was asked to stop before this call was sent; nothing was paid for.
    #[error("stopped before the call was sent")]
    Stopped,
}

/// Calls, 429s and retries, as written into an export's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub calls: i64,
    pub rate_limited: i64,
    pub retries: i64,
}

impl CallCounts {
    pub fn is_zero(&self) -> bool {
        *self == CallCounts::default()
    }

    pub fn add(&mut self, other: CallCounts) {
        self.calls += other.calls;
        self.rate_limited += other.rate_limited;
        self.retries += other.retries;
    }
}

/// Calls, 429s and retries spent on one stage run, flushed into its export's row, and the stop
/// signal its calls obey.
#[derive(Debug, Default)]
pub struct CallStats {
    api_calls: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    /// Once fired, calls not yet sent return [`Auth0Error::Stopped`] instead of waiting.
    stop: CancellationToken,
}

impl CallStats {
    pub fn new(stop: CancellationToken) -> CallStats {
        CallStats { stop, ..Default::default() }
    }
    pub fn record_call(&self) {
        self.api_calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("exporter_auth0_rate_limited_total").increment(1);
    }
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    /// Returns and resets the counts.
    pub fn take(&self) -> CallCounts {
        CallCounts {
            calls: self.api_calls.swap(0, Ordering::Relaxed) as i64,
            rate_limited: self.rate_limited.swap(0, Ordering::Relaxed) as i64,
            retries: self.retries.swap(0, Ordering::Relaxed) as i64,
        }
    }
    /// Puts counts back whose write failed, so the next flush carries them.
    pub fn add(&self, c: CallCounts) {
        self.api_calls.fetch_add(c.calls as u64, Ordering::Relaxed);
        self.rate_limited.fetch_add(c.rate_limited as u64, Ordering::Relaxed);
        self.retries.fetch_add(c.retries as u64, Ordering::Relaxed);
    }
}

/// One client per tenant, shared by all workers of the process.
pub struct Auth0Client {
    pub tenant: TenantConfig,
    http: reqwest::Client,
    token: TokenCache,
    limiter: RateLimiter,
    /// First wait of the bounded per-call retries; later waits double.
    pub retry_base: Duration,
}

/// The clients of every configured tenant.
#[derive(Clone, Default)]
pub struct Tenants(Arc<HashMap<String, Arc<Auth0Client>>>);

impl Tenants {
    pub fn new(configs: &[TenantConfig], pool: &PgPool, retry_base: Duration) -> anyhow::Result<Tenants> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("auth0-exporter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let map = configs
            .iter()
            .map(|t| {
                let client = Auth0Client {
                    tenant: t.clone(),
                    http: http.clone(),
                    token: TokenCache::default(),
                    limiter: RateLimiter::new(pool.clone(), &t.name, t.rate_limit),
                    retry_base,
                };
                (t.name.clone(), Arc::new(client))
            })
            .collect();
        Ok(Tenants(Arc::new(map)))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Auth0Client>> {
        self.0.get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.0.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Bounded, jittered exponential backoff for 5xx and network errors.
pub(crate) fn transient_backoff(base: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(base * 40)
        .with_max_times(4)
        .with_jitter()
        // Without std, backon seeds every jitter the same: replicas would retry in lockstep.
        .with_jitter_seed(fastrand::u64(..))
        .build()
}

/// How long to hold off after a 429 that did not come through the shared limiter.
pub(crate) fn wait_after_429(headers: RateLimitHeaders) -> Duration {
    let now = chrono::Utc::now().timestamp() as f64;
    let reset = headers.reset.map(|r| r as f64 - now).unwrap_or(0.0);
    let after = headers.retry_after.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    Duration::from_secs_f64(reset.max(after).clamp(1.0, 60.0) * (1.0 + fastrand::f64() * 0.25))
}

pub(crate) fn record_request_metric(endpoint: &'static str, status: u16) {
    metrics::counter!("exporter_auth0_requests_total", "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
}

/// A reqwest error without its URL: signed download links and ids stay out of logs.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body interrupted"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Auth0Client {
    /// `{base}/api/v2/{segments…}` with each segment percent-encoded (`auth0|x` → `auth0%7Cx`).
    pub fn api_url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = Url::parse(&format!("{}/api/v2/", self.tenant.base_url)).expect("base_url validated at start");
        url.path_segments_mut().expect("http url").pop_if_empty().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        stats: &CallStats,
    ) -> Result<T, Auth0Error> {
        self.call(Method::GET, endpoint, url, None, stats).await
    }

    /// Every item of an offset-paged listing, 100 per call (`include_totals` tells when to stop
    /// early; a short page ends it otherwise).
    pub async fn get_all<P: types::OffsetPage>(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        stats: &CallStats,
    ) -> Result<Vec<P::Item>, Auth0Error> {
        const PER_PAGE: usize = 100;
        let mut all = Vec::new();
        for page in 0.. {
            let page_no = page.to_string();
            let query = [("per_page", "100"), ("page", page_no.as_str()), ("include_totals", "true")];
            let (items, total) = self.get::<P>(endpoint, self.api_url(segments, &query), stats).await?.into_parts();
            let short = items.len() < PER_PAGE;
            all.extend(items);
            if short || total.is_some_and(|t| all.len() as u64 >= t) {
                break;
            }
        }
        Ok(all)
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        url: Url,
        body: &serde_json::Value,
        stats: &CallStats,
    ) -> Result<T, Auth0Error> {
        self.call(Method::POST, endpoint, url, Some(body), stats).await
    }

    /// One Management API call under the shared limiter. 429s retry without a cap (after the
    /// reset); 5xx and network errors retry a bounded number of times; one 401 refreshes the token.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        url: Url,
        body: Option<&serde_json::Value>,
        stats: &CallStats,
    ) -> Result<T, Auth0Error> {
        let mut backoff = transient_backoff(self.retry_base);
        let mut refreshed_token = false;
        loop {
            // Waiting for a slot is free: a stage asked to stop gives up here, never mid-request.
            tokio::select! {
                acquired = self.limiter.acquire() => { acquired?; }
                _ = stats.stop.cancelled() => return Err(Auth0Error::Stopped),
            }
            let token = self.token.get(&self.http, &self.tenant, self.retry_base, stats).await?;
            let mut request = self.http.request(method.clone(), url.clone()).bearer_auth(token.expose_secret());
            if let Some(body) = body {
                request = request.json(body);
            }
            let sent = request.send().await;
            stats.record_call();
            let failure = match sent {
                Err(e) => {
                    metrics::counter!("exporter_auth0_network_errors_total", "endpoint" => endpoint).increment(1);
                    describe_reqwest(&e)
                }
                Ok(resp) => {
                    let status = resp.status();
                    record_request_metric(endpoint, status.as_u16());
                    let headers = RateLimitHeaders::from_headers(resp.headers());
                    // Pacing feedback is advice: failing to record it must not drop a paid-for answer.
                    if let Err(e) = self.limiter.observe(headers).await {
                        tracing::warn!(error = %e, "recording rate-limit headers failed");
                    }
                    if status.is_success() {
                        match resp.json::<T>().await {
                            Ok(value) => return Ok(value),
                            Err(e) => format!("{endpoint}: unreadable response: {}", describe_reqwest(&e)),
                        }
                    } else {
                        let text = resp.text().await.unwrap_or_default();
                        let summary = types::ErrorBody::parse(&text).summary();
                        match status {
                            StatusCode::TOO_MANY_REQUESTS => {
                                stats.record_rate_limited();
                                if let Err(e) = self.limiter.back_off(headers).await {
                                    tracing::warn!(error = %e, "sharing a 429 with other replicas failed; waiting here");
                                    tokio::time::sleep(wait_after_429(headers)).await;
                                }
                                continue;
                            }
                            StatusCode::UNAUTHORIZED if !refreshed_token => {
                                refreshed_token = true;
                                self.token.invalidate(&token).await;
                                continue;
                            }
                            StatusCode::NOT_FOUND => return Err(Auth0Error::NotFound(summary)),
                            s if s.is_server_error() => format!("{endpoint} answered {s}: {summary}"),
                            s => {
                                return Err(Auth0Error::Permanent {
                                    status: s.as_u16(),
                                    message: format!("{endpoint} answered {s}: {summary}"),
                                })
                            }
                        }
                    }
                }
            };
            match backoff.next() {
                Some(delay) => {
                    stats.record_retry();
                    tracing::warn!(endpoint, error = %failure, ?delay, "retrying Auth0 call");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stats.stop.cancelled() => return Err(Auth0Error::Stopped),
                    }
                }
                None => return Err(Auth0Error::Transient(failure)),
            }
        }
    }

    /// Starts the download of a signed link: no Authorization header, the link is its own credential.
    pub async fn download(&self, location: &str) -> Result<reqwest::Response, DownloadError> {
        let resp = self.http.get(location).timeout(Duration::from_secs(3600)).send().await;
        let resp = resp.map_err(|e| DownloadError::Retry(describe_reqwest(&e)))?;
        record_request_metric("GET {download}", resp.status().as_u16());
        match resp.status() {
            s if s.is_success() => Ok(resp),
            // CloudFront answers 403 once `Expires` passed: mint a fresh link.
            s if s == StatusCode::FORBIDDEN || s.is_server_error() || s == StatusCode::NOT_FOUND => {
                Err(DownloadError::Retry(format!("download answered {s}")))
            }
            s => Err(DownloadError::Fatal(format!("download answered {s}"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Retry(String),
    #[error("{0}")]
    Fatal(String),
}
