//! Roles by role, not by user: list the roles, page each role's members by checkpoint, invert.
//!
//! One call per 100 members replaces one call per user. When the export holds fewer users than
//! enumerating would cost (a `limit`ed export of a big tenant), enumeration stops at that budget
//! and the per-user pass takes over, so the cost never exceeds twice the cheaper way.

use std::sync::atomic::{AtomicI64, Ordering};

use futures_util::{stream, TryStreamExt};

use super::{lease_lost, patiently, StageContext, StageError};
use crate::{
    auth0::{
        types::{RoleMembersPage, RolesPage},
        Auth0Error,
    },
    db::{self, exports::RolesStrategy},
};

/// Members per checkpoint page (Auth0's maximum `take`).
const PAGE: usize = 100;

/// Decides how roles are fetched and, by role, fetches every membership; returns the strategy to
/// finish with. The memberships are folded into the profiles by [`fold`] once no other pass
/// writes to them (two bulk updates of the same rows could deadlock).
#[tracing::instrument(skip_all)]
pub async fn enumerate(ctx: &StageContext, users: i64, concurrency: usize) -> Result<RolesStrategy, StageError> {
    let export = ctx.export.id;
    match ctx.export.roles_strategy {
        Some(RolesStrategy::PerUser) => return Ok(RolesStrategy::PerUser),
        Some(RolesStrategy::ByRole) => {}
        None => {
            list_roles(ctx).await?;
            let roles = db::retry("counting roles", || db::roles::count_roles(&ctx.pool, export)).await?;
            // Each role costs at least one call by role; each user exactly one per user.
            let strategy = if users < roles { RolesStrategy::PerUser } else { RolesStrategy::ByRole };
            set_strategy(ctx, strategy).await?;
            if strategy == RolesStrategy::PerUser {
                return Ok(strategy);
            }
        }
    }

    let budget = AtomicI64::new(users);
    let unfinished = db::retry("reading role checkpoints", || db::roles::unfinished(&ctx.pool, export)).await?;
    let outcome = stream::iter(unfinished.into_iter().map(Ok))
        .try_for_each_concurrent(concurrency.max(1), |c| page_members(ctx, c.role_id, c.next_from, &budget))
        .await;
    match outcome {
        Ok(()) => Ok(RolesStrategy::ByRole),
        Err(Enumeration::OverBudget) => {
            tracing::info!(users, "enumerating roles costs more than per-user calls; switching");
            set_strategy(ctx, RolesStrategy::PerUser).await?;
            Ok(RolesStrategy::PerUser)
        }
        Err(Enumeration::Failed(e)) => Err(e),
    }
}

/// Writes the enumerated roles into every profile in bounded batches, each fenced by the lease
/// (a stale worker must not rewrite the roles of an export someone else finished) and
/// checkpointed, so a resumed fold continues where it stopped.
#[tracing::instrument(skip_all)]
pub async fn fold(ctx: &StageContext) -> Result<(), StageError> {
    let mut after = ctx.export.roles_folded_after.clone();
    let batch = ctx.settings.fold_batch.max(1) as i64;
    loop {
        let step = db::retry("folding roles into profiles", || async {
            let Some(mut tx) = ctx.begin_fenced().await? else { return Ok(None) };
            let last = db::roles::fold_into_profiles(&mut tx, ctx.export.id, after.as_deref(), batch).await?;
            db::exports::set_roles_folded(&mut tx, ctx.export.id, last.as_deref().or(after.as_deref()), last.is_none())
                .await?;
            ctx.flush_stats(&mut tx).await?;
            tx.commit().await?;
            Ok(Some(last))
        })
        .await?;
        match step {
            None => return Err(lease_lost()),
            Some(Some(last)) => {
                ctx.made_progress().await;
                crate::crash_point::crash_point("folding.after_batch");
                after = Some(last)
            }
            Some(None) => return Ok(()),
        }
    }
}

async fn set_strategy(ctx: &StageContext, strategy: RolesStrategy) -> sqlx::Result<()> {
    db::retry("recording the roles strategy", || db::exports::set_roles_strategy(&ctx.pool, ctx.export.id, strategy))
        .await
}

async fn list_roles(ctx: &StageContext) -> Result<(), StageError> {
    let roles = patiently(ctx, || ctx.client.get_all::<RolesPage>("GET /api/v2/roles", &["roles"], &ctx.stats)).await?;
    db::retry("storing roles", || async {
        let mut conn = ctx.pool.acquire().await?;
        db::roles::store_roles(&mut conn, ctx.export.id, &roles).await
    })
    .await?;
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
        let page = patiently(ctx, || {
            ctx.client.get::<RoleMembersPage>("GET /api/v2/roles/{id}/users", url.clone(), &ctx.stats)
        });
        let page = match page.await {
            Ok(page) => page,
            // Deleted since it was listed: nobody holds it any more.
            Err(Auth0Error::NotFound(_)) => RoleMembersPage { users: vec![], next: None },
            Err(e) => return Err(e.into()),
        };
        let users: Vec<String> = page.users.into_iter().map(|u| u.user_id).collect();
        // An empty page with a cursor would loop forever; treat it as the end.
        let next = page.next.filter(|n| !n.is_empty() && !users.is_empty());
        db::retry("storing a page of role members", || {
            db::roles::store_members_page(&ctx.pool, ctx.export.id, &role_id, &users, next.as_deref())
        })
        .await?;
        ctx.made_progress().await;
        match next {
            Some(n) => from = Some(n),
            None => return Ok(()),
        }
    }
}
