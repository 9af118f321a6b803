//! The one error type of the HTTP edge, rendered as RFC 9457 `application/problem+json`.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Invalid { detail: String, errors: Vec<FieldError> },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token lacks the {0} scope")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    #[error("{0}")]
    TooLarge(String),
    #[error("service is draining or its database is unreachable")]
    Unavailable,
    #[error("the request took longer than {0} s; try again")]
    Timeout(u64),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&e) {
            // Postgres is down or restarting: a client should come back, not report a bug.
            tracing::warn!(error = %e, "database unavailable");
            return ApiError::Unavailable;
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "2";

impl ApiError {
    /// A 400 naming one bad field.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        let error = FieldError::new(field, message);
        ApiError::Invalid { detail: format!("{}: {}", error.field, error.message), errors: vec![error] }
    }

    pub fn fields(errors: Vec<FieldError>) -> ApiError {
        let detail = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        ApiError::Invalid { detail, errors }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable | ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            // 5xx bodies stay opaque; the cause chain is logged once, inside the request span.
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                "internal error; see the service logs".to_owned()
            }
            other => other.to_string(),
        };
        let (kind, errors) = match self {
            ApiError::Invalid { errors, .. } => ("urn:auth0-exporter:problem:invalid-request".to_owned(), errors),
            _ => ("about:blank".to_owned(), vec![]),
        };
        let problem = Problem {
            kind,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
