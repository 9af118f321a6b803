//! Starts the exports of due schedules: one per due time across every replica.
//!
//! Each replica looks for due schedules every poll interval. A due schedule's row is locked
//! (`FOR UPDATE SKIP LOCKED`) while its export is created and its next due time written, all in
//! one transaction: a replica that dies half-way commits nothing and the next one acts instead,
//! and `schedule_runs`' key refuses a second run of the same due time whatever happens.

use serde_json::json;
use sqlx::{Acquire, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    config::ScheduleSettings,
    cron::Timing,
    db::{
        self,
        exports::{BaseChoice, NewExport},
        schedules::{RunOutcome, ScheduleRow},
    },
    http::exports::request_hash,
};

/// Schedules acted on per transaction.
const BATCH: i64 = 20;

pub async fn run(pool: PgPool, settings: ScheduleSettings, shutdown: CancellationToken) {
    loop {
        match tick(&pool).await {
            Ok(acted) if acted == BATCH as usize => continue, // more may be due
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "starting due schedules failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.poll_interval()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Acts on the schedules due now; returns how many. Each is acted on in a savepoint of its
/// own: one that fails is retried at the next poll without holding the others back.
pub async fn tick(pool: &PgPool) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let (due, now) = db::schedules::lock_due(&mut tx, BATCH).await?;
    let mut outcomes = Vec::with_capacity(due.len());
    for schedule in &due {
        let span = tracing::info_span!("schedule", schedule_id = %schedule.id, due = %schedule.next_run_at);
        let mut savepoint = tx.begin().await?;
        match act(&mut savepoint, schedule, now).instrument(span).await {
            Ok(outcome) => {
                savepoint.commit().await?;
                outcomes.extend(outcome);
            }
            Err(e) => {
                savepoint.rollback().await?;
                tracing::warn!(error = %e, schedule_id = %schedule.id, "starting a due schedule failed; retried at the next poll");
            }
        }
    }
    crate::crash_point::crash_point("scheduler.before_commit");
    tx.commit().await?;
    for outcome in outcomes {
        metrics::counter!("exporter_schedule_runs_total", "outcome" => outcome.as_str()).increment(1);
    }
    Ok(due.len())
}

/// Starts (or skips) the run of one due schedule. Due times missed while no replica ran are
/// folded into this one run: a recovery never starts a burst.
async fn act(
    conn: &mut PgConnection,
    schedule: &ScheduleRow,
    now: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<Option<RunOutcome>> {
    let timing = Timing::parse(&schedule.cron, &schedule.timezone);
    let next = timing.as_ref().ok().and_then(|t| t.next_after(now));
    let missed = timing.as_ref().map_or(0, |t| t.count_between(schedule.next_run_at, now));
    // A schedule whose cron no longer fires (validated on write, so only by a library change)
    // is parked far ahead instead of firing on every poll.
    let next = next.unwrap_or(now + chrono::Duration::days(365 * 100));

    let running = db::schedules::active_export(conn, schedule.id).await?;
    let outcome = if running.is_some() { RunOutcome::Skipped } else { RunOutcome::Started };
    if !db::schedules::claim_run(conn, schedule, outcome, running, missed).await? {
        tracing::warn!("this due time was acted on before (the schedule was edited back onto it); moving on");
        db::schedules::advance(conn, schedule, None, None, next).await?;
        return Ok(None);
    }
    if let Some(running) = running {
        db::schedules::advance(conn, schedule, Some(outcome), None, next).await?;
        let data = json!({
            "schedule_id": schedule.id,
            "tenant": schedule.tenant,
            "due_at": schedule.next_run_at,
            "reason": "the schedule's previous export is still running",
            "running_export_id": running,
            "runs_skipped": schedule.runs_skipped + 1,
            "links": { "schedule": format!("/v1/schedules/{}", schedule.id), "running_export": format!("/v1/exports/{running}") },
        });
        db::webhooks::emit_event(conn, "schedule.skipped", &data).await?;
        tracing::info!(%running, "schedule run skipped: its previous export is still running");
        return Ok(Some(outcome));
    }

    let mut request = schedule.request.0.clone();
    let base = if schedule.incremental {
        request.base = Some("latest".into());
        db::exports::latest_base(conn, &request).await?
    } else {
        BaseChoice::None
    };
    let hash = request_hash(&request);
    // No idempotency key: the run's row above is what makes a second export of this due time
    // impossible, and clients' keys stay theirs.
    let new = NewExport {
        request: &request,
        request_hash: &hash,
        idempotency_key: None,
        base: &base,
        schedule_id: Some(schedule.id),
    };
    let export = db::exports::insert(conn, &new).await?.ok_or(sqlx::Error::RowNotFound)?.id;
    db::schedules::set_run_export(conn, schedule, export).await?;
    db::schedules::advance(conn, schedule, Some(outcome), Some(export), next).await?;
    tracing::info!(export_id = %export, missed, "scheduled export queued");
    Ok(Some(outcome))
}
