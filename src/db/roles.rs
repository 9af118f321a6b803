//! Role enumeration state (`export_roles`, `role_members`), checkpointed per page of members.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::auth0::types::Role;

#[tracing::instrument(skip_all)]
pub async fn store_roles(conn: &mut PgConnection, export_id: Uuid, roles: &[Role]) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO export_roles (export_id, role_id, name, description)
         SELECT $1, i, n, d FROM unnest($2::text[], $3::text[], $4::text[]) AS t(i, n, d)
         ON CONFLICT (export_id, role_id) DO NOTHING",
    )
    .bind(export_id)
    .bind(roles.iter().map(|r| r.id.clone()).collect::<Vec<_>>())
    .bind(roles.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
    .bind(roles.iter().map(|r| r.description.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn count_roles(pool: &PgPool, export_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM export_roles WHERE export_id = $1").bind(export_id).fetch_one(pool).await
}

/// A role whose members are not all fetched yet, with the checkpoint to continue from.
#[derive(Debug, sqlx::FromRow)]
pub struct RoleCheckpoint {
    pub role_id: String,
    pub next_from: Option<String>,
}

/// Roles whose members are not all fetched yet.
#[tracing::instrument(skip_all)]
pub async fn unfinished(pool: &PgPool, export_id: Uuid) -> sqlx::Result<Vec<RoleCheckpoint>> {
    sqlx::query_as("SELECT role_id, next_from FROM export_roles WHERE export_id = $1 AND NOT done ORDER BY role_id")
        .bind(export_id)
        .fetch_all(pool)
        .await
}

/// Stores one page of a role's members and its checkpoint in one transaction.
#[tracing::instrument(skip_all)]
pub async fn store_members_page(
    pool: &PgPool,
    export_id: Uuid,
    role_id: &str,
    user_ids: &[String],
    next: Option<&str>,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO role_members (export_id, role_id, user_id) SELECT $1, $2, u FROM unnest($3::text[]) AS t(u)
         ON CONFLICT DO NOTHING",
    )
    .bind(export_id)
    .bind(role_id)
    .bind(user_ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE export_roles SET next_from = $3, done = ($3 IS NULL) WHERE export_id = $1 AND role_id = $2")
        .bind(export_id)
        .bind(role_id)
        .bind(next)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Joined to a row source `u(user_id)` of one export (`$1`): the user's roles as the merged
/// profile shows them (`m.roles`, sorted by name in byte order) and their names (`m.names`).
pub const ROLES_OF_USER: &str = "
    LEFT JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object('id', r.role_id, 'name', r.name, 'description', r.description)
                         ORDER BY r.name, r.role_id) AS roles,
               array_agg(r.name::text ORDER BY r.name, r.role_id) AS names
          FROM role_members rm
          JOIN export_roles r ON r.export_id = rm.export_id AND r.role_id = rm.role_id
         WHERE rm.export_id = $1 AND rm.user_id = u.user_id) m ON true";

/// Writes the roles (sorted by name, byte order) of the next `limit` profiles after `after`
/// from the enumerated memberships; returns the last user written, `None` when none was left.
#[tracing::instrument(skip(conn))]
pub async fn fold_into_profiles(
    conn: &mut PgConnection,
    export_id: Uuid,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Option<String>> {
    // Only rows still without roles: the MFA pass writes most of them together with their factors.
    sqlx::query_scalar(&format!(
        "WITH batch AS (
            SELECT user_id FROM profiles
             WHERE export_id = $1 AND ($2::text IS NULL OR user_id > $2) AND roles IS NULL
             ORDER BY user_id LIMIT $3),
         folded AS (
            UPDATE profiles p SET
                   roles = COALESCE(m.roles, '[]'::jsonb), role_names = COALESCE(m.names, '{{}}')
              FROM batch u {ROLES_OF_USER}
             WHERE p.export_id = $1 AND p.user_id = u.user_id
            RETURNING p.user_id)
         SELECT max(user_id) FROM folded"
    ))
    .bind(export_id)
    .bind(after)
    .bind(limit)
    .fetch_one(conn)
    .await
}

/// Memberships are only a means to fill `profiles.roles`; drop them once folded.
#[tracing::instrument(skip_all)]
pub async fn clear(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM role_members WHERE export_id = $1").bind(export_id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM export_roles WHERE export_id = $1").bind(export_id).execute(conn).await?;
    Ok(())
}
