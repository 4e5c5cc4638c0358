//! The push gate: what catwalk decides between "objects received" and "ref updated".
//!
//! `git receive-pack` runs the `pre-receive` hook after the pushed objects are in the quarantine
//! directory and before any ref moves; the hook asks the daemon ([`pre_receive`]) over the control socket
//! and git updates the refs only if the answer is "accept". So whatever runs inside [`pre_receive`] runs
//! while the previous ref (and so the previous release) is still in place, and can stream its steps to the
//! pusher through [`Progress`]. That is where the deploy pipeline plugs in (see the marked step below):
//! a pipeline failure becomes a rejection, and the ref on the server keeps naming the live release.
//!
//! [`post_receive`] runs after the refs moved and only prints the summary.

use std::sync::Arc;

use super::{Platform, PlatformError};
use crate::git::hook::{QuarantineEnv, RefUpdate};
use crate::git::locks::{PushSession, short_sha};
use crate::identity::Identity;
use crate::output::Progress;
use crate::pipeline::deploy::Outcome;
use crate::store::{AppRecord, PushRecord, now};

/// Everything the gate knows about one push.
pub struct PushContext<'a> {
    pub platform: &'a Platform,
    pub push: Arc<PushSession>,
    pub updates: Vec<RefUpdate>,
    /// `git push -o key=value` options, in order.
    pub options: Vec<String>,
    pub quarantine: QuarantineEnv,
    /// Streams lines to the pusher (they appear as `remote:` lines).
    pub progress: Progress,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refused, with the reason shown to the pusher and recorded.
    Reject(String),
}

/// Decides whether the push may update its refs; records every pushed ref with the verdict.
pub async fn pre_receive(ctx: &PushContext<'_>) -> Verdict {
    let app = &ctx.push.app;
    let who = &ctx.push.pusher;
    let progress = &ctx.progress;
    let verdict = match check(ctx) {
        Err(reason) => Verdict::Reject(reason),
        Ok(update) => {
            ctx.push.set_sha(&update.new);
            progress.step(format!("{app}: received {} from {}", short_sha(&update.new), who.name));
            if !ctx.options.is_empty() {
                // Echoed as one visible line: an option is the pusher's text, escape sequences included.
                progress.detail(crate::terminal_text::visible(&format!(
                    "push options: {}",
                    ctx.options.join(", ")
                )));
            }
            // The objects of `update.new` are readable through `ctx.quarantine`; the ref has not moved.
            // The pipeline streams its steps through `progress`; any failure becomes a rejection.
            match ensure_app(ctx) {
                Ok(()) => deploy(ctx, update).await,
                Err(e) => Verdict::Reject(e),
            }
        }
    };
    if let Verdict::Reject(reason) = &verdict {
        for line in reason.lines() {
            progress.error(line);
        }
    }
    record(ctx, &verdict);
    verdict
}

/// Prints what was deployed and how to reach it.
pub async fn post_receive(ctx: &PushContext<'_>) {
    // The pipeline already printed the release, its endpoint and the token hint; close with the ref
    // update and the whole push's duration.
    let app = &ctx.push.app;
    for update in ctx.updates.iter().filter(|u| !u.is_delete()) {
        ctx.progress.step(format!(
            "{app}: {} now at {} (push took {:.1}s)",
            branch_of(&update.refname),
            short_sha(&update.new),
            ctx.push.started.elapsed().as_secs_f64()
        ));
    }
}

/// Whether `who` may push to `app` (`None`: the app does not exist yet and would be created).
///
/// A push to a name that another tenant's app holds cannot succeed the way a push to a free name does
/// (that creates the app), so its refusal necessarily says the name is taken, exactly as `apps create`
/// does; it says nothing else: not who owns the app, nor anything about it.
pub fn may_push(who: &Identity, app: Option<&AppRecord>) -> Result<(), String> {
    match app {
        Some(record) if !who.can_manage(record) => Err(name_taken(&record.name)),
        _ => Ok(()),
    }
}

/// The answer for creating an app (by `apps create` or a first push) under a name another tenant's app
/// holds.
pub fn name_taken(app: &str) -> String {
    format!("the app name {app} is taken: choose another name (`apps` lists yours)")
}

/// The policy of this issue: one update, to the deploy branch, not a deletion, by a key with rights.
fn check<'u>(ctx: &'u PushContext<'_>) -> Result<&'u RefUpdate, String> {
    let platform = ctx.platform;
    let app = &ctx.push.app;
    let record = platform.store.app(app.as_str()).map_err(|e| PlatformError::from(e).to_string())?;
    may_push(&ctx.push.pusher, record.as_ref())?;
    let branch = platform.deploy_branch(record.as_ref());
    let deploy_ref = format!("refs/heads/{branch}");
    let mut target = None;
    for update in &ctx.updates {
        if update.refname.starts_with("refs/tags/") {
            return Err(format!(
                "tags are not deployed ({}); push the branch instead: git push catwalk HEAD:{branch}",
                update.refname
            ));
        }
        if update.refname != deploy_ref {
            return Err(format!(
                "catwalk deploys only branch {branch} of {app}; {} was refused.\nPush your work to it with: git push catwalk HEAD:{branch}",
                update.refname
            ));
        }
        if update.is_delete() {
            return Err(format!(
                "deleting {branch}, the deploy branch of {app}, is refused; to remove the app run: apps destroy {app} --confirm {app}"
            ));
        }
        target = Some(update);
    }
    target.ok_or_else(|| "the push updates no ref".to_string())
}

/// Creates the app record on the first accepted push, with the pusher as owner.
/// Runs the deploy pipeline for an accepted update (see `pipeline::deploy`).
async fn deploy(ctx: &PushContext<'_>, update: &RefUpdate) -> Verdict {
    let option = |name: &str| ctx.options.iter().any(|o| o == name || o.strip_prefix(name) == Some("=true"));
    let quarantine = ctx.quarantine.object_dirs();
    let request = crate::pipeline::deploy::PushDeploy {
        app: ctx.push.app.clone(),
        commit: update.new.clone(),
        pusher: ctx.push.pusher.name.clone(),
        quarantine,
        dry_run: option("dry-run"),
        detach: option("async"),
    };
    match ctx.platform.deployer.push(request, ctx.progress.clone()).await {
        Ok(Outcome::DryRun) => {
            Verdict::Reject("dry run (-o dry-run): the push was validated; the ref was not updated".into())
        }
        Ok(Outcome::Live { .. }) => Verdict::Accept,
        Ok(Outcome::Detached { finish, .. }) => {
            // The app's lock goes with the deploy: the next push, rollback or destroy waits for it.
            let guard = ctx.push.take_guard();
            tokio::spawn(async move {
                let _guard = guard;
                finish.await;
            });
            Verdict::Accept
        }
        Err(e) => Verdict::Reject(e),
    }
}

fn ensure_app(ctx: &PushContext<'_>) -> Result<(), String> {
    let store = &ctx.platform.store;
    let app = &ctx.push.app;
    match store.app(app.as_str()) {
        // Created meanwhile (`check` read the store before): the pusher must still be allowed.
        Ok(Some(record)) => may_push(&ctx.push.pusher, Some(&record)),
        Ok(None) => {
            let apps = store.apps().map_err(|e| PlatformError::from(e).to_string())?;
            ctx.push.pusher.may_create_app(&apps, ctx.platform.config.deploy.max_apps_per_deployer)?;
            let pusher = &ctx.push.pusher.name;
            let record = AppRecord::new(app.as_str(), pusher, vec![pusher.clone()]);
            match store.create_app(&record) {
                Ok(()) => {
                    ctx.progress.step(format!("created app {app} (owner: {})", ctx.push.pusher.name));
                    Ok(())
                }
                Err(crate::store::StoreError::Conflict(_)) => Err(name_taken(app.as_str())),
                Err(e) => Err(PlatformError::from(e).to_string()),
            }
        }
        Err(e) => Err(PlatformError::from(e).to_string()),
    }
}

fn record(ctx: &PushContext<'_>, verdict: &Verdict) {
    let verdict = match verdict {
        Verdict::Accept => "accepted".to_string(),
        Verdict::Reject(reason) => format!("rejected: {}", reason.lines().next().unwrap_or_default()),
    };
    for update in &ctx.updates {
        let record = PushRecord {
            seq: 0,
            app: ctx.push.app.to_string(),
            refname: update.refname.clone(),
            old: update.old.clone(),
            new: update.new.clone(),
            key: ctx.push.pusher.name.clone(),
            at: now(),
            options: ctx.options.clone(),
            verdict: verdict.clone(),
        };
        if let Err(e) = ctx.platform.store.record_push(record) {
            tracing::error!("recording a push of {}: {e}", ctx.push.app);
        }
    }
}

fn branch_of(refname: &str) -> &str {
    refname.strip_prefix("refs/heads/").unwrap_or(refname)
}
