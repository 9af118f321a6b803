//! The REST API: routes, shared state, request metrics and the generated OpenAPI document.

pub mod auth;
pub mod error;
pub mod exports;
pub mod health;
pub mod params;
pub mod profiles;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{MatchedPath, Request},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower_http::{
    compression::CompressionLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
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
}

impl AppState {
    pub fn rate_limit(&self, tenant: &str) -> Option<f64> {
        self.tenants.get(tenant).map(|c| c.tenant.rate_limit)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "auth0-exporter", description = "Complete Auth0 user profiles: export fields, roles and MFA factors."),
    paths(
        exports::create, exports::list, exports::get, exports::cancel, exports::delete,
        profiles::list, profiles::get, profiles::download,
        health::livez, health::readyz, health::metrics, health::openapi,
    ),
    modifiers(&BearerAuth),
    tags((name = "exports"), (name = "profiles"), (name = "operations"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
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
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .fallback(|| async { error::ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(record_request))
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(300)))
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
