//! What an export request is, its defaults and its validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Every exportable root profile attribute (AUTH0.md §8), the default field list.
pub const DEFAULT_FIELDS: [&str; 23] = [
    "user_id",
    "email",
    "email_verified",
    "username",
    "phone_number",
    "phone_verified",
    "name",
    "nickname",
    "given_name",
    "family_name",
    "picture",
    "created_at",
    "updated_at",
    "identities",
    "app_metadata",
    "user_metadata",
    "multifactor",
    "multifactor_last_modified",
    "last_ip",
    "last_login",
    "last_password_reset",
    "logins_count",
    "blocked",
];

/// Attributes Auth0 never exports.
pub const NOT_EXPORTABLE: [&str; 3] = ["blocked_for", "guardian_authenticators", "tenant"];
pub const MAX_FIELDS: usize = 100;
/// What [`is_field_path`] accepts (at most 100 characters), for the OpenAPI document.
pub const FIELD_PATH_PATTERN: &str = r"^[A-Za-z0-9_-]+(\[[0-9]+\]|\.[A-Za-z0-9_-]+)*$";

/// A normalised create body: every default filled in, stored as the export's `request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExportRequest {
    pub tenant: String,
    pub connection_id: Option<String>,
    pub limit: Option<i64>,
    pub fields: Vec<String>,
    pub enrich: Enrich,
    /// An incremental export: the id of a completed export of the same request, or `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl ExportRequest {
    /// Whether `other` asks for the same data (all but the base), so one can build on the other.
    pub fn same_data(&self, other: &ExportRequest) -> bool {
        self.tenant == other.tenant
            && self.connection_id == other.connection_id
            && self.limit == other.limit
            && self.fields == other.fields
            && self.enrich == other.enrich
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Enrich {
    pub roles: bool,
    pub authentication_methods: bool,
    pub authenticators: bool,
    pub enrollments: bool,
}

impl Default for Enrich {
    fn default() -> Self {
        Enrich { roles: true, authentication_methods: true, authenticators: false, enrollments: false }
    }
}

impl Enrich {
    pub fn any_mfa(&self) -> bool {
        self.authentication_methods || self.authenticators || self.enrollments
    }
}

/// One bad field of a request, reported in the problem document's `errors` list.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

impl ExportRequest {
    /// Validates a create body against the configured tenants, naming every bad field.
    pub fn from_body(body: &Value, tenants: &[String]) -> Result<ExportRequest, Vec<FieldError>> {
        let Value::Object(obj) = body else {
            return Err(vec![FieldError::new("body", "must be a JSON object (or empty, for every default)")]);
        };
        let mut errors = Vec::new();
        for key in obj.keys() {
            if !["tenant", "connection_id", "limit", "fields", "enrich", "base"].contains(&key.as_str()) {
                errors.push(FieldError::new(key.clone(), "unknown field"));
            }
        }

        let tenant = match obj.get("tenant") {
            None | Some(Value::Null) if tenants.len() == 1 => Some(tenants[0].clone()),
            None | Some(Value::Null) => {
                errors.push(FieldError::new("tenant", format!("required; one of {}", tenants.join(", "))));
                None
            }
            Some(Value::String(t)) if tenants.contains(t) => Some(t.clone()),
            Some(Value::String(t)) => {
                errors.push(FieldError::new(
                    "tenant",
                    format!("unknown tenant {t:?}; configured: {}", tenants.join(", ")),
                ));
                None
            }
            Some(_) => {
                errors.push(FieldError::new("tenant", "must be a string"));
                None
            }
        };

        let connection_id = match obj.get("connection_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if is_connection_id(c) => Some(c.clone()),
            Some(_) => {
                errors.push(FieldError::new("connection_id", "must look like con_ followed by 16 letters or digits"));
                None
            }
        };

        let limit = match obj.get("limit") {
            None | Some(Value::Null) => None,
            // JSON does not tell 3 from 3.0: a whole number is an integer, whatever its spelling.
            Some(v) => match v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
            {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    errors.push(FieldError::new("limit", "must be an integer of at least 1"));
                    None
                }
            },
        };

        let fields = match obj.get("fields") {
            None | Some(Value::Null) => DEFAULT_FIELDS.iter().map(|f| f.to_string()).collect(),
            Some(Value::Array(items)) => validate_fields(items, &mut errors),
            Some(_) => {
                errors.push(FieldError::new("fields", "must be an array of field names"));
                vec![]
            }
        };

        let enrich = match obj.get("enrich") {
            None | Some(Value::Null) => Enrich::default(),
            Some(Value::Object(e)) => validate_enrich(e, &mut errors),
            Some(_) => {
                errors.push(FieldError::new("enrich", "must be an object of booleans"));
                Enrich::default()
            }
        };

        let base = match obj.get("base") {
            None | Some(Value::Null) => None,
            Some(Value::String(b)) if b == "latest" || uuid::Uuid::parse_str(b).is_ok() => Some(b.to_lowercase()),
            Some(_) => {
                errors.push(FieldError::new("base", "must be an export id or \"latest\""));
                None
            }
        };

        match tenant {
            Some(tenant) if errors.is_empty() => {
                Ok(ExportRequest { tenant, connection_id, limit, fields, enrich, base })
            }
            _ => Err(errors),
        }
    }

    /// The body of `POST /api/v2/jobs/users-exports`: always NDJSON, root field names.
    pub fn auth0_job_body(&self) -> Value {
        let mut body = serde_json::json!({
            "format": "json",
            "fields": self.fields.iter().map(|f| serde_json::json!({ "name": f })).collect::<Vec<_>>(),
        });
        if let Some(c) = &self.connection_id {
            body["connection_id"] = c.clone().into();
        }
        if let Some(l) = self.limit {
            body["limit"] = l.into();
        }
        body
    }
}

fn is_connection_id(c: &str) -> bool {
    c.len() == 20 && c.starts_with("con_") && c[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn validate_fields(items: &[Value], errors: &mut Vec<FieldError>) -> Vec<String> {
    if items.is_empty() {
        errors.push(FieldError::new("fields", "must name at least one field (omit it for the complete profile)"));
    }
    if items.len() > MAX_FIELDS {
        errors.push(FieldError::new("fields", format!("at most {MAX_FIELDS} fields")));
    }
    let mut fields: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("fields[{i}]");
        match item.as_str() {
            None => errors.push(FieldError::new(at, "must be a string")),
            Some(f) if !is_field_path(f) => {
                errors.push(FieldError::new(at, format!("{f:?} is not a profile attribute path")))
            }
            Some(f) if NOT_EXPORTABLE.contains(&f) => {
                errors.push(FieldError::new(at, format!("{f:?} cannot be exported by Auth0")))
            }
            Some(f) if fields.iter().any(|g| g == f) => {
                errors.push(FieldError::new(at, format!("{f:?} appears twice")))
            }
            Some(f) => fields.push(f.to_owned()),
        }
    }
    // Enrichment and paging need the id: it is always exported.
    if !fields.iter().any(|f| f == "user_id") && !fields.is_empty() {
        fields.insert(0, "user_id".into());
    }
    fields
}

/// `name`, `a.b`, `identities[0].connection`: letters, digits, `_`, `-`, dots and indexes.
fn is_field_path(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 100
        && f.split('.').all(|part| {
            let name = part.split('[').next().unwrap_or("");
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && part[name.len()..].split_terminator(']').all(|ix| {
                    ix.strip_prefix('[').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                && (part.len() == name.len() || part.ends_with(']'))
        })
}

fn validate_enrich(e: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Enrich {
    let mut enrich = Enrich::default();
    for (key, value) in e {
        let slot = match key.as_str() {
            "roles" => &mut enrich.roles,
            "authentication_methods" => &mut enrich.authentication_methods,
            "authenticators" => &mut enrich.authenticators,
            "enrollments" => &mut enrich.enrollments,
            _ => {
                errors.push(FieldError::new(format!("enrich.{key}"), "unknown enrichment"));
                continue;
            }
        };
        match value.as_bool() {
            Some(b) => *slot = b,
            None => errors.push(FieldError::new(format!("enrich.{key}"), "must be true or false")),
        }
    }
    enrich
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenants() -> Vec<String> {
        vec!["prod".into()]
    }

    #[test]
    fn empty_body_gets_every_default() {
        let r = ExportRequest::from_body(&json!({}), &tenants()).unwrap();
        assert_eq!(r.tenant, "prod");
        assert_eq!(r.fields.len(), DEFAULT_FIELDS.len());
        assert_eq!(r.enrich, Enrich::default());
        assert_eq!(r.auth0_job_body()["format"], "json");
        assert!(r.auth0_job_body().get("limit").is_none());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errs = ExportRequest::from_body(
            &json!({"tenant": "nope", "limit": 0, "connection_id": "con_x", "fields": ["email", 3, "a..b", "tenant", "email"],
                    "enrich": {"roles": "yes", "groups": true}, "extra": 1}),
            &tenants(),
        )
        .unwrap_err();
        let named: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "extra",
            "tenant",
            "connection_id",
            "limit",
            "fields[1]",
            "fields[2]",
            "fields[3]",
            "fields[4]",
            "enrich.roles",
            "enrich.groups",
        ] {
            assert!(named.contains(&f), "{f} missing from {named:?}");
        }
    }

    #[test]
    fn field_paths_and_user_id_insertion() {
        let r = ExportRequest::from_body(
            &json!({"fields": ["email", "identities[0].connection", "user_metadata.a_b"]}),
            &tenants(),
        )
        .unwrap();
        assert_eq!(r.fields, ["user_id", "email", "identities[0].connection", "user_metadata.a_b"]);
        assert!(!is_field_path("identities[x]"));
        assert!(!is_field_path("a]"));
        assert!(!is_field_path(""));
    }

    #[test]
    fn tenant_required_when_several() {
        let errs = ExportRequest::from_body(&json!({}), &["a".into(), "b".into()]).unwrap_err();
        assert_eq!(errs[0].field, "tenant");
    }
}
