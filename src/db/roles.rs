//! Role enumeration state (`export_roles`, `role_members`), checkpointed per page of members.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::auth0::types::Role;

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

pub async fn count_roles(pool: &PgPool, export_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM export_roles WHERE export_id = $1").bind(export_id).fetch_one(pool).await
}

/// Roles whose members are not all fetched yet, with the checkpoint to continue from.
pub async fn unfinished(pool: &PgPool, export_id: Uuid) -> sqlx::Result<Vec<(String, Option<String>)>> {
    sqlx::query_as("SELECT role_id, next_from FROM export_roles WHERE export_id = $1 AND NOT done ORDER BY role_id")
        .bind(export_id)
        .fetch_all(pool)
        .await
}

/// Stores one page of a role's members and its checkpoint in one transaction.
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

/// Writes each profile's roles (sorted by name, byte order) from the enumerated memberships.
pub async fn fold_into_profiles(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE profiles p SET
                roles = COALESCE(m.roles, '[]'::jsonb), role_names = COALESCE(m.names, '{}')
           FROM profiles p2
           LEFT JOIN LATERAL (
                SELECT jsonb_agg(jsonb_build_object('id', r.role_id, 'name', r.name, 'description', r.description)
                                 ORDER BY r.name, r.role_id) AS roles,
                       array_agg(r.name::text ORDER BY r.name, r.role_id) AS names
                  FROM role_members rm
                  JOIN export_roles r ON r.export_id = rm.export_id AND r.role_id = rm.role_id
                 WHERE rm.export_id = p2.export_id AND rm.user_id = p2.user_id) m ON true
          WHERE p.export_id = $1 AND p2.export_id = p.export_id AND p2.user_id = p.user_id",
    )
    .bind(export_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Memberships are only a means to fill `profiles.roles`; drop them once folded.
pub async fn clear(conn: &mut PgConnection, export_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM role_members WHERE export_id = $1").bind(export_id).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM export_roles WHERE export_id = $1").bind(export_id).execute(conn).await?;
    Ok(())
}
