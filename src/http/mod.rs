//! The REST API: routes, shared state, request metrics and the generated OpenAPI document.

pub mod auth;
pub mod body;
pub mod caching;
pub mod changes;
pub mod completed;
pub mod error;
pub mod exports;
pub mod health;
pub mod latest;
pub mod openapi;
pub mod params;
pub mod profiles;
pub mod schedules;
pub mod webhooks;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::{
    compression::CompressionLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::auth0::Tenants;
use auth::TokenTable;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub tenants: Tenants,
    pub tokens: Arc<TokenTable>,
    /// False once shutdown began: `/readyz` answers 503 so traffic drains away.
    pub ready: Arc<AtomicBool>,
    pub metrics: PrometheusHandle,
    /// How long a request may take to produce its response head.
    pub request_timeout: Duration,
    /// Completed exports already read: their profiles are served without an export lookup.
    pub completed: Arc<completed::CompletedExports>,
    /// Whether webhook endpoints may be plain `http://` (local tests only).
    pub webhooks_allow_http: bool,
}

impl AppState {
    pub fn rate_limit(&self, tenant: &str) -> Option<f64> {
        self.tenants.get(tenant).map(|c| c.tenant.rate_limit)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

pub fn router(state: AppState) -> Router {
    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/exports", post(exports::create).get(exports::list))
        .route("/v1/exports/{id}", get(exports::get).delete(exports::delete))
        .route("/v1/exports/{id}/cancel", post(exports::cancel))
        .route("/v1/exports/{id}/profiles", get(profiles::list))
        .route("/v1/exports/{id}/profiles/{user_id}", get(profiles::get))
        .route("/v1/exports/{id}/download", get(profiles::download))
        .route("/v1/exports/{id}/changes", get(changes::list))
        .route("/v1/schedules", post(schedules::create).get(schedules::list))
        .route("/v1/schedules/{id}", get(schedules::get).patch(schedules::update).delete(schedules::delete))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(webhooks::redeliver))
        .route("/v1/tenants/{tenant}/latest", get(latest::export))
        .route("/v1/tenants/{tenant}/latest/profiles", get(latest::profiles))
        .route("/v1/tenants/{tenant}/latest/profiles/{user_id}", get(latest::profile))
        .route("/v1/tenants/{tenant}/latest/download", get(latest::download))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn(record_request))
        .layer(CompressionLayer::new())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id, caller = tracing::field::Empty)
            }),
        )
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// What a worker-only replica serves: liveness, readiness and its metrics (the pipeline's).
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { error::ApiError::NotFound("a worker serves only /livez, /readyz and /metrics".into()) })
        .with_state(state)
}

/// A request that outlives `request_timeout` answers 503 problem+json with `Retry-After`,
/// inside the metrics layer so it is counted like any other answer.
async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = state.request_timeout.as_secs(), "request timed out");
            error::ApiError::Timeout(state.request_timeout.as_secs()).into_response()
        }
    }
}

/// `exporter_http_request_duration_seconds{method,route,status}`, labelled by the route template.
async fn record_request(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::histogram!("exporter_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => response.status().as_u16().to_string())
    .record(started.elapsed().as_secs_f64());
    response
}
