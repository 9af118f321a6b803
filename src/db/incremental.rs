//! What an incremental export reads from and writes about its base: MFA data copied for users
//! whose factors cannot have changed, and the diff (`export_changes`).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db::profiles::ProfileRow;

/// SQL: whether the documents of `p` and `b` pass `test` (over `jp`, `jb`, their jsonb values).
/// Equal texts pass at once. jsonb cannot hold U+0000, so a document escaping one is compared
/// as text only: different text fails. CASE keeps the casts from ever seeing such a document.
fn documents(test: &str) -> String {
    let jsonb = |t: &str| format!("COALESCE({t}.raw::jsonb, {t}.doc)");
    format!(
        "CASE WHEN p.raw IS NOT DISTINCT FROM b.raw AND p.doc IS NOT DISTINCT FROM b.doc THEN true
              WHEN strpos(COALESCE(p.raw, ''), '\\u0000') > 0 OR strpos(COALESCE(b.raw, ''), '\\u0000') > 0 THEN false
              ELSE {} END",
        test.replace("jp", &jsonb("p")).replace("jb", &jsonb("b"))
    )
}

/// Copies the base's MFA data into up to `limit` pending users after `after` (user_id order)
/// that exist in the base, are not in `dirty`, and whose exported `multifactor` and
/// `multifactor_last_modified` did not change. Returns the rows copied and the last user seen.
pub async fn copy_base_mfa(
    conn: &mut PgConnection,
    export_id: Uuid,
    base_id: Uuid,
    dirty: &[String],
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<(u64, Option<String>)> {
    let (last,): (Option<String>,) = sqlx::query_as(
        "SELECT max(user_id) FROM (
            SELECT user_id FROM profiles WHERE export_id = $1 AND ($2::text IS NULL OR user_id > $2)
             ORDER BY user_id LIMIT $3) s",
    )
    .bind(export_id)
    .bind(after)
    .bind(limit)
    .fetch_one(&mut *conn)
    .await?;
    let Some(last) = last else { return Ok((0, None)) };
    let copied = sqlx::query(&format!(
        "UPDATE profiles p SET authentication_methods = b.authentication_methods, authenticators = b.authenticators,
                enrollments = b.enrollments, has_mfa = b.has_mfa, enriched_at = now()
           FROM profiles b
          WHERE p.export_id = $1 AND b.export_id = $2 AND b.user_id = p.user_id
            AND ($3::text IS NULL OR p.user_id > $3) AND p.user_id <= $4
            AND p.enriched_at IS NULL AND b.enrichment_error IS NULL
            AND NOT (p.user_id = ANY($5::text[]))
            AND {}",
        documents(
            "jp -> 'multifactor' IS NOT DISTINCT FROM jb -> 'multifactor'
             AND jp -> 'multifactor_last_modified' IS NOT DISTINCT FROM jb -> 'multifactor_last_modified'"
        )
    ))
    .bind(export_id)
    .bind(base_id)
    .bind(after)
    .bind(&last)
    .bind(dirty)
    .execute(conn)
    .await?;
    Ok((copied.rows_affected(), Some(last)))
}

/// The base's users whose stored MFA data names `factor_id` (a Guardian enrollment id in a
/// log's path): the only way from such a record to its user.
pub async fn users_with_factor(pool: &PgPool, base_id: Uuid, factor_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT user_id FROM profiles WHERE export_id = $1
            AND (strpos(authentication_methods::text, $2) > 0 OR strpos(authenticators::text, $2) > 0
                 OR strpos(enrollments::text, $2) > 0)",
    )
    .bind(base_id)
    .bind(factor_id)
    .fetch_all(pool)
    .await
}

/// Users of the export named in `users`, made pending again (their factors changed during the
/// run, possibly after they were copied or fetched), and taken off the enriched count. Returns
/// how many.
pub async fn reopen(conn: &mut PgConnection, export_id: Uuid, users: &[String]) -> sqlx::Result<u64> {
    let reopened: i64 = sqlx::query_scalar(
        "WITH reopened AS (
            UPDATE profiles SET enriched_at = NULL
             WHERE export_id = $1 AND user_id = ANY($2::text[]) AND enriched_at IS NOT NULL
            RETURNING 1),
         counted AS (
            UPDATE exports SET users_enriched = users_enriched - (SELECT count(*) FROM reopened) WHERE id = $1)
         SELECT count(*) FROM reopened",
    )
    .bind(export_id)
    .bind(users)
    .fetch_one(conn)
    .await?;
    Ok(reopened as u64)
}

pub async fn pending_count(pool: &PgPool, export_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM profiles WHERE export_id = $1 AND enriched_at IS NULL")
        .bind(export_id)
        .fetch_one(pool)
        .await
}

/// Counts of the diff.
pub struct Diff {
    pub added: i64,
    pub deleted: i64,
    pub changed: i64,
}

/// Writes the diff against the base: added and deleted by `user_id`, changed when any exported
/// field (as a JSON value), role or MFA list differs. Idempotent.
pub async fn write_changes(conn: &mut PgConnection, export_id: Uuid, base_id: Uuid) -> sqlx::Result<Diff> {
    sqlx::query("DELETE FROM export_changes WHERE export_id = $1").bind(export_id).execute(&mut *conn).await?;
    let added = sqlx::query(
        "INSERT INTO export_changes (export_id, user_id, kind)
         SELECT $1, p.user_id, 'added' FROM profiles p
          WHERE p.export_id = $1
            AND NOT EXISTS (SELECT FROM profiles b WHERE b.export_id = $2 AND b.user_id = p.user_id)",
    )
    .bind(export_id)
    .bind(base_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let deleted = sqlx::query(
        "INSERT INTO export_changes (export_id, user_id, kind, raw, doc, plain, roles, authentication_methods,
                                     authenticators, enrollments, enrichment_error)
         SELECT $1, b.user_id, 'deleted', b.raw, b.doc, b.plain, b.roles, b.authentication_methods,
                b.authenticators, b.enrollments, b.enrichment_error
           FROM profiles b
          WHERE b.export_id = $2
            AND NOT EXISTS (SELECT FROM profiles p WHERE p.export_id = $1 AND p.user_id = b.user_id)",
    )
    .bind(export_id)
    .bind(base_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let changed = sqlx::query(&format!(
        "INSERT INTO export_changes (export_id, user_id, kind)
         SELECT $1, p.user_id, 'changed' FROM profiles p JOIN profiles b ON b.export_id = $2 AND b.user_id = p.user_id
          WHERE p.export_id = $1
            AND (NOT {}
                 OR p.roles IS DISTINCT FROM b.roles
                 OR p.authentication_methods IS DISTINCT FROM b.authentication_methods
                 OR p.authenticators IS DISTINCT FROM b.authenticators
                 OR p.enrollments IS DISTINCT FROM b.enrollments
                 OR p.enrichment_error IS DISTINCT FROM b.enrichment_error)",
        documents("jp = jb")
    ))
    .bind(export_id)
    .bind(base_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Diff { added: added as i64, deleted: deleted as i64, changed: changed as i64 })
}

/// One change: the user, its kind and its profile (the last known one for deleted users).
#[derive(sqlx::FromRow)]
pub struct ChangeRow {
    pub kind: String,
    #[sqlx(flatten)]
    pub profile: ProfileRow,
}

/// A page of the diff in `user_id` order, optionally of one kind.
pub async fn changes_page(
    pool: &PgPool,
    export_id: Uuid,
    kind: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<ChangeRow>> {
    let mut sql = String::from(
        "SELECT c.kind, c.user_id,
                CASE WHEN c.kind = 'deleted' THEN COALESCE(c.raw, c.doc::text) ELSE COALESCE(p.raw, p.doc::text) END AS document,
                CASE WHEN c.kind = 'deleted' THEN c.roles ELSE p.roles END::text AS roles,
                CASE WHEN c.kind = 'deleted' THEN c.authentication_methods ELSE p.authentication_methods END::text
                    AS authentication_methods,
                CASE WHEN c.kind = 'deleted' THEN c.authenticators ELSE p.authenticators END::text AS authenticators,
                CASE WHEN c.kind = 'deleted' THEN c.enrollments ELSE p.enrollments END::text AS enrollments,
                CASE WHEN c.kind = 'deleted' THEN c.enrichment_error ELSE p.enrichment_error END AS enrichment_error,
                CASE WHEN c.kind = 'deleted' THEN c.plain ELSE p.plain END AS plain
           FROM export_changes c
           LEFT JOIN profiles p ON p.export_id = c.export_id AND p.user_id = c.user_id
          WHERE c.export_id = $1",
    );
    let mut n = 3;
    if kind.is_some() {
        sql.push_str(&format!(" AND c.kind = ${n}"));
        n += 1;
    }
    if after.is_some() {
        sql.push_str(&format!(" AND c.user_id > ${n}"));
    }
    sql.push_str(" ORDER BY c.user_id LIMIT $2");
    let mut query = sqlx::query_as(&sql).bind(export_id).bind(limit + 1);
    if let Some(kind) = kind {
        query = query.bind(kind);
    }
    if let Some(after) = after {
        query = query.bind(after);
    }
    query.fetch_all(pool).await
}

/// Removes a deleted export's diff (with its other leftovers, off the request).
pub async fn clear(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM export_changes WHERE export_id = $1").bind(export_id).execute(conn).await.map(drop)
}
