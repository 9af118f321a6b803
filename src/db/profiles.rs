//! The `profiles` table: batches stored while downloading, enrichment results, filtered pages.

use serde_json::{value::RawValue, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::document::Entries;

/// A stored profile; [`ProfileRow::merged`] assembles what clients see.
#[derive(Debug, sqlx::FromRow)]
pub struct ProfileRow {
    pub user_id: String,
    /// The exported line as Auth0 wrote it (older rows: their jsonb rendered as text).
    pub document: String,
    pub roles: Option<String>,
    pub authentication_methods: Option<String>,
    pub authenticators: Option<String>,
    pub enrollments: Option<String>,
    pub enrichment_error: Option<String>,
}

impl ProfileRow {
    /// The exported object with every value's text unchanged, plus each fetched enrichment and
    /// any enrichment error.
    pub fn merged(&self) -> Box<RawValue> {
        let error = self.enrichment_error.as_ref().map(|e| serde_json::to_string(e).expect("a string serialises"));
        let extra: Vec<(&str, &str)> = [
            ("roles", self.roles.as_deref()),
            ("authentication_methods", self.authentication_methods.as_deref()),
            ("authenticators", self.authenticators.as_deref()),
            ("enrollments", self.enrollments.as_deref()),
            ("enrichment_error", error.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let text = match Entries::parse(&self.document) {
            Ok(entries) => entries.merge(&extra),
            // Only objects are stored since the download checks; an older non-object row is wrapped.
            Err(_) => format!(
                "{{\"user_id\":{},\"doc\":{}}}",
                serde_json::to_string(&self.user_id).expect("a string serialises"),
                self.document
            ),
        };
        RawValue::from_string(text).expect("merging JSON texts gives JSON")
    }
}

const COLUMNS: &str = "user_id, COALESCE(raw, doc::text) AS document, roles::text AS roles,
    authentication_methods::text AS authentication_methods, authenticators::text AS authenticators,
    enrollments::text AS enrollments, enrichment_error";

/// One exported line and the keys indexed beside it.
#[derive(Debug)]
pub struct ExportedLine {
    pub user_id: String,
    pub email: Option<String>,
    pub connection: Option<String>,
    /// The line exactly as Auth0 wrote it.
    pub raw: String,
}

/// Stores downloaded lines; a line already stored (a retried download) is skipped.
/// Returns how many rows were new.
#[tracing::instrument(skip_all, fields(lines = lines.len()))]
pub async fn insert_batch(conn: &mut PgConnection, export_id: Uuid, lines: &[ExportedLine]) -> sqlx::Result<u64> {
    let column = |f: fn(&ExportedLine) -> Option<&str>| lines.iter().map(f).collect::<Vec<_>>();
    let done = sqlx::query(
        "INSERT INTO profiles (export_id, user_id, raw, email, connection)
         SELECT $1, u, r, e, c FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS t(u, r, e, c)
         ON CONFLICT (export_id, user_id) DO NOTHING",
    )
    .bind(export_id)
    .bind(column(|l| Some(l.user_id.as_str())))
    .bind(column(|l| Some(l.raw.as_str())))
    .bind(column(|l| l.email.as_deref()))
    .bind(column(|l| l.connection.as_deref()))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Filters of `GET /v1/exports/{id}/profiles`, each backed by an index.
#[derive(Debug, Default)]
pub struct ProfileFilter {
    pub role: Option<String>,
    pub has_mfa: Option<bool>,
    pub connection: Option<String>,
    pub email: Option<String>,
}

/// One page in `user_id` order after `after`; fetches `limit + 1` rows to tell if more exist.
#[tracing::instrument(skip_all)]
pub async fn page(
    pool: &PgPool,
    export_id: Uuid,
    filter: &ProfileFilter,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<ProfileRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM profiles
          WHERE export_id = $1 AND ($2::text IS NULL OR user_id > $2)
            AND ($3::text IS NULL OR role_names @> ARRAY[$3::text])
            AND ($4::bool IS NULL OR has_mfa = $4)
            AND ($5::text IS NULL OR connection = $5)
            AND ($6::text IS NULL OR email = $6)
          ORDER BY user_id LIMIT $7"
    ))
    .bind(export_id)
    .bind(after)
    .bind(filter.role.as_deref())
    .bind(filter.has_mfa)
    .bind(filter.connection.as_deref())
    .bind(filter.email.as_deref())
    .bind(limit + 1)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip_all)]
pub async fn get(pool: &PgPool, export_id: Uuid, user_id: &str) -> sqlx::Result<Option<ProfileRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM profiles WHERE export_id = $1 AND user_id = $2"))
        .bind(export_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await
}

#[tracing::instrument(skip_all)]
pub async fn count(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM profiles WHERE export_id = $1").bind(export_id).fetch_one(conn).await
}

/// The users still waiting for a per-user pass, in `user_id` order: `roles` pending, or MFA
/// (`enriched_at`) pending.
#[tracing::instrument(skip_all)]
pub async fn pending_users(
    pool: &PgPool,
    export_id: Uuid,
    pass: Pass,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    let pending = match pass {
        Pass::Roles => "roles IS NULL",
        Pass::Mfa => "enriched_at IS NULL",
    };
    sqlx::query_scalar(&format!(
        "SELECT user_id FROM profiles
          WHERE export_id = $1 AND {pending} AND ($2::text IS NULL OR user_id > $2)
          ORDER BY user_id LIMIT $3"
    ))
    .bind(export_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The two per-user passes: roles (when enumerating by role is dearer) and MFA factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Roles,
    Mfa,
}

/// What the per-user calls returned for one user; `None` where not fetched.
#[derive(Debug, Default)]
pub struct UserEnrichment {
    pub user_id: String,
    pub roles: Option<Value>,
    pub authentication_methods: Option<Value>,
    pub authenticators: Option<Value>,
    pub enrollments: Option<Value>,
    pub has_mfa: Option<bool>,
    pub error: Option<String>,
}

/// Writes a batch of one pass's results, checkpointing those users; returns how many were new.
#[tracing::instrument(skip_all)]
pub async fn store_enrichments(
    conn: &mut PgConnection,
    export_id: Uuid,
    pass: Pass,
    batch: &[UserEnrichment],
) -> sqlx::Result<u64> {
    let json = |f: fn(&UserEnrichment) -> &Option<Value>| -> Vec<Option<String>> {
        batch.iter().map(|u| f(u).as_ref().map(jsonb_text)).collect()
    };
    let (set, pending) = match pass {
        Pass::Roles => (
            "roles = COALESCE(u.r, '[]'::jsonb),
             role_names = ARRAY(SELECT x->>'name' FROM jsonb_array_elements(COALESCE(u.r, '[]'::jsonb)) x)",
            "p.roles IS NULL",
        ),
        Pass::Mfa => (
            "authentication_methods = u.m, authenticators = u.a, enrollments = u.e, has_mfa = u.h, enriched_at = now()",
            "p.enriched_at IS NULL",
        ),
    };
    let done = sqlx::query(&format!(
        "UPDATE profiles p SET {set}, enrichment_error = COALESCE(u.err, p.enrichment_error)
           FROM unnest($2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::bool[], $8::text[])
                AS u(user_id, r, m, a, e, h, err)
          WHERE p.export_id = $1 AND p.user_id = u.user_id AND {pending}"
    ))
    .bind(export_id)
    .bind(batch.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>())
    .bind(json(|u| &u.roles))
    .bind(json(|u| &u.authentication_methods))
    .bind(json(|u| &u.authenticators))
    .bind(json(|u| &u.enrollments))
    .bind(batch.iter().map(|u| u.has_mfa).collect::<Vec<_>>())
    .bind(batch.iter().map(|u| u.error.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Checkpoints every remaining user when no per-user call is needed; returns how many.
#[tracing::instrument(skip_all)]
pub async fn mark_all_enriched(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<u64> {
    let done = sqlx::query("UPDATE profiles SET enriched_at = now() WHERE export_id = $1 AND enriched_at IS NULL")
        .bind(export_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// A value as jsonb input: jsonb cannot hold U+0000, so in these Auth0 API answers (never in the
/// exported documents, which are stored verbatim) a real U+0000 becomes U+FFFD rather than
/// failing the batch forever.
fn jsonb_text(value: &Value) -> String {
    fn clean(v: &mut Value) {
        match v {
            Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
            Value::Array(items) => items.iter_mut().for_each(clean),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    *map = std::mem::take(map).into_iter().map(|(k, v)| (k.replace('\0', "\u{fffd}"), v)).collect();
                }
                map.values_mut().for_each(clean);
            }
            _ => {}
        }
    }
    let text = value.to_string();
    if !text.contains("\\u0000") {
        return text;
    }
    let mut value = value.clone();
    clean(&mut value);
    value.to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn only_real_nul_is_replaced_in_enrichments() {
        let cleaned = super::jsonb_text(&json!({"a": "x\u{0}y", "b\u{0}": ["\\u0000"]}));
        assert_eq!(cleaned, json!({"a": "x\u{fffd}y", "b\u{fffd}": ["\\u0000"]}).to_string());
        assert_eq!(super::jsonb_text(&json!(["\\u0000"])), r#"["\\u0000"]"#);
    }
}
