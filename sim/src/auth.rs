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

/// What the token table keeps per issued access token.
pub struct TokenInfo {
    pub expires: Instant,
    pub scopes: Vec<String>,
}

/// Scopes each endpoint needs: every group must be met by at least one scope of the group.
/// Sources: AUTH0.md (OAS); `/users/{id}/authenticators` is undocumented, so it takes either of the two
/// scopes that plausibly cover it.
pub fn required_scopes(method: &str, template: &str) -> &'static [&'static [&'static str]] {
    const ROLE_MEMBERS: &[&[&str]] = &[&["read:users"], &["read:roles"], &["read:role_members"]];
    match (method, template) {
        ("POST", "/api/v2/jobs/users-exports") => &[&["read:users"]],
        ("GET", "/api/v2/jobs/{id}") => &[&["create:users", "read:users"]],
        ("GET", "/api/v2/roles") => &[&["read:roles"]],
        ("GET", "/api/v2/roles/{id}/users") => ROLE_MEMBERS,
        ("GET", "/api/v2/users/{id}") => &[&["read:users", "read:user_idp_tokens", "read:current_user"]],
        ("GET", "/api/v2/users/{id}/roles") => ROLE_MEMBERS,
        ("GET", "/api/v2/users/{id}/authentication-methods") => &[&["read:authentication_methods"]],
        ("GET", "/api/v2/users/{id}/authenticators") => &[&["read:authentication_methods", "read:users"]],
        ("GET", "/api/v2/users/{id}/enrollments") => &[&["read:users", "read:current_user"]],
        ("GET", "/api/v2/logs") | ("GET", "/api/v2/logs/{id}") => &[&["read:logs"]],
        _ => &[],
    }
}

/// 403 insufficient_scope unless `scopes` meets every group of the endpoint.
pub fn check_scopes(scopes: &[String], method: &str, template: &str) -> Result<(), Response> {
    for group in required_scopes(method, template) {
        if !group.iter().any(|g| scopes.iter().any(|s| s == g)) {
            return Err(errors::mgmt(
                StatusCode::FORBIDDEN,
                &format!("Insufficient scope, expected any of: {}", group.join(",")),
                Some("insufficient_scope"),
            ));
        }
    }
    Ok(())
}

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
    // Exact match. By default the Management API identifier `{base_url}/api/v2/`, where the base URL is
    // the sim's own or the one the client reached it by (Host header, e.g. behind docker networking).
    let audience_ok = match &st.cfg.audience {
        Some(expected) => audience == expected,
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            audience == format!("{}/api/v2/", st.base_url)
                || host.is_some_and(|h| audience == format!("http://{h}/api/v2/"))
        }
    };
    if !audience_ok {
        return errors::oauth(
            StatusCode::FORBIDDEN,
            "access_denied",
            &format!("Service not enabled within domain: {audience}"),
        );
    }
    let ttl = st.cfg.token_ttl;
    let scope = st.cfg.scopes.join(" ");
    let token = mint(&st, audience, ttl.as_secs(), &scope);
    {
        let mut tokens = lock(&st.tokens);
        let now = Instant::now();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(token.clone(), TokenInfo { expires: now + ttl, scopes: st.cfg.scopes.clone() });
    }
    crate::records::token_granted(&st, audience);
    Json(json!({
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
        "scope": scope,
    }))
    .into_response()
}

/// The path of an absolute URL (`https://host/path?q` -> `/path`), without the query.
#[cfg(test)]
fn url_path(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// A JWT-looking opaque token; only the server-side table makes it valid.
fn mint(st: &AppState, audience: &str, ttl: u64, scope: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "sim"});
    let claims = json!({
        "iss": format!("{}/", st.base_url),
        "sub": format!("{}@clients", st.cfg.client_id),
        "aud": audience,
        "iat": now,
        "exp": now + ttl as i64,
        "scope": scope,
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

/// 401 unless the request carries a live token we issued; its scopes otherwise.
pub fn check_bearer(st: &AppState, headers: &HeaderMap) -> Result<Vec<String>, Response> {
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
        Some(t) if t.expires <= Instant::now() => {
            Err(errors::unauthorized("Expired token received for JSON Web Token validation"))
        }
        Some(t) => Ok(t.scopes.clone()),
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
