//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::time::Duration;

use axum::{extract::State, http::header, response::IntoResponse, Json};

use super::{
    error::{ApiError, Problem},
    AppState,
};
use crate::{
    db::{self, exports::ExportStatus},
    queue,
};

/// Liveness: the process answers; no dependency is checked.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn livez() -> &'static str {
    "ok"
}

/// Readiness: Postgres reachable and every migration applied; 503 while draining.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, body = Problem)))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::Unavailable);
    }
    // Answer within a second even when Postgres does not: probes have short timeouts.
    match tokio::time::timeout(Duration::from_millis(900), db::migrations_current(&state.pool)).await {
        Ok(Ok(true)) => Ok("ready"),
        Ok(Ok(false)) => Err(ApiError::Unavailable),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            Err(ApiError::Unavailable)
        }
        Err(_) => {
            tracing::warn!("readiness check: database did not answer within 900 ms");
            Err(ApiError::Unavailable)
        }
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Gauges of database state are read at scrape time, so every replica reports the truth.
    if let Ok(depth) = queue::depth(&state.pool).await {
        metrics::gauge!("exporter_queue_depth").set(depth as f64);
    }
    if let Ok(counts) = db::exports::count_by_status(&state.pool).await {
        for status in ExportStatus::ALL {
            let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            metrics::gauge!("exporter_exports", "status" => status.as_str()).set(n as f64);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(super::openapi::document(&state.tenants.names()))
}
