//! Roles by role, not by user: list the roles, page each role's members by checkpoint, invert.
//!
//! One call per 100 members replaces one call per user. When the export holds fewer users than
//! enumerating would cost (a `limit`ed export of a big tenant), enumeration stops at that budget
//! and the per-user pass takes over, so the cost never exceeds twice the cheaper way.

use std::sync::atomic::{AtomicI64, Ordering};

use futures_util::{stream, TryStreamExt};

use super::{StageContext, StageError};
use crate::{
    auth0::{
        types::{RoleMembersPage, RolesPage},
        Auth0Error,
    },
    db,
};

pub const BY_ROLE: &str = "by_role";
pub const PER_USER: &str = "per_user";

/// Members per checkpoint page (Auth0's maximum `take`).
const PAGE: usize = 100;

/// Decides how roles are fetched and, by role, fetches every membership; returns the strategy to
/// finish with. The memberships are folded into the profiles by [`fold`] once no other pass
/// writes to them (two bulk updates of the same rows could deadlock).
pub async fn enumerate(ctx: &StageContext, users: i64, concurrency: usize) -> Result<&'static str, StageError> {
    let export = ctx.export.id;
    match ctx.export.roles_strategy.as_deref() {
        Some(PER_USER) => return Ok(PER_USER),
        Some(_) => {}
        None => {
            list_roles(ctx).await?;
            let roles = db::roles::count_roles(&ctx.pool, export).await?;
            // Each role costs at least one call by role; each user exactly one per user.
            let strategy = if users < roles { PER_USER } else { BY_ROLE };
            set_strategy(ctx, strategy).await?;
            if strategy == PER_USER {
                return Ok(PER_USER);
            }
        }
    }

    let budget = AtomicI64::new(users);
    let unfinished = db::roles::unfinished(&ctx.pool, export).await?;
    let outcome = stream::iter(unfinished.into_iter().map(Ok))
        .try_for_each_concurrent(concurrency.max(1), |(role_id, from)| page_members(ctx, role_id, from, &budget))
        .await;
    match outcome {
        Ok(()) => Ok(BY_ROLE),
        Err(Enumeration::OverBudget) => {
            tracing::info!(users, "enumerating roles costs more than per-user calls; switching");
            set_strategy(ctx, PER_USER).await?;
            Ok(PER_USER)
        }
        Err(Enumeration::Failed(e)) => Err(e),
    }
}

/// Writes the enumerated roles into every profile, fenced by the lease: a stale worker must not
/// rewrite the roles of an export someone else finished.
pub async fn fold(ctx: &StageContext) -> Result<(), StageError> {
    let mut tx = ctx.begin_fenced().await?;
    db::roles::fold_into_profiles(&mut tx, ctx.export.id).await?;
    sqlx::query("UPDATE exports SET roles_fetched = true WHERE id = $1").bind(ctx.export.id).execute(&mut *tx).await?;
    ctx.flush_stats(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn set_strategy(ctx: &StageContext, strategy: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE exports SET roles_strategy = $2 WHERE id = $1")
        .bind(ctx.export.id)
        .bind(strategy)
        .execute(&ctx.pool)
        .await
        .map(drop)
}

async fn list_roles(ctx: &StageContext) -> Result<(), StageError> {
    let roles = ctx.client.get_all::<RolesPage>("GET /api/v2/roles", &["roles"], &ctx.stats).await?;
    let mut conn = ctx.pool.acquire().await?;
    db::roles::store_roles(&mut conn, ctx.export.id, &roles).await?;
    Ok(())
}

enum Enumeration {
    OverBudget,
    Failed(StageError),
}

impl From<sqlx::Error> for Enumeration {
    fn from(e: sqlx::Error) -> Self {
        Enumeration::Failed(e.into())
    }
}

impl From<Auth0Error> for Enumeration {
    fn from(e: Auth0Error) -> Self {
        Enumeration::Failed(e.into())
    }
}

/// Pages one role's members from its checkpoint, storing each page with the next checkpoint.
async fn page_members(
    ctx: &StageContext,
    role_id: String,
    mut from: Option<String>,
    budget: &AtomicI64,
) -> Result<(), Enumeration> {
    loop {
        if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return Err(Enumeration::OverBudget);
        }
        let take = PAGE.to_string();
        let mut query = vec![("take", take.as_str())];
        if let Some(f) = from.as_deref() {
            query.push(("from", f));
        }
        let url = ctx.client.api_url(&["roles", &role_id, "users"], &query);
        let page: RoleMembersPage = match ctx.client.get("GET /api/v2/roles/{id}/users", url, &ctx.stats).await {
            Ok(page) => page,
            // Deleted since it was listed: nobody holds it any more.
            Err(Auth0Error::NotFound(_)) => RoleMembersPage { users: vec![], next: None },
            Err(e) => return Err(e.into()),
        };
        let users: Vec<String> = page.users.into_iter().map(|u| u.user_id).collect();
        // An empty page with a cursor would loop forever; treat it as the end.
        let next = page.next.filter(|n| !n.is_empty() && !users.is_empty());
        db::roles::store_members_page(&ctx.pool, ctx.export.id, &role_id, &users, next.as_deref()).await?;
        match next {
            Some(n) => from = Some(n),
            None => return Ok(()),
        }
    }
}
