//! Stage `downloading`: fetch a fresh link, stream-gunzip the NDJSON and store it in batches.
//!
//! Memory stays flat: the body is decoded and parsed line by line and written every
//! `download_batch` lines. A retried download skips rows already stored, so nothing doubles.

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio_util::io::StreamReader;

use super::{wait_job::replace_job, StageContext, StageError, Step};
use crate::{
    auth0::{types::ExportJob, Auth0Error, DownloadError},
    db::{self, exports::Counter},
    queue::JobKind,
};

/// Fresh links tried within one attempt of the stage before it is retried as a whole.
const LINK_ATTEMPTS: u32 = 5;

pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    let Some(job_id) = ctx.export.auth0_job_id.as_deref() else {
        return Ok(Step::Advance(Some(JobKind::CreateJob)));
    };
    let mut last_error = String::new();
    for _ in 0..LINK_ATTEMPTS {
        // A link is valid for about 60 s: never reuse one, mint a new one per try.
        let url = ctx.client.api_url(&["jobs", job_id], &[]);
        let job: ExportJob = match ctx.client.get("GET /api/v2/jobs/{id}", url, &ctx.stats).await {
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
        match download_into_db(ctx, &location).await {
            Ok(()) => {
                let mut tx = ctx.pool.begin().await?;
                let total = db::profiles::count(&mut tx, ctx.export.id).await?;
                sqlx::query("UPDATE exports SET users_total = $2, users_downloaded = $2 WHERE id = $1")
                    .bind(ctx.export.id)
                    .bind(total)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
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

#[derive(Deserialize)]
struct LineId {
    user_id: String,
}

async fn download_into_db(ctx: &StageContext, location: &str) -> Result<(), Failure> {
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
    let (mut ids, mut docs) = (Vec::with_capacity(batch_size), Vec::with_capacity(batch_size));
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
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let id: LineId = serde_json::from_str(text).map_err(|e| {
            Failure::Stage(StageError::Fail(format!("export line {line_no} is not a user object with a user_id: {e}")))
        })?;
        // Postgres' jsonb cannot hold U+0000, the one character JSON allows and it refuses; it
        // becomes U+FFFD rather than failing the whole export.
        let text = if text.contains("\\u0000") { text.replace("\\u0000", "\\ufffd") } else { text.to_owned() };
        ids.push(id.user_id.replace('\0', "\u{fffd}"));
        docs.push(text);
        if ids.len() >= batch_size {
            store(ctx, &mut ids, &mut docs).await?;
        }
    }
    store(ctx, &mut ids, &mut docs).await
}

async fn store(ctx: &StageContext, ids: &mut Vec<String>, docs: &mut Vec<String>) -> Result<(), Failure> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = ctx.pool.begin().await?;
    let new = db::profiles::insert_batch(&mut tx, ctx.export.id, ids, docs).await?;
    ctx.commit_batch(tx, Counter::Downloaded, new).await?;
    ids.clear();
    docs.clear();
    Ok(())
}
