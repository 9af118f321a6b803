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
    // Taken before the job exists: a later incremental export reads every change since.
    if ctx.export.log_checkpoint.is_none() {
        if let Some(checkpoint) = super::incremental::checkpoint(ctx).await? {
            db::retry("storing the log checkpoint", || {
                db::exports::set_log_checkpoint(&ctx.pool, ctx.export.id, &checkpoint)
            })
            .await?;
        }
    }
    let body = ctx.export.request.auth0_job_body();
    let url = ctx.client.api_url(&["jobs", "users-exports"], &[]);
    let job: ExportJob = match ctx.client.post("POST /api/v2/jobs/users-exports", url, &body, &ctx.stats).await {
        Ok(job) => job,
        // A body Auth0 rejects (an unknown connection, a field it refuses) will never pass: fail
        // now, saying what Auth0 said.
        Err(Auth0Error::Permanent { status: 400, message }) if rejects_the_body(&message) => {
            return Err(StageError::Fail(format!("Auth0 refused the export job: {message}")))
        }
        // Auth0 documents no limit on concurrent export jobs and no code for refusing one: any
        // other 400, or a 409, is retried later (bounded by the job's failures) before the export fails.
        Err(Auth0Error::Permanent { status: 400 | 409, message }) => {
            return Err(StageError::Retry(anyhow::anyhow!(message)))
        }
        Err(e) => return Err(e.into()),
    };
    crate::crash_point::crash_point("creating.after_post");
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

/// Whether a 400 names the request itself (a property of the body, the connection) rather than
/// the tenant's state.
fn rejects_the_body(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("connection") || m.contains("property") || m.contains("invalid request body")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rejected_body_is_told_from_a_busy_tenant() {
        assert!(super::rejects_the_body(
            "POST answered 400: 'Connection does not exist: con_x' on property connection_id."
        ));
        assert!(super::rejects_the_body("400 Bad Request: 'Additional properties not allowed: x'. on property body"));
        assert!(!super::rejects_the_body("400 Bad Request: Too many concurrent export jobs"));
    }
}
