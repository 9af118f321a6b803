//! Test-only endpoints under /__sim (stats, faults, deletions, truth) and the counters behind them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::jobs::{default_fields, export_pairs, write_object};
use crate::mutate::{self, MutationError, Via};
use crate::overlay::Overlay;
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
        .route("/__sim/users", post(add_user))
        .route("/__sim/users/{id}/mfa", post(enroll))
        .route("/__sim/users/{id}/mfa/remove", post(unenroll))
        .route("/__sim/users/{id}/mfa/rename", post(rename))
        .route("/__sim/users/{id}/roles/assign", post(assign))
        .route("/__sim/users/{id}/roles/remove", post(unassign))
        .route("/__sim/users/{id}/profile", post(profile))
        .route("/__sim/guardian/factors/{factor}", post(factor))
        .route("/__sim/import", post(import))
        .route("/__sim/mutate", post(mutate_random))
        .route("/__sim/logs", get(all_logs))
        .route("/__sim/logs/noise", post(noise))
        .route("/__sim/logs/age", post(age))
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
    if crate::mutate::delete_user(&st, &id) {
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
    let o = st.overlay();
    match o.live_index(&st.tenant, &id) {
        Some(idx) => ([(header::CONTENT_TYPE, "application/json")], truth_line(&st, &o, idx)).into_response(),
        None => crate::errors::user_not_found(),
    }
}

/// Streamed in chunks so big tenants do not build the whole body.
async fn truth_ndjson(State(st): State<Arc<AppState>>) -> Response {
    let o = st.overlay();
    let sorted: Arc<Vec<u32>> = Arc::new(o.sorted_live(&st.tenant).collect());
    let stream = futures_util::stream::unfold(0usize, move |pos| {
        let (st, o, sorted) = (st.clone(), o.clone(), sorted.clone());
        async move {
            if pos >= sorted.len() {
                return None;
            }
            let end = (pos + 200).min(sorted.len());
            let mut buf = Vec::new();
            for idx in &sorted[pos..end] {
                buf.extend_from_slice(truth_line(&st, &o, *idx).as_bytes());
                buf.push(b'\n');
            }
            Some((Ok::<_, std::io::Error>(buf), end))
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// The default-field export object exactly as in the export file, plus roles and every MFA view.
pub fn truth_line(st: &AppState, o: &Overlay, idx: u32) -> String {
    let user = o.user_raw(&st.tenant, idx);
    let fields = default_fields();
    let methods = o.methods(&st.tenant, idx);
    let text = |v: Value| v.to_string();
    let more = [
        ("roles", text(json!(o.user_roles(&st.tenant, idx)))),
        ("authentication_methods", text(Value::Array(methods.clone()))),
        ("authenticators", text(json!(data::authenticators(&methods)))),
        ("enrollments", text(json!(data::enrollments(&methods)))),
    ];
    let mut out = Vec::new();
    write_object(&mut out, &export_pairs(&user, &fields), &more);
    String::from_utf8(out).unwrap_or_default()
}

/// Lossy view of a truth line (big numbers become floats).
fn truth_of(st: &AppState, o: &Overlay, idx: u32) -> Value {
    serde_json::from_str(&truth_line(st, o, idx)).unwrap_or(Value::Null)
}

pub fn truth_all(st: &AppState) -> Vec<Value> {
    let o = st.overlay();
    o.sorted_live(&st.tenant).map(|idx| truth_of(st, &o, idx)).collect()
}

pub fn truth_lines(st: &AppState) -> Vec<String> {
    let o = st.overlay();
    o.sorted_live(&st.tenant).map(|idx| truth_line(st, &o, idx)).collect()
}

// ---- mutations (see `mutate`): JSON bodies, every field optional unless said ----

/// The body as `T`; an empty body is `T::default()`.
fn body<T: serde::de::DeserializeOwned + Default>(raw: &[u8]) -> Result<T, Response> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw)
        .map_err(|e| (StatusCode::BAD_REQUEST, Json(json!({"error": format!("bad body: {e}")}))).into_response())
}

fn failed(e: MutationError) -> Response {
    let status = match e {
        MutationError::UnknownUser(_) | MutationError::UnknownRole(_) => StatusCode::NOT_FOUND,
        MutationError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({"error": e.to_string()}))).into_response()
}

fn done<T>(r: Result<T, MutationError>, ok: impl FnOnce(T) -> Response) -> Response {
    r.map_or_else(failed, ok)
}

#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Change {
    via: Option<Via>,
    #[serde(rename = "type")]
    factor: Option<String>,
    method_id: Option<String>,
    name: Option<String>,
    role_id: Option<String>,
}

macro_rules! parse {
    ($raw:expr) => {
        match body($raw) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
}

async fn add_user(State(st): State<Arc<AppState>>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    done(mutate::add_user(&st, c.via.unwrap_or(Via::User)), |id| {
        (StatusCode::CREATED, Json(json!({"user_id": id}))).into_response()
    })
}

async fn enroll(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    let factor = c.factor.as_deref().unwrap_or("totp");
    done(mutate::enroll_mfa(&st, &id, factor, c.via.unwrap_or(Via::User)), |m| {
        (StatusCode::CREATED, Json(json!({"id": m}))).into_response()
    })
}

async fn unenroll(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    done(mutate::remove_mfa(&st, &id, c.method_id.as_deref(), c.via.unwrap_or(Via::User)), |m| {
        Json(json!({"id": m})).into_response()
    })
}

async fn rename(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    let via = c.via.unwrap_or(Via::User);
    done(mutate::rename_mfa(&st, &id, c.method_id.as_deref(), c.name.as_deref(), via), |m| {
        Json(json!({"id": m})).into_response()
    })
}

async fn assign(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    let role = c.role_id.unwrap_or_default();
    done(mutate::set_role(&st, &id, &role, true, c.via.unwrap_or(Via::ManagementApi)), |()| {
        StatusCode::NO_CONTENT.into_response()
    })
}

async fn unassign(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let c: Change = parse!(&raw);
    let role = c.role_id.unwrap_or_default();
    done(mutate::set_role(&st, &id, &role, false, c.via.unwrap_or(Via::ManagementApi)), |()| {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// Body: the patch object itself (`{"name": "x", "user_metadata": {"k": null}}`).
async fn profile(State(st): State<Arc<AppState>>, Path(id): Path<String>, raw: Bytes) -> Response {
    let patch: serde_json::Map<String, Value> = parse!(&raw);
    done(mutate::update_profile(&st, &id, &patch), |()| StatusCode::NO_CONTENT.into_response())
}

#[derive(Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Knobs {
    enabled: bool,
    users: usize,
    share: f64,
    seed: u64,
    n: usize,
    secs: u64,
}

async fn factor(State(st): State<Arc<AppState>>, Path(factor): Path<String>, raw: Bytes) -> Response {
    let k: Knobs = parse!(&raw);
    done(mutate::set_mfa_factor(&st, &factor, k.enabled), |()| StatusCode::NO_CONTENT.into_response())
}

async fn import(State(st): State<Arc<AppState>>, raw: Bytes) -> Response {
    let k: Knobs = parse!(&raw);
    done(mutate::import_users(&st, k.users), |ids| {
        (StatusCode::CREATED, Json(json!({"user_ids": ids}))).into_response()
    })
}

async fn mutate_random(State(st): State<Arc<AppState>>, raw: Bytes) -> Response {
    let k: Knobs = parse!(&raw);
    let st2 = st.clone();
    // A share of a million users takes a while: off the async workers.
    match tokio::task::spawn_blocking(move || mutate::mutate_random(&st2, k.share, k.seed)).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e.to_string()}))).into_response(),
    }
}

async fn all_logs(State(st): State<Arc<AppState>>) -> Json<Vec<Value>> {
    Json(lock(&st.logs).all(crate::config::unix_ms() as i64))
}

async fn noise(State(st): State<Arc<AppState>>, raw: Bytes) -> Response {
    let k: Knobs = parse!(&raw);
    mutate::log_noise(&st, k.n.min(100_000));
    StatusCode::NO_CONTENT.into_response()
}

async fn age(State(st): State<Arc<AppState>>, raw: Bytes) -> Response {
    let k: Knobs = parse!(&raw);
    lock(&st.logs).age(k.secs.saturating_mul(1000).min(i64::MAX as u64) as i64);
    StatusCode::NO_CONTENT.into_response()
}
