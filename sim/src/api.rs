//! The /api/v2 pipeline every Management call goes through: count, rate limit, bearer check, latency, faults.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::unix_ms;
use crate::{auth, errors, lock, AppState};

fn is_api(path: &str) -> bool {
    path == "/api/v2" || path.starts_with("/api/v2/")
}

pub async fn pipeline(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !is_api(req.uri().path()) {
        return next.run(req).await;
    }
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "/api/v2/*".to_string());
    let method = req.method().to_string();
    let key = format!("{method} {template}");
    // (endpoint, user) of per-user calls, to count repeats of calls already answered 200; packed into
    // one u64 (a set of strings would hold ~100 MB after a million-user export).
    let user_key = template.starts_with("/api/v2/users/{id}").then(|| {
        let raw = req.uri().path().strip_prefix("/api/v2/users/").unwrap_or_default();
        let id = raw.split('/').next().unwrap_or_default();
        let endpoint = USER_ENDPOINTS.iter().position(|t| *t == template).unwrap_or(USER_ENDPOINTS.len()) as u64;
        let endpoint = endpoint | if method == "GET" { 0 } else { 0x80 };
        // Unknown ids never answer 200, so they can share one slot.
        let idx = st.overlay().index_of(&st.tenant, &percent_decode(id)).map_or(u32::MAX as u64, u64::from);
        (endpoint << 32) | idx
    });
    {
        let mut c = lock(&st.counters);
        c.count_api(key);
        if let Some(k) = &user_key {
            c.count_user_call(*k);
        }
    }
    let outage = {
        let mut f = lock(&st.faults);
        if f.outage_until_ms > unix_ms() {
            true
        } else if f.fail_next_calls > 0 {
            f.fail_next_calls -= 1;
            true
        } else {
            false
        }
    };
    if outage {
        lock(&st.counters).stats.faults_injected += 1;
        return injected_fault(true);
    }
    let decision = lock(&st.bucket).take();
    {
        let mut c = lock(&st.counters);
        if decision.allowed {
            c.record_served();
        } else {
            c.stats.rate_limited += 1;
        }
    }
    let mut resp = if !decision.allowed {
        errors::too_many_requests()
    } else {
        match auth::check_bearer(&st, req.headers()).and_then(|scopes| auth::check_scopes(&scopes, &method, &template))
        {
            Err(resp) => resp,
            Ok(()) => {
                let faults = lock(&st.faults).clone();
                if faults.latency_max_ms > 0 {
                    let lo = faults.latency_min_ms.min(faults.latency_max_ms);
                    let span = faults.latency_max_ms - lo;
                    let ms = lo + (st.random_f64() * (span + 1) as f64) as u64;
                    tokio::time::sleep(Duration::from_millis(ms.min(faults.latency_max_ms))).await;
                }
                if faults.error_rate > 0.0 && st.random_f64() < faults.error_rate {
                    lock(&st.counters).stats.faults_injected += 1;
                    injected_fault(st.random_f64() < 0.5)
                } else {
                    next.run(req).await
                }
            }
        }
    };
    if resp.status() == StatusCode::OK {
        if let Some(k) = user_key {
            lock(&st.counters).record_user_ok(k);
        }
    }
    decision.apply(resp.headers_mut());
    resp
}

/// `http://{Host header}` as the client reached the sim (e.g. behind docker networking), else its own URL.
pub fn request_base(st: &AppState, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| st.base_url.clone())
}

/// Templates of the per-user endpoints, numbered for the repeated-call keys.
const USER_ENDPOINTS: [&str; 5] = [
    "/api/v2/users/{id}",
    "/api/v2/users/{id}/roles",
    "/api/v2/users/{id}/authentication-methods",
    "/api/v2/users/{id}/authenticators",
    "/api/v2/users/{id}/enrollments",
];

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn injected_fault(unavailable: bool) -> Response {
    if unavailable {
        errors::mgmt(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is temporarily unavailable. Please try again later.",
            None,
        )
    } else {
        errors::mgmt(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", None)
    }
}

/// Unknown routes: Management 404 shape under /api/v2, plain 404 elsewhere.
pub async fn fallback(req: Request) -> Response {
    if is_api(req.uri().path()) {
        errors::mgmt(StatusCode::NOT_FOUND, "Not Found", None)
    } else {
        (StatusCode::NOT_FOUND, "Not Found").into_response()
    }
}
