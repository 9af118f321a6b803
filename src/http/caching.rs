//! Conditional GETs for clients that poll: `ETag` and `Last-Modified` validators, and
//! `304 Not Modified` answered from the export's row alone, never from its profiles.

use axum::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Clients may keep a copy but must revalidate it: an export can be deleted at any time, and a
/// running one changes with every poll.
pub const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, no-cache");

/// The validators of one representation.
pub struct Validators {
    etag: String,
    last_modified: Option<DateTime<Utc>>,
}

impl Validators {
    /// Of a representation whose bytes are at hand. Weak: compression may change the bytes.
    pub fn of_bytes(bytes: &[u8], last_modified: Option<DateTime<Utc>>) -> Validators {
        Validators { etag: format!("W/\"{}\"", short_hash(bytes)), last_modified }
    }

    /// Of data read from a completed export, which never changes while the export exists: the
    /// export, when it completed and what was asked of it (`variant`: the path and query).
    pub fn of_completed(export_id: Uuid, finished_at: DateTime<Utc>, variant: &str) -> Validators {
        let version = format!("{}/{}/{variant}", export_id.simple(), finished_at.timestamp_micros());
        Validators { etag: format!("W/\"{}\"", short_hash(version.as_bytes())), last_modified: Some(finished_at) }
    }

    /// Without `Last-Modified`: `ETag` alone tells versions apart (and `If-Modified-Since` is
    /// ignored).
    pub fn undated(mut self) -> Validators {
        self.last_modified = None;
        self
    }

    /// Whether the client's copy is current: `If-None-Match` (weak comparison, `*` or a list),
    /// else `If-Modified-Since` when there is a modification time.
    pub fn fresh(&self, headers: &HeaderMap) -> bool {
        if let Some(tags) = headers.get(header::IF_NONE_MATCH) {
            let Ok(tags) = tags.to_str() else { return false };
            let ours = self.etag.trim_start_matches("W/");
            return tags.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == ours);
        }
        match (self.last_modified, headers.get(header::IF_MODIFIED_SINCE)) {
            (Some(modified), Some(since)) => since
                .to_str()
                .ok()
                .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
                .is_some_and(|since| modified.timestamp() <= since.timestamp()),
            _ => false,
        }
    }

    /// `304 Not Modified` with the validators.
    pub fn not_modified(&self) -> Response {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        self.apply(response.headers_mut());
        response
    }

    /// Sets `ETag`, `Last-Modified` and `Cache-Control`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        if let Some(modified) = self.last_modified {
            let text = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(header::LAST_MODIFIED, value);
            }
        }
        headers.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    }
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let v = Validators::of_bytes(b"{}", None);
        let tag = v.etag.clone();
        let strong = tag.trim_start_matches("W/").to_owned();
        assert!(v.fresh(&headers(&[(header::IF_NONE_MATCH, &tag)])));
        assert!(v.fresh(&headers(&[(header::IF_NONE_MATCH, &strong)])));
        assert!(v.fresh(&headers(&[(header::IF_NONE_MATCH, &format!("\"x\", {tag}"))])));
        assert!(v.fresh(&headers(&[(header::IF_NONE_MATCH, "*")])));
        assert!(!v.fresh(&headers(&[(header::IF_NONE_MATCH, "\"other\"")])));
        assert!(!v.fresh(&HeaderMap::new()));
    }

    #[test]
    fn if_modified_since_is_read_only_without_if_none_match() {
        let finished = DateTime::parse_from_rfc3339("2026-11-30T10:00:00.5Z").unwrap().with_timezone(&Utc);
        let v = Validators::of_completed(Uuid::nil(), finished, "/profiles?limit=1");
        assert!(v.fresh(&headers(&[(header::IF_MODIFIED_SINCE, "Mon, 30 Nov 2026 10:00:00 GMT")])));
        assert!(!v.fresh(&headers(&[(header::IF_MODIFIED_SINCE, "Mon, 30 Nov 2026 09:59:59 GMT")])));
        assert!(!v.fresh(&headers(&[
            (header::IF_MODIFIED_SINCE, "Mon, 30 Nov 2026 10:00:00 GMT"),
            (header::IF_NONE_MATCH, "\"other\"")
        ])));
        let other = Validators::of_completed(Uuid::nil(), finished, "/profiles?limit=2");
        assert_ne!(v.etag, other.etag);
        let mut h = HeaderMap::new();
        v.apply(&mut h);
        assert_eq!(h[header::LAST_MODIFIED], "Mon, 30 Nov 2026 10:00:00 GMT");
        assert_eq!(h[header::CACHE_CONTROL], "private, no-cache");
    }
}
