//! Test-only endpoints under /__sim (stats, faults, deletions, truth) and the counters behind them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::jobs::{default_fields, export_pairs, write_object};
use crate::{data, lock, AppState, Faults};

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every /api/v2 request received (including those answered 429 or faulted).
    pub api_calls: u64,
    /// Keyed by `"GET /api/v2/users/{id}/roles"`-style templates.
    pub by_endpoint: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub faults_injected: u64,
    pub token_requests: u64,
    pub downloads: u64,
    pub jobs_created: u64,
    /// Max /api/v2 requests served (not 429) within any sliding 1 s window.
    pub peak_per_second: u64,
    /// Per-user calls (`/api/v2/users/{id}...`) for an (endpoint, user) already answered 200 before.
    pub repeated_user_calls: u64,
}

#[derive(Default)]
pub struct Counters {
    pub stats: Stats,
    /// Times of served requests in the last second.
    window: VecDeque<Instant>,
    /// (endpoint, user index) keys of per-user calls answered 200 (see `api::pipeline`).
    user_ok: HashSet<u64>,
}

impl Counters {
    pub fn count_api(&mut self, key: String) {
        self.stats.api_calls += 1;
        *self.stats.by_endpoint.entry(key).or_default() += 1;
    }

    pub fn count_user_call(&mut self, key: u64) {
        if self.user_ok.contains(&key) {
            self.stats.repeated_user_calls += 1;
        }
    }

    pub fn record_user_ok(&mut self, key: u64) {
        self.user_ok.insert(key);
    }

    pub fn record_served(&mut self) {
        let now = Instant::now();
        while self.window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            self.window.pop_front();
        }
        self.window.push_back(now);
        self.stats.peak_per_second = self.stats.peak_per_second.max(self.window.len() as u64);
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/__sim/stats", get(stats))
        .route("/__sim/stats/reset", post(reset_stats))
        .route("/__sim/faults", post(set_faults).get(get_faults))
        .route("/__sim/users/{id}/delete", post(delete))
        .route("/__sim/connections", get(connections))
        .route("/__sim/revoke-tokens", post(revoke))
        .route("/__sim/truth", get(truth_ndjson))
        .route("/__sim/truth/{id}", get(truth_one))
}

async fn stats(State(st): State<Arc<AppState>>) -> Json<Stats> {
    Json(lock(&st.counters).stats.clone())
}

async fn reset_stats(State(st): State<Arc<AppState>>) -> StatusCode {
    *lock(&st.counters) = Counters::default();
    StatusCode::NO_CONTENT
}

async fn set_faults(State(st): State<Arc<AppState>>, Json(f): Json<Faults>) -> Json<Faults> {
    let f = f.arm();
    *lock(&st.faults) = f.clone();
    Json(f)
}

async fn get_faults(State(st): State<Arc<AppState>>) -> Json<Faults> {
    Json(lock(&st.faults).clone())
}

async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if delete_user(&st, &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"deleted": false}))).into_response()
    }
}

async fn connections(State(st): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> =
        st.tenant.connections.iter().map(|c| json!({"id": c.id, "name": c.name, "strategy": c.strategy})).collect();
    Json(Value::Array(list))
}

async fn revoke(State(st): State<Arc<AppState>>) -> StatusCode {
    lock(&st.tokens).clear();
    StatusCode::NO_CONTENT
}

async fn truth_one(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.live_user(&id) {
        Some(idx) => ([(header::CONTENT_TYPE, "application/json")], truth_line(&st, idx)).into_response(),
        None => crate::errors::user_not_found(),
    }
}

/// Streamed in chunks so big tenants do not build the whole body.
async fn truth_ndjson(State(st): State<Arc<AppState>>) -> Response {
    let stream = futures_util::stream::unfold(0usize, move |pos| {
        let st = st.clone();
        async move {
            let sorted = &st.tenant.sorted;
            if pos >= sorted.len() {
                return None;
            }
            let end = (pos + 200).min(sorted.len());
            let mut buf = Vec::new();
            for idx in &sorted[pos..end] {
                if st.is_deleted(*idx) {
                    continue;
                }
                buf.extend_from_slice(truth_line(&st, *idx).as_bytes());
                buf.push(b'\n');
            }
            Some((Ok::<_, std::io::Error>(buf), end))
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

pub fn delete_user(st: &AppState, user_id: &str) -> bool {
    match st.tenant.index_of(user_id) {
        Some(idx) => st.deleted.write().unwrap_or_else(|e| e.into_inner()).insert(idx),
        None => false,
    }
}

/// The default-field export object exactly as in the export file, plus roles and every MFA view.
pub fn truth_line(st: &AppState, idx: u32) -> String {
    let user = st.tenant.user_raw(idx);
    let fields = default_fields();
    let methods = st.tenant.auth_methods(idx);
    let text = |v: Value| v.to_string();
    let more = [
        ("roles", text(json!(st.tenant.user_roles(idx)))),
        ("authentication_methods", text(Value::Array(methods.clone()))),
        ("authenticators", text(json!(data::authenticators(&methods)))),
        ("enrollments", text(json!(data::enrollments(&methods)))),
    ];
    let mut out = Vec::new();
    write_object(&mut out, &export_pairs(&user, &fields), &more);
    String::from_utf8(out).unwrap_or_default()
}

/// Lossy view of a truth line (big numbers become floats).
pub fn truth_of(st: &AppState, idx: u32) -> Value {
    serde_json::from_str(&truth_line(st, idx)).unwrap_or(Value::Null)
}

fn live_sorted(st: &AppState) -> impl Iterator<Item = u32> + '_ {
    st.tenant.sorted.iter().copied().filter(|idx| !st.is_deleted(*idx))
}

pub fn truth_all(st: &AppState) -> Vec<Value> {
    live_sorted(st).map(|idx| truth_of(st, idx)).collect()
}

pub fn truth_lines(st: &AppState) -> Vec<String> {
    live_sorted(st).map(|idx| truth_line(st, idx)).collect()
}
