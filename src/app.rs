//! Builds the service from settings (API and/or workers) and runs it until shutdown.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth0::Tenants,
    config::Settings,
    db,
    http::{self, auth::TokenTable, AppState},
    pipeline::Workers,
    scheduler, telemetry,
    webhooks::Dispatcher,
};

/// Which halves of the service this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Api,
    Worker,
}

pub struct Application {
    listener: TcpListener,
    role: Role,
    state: AppState,
    workers: Option<Workers>,
    webhooks: crate::config::WebhookSettings,
    schedules: crate::config::ScheduleSettings,
    shutdown: CancellationToken,
    drain: Duration,
    grace: Duration,
}

impl Application {
    /// Connects, migrates and binds (port 0 allowed); nothing runs until [`Application::run`].
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Application> {
        let url = settings.database_url.as_ref().context("DATABASE_URL is required")?;
        let pool = db::connect(url, pool_size(&settings)).await?;
        db::migrate(&pool).await.context("applying migrations")?;
        Application::build_with_pool(settings, role, pool).await
    }

    pub async fn build_with_pool(settings: Settings, role: Role, pool: PgPool) -> anyhow::Result<Application> {
        if settings.tenants.is_empty() {
            anyhow::bail!("no Auth0 tenant configured: set AUTH0_DOMAIN (or AUTH0_BASE_URL), AUTH0_CLIENT_ID, AUTH0_CLIENT_SECRET");
        }
        for t in &settings.tenants {
            reqwest::Url::parse(&t.base_url)
                .with_context(|| format!("tenant {}: base URL {:?} is not a URL", t.name, t.base_url))?;
        }
        if role != Role::Worker && settings.api_tokens.is_empty() {
            tracing::warn!("API_TOKENS is empty: every /v1 request will be refused with 401");
        }
        let tenants = Tenants::new(&settings.tenants, &pool, settings.worker.auth0_retry_base())?;
        // Workers listen too, for probes and metrics only: their pipeline metrics live there.
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", settings.listen_addr))?;
        let workers = (role != Role::Api).then(|| {
            Workers::new(
                pool.clone(),
                tenants.clone(),
                settings.worker.clone(),
                format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple()),
            )
        });
        let state = AppState {
            pool,
            tenants,
            tokens: Arc::new(TokenTable::new(&settings.api_tokens)),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: telemetry::metrics_handle(),
            request_timeout: settings.request_timeout,
            completed: Default::default(),
            webhooks_allow_http: settings.webhooks.allow_http,
        };
        Ok(Application {
            listener,
            role,
            state,
            workers,
            webhooks: settings.webhooks.clone(),
            schedules: settings.schedules.clone(),
            shutdown: CancellationToken::new(),
            drain: Duration::from_secs(settings.worker.drain_secs),
            grace: Duration::from_secs(settings.worker.shutdown_grace_secs),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Cancelling this token shuts the service down as SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves until the shutdown token is cancelled, then drains: readiness fails, workers stop
    /// claiming and hand their leases back, in-flight HTTP requests finish, all within the grace.
    pub async fn run(self) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let worker_stop = CancellationToken::new();
        if let Some(workers) = self.workers {
            let wake = Arc::new(tokio::sync::Notify::new());
            let dispatcher = Dispatcher::new(workers.pool.clone(), self.webhooks, workers.worker_id.clone())?;
            tracker.spawn(dispatcher.run(wake.clone(), worker_stop.clone()));
            tracker.spawn(scheduler::run(workers.pool.clone(), self.schedules, worker_stop.clone()));
            workers.spawn(&tracker, wake, worker_stop.clone());
        }
        tracker.close();

        let shutdown = self.shutdown.clone();
        let ready = self.state.ready.clone();
        let drain = if self.role == Role::Worker { Duration::ZERO } else { self.drain };
        let draining = async move {
            shutdown.cancelled().await;
            ready.store(false, Ordering::SeqCst);
            worker_stop.cancel();
            tracing::info!(?drain, "shutting down: readiness fails, leases go back, then HTTP drains");
            tokio::time::sleep(drain).await;
        };
        let app = match self.role {
            Role::Worker => http::operations_router(self.state),
            _ => http::router(self.state),
        };
        tracing::info!(addr = %self.listener.local_addr()?, role = ?self.role, "listening");
        axum::serve(self.listener, app).with_graceful_shutdown(draining).await?;
        if tokio::time::timeout(self.grace, tracker.wait()).await.is_err() {
            tracing::warn!("workers did not stop within the grace period; their leases will expire");
        }
        Ok(())
    }
}

fn pool_size(settings: &Settings) -> u32 {
    // Each worker holds at most a couple of short-lived connections; the API shares the rest.
    // Each worker holds its claiming session plus a few short-lived connections; the API shares the rest.
    (settings.worker.concurrency as u32 * 5 + 10).min(100)
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "local".into())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
