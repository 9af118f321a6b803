//! JSON request bodies: read whole, then field by field, every bad field collected so that one
//! 400 names them all.

use axum::{body::Bytes, extract::rejection::BytesRejection, http::StatusCode};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::model::FieldError;

/// Longest `description` accepted on schedules and webhooks.
pub const MAX_DESCRIPTION: usize = 500;

/// A JSON request body; an empty one (nothing, or JSON's own whitespace) reads as `{}`.
pub fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(e.body_text()),
        _ => ApiError::field("body", e.body_text()),
    })?;
    if body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::field("body", format!("not valid JSON: {e}")))
}

/// The fields of an object body, read one at a time.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// Reads `body`, which must be an object of the `known` keys only.
    pub fn new(body: &'a Value, known: &[&str]) -> Result<Fields<'a>, ApiError> {
        let Value::Object(obj) = body else {
            return Err(ApiError::field("body", "must be a JSON object"));
        };
        let errors = obj
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| FieldError::new(k.clone(), format!("unknown field; accepted: {}", known.join(", "))))
            .collect();
        Ok(Fields { obj, errors })
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// A string without NUL (Postgres cannot hold it); absent or null is `None`.
    pub fn text(&mut self, key: &str) -> Option<String> {
        match self.get(key) {
            None => None,
            Some(Value::String(s)) if !s.contains('\0') => Some(s.clone()),
            Some(Value::String(_)) => {
                self.error(key, "must not contain NUL characters");
                None
            }
            Some(_) => {
                self.error(key, "must be a string");
                None
            }
        }
    }

    /// A string that must be there.
    pub fn required_text(&mut self, key: &str, hint: &str) -> Option<String> {
        let present = self.get(key).is_some();
        let text = self.text(key);
        if !present {
            self.error(key, format!("required: {hint}"));
        }
        text
    }

    /// A boolean; absent or null is `default`.
    pub fn flag(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(key, "must be true or false");
                default
            }
        }
    }

    /// An optional free text of at most [`MAX_DESCRIPTION`] characters.
    pub fn description(&mut self) -> Option<String> {
        let text = self.text("description");
        if text.as_ref().is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
            self.error("description", format!("at most {MAX_DESCRIPTION} characters"));
        }
        text
    }

    /// `value` when every field was good, else the 400 naming each bad one.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(ApiError::fields(self.errors)),
        }
    }
}
