//! Background workers: claim a queue job, run its export stage under a lease, record the outcome.

mod create_job;
mod download;
mod enrich;
mod incremental;
mod roles;
mod wait_job;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use sqlx::{postgres::PgListener, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    auth0::{Auth0Client, Auth0Error, CallCounts, CallStats, Tenants},
    config::WorkerSettings,
    db::{
        self,
        exports::{ExportRow, ExportStatus, Stage},
    },
    queue::{self, Heartbeat, Job, JobKind, JobState, Requeue},
};

/// What a stage asks the runner to do next.
#[derive(Debug)]
pub enum Step {
    /// The stage is done: enqueue `Some(kind)`, or complete the export on `None`.
    Advance(Option<JobKind>),
    /// Auth0 is not ready yet: run this job again later without counting a failure.
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
    /// The stage wound down because it was asked to stop; everything it received is stored.
    #[error("stopped on request")]
    Interrupted,
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
            Auth0Error::Stopped => StageError::Interrupted,
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
    /// Fired when the stage should wind down (export cancelled, process stopping): start no new
    /// Auth0 call, store every answer already received, then return [`StageError::Interrupted`].
    pub stop: CancellationToken,
    /// Whether this run already gave the job its failure budget back.
    budget_restored: AtomicBool,
}

impl StageContext {
    /// Writes the calls counted so far into the export row.
    pub async fn flush_stats(&self, conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        let counts = self.stats.take();
        let written = db::exports::add_call_stats(conn, self.export.id, counts).await;
        if written.is_err() {
            // Not lost: counted again with the next flush.
            self.stats.add(counts);
        }
        written
    }

    /// A transaction that holds this job's row: writes that would harm another worker's result
    /// (deleting rows, rewriting profiles) commit only while the lease is still ours. `None`
    /// once the lease is lost.
    pub async fn begin_fenced(&self) -> sqlx::Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>> {
        let mut tx = self.pool.begin().await?;
        Ok(queue::hold(&mut tx, &self.job).await?.then_some(tx))
    }

    /// Commits a batch's writes together with its progress and the calls it cost. Progress gives
    /// the job its failure budget back, so only failures in a row can exhaust it.
    pub async fn commit_batch(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        counter: db::exports::Counter,
        n: u64,
    ) -> sqlx::Result<()> {
        db::exports::add_progress(&mut tx, self.export.id, counter, n).await?;
        let counts = self.stats.take();
        db::exports::add_call_stats(&mut tx, self.export.id, counts).await?;
        if let Err(e) = tx.commit().await {
            self.stats.add(counts);
            return Err(e);
        }
        if n > 0 {
            self.made_progress().await;
        }
        Ok(())
    }

    /// Gives the job its failure budget back once per run, after stored progress: only failures
    /// in a row can exhaust it. Best effort: a failure here only delays the reset.
    pub async fn made_progress(&self) {
        if self.job.errors == 0 || self.budget_restored.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut conn) = self.pool.acquire().await {
            if queue::reset_errors(&mut conn, &self.job).await.is_ok() {
                self.budget_restored.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Exports running in this process, so a cancel NOTIFY wakes the right heartbeat at once.
type Running = Arc<Mutex<HashMap<Uuid, Arc<Notify>>>>;

/// The worker side of one replica.
#[derive(Clone)]
pub struct Workers {
    pub pool: PgPool,
    pub tenants: Tenants,
    pub settings: WorkerSettings,
    pub worker_id: String,
    running: Running,
    /// Call counts whose write failed (the database was down); flushed by the rescuer loop.
    unwritten: Arc<Mutex<HashMap<Uuid, CallCounts>>>,
}

/// Why a stage was stopped from outside.
const RUNNING: u8 = 0;
const CANCEL_REQUESTED: u8 = 1;
const LEASE_LOST: u8 = 2;
const SHUTTING_DOWN: u8 = 3;

/// How long a cancelled stage may take to wind down before it is dropped: its answers no
/// longer matter, the 2-second promise does.
const CANCEL_DRAIN: Duration = Duration::from_millis(300);
/// How long a stage that lost its lease may take to store what it received.
const LOST_LEASE_DRAIN: Duration = Duration::from_millis(1500);
/// How often the rescuer looks for crashed workers (their advisory locks are gone).
const RESCUE_EVERY: Duration = Duration::from_secs(1);
/// After the rescuer itself could not reach Postgres, it trusts only expired leases this long:
/// live workers are re-taking the locks their dead sessions lost.
const OUTAGE_GRACE: Duration = Duration::from_secs(5);

impl Workers {
    pub fn new(pool: PgPool, tenants: Tenants, settings: WorkerSettings, worker_id: String) -> Workers {
        Workers { pool, tenants, settings, worker_id, running: Running::default(), unwritten: Default::default() }
    }

    /// Spawns the workers, the rescuer and the NOTIFY listener on `tracker`; the listener
    /// wakes everyone waiting on `wake` when a job is queued.
    pub fn spawn(self, tracker: &TaskTracker, wake: Arc<Notify>, shutdown: CancellationToken) {
        tracker.spawn(listen(self.pool.clone(), wake.clone(), self.running.clone(), shutdown.clone()));
        tracker.spawn(self.clone().rescue(shutdown.clone()));
        for n in 0..self.settings.concurrency.max(1) {
            let me = self.clone();
            let (wake, shutdown) = (wake.clone(), shutdown.clone());
            tracker.spawn(async move { me.work(n, wake, shutdown).await });
        }
    }

    async fn work(self, n: usize, wake: Arc<Notify>, shutdown: CancellationToken) {
        let worker = format!("{}/{n}", self.worker_id);
        // The session that claims a job holds its advisory lock until the job is done. It is
        // detached from the pool: when it breaks or is dropped it closes, releasing the lock,
        // instead of going back to the pool with the lock still held.
        let mut session: Option<PgConnection> = None;
        while !shutdown.is_cancelled() {
            let claimed = match session.as_mut() {
                Some(conn) => queue::claim(conn, &worker, self.settings.lease()).await,
                None => match self.pool.acquire().await {
                    Ok(conn) => {
                        session = Some(conn.detach());
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match claimed {
                Ok(Some(job)) => {
                    if !job.locked {
                        tracing::warn!(job = job.id, "claimed without its advisory lock; the lease alone guards it");
                    }
                    let span = tracing::info_span!("job", export_id = %job.export_id, kind = job.kind.as_str(), attempt = job.attempt);
                    let conn = session.take().expect("claimed on this session");
                    // A task of its own: a panicking stage drops the session (its lock goes, the
                    // job is rescued), not this worker.
                    let (me, stop, j) = (self.clone(), shutdown.clone(), job.clone());
                    match tokio::spawn(async move { me.run(j, conn, &stop).await }.instrument(span)).await {
                        Ok(Some(mut conn)) => {
                            if queue::unlock(&mut conn, &job).await.is_ok() {
                                session = Some(conn);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "stage panicked; the job is rescued and retried"),
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
                    // Postgres is down or restarting: stop claiming, wait, burn nothing.
                    tracing::warn!(error = %e, "claiming a job failed; retrying");
                    session = None;
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.poll_interval().max(Duration::from_millis(500))) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Runs a claimed job; returns its claiming session while it is still usable.
    async fn run(&self, job: Job, session: PgConnection, shutdown: &CancellationToken) -> Option<PgConnection> {
        let (outcome, session) = self.run_inner(&job, session, shutdown).await;
        if let Err(e) = outcome {
            // The job is rescued (its lock or lease is gone) and handed to someone else.
            tracing::error!(error = %e, "recording a job outcome failed");
        }
        session
    }

    async fn run_inner(
        &self,
        job: &Job,
        session: PgConnection,
        shutdown: &CancellationToken,
    ) -> (sqlx::Result<()>, Option<PgConnection>) {
        let start =
            db::retry("starting a stage", || db::exports::start_stage(&self.pool, job.export_id, job.kind.stage()));
        let export = match start.await {
            Ok(Some(export)) => export,
            // Finished meanwhile, or cancelled between the claim and now.
            Ok(None) => {
                return (self.end_export(job, JobState::Cancelled, ExportStatus::Cancelled, None).await, Some(session))
            }
            Err(e) => return (Err(e), Some(session)),
        };
        let Some(client) = self.tenants.get(&export.tenant) else {
            // Another replica (or this one after a config fix) may know it: wait, do not fail.
            let message = format!("tenant {} is not configured on this replica", export.tenant);
            tracing::warn!(error = %message, "handing the job back");
            return (self.requeue(job, Duration::from_secs(30), Requeue::Snooze, Some(&message)).await, Some(session));
        };
        let stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let stats = Arc::new(CallStats::new(abandon.clone()));
        let ctx = StageContext {
            pool: self.pool.clone(),
            client,
            export,
            job: job.clone(),
            stats: stats.clone(),
            settings: self.settings.clone(),
            stop: stop.clone(),
            budget_restored: AtomicBool::new(false),
        };

        let woken = Arc::new(Notify::new());
        self.running.lock().expect("running map").insert(job.export_id, woken.clone());
        let reason = Arc::new(AtomicU8::new(RUNNING));
        let done = CancellationToken::new();
        // Aborted on drop, so a panicking stage stops renewing its lease and gets rescued.
        let beat = AbortOnDrop(Some(tokio::spawn(heartbeat(
            Beat {
                pool: self.pool.clone(),
                job: job.clone(),
                lease: self.settings.lease(),
                stop: stop.clone(),
                abandon,
                reason: reason.clone(),
                shutdown: shutdown.clone(),
                woken,
                done: done.clone(),
            },
            session,
        ))));
        let started = Instant::now();
        let mut stage = std::pin::pin!(run_stage(&ctx));
        let mut outcome = tokio::select! {
            r = &mut stage => Some(r),
            _ = stop.cancelled() => None,
        };
        if outcome.is_none() {
            // Cancel and shutdown let the stage store what it already received. So does a lost
            // lease (a database outage makes every lease look lost): stored answers are only
            // written where nothing is stored yet, so a stale worker cannot harm the new owner.
            let drain = match reason.load(Ordering::SeqCst) {
                SHUTTING_DOWN => self.settings.drain_budget(),
                CANCEL_REQUESTED => CANCEL_DRAIN,
                _ => LOST_LEASE_DRAIN,
            };
            outcome = tokio::time::timeout(drain, &mut stage).await.ok();
        }
        done.cancel();
        let session = beat.finish().await;
        self.running.lock().expect("running map").remove(&job.export_id);
        let elapsed = started.elapsed();
        tracing::debug!(?elapsed, ?outcome, "stage returned");

        self.write_stats(job.export_id, stats.take()).await;
        let why = reason.load(Ordering::SeqCst);
        let recorded = match (why, outcome) {
            (RUNNING, Some(Ok(Step::Advance(next)))) | (SHUTTING_DOWN, Some(Ok(Step::Advance(next)))) => {
                self.advance(job, next).await
            }
            (RUNNING, Some(Ok(Step::Snooze(delay)))) => self.requeue(job, delay, Requeue::Snooze, None).await,
            (RUNNING | SHUTTING_DOWN, Some(Err(StageError::Fail(message)))) => {
                record_stage_failure(job.kind.stage(), elapsed, "failed");
                self.fail(job, &message).await
            }
            (RUNNING, Some(Err(e))) => {
                let message = format!("{e:#}");
                record_stage_failure(job.kind.stage(), elapsed, "retried");
                // Progress in this run gave the budget back: count from zero.
                let before = if ctx.budget_restored.load(Ordering::Relaxed) { 0 } else { job.errors };
                if before + 1 >= job.max_attempts {
                    let message = format!("gave up after {} failures in a row: {message}", before + 1);
                    self.fail(job, &message).await
                } else {
                    let delay = retry_delay(before + 1);
                    tracing::warn!(error = %message, ?delay, "stage failed; retrying later");
                    self.requeue(job, delay, Requeue::Failed, Some(&message)).await
                }
            }
            (CANCEL_REQUESTED, _) => self.end_export(job, JobState::Cancelled, ExportStatus::Cancelled, None).await,
            (SHUTTING_DOWN, _) => self.requeue(job, Duration::ZERO, Requeue::Snooze, None).await,
            _ => {
                tracing::warn!("lease lost; another worker owns this job now");
                Ok(())
            }
        };
        (recorded, session)
    }

    /// Writes a stage's call counts; if the database is down they wait in memory for the next try.
    async fn write_stats(&self, export: Uuid, counts: CallCounts) {
        if counts.is_zero() {
            return;
        }
        let written = db::retry("recording call statistics", || async {
            let mut conn = self.pool.acquire().await?;
            db::exports::add_call_stats(&mut conn, export, counts).await
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "call statistics kept in memory until the database answers");
            self.unwritten.lock().expect("unwritten map").entry(export).or_default().add(counts);
        }
    }

    async fn flush_unwritten(&self) {
        let pending: Vec<(Uuid, CallCounts)> = self.unwritten.lock().expect("unwritten map").drain().collect();
        for (export, counts) in pending {
            let mut written = false;
            if let Ok(mut conn) = self.pool.acquire().await {
                written = db::exports::add_call_stats(&mut conn, export, counts).await.is_ok();
            }
            if !written {
                self.unwritten.lock().expect("unwritten map").entry(export).or_default().add(counts);
            }
        }
    }

    async fn requeue(&self, job: &Job, delay: Duration, why: Requeue, error: Option<&str>) -> sqlx::Result<()> {
        db::retry("requeueing a job", || queue::reschedule(&self.pool, job, delay, why, error)).await.map(drop)
    }

    /// Finishes the job and moves the export on, in one transaction fenced by the attempt.
    async fn advance(&self, job: &Job, next: Option<JobKind>) -> sqlx::Result<()> {
        let recorded = db::retry("recording a finished stage", || async {
            let mut tx = self.pool.begin().await?;
            if !queue::finish(&mut tx, job, JobState::Completed, None).await? {
                tracing::warn!("lease lost before the stage could be recorded; its work is redone by the new owner");
                tx.rollback().await?;
                return Ok(None);
            }
            let (stage, status) = match next {
                Some(kind) => {
                    queue::enqueue(&mut tx, job.export_id, kind).await?;
                    (kind.stage(), ExportStatus::Running)
                }
                None => (Stage::Finished, ExportStatus::Completed),
            };
            let elapsed = db::exports::move_to_stage(&mut tx, job.export_id, stage, status).await?;
            tx.commit().await?;
            Ok(Some((elapsed, status)))
        })
        .await?;
        let Some((elapsed, status)) = recorded else { return Ok(()) };
        if let Some(secs) = elapsed {
            metrics::histogram!("exporter_stage_duration_seconds", "stage" => job.kind.stage().as_str(), "outcome" => "completed")
                .record(secs);
        }
        if status == ExportStatus::Completed {
            metrics::counter!("exporter_exports_total", "status" => "completed").increment(1);
            tracing::info!("export completed");
        }
        Ok(())
    }

    async fn fail(&self, job: &Job, message: &str) -> sqlx::Result<()> {
        tracing::error!(error = %message, "export failed");
        self.end_export(job, JobState::Discarded, ExportStatus::Failed, Some(message)).await
    }

    async fn end_export(
        &self,
        job: &Job,
        job_state: JobState,
        status: ExportStatus,
        message: Option<&str>,
    ) -> sqlx::Result<()> {
        if status == ExportStatus::Cancelled {
            tracing::info!("export cancelled while running");
        }
        let ended = db::retry("ending an export", || async {
            let mut tx = self.pool.begin().await?;
            if !queue::finish(&mut tx, job, job_state, message).await? {
                tx.rollback().await?;
                return Ok(false);
            }
            let ended = db::exports::end(&mut tx, job.export_id, status, message).await?;
            tx.commit().await?;
            Ok(ended)
        })
        .await?;
        if ended {
            metrics::counter!("exporter_exports_total", "status" => status.as_str()).increment(1);
        }
        Ok(())
    }

    /// Hands jobs of crashed workers back to the queue every second (any replica may do it), and
    /// writes call counts kept in memory while the database was down.
    async fn rescue(self, shutdown: CancellationToken) {
        let mut unreachable_at: Option<Instant> = None;
        // Sweeps at start too: a replica that died mid-purge is usually the one restarting.
        let mut tick = 0u64;
        loop {
            let trust_locks = unreachable_at.map_or(true, |t| t.elapsed() > OUTAGE_GRACE);
            match queue::rescue_abandoned(&self.pool, trust_locks).await {
                Ok(queue::Rescued { requeued: 0, discarded: 0 }) => {}
                Ok(r) => {
                    metrics::counter!("exporter_jobs_rescued_total").increment(r.requeued + r.discarded);
                    metrics::counter!("exporter_exports_total", "status" => "failed").increment(r.discarded);
                    tracing::warn!(requeued = r.requeued, discarded = r.discarded, "rescued jobs of stopped workers");
                }
                Err(e) => {
                    unreachable_at = Some(Instant::now());
                    metrics::counter!("exporter_rescuer_errors_total").increment(1);
                    tracing::warn!(error = %e, "rescuing abandoned jobs failed");
                }
            }
            if !self.unwritten.lock().expect("unwritten map").is_empty() {
                self.flush_unwritten().await;
            }
            if tick % ORPHAN_SWEEP_EVERY == 0 {
                if let Some(retention) = self.settings.export_retention {
                    sweep_expired_exports(&self.pool, retention).await;
                }
                if let Some(retention) = self.settings.history_retention {
                    sweep_history(&self.pool, retention).await;
                }
                sweep_deleted_exports(&self.pool).await;
            }
            tick += 1;
            tokio::select! {
                _ = tokio::time::sleep(RESCUE_EVERY) => {}
                _ = shutdown.cancelled() => {
                    self.flush_unwritten().await;
                    return;
                }
            }
        }
    }
}

/// How long a stage waits out an Auth0 outage (5xx, network) before the attempt fails.
const AUTH0_PATIENCE: Duration = Duration::from_secs(3600);

/// Runs an Auth0 call until it answers, waiting out transient failures that outlived the
/// client's own retries (an outage of minutes), so a long stage does not fail over a burst of
/// 5xx. Permanent errors return at once; a stop request ends the wait.
pub async fn patiently<T, F, Fut>(ctx: &StageContext, mut call: F) -> Result<T, Auth0Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Auth0Error>>,
{
    let started = Instant::now();
    let mut delay = ctx.settings.auth0_retry_base() * 4;
    loop {
        match call().await {
            Err(Auth0Error::Transient(e)) if started.elapsed() < AUTH0_PATIENCE => {
                tracing::warn!(error = %e, ?delay, "Auth0 unavailable; waiting before the next try");
                ctx.stats.record_retry();
                tokio::select! {
                    _ = tokio::time::sleep(delay.mul_f64(0.75 + fastrand::f64() * 0.5)) => {}
                    _ = ctx.stop.cancelled() => return Err(Auth0Error::Stopped),
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// Rescue passes between two sweeps for what deleted exports left.
const ORPHAN_SWEEP_EVERY: u64 = 60;

/// Deletes finished exports older than the retention, as `DELETE /v1/exports/{id}` would. Replicas
/// may sweep at once: each deletion locks its row and skips exports already gone.
async fn sweep_expired_exports(pool: &PgPool, retention: Duration) {
    loop {
        let expired = match db::exports::expired(pool, retention, 100).await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "looking for expired exports failed"),
        };
        let mut deleted = 0;
        for export in &expired {
            match db::exports::delete(pool, *export).await {
                Ok(true) => {
                    deleted += 1;
                    metrics::counter!("exporter_exports_expired_total").increment(1);
                    tracing::info!(%export, "export deleted: older than EXPORT_RETENTION");
                    if let Err(e) = db::exports::purge(pool, *export).await {
                        tracing::warn!(error = %e, %export, "purging an expired export failed; the sweeper retries");
                    }
                }
                Ok(false) => {}
                Err(e) => return tracing::warn!(error = %e, %export, "deleting an expired export failed"),
            }
        }
        if expired.len() < 100 || deleted == 0 {
            return;
        }
    }
}

/// Deletes webhook delivery and schedule run records older than the history retention.
async fn sweep_history(pool: &PgPool, retention: Duration) {
    match db::webhooks::prune(pool, retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deliveries = n, "old webhook deliveries deleted (HISTORY_RETENTION)"),
        Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed; the sweeper retries"),
    }
    match db::schedules::prune_runs(pool, retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(runs = n, "old schedule runs deleted (HISTORY_RETENTION)"),
        Err(e) => tracing::warn!(error = %e, "pruning schedule runs failed; the sweeper retries"),
    }
}

/// Purges deleted exports whose purge was interrupted.
async fn sweep_deleted_exports(pool: &PgPool) {
    let Ok(orphans) = db::exports::unpurged(pool).await else { return };
    for export in orphans {
        if let Err(e) = db::exports::purge(pool, export).await {
            tracing::warn!(error = %e, %export, "purging a deleted export failed");
        }
    }
}

fn record_stage_failure(stage: Stage, elapsed: Duration, outcome: &'static str) {
    metrics::histogram!("exporter_stage_duration_seconds", "stage" => stage.as_str(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
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

/// The error of a stage whose lease went to another worker: its outcome is fenced out anyway.
pub fn lease_lost() -> StageError {
    StageError::Retry(anyhow::anyhow!("lease lost; another worker owns this stage now"))
}

/// Builds the export's read indexes, drops the role scratch tables and counts the result; the
/// runner marks the export completed.
async fn finalize(ctx: &StageContext) -> Result<Step, StageError> {
    // Outside the fenced transaction: building indexes over a million rows takes a while, and
    // is idempotent, so a stale worker doing it too harms nothing.
    db::retry("compacting the export", || db::profiles::compact_partition(&ctx.pool, ctx.export.id)).await?;
    db::retry("indexing the export", || db::profiles::index_partition(&ctx.pool, ctx.export.id)).await?;
    let export = db::retry("reading the export", || db::exports::get(&ctx.pool, ctx.export.id)).await?;
    let base = match (export.as_ref().and_then(|e| e.base_id), &export) {
        (Some(base), Some(_))
            if db::retry("finding the base", || db::exports::get(&ctx.pool, base)).await?.is_some() =>
        {
            Some(base)
        }
        _ => None,
    };
    let held = db::retry("finalising", || async {
        let Some(mut tx) = ctx.begin_fenced().await? else { return Ok(false) };
        db::roles::clear(&mut tx, ctx.export.id).await?;
        db::exports::set_total(&mut tx, ctx.export.id).await?;
        if let (Some(base), Some(export)) = (base, &export) {
            let diff = db::incremental::write_changes(&mut tx, ctx.export.id, base).await?;
            db::exports::set_diff(&mut tx, ctx.export.id, &diff, calls_saved(export)).await?;
        }
        crate::crash_point::crash_point("finalising.before_commit");
        tx.commit().await?;
        Ok(true)
    })
    .await?;
    if !held {
        return Err(lease_lost());
    }
    Ok(Step::Advance(None))
}

/// Per-user MFA calls an incremental export did not make: one per MFA endpoint asked for, for
/// every user whose factors were copied from the base.
fn calls_saved(export: &db::exports::ExportRow) -> Option<i64> {
    if export.mode.as_deref() != Some("incremental") {
        return None;
    }
    let e = export.request.enrich;
    let per_user = [e.authentication_methods, e.authenticators, e.enrollments].iter().filter(|b| **b).count() as i64;
    let total = export.users_total.or(Some(export.users_downloaded))?;
    Some((total - export.mfa_refetched.unwrap_or(total)).max(0) * per_user)
}

/// The heartbeat task: aborted when dropped (a panicking stage), joined when the stage ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<Option<PgConnection>>>);

impl AbortOnDrop {
    /// Waits for the heartbeat to hand its session back.
    async fn finish(mut self) -> Option<PgConnection> {
        self.0.take()?.await.ok().flatten()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Jittered exponential delay between failed attempts of one stage.
fn retry_delay(failures: i32) -> Duration {
    let base = 2f64.powi(failures.clamp(0, 8)).min(120.0);
    Duration::from_secs_f64(base * (0.5 + fastrand::f64()))
}

/// What the heartbeat of one running job needs.
struct Beat {
    pool: PgPool,
    job: Job,
    lease: Duration,
    /// Winds the stage down: no new users.
    stop: CancellationToken,
    /// Makes calls not yet sent give up (cancel, lost lease): their answers would be wasted.
    abandon: CancellationToken,
    reason: Arc<AtomicU8>,
    shutdown: CancellationToken,
    woken: Arc<Notify>,
    /// Fired when the stage has ended: hand the session back.
    done: CancellationToken,
}

/// Renews the lease every second (at once when a cancel NOTIFY names the export) on the session
/// that holds the job's advisory lock, taking a new session and the lock again if that one broke
/// (a database restart), so the rescuer never mistakes a live worker for a crashed one. Stops the
/// stage when the lease is lost, the export is cancelled or the process shuts down, and keeps
/// beating while the stage stores what it received. Returns the session when the stage ends.
async fn heartbeat(beat: Beat, session: PgConnection) -> Option<PgConnection> {
    let Beat { pool, job, lease, stop, abandon, reason, shutdown, woken, done } = beat;
    let stop_with = |why: u8| {
        if reason.load(Ordering::SeqCst) == RUNNING {
            reason.store(why, Ordering::SeqCst);
        }
        if why != SHUTTING_DOWN {
            abandon.cancel();
        }
        stop.cancel();
    };
    let mut session = Some(session);
    loop {
        if session.is_none() {
            session = relock(&pool, &job).await;
        }
        if let Some(conn) = session.as_mut() {
            match queue::heartbeat(conn, &job, lease).await {
                Ok(Heartbeat::Held { cancel_requested: true }) => stop_with(CANCEL_REQUESTED),
                Ok(Heartbeat::Held { .. }) => {}
                Ok(Heartbeat::Lost) => {
                    stop_with(LEASE_LOST);
                    return session;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; the lease is still valid for a while");
                    // Closing the broken session releases nothing that still exists; a new one
                    // takes the lock again on the next beat.
                    session = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep((lease / 3).min(queue::BEAT_EVERY)) => {}
            _ = woken.notified() => {}
            _ = shutdown.cancelled(), if !shutdown.is_cancelled() || reason.load(Ordering::SeqCst) == RUNNING => {
                stop_with(SHUTTING_DOWN)
            }
            _ = done.cancelled() => return session,
        }
    }
}

/// A fresh session holding the job's advisory lock again; `None` while Postgres is away.
async fn relock(pool: &PgPool, job: &Job) -> Option<PgConnection> {
    let mut conn = pool.acquire().await.ok()?.detach();
    match queue::relock(&mut conn, job).await {
        Ok(true) => Some(conn),
        Ok(false) => {
            tracing::warn!("the job's advisory lock is held elsewhere; the lease alone guards it now");
            Some(conn)
        }
        Err(_) => None,
    }
}

/// Wakes idle workers on NOTIFY and running stages on a cancel; polling is the guarantee, so
/// errors only delay. Reconnects with a growing pause so a database outage is not a hot loop.
async fn listen(pool: PgPool, wake: Arc<Notify>, running: Running, shutdown: CancellationToken) {
    let mut pause = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all([queue::CHANNEL, queue::CANCEL_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let failure = match connected.await {
            Err(e) => e,
            Ok(mut listener) => loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(n) => {
                            // Only a connection that delivers resets the pause.
                            pause = Duration::from_millis(500);
                            notify(&n, &wake, &running);
                        }
                        Err(e) => break e,
                    },
                    _ = shutdown.cancelled() => return,
                }
            },
        };
        tracing::warn!(error = %failure, ?pause, "LISTEN failed; workers poll meanwhile");
        tokio::select! { _ = tokio::time::sleep(pause) => {}, _ = shutdown.cancelled() => return }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

fn notify(n: &sqlx::postgres::PgNotification, wake: &Notify, running: &Running) {
    if n.channel() == queue::CANCEL_CHANNEL {
        let export = n.payload().parse::<Uuid>().ok();
        if let Some(woken) = export.and_then(|id| running.lock().expect("running map").get(&id).cloned()) {
            woken.notify_one();
        }
    } else {
        wake.notify_waiters();
    }
}
