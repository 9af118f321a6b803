//! The Management API access token: fetched once, shared by every worker, refreshed before expiry.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::{types::TokenResponse, Auth0Error, CallStats};
use crate::config::TenantConfig;

/// Refresh this long before Auth0 says the token expires.
const LEEWAY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct TokenCache {
    // A mutex, not a RwLock: the first caller fetches while the others wait for its result.
    current: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    value: SecretString,
    refresh_at: Instant,
}

impl TokenCache {
    pub async fn get(
        &self,
        http: &reqwest::Client,
        tenant: &TenantConfig,
        retry_base: Duration,
        stats: &CallStats,
    ) -> Result<SecretString, Auth0Error> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let fresh = fetch_token(http, tenant, retry_base, stats).await?;
        let lifetime = Duration::from_secs(fresh.expires_in);
        let value = SecretString::from(fresh.access_token);
        *current = Some(CachedToken {
            value: value.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(LEEWAY).max(lifetime / 2),
        });
        Ok(value)
    }

    /// Drops the cached token if it is still the one that was rejected, so one 401 refreshes once.
    pub async fn invalidate(&self, rejected: &SecretString) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| t.value.expose_secret() == rejected.expose_secret()) {
            *current = None;
        }
    }
}

async fn fetch_token(
    http: &reqwest::Client,
    tenant: &TenantConfig,
    retry_base: Duration,
    stats: &CallStats,
) -> Result<TokenResponse, Auth0Error> {
    let url = format!("{}/oauth/token", tenant.base_url);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", tenant.client_id.as_str()),
        ("client_secret", tenant.client_secret.expose_secret()),
        ("audience", tenant.audience.as_str()),
    ];
    let mut backoff = super::transient_backoff(retry_base);
    loop {
        let body = form_encode(&form);
        let sent = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        stats.record_call();
        let outcome = match sent {
            Ok(resp) => {
                let status = resp.status();
                super::record_request_metric("POST /oauth/token", status.as_u16());
                if status.is_success() {
                    return resp
                        .json::<TokenResponse>()
                        .await
                        .map_err(|e| Auth0Error::Transient(format!("token response: {e}")));
                }
                let headers = super::limiter::RateLimitHeaders::from_headers(resp.headers());
                let text = resp.text().await.unwrap_or_default();
                let summary = super::types::ErrorBody::parse(&text).summary();
                if status.as_u16() == 429 {
                    stats.record_rate_limited();
                    tokio::time::sleep(super::wait_after_429(headers)).await;
                    continue;
                }
                if status.is_server_error() {
                    format!("token endpoint answered {status}: {summary}")
                } else {
                    return Err(Auth0Error::Permanent {
                        status: status.as_u16(),
                        message: format!("getting a Management API token failed ({status}): {summary}"),
                    });
                }
            }
            Err(e) => format!("token endpoint unreachable: {}", super::describe_reqwest(&e)),
        };
        match backoff.next() {
            Some(delay) => {
                stats.record_retry();
                tracing::warn!(%outcome, ?delay, "retrying token request");
                tokio::time::sleep(delay).await;
            }
            None => return Err(Auth0Error::Transient(outcome)),
        }
    }
}

/// Form-encodes pairs; reqwest's `form` feature would pull serde_urlencoded for this one call.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = reqwest::Url::parse("http://x/").expect("static url");
    out.query_pairs_mut().extend_pairs(pairs);
    out.query().unwrap_or_default().to_owned()
}
