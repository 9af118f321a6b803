//! `/v1/exports/{id}/changes`: the diff of an incremental export against its base.

use axum::{
    extract::{RawQuery, State},
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::ToSchema;

use super::{
    auth::CanRead,
    error::{ApiError, Problem},
    exports::load_export,
    params::{finish_page, page_body, AppPath, Params},
    AppState,
};
use crate::db::{exports::ExportStatus, incremental};

/// A page of changes (written by [`page_body`]; this type documents its shape).
#[derive(ToSchema)]
pub struct ChangeList {
    pub data: Vec<Change>,
    pub next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Change {
    pub user_id: String,
    /// `added`, `deleted` or `changed` (any exported field, role or MFA factor differs).
    pub kind: String,
    /// The merged profile: as this export holds it, or the last known one for deleted users.
    #[schema(value_type = Object)]
    pub profile: (),
}

/// Users added, deleted or changed since the export's base, in `user_id` order.
#[utoipa::path(get, path = "/v1/exports/{id}/changes", tag = "profiles",
    params(("id" = uuid::Uuid, Path), ("kind" = Option<String>, Query, description = "added | deleted | changed"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ChangeList), (status = 400, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "no base, or not completed yet")),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    _: CanRead,
    AppPath(id): AppPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(q.as_deref(), &["kind", "limit", "cursor"])?;
    let kind = params.choice("kind", &["added", "deleted", "changed"])?;
    let limit = params.limit()?;
    let after = params.cursor()?;
    let export = load_export(&state, &id).await?;
    if export.request.base.is_none() {
        return Err(ApiError::Conflict(format!("export {} was not asked to build on a base", export.id)));
    }
    if export.status != ExportStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "export {} is {}; its changes are known once it completes",
            export.id,
            export.status.as_str()
        )));
    }
    let rows = incremental::changes_page(&state.pool, export.id, kind.as_deref(), after.as_deref(), limit).await?;
    let (rows, next_cursor) = finish_page(rows, limit, |r| r.profile.user_id.clone());
    let capacity = rows.iter().map(|r| r.profile.document.len() + 320).sum();
    let items = rows.iter().map(|row| {
        let quoted = |text: &str| serde_json::to_string(text).expect("a string serialises");
        format!(
            "{{\"user_id\":{},\"kind\":{},\"profile\":{}}}",
            quoted(&row.profile.user_id),
            quoted(&row.kind),
            row.profile.merged_text()
        )
    });
    let body = page_body(items, capacity, &next_cursor);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
