//! `/v1/exports/{id}/profiles` and `/download`: merged profiles, paged or streamed whole.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    auth::CanRead,
    caching::{self, Validators},
    error::{ApiError, Problem},
    exports::{load_export, load_export_id, parse_export_id},
    params::{finish_page_in, page_body, plain_text, AppPath, Params},
    AppState,
};
use crate::db::{
    exports::{ExportRow, ExportStatus},
    profiles::{self as store, ProfileFilter, ProfileRow},
};
use crate::document::csv_safe;

/// A page of profiles (written by [`page_body`]; this type documents its shape).
#[derive(ToSchema)]
pub struct ProfileList {
    /// Merged profiles: the exported user object plus `roles`, `authentication_methods`,
    /// `authenticators`, `enrollments` (those requested) and `enrichment_error` where set.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Box<RawValue>>,
    pub next_cursor: Option<String>,
}

/// Merged profiles in `user_id` order.
#[utoipa::path(get, path = "/v1/exports/{id}/profiles", tag = "profiles",
    params(("id" = uuid::Uuid, Path), ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query), ("role" = Option<String>, Query, description = "exact role name"),
           ("has_mfa" = Option<bool>, Query, description = "a confirmed MFA factor; needs an MFA enrichment"),
           ("connection" = Option<String>, Query, description = "identities[0].connection"),
           ("email" = Option<String>, Query, description = "exact email")),
    responses((status = 200, body = ProfileList), (status = 304, description = "not modified (completed exports)"),
              (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &PAGE_PARAMS)?;
    let export_id = parse_export_id(&id)?;
    let after = params.cursor()?;
    let variant = format!("profiles?{}", q.as_deref().unwrap_or(""));
    page(&state, export_id, &params, after, Via::Export, &variant, &headers).await
}

/// How a read reached an export: named in the path, or through the tenant's latest view, whose
/// cursors name the export they started on and whose validators carry no date (a newer export
/// may complete within the same second, which `If-Modified-Since` cannot tell).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Export,
    Latest,
}

/// The query parameters of a profile page.
pub const PAGE_PARAMS: [&str; 6] = ["limit", "cursor", "role", "has_mfa", "connection", "email"];

/// One page of an export's profiles; `variant` tells cached copies of different queries apart.
pub async fn page(
    state: &AppState,
    export_id: Uuid,
    params: &Params,
    after: Option<String>,
    via: Via,
    variant: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let limit = params.limit()?;
    let filter = ProfileFilter {
        role: params.text("role")?,
        has_mfa: params.bool("has_mfa")?,
        connection: params.text("connection")?,
        email: params.text("email")?,
    };
    let (export, cached) = export_to_read(state, export_id).await?;
    let request = &export.request;
    if filter.has_mfa.is_some() && !request.enrich.any_mfa() {
        return Err(ApiError::field("has_mfa", "this export fetched no MFA data (enrich.authentication_methods, authenticators and enrollments are all off)"));
    }
    if filter.role.is_some() && !request.enrich.roles {
        return Err(ApiError::field("role", "this export fetched no roles (enrich.roles is off)"));
    }
    // These filters read the exported `email` and `identities`: an export without them cannot answer.
    for (filter_set, param, field) in
        [(filter.connection.is_some(), "connection", "identities"), (filter.email.is_some(), "email", "email")]
    {
        if filter_set && !request.fields.iter().any(|f| f == field) {
            return Err(ApiError::field(param, format!("this export did not export the {field} field")));
        }
    }
    let validators = completed_validators(&export, variant, via);
    if let Some(v) = validators.as_ref().filter(|v| v.fresh(headers)) {
        if cached {
            load_export_id(state, export_id).await?; // still there?
        }
        return Ok(v.not_modified());
    }
    let rows = store::page(&state.pool, export.id, &filter, after.as_deref(), limit).await?;
    if rows.is_empty() && cached {
        // No rows either because the page is empty or because the export is gone (deleted,
        // perhaps through another replica): only the export's row tells which.
        state.completed.forget(export.id);
        load_export_id(state, export_id).await?;
    }
    let pin = (via == Via::Latest).then_some(export.id);
    let (rows, next_cursor) = finish_page_in(rows, limit, |r| r.user_id.clone(), pin);
    let capacity = rows.iter().map(|r| r.document.len() + 256).sum();
    let body = page_body(rows.iter().map(ProfileRow::merged_text), capacity, &next_cursor);
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    with_validators(&mut response, validators.as_ref());
    Ok(response)
}

/// The export whose profiles are read, from memory when it is completed and already known
/// (true), else from its row.
pub async fn export_to_read(state: &AppState, export_id: Uuid) -> Result<(Arc<ExportRow>, bool), ApiError> {
    if let Some(export) = state.completed.get(export_id) {
        return Ok((export, true));
    }
    Ok((state.completed.offer(load_export_id(state, export_id).await?), false))
}

/// The validators of data read from `export`: only a completed export's data never changes.
fn completed_validators(export: &ExportRow, variant: &str, via: Via) -> Option<Validators> {
    match (export.status, export.finished_at, via) {
        (ExportStatus::Completed, Some(finished), Via::Export) => {
            Some(Validators::of_completed(export.id, finished, variant))
        }
        (ExportStatus::Completed, Some(finished), Via::Latest) => {
            Some(Validators::of_completed(export.id, finished, variant).undated())
        }
        _ => None,
    }
}

/// Sets the validators, or only `Cache-Control` when the data may still change.
fn with_validators(response: &mut Response, validators: Option<&Validators>) {
    match validators {
        Some(v) => v.apply(response.headers_mut()),
        None => {
            response.headers_mut().insert(header::CACHE_CONTROL, caching::CACHE_CONTROL);
        }
    }
}

/// One merged profile; the user id is percent-encoded (`auth0%7C123`).
#[utoipa::path(get, path = "/v1/exports/{id}/profiles/{user_id}", tag = "profiles",
    params(("id" = uuid::Uuid, Path), ("user_id" = String, Path)),
    responses((status = 200, body = Object), (status = 304, description = "not modified (completed exports)"),
              (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(state): State<AppState>,
    _: CanRead,
    AppPath((id, user_id)): AppPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user_id = plain_text("user_id", &user_id)?;
    one(&state, parse_export_id(&id)?, &user_id, &headers, Via::Export).await
}

/// One merged profile of an export.
pub async fn one(
    state: &AppState,
    export_id: Uuid,
    user_id: &str,
    headers: &HeaderMap,
    via: Via,
) -> Result<Response, ApiError> {
    let (export, cached) = export_to_read(state, export_id).await?;
    let validators = completed_validators(&export, &format!("profiles/{user_id}"), via);
    if let Some(v) = validators.as_ref().filter(|v| v.fresh(headers)) {
        if cached {
            load_export_id(state, export_id).await?; // still there?
        }
        return Ok(v.not_modified());
    }
    let missing = || ApiError::NotFound(format!("user {user_id:?} is not in export {}", export.id));
    let Some(row) = store::get(&state.pool, export.id, user_id).await? else {
        if cached {
            state.completed.forget(export.id);
            load_export_id(state, export_id).await?;
        }
        return Err(missing());
    };
    let mut response = Json(row.merged()).into_response();
    with_validators(&mut response, validators.as_ref());
    Ok(response)
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Ndjson,
    Json,
    Csv,
}

/// Bytes per chunk of a download's body.
const CHUNK: usize = 256 * 1024;
/// Chunks encoded ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// The whole result, streamed from the database page by page (gzip when the client accepts it).
#[utoipa::path(get, path = "/v1/exports/{id}/download", tag = "profiles",
    params(("id" = uuid::Uuid, Path), ("format" = Option<String>, Query, description = "ndjson (default) | json | csv")),
    responses((status = 200, description = "NDJSON lines, one JSON array, or CSV (nested values as compact JSON; formula-like cells behind a `'`)",
               headers(("Content-Disposition" = String, description = "attachment; filename=\"export-<id>.<format>\""))),
              (status = 304, description = "not modified"),
              (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn download(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &["format"])?;
    let export = load_export(&state, &id).await?;
    stream_export(&state, &export, &params, q.as_deref(), &headers, Via::Export).await
}

/// The whole of one export, in the format the query asks for.
pub async fn stream_export(
    state: &AppState,
    export: &ExportRow,
    params: &Params,
    q: Option<&str>,
    headers: &HeaderMap,
    via: Via,
) -> Result<Response, ApiError> {
    let format = match params.choice("format", &["ndjson", "json", "csv"])?.as_deref() {
        Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        _ => Format::Ndjson,
    };
    let validators = completed_validators(export, &format!("download?{}", q.unwrap_or("")), via);
    if let Some(v) = validators.as_ref().filter(|v| v.fresh(headers)) {
        return Ok(v.not_modified());
    }
    if export.status != ExportStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "export {} is {}; its result is complete only once completed",
            export.id,
            export.status.as_str()
        )));
    }
    let columns = csv_columns(&export.request.fields, export.request.enrich);
    // One query streams every row in key order while a task turns them into chunks; the
    // bounded channel keeps memory flat and lets the database, the encoder and the client overlap.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(CHUNKS_AHEAD);
    let (pool, export_id) = (state.pool.clone(), export.id);
    tokio::spawn(async move {
        let mut rows = store::all(&pool, export_id);
        let mut out = Vec::with_capacity(CHUNK + 64 * 1024);
        // CSV is written by one writer into its own buffer, moved into `out` chunk by chunk.
        let new_csv = || csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
        let mut csv = new_csv();
        match format {
            Format::Json => out.push(b'['),
            Format::Csv => csv.write_record(columns.iter().cloned().map(csv_safe)).expect("csv to vec"),
            Format::Ndjson => {}
        }
        let mut first = true;
        loop {
            let row = match rows.try_next().await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "download aborted");
                    let _ = tx.send(Err(std::io::Error::other("database error"))).await;
                    return;
                }
            };
            match format {
                Format::Ndjson => {
                    out.extend_from_slice(row.merged_text().as_bytes());
                    out.push(b'\n');
                }
                Format::Json => {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(row.merged_text().as_bytes());
                }
                Format::Csv => {
                    csv.write_record(row.csv_cells(&columns)).expect("csv to vec");
                    if csv.get_ref().len() >= CHUNK {
                        out.append(&mut std::mem::replace(&mut csv, new_csv()).into_inner().expect("csv to vec"));
                    }
                }
            }
            first = false;
            if out.len() >= CHUNK {
                let chunk = Bytes::from(std::mem::replace(&mut out, Vec::with_capacity(CHUNK + 64 * 1024)));
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // the client went away
                }
            }
        }
        match format {
            Format::Json => out.push(b']'),
            Format::Csv => out.append(&mut csv.into_inner().expect("csv to vec")),
            Format::Ndjson => {}
        }
        let _ = tx.send(Ok(Bytes::from(out))).await;
    });
    // Fused: compression may poll again after the end.
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) }).fuse();
    let (content_type, extension) = match format {
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
        Format::Json => ("application/json", "json"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    let disposition = format!("attachment; filename=\"export-{export_id}.{extension}\"");
    let mut response = (
        [(header::CONTENT_TYPE, content_type.to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        Body::from_stream(body),
    )
        .into_response();
    with_validators(&mut response, validators.as_ref());
    Ok(response)
}

/// CSV columns: the requested fields, then each requested enrichment and `enrichment_error`.
fn csv_columns(fields: &[String], enrich: crate::model::Enrich) -> std::sync::Arc<Vec<String>> {
    let mut columns = fields.to_vec();
    for (wanted, name) in [
        (enrich.roles, "roles"),
        (enrich.authentication_methods, "authentication_methods"),
        (enrich.authenticators, "authenticators"),
        (enrich.enrollments, "enrollments"),
    ] {
        if wanted {
            columns.push(name.into());
        }
    }
    columns.push("enrichment_error".into());
    std::sync::Arc::new(columns)
}

#[cfg(test)]
mod tests {
    use crate::document::{csv_text, Entries};

    #[test]
    fn csv_cells_quote_commas_quotes_and_newlines() {
        let entries = Entries::parse(r#"{"s":"a, \"b\"\nc","o":{"k":[1]}}"#).unwrap();
        let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
        writer
            .write_record([csv_text(entries.get("s")), csv_text(entries.get("o")), csv_text(entries.get("x"))])
            .unwrap();
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        assert_eq!(text, "\"a, \"\"b\"\"\nc\",\"{\"\"k\"\":[1]}\",\r\n");
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "a, \"b\"\nc");
        assert_eq!(&record[1], "{\"k\":[1]}");
    }
}
