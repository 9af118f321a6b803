//! auth0-sim: an in-process simulator of the Auth0 Management API parts auth0-exporter uses.

// Handlers bail out with ready-made HTTP responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod config;
mod data;
mod errors;
mod jobs;
mod nasty;
mod paging;
mod ratelimit;
mod roles;
mod testing;
mod users;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::oneshot;

pub use config::{Config, Faults};
pub use testing::Stats;

/// State shared by every handler.
pub(crate) struct AppState {
    cfg: Config,
    tenant: data::Tenant,
    base_url: String,
    bucket: Mutex<ratelimit::Bucket>,
    tokens: Mutex<HashMap<String, auth::TokenInfo>>,
    jobs: Mutex<HashMap<String, jobs::Job>>,
    faults: Mutex<Faults>,
    counters: Mutex<testing::Counters>,
    deleted: RwLock<HashSet<u32>>,
    rng: Mutex<data::Rng>,
    /// Key of the download URL signatures.
    sign_key: u64,
    /// Where export files are written (see `jobs::write_file`).
    files: std::path::PathBuf,
}

/// Poison-tolerant lock: a panicking handler must not wedge the simulator.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
    /// Index of a user that exists and was not deleted.
    fn live_user(&self, user_id: &str) -> Option<u32> {
        let idx = self.tenant.index_of(user_id)?;
        (!self.is_deleted(idx)).then_some(idx)
    }

    fn is_deleted(&self, idx: u32) -> bool {
        self.deleted.read().unwrap_or_else(|e| e.into_inner()).contains(&idx)
    }

    fn deleted_snapshot(&self) -> HashSet<u32> {
        self.deleted.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn random_alnum(&self, n: usize) -> String {
        lock(&self.rng).alnum(n)
    }

    fn random_f64(&self) -> f64 {
        lock(&self.rng).f64()
    }
}

/// A running simulator; dropping it stops the server.
pub struct Sim {
    state: Arc<AppState>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Sim {
    /// Binds `addr` (port 0 allowed) and serves in a spawned task.
    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        let base_url = format!("http://{host}:{}", addr.port());
        let cfg = config.clone();
        let tenant = tokio::task::spawn_blocking(move || {
            data::Tenant::generate(cfg.seed, cfg.users, cfg.roles, cfg.mfa_share, &cfg.tenant)
        })
        .await
        .map_err(std::io::Error::other)?;
        let entropy =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let sign_key = data::mix(config.seed ^ entropy);
        // Created here, not by the file writers: a writer still running after the Sim is dropped must
        // not bring the directory back.
        let files = jobs::files_dir(sign_key);
        std::fs::create_dir_all(&files)?;
        let state = Arc::new(AppState {
            bucket: Mutex::new(ratelimit::Bucket::new(config.burst, config.rate)),
            faults: Mutex::new(config.faults.clone().arm()),
            sign_key,
            files,
            rng: Mutex::new(data::Rng::new(entropy ^ config.seed)),
            cfg: config,
            tenant,
            base_url,
            tokens: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            counters: Mutex::new(testing::Counters::default()),
            deleted: RwLock::new(HashSet::new()),
        });
        let app = router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("auth0-sim server error: {e}");
            }
        });
        Ok(Sim { state, addr, shutdown: Some(tx) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// Same as GET /__sim/stats.
    pub fn stats(&self) -> Stats {
        lock(&self.state.counters).stats.clone()
    }

    /// Replaces the faults; a non-zero `outage_ms` starts an outage now.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults.arm();
    }

    /// Later calls for this user answer 404 inexistent_user; false if unknown or already deleted.
    pub fn delete_user(&self, user_id: &str) -> bool {
        testing::delete_user(&self.state, user_id)
    }

    /// The merged profile of every (non-deleted) user, sorted by user_id. Numbers that do not fit
    /// i64/u64/f64 exactly are lossy here; [`Sim::truth_lines`] has the exact text.
    pub fn truth(&self) -> Vec<serde_json::Value> {
        testing::truth_all(&self.state)
    }

    /// Every (non-deleted) user's merged profile as one JSON text line, sorted by user_id: the
    /// default-field export object exactly as in the export file (same key order, numbers and string
    /// escapes), then `roles`, `authentication_methods`, `authenticators` and `enrollments`.
    pub fn truth_lines(&self) -> Vec<String> {
        testing::truth_lines(&self.state)
    }

    /// `(con_ id, name)` of every connection.
    pub fn connections(&self) -> Vec<(String, String)> {
        self.state.tenant.connections.iter().map(|c| (c.id.clone(), c.name.to_string())).collect()
    }

    /// Every issued access token becomes invalid.
    pub fn revoke_tokens(&self) {
        lock(&self.state.tokens).clear();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.state.files);
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/oauth/token", post(auth::token))
        .route("/api/v2/jobs/users-exports", post(jobs::create))
        .route("/api/v2/jobs/{id}", get(jobs::get_job))
        .route("/user-exports/{job}/{file}", get(jobs::download))
        .route("/api/v2/roles", get(roles::list))
        .route("/api/v2/roles/{id}/users", get(roles::users))
        .route("/api/v2/users/{id}", get(users::get_user))
        .route("/api/v2/users/{id}/roles", get(users::roles))
        .route("/api/v2/users/{id}/authentication-methods", get(users::authentication_methods))
        .route("/api/v2/users/{id}/authenticators", get(users::authenticators))
        .route("/api/v2/users/{id}/enrollments", get(users::enrollments))
        .merge(testing::routes())
        .fallback(api::fallback)
        .layer(from_fn_with_state(state.clone(), api::pipeline))
        .with_state(state)
}
