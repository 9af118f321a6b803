//! Error bodies: the Management API shape, the OAuth2 shape and CloudFront-style XML.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `{"statusCode","error","message","errorCode"?}`.
pub fn mgmt(status: StatusCode, message: &str, code: Option<&str>) -> Response {
    let mut body = json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or(""),
        "message": message,
    });
    if let Some(code) = code {
        body["errorCode"] = json!(code);
    }
    (status, Json(body)).into_response()
}

pub fn unauthorized(message: &str) -> Response {
    // hapi/boom style: 401s repeat the message under `attributes`.
    let body = json!({
        "statusCode": 401,
        "error": "Unauthorized",
        "message": message,
        "attributes": {"error": message},
    });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

pub fn too_many_requests() -> Response {
    mgmt(StatusCode::TOO_MANY_REQUESTS, "Global limit has been reached", Some("too_many_requests"))
}

pub fn user_not_found() -> Response {
    mgmt(StatusCode::NOT_FOUND, "The user does not exist.", Some("inexistent_user"))
}

pub fn role_not_found() -> Response {
    mgmt(StatusCode::NOT_FOUND, "The role does not exist.", None)
}

pub fn invalid_body(detail: &str) -> Response {
    mgmt(StatusCode::BAD_REQUEST, &format!("Payload validation error: {detail}"), Some("invalid_body"))
}

pub fn invalid_query(detail: &str) -> Response {
    mgmt(StatusCode::BAD_REQUEST, &format!("Query validation error: {detail}"), Some("invalid_query_string"))
}

/// OAuth2 token endpoint shape `{"error","error_description"}`.
pub fn oauth(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// CloudFront/S3-style XML error for the download host.
pub fn xml(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}
