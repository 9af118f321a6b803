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
    if let Some(body) = doc.pointer_mut("/paths/~1v1~1exports/post/requestBody") {
        *body = create_body(tenants);
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
    if method == "post" && path == "/v1/exports" {
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
            headers.insert("Last-Modified".into(), header("when the export finished", false, "string"));
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

/// Text without NUL: Postgres cannot hold it, so such a value is a 400.
const NO_NUL: &str = "^[^\\u0000]+$";

/// The schema each parameter's validation enforces (src/http/params.rs, the handlers), so that
/// every value the document allows is accepted and every other is a 400.
fn parameter_schema(name: &str) -> Option<Value> {
    Some(match name {
        "id" => json!({ "type": "string", "format": "uuid" }),
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
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for operation in item.values_mut() {
            let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
            for parameter in parameters {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                if let Some(schema) = parameter_schema(&name) {
                    parameter["schema"] = schema;
                }
            }
        }
    }
}

/// `If-None-Match` and `If-Modified-Since` on every operation that can answer 304.
fn add_conditional_parameters(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        if operation.pointer("/responses/304").is_none() {
            continue;
        }
        let parameters = operation
            .as_object_mut()
            .expect("an operation is an object")
            .entry("parameters")
            .or_insert_with(|| json!([]));
        if let Some(parameters) = parameters.as_array_mut() {
            parameters.push(json!({ "name": "If-None-Match", "in": "header", "required": false,
                "description": "an ETag this service sent: 304 when it still holds", "schema": { "type": "string" } }));
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
    let mut tenant = json!({
        "description": "a configured tenant; may be omitted when the service has only one",
        "type": "string",
        "enum": tenants,
    });
    let mut required = vec![];
    if tenants.len() == 1 {
        tenant["type"] = json!(["string", "null"]);
        tenant["enum"] = json!([tenants[0], null]);
    } else {
        required.push("tenant");
    }
    let mut properties = Map::new();
    properties.insert("tenant".into(), tenant);
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
    properties.insert(
        "base".into(),
        json!({
            "description": "an incremental export: build on this completed export of the same data (or the newest one, `latest`); the result is complete on its own, only MFA factors that may have changed are fetched again",
            "type": ["string", "null"],
            "pattern": "^(latest|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$",
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
    json!({
        "description": "the export to run; an empty body exports every user with the defaults",
        "required": false,
        "content": { "application/json": { "schema": {
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": properties,
        } } },
    })
}
