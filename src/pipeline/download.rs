//! Stage `downloading`: fetch a fresh link, stream-gunzip the NDJSON and store it in batches.
//!
//! Memory stays flat: the body is decoded and parsed line by line and written every
//! `download_batch` lines. A retried download skips rows already stored, so nothing doubles.

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::TryStreamExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio_util::io::StreamReader;

use super::{patiently, wait_job::replace_job, StageContext, StageError, Step};
use crate::{
    auth0::{types::ExportJob, Auth0Error, DownloadError},
    db::{self, exports::Counter, profiles::ExportedLine},
    document::{Entries, LineKeys},
    queue::JobKind,
};

/// Fresh links tried within one attempt of the stage before it is retried as a whole.
const LINK_ATTEMPTS: u32 = 5;

#[tracing::instrument(skip_all)]
pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    let Some(job_id) = ctx.export.auth0_job_id.as_deref() else {
        return Ok(Step::Advance(Some(JobKind::CreateJob)));
    };
    let mut last_error = String::new();
    for _ in 0..LINK_ATTEMPTS {
        // A link is valid for about 60 s: never reuse one, mint a new one per try.
        let url = ctx.client.api_url(&["jobs", job_id], &[]);
        let job = patiently(ctx, || ctx.client.get::<ExportJob>("GET /api/v2/jobs/{id}", url.clone(), &ctx.stats));
        let job = match job.await {
            Ok(job) => job,
            Err(Auth0Error::NotFound(_)) => return replace_job(ctx, "the Auth0 job no longer exists").await,
            Err(e) => return Err(e.into()),
        };
        let location = match (job.status.as_str(), job.download_url()) {
            ("completed", Some(location)) => location.to_owned(),
            ("failed" | "expired", _) => {
                return replace_job(ctx, &format!("the Auth0 job {job_id} is {}", job.status)).await
            }
            _ => return Ok(Step::Advance(Some(JobKind::WaitJob))),
        };
        match download_into_db(ctx, job_id, &location).await {
            Ok(()) => {
                let total =
                    db::retry("counting the stored file", || db::exports::set_downloaded(&ctx.pool, ctx.export.id))
                        .await?;
                tracing::info!(users = total, "export file stored");
                return Ok(Step::Advance(Some(JobKind::Enrich)));
            }
            Err(Failure::Retry(e)) => {
                tracing::warn!(error = %e, "download interrupted; fetching a fresh link");
                ctx.stats.record_retry();
                last_error = e;
            }
            Err(Failure::Stage(e)) => return Err(e),
        }
    }
    Err(StageError::Retry(anyhow::anyhow!("download failed {LINK_ATTEMPTS} times: {last_error}")))
}

enum Failure {
    /// The link expired or the body was cut: a fresh link may work.
    Retry(String),
    Stage(StageError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Stage(e.into())
    }
}

async fn download_into_db(ctx: &StageContext, job_id: &str, location: &str) -> Result<(), Failure> {
    let resp = ctx.client.download(location).await.map_err(|e| match e {
        DownloadError::Retry(m) => Failure::Retry(m),
        DownloadError::Fatal(m) => Failure::Stage(StageError::Fail(m)),
    })?;
    let body = StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
    let mut body = BufReader::with_capacity(64 * 1024, body);
    // Auth0 always gzips, but says so in no header: sniff the magic bytes.
    let gzipped = body
        .fill_buf()
        .await
        .map_err(|e| Failure::Retry(format!("reading the export: {e}")))?
        .starts_with(&[0x1f, 0x8b]);
    let mut lines: Box<dyn AsyncBufRead + Unpin + Send> = if gzipped {
        let mut decoder = GzipDecoder::new(body);
        decoder.multiple_members(true);
        Box::new(BufReader::with_capacity(64 * 1024, decoder))
    } else {
        Box::new(body)
    };

    let batch_size = ctx.settings.download_batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Failure::Retry(format!("export body cut or corrupt after line {line_no}: {e}")))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Ok(text) = std::str::from_utf8(&line) else {
            // Auth0 writes UTF-8: anything else is a corrupt transfer, and a profile is never dropped.
            return Err(Failure::Retry(format!("export line {line_no} is not UTF-8")));
        };
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        if text.is_empty() {
            continue;
        }
        batch.push(parse_line(text).map_err(|e| {
            Failure::Stage(StageError::Fail(format!("export line {line_no} is not a user object with a user_id: {e}")))
        })?);
        if batch.len() >= batch_size {
            store(ctx, job_id, &mut batch).await?;
        }
    }
    store(ctx, job_id, &mut batch).await
}

/// Validates one exported line and keeps it verbatim beside its indexed keys.
fn parse_line(text: &str) -> Result<ExportedLine, String> {
    let entries = Entries::parse(text).map_err(|e| e.to_string())?;
    let LineKeys { user_id, email, connection } = LineKeys::read(&entries)?;
    Ok(ExportedLine { user_id, email, connection, raw: text.to_owned() })
}

/// Stores a batch while the export still downloads `job_id`: a stale worker streaming a replaced
/// Auth0 job must not add rows after the replacement deleted them.
async fn store(ctx: &StageContext, job_id: &str, batch: &mut Vec<ExportedLine>) -> Result<(), Failure> {
    if batch.is_empty() {
        return Ok(());
    }
    let lines: &[ExportedLine] = batch;
    let stored = db::retry("storing a downloaded batch", move || async move {
        let mut tx = ctx.pool.begin().await?;
        if !db::exports::lock_for_auth0_job(&mut tx, ctx.export.id, job_id).await? {
            return Ok(false);
        }
        let new = db::profiles::insert_batch(&mut tx, ctx.export.id, lines).await?;
        ctx.commit_batch(tx, Counter::Downloaded, new).await?;
        Ok(true)
    })
    .await
    .map_err(|e| Failure::Stage(e.into()))?;
    if !stored {
        // Another attempt replaced the job: this one is stale and its outcome will be fenced out.
        return Err(Failure::Stage(StageError::Retry(anyhow::anyhow!(
            "the Auth0 job {job_id} was replaced while downloading it"
        ))));
    }
    batch.clear();
    crate::crash_point::crash_point("downloading.after_batch");
    Ok(())
}
