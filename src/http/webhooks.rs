//! `/v1/webhooks`: endpoints that receive signed events, and the record of every delivery.

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
    db::webhooks::{self as store, AttemptRow, DeliveryRow, Redelivery, WebhookRow, WebhookSpec},
    webhooks::signature,
};

/// The events an endpoint may subscribe to.
pub const EVENTS: [&str; 4] = ["export.completed", "export.failed", "export.cancelled", "schedule.skipped"];
const MAX_URL: usize = 2048;
const KEYS: [&str; 4] = ["url", "events", "description", "enabled"];

/// A webhook endpoint as clients see it (the secret is shown only when it is created).
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    /// export.completed | export.failed | export.cancelled | schedule.skipped
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookRow> for WebhookView {
    fn from(row: WebhookRow) -> WebhookView {
        WebhookView {
            id: row.id,
            url: row.url,
            events: row.events,
            description: row.description,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A new endpoint with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_<base64>`: verify deliveries with a Standard Webhooks library. Not shown again.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
    pub next_cursor: Option<String>,
}

/// One event's delivery to one endpoint, with every try.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header: the same on every try (receivers deduplicate on it).
    pub event_id: Uuid,
    pub event_type: String,
    /// pending | succeeded | failed
    pub status: String,
    pub attempts: i32,
    /// The last try's HTTP status (null: no answer, e.g. a timeout) and latency.
    pub response_code: Option<i32>,
    pub latency_ms: Option<i32>,
    pub error: Option<String>,
    /// When the next try is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempt_log: Vec<AttemptView>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub response_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

fn delivery_view(row: DeliveryRow, attempts: &[AttemptRow]) -> DeliveryView {
    DeliveryView {
        id: row.id,
        event_id: row.event_id,
        event_type: row.event_type,
        status: row.status,
        attempts: row.attempts,
        response_code: row.last_status_code,
        latency_ms: row.last_latency_ms,
        error: row.last_error,
        next_attempt_at: row.next_attempt_at,
        created_at: row.created_at,
        finished_at: row.finished_at,
        attempt_log: attempts
            .iter()
            .filter(|a| a.delivery_id == row.id)
            .map(|a| AttemptView {
                attempt: a.attempt,
                started_at: a.started_at,
                response_code: a.status_code,
                latency_ms: a.latency_ms,
                error: a.error.clone(),
            })
            .collect(),
    }
}

/// Validates a whole endpoint body, naming every bad field.
fn validate(body: &Value, allow_http: bool) -> Result<WebhookSpec, ApiError> {
    let mut f = Fields::new(body, &KEYS)?;
    let url = f.required_text("url", "the https:// URL deliveries are POSTed to");
    if let Some(Err(message)) = url.as_deref().map(|u| check_url(u, allow_http)) {
        f.error("url", message);
    }
    let mut events: Vec<String> = Vec::new();
    match f.get("events") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().filter(|e| EVENTS.contains(e)) {
                    Some(e) if events.iter().any(|x| x == e) => {
                        f.error(format!("events[{i}]"), format!("{e} is listed twice"))
                    }
                    Some(e) => events.push(e.to_owned()),
                    None => f.error(format!("events[{i}]"), format!("must be one of {}", EVENTS.join(", "))),
                }
            }
        }
        None => f.error("events", format!("required: some of {}", EVENTS.join(", "))),
        Some(_) => f.error("events", format!("must be a non-empty array of {}", EVENTS.join(", "))),
    }
    let description = f.description();
    let enabled = f.flag("enabled", true);
    let spec = url.map(|url| WebhookSpec { url, events, description, enabled });
    f.finish(spec)
}

fn check_url(raw: &str, allow_http: bool) -> Result<(), String> {
    if raw.len() > MAX_URL {
        return Err(format!("at most {MAX_URL} characters"));
    }
    if !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII: percent-encode anything else".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not an absolute URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err("must be https:// (WEBHOOK_ALLOW_HTTP allows http:// for local tests)".into()),
        other => return Err(format!("scheme {other:?} is not https")),
    }
    if url.host_str().map_or(true, str::is_empty) {
        return Err("needs a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; verify deliveries by their signature".into());
    }
    Ok(())
}

pub fn parse_webhook_id(raw: &str) -> Result<Uuid, ApiError> {
    parse_id("id", "a webhook", raw)
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("webhook {id} does not exist"))
}

/// Register an endpoint; the response carries its signing secret, shown this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body(content = Object, description = "url (https), events, description, enabled"),
    responses((status = 201, body = WebhookCreated, headers(("Location" = String, description = "the endpoint's URL"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn create(
    State(state): State<AppState>,
    _: CanWrite,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = validate(&json_body(body)?, state.webhooks_allow_http)?;
    let secret = signature::new_secret();
    let row = store::insert(&state.pool, &spec, &secret).await?;
    tracing::info!(webhook_id = %row.id, "webhook endpoint registered");
    let location = format!("/v1/webhooks/{}", row.id);
    let created = WebhookCreated { webhook: row.into(), secret };
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
}

/// List endpoints, newest first.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = WebhookList), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    _: CanRead,
    RawQuery(q): RawQuery,
) -> Result<Json<WebhookList>, ApiError> {
    let params = Params::parse(q.as_deref(), &["limit", "cursor"])?;
    let limit = params.limit()?;
    let rows = store::list(&state.pool, params.uuid_cursor()?, limit).await?;
    let (rows, next_cursor) = finish_page(rows, limit, |r| r.id.to_string());
    Ok(Json(WebhookList { data: rows.into_iter().map(WebhookView::from).collect(), next_cursor }))
}

async fn load(state: &AppState, id: &str) -> Result<WebhookRow, ApiError> {
    let id = parse_webhook_id(id)?;
    store::get(&state.pool, id).await?.ok_or_else(|| not_found(id))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookView), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn get(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(load(&state, &id).await?.into()))
}

/// Change an endpoint: the fields given replace the current ones.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    request_body(content = Object, description = "any of url, events, description, enabled"),
    responses((status = 200, body = WebhookView), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn update(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    let current = load(&state, &id).await?;
    let Value::Object(patch) = json_body(body)? else {
        return Err(ApiError::field("body", "must be a JSON object"));
    };
    let mut merged = Map::new();
    merged.insert("url".into(), Value::String(current.url));
    merged.insert("events".into(), Value::from(current.events));
    merged.insert("description".into(), current.description.map_or(Value::Null, Value::String));
    merged.insert("enabled".into(), Value::Bool(current.enabled));
    merged.extend(patch);
    let spec = validate(&Value::Object(merged), state.webhooks_allow_http)?;
    let row = store::update(&state.pool, current.id, &spec).await?.ok_or_else(|| not_found(current.id))?;
    Ok(Json(row.into()))
}

/// Delete an endpoint and its delivery record; pending deliveries are dropped.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["write"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_webhook_id(&id)?;
    if store::delete(&state.pool, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}

/// An endpoint's deliveries, newest first, each with its tries.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path), ("status" = Option<String>, Query, description = "pending|succeeded|failed"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = DeliveryList), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = ["read"])))]
pub async fn deliveries(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let params = Params::parse(q.as_deref(), &["status", "limit", "cursor"])?;
    let status = params.choice("status", &["pending", "succeeded", "failed"])?;
    let limit = params.limit()?;
    let before = params
        .cursor()?
        .map(|k| k.parse::<i64>().map_err(|_| ApiError::field("cursor", "not a cursor this API returned")))
        .transpose()?;
    let webhook = load(&state, &id).await?;
    let (rows, attempts) = store::deliveries(&state.pool, webhook.id, status.as_deref(), before, limit).await?;
    let (rows, next_cursor) = finish_page(rows, limit, |r| r.seq.to_string());
    Ok(Json(DeliveryList { data: rows.into_iter().map(|r| delivery_view(r, &attempts)).collect(), next_cursor }))
}

/// Deliver again: a finished delivery (succeeded or failed) starts a new series of tries with
/// the same `webhook-id`.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, description = "queued"), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "the delivery is still pending")),
    security(("bearer" = ["write"])))]
pub async fn redeliver(
    State(state): State<AppState>,
    _: CanWrite,
    AppPath((id, delivery)): AppPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_webhook_id(&id)?;
    let delivery = parse_id("delivery_id", "a delivery", &delivery)?;
    match store::redeliver(&state.pool, id, delivery).await? {
        Redelivery::Queued => Ok(StatusCode::ACCEPTED),
        Redelivery::NotFound => Err(ApiError::NotFound(format!("webhook {id} has no delivery {delivery}"))),
        Redelivery::Pending => Err(ApiError::Conflict(format!("delivery {delivery} is still pending"))),
    }
}
