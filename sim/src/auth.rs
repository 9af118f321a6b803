//! POST /oauth/token (client credentials) and the bearer-token check of /api/v2 calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::{errors, lock, AppState};

const SCOPE: &str = "read:users read:roles read:role_members read:authentication_methods";

pub async fn token(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    lock(&st.counters).stats.token_requests += 1;
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    let params = if is_json {
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body) {
            Ok(m) => m
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
            Err(_) => return errors::oauth(StatusCode::BAD_REQUEST, "invalid_request", "Invalid JSON body"),
        }
    } else {
        parse_form(&body)
    };
    let get = |k: &str| params.get(k).map(String::as_str);
    match get("grant_type") {
        None => {
            return errors::oauth(StatusCode::BAD_REQUEST, "invalid_request", "Missing required parameter: grant_type")
        }
        Some("client_credentials") => {}
        Some(other) => {
            return errors::oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            )
        }
    }
    if get("client_id") != Some(st.cfg.client_id.as_str())
        || get("client_secret") != Some(st.cfg.client_secret.as_str())
    {
        return errors::oauth(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    }
    let Some(audience) = get("audience") else {
        return errors::oauth(
            StatusCode::FORBIDDEN,
            "access_denied",
            "No audience parameter was provided, and no default audience has been configured",
        );
    };
    let audience_ok = match &st.cfg.audience {
        Some(expected) => audience == expected,
        None => url_path(audience) == Some("/api/v2/"),
    };
    if !audience_ok {
        return errors::oauth(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("Service not enabled within domain: {audience}"),
        );
    }
    let ttl = st.cfg.token_ttl;
    let token = mint(&st, audience, ttl.as_secs());
    {
        let mut tokens = lock(&st.tokens);
        let now = Instant::now();
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(token.clone(), now + ttl);
    }
    Json(json!({
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
        "scope": SCOPE,
    }))
    .into_response()
}

/// The path of an absolute URL (`https://host/path?q` -> `/path`), without the query.
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// A JWT-looking opaque token; only the server-side table makes it valid.
fn mint(st: &AppState, audience: &str, ttl: u64) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "sim"});
    let claims = json!({
        "iss": format!("{}/", st.base_url),
        "sub": format!("{}@clients", st.cfg.client_id),
        "aud": audience,
        "iat": now,
        "exp": now + ttl as i64,
        "scope": SCOPE,
        "gty": "client-credentials",
        "jti": st.random_alnum(16),
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(st.random_alnum(64)),
    )
}

/// 401 unless the request carries a live token we issued.
pub fn check_bearer(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(errors::unauthorized("Missing authentication"));
    };
    match lock(&st.tokens).get(token) {
        None => Err(errors::unauthorized("Invalid token")),
        Some(exp) if *exp <= Instant::now() => {
            Err(errors::unauthorized("Expired token received for JSON Web Token validation"))
        }
        Some(_) => Ok(()),
    }
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_paths() {
        let f = parse_form(b"a=b%7Cc&audience=https%3A%2F%2Fx%2Fapi%2Fv2%2F&s=a+b");
        assert_eq!(f["a"], "b|c");
        assert_eq!(f["s"], "a b");
        assert_eq!(url_path(&f["audience"]), Some("/api/v2/"));
        assert_eq!(url_path("https://x/api/v2/jobs"), Some("/api/v2/jobs"));
        assert_eq!(percent_decode("%4"), "%4");
    }
}
