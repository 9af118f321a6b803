//! auth0-sim: an in-process simulator of the Auth0 Management API parts auth0-exporter uses.

// Handlers bail out with ready-made HTTP responses; boxing them would only add noise.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod config;
mod data;
mod errors;
mod jobs;
mod logs;
mod mutate;
mod nasty;
mod overlay;
mod paging;
mod ratelimit;
mod records;
mod roles;
mod testing;
mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub use config::{Config, Faults};
pub use mutate::{MutationError, Mutations, Via};
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
    /// Test mutations over the generated tenant; replaced copy-on-write (see `overlay`).
    overlay: RwLock<Arc<overlay::Overlay>>,
    /// Tenant logs. Lock order: `overlay` before `logs`.
    logs: Mutex<logs::Store>,
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
    /// The tenant's changes as of now (a snapshot: later changes do not show in it).
    fn overlay(&self) -> Arc<overlay::Overlay> {
        self.overlay.read().unwrap_or_else(|e| e.into_inner()).clone()
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
        let overlay = overlay::Overlay::new(&tenant);
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
            logs: Mutex::new(logs::Store::new(config.log_retention)),
            cfg: config,
            tenant,
            base_url,
            tokens: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            counters: Mutex::new(testing::Counters::default()),
            overlay: RwLock::new(Arc::new(overlay)),
        });
        {
            let o = state.overlay();
            let mut logs = lock(&state.logs);
            for (at, rec) in records::history(&state, &o) {
                logs.push(at, rec);
            }
        }
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
    /// Logs `sapi` DELETE `/api/v2/users/{id}`.
    pub fn delete_user(&self, user_id: &str) -> bool {
        mutate::delete_user(&self.state, user_id)
    }

    /// Enrols a confirmed MFA factor of `factor` type (`totp`, `phone`, `email`, `push`,
    /// `webauthn-roaming`, `webauthn-platform`, `passkey`, `recovery-code`); returns its
    /// authentication-method id. Logs `gd_enrollment_complete` (`Via::User`), `sapi` POST
    /// `/api/v2/users/{id}/authentication-methods` (`Via::ManagementApi`) or
    /// `my_account_authentication_method_succeeded` (`Via::MyAccount`).
    pub fn enroll_mfa(&self, user_id: &str, factor: &str, via: Via) -> Result<String, MutationError> {
        mutate::enroll_mfa(&self.state, user_id, factor, via)
    }

    /// Removes an MFA factor (`method_id`, else the latest confirmed one; with
    /// `Via::GuardianEnrollment` the one `/enrollments` shows); returns its id. Logs `gd_unenroll`,
    /// `sapi` DELETE `/api/v2/users/{id}/authentication-methods/{method_id}`, `sapi` DELETE
    /// `/api/v2/guardian/enrollments/{enrollment_id}` or `my_account_authentication_method_succeeded`.
    pub fn remove_mfa(&self, user_id: &str, method_id: Option<&str>, via: Via) -> Result<String, MutationError> {
        mutate::remove_mfa(&self.state, user_id, method_id, via)
    }

    /// Renames an MFA factor (`method_id`, else the latest confirmed one; `name`, else a generated
    /// one); returns its id. Logs `gd_update_device_account`, `sapi` PATCH
    /// `/api/v2/users/{id}/authentication-methods/{method_id}` or `my_account_authentication_method_succeeded`.
    pub fn rename_mfa(
        &self,
        user_id: &str,
        method_id: Option<&str>,
        name: Option<&str>,
        via: Via,
    ) -> Result<String, MutationError> {
        mutate::rename_mfa(&self.state, user_id, method_id, name, via)
    }

    /// Assigns a role: `sapi` POST `/api/v2/users/{id}/roles` (`Via::ManagementApi`) or POST
    /// `/api/v2/roles/{role_id}/users` (`Via::Role`).
    pub fn assign_role(&self, user_id: &str, role_id: &str, via: Via) -> Result<(), MutationError> {
        mutate::set_role(&self.state, user_id, role_id, true, via)
    }

    /// Removes a role: `sapi` DELETE `/api/v2/users/{id}/roles` (`Via::ManagementApi` only).
    pub fn remove_role(&self, user_id: &str, role_id: &str) -> Result<(), MutationError> {
        mutate::set_role(&self.state, user_id, role_id, false, Via::ManagementApi)
    }

    /// Adds a new database user (no logins, roles or MFA; a password); returns its user_id. Logs `ss`
    /// (`Via::User`, user_id set) or `sapi` POST `/api/v2/users` (`Via::ManagementApi`, the id only in
    /// `details.response.body.user_id`).
    pub fn add_user(&self, via: Via) -> Result<String, MutationError> {
        mutate::add_user(&self.state, via)
    }

    /// PATCH-like profile edit: top-level fields replaced (`null` removes), `user_metadata` /
    /// `app_metadata` merged one level deep (`null` removes a key), `updated_at` set to now. Logs
    /// `sapi` PATCH `/api/v2/users/{id}` with the patch as `details.request.body`.
    pub fn update_profile(&self, user_id: &str, patch: &Map<String, Value>) -> Result<(), MutationError> {
        mutate::update_profile(&self.state, user_id, patch)
    }

    /// Tenant-wide MFA policy change (no user data changes): `sapi` PUT `/api/v2/guardian/factors/{factor}`.
    pub fn set_mfa_factor(&self, factor: &str, enabled: bool) -> Result<(), MutationError> {
        mutate::set_mfa_factor(&self.state, factor, enabled)
    }

    /// Bulk import of `n` new database users; returns their ids. Logs `sapi` POST
    /// `/api/v2/jobs/users-imports` and `sui`, neither naming the users.
    pub fn import_users(&self, n: usize) -> Result<Vec<String>, MutationError> {
        mutate::import_users(&self.state, n)
    }

    /// Changes about `share` of the live users (each once) with a mix of the changes above, chosen
    /// from `seed`; returns who changed how.
    pub fn mutate_random(&self, share: f64, seed: u64) -> Mutations {
        mutate::mutate_random(&self.state, share, seed)
    }

    /// Writes `n` unrelated log records (`s`, `seacft`, `fp`, `slo`, `seccft`).
    pub fn log_noise(&self, n: usize) {
        mutate::log_noise(&self.state, n)
    }

    /// Moves every existing log record `secs` into the past; records now older than the retention
    /// are purged (GET /logs stops serving them, a `from` naming one answers 400).
    pub fn age_logs(&self, secs: u64) {
        lock(&self.state.logs).age(secs.saturating_mul(1000).min(i64::MAX as u64) as i64);
    }

    /// Every retained log record, oldest first (as GET /api/v2/logs serves them).
    pub fn logs(&self) -> Vec<Value> {
        lock(&self.state.logs).all(config::unix_ms() as i64)
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
        .route("/api/v2/logs", get(logs::list))
        .route("/api/v2/logs/{id}", get(logs::get_one))
        .merge(testing::routes())
        .fallback(api::fallback)
        .layer(from_fn_with_state(state.clone(), api::pipeline))
        .with_state(state)
}
