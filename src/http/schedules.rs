//! `/v1/schedules`: cron schedules of exports.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, RawQuery, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::{CanRead, CanWrite},
    body::{json_body, Fields},
    error::{ApiError, Problem},
    params::{finish_page, parse_id, AppPath, Params},
    AppState,
};
use crate::{
    cron::Timing,
    db::schedules::{self as store, ScheduleRow, ScheduleSpec},
    model::{Enrich, ExportRequest},
};

/// A schedule as clients see it.
#[derive(Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: Uuid,
    pub tenant: String,
    /// 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The IANA time zone the cron fields are read in.
    pub timezone: String,
    /// The export body of every run.
    pub export: ScheduleExport,
    /// Each run builds on the tenant's latest completed export of the same data.
    pub incremental: bool,
    pub enabled: bool,
    pub description: Option<String>,
    /// The next due time (while enabled).
    pub next_run_at: Option<DateTime<Utc>>,
    pub runs: ScheduleRuns,
    /// The last due time acted on, and the export it started.
    pub last_due_at: Option<DateTime<Utc>>,
    pub last_export_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What each run exports (as in `POST /v1/exports`, without `tenant` and `base`).
#[derive(Serialize, ToSchema)]
pub struct ScheduleExport {
    pub connection_id: Option<String>,
    pub limit: Option<i64>,
    pub fields: Vec<String>,
    pub enrich: Enrich,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleRuns {
    /// Due times that started an export.
    pub started: i64,
    /// Due times skipped because the schedule's previous export was still running.
    pub skipped: i64,
}

impl From<ScheduleRow> for ScheduleView {
    fn from(row: ScheduleRow) -> ScheduleView {
        let request = row.request.0;
        ScheduleView {
            id: row.id,
            tenant: row.tenant,
            cron: row.cron,
            timezone: row.timezone,
            export: ScheduleExport {
                connection_id: request.connection_id,
                limit: request.limit,
                fields: request.fields,
                enrich: request.enrich,
            },
            incremental: row.incremental,
            enabled: row.enabled,
            description: row.description,
            next_run_at: row.enabled.then_some(row.next_run_at),
            runs: ScheduleRuns { started: row.runs_started, skipped: row.runs_skipped },
            last_due_at: row.last_due_at,
            last_export_id: row.last_export_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleList {
    pub data: Vec<ScheduleView>,
    pub next_cursor: Option<String>,
}

const KEYS: [&str; 7] = ["tenant", "cron", "timezone", "export", "incremental", "enabled", "description"];

/// Validates a whole schedule body, naming every bad field; returns it with its timing.
fn validate(body: &Value, tenants: &[String]) -> Result<(ScheduleSpec, Timing), ApiError> {
    let mut f = Fields::new(body, &KEYS)?;
    let cron = f.required_text("cron", "5 fields, or 6 with seconds first (e.g. \"0 3 * * *\")");
    let timezone = f.text("timezone").unwrap_or_else(|| "UTC".into());
    let incremental = f.flag("incremental", false);
    let enabled = f.flag("enabled", true);
    let description = f.description();

    // The export body, validated as POST /v1/exports would, with the schedule's tenant.
    let mut export = match f.get("export") {
        None => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => {
            f.error("export", "must be an object (the POST /v1/exports body)");
            Map::new()
        }
    };
    for (key, why) in [("tenant", "set the schedule's tenant instead"), ("base", "set incremental instead")] {
        if export.remove(key).is_some() {
            f.error(format!("export.{key}"), why);
        }
    }
    if let Some(t) = f.get("tenant") {
        export.insert("tenant".into(), t.clone());
    }
    let request = match ExportRequest::from_body(&Value::Object(export), tenants) {
        Ok(r) => Some(r),
        Err(errors) => {
            for e in errors {
                let field = if e.field == "tenant" { e.field } else { format!("export.{}", e.field) };
                f.error(field, e.message);
            }
            None
        }
    };
    let timing = match cron.as_deref().map(|c| Timing::parse(c, &timezone)) {
        Some(Ok(t)) => Some(t),
        Some(Err((field, message))) => {
            f.error(field, message);
            None
        }
        None => None,
    };
    let spec = match (request, timing, cron) {
        (Some(request), Some(timing), Some(cron)) => {
            Some((ScheduleSpec { cron, timezone, request, incremental, enabled, description }, timing))
        }
        _ => None,
    };
    f.finish(spec)
}

/// The body a schedule would be created with, so a PATCH can be applied on top and validated whole.
fn body_of(row: &ScheduleRow) -> Map<String, Value> {
    let mut export = serde_json::to_value(&row.request.0).expect("request serialises");
    if let Value::Object(o) = &mut export {
        o.remove("tenant");
        o.remove("base");
    }
    let view = serde_json::json!({
        "tenant": row.tenant, "cron": row.cron, "timezone": row.timezone, "export": export,
        "incremental": row.incremental, "enabled": row.enabled, "description": row.description,
    });
    match view {
        Value::Object(o) => o,
        _ => unreachable!("a json! object"),
    }
}

/// The first due time after `from` (the database's clock, and never before a due time already
/// acted on, so an edit cannot bring one back).
fn next_due(timing: &Timing, from: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    timing.next_after(from).ok_or_else(|| ApiError::field("cron", "never matches a date"))
}

pub fn parse_schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    parse_id("id", "a schedule", raw)
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("schedule {id} does not exist"))
}

/// Create a schedule; its first run is at the next due time.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules",
    request_body(content = Object, description = "tenant, cron (required), timezone (IANA, default UTC), export (the POST /v1/exports body without tenant and base), incremental, enabled, description"),
    responses((status = 201, body = ScheduleView, headers(("Location" = String, description = "the schedule's URL"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn create(
    State(state): State<AppState>,
    _: CanWrite,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let (spec, timing) = validate(&body, &state.tenants.names())?;
    let now = store::db_now(&mut *state.pool.acquire().await?).await?;
    let row = store::insert(&state.pool, &spec, next_due(&timing, now)?).await?;
    tracing::info!(schedule_id = %row.id, tenant = %row.tenant, cron = %row.cron, "schedule created");
    let location = format!("/v1/schedules/{}", row.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(ScheduleView::from(row))).into_response())
}

/// List schedules, newest first.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    params(("tenant" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = ScheduleList), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    _: CanRead,
    RawQuery(q): RawQuery,
) -> Result<Json<ScheduleList>, ApiError> {
    let params = Params::parse(q.as_deref(), &["tenant", "limit", "cursor"])?;
    let tenant = params.text("tenant")?;
    let limit = params.limit()?;
    let before = params.uuid_cursor()?;
    let rows = store::list(&state.pool, tenant.as_deref(), before, limit).await?;
    let (rows, next_cursor) = finish_page(rows, limit, |r| r.id.to_string());
    Ok(Json(ScheduleList { data: rows.into_iter().map(ScheduleView::from).collect(), next_cursor }))
}

/// One schedule.
#[utoipa::path(get, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleView), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = parse_schedule_id(&id)?;
    let row = store::get(&state.pool, id).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(row.into()))
}

/// Change a schedule: the fields given replace the current ones (`export` as a whole). A changed
/// or re-enabled schedule next runs at its next due time from now.
#[utoipa::path(patch, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "any of tenant, cron, timezone, export, incremental, enabled, description"),
    responses((status = 200, body = ScheduleView), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn update(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = parse_schedule_id(&id)?;
    let Value::Object(patch) = json_body(body)? else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    let mut tx = state.pool.begin().await?;
    let current = store::lock(&mut tx, id).await?.ok_or_else(|| not_found(id))?;
    let mut merged = body_of(&current);
    merged.extend(patch);
    let (spec, timing) = validate(&Value::Object(merged), &state.tenants.names())?;
    // Unchanged timing keeps its due time, so an unrelated edit cannot skip or repeat a run.
    let same_timing = spec.cron == current.cron && spec.timezone == current.timezone && current.enabled;
    let from = store::db_now(&mut tx).await?.max(current.last_due_at.unwrap_or(DateTime::<Utc>::MIN_UTC));
    let next = if same_timing { current.next_run_at } else { next_due(&timing, from)? };
    let row = store::update(&mut tx, id, &spec, next).await?.ok_or_else(|| not_found(id))?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

/// Delete a schedule; the exports it started stay.
#[utoipa::path(delete, path = "/v1/schedules/{id}", tag = "schedules", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_schedule_id(&id)?;
    if store::delete(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}
