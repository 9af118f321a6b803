//! Stage `enriching`: roles and MFA factors for every stored user, under the tenant's rate limit.
//!
//! Role enumeration and the per-user MFA pass run side by side so the limiter, not latency, sets
//! the pace. Results are written in batches that double as checkpoints: a resumed stage only
//! visits users still pending.

use std::{pin::pin, time::Duration};

use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::Value;

use super::{incremental, patiently, roles, StageContext, StageError, Step};
use crate::{
    auth0::{
        types::{MethodsPage, RolesPage},
        Auth0Error,
    },
    db::{
        self,
        exports::{Counter, RolesStrategy},
        profiles::{Pass, UserEnrichment},
    },
    model::Enrich,
    queue::JobKind,
};

/// Users read from the database per page of a pass.
const USER_PAGE: i64 = 500;
/// Results are written at least this often, so progress stays live at low rates.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Seconds of Auth0 latency the in-flight window must cover (with headroom) to keep the pipe full.
const LATENCY_BUDGET: f64 = 0.6;

#[tracing::instrument(skip_all)]
pub async fn run(ctx: &StageContext) -> Result<Step, StageError> {
    let enrich = ctx.export.request.enrich;
    let users = db::retry("counting users", || async {
        let mut conn = ctx.pool.acquire().await?;
        db::profiles::count(&mut conn, ctx.export.id).await
    })
    .await?;
    let in_flight = in_flight_target(ctx);
    // An export with a base copies the MFA data of users who cannot have changed.
    let incremental = incremental::prepare(ctx).await?;

    // Roles are enumerated first (one call per 100 members, a small share of the calls), so the
    // MFA pass can write each user's roles in the same update as its factors: one write per row.
    let strategy = match enrich.roles && !ctx.export.roles_fetched {
        true => Some(roles::enumerate(ctx, users, in_flight).await?),
        false => None,
    };
    let by_role = strategy == Some(RolesStrategy::ByRole);
    let roles = async {
        match strategy {
            Some(RolesStrategy::PerUser) => per_user_pass(ctx, Pass::Roles, enrich, in_flight, false).await,
            _ => Ok(()),
        }
    };
    let mfa = async {
        if !enrich.any_mfa() {
            return Ok(());
        }
        per_user_pass(ctx, Pass::Mfa, enrich, in_flight, by_role).await?;
        // Factors changed while this export ran may postdate what was copied or fetched.
        if incremental && incremental::reopen_changed_during_run(ctx).await? > 0 {
            per_user_pass(ctx, Pass::Mfa, enrich, in_flight, by_role).await?;
        }
        Ok(())
    };
    tokio::try_join!(roles, mfa)?;
    if ctx.stop.is_cancelled() {
        return Err(StageError::Interrupted);
    }
    if by_role {
        // Rows the MFA pass did not write (roles only, or written before roles were known).
        roles::fold(ctx).await?;
    }

    // Users need no per-user call when only roles were asked for: checkpoint them all.
    db::retry("checkpointing the remaining users", || async {
        let mut tx = ctx.pool.begin().await?;
        let rest = db::profiles::mark_all_enriched(&mut tx, ctx.export.id).await?;
        ctx.commit_batch(tx, Counter::Enriched, rest).await
    })
    .await?;
    Ok(Step::Advance(Some(JobKind::Finalize)))
}

/// Calls in flight: rate × latency budget, so waiting on Auth0 never idles the limiter.
fn in_flight_target(ctx: &StageContext) -> usize {
    ctx.settings
        .enrich_concurrency
        .unwrap_or_else(|| (ctx.client.tenant.rate_limit * LATENCY_BUDGET).ceil() as usize)
        .clamp(4, 256)
}

/// Visits every pending user of the pass with bounded concurrency, writing results in batches.
/// `with_roles`: role memberships are complete, and each stored user gets its roles too.
async fn per_user_pass(
    ctx: &StageContext,
    pass: Pass,
    enrich: Enrich,
    in_flight: usize,
    with_roles: bool,
) -> Result<(), StageError> {
    let calls_per_user = match pass {
        Pass::Roles => 1,
        Pass::Mfa => {
            [enrich.authentication_methods, enrich.authenticators, enrich.enrollments].iter().filter(|b| **b).count()
        }
    };
    let concurrency = in_flight.div_ceil(calls_per_user.max(1)).max(1);
    let pool = ctx.pool.clone();
    let export = ctx.export.id;

    // A stop request ends the stream of users: calls in flight finish and are stored.
    let stop = ctx.stop.clone();
    let users = stream::try_unfold(None::<String>, move |after| {
        let pool = pool.clone();
        async move {
            let page = db::retry("reading pending users", || {
                db::profiles::pending_users(&pool, export, pass, after.as_deref(), USER_PAGE)
            })
            .await?;
            Ok::<_, StageError>(page.last().cloned().map(|last| (stream::iter(page.into_iter().map(Ok)), Some(last))))
        }
    })
    .try_flatten()
    .take_until(stop.cancelled_owned());
    let results = users.map_ok(|user_id| fetch_user(ctx, user_id, pass, enrich)).try_buffer_unordered(concurrency);
    let mut results = pin!(results);

    let batch_size = ctx.settings.enrich_batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let outcome = loop {
        tokio::select! {
            next = results.try_next() => match next {
                Ok(Some(Some(user))) => {
                    batch.push(user);
                    if batch.len() >= batch_size {
                        store(ctx, pass, with_roles, &mut batch).await?;
                    }
                }
                // Stopped before its call was sent: still pending, nothing paid.
                Ok(Some(None)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
            _ = tick.tick() => store(ctx, pass, with_roles, &mut batch).await?,
        }
    };
    // Every answer received is stored, whatever ended the pass.
    store(ctx, pass, with_roles, &mut batch).await?;
    outcome?;
    if ctx.stop.is_cancelled() {
        return Err(StageError::Interrupted);
    }
    Ok(())
}

/// Writes a batch with its progress, waiting out database outages: the answers are paid for.
async fn store(
    ctx: &StageContext,
    pass: Pass,
    with_roles: bool,
    batch: &mut Vec<UserEnrichment>,
) -> Result<(), StageError> {
    if batch.is_empty() {
        return Ok(());
    }
    let users: &[UserEnrichment] = batch;
    db::retry("storing enrichment results", move || async move {
        let mut tx = ctx.pool.begin().await?;
        let new = db::profiles::store_enrichments(&mut tx, ctx.export.id, pass, with_roles, users).await?;
        // Only the MFA pass checkpoints users (`enriched_at`); the roles pass is not the progress measure.
        ctx.commit_batch(tx, Counter::Enriched, if pass == Pass::Mfa { new } else { 0 }).await
    })
    .await?;
    batch.clear();
    // The roles pass counts no users as enriched, but its stored answers are progress too.
    ctx.made_progress().await;
    crate::crash_point::crash_point("enriching.after_batch");
    Ok(())
}

/// One user's calls for the pass, concurrently. A user deleted since the export (404) keeps
/// its exported fields and is marked `user_not_found`.
/// `None` when the stage was stopped before the user's calls were sent.
async fn fetch_user(
    ctx: &StageContext,
    user_id: String,
    pass: Pass,
    enrich: Enrich,
) -> Result<Option<UserEnrichment>, StageError> {
    let mut out = UserEnrichment { user_id, ..Default::default() };
    let fetched = match pass {
        Pass::Roles => patiently(ctx, || fetch_roles(ctx, &out.user_id)).await.map(|roles| out.roles = Some(roles)),
        Pass::Mfa => {
            let id = out.user_id.as_str();
            let (methods, authenticators, enrollments) = tokio::join!(
                maybe(ctx, enrich.authentication_methods, || fetch_methods(ctx, id)),
                maybe(ctx, enrich.authenticators, || {
                    fetch_list(ctx, id, "authenticators", "GET /api/v2/users/{id}/authenticators")
                }),
                maybe(ctx, enrich.enrollments, || {
                    fetch_list(ctx, id, "enrollments", "GET /api/v2/users/{id}/enrollments")
                }),
            );

            (|| -> Result<(), Auth0Error> {
                out.authentication_methods = methods?;
                out.authenticators = authenticators?;
                out.enrollments = enrollments?;
                out.has_mfa = Some(has_confirmed_factor(&out));
                Ok(())
            })()
        }
    };
    match fetched {
        Ok(()) => Ok(Some(out)),
        // A stopped user stays pending; answers of the others in this batch are still stored.
        Err(Auth0Error::Stopped) => Ok(None),
        // Gone since the export: it has no roles or factors any more.
        Err(Auth0Error::NotFound(_)) => {
            let none = |wanted: bool| wanted.then(|| Value::Array(vec![]));
            Ok(Some(match pass {
                Pass::Roles => UserEnrichment { roles: none(true), ..gone(out.user_id) },
                Pass::Mfa => UserEnrichment {
                    authentication_methods: none(enrich.authentication_methods),
                    authenticators: none(enrich.authenticators),
                    enrollments: none(enrich.enrollments),
                    has_mfa: Some(false),
                    ..gone(out.user_id)
                },
            }))
        }
        Err(e) => Err(e.into()),
    }
}

fn gone(user_id: String) -> UserEnrichment {
    UserEnrichment { user_id, error: Some("user_not_found".into()), ..Default::default() }
}

/// One of the user's calls when it was asked for, waiting out Auth0 outages.
async fn maybe<F, Fut>(ctx: &StageContext, wanted: bool, call: F) -> Result<Option<Value>, Auth0Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value, Auth0Error>>,
{
    if !wanted {
        return Ok(None);
    }
    patiently(ctx, call).await.map(Some)
}

/// `GET /users/{id}/roles`, sorted by name in byte order like the by-role path.
async fn fetch_roles(ctx: &StageContext, user_id: &str) -> Result<Value, Auth0Error> {
    let mut roles = ctx
        .client
        .get_all::<RolesPage>("GET /api/v2/users/{id}/roles", &["users", user_id, "roles"], &ctx.stats)
        .await?;
    roles.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(serde_json::to_value(roles).expect("roles serialise"))
}

/// `GET /users/{id}/authentication-methods`, every page, items unchanged.
async fn fetch_methods(ctx: &StageContext, user_id: &str) -> Result<Value, Auth0Error> {
    let segments = ["users", user_id, "authentication-methods"];
    let items = ctx
        .client
        .get_all::<MethodsPage>("GET /api/v2/users/{id}/authentication-methods", &segments, &ctx.stats)
        .await?;
    Ok(Value::Array(items))
}

/// A bare-array endpoint (`/authenticators`, `/enrollments`).
async fn fetch_list(
    ctx: &StageContext,
    user_id: &str,
    what: &str,
    endpoint: &'static str,
) -> Result<Value, Auth0Error> {
    let url = ctx.client.api_url(&["users", user_id, what], &[]);
    let items: Vec<Value> = ctx.client.get(endpoint, url, &ctx.stats).await?;
    Ok(Value::Array(items))
}

/// At least one confirmed factor that is not a password or an email verification.
fn has_confirmed_factor(u: &UserEnrichment) -> bool {
    let is_factor =
        |item: &Value| !matches!(item.get("type").and_then(Value::as_str), Some("password" | "email-verification"));
    let confirmed = |list: &Option<Value>| {
        list.as_ref().and_then(Value::as_array).is_some_and(|items| {
            items.iter().any(|i| is_factor(i) && i.get("confirmed").and_then(Value::as_bool) == Some(true))
        })
    };
    let enrolled = u
        .enrollments
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|items| items.iter().any(|i| i.get("status").and_then(Value::as_str) == Some("confirmed")));
    confirmed(&u.authentication_methods) || confirmed(&u.authenticators) || enrolled
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn password_and_unconfirmed_factors_do_not_count() {
        let mut u = UserEnrichment {
            authentication_methods: Some(json!([
                {"id": "password|1", "type": "password", "confirmed": true},
                {"id": "email-verification|1", "type": "email-verification", "confirmed": true},
                {"id": "totp|1", "type": "totp", "confirmed": false}
            ])),
            ..Default::default()
        };
        assert!(!has_confirmed_factor(&u));
        u.enrollments = Some(json!([{"id": "dev_1", "status": "confirmed"}]));
        assert!(has_confirmed_factor(&u));
        u.enrollments = None;
        u.authenticators = Some(json!([{"id": "push|1", "type": "push", "confirmed": true}]));
        assert!(has_confirmed_factor(&u));
    }
}
