//! Stage `downloading`: fetch a fresh link, stream-gunzip the NDJSON and `COPY` it into the
//! export's own partition in large batches.
//!
//! Reading, decompressing and parsing run in a task of their own, handing encoded batches to the
//! writer through a bounded channel: the two overlap on two cores and memory stays flat. The
//! file of one Auth0 job is the same bytes on every download, so a cut-off stream resumes by
//! skipping the lines already stored (each batch commits with that count); a final count check
//! catches any surprise and reloads without duplicates.

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::TryStreamExt;
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, BufReader},
    sync::mpsc,
};
use tokio_util::io::StreamReader;

use super::{patiently, wait_job::replace_job, StageContext, StageError, Step};
use crate::{
    auth0::{types::ExportJob, Auth0Error, DownloadError},
    db::{
        self,
        exports::Counter,
        profiles::{CopyBatch, ExportedLine},
    },
    document::{Entries, LineKeys},
    queue::JobKind,
};

/// Fresh links tried within one attempt of the stage before it is retried as a whole.
const LINK_ATTEMPTS: u32 = 5;
/// Bytes of `COPY` text per piece handed to the writer.
const PIECE: usize = 256 * 1024;
/// Pieces waiting for the writer: enough to keep it busy, few enough for flat memory.
const PIECES_AHEAD: usize = 8;

#[tracing::instrument(skip_all)]
pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    let Some(job_id) = ctx.export.auth0_job_id.as_deref() else {
        return Ok(Step::Advance(Some(JobKind::CreateJob)));
    };
    db::retry("creating the export's partition", || db::profiles::ensure_partition(&ctx.pool, ctx.export.id)).await?;
    let mut last_error = String::new();
    // Lines already stored from this Auth0 job's file (by an earlier attempt or link).
    let mut stored = ctx.export.users_downloaded.max(0) as u64;
    let mut skip_by_count = true;
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
        let skip = if skip_by_count { stored } else { 0 };
        match download_into_db(ctx, job_id, &location, skip, &mut stored).await {
            Ok(lines) => {
                let total =
                    db::retry("counting the stored file", || db::exports::set_downloaded(&ctx.pool, ctx.export.id))
                        .await?;
                if total as u64 != lines {
                    // The file differed from the one partly stored: load it again, skipping nothing;
                    // rows already stored are kept once (the load falls back to ON CONFLICT).
                    tracing::warn!(stored = total, lines, "stored rows do not match the file; reloading it whole");
                    skip_by_count = false;
                    continue;
                }
                db::retry("analysing the stored file", || db::profiles::analyze_partition(&ctx.pool, ctx.export.id))
                    .await?;
                tracing::info!(users = total, "export file stored");
                return Ok(Step::Advance(Some(JobKind::Enrich)));
            }
            Err(Failure::Retry(e)) => {
                tracing::warn!(error = %e, "download interrupted; fetching a fresh link");
                ctx.stats.record_retry();
                last_error = e;
            }
            Err(Failure::Duplicate) => {
                tracing::warn!("a row of the file is already stored; reloading it whole without duplicates");
                skip_by_count = false;
            }
            Err(Failure::Database(e)) => {
                // Streamed rows cannot be replayed: wait for Postgres, then resume from the last
                // committed batch with a fresh link.
                tracing::warn!(error = %e, "database error while storing the file; resuming once it answers");
                db::retry("waiting for the database", || async { ctx.pool.acquire().await.map(drop) }).await?;
                last_error = e.to_string();
            }
            Err(Failure::Stage(e)) => return Err(e),
        }
    }
    Err(StageError::Retry(anyhow::anyhow!("download failed {LINK_ATTEMPTS} times: {last_error}")))
}

enum Failure {
    /// The link expired or the body was cut: a fresh link may work.
    Retry(String),
    /// A row was already stored: the file differs from the one partly loaded.
    Duplicate,
    /// Storing failed; the rows streamed into the open batch are gone with it.
    Database(sqlx::Error),
    Stage(StageError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => Failure::Duplicate,
            _ if db::is_unavailable(&e) => Failure::Database(e),
            _ => Failure::Stage(e.into()),
        }
    }
}

/// Streams one download into the partition; returns the number of lines in the whole file.
/// `stored` follows the lines committed so far. Each batch is one transaction holding one
/// `COPY` that receives the file's rows as they are parsed; `conflict_safe` loads through a
/// temporary table and `ON CONFLICT DO NOTHING` instead (a reload over rows already stored).
async fn download_into_db(
    ctx: &StageContext,
    job_id: &str,
    location: &str,
    skip: u64,
    stored: &mut u64,
) -> Result<u64, Failure> {
    let resp = ctx.client.download(location).await.map_err(|e| match e {
        DownloadError::Retry(m) => Failure::Retry(m),
        DownloadError::Fatal(m) => Failure::Stage(StageError::Fail(m)),
    })?;
    let conflict_safe = skip == 0 && *stored > 0;
    let (tx, mut rx) = mpsc::channel(PIECES_AHEAD);
    let reader = tokio::spawn(read_pieces(resp, ctx.export.id, ctx.settings.download_batch.max(1) as u64, skip, tx));
    while let Some(first) = rx.recv().await {
        let Some(mut db_tx) = begin_batch(ctx, job_id, conflict_safe).await? else {
            // Another attempt replaced the job: this one is stale and its outcome will be fenced out.
            return Err(Failure::Stage(StageError::Retry(anyhow::anyhow!(
                "the Auth0 job {job_id} was replaced while downloading it"
            ))));
        };
        let mut copy = db_tx.copy_in_raw(db::profiles::copy_statement(conflict_safe)).await?;
        let mut piece = first;
        let lines_total = loop {
            match piece {
                Piece::Rows(bytes) => {
                    if let Err(e) = copy.send(bytes).await {
                        let _ = copy.abort("storing failed").await;
                        return Err(e.into());
                    }
                }
                Piece::EndOfBatch { lines_total } => break lines_total,
            }
            piece = match rx.recv().await {
                Some(next) => next,
                None => {
                    // The reader stopped mid-batch: its error says why; nothing of the batch stays.
                    let _ = copy.abort("the export stream ended early").await;
                    return reader_outcome(reader)
                        .await
                        .and(Err(Failure::Retry("the export stream ended early".into())));
                }
            };
        };
        let copied = copy.finish().await?;
        let new = if conflict_safe { db::profiles::merge_incoming(&mut db_tx).await? } else { copied };
        ctx.commit_batch(db_tx, Counter::Downloaded, new).await?;
        *stored = lines_total;
        crate::crash_point::crash_point("downloading.after_batch");
    }
    reader_outcome(reader).await
}

async fn reader_outcome(reader: tokio::task::JoinHandle<Result<u64, Failure>>) -> Result<u64, Failure> {
    match reader.await {
        Ok(outcome) => outcome,
        Err(e) => Err(Failure::Stage(StageError::Retry(anyhow::anyhow!("the export reader stopped: {e}")))),
    }
}

/// Opens a batch's transaction while the export still downloads `job_id` (a stale worker
/// streaming a replaced Auth0 job must not add rows after the replacement deleted them).
async fn begin_batch(
    ctx: &StageContext,
    job_id: &str,
    conflict_safe: bool,
) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, Failure> {
    let mut tx = ctx.pool.begin().await?;
    if !db::exports::lock_for_auth0_job(&mut tx, ctx.export.id, job_id).await? {
        return Ok(None);
    }
    if conflict_safe {
        db::profiles::prepare_incoming(&mut tx).await?;
    }
    Ok(Some(tx))
}

/// What the reader hands the writer.
enum Piece {
    /// `COPY` text of some rows.
    Rows(Vec<u8>),
    /// The batch ends here: the file's first `lines_total` lines are in the store once it commits.
    EndOfBatch { lines_total: u64 },
}

/// Reads, gunzips and parses the file after skipping `skip` lines, sending `COPY` text in pieces
/// of about [`PIECE`] bytes and closing a batch every `batch` lines; returns the number of
/// non-empty lines in the file.
async fn read_pieces(
    resp: reqwest::Response,
    export_id: uuid::Uuid,
    batch: u64,
    skip: u64,
    tx: mpsc::Sender<Piece>,
) -> Result<u64, Failure> {
    let body = StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
    let mut body = BufReader::with_capacity(256 * 1024, body);
    // Auth0 always gzips, but says so in no header: sniff the magic bytes.
    let gzipped = body
        .fill_buf()
        .await
        .map_err(|e| Failure::Retry(format!("reading the export: {e}")))?
        .starts_with(&[0x1f, 0x8b]);
    let mut lines: Box<dyn AsyncBufRead + Unpin + Send> = if gzipped {
        let mut decoder = GzipDecoder::new(body);
        decoder.multiple_members(true);
        Box::new(BufReader::with_capacity(256 * 1024, decoder))
    } else {
        Box::new(body)
    };
    let send = |piece| async { tx.send(piece).await.map_err(|_| Failure::Retry("the writer stopped".into())) };

    let mut copy = CopyBatch::default();
    let mut line = Vec::new();
    let (mut line_no, mut counted, mut in_batch) = (0u64, 0u64, 0u64);
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
        counted += 1;
        if counted <= skip {
            continue;
        }
        let row = parse_line(text).map_err(|e| {
            Failure::Stage(StageError::Fail(format!("export line {line_no} is not a user object with a user_id: {e}")))
        })?;
        copy.push(export_id, &row);
        in_batch += 1;
        if copy.bytes() >= PIECE || in_batch >= batch {
            send(Piece::Rows(copy.take())).await?;
        }
        if in_batch >= batch {
            send(Piece::EndOfBatch { lines_total: counted }).await?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        send(Piece::Rows(copy.take())).await?;
        send(Piece::EndOfBatch { lines_total: counted }).await?;
    }
    Ok(counted)
}

/// Validates one exported line and keeps it verbatim beside its indexed keys.
fn parse_line(text: &str) -> Result<ExportedLine, String> {
    let entries = Entries::parse(text).map_err(|e| e.to_string())?;
    let LineKeys { user_id, email, connection } = LineKeys::read(&entries)?;
    Ok(ExportedLine { user_id, email, connection, plain: entries.is_plain(), raw: text.to_owned() })
}
