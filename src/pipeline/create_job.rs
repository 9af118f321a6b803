//! Stage `creating_job`: create the Auth0 users-export job and store its id before anything else.

use super::{StageContext, StageError, Step};
use crate::{
    auth0::{types::ExportJob, Auth0Error},
    db,
    queue::JobKind,
};

/// Replacing a failed or expired Auth0 job is bounded: the first job plus two replacements.
pub const MAX_AUTH0_JOBS: i32 = 3;

#[tracing::instrument(skip_all)]
pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    // Creation is not idempotent at Auth0: a stored id is never created again.
    if ctx.export.auth0_job_id.is_some() {
        return Ok(Step::Advance(Some(JobKind::WaitJob)));
    }
    if ctx.export.auth0_jobs_created >= MAX_AUTH0_JOBS {
        return Err(StageError::Fail(format!("Auth0 export jobs failed {MAX_AUTH0_JOBS} times; giving up")));
    }
    let body = ctx.export.request.auth0_job_body();
    let url = ctx.client.api_url(&["jobs", "users-exports"], &[]);
    let job: ExportJob = match ctx.client.post("POST /api/v2/jobs/users-exports", url, &body, &ctx.stats).await {
        Ok(job) => job,
        // Auth0 documents no limit on concurrent export jobs and no code for refusing one: a 400
        // or 409 here is retried later (bounded by the job's attempts) before the export fails.
        Err(Auth0Error::Permanent { status: 400 | 409, message }) => {
            return Err(StageError::Retry(anyhow::anyhow!(message)))
        }
        Err(e) => return Err(e.into()),
    };
    // Fenced by the attempt: a worker that lost its lease must not record a second job. The job
    // exists at Auth0 now, so storing its id waits out a database outage.
    let stored = db::retry("storing the Auth0 job id", || {
        db::exports::store_auth0_job(&ctx.pool, ctx.export.id, &job.id, &ctx.job)
    })
    .await?;
    if !stored {
        return Err(StageError::Retry(anyhow::anyhow!("lease lost while creating Auth0 job {}", job.id)));
    }
    tracing::info!(auth0_job_id = %job.id, "Auth0 export job created");
    Ok(Step::Advance(Some(JobKind::WaitJob)))
}
