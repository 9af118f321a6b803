//! GET /api/v2/roles and GET /api/v2/roles/{id}/users (offset paging capped at 1000, checkpoint paging).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::overlay::Overlay;
use crate::paging::{self, Paging};
use crate::{errors, AppState};

/// Offset paging on role members stops at this many records.
const OFFSET_CAP: u64 = 1000;

pub async fn list(State(st): State<Arc<AppState>>, Query(q): Query<paging::Query>) -> Response {
    let p = match Paging::parse(&q, 1) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let roles: Vec<_> = match q.get("name_filter") {
        Some(f) => {
            let f = f.to_lowercase();
            st.tenant.roles.iter().filter(|r| r.name.to_lowercase().contains(&f)).collect()
        }
        None => st.tenant.roles.iter().collect(),
    };
    let page = p.slice(&roles);
    if p.include_totals {
        Json(json!({"start": p.start(), "limit": p.per_page, "total": roles.len(), "roles": page})).into_response()
    } else {
        Json(page).into_response()
    }
}

pub async fn users(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<paging::Query>,
) -> Response {
    let Some(role) = st.tenant.roles.iter().position(|r| r.id == id) else {
        return errors::role_not_found();
    };
    // Paged in place (generated members merged with later changes): a role with hundreds of
    // thousands of members costs only its page per request.
    let o = st.overlay();
    // `take` (or `from`) selects checkpoint paging, whatever else is sent.
    if q.contains_key("take") || q.contains_key("from") {
        return checkpoint(&st, &o, role, &q);
    }
    let p = match Paging::parse(&q, 1) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if (p.page + 1).saturating_mul(p.per_page) > OFFSET_CAP {
        return errors::mgmt(
            StatusCode::BAD_REQUEST,
            &format!(
                "Requesting page {} exceeds the allowed maximum of 1000 records. To fetch results beyond 1000, use the checkpoint pagination method.",
                p.page
            ),
            None,
        );
    }
    let page: Vec<Value> = o
        .members(&st.tenant, role, None)
        .skip(p.start() as usize)
        .take(p.per_page as usize)
        .map(|(_, idx)| role_user(&st, &o, idx))
        .collect();
    if p.include_totals {
        let total = o.member_total(&st.tenant, role);
        Json(json!({"start": p.start(), "limit": p.per_page, "total": total, "users": page})).into_response()
    } else {
        Json(page).into_response()
    }
}

fn checkpoint(st: &AppState, o: &Overlay, role: usize, q: &paging::Query) -> Response {
    let take = match paging::int_param(q, "take", 1, 100, "Number of results per page. Defaults to 50") {
        Ok(t) => t.unwrap_or(50) as usize,
        Err(r) => return r,
    };
    let cursor = match q.get("from").filter(|f| !f.is_empty()) {
        None => None,
        Some(from) => match decode_cursor(from) {
            Some(c) => Some(c),
            None => {
                return errors::invalid_query(
                    "'Invalid checkpoint' on property from (Optional Id from which to start selection.)",
                )
            }
        },
    };
    let after = cursor.as_ref().map(|(t, uid)| (*t, uid.as_str()));
    // One past the page tells whether a next page exists.
    let mut members: Vec<(i64, u32)> = o.members(&st.tenant, role, after).take(take + 1).collect();
    let more = members.len() > take;
    members.truncate(take);
    let users: Vec<Value> = members.iter().map(|(_, idx)| role_user(st, o, *idx)).collect();
    let mut body = json!({ "users": users });
    if let Some((t, idx)) = members.last().filter(|_| more) {
        body["next"] = json!(encode_cursor(*t, o.user_id(&st.tenant, *idx)));
    }
    Json(body).into_response()
}

/// The member view: four top-level fields read from the exact user text (no full parse of the user).
fn role_user(st: &AppState, o: &Overlay, idx: u32) -> Value {
    let raw = o.user_raw(&st.tenant, idx);
    let field = |key: &str| -> Option<Value> {
        raw.iter().find(|(k, _)| k == key).and_then(|(_, v)| serde_json::from_str(v).ok())
    };
    let mut out = json!({
        "user_id": field("user_id").unwrap_or(Value::Null),
        "picture": field("picture").unwrap_or(Value::Null),
        "name": field("name").unwrap_or(Value::Null),
    });
    if let Some(email) = field("email") {
        out["email"] = email;
    }
    out
}

/// base64 of `<assignment time>,<user_id>`, like Auth0's cursors.
fn encode_cursor(ms: i64, user_id: &str) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    STANDARD.encode(format!("{},{user_id}", t.format("%Y-%m-%d %H:%M:%S%.6fUTC")))
}

fn decode_cursor(s: &str) -> Option<(i64, String)> {
    // A `+` sent unencoded arrives as a space.
    let raw = String::from_utf8(STANDARD.decode(s.replace(' ', "+")).ok()?).ok()?;
    let (t, uid) = raw.split_once(',')?;
    let t = NaiveDateTime::parse_from_str(t.strip_suffix("UTC")?, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some((t.and_utc().timestamp_millis(), uid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_roundtrip() {
        let c = encode_cursor(1_678_801_288_961, "auth0|x,y");
        assert_eq!(decode_cursor(&c), Some((1_678_801_288_961, "auth0|x,y".into())));
        assert_eq!(decode_cursor("nope!"), None);
    }
}
