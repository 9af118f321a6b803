//! The OpenAPI document, generated from the handlers' annotations (utoipa) and completed with
//! what every route shares: problem documents for errors, the statuses each route really
//! answers, cache validators, and the create body with the bounds its validation enforces.

use serde_json::{json, Map, Value};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{
    changes,
    error::Problem,
    exports, health, latest,
    params::{DEFAULT_LIMIT, MAX_LIMIT},
    profiles, schedules, webhooks,
};
use crate::{
    db::exports::ExportStatus,
    model::{DEFAULT_FIELDS, FIELD_PATH_PATTERN, MAX_FIELDS, NOT_EXPORTABLE},
};

#[derive(OpenApi)]
#[openapi(
    info(title = "auth0-exporter", description = "Complete Auth0 user profiles: export fields, roles and MFA factors."),
    paths(
        exports::create, exports::list, exports::get, exports::cancel, exports::delete,
        profiles::list, profiles::get, profiles::download, changes::list,
        schedules::create, schedules::list, schedules::get, schedules::update, schedules::delete,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::deliveries, webhooks::redeliver,
        latest::export, latest::profiles, latest::profile, latest::download,
        health::livez, health::readyz, health::metrics, health::openapi,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    tags((name = "exports"), (name = "profiles"), (name = "schedules"), (name = "webhooks"), (name = "latest"),
         (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const PROBLEM: &str = "application/problem+json";

/// The document served at `/openapi.json`; `tenants` are the configured tenant names.
pub fn document(tenants: &[String]) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            complete_operation(path, method, operation);
        }
    }
    add_conditional_parameters(&mut doc);
    constrain_parameters(&mut doc);
    let bodies = [
        ("/paths/~1v1~1exports/post/requestBody", create_body(tenants)),
        ("/paths/~1v1~1schedules/post/requestBody", schedule_body(tenants, true)),
        ("/paths/~1v1~1schedules~1{id}/patch/requestBody", schedule_body(tenants, false)),
        ("/paths/~1v1~1webhooks/post/requestBody", webhook_body(true)),
        ("/paths/~1v1~1webhooks~1{id}/patch/requestBody", webhook_body(false)),
    ];
    for (pointer, schema) in bodies {
        if let Some(body) = doc.pointer_mut(pointer) {
            *body = schema;
        }
    }
    doc
}

/// Adds the answers every route of its kind gives and makes every error a problem document.
fn complete_operation(path: &str, method: &str, operation: &mut Value) {
    let secured = operation.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
    let has_query = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" || p["in"] == "header"));
    let responses = operation
        .as_object_mut()
        .expect("an operation is an object")
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| json!({ "description": description }));
    };
    if secured {
        add("401", "missing or unknown bearer token");
        add("403", "the token lacks the scope this operation needs");
    }
    if path.contains('{') || has_query || method == "post" {
        add("400", "a bad parameter or body; the problem's `errors` name each");
    }
    if path.contains('{') {
        add("404", "no such resource");
    }
    if operation_has_body(path, method) {
        add("413", "the body is too large");
    }
    // Any request can meet a database outage or its time limit.
    add("503", "the database is unreachable, the service is draining, or the request timed out");

    let conditional = responses.contains_key("304");
    for (status, response) in responses.iter_mut() {
        let code: u16 = status.parse().unwrap_or(0);
        let response = response.as_object_mut().expect("a response is an object");
        if code >= 400 {
            response
                .insert("content".into(), json!({ PROBLEM: { "schema": { "$ref": "#/components/schemas/Problem" } } }));
        }
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        let headers = headers.as_object_mut().expect("headers is an object");
        if conditional && (code == 200 || code == 304) {
            headers.insert(
                "ETag".into(),
                header("validator for If-None-Match (completed exports' data, the export resource)", false, "string"),
            );
            if !is_latest_view(path) {
                headers.insert("Last-Modified".into(), header("when the export finished", false, "string"));
            }
            headers
                .insert("Cache-Control".into(), header("`private, no-cache`: revalidate before reuse", true, "string"));
        }
        match code {
            503 => {
                headers.insert("Retry-After".into(), header("seconds to wait before retrying", true, "integer"));
            }
            401 => {
                headers.insert("WWW-Authenticate".into(), header("`Bearer`", true, "string"));
            }
            _ => {}
        }
        if headers.is_empty() {
            response.remove("headers");
        }
    }
}

fn operation_has_body(path: &str, method: &str) -> bool {
    matches!((method, path), ("post", "/v1/exports" | "/v1/schedules" | "/v1/webhooks") | ("patch", _))
}

/// Text without NUL: Postgres cannot hold it, so such a value is a 400.
const NO_NUL: &str = "^[^\\u0000]+$";

/// The schema each parameter's validation enforces (src/http/params.rs, the handlers), so that
/// every value the document allows is accepted and every other is a 400.
fn parameter_schema(path: &str, name: &str) -> Option<Value> {
    Some(match name {
        "id" | "delivery_id" | "schedule" => json!({ "type": "string", "format": "uuid" }),
        "status" if path.ends_with("/deliveries") => {
            json!({ "type": "string", "enum": ["pending", "succeeded", "failed"] })
        }
        "limit" => json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT }),
        "status" => json!({ "type": "string", "enum": ExportStatus::ALL.map(ExportStatus::as_str) }),
        // Opaque (base64url): the `next_cursor` of the previous page.
        "cursor" => json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+$" }),
        "has_mfa" => json!({ "type": "boolean" }),
        "format" => json!({ "type": "string", "enum": ["ndjson", "json", "csv"], "default": "ndjson" }),
        "kind" => json!({ "type": "string", "enum": ["added", "deleted", "changed"] }),
        "Idempotency-Key" => json!({ "type": "string", "pattern": "^[!-~]([ -~]{0,253}[!-~])?$" }),
        "If-None-Match" | "If-Modified-Since" => return None,
        _ => json!({ "type": "string", "minLength": 1, "pattern": NO_NUL }),
    })
}

fn constrain_parameters(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                if let Some(schema) = parameter_schema(path, &name) {
                    parameter["schema"] = schema;
                }
            }
        }
    }
}

/// The latest view's validators are ETags alone: its export may change within a second.
fn is_latest_view(path: &str) -> bool {
    path.starts_with("/v1/tenants/")
}

/// `If-None-Match` (and, but on the latest view, `If-Modified-Since`) on every operation that
/// can answer 304.
fn add_conditional_parameters(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let dated = !is_latest_view(path);
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            add_conditional(operation, dated);
        }
    }
}

fn add_conditional(operation: &mut Value, dated: bool) {
    if operation.pointer("/responses/304").is_none() {
        return;
    }
    let parameters =
        operation.as_object_mut().expect("an operation is an object").entry("parameters").or_insert_with(|| json!([]));
    if let Some(parameters) = parameters.as_array_mut() {
        parameters.push(json!({ "name": "If-None-Match", "in": "header", "required": false,
            "description": "an ETag this service sent: 304 when it still holds", "schema": { "type": "string" } }));
        if dated {
            parameters.push(json!({ "name": "If-Modified-Since", "in": "header", "required": false,
                "description": "an HTTP date: 304 when nothing changed since (read only without If-None-Match)",
                "schema": { "type": "string" } }));
        }
    }
}

fn header(description: &str, required: bool, kind: &str) -> Value {
    json!({ "description": description, "required": required, "schema": { "type": kind } })
}

/// The create body: each field, its enum and bound, exactly what `ExportRequest::from_body`
/// accepts.
fn create_body(tenants: &[String]) -> Value {
    let mut properties = export_properties();
    let (tenant, required) = tenant_property(tenants);
    properties.insert("tenant".into(), tenant);
    properties.insert(
        "base".into(),
        json!({
            "description": "an incremental export: build on this completed export of the same data (or the newest one, `latest`); the result is complete on its own, only MFA factors that may have changed are fetched again",
            "type": ["string", "null"],
            "pattern": "^(latest|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$",
        }),
    );
    json_body("the export to run; an empty body exports every user with the defaults", properties, required)
}

/// The `tenant` field, and whether it is required (with more than one tenant configured).
fn tenant_property(tenants: &[String]) -> (Value, Vec<&'static str>) {
    let mut tenant = json!({
        "description": "a configured tenant; may be omitted when the service has only one",
        "type": "string",
        "enum": tenants,
    });
    if tenants.len() == 1 {
        tenant["type"] = json!(["string", "null"]);
        tenant["enum"] = json!([tenants[0], null]);
        (tenant, vec![])
    } else {
        (tenant, vec!["tenant"])
    }
}

/// What an export asks for (the create body without `tenant` and `base`).
fn export_properties() -> Map<String, Value> {
    let mut properties = Map::new();
    properties.insert(
        "connection_id".into(),
        json!({ "description": "export only this connection's users", "type": ["string", "null"],
                "pattern": "^con_[A-Za-z0-9]{16}$" }),
    );
    properties.insert(
        "limit".into(),
        json!({ "description": "export at most this many users", "type": ["integer", "null"],
                "minimum": 1, "maximum": i64::MAX }),
    );
    properties.insert(
        "fields".into(),
        json!({
            "description": "profile attributes to export (`user_id` is always added); default: every exportable root attribute",
            "type": ["array", "null"],
            "minItems": 1, "maxItems": MAX_FIELDS, "uniqueItems": true,
            "items": { "type": "string", "maxLength": 100, "pattern": FIELD_PATH_PATTERN,
                       "not": { "enum": NOT_EXPORTABLE } },
            "default": DEFAULT_FIELDS,
        }),
    );
    let flag =
        |description: &str, default: bool| json!({ "description": description, "type": "boolean", "default": default });
    properties.insert(
        "enrich".into(),
        json!({
            "description": "what to fetch per user beside the exported fields",
            "type": ["object", "null"],
            "additionalProperties": false,
            "properties": {
                "roles": flag("the user's roles", true),
                "authentication_methods": flag("`/users/{id}/authentication-methods`", true),
                "authenticators": flag("`/users/{id}/authenticators` (undocumented by Auth0)", false),
                "enrollments": flag("legacy Guardian enrollments", false),
            },
        }),
    );
    properties
}

fn json_body(description: &str, properties: Map<String, Value>, required: Vec<&str>) -> Value {
    json!({
        "description": description,
        "required": false,
        "content": { "application/json": { "schema": {
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": properties,
        } } },
    })
}

/// Characters a cron field may hold; croner decides the rest (a pattern cannot say which
/// combinations are dates), and answers 400 naming `cron`.
const CRON_PATTERN: &str = "^ *[0-9A-Za-z*/,?#-]+( +[0-9A-Za-z*/,?#-]+){4,5} *$";
const NULLABLE_TEXT: &str = "^[^\\u0000]*$";

/// A schedule body (`required`: create; else a PATCH, which replaces the fields it gives).
fn schedule_body(tenants: &[String], create: bool) -> Value {
    let (tenant, tenant_required) = tenant_property(tenants);
    let export = export_properties();
    let flag = |description: &str, default: bool| json!({ "description": description, "type": ["boolean", "null"], "default": default });
    let mut properties = Map::new();
    properties.insert("tenant".into(), tenant);
    properties.insert(
        "cron".into(),
        json!({ "description": "5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first",
                "type": "string", "pattern": CRON_PATTERN, "examples": ["0 3 * * *"] }),
    );
    properties.insert(
        "timezone".into(),
        json!({ "description": "the IANA time zone the cron fields are read in (default UTC)",
                "type": ["string", "null"],
                "enum": chrono_tz::TZ_VARIANTS.iter().map(|z| Value::from(z.name())).chain([Value::Null]).collect::<Vec<_>>() }),
    );
    properties.insert(
        "export".into(),
        json!({ "description": "the POST /v1/exports body of every run, without tenant and base",
                "type": ["object", "null"], "additionalProperties": false, "properties": export }),
    );
    properties.insert("incremental".into(), flag("each run builds on the tenant's latest completed export", false));
    properties.insert("enabled".into(), flag("runs at its due times", true));
    properties.insert(
        "description".into(),
        json!({ "type": ["string", "null"], "maxLength": 500, "pattern": NULLABLE_TEXT }),
    );
    let required = if create { [vec!["cron"], tenant_required].concat() } else { vec![] };
    json_body("a cron schedule of exports", properties, required)
}

/// A webhook endpoint body (`create`, or a PATCH replacing the fields it gives).
fn webhook_body(create: bool) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "url".into(),
        json!({ "description": "where deliveries are POSTed: https:// (http:// only with WEBHOOK_ALLOW_HTTP), no credentials",
                "type": "string", "maxLength": 2048, "pattern": "^https?://[!-~]+$" }),
    );
    properties.insert(
        "events".into(),
        json!({ "type": "array", "minItems": 1, "uniqueItems": true,
                "items": { "type": "string", "enum": super::webhooks::EVENTS } }),
    );
    properties.insert(
        "description".into(),
        json!({ "type": ["string", "null"], "maxLength": 500, "pattern": NULLABLE_TEXT }),
    );
    properties.insert("enabled".into(), json!({ "type": ["boolean", "null"], "default": true }));
    let required = if create { vec!["url", "events"] } else { vec![] };
    json_body("a webhook endpoint", properties, required)
}
