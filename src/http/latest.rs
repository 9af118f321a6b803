//! `/v1/tenants/{tenant}/latest`: the tenant's newest completed export, for dashboards that
//! want one URL. It switches when a newer export completes, in the same commit that completes
//! it; page sequences are pinned by their cursor to the export they started on.

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use super::{
    auth::CanRead,
    caching::Validators,
    error::{ApiError, Problem},
    exports::ExportView,
    params::{parse_id, plain_text, AppPath, Params},
    profiles::{self, ProfileList, Via, PAGE_PARAMS},
    AppState,
};
use crate::db::exports::{self as store, ExportRow};

/// Which export the view serves: the tenant's newest completed export of the whole tenant (no
/// `limit`, no `connection_id`), or with `schedule`, the newest that schedule completed.
/// Kept among the completed exports in memory, so the read that follows needs no lookup of its own.
async fn latest(state: &AppState, tenant: &str, params: &Params) -> Result<Arc<ExportRow>, ApiError> {
    let schedule = schedule_param(params)?;
    if state.tenants.get(tenant).is_none() {
        return Err(ApiError::NotFound(format!(
            "tenant {tenant:?} is not configured; configured: {}",
            state.tenants.names().join(", ")
        )));
    }
    let row = store::latest_of_tenant(&state.pool, tenant, schedule).await?.ok_or_else(|| {
        ApiError::NotFound(match schedule {
            Some(s) => format!("schedule {s} has no completed export of tenant {tenant} yet"),
            None => format!("tenant {tenant} has no completed export of all its users yet"),
        })
    })?;
    Ok(state.completed.offer(row))
}

/// The `schedule` parameter every route of the view takes.
const SCHEDULE: &str = "schedule";

fn schedule_param(params: &Params) -> Result<Option<Uuid>, ApiError> {
    params.get(SCHEDULE).map(|s| parse_id(SCHEDULE, "a schedule", s)).transpose()
}

/// Names the export a response was served from.
fn served_from(mut response: Response, export: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/exports/{export}")) {
        response.headers_mut().insert(header::CONTENT_LOCATION, value);
    }
    response
}

/// The tenant's newest completed export (its ETag changes exactly when a newer one completes).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/latest", tag = "latest",
    params(("tenant" = String, Path), ("schedule" = Option<uuid::Uuid>, Query, description = "follow this schedule's exports")),
    responses((status = 200, body = ExportView, headers(("Content-Location" = String, description = "the export served"))),
              (status = 304, description = "not modified: still the same export"),
              (status = 404, body = Problem, description = "unknown tenant, or no completed export yet")),
    security(("bearer" = ["read"])))]
pub async fn export(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(tenant): AppPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &[SCHEDULE])?;
    let row = latest(&state, &tenant, &params).await?;
    let id = row.id;
    let rate = state.rate_limit(&row.tenant);
    let body = serde_json::to_vec(&ExportView::new(ExportRow::clone(&row), rate)).map_err(anyhow::Error::from)?;
    // No date: a newer export may complete within the second the old one did.
    let validators = Validators::of_bytes(&body, None);
    if validators.fresh(&headers) {
        return Ok(served_from(validators.not_modified(), id));
    }
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    validators.apply(response.headers_mut());
    Ok(served_from(response, id))
}

/// The latest export's profiles, with the filters and pages of `/v1/exports/{id}/profiles`.
/// `next_cursor` stays on the export the first page came from, even after a newer one
/// completes; if that export is deleted meanwhile, the next page is `410`: start again.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/latest/profiles", tag = "latest",
    params(("tenant" = String, Path), ("schedule" = Option<uuid::Uuid>, Query, description = "follow this schedule's exports"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query), ("role" = Option<String>, Query, description = "exact role name"),
           ("has_mfa" = Option<bool>, Query, description = "a confirmed MFA factor; needs an MFA enrichment"),
           ("connection" = Option<String>, Query, description = "identities[0].connection"),
           ("email" = Option<String>, Query, description = "exact email")),
    responses((status = 200, body = ProfileList, headers(("Content-Location" = String, description = "the export served"))),
              (status = 304, description = "not modified"), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 410, body = Problem, description = "the export this page sequence started on was deleted: restart without a cursor")),
    security(("bearer" = ["read"])))]
pub async fn profiles(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(tenant): AppPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let allowed: Vec<&str> = PAGE_PARAMS.iter().copied().chain([SCHEDULE]).collect();
    let params = Params::parse(q.as_deref(), &allowed)?;
    let variant = format!("latest/profiles?{}", q.as_deref().unwrap_or(""));
    // Checked even when a cursor decides the export, so a bad value is never silently ignored.
    schedule_param(&params)?;
    if let Some((key, export)) = params.pinned_cursor()? {
        let Some(export) = export else {
            return Err(ApiError::field("cursor", "not a cursor of this view: restart without one"));
        };
        let export = pinned(&state, &tenant, export).await?;
        let response = profiles::page(&state, export, &params, Some(key), Via::Latest, &variant, &headers).await;
        return Ok(served_from(response.map_err(|e| gone_if_deleted(e, export))?, export));
    }
    // A first page: if the latest export is deleted between the lookup and the read, the view
    // has moved on; look again (once: a second deletion in that instant is answered as it is).
    let mut tries = 0;
    loop {
        let export = latest(&state, &tenant, &params).await?.id;
        match profiles::page(&state, export, &params, None, Via::Latest, &variant, &headers).await {
            Err(ApiError::NotFound(m)) if tries == 0 && m.starts_with("export ") => tries += 1,
            response => return Ok(served_from(response?, export)),
        }
    }
}

/// The export a cursor is pinned to, if it is still one of this tenant's.
async fn pinned(state: &AppState, tenant: &str, export: Uuid) -> Result<Uuid, ApiError> {
    let (row, _) = profiles::export_to_read(state, export).await.map_err(|e| gone_if_deleted(e, export))?;
    if row.tenant != tenant {
        return Err(ApiError::field("cursor", "a cursor of another tenant's view"));
    }
    Ok(export)
}

fn gone(export: Uuid) -> ApiError {
    ApiError::Gone(format!(
        "export {export}, which this page sequence started on, was deleted; restart from the first page (no cursor)"
    ))
}

fn gone_if_deleted(e: ApiError, export: Uuid) -> ApiError {
    match e {
        ApiError::NotFound(m) if m.starts_with("export ") => gone(export),
        other => other,
    }
}

/// One merged profile of the latest export.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/latest/profiles/{user_id}", tag = "latest",
    params(("tenant" = String, Path), ("user_id" = String, Path),
           ("schedule" = Option<uuid::Uuid>, Query, description = "follow this schedule's exports")),
    responses((status = 200, body = Object, headers(("Content-Location" = String, description = "the export served"))),
              (status = 304, description = "not modified"), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn profile(
    State(state): State<AppState>,
    _: CanRead,
    AppPath((tenant, user_id)): AppPath<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &[SCHEDULE])?;
    let user_id = plain_text("user_id", &user_id)?;
    let export = latest(&state, &tenant, &params).await?.id;
    Ok(served_from(profiles::one(&state, export, &user_id, &headers, Via::Latest).await?, export))
}

/// The whole latest export, as `/v1/exports/{id}/download` serves it.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/latest/download", tag = "latest",
    params(("tenant" = String, Path), ("format" = Option<String>, Query, description = "ndjson (default) | json | csv"),
           ("schedule" = Option<uuid::Uuid>, Query, description = "follow this schedule's exports")),
    responses((status = 200, description = "NDJSON lines, one JSON array, or CSV",
               headers(("Content-Location" = String, description = "the export served"),
                       ("Content-Disposition" = String, description = "attachment; filename=\"export-<id>.<format>\""))),
              (status = 304, description = "not modified"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn download(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(tenant): AppPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &["format", SCHEDULE])?;
    let export = latest(&state, &tenant, &params).await?;
    let id = export.id;
    Ok(served_from(profiles::stream_export(&state, &export, &params, q.as_deref(), &headers, Via::Latest).await?, id))
}
