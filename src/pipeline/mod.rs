//! Background workers: claim a queue job, run its export stage under a lease, record the outcome.

mod create_job;
mod download;
mod enrich;
mod roles;
mod wait_job;

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    auth0::{Auth0Client, Auth0Error, CallStats, Tenants},
    config::WorkerSettings,
    db::{self, exports::ExportRow},
    queue::{self, Heartbeat, Job, JobKind},
};

/// What a stage asks the runner to do next.
#[derive(Debug)]
pub enum Step {
    /// The stage is done: enqueue `Some(kind)`, or complete the export on `None`.
    Advance(Option<JobKind>),
    /// Auth0 is not ready yet: run this job again later without counting an attempt.
    Snooze(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Worth another attempt later (network, 5xx, database).
    #[error("{0:#}")]
    Retry(anyhow::Error),
    /// Retrying cannot help: the export fails with this message.
    #[error("{0}")]
    Fail(String),
}

impl From<sqlx::Error> for StageError {
    fn from(e: sqlx::Error) -> Self {
        StageError::Retry(anyhow::Error::new(e).context("database"))
    }
}

impl From<Auth0Error> for StageError {
    fn from(e: Auth0Error) -> Self {
        match e {
            Auth0Error::Permanent { message, .. } => StageError::Fail(message),
            Auth0Error::NotFound(message) => StageError::Fail(format!("Auth0: {message}")),
            other => StageError::Retry(other.into()),
        }
    }
}

/// Everything a stage may use.
pub struct StageContext {
    pub pool: PgPool,
    pub client: Arc<Auth0Client>,
    pub export: ExportRow,
    pub job: Job,
    pub stats: Arc<CallStats>,
    pub settings: WorkerSettings,
}

impl StageContext {
    /// Writes the calls counted so far into the export row.
    pub async fn flush_stats(&self, conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        db::exports::add_call_stats(conn, self.export.id, self.stats.take()).await
    }

    /// A transaction that holds this job's row: writes that would harm another worker's result
    /// (deleting rows, rewriting every profile) commit only while the lease is still ours.
    pub async fn begin_fenced(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StageError> {
        let mut tx = self.pool.begin().await?;
        if !queue::hold(&mut tx, &self.job).await? {
            return Err(StageError::Retry(anyhow::anyhow!("lease lost; another worker owns this stage now")));
        }
        Ok(tx)
    }

    /// Commits a batch's writes together with its progress and the calls it cost.
    pub async fn commit_batch(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        counter: db::exports::Counter,
        n: u64,
    ) -> sqlx::Result<()> {
        db::exports::add_progress(&mut tx, self.export.id, counter, n).await?;
        self.flush_stats(&mut tx).await?;
        tx.commit().await
    }
}

/// The worker side of one replica.
#[derive(Clone)]
pub struct Workers {
    pub pool: PgPool,
    pub tenants: Tenants,
    pub settings: WorkerSettings,
    pub worker_id: String,
}

/// Why a stage was stopped from outside.
const RUNNING: u8 = 0;
const CANCEL_REQUESTED: u8 = 1;
const LEASE_LOST: u8 = 2;
const SHUTTING_DOWN: u8 = 3;

impl Workers {
    /// Spawns the workers, the lease rescuer and the NOTIFY listener on `tracker`.
    pub fn spawn(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        tracker.spawn(listen(self.pool.clone(), wake.clone(), shutdown.clone()));
        tracker.spawn(rescue(self.pool.clone(), self.settings.lease(), shutdown.clone()));
        for n in 0..self.settings.concurrency.max(1) {
            let me = self.clone();
            let (wake, shutdown) = (wake.clone(), shutdown.clone());
            tracker.spawn(async move { me.work(n, wake, shutdown).await });
        }
    }

    async fn work(self, n: usize, wake: Arc<Notify>, shutdown: CancellationToken) {
        let worker = format!("{}/{n}", self.worker_id);
        while !shutdown.is_cancelled() {
            match queue::claim(&self.pool, &worker, self.settings.lease()).await {
                Ok(Some(job)) => {
                    let span = tracing::info_span!("job", export_id = %job.export_id, kind = job.kind.as_str(), attempt = job.attempt);
                    // A task of its own: a panicking stage loses its lease (rescued later), not this worker.
                    let (me, stop) = (self.clone(), shutdown.clone());
                    if let Err(e) = tokio::spawn(async move { me.run(job, &stop).await }.instrument(span)).await {
                        tracing::error!(error = %e, "stage panicked; its lease will expire and the job is retried");
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(self.settings.poll_interval()) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming a job failed; retrying");
                    tokio::time::sleep(self.settings.poll_interval()).await;
                }
            }
        }
    }

    async fn run(&self, job: Job, shutdown: &CancellationToken) {
        if let Err(e) = self.run_inner(job, shutdown).await {
            // The lease will expire and the rescuer hands the job to someone else.
            tracing::error!(error = %e, "recording a job outcome failed");
        }
    }

    async fn run_inner(&self, job: Job, shutdown: &CancellationToken) -> sqlx::Result<()> {
        let Some(export) = self.start(&job).await? else {
            // Finished meanwhile, or cancelled between the claim and now.
            return self.cancel(&job).await;
        };
        let Some(client) = self.tenants.get(&export.tenant) else {
            return self.fail(&job, &format!("tenant {} is not configured on this replica", export.tenant)).await;
        };
        let stats = Arc::new(CallStats::default());
        let ctx = StageContext {
            pool: self.pool.clone(),
            client,
            export,
            job: job.clone(),
            stats: stats.clone(),
            settings: self.settings.clone(),
        };

        let stop = CancellationToken::new();
        let reason = Arc::new(AtomicU8::new(RUNNING));
        // Aborted on drop, so a panicking stage stops renewing its lease and gets rescued.
        let _beat = AbortOnDrop(tokio::spawn(heartbeat(
            self.pool.clone(),
            job.clone(),
            self.settings.lease(),
            stop.clone(),
            reason.clone(),
            shutdown.clone(),
        )));
        let started = Instant::now();
        let outcome = tokio::select! {
            r = run_stage(&ctx) => Some(r),
            _ = stop.cancelled() => None,
        };
        drop(_beat);
        tracing::debug!(elapsed = ?started.elapsed(), ?outcome, "stage returned");

        let calls = stats.take();
        match outcome {
            Some(Ok(Step::Advance(next))) => self.advance(&job, next, calls).await,
            Some(Ok(Step::Snooze(delay))) => {
                self.add_stats(&job, calls).await?;
                queue::reschedule(&self.pool, &job, delay, true, None).await.map(drop)
            }
            Some(Err(StageError::Fail(message))) => {
                self.add_stats(&job, calls).await?;
                self.fail(&job, &message).await
            }
            Some(Err(StageError::Retry(e))) => {
                self.add_stats(&job, calls).await?;
                let message = format!("{e:#}");
                if job.attempt >= job.max_attempts {
                    return self.fail(&job, &format!("gave up after {} attempts: {message}", job.attempt)).await;
                }
                let delay = retry_delay(job.attempt);
                tracing::warn!(error = %message, ?delay, "stage failed; retrying later");
                queue::reschedule(&self.pool, &job, delay, false, Some(&message)).await.map(drop)
            }
            None => {
                self.add_stats(&job, calls).await?;
                match reason.load(Ordering::SeqCst) {
                    CANCEL_REQUESTED => self.cancel(&job).await,
                    SHUTTING_DOWN => queue::reschedule(&self.pool, &job, Duration::ZERO, true, None).await.map(drop),
                    _ => {
                        tracing::warn!("lease lost; another worker owns this job now");
                        Ok(())
                    }
                }
            }
        }
    }

    /// Marks the export running in the job's stage; `None` when it is finished or cancelled.
    async fn start(&self, job: &Job) -> sqlx::Result<Option<ExportRow>> {
        let stage = job.kind.stage();
        let updated: Option<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE exports SET status = 'running', started_at = COALESCE(started_at, now()),
                    stage_started_at = CASE WHEN stage = $2 AND stage_started_at IS NOT NULL THEN stage_started_at ELSE now() END,
                    stage = $2,
                    enrich_started_at = CASE WHEN $2 = 'enriching' THEN COALESCE(enrich_started_at, now()) ELSE enrich_started_at END
              WHERE id = $1 AND status IN ('queued', 'running') AND NOT cancel_requested
          RETURNING id",
        )
        .bind(job.export_id)
        .bind(stage)
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(id) => db::exports::get(&self.pool, id).await,
            None => Ok(None),
        }
    }

    async fn add_stats(&self, job: &Job, calls: (i64, i64, i64)) -> sqlx::Result<()> {
        let mut conn = self.pool.acquire().await?;
        db::exports::add_call_stats(&mut conn, job.export_id, calls).await
    }

    /// Finishes the job and moves the export on, in one transaction fenced by the attempt.
    async fn advance(&self, job: &Job, next: Option<JobKind>, calls: (i64, i64, i64)) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        if !queue::finish(&mut tx, job, "completed", None).await? {
            tracing::warn!("lease lost before the stage could be recorded; its work is redone by the new owner");
            return tx.rollback().await;
        }
        db::exports::add_call_stats(&mut tx, job.export_id, calls).await?;
        let (stage, status) = match next {
            Some(kind) => {
                queue::enqueue(&mut tx, job.export_id, kind).await?;
                (kind.stage(), "running")
            }
            None => ("finished", "completed"),
        };
        let elapsed: Option<f64> = sqlx::query_scalar(
            "WITH old AS (SELECT stage, stage_started_at FROM exports WHERE id = $1 FOR UPDATE)
             UPDATE exports e SET stage = $2, status = $3,
                    stage_started_at = CASE WHEN old.stage = $2 THEN old.stage_started_at ELSE now() END,
                    finished_at = CASE WHEN $3 = 'completed' THEN now() ELSE e.finished_at END
               FROM old WHERE e.id = $1
           RETURNING CASE WHEN old.stage = $2 THEN NULL
                          ELSE extract(epoch FROM now() - old.stage_started_at)::float8 END",
        )
        .bind(job.export_id)
        .bind(stage)
        .bind(status)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(secs) = elapsed {
            metrics::histogram!("exporter_stage_duration_seconds", "stage" => job.kind.stage()).record(secs);
        }
        if status == "completed" {
            metrics::counter!("exporter_exports_total", "status" => "completed").increment(1);
            tracing::info!("export completed");
        }
        Ok(())
    }

    async fn fail(&self, job: &Job, message: &str) -> sqlx::Result<()> {
        tracing::error!(error = %message, "export failed");
        self.end_export(job, "discarded", "failed", Some(message)).await
    }

    async fn cancel(&self, job: &Job) -> sqlx::Result<()> {
        tracing::info!("export cancelled while running");
        self.end_export(job, "cancelled", "cancelled", None).await
    }

    async fn end_export(&self, job: &Job, job_state: &str, status: &str, message: Option<&str>) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        if !queue::finish(&mut tx, job, job_state, message).await? {
            return tx.rollback().await;
        }
        let ended = sqlx::query(
            "UPDATE exports SET status = $2, finished_at = now(),
                    error = CASE WHEN $3::text IS NULL THEN NULL
                                 ELSE jsonb_build_object('stage', stage, 'message', $3::text) END
              WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(job.export_id)
        .bind(status)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if ended.rows_affected() == 1 {
            metrics::counter!("exporter_exports_total", "status" => status.to_owned()).increment(1);
        }
        Ok(())
    }
}

async fn run_stage(ctx: &StageContext) -> Result<Step, StageError> {
    match ctx.job.kind {
        JobKind::CreateJob => create_job::run(ctx).await,
        JobKind::WaitJob => wait_job::run(ctx).await,
        JobKind::Download => download::run(ctx).await,
        JobKind::Enrich => enrich::run(ctx).await,
        JobKind::Finalize => finalize(ctx).await,
    }
}

/// Drops the role scratch tables and counts the result; the runner marks the export completed.
async fn finalize(ctx: &StageContext) -> Result<Step, StageError> {
    let mut tx = ctx.begin_fenced().await?;
    db::roles::clear(&mut tx, ctx.export.id).await?;
    let total = db::profiles::count(&mut tx, ctx.export.id).await?;
    sqlx::query("UPDATE exports SET users_total = $2 WHERE id = $1")
        .bind(ctx.export.id)
        .bind(total)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Step::Advance(None))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Jittered exponential delay between failed attempts of one stage.
fn retry_delay(attempt: i32) -> Duration {
    let base = 2f64.powi(attempt.clamp(0, 8)).min(120.0);
    Duration::from_secs_f64(base * (0.5 + fastrand::f64()))
}

/// Renews the lease every third of it; stops the stage when the lease is lost, the export is
/// cancelled or the process shuts down.
async fn heartbeat(
    pool: PgPool,
    job: Job,
    lease: Duration,
    stop: CancellationToken,
    reason: Arc<AtomicU8>,
    shutdown: CancellationToken,
) {
    let stop_with = |why: u8| {
        reason.store(why, Ordering::SeqCst);
        stop.cancel();
    };
    loop {
        match queue::heartbeat(&pool, &job, lease).await {
            Ok(Heartbeat::Held { cancel_requested: true }) => return stop_with(CANCEL_REQUESTED),
            Ok(Heartbeat::Held { .. }) => {}
            Ok(Heartbeat::Lost) => return stop_with(LEASE_LOST),
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; the lease is still valid for a while"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lease / 3) => {}
            _ = shutdown.cancelled() => return stop_with(SHUTTING_DOWN),
        }
    }
}

/// Returns expired leases to the queue every few seconds (any replica may do it).
async fn rescue(pool: PgPool, lease: Duration, shutdown: CancellationToken) {
    let every = (lease / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        match queue::rescue_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "rescued jobs whose worker stopped heartbeating"),
            Err(e) => tracing::warn!(error = %e, "rescuing expired leases failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Wakes idle workers on NOTIFY; polling is the guarantee, so errors only delay.
async fn listen(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; workers poll meanwhile");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => continue, _ = shutdown.cancelled() => return }
            }
        };
        if let Err(e) = listener.listen(queue::CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed");
            continue;
        }
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(_) => wake.notify_waiters(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
