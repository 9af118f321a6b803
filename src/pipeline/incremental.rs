//! Incremental exports: the users whose MFA factors may have changed since the base, read from
//! the tenant logs; every other user's factors are copied from the base. Roles are always
//! enumerated afresh (cheap), never copied.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{patiently, StageContext, StageError};
use crate::{
    auth0::Auth0Error,
    db::{self, exports::Counter},
};

/// Log records per checkpoint page (Auth0's maximum `take`).
const TAKE: &str = "100";

/// MFA events that name their user in `user_id`.
const USER_MFA_EVENTS: [&str; 4] =
    ["gd_enrollment_complete", "gd_unenroll", "gd_update_device_account", "gd_recovery_succeed"];

/// Management API paths under a user that change its factors.
const USER_MFA_PATHS: [&str; 4] =
    ["authentication-methods", "authenticators", "multifactor", "recovery-code-regeneration"];

/// The newest tenant log id, read before the Auth0 job is created so that a later export can
/// read every change since. `None` when the logs cannot be read (the `read:logs` scope).
pub async fn checkpoint(ctx: &StageContext) -> Result<Option<String>, StageError> {
    let url = ctx.client.api_url(&["logs"], &[("per_page", "1"), ("sort", "date:-1")]);
    match patiently(ctx, || ctx.client.get::<Vec<Value>>("GET /api/v2/logs", url.clone(), &ctx.stats)).await {
        // An empty tenant log: every later record is new.
        Ok(logs) => Ok(Some(logs.first().and_then(|l| l["log_id"].as_str()).unwrap_or_default().to_owned())),
        Err(Auth0Error::Permanent { status: 401 | 403, message }) => {
            tracing::warn!(%message, "tenant logs unreadable; this export cannot be built on incrementally");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// What the logs since a checkpoint say.
pub enum Scan {
    /// Users whose factors may have changed, and Guardian enrollment ids whose user the base knows.
    Dirty { users: BTreeSet<String>, enrollments: BTreeSet<String> },
    /// Nothing short of a full re-enrichment is safe, for this reason.
    Full(String),
}

/// Reads every tenant log record after `from` by checkpoint paging.
pub async fn scan(ctx: &StageContext, from: &str) -> Result<Scan, StageError> {
    let (mut users, mut enrollments) = (BTreeSet::new(), BTreeSet::new());
    let mut from = from.to_owned();
    loop {
        let query: Vec<(&str, &str)> =
            if from.is_empty() { vec![("take", TAKE)] } else { vec![("from", from.as_str()), ("take", TAKE)] };
        let url = ctx.client.api_url(&["logs"], &query);
        let page =
            match patiently(ctx, || ctx.client.get::<Vec<Value>>("GET /api/v2/logs", url.clone(), &ctx.stats)).await {
                Ok(page) => page,
                Err(Auth0Error::Permanent { status: 400 | 404, message }) => {
                    return Ok(Scan::Full(format!("the tenant log checkpoint was rejected ({message})")))
                }
                Err(Auth0Error::Permanent { status: 401 | 403, message }) => {
                    return Ok(Scan::Full(format!("the tenant logs cannot be read ({message})")))
                }
                Err(e) => return Err(e.into()),
            };
        let Some(last) = page.last().and_then(|r| r["log_id"].as_str()).map(str::to_owned) else { break };
        for record in &page {
            if let Some(reason) = classify(record, &mut users, &mut enrollments) {
                return Ok(Scan::Full(reason));
            }
        }
        if ctx.stop.is_cancelled() {
            return Err(StageError::Interrupted);
        }
        from = last;
    }
    Ok(Scan::Dirty { users, enrollments })
}

/// Notes the user (or Guardian enrollment) a record says changed; a reason when the record
/// changes what cannot be traced to users (a tenant-wide MFA setting, a bulk import).
fn classify(record: &Value, users: &mut BTreeSet<String>, enrollments: &mut BTreeSet<String>) -> Option<String> {
    let kind = record["type"].as_str().unwrap_or_default();
    if USER_MFA_EVENTS.contains(&kind) || kind.starts_with("my_account_authentication_method") {
        if let Some(user) = record["user_id"].as_str().filter(|u| !u.is_empty()) {
            users.insert(user.to_owned());
        }
        return None;
    }
    if kind == "sui" {
        return Some("a bulk user import ran since the base export".into());
    }
    if kind != "sapi" {
        return None;
    }
    let path = record["details"]["request"]["path"].as_str().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["api", "v2", "users", user, what, ..] if USER_MFA_PATHS.contains(&what) => {
            users.insert(user.to_owned());
        }
        ["api", "v2", "guardian", "enrollments", enrollment] => {
            enrollments.insert(enrollment.to_owned());
        }
        ["api", "v2", "guardian", ..] => {
            let method = record["details"]["request"]["method"].as_str().unwrap_or_default().to_uppercase();
            return Some(format!("a tenant-wide MFA change ({method} {path}) since the base export"));
        }
        _ => {}
    }
    None
}

/// Prepares an incremental enrichment: decides between incremental and full (recorded on the
/// export) and, when incremental, copies the base's MFA data into every user that cannot have
/// changed, so the per-user pass visits only the others. True when incremental.
pub async fn prepare(ctx: &StageContext) -> Result<bool, StageError> {
    let export = &ctx.export;
    let Some(base_id) = export.base_id else { return Ok(false) };
    if export.mode.as_deref() == Some("full") || !export.request.enrich.any_mfa() {
        return set_mode(
            ctx,
            export.mode.is_none().then_some("no MFA data is fetched: only roles, which are always refetched"),
        )
        .await;
    }
    let base = db::retry("reading the base export", || db::exports::get(&ctx.pool, base_id)).await?;
    let decision = match base {
        None => Err("the base export was deleted".to_owned()),
        Some(base) => match base.log_checkpoint {
            None => Err("the base export took no tenant log checkpoint".to_owned()),
            Some(from) => {
                let retention = ctx.client.tenant.log_retention;
                let taken = base.started_at.unwrap_or(base.created_at);
                if chrono::Utc::now() - taken > chrono::Duration::from_std(retention).unwrap_or(chrono::TimeDelta::MAX)
                {
                    Err(format!(
                        "the base export is older than the tenant's log retention ({} h)",
                        retention.as_secs() / 3600
                    ))
                } else {
                    Ok(from)
                }
            }
        },
    };
    let from = match decision {
        Ok(from) => from,
        Err(reason) => return set_mode(ctx, Some(&reason)).await,
    };
    let (users, enrollments) = match scan(ctx, &from).await? {
        Scan::Full(reason) => return set_mode(ctx, Some(&reason)).await,
        Scan::Dirty { users, enrollments } => (users, enrollments),
    };
    let mut dirty: Vec<String> = users.into_iter().collect();
    for enrollment in &enrollments {
        let owners =
            db::retry("tracing an enrollment", || db::incremental::users_with_factor(&ctx.pool, base_id, enrollment))
                .await?;
        if owners.is_empty() {
            return set_mode(
                ctx,
                Some(&format!("a removed Guardian enrollment ({enrollment}) is unknown to the base")),
            )
            .await;
        }
        dirty.extend(owners);
    }
    let total = export.users_total.unwrap_or(0);
    if dirty.len() as i64 >= total && total > 0 {
        return set_mode(ctx, Some("more users may have changed than a full run would fetch")).await;
    }

    // Copy in bounded batches: short transactions, each a checkpoint of its own.
    let mut after: Option<String> = None;
    loop {
        let (copied, last) = db::retry("copying MFA data from the base", || async {
            let mut tx = ctx.pool.begin().await?;
            let (copied, last) = db::incremental::copy_base_mfa(
                &mut tx,
                export.id,
                base_id,
                &dirty,
                after.as_deref(),
                ctx.settings.fold_batch.max(1) as i64,
            )
            .await?;
            ctx.commit_batch(tx, Counter::Enriched, copied).await?;
            Ok((copied, last))
        })
        .await?;
        tracing::debug!(copied, "copied MFA data from the base");
        match last {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let refetch =
        db::retry("counting users to refetch", || db::incremental::pending_count(&ctx.pool, export.id)).await?;
    db::retry("recording the mode", || db::exports::set_mode(&ctx.pool, export.id, None, Some(refetch))).await?;
    tracing::info!(refetch, "incremental export: MFA fetched again only for users who may have changed");
    Ok(true)
}

/// Records that the export runs in full, and why (`None`: the decision was made before).
async fn set_mode(ctx: &StageContext, full_reason: Option<&str>) -> Result<bool, StageError> {
    if let Some(reason) = full_reason {
        tracing::info!(%reason, "export with a base runs in full");
        let refetched = ctx.export.users_total.unwrap_or(0);
        db::retry("recording the mode", || {
            db::exports::set_mode(&ctx.pool, ctx.export.id, Some(reason), Some(refetched))
        })
        .await?;
    }
    Ok(false)
}

/// After the per-user pass: users whose factors changed during the run (logged after this
/// export's own checkpoint) are made pending again. Returns how many.
pub async fn reopen_changed_during_run(ctx: &StageContext) -> Result<u64, StageError> {
    let Some(from) = ctx.export.log_checkpoint.clone() else { return Ok(0) };
    let users = match scan(ctx, &from).await? {
        Scan::Dirty { users, .. } => users.into_iter().collect::<Vec<_>>(),
        // Nothing more can be traced: the export stands as fetched.
        Scan::Full(_) => return Ok(0),
    };
    if users.is_empty() {
        return Ok(0);
    }
    let reopened = db::retry("reopening users changed during the run", || async {
        let mut conn = ctx.pool.acquire().await?;
        db::incremental::reopen(&mut conn, ctx.export.id, &users).await
    })
    .await?;
    Ok(reopened)
}
