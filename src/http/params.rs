//! Query strings, page sizes and opaque keyset cursors, each bad value a 400 naming the parameter.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// A parsed query string that only knows the parameters its endpoint accepts.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let url = reqwest::Url::parse(&format!("http://q/?{}", raw.unwrap_or("")))
            .map_err(|_| ApiError::field("query", "malformed query string"))?;
        let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        for (i, (key, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::field(key, format!("unknown query parameter; accepted: {}", allowed.join(", "))));
            }
            if pairs[..i].iter().any(|(k, _)| k == key) {
                return Err(ApiError::field(key, "given more than once"));
            }
        }
        Ok(Params(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A non-empty string value.
    pub fn text(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            Some("") => Err(ApiError::field(key, "must not be empty")),
            other => other.map(|v| plain_text(key, v)).transpose(),
        }
    }

    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::field("limit", format!("must be an integer from 1 to {MAX_LIMIT}, got {v:?}"))),
            },
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::field(key, format!("must be true or false, got {v:?}"))),
        }
    }

    /// One of a fixed set of values.
    pub fn choice(&self, key: &str, choices: &[&str]) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if choices.contains(&v) => Ok(Some(v.to_owned())),
            Some(v) => Err(ApiError::field(key, format!("must be one of {}, got {v:?}", choices.join(", ")))),
        }
    }

    /// The keyset position a cursor carries.
    pub fn cursor(&self) -> Result<Option<String>, ApiError> {
        Ok(self.pinned_cursor()?.map(|(key, _)| key))
    }

    /// The keyset position and, for the latest view, the export the sequence is pinned to.
    pub fn pinned_cursor(&self) -> Result<Option<(String, Option<uuid::Uuid>)>, ApiError> {
        self.get("cursor").map(decode_cursor).transpose()
    }

    /// The id a cursor of a list keyed by uuid carries.
    pub fn uuid_cursor(&self) -> Result<Option<uuid::Uuid>, ApiError> {
        self.cursor()?
            .map(|k| uuid::Uuid::parse_str(&k).map_err(|_| ApiError::field("cursor", "not a cursor this API returned")))
            .transpose()
    }
}

/// A path or query value naming a resource by its uuid; `what` is its noun with the article
/// ("an export").
pub fn parse_id(field: &str, what: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| ApiError::field(field, format!("{raw:?} is not {what} id")))
}

/// Text the database can hold: Postgres refuses NUL characters, so they are a 400 here, not a 500.
pub fn plain_text(field: &str, value: &str) -> Result<String, ApiError> {
    if value.contains('\0') {
        return Err(ApiError::field(field, "must not contain NUL characters"));
    }
    Ok(value.to_owned())
}

/// Path parameters whose rejections are problem documents like every other error.
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(AppPath(value)),
            Err(rejection) => Err(ApiError::field("path", rejection.body_text())),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    v: u8,
    k: String,
    /// The export a page sequence of the latest view is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<uuid::Uuid>,
}

/// base64url of `{"v":1,"k":<last key>}` (plus `"e":<export>` when pinned): opaque to clients,
/// versioned for us.
pub fn encode_cursor(key: &str, pin: Option<uuid::Uuid>) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Cursor { v: 1, k: key.to_owned(), e: pin }).expect("cursor serialises"))
}

fn decode_cursor(raw: &str) -> Result<(String, Option<uuid::Uuid>), ApiError> {
    let bad = || ApiError::field("cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
    match serde_json::from_slice::<Cursor>(&bytes) {
        Ok(Cursor { v: 1, k, e }) if !k.is_empty() && !k.contains('\0') => Ok((k, e)),
        _ => Err(bad()),
    }
}

/// Splits the extra row a page query fetched off and turns the last key into `next_cursor`.
pub fn finish_page<T>(rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    finish_page_in(rows, limit, key, None)
}

/// [`finish_page`] whose cursor is pinned to an export.
pub fn finish_page_in<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> String,
    pin: Option<uuid::Uuid>,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(|r| encode_cursor(&key(r), pin)) } else { None };
    (rows, next)
}

/// A list response, `{"data":[…],"next_cursor":…}`, from items that are JSON text already: copied,
/// not parsed and serialised again.
pub fn page_body(items: impl IntoIterator<Item = String>, capacity: usize, next_cursor: &Option<String>) -> Vec<u8> {
    let mut body = Vec::with_capacity(capacity + 64);
    body.extend_from_slice(b"{\"data\":[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    body.extend_from_slice(serde_json::to_string(next_cursor).expect("a cursor serialises").as_bytes());
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = encode_cursor("samlp|corp|a.b@corp.example", None);
        let p = Params::parse(Some(&format!("cursor={c}")), &["cursor"]).unwrap();
        assert_eq!(p.cursor().unwrap().as_deref(), Some("samlp|corp|a.b@corp.example"));
        // Pinned to an export (the latest view): the key and the export come back.
        let export = uuid::Uuid::now_v7();
        let c = encode_cursor("auth0|1", Some(export));
        let p = Params::parse(Some(&format!("cursor={c}")), &["cursor"]).unwrap();
        assert_eq!(p.pinned_cursor().unwrap(), Some(("auth0|1".to_owned(), Some(export))));
        for bad in [
            "x",
            "e30",
            &URL_SAFE_NO_PAD.encode(br#"{"v":2,"k":"a"}"#),
            &URL_SAFE_NO_PAD.encode(br#"{"v":1,"k":"\u0000"}"#),
        ] {
            let p = Params::parse(Some(&format!("cursor={bad}")), &["cursor"]).unwrap();
            assert!(p.cursor().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn limits_and_unknown_parameters() {
        assert_eq!(Params::parse(None, &["limit"]).unwrap().limit().unwrap(), 100);
        for bad in ["0", "1001", "-1", "ten"] {
            assert!(Params::parse(Some(&format!("limit={bad}")), &["limit"]).unwrap().limit().is_err());
        }
        assert!(Params::parse(Some("lmit=3"), &["limit"]).is_err());
        assert!(Params::parse(Some("limit=3&limit=4"), &["limit"]).is_err());
    }

    #[test]
    fn page_split_sets_next_cursor_only_when_more() {
        let (rows, next) = finish_page(vec![1, 2, 3], 2, |r| r.to_string());
        assert_eq!(rows, [1, 2]);
        assert_eq!(decode_cursor(&next.unwrap()).unwrap(), ("2".to_owned(), None));
        assert_eq!(finish_page(vec![1, 2], 2, |r| r.to_string()).1, None);
    }
}
