//! Bearer tokens from `API_TOKENS` and the `read`/`write` scopes each endpoint needs.

use super::{error::ApiError, AppState};
use crate::config::{token_digest, ApiToken};
use axum::{extract::FromRequestParts, http::request::Parts};

/// Tokens kept as digests: comparing fixed-size hashes does not leak a token's length or prefix.
pub struct TokenTable(Vec<(String, [u8; 32], bool, bool)>);

impl TokenTable {
    pub fn new(tokens: &[ApiToken]) -> TokenTable {
        TokenTable(tokens.iter().map(|t| (t.name.clone(), t.digest, t.read, t.write)).collect())
    }

    fn find(&self, presented: &str) -> Option<&(String, [u8; 32], bool, bool)> {
        let d = token_digest(presented);
        self.0.iter().find(|(_, known, _, _)| known.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
    }
}

/// The caller holds the `read` scope.
pub struct CanRead;
/// The caller holds the `write` scope.
pub struct CanWrite;

fn caller<'a>(parts: &Parts, state: &'a AppState) -> Result<&'a (String, [u8; 32], bool, bool), ApiError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = header
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let entry = state.tokens.find(token).ok_or(ApiError::Unauthorized)?;
    tracing::Span::current().record("caller", entry.0.as_str());
    Ok(entry)
}

impl FromRequestParts<AppState> for CanRead {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state)? {
            (_, _, true, _) => Ok(CanRead),
            _ => Err(ApiError::Forbidden("read")),
        }
    }
}

impl FromRequestParts<AppState> for CanWrite {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state)? {
            (_, _, _, true) => Ok(CanWrite),
            _ => Err(ApiError::Forbidden("write")),
        }
    }
}
