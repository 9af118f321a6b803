//! `/v1/exports`: create (idempotent), list, read and cancel exports.

use axum::{
    body::Bytes,
    extract::rejection::BytesRejection,
    extract::{RawQuery, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::{CanRead, CanWrite},
    body::json_body,
    caching::Validators,
    error::{ApiError, Problem},
    params::{finish_page, parse_id, AppPath, Params},
    AppState,
};
use crate::{
    db::exports::{
        self as store, BaseChoice, Cancelled, Created, ExportRow, ExportStatus, NewExport, RolesStrategy, Stage,
    },
    model::ExportRequest,
};

/// An export as clients see it.
#[derive(Serialize, ToSchema)]
pub struct ExportView {
    pub id: Uuid,
    pub tenant: String,
    /// queued | running | completed | failed | cancelled
    pub status: String,
    /// queued | creating_job | waiting_for_job | downloading | enriching | finished
    pub stage: String,
    pub request: ExportRequest,
    pub auth0_job_id: Option<String>,
    pub progress: Progress,
    pub stats: Stats,
    /// Present when the request named a `base`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
    /// The schedule that started this export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct Progress {
    /// Known once the export file is stored.
    pub users_total: Option<i64>,
    pub users_downloaded: i64,
    pub users_enriched: i64,
    /// Auth0's own progress of the export job while we wait for it.
    pub auth0_job_percent_done: Option<i32>,
    /// Whole-export progress, 0 to 100.
    pub percent: f64,
    /// Seconds until completion, from the measured enrichment pace (or the rate limit before
    /// there is one); null while the user count is unknown.
    pub eta_seconds: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Auth0 requests made (token, Management API), including retried ones.
    pub api_calls: i64,
    /// 429 answers received.
    pub rate_limited: i64,
    /// Retries after 5xx, network errors and interrupted downloads.
    pub retries: i64,
    /// How roles were fetched: `by_role` or `per_user`.
    pub roles_strategy: Option<String>,
    /// Per-user MFA calls an incremental export did not make, against a full export.
    pub calls_saved: Option<i64>,
}

/// How an export with a base ran, and what changed against it.
#[derive(Serialize, ToSchema)]
pub struct Incremental {
    /// The export this one built on.
    pub base: Option<Uuid>,
    /// `incremental`, or `full` with `full_reason` (known once enrichment starts).
    pub mode: Option<String>,
    pub full_reason: Option<String>,
    pub users_added: Option<i64>,
    pub users_deleted: Option<i64>,
    pub users_changed: Option<i64>,
    /// Users whose MFA factors were fetched again (the others' were copied from the base).
    pub mfa_refetched: Option<i64>,
}

impl ExportView {
    pub fn new(row: ExportRow, rate_limit: Option<f64>) -> ExportView {
        let progress = progress(&row, rate_limit);
        let has_base = row.request.base.is_some();
        ExportView {
            id: row.id,
            tenant: row.tenant,
            status: row.status.as_str().to_owned(),
            stage: row.stage.as_str().to_owned(),
            request: row.request.0,
            auth0_job_id: row.auth0_job_id,
            progress,
            stats: Stats {
                api_calls: row.api_calls,
                rate_limited: row.rate_limited,
                retries: row.retries,
                roles_strategy: row.roles_strategy.map(|s| match s {
                    RolesStrategy::ByRole => "by_role".to_owned(),
                    RolesStrategy::PerUser => "per_user".to_owned(),
                }),
                calls_saved: row.calls_saved,
            },
            incremental: has_base.then(|| Incremental {
                base: row.base_id,
                mode: row.mode.clone(),
                full_reason: row.full_reason.clone(),
                users_added: row.users_added,
                users_deleted: row.users_deleted,
                users_changed: row.users_changed,
                mfa_refetched: row.mfa_refetched,
            }),
            schedule_id: row.schedule_id,
            error: row.error.map(|e| e.0),
            cancel_requested: row.cancel_requested,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// Percent and ETA: the job and download are a small share; enrichment is paced by the limiter.
fn progress(row: &ExportRow, rate_limit: Option<f64>) -> Progress {
    let done = row.status == ExportStatus::Completed;
    let total = row.users_total;
    let percent = match row.stage {
        _ if done => 100.0,
        Stage::WaitingForJob => 5.0 * f64::from(row.job_percent_done.unwrap_or(0)) / 100.0,
        Stage::Enriching => match total {
            Some(t) if t > 0 => 10.0 + 90.0 * row.users_enriched as f64 / t as f64,
            _ => 10.0,
        },
        Stage::Downloading => 5.0,
        _ => 0.0,
    };
    let eta_seconds = match (row.status, total) {
        (ExportStatus::Completed, _) => Some(0.0),
        (ExportStatus::Running | ExportStatus::Queued, Some(t)) => {
            let remaining = (t - row.users_enriched).max(0) as f64;
            let enrich = row.request.enrich;
            let calls_per_user = [enrich.authentication_methods, enrich.authenticators, enrich.enrollments]
                .iter()
                .filter(|b| **b)
                .count() as f64
                + if enrich.roles && row.roles_strategy == Some(RolesStrategy::PerUser) { 1.0 } else { 0.0 };
            let by_limit = rate_limit.map(|r| remaining * calls_per_user / r);
            let measured = row.enrich_started_at.and_then(|start| {
                let secs = (Utc::now() - start).num_milliseconds() as f64 / 1000.0;
                (row.users_enriched >= 20 && secs > 1.0).then(|| remaining / (row.users_enriched as f64 / secs))
            });
            measured.or(by_limit).map(|s| (s * 10.0).round() / 10.0)
        }
        _ => None,
    };
    Progress {
        users_total: total,
        users_downloaded: row.users_downloaded,
        users_enriched: row.users_enriched,
        auth0_job_percent_done: row.job_percent_done,
        percent: (percent * 10.0_f64).round() / 10.0,
        eta_seconds,
    }
}

#[derive(Serialize, ToSchema)]
pub struct ExportList {
    pub data: Vec<ExportView>,
    pub next_cursor: Option<String>,
}

pub fn parse_export_id(raw: &str) -> Result<Uuid, ApiError> {
    parse_id("id", "an export", raw)
}

pub async fn load_export(state: &AppState, id: &str) -> Result<ExportRow, ApiError> {
    load_export_id(state, parse_export_id(id)?).await
}

pub async fn load_export_id(state: &AppState, id: Uuid) -> Result<ExportRow, ApiError> {
    store::get(&state.pool, id).await?.ok_or_else(|| ApiError::NotFound(format!("export {id} does not exist")))
}

/// Create an export; it is queued at once and runs in the background.
#[utoipa::path(post, path = "/v1/exports", tag = "exports",
    request_body(content = Object, description = "ExportRequest; every field optional when the service has one tenant"),
    params(("Idempotency-Key" = Option<String>, Header, description = "same key + same body returns the same export")),
    responses((status = 202, body = ExportView, description = "queued; Location names it",
               headers(("Location" = String, description = "the export's URL"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem, description = "the base export does not exist"),
              (status = 409, body = Problem, description = "idempotency key reused with another body, or a base that is not a completed export of the same data")),
    security(("bearer" = ["write"])))]
pub async fn create(
    State(state): State<AppState>,
    _: CanWrite,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let request = ExportRequest::from_body(&body, &state.tenants.names()).map_err(ApiError::fields)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..=0x7e).contains(&b)) => {
                Some(k.to_owned())
            }
            _ => return Err(ApiError::field("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
        },
    };
    let base = choose_base(&state, &request).await?;
    let hash = request_hash(&request);
    let new = NewExport {
        request: &request,
        request_hash: &hash,
        idempotency_key: key.as_deref(),
        base: &base,
        schedule_id: None,
    };
    let row = match store::create(&state.pool, &new).await? {
        Created::New(row) => {
            tracing::info!(export_id = %row.id, tenant = %row.tenant, "export queued");
            row
        }
        Created::Existing(row) => row,
        Created::Conflict(row) => {
            return Err(ApiError::Conflict(format!(
                "Idempotency-Key was used for export {} with a different body",
                row.id
            )))
        }
    };
    let location = format!("/v1/exports/{}", row.id);
    let view = ExportView::new(row, state.rate_limit(&request.tenant));
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view)).into_response())
}

/// The export an incremental request builds on: a named one must be a completed export of the
/// same data; `latest` is the newest such export, or none (the export then runs in full).
async fn choose_base(state: &AppState, request: &ExportRequest) -> Result<BaseChoice, ApiError> {
    match request.base.as_deref() {
        None => Ok(BaseChoice::None),
        Some("latest") => Ok(store::latest_base(&mut *state.pool.acquire().await?, request).await?),
        Some(id) => {
            let id = Uuid::parse_str(id).map_err(|_| ApiError::field("base", "must be an export id or \"latest\""))?;
            let Some(base) = store::get(&state.pool, id).await? else {
                return Err(ApiError::NotFound(format!("base: export {id} does not exist")));
            };
            if base.status != ExportStatus::Completed {
                return Err(ApiError::Conflict(format!(
                    "base: export {id} is {}; only a completed export can be built on",
                    base.status.as_str()
                )));
            }
            if !base.request.same_data(request) {
                return Err(ApiError::Conflict(format!(
                    "base: export {id} asked for other data (tenant, connection, limit, fields or enrichments)"
                )));
            }
            Ok(BaseChoice::Base(id))
        }
    }
}

/// What an idempotency key is compared by: the normalised request's SHA-256.
pub fn request_hash(request: &ExportRequest) -> String {
    let digest = Sha256::digest(serde_json::to_vec(request).expect("request serialises"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// List exports, newest first.
#[utoipa::path(get, path = "/v1/exports", tag = "exports",
    params(("status" = Option<String>, Query, description = "queued|running|completed|failed|cancelled"),
           ("tenant" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = ExportList), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    _: CanRead,
    RawQuery(q): RawQuery,
) -> Result<Json<ExportList>, ApiError> {
    let params = Params::parse(q.as_deref(), &["status", "tenant", "limit", "cursor"])?;
    let status = params
        .choice("status", &["queued", "running", "completed", "failed", "cancelled"])?
        .and_then(|s| ExportStatus::parse(&s));
    let tenant = params.text("tenant")?;
    let limit = params.limit()?;
    let before = params.uuid_cursor()?;
    let rows = store::list(&state.pool, status, tenant.as_deref(), before, limit).await?;
    let (rows, next_cursor) = finish_page(rows, limit, |r| r.id.to_string());
    let data = rows.into_iter().map(|r| {
        let rate = state.rate_limit(&r.tenant);
        ExportView::new(r, rate)
    });
    Ok(Json(ExportList { data: data.collect(), next_cursor }))
}

/// One export: status, stage, progress, counters, error.
#[utoipa::path(get, path = "/v1/exports/{id}", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 200, body = ExportView), (status = 304, description = "not modified since the ETag or date given"),
              (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = load_export(&state, &id).await?;
    let rate = state.rate_limit(&row.tenant);
    let finished_at = row.finished_at;
    let body = serde_json::to_vec(&ExportView::new(row, rate)).map_err(anyhow::Error::from)?;
    let validators = Validators::of_bytes(&body, finished_at);
    if validators.fresh(&headers) {
        return Ok(validators.not_modified());
    }
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    validators.apply(response.headers_mut());
    Ok(response)
}

/// Cancel a queued or running export.
#[utoipa::path(post, path = "/v1/exports/{id}/cancel", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 202, body = ExportView, description = "cancelled, or cancelling at the running stage's next heartbeat"),
              (status = 404, body = Problem), (status = 409, body = Problem, description = "already finished")),
    security(("bearer" = ["write"])))]
pub async fn cancel(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_export_id(&id)?;
    match store::cancel(&state.pool, id).await? {
        Cancelled::NotFound => Err(ApiError::NotFound(format!("export {id} does not exist"))),
        Cancelled::AlreadyFinished(row) => {
            Err(ApiError::Conflict(format!("export {id} is already {}", row.status.as_str())))
        }
        Cancelled::Done(row) => {
            let rate = state.rate_limit(&row.tenant);
            Ok((StatusCode::ACCEPTED, Json(ExportView::new(row, rate))).into_response())
        }
    }
}

/// Delete a finished export, its profiles and everything kept for it.
#[utoipa::path(delete, path = "/v1/exports/{id}", tag = "exports", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "queued or running: cancel it first")),
    security(("bearer" = ["write"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    let row = load_export(&state, &id).await?;
    if !row.status.is_final() {
        return Err(ApiError::Conflict(format!(
            "export {} is {}; cancel it first (POST /v1/exports/{}/cancel)",
            row.id,
            row.status.as_str(),
            row.id
        )));
    }
    if !store::delete(&state.pool, row.id).await? {
        return Err(ApiError::Conflict(format!("export {} started again meanwhile; cancel it first", row.id)));
    }
    tracing::info!(export_id = %row.id, "export deleted");
    // The partition and role scratch rows go off the request, without blocking readers of
    // other exports; the sweeper finishes the job if this process stops first.
    let pool = state.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = store::purge(&pool, row.id).await {
            tracing::warn!(error = %e, "purging a deleted export failed; the sweeper retries");
        }
    });
    Ok(StatusCode::NO_CONTENT)
}
