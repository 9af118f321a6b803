//! GET /api/v2/users/{id} and its roles, authentication-methods, authenticators and enrollments.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::jobs::write_object;
use crate::overlay::Overlay;
use crate::paging::{self, Paging};
use crate::{data, errors, AppState};

/// The live user's index, with the tenant state it was found in.
fn find(st: &AppState, id: &str) -> Result<(Arc<Overlay>, u32), Response> {
    let o = st.overlay();
    let idx = o.live_index(&st.tenant, id).ok_or_else(errors::user_not_found)?;
    Ok((o, idx))
}

/// The user object as exact JSON text; `fields` (comma-separated) with `include_fields` (default true)
/// keeps only, or drops, those top-level fields.
pub async fn get_user(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<paging::Query>,
) -> Response {
    let (o, idx) = match find(&st, &id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let include = match paging::bool_param(
        &q,
        "include_fields",
        "Whether specified fields are to be included (true) or excluded (false). Defaults to true.",
    ) {
        Ok(b) => b.unwrap_or(true),
        Err(r) => return r,
    };
    let fields: Option<Vec<&str>> =
        q.get("fields").filter(|f| !f.is_empty()).map(|f| f.split(',').map(str::trim).collect());
    let user = o.user_raw(&st.tenant, idx);
    let pairs: Vec<(&str, &str)> = user
        .iter()
        .filter(|(k, _)| fields.as_ref().is_none_or(|f| f.contains(&k.as_str()) == include))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out = Vec::new();
    write_object(&mut out, &pairs, &[]);
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], out).into_response()
}

pub async fn roles(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<paging::Query>,
) -> Response {
    let (o, idx) = match find(&st, &id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let p = match Paging::parse(&q, 1) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let all = o.user_roles(&st.tenant, idx);
    let page = p.slice(&all);
    if p.include_totals {
        Json(json!({"roles": page, "start": p.start(), "limit": p.per_page, "total": all.len()})).into_response()
    } else {
        Json(page).into_response()
    }
}

pub async fn authentication_methods(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<paging::Query>,
) -> Response {
    let (o, idx) = match find(&st, &id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let p = match Paging::parse(&q, 0) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let all = o.methods(&st.tenant, idx);
    let page = p.slice(&all);
    if !p.include_totals {
        return Json(page).into_response();
    }
    // Quirks: the wrapper key is `authenticators`, and an empty result has no `total`.
    let mut body = json!({"authenticators": page, "start": p.start(), "limit": p.per_page});
    if !all.is_empty() {
        body["total"] = json!(all.len());
    }
    Json(body).into_response()
}

pub async fn authenticators(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match find(&st, &id) {
        Ok((o, idx)) => Json(Value::Array(data::authenticators(&o.methods(&st.tenant, idx)))).into_response(),
        Err(r) => r,
    }
}

pub async fn enrollments(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match find(&st, &id) {
        Ok((o, idx)) => Json(Value::Array(data::enrollments(&o.methods(&st.tenant, idx)))).into_response(),
        Err(r) => r,
    }
}
