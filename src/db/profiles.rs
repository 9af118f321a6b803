//! The `profiles` table: batches stored while downloading, enrichment results, filtered pages.

use serde_json::{value::RawValue, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::document::{csv_safe, csv_text, csv_text_of, splice, Entries};

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
    /// The document has no member named like an enrichment: enrichments are appended to its text.
    pub plain: Option<bool>,
}

impl ProfileRow {
    /// The exported object with every value's text unchanged, plus each fetched enrichment and
    /// any enrichment error.
    pub fn merged(&self) -> Box<RawValue> {
        RawValue::from_string(self.merged_text()).expect("merging JSON texts gives JSON")
    }

    /// [`ProfileRow::merged`] as text, not parsed again: every piece is JSON already (stored
    /// documents were checked on the way in), and pages and downloads serve a great many.
    pub fn merged_text(&self) -> String {
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
        if self.plain == Some(true) {
            return splice(&self.document, &extra);
        }
        match Entries::parse(&self.document) {
            Ok(entries) => entries.merge(&extra),
            // Only objects are stored since the download checks; an older non-object row is wrapped.
            Err(_) => format!(
                "{{\"user_id\":{},\"doc\":{}}}",
                serde_json::to_string(&self.user_id).expect("a string serialises"),
                self.document
            ),
        }
    }
}

impl ProfileRow {
    /// The CSV cells of `columns` for this profile. Plain documents are read as stored, with
    /// the enrichments taken from their columns, so no merged text is built.
    pub fn csv_cells(&self, columns: &[String]) -> Vec<String> {
        let merged;
        let (entries, from_columns) = match (self.plain, Entries::parse(&self.document)) {
            (Some(true), Ok(entries)) => (entries, true),
            _ => {
                merged = self.merged_text();
                (Entries::parse(&merged).expect("a merged profile is an object"), false)
            }
        };
        columns
            .iter()
            .map(|c| match c.as_str() {
                "roles" if from_columns => csv_text_of(self.roles.as_deref()),
                "authentication_methods" if from_columns => csv_text_of(self.authentication_methods.as_deref()),
                "authenticators" if from_columns => csv_text_of(self.authenticators.as_deref()),
                "enrollments" if from_columns => csv_text_of(self.enrollments.as_deref()),
                "enrichment_error" if from_columns => self.enrichment_error.clone().unwrap_or_default(),
                other => csv_text(entries.get(other)),
            })
            .map(csv_safe)
            .collect()
    }
}

const COLUMNS: &str = "user_id, COALESCE(raw, doc::text) AS document, roles::text AS roles,
    authentication_methods::text AS authentication_methods, authenticators::text AS authenticators,
    enrollments::text AS enrollments, enrichment_error, plain";

/// One exported line and the keys indexed beside it.
#[derive(Debug)]
pub struct ExportedLine {
    pub user_id: String,
    pub email: Option<String>,
    pub connection: Option<String>,
    /// The line exactly as Auth0 wrote it.
    pub raw: String,
    /// No top-level member is named like an enrichment.
    pub plain: bool,
}

/// Rows in Postgres's `COPY` text format: one line per row, tab-separated, `\N` for null.
#[derive(Debug, Default)]
pub struct CopyBatch(Vec<u8>);

impl CopyBatch {
    /// Bytes of text so far.
    pub fn bytes(&self) -> usize {
        self.0.len()
    }

    /// The text so far, leaving the batch empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }

    /// Appends `(export_id, user_id, raw, email, connection, plain)` for `line`.
    pub fn push(&mut self, export_id: Uuid, line: &ExportedLine) {
        let out = &mut self.0;
        out.extend_from_slice(export_id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
        for field in [Some(&line.user_id), Some(&line.raw), line.email.as_ref(), line.connection.as_ref()] {
            out.push(b'\t');
            match field {
                None => out.extend_from_slice(b"\\N"),
                Some(text) => copy_escape(out, text),
            }
        }
        out.extend_from_slice(if line.plain { b"\tt\n" } else { b"\tf\n" });
    }
}

/// Escapes a field for `COPY … FROM STDIN` (text format): backslash and the separators.
fn copy_escape(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Creates (once) and returns the export's own partition.
#[tracing::instrument(skip_all)]
pub async fn ensure_partition(pool: &PgPool, export_id: Uuid) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT exporter_profiles_partition($1)::text").bind(export_id).fetch_one(pool).await
}

/// The `COPY` that loads [`CopyBatch`] text: straight into the profiles (the bulk path Postgres
/// is fastest at), or into a per-transaction scratch table when rows may already be stored.
pub fn copy_statement(conflict_safe: bool) -> &'static str {
    if conflict_safe {
        "COPY incoming_profiles (export_id, user_id, raw, email, connection, plain) FROM STDIN"
    } else {
        "COPY profiles (export_id, user_id, raw, email, connection, plain) FROM STDIN"
    }
}

/// The scratch table of a conflict-safe load, emptied when its transaction commits.
pub async fn prepare_incoming(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TEMP TABLE IF NOT EXISTS incoming_profiles
            (export_id uuid, user_id text COLLATE \"C\", raw text, email text, connection text, plain boolean)
            ON COMMIT DELETE ROWS",
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Moves the scratch rows into the profiles, skipping those already stored; returns how many were new.
pub async fn merge_incoming(conn: &mut PgConnection) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "INSERT INTO profiles (export_id, user_id, raw, email, connection, plain)
         SELECT export_id, user_id, raw, email, connection, plain FROM incoming_profiles
         ON CONFLICT (export_id, user_id) DO NOTHING",
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The name of an export's own partition (hex digits of its id only: safe to splice into DDL,
/// which cannot take identifiers as parameters).
fn partition_name(export_id: Uuid) -> String {
    format!("profiles_{}", export_id.simple())
}

/// Whether the export has a partition of its own (exports stored before partitioning do not).
async fn has_partition(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(partition_name(export_id)).fetch_one(conn).await
}

/// Deletes the rows of an export stored before partitioning (its own partition, if any, is
/// dropped whole instead).
pub async fn delete_legacy_rows(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<()> {
    if !has_partition(&mut *conn, export_id).await? {
        sqlx::query("DELETE FROM profiles WHERE export_id = $1").bind(export_id).execute(conn).await?;
    }
    Ok(())
}

/// Detaches and drops an export's partition. `DETACH … CONCURRENTLY` blocks no reader of other
/// exports (it waits for theirs to end instead), so it runs outside any transaction.
#[tracing::instrument(skip(pool))]
pub async fn drop_partition(pool: &PgPool, export_id: Uuid) -> sqlx::Result<()> {
    let part = partition_name(export_id);
    let attached: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = 'profiles'::regclass AND inhrelid = to_regclass($1))",
    )
    .bind(&part)
    .fetch_one(pool)
    .await?;
    if attached {
        sqlx::query(&format!("ALTER TABLE profiles DETACH PARTITION {part} CONCURRENTLY")).execute(pool).await?;
    }
    sqlx::query(&format!("DROP TABLE IF EXISTS {part}")).execute(pool).await.map(drop)
}

/// Gives the planner the statistics of a freshly loaded partition: without them it guesses a
/// handful of rows and picks plans that scan the whole export for every enrichment batch.
#[tracing::instrument(skip(pool))]
pub async fn analyze_partition(pool: &PgPool, export_id: Uuid) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    if has_partition(&mut conn, export_id).await? {
        sqlx::query(&format!("ANALYZE {}", partition_name(export_id))).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rewrites a completed export's partition without the row versions its enrichment updates left
/// behind (only the export's own rows are locked, for a few seconds per million). Skipped once
/// its read indexes exist: they are built right after.
#[tracing::instrument(skip(pool))]
pub async fn compact_partition(pool: &PgPool, export_id: Uuid) -> sqlx::Result<()> {
    let part = partition_name(export_id);
    let pending: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NULL")
        .bind(&part)
        .bind(format!("{part}_roles"))
        .fetch_one(pool)
        .await?;
    if pending {
        sqlx::query(&format!("VACUUM (FULL) {part}")).execute(pool).await?;
    }
    Ok(())
}

/// Builds the read indexes of a completed export's partition and its statistics.
#[tracing::instrument(skip_all)]
pub async fn index_partition(pool: &PgPool, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT exporter_index_partition($1)").bind(export_id).execute(pool).await.map(drop)
}

/// Filters of `GET /v1/exports/{id}/profiles`, each backed by an index of the export's partition.
#[derive(Debug, Default)]
pub struct ProfileFilter {
    pub role: Option<String>,
    pub has_mfa: Option<bool>,
    pub connection: Option<String>,
    pub email: Option<String>,
}

impl ProfileFilter {
    /// The page query of this filter's shape (and of a first or a later page): only the
    /// conditions it uses, so each shape gets a plan of its own; a catch-all `$n IS NULL OR …`
    /// lets a cached generic plan scan the whole export. Parameters: `$1` export, `$2` limit,
    /// then the last user of the previous page when `after`, then the set filters in the order
    /// role, has_mfa, connection, email.
    pub fn page_sql(&self, after: bool) -> String {
        // Rows of a deleted export are not served, even before its partition is dropped.
        let mut sql = format!(
            "SELECT {COLUMNS} FROM profiles WHERE export_id = $1 AND EXISTS (SELECT FROM exports WHERE id = $1)"
        );
        let mut n = 2;
        for (set, condition) in [
            (after, "user_id > $"),
            (self.role.is_some(), "role_names @> ARRAY[$::text]"),
            (self.has_mfa.is_some(), "has_mfa = $"),
            (self.connection.is_some(), "connection = $"),
            (self.email.is_some(), "email = $"),
        ] {
            if set {
                n += 1;
                sql.push_str(" AND ");
                sql.push_str(&condition.replacen('$', &format!("${n}"), 1));
            }
        }
        sql.push_str(" ORDER BY user_id LIMIT $2");
        sql
    }
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
    let sql = filter.page_sql(after.is_some());
    // A role's share of an export ranges from one user to all of them: plan each role page with
    // its value (an unnamed statement), not with a generic plan that assumes a typical role.
    let mut query = sqlx::query_as(&sql).persistent(filter.role.is_none()).bind(export_id).bind(limit + 1);
    if let Some(after) = after {
        query = query.bind(after);
    }
    if let Some(role) = &filter.role {
        query = query.bind(role);
    }
    if let Some(has_mfa) = filter.has_mfa {
        query = query.bind(has_mfa);
    }
    if let Some(connection) = &filter.connection {
        query = query.bind(connection);
    }
    if let Some(email) = &filter.email {
        query = query.bind(email);
    }
    query.fetch_all(pool).await
}

/// Every profile of the export in `user_id` order, streamed by one query.
pub fn all(pool: &PgPool, export_id: Uuid) -> futures_util::stream::BoxStream<'_, sqlx::Result<ProfileRow>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| format!("SELECT {COLUMNS} FROM profiles WHERE export_id = $1 ORDER BY user_id"));
    sqlx::query_as(sql).bind(export_id).fetch(pool)
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
    with_roles: bool,
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
        Pass::Mfa if with_roles => (
            "authentication_methods = u.m, authenticators = u.a, enrollments = u.e, has_mfa = u.h, enriched_at = now(),
             roles = COALESCE(m.roles, '[]'::jsonb), role_names = COALESCE(m.names, '{}')",
            "p.enriched_at IS NULL",
        ),
        Pass::Mfa => (
            "authentication_methods = u.m, authenticators = u.a, enrollments = u.e, has_mfa = u.h, enriched_at = now()",
            "p.enriched_at IS NULL",
        ),
    };
    let roles = if with_roles && pass == Pass::Mfa { crate::db::roles::ROLES_OF_USER } else { "" };
    let done = sqlx::query(&format!(
        "UPDATE profiles p SET {set}, enrichment_error = COALESCE(u.err, p.enrichment_error)
           FROM unnest($2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::bool[], $8::text[])
                AS u(user_id, r, m, a, e, h, err) {roles}
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
