//! Stage `waiting_for_job`: poll the Auth0 job, sleeping as long as Auth0 estimates, within bounds.

use std::time::Duration;

use super::{create_job::MAX_AUTH0_JOBS, lease_lost, patiently, StageContext, StageError, Step};
use crate::{
    auth0::{types::ExportJob, Auth0Error},
    db,
    queue::JobKind,
};

const MIN_POLL: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(30);
/// Auth0 fails export jobs after 8 hours; we stop waiting a little later.
const DEADLINE: chrono::TimeDelta = chrono::TimeDelta::hours(9);

#[tracing::instrument(skip_all)]
pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    let Some(job_id) = ctx.export.auth0_job_id.as_deref() else {
        return Ok(Step::Advance(Some(JobKind::CreateJob)));
    };
    let url = ctx.client.api_url(&["jobs", job_id], &[]);
    let job = patiently(ctx, || ctx.client.get::<ExportJob>("GET /api/v2/jobs/{id}", url.clone(), &ctx.stats));
    let job = match job.await {
        Ok(job) => job,
        // Auth0 deletes job data after 24 h: the same as an expired job.
        Err(Auth0Error::NotFound(_)) => return replace_job(ctx, "the Auth0 job no longer exists").await,
        Err(e) => return Err(e.into()),
    };
    match job.status.as_str() {
        "completed" if job.download_url().is_some() => {
            store_percent_done(ctx, Some(100)).await?;
            Ok(Step::Advance(Some(JobKind::Download)))
        }
        "failed" | "expired" => replace_job(ctx, &format!("the Auth0 job {job_id} is {}", job.status)).await,
        status => {
            if !matches!(status, "pending" | "processing" | "completed") {
                tracing::warn!(status, "unknown Auth0 job status; still waiting");
            }
            if ctx.export.started_at.is_some_and(|t| chrono::Utc::now() - t > DEADLINE) {
                return Err(StageError::Fail(format!("the Auth0 job {job_id} did not complete within 9 hours")));
            }
            store_percent_done(ctx, job.percentage_done.map(|p| p.clamp(0.0, 100.0) as i32)).await?;
            Ok(Step::Snooze(poll_delay(job.time_left_seconds)))
        }
    }
}

async fn store_percent_done(ctx: &StageContext, percent: Option<i32>) -> Result<(), StageError> {
    db::retry("recording the Auth0 job's progress", || {
        db::exports::set_job_percent_done(&ctx.pool, ctx.export.id, percent)
    })
    .await?;
    Ok(())
}

/// Follows Auth0's `time_left_seconds`, clamped to [1 s, 30 s].
fn poll_delay(time_left_seconds: Option<f64>) -> Duration {
    let secs = time_left_seconds.filter(|s| s.is_finite()).unwrap_or(0.0).max(0.0);
    Duration::from_secs_f64(secs).clamp(MIN_POLL, MAX_POLL)
}

/// Forgets a dead Auth0 job (and anything downloaded from it) so `creating_job` makes a new one.
#[tracing::instrument(skip_all)]
pub async fn replace_job(ctx: &StageContext, why: &str) -> Result<Step, StageError> {
    if ctx.export.auth0_jobs_created >= MAX_AUTH0_JOBS {
        return Err(StageError::Fail(format!("{why}, and {MAX_AUTH0_JOBS} Auth0 jobs were tried")));
    }
    tracing::warn!(reason = why, "replacing the Auth0 export job");
    let held = db::retry("replacing the Auth0 job", || async {
        let Some(mut tx) = ctx.begin_fenced().await? else { return Ok(false) };
        db::exports::forget_auth0_job(&mut tx, ctx.export.id).await?;
        tx.commit().await?;
        Ok(true)
    })
    .await?;
    if !held {
        return Err(lease_lost());
    }
    Ok(Step::Advance(Some(JobKind::CreateJob)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_delay_is_clamped() {
        assert_eq!(poll_delay(None), MIN_POLL);
        assert_eq!(poll_delay(Some(0.0)), MIN_POLL);
        assert_eq!(poll_delay(Some(7.0)), Duration::from_secs(7));
        assert_eq!(poll_delay(Some(3600.0)), MAX_POLL);
        assert_eq!(poll_delay(Some(f64::NAN)), MIN_POLL);
    }
}
