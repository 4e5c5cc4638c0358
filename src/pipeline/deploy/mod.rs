//! Deploying a push: analyse → pin → secrets → release → install → health gate → switch.
//!
//! [`Deployer::push`] runs inside the pre-receive hook (between "objects received" and "ref updated"),
//! streaming one `-----> step` line per stage with its timing. Any error rejects the push: the ref does
//! not move and the previous release keeps serving, because the route is only switched after the new
//! release passed its health gate. Secret values are decrypted into memory, handed to the server's
//! environment, and otherwise only ever appear as names and keyed digests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::analyse::{Tree, analyse};
use super::registry::{Registries, pin};
use super::secrets::{AgeIdentity, AppKeyId, KeySource, SECRETS_PATH, Secrets};
use super::source::CommitTree;
use crate::datadir::DataDir;
use crate::gateway::{AppLogs, AppRoute, Gateway, LogKind, Primed, ServerEra};
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::{Plan, RuntimeKind, Source};
use crate::runtime::routes::RouteTable;
use crate::runtime::{LocalRuntime, Runtime, StageRequest};
use crate::store::{ReleaseRecord, ReleaseStatus, Store, now};

/// Everything a deploy needs, shared by all pushes. Built once from [`DeployerParts`]; nothing is set
/// after construction.
pub struct Deployer {
    dir: DataDir,
    store: Store,
    /// The daemon's age identity: decrypts each app's secrets, derives per-purpose keys.
    pub age: AgeIdentity,
    /// Sandboxed processes on this host: where releases run unless they run on Fly.
    pub local: Arc<LocalRuntime>,
    /// The Fly Machines runtime, when `[runtime.fly]` is configured.
    pub fly: Option<Arc<crate::runtime::fly::FlyRuntime>>,
    registries: Registries,
    http: reqwest::Client,
    gateway: Arc<Gateway>,
    routes: Arc<RouteTable>,
    logs: Arc<AppLogs>,
    /// `http://HOST:PORT` as clients reach the daemon.
    public_url: String,
    /// `ssh -p PORT git@HOST`, for hints.
    ssh_command: String,
    policy: DeployPolicy,
    /// `[deploy.enrich]`: fills missing env var descriptions from a chat API (off when `None`).
    enrich: Option<Arc<super::enrich::Enricher>>,
}

/// The operator's choices every release is deployed with.
#[derive(Debug, Clone, Default)]
pub struct DeployPolicy {
    /// Per-token rate limit applied to every deployed app.
    pub rate_limit: Option<crate::gateway::RateLimit>,
    /// `Origin` values allowed for every app (besides the public URL and each app's own list).
    pub extra_origins: Vec<String>,
    /// Runtime of apps that do not choose one (`[runtime] default`).
    pub default_runtime: RuntimeKind,
    /// Whether an app's catwalk.toml may choose its runtime (`[runtime] allow_app_choice`).
    pub allow_app_choice: bool,
}

/// What a [`Deployer`] is made of.
pub struct DeployerParts {
    pub dir: DataDir,
    pub store: Store,
    pub age: AgeIdentity,
    pub local: LocalRuntime,
    pub fly: Option<Arc<crate::runtime::fly::FlyRuntime>>,
    pub registries: Registries,
    pub gateway: Arc<Gateway>,
    pub routes: Arc<RouteTable>,
    pub public_url: String,
    pub ssh_command: String,
    pub policy: DeployPolicy,
    pub enrich: Option<Arc<super::enrich::Enricher>>,
}

/// One push to deploy.
pub struct PushDeploy {
    pub app: AppName,
    pub commit: String,
    pub pusher: String,
    /// Git's quarantine object directories (the pushed objects live there until accepted).
    pub quarantine: Vec<PathBuf>,
    pub dry_run: bool,
    /// `-o async`: return once validated, deploy in the background.
    pub detach: bool,
}

/// How a push ended when it did not fail.
pub enum Outcome {
    Live {
        version: u32,
    },
    /// Validated only; nothing deployed (the hook rejects the ref update so nothing changes).
    DryRun,
    /// Validated; the rest of the deploy is `finish`, for the caller to run in the background while it
    /// still holds the app's lock (so the next push waits for it, and says so).
    Detached {
        version: u32,
        finish: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    },
}

/// A release ready to install: plan pinned, secrets decrypted.
struct Prepared {
    release: ReleaseRecord,
    secrets: Secrets,
}

impl Deployer {
    pub fn new(parts: DeployerParts) -> Deployer {
        let DeployerParts {
            dir,
            store,
            age,
            local,
            fly,
            registries,
            gateway,
            routes,
            public_url,
            ssh_command,
            policy,
            enrich,
        } = parts;
        Deployer {
            dir,
            store,
            age,
            local: Arc::new(local),
            fly,
            registries,
            http: reqwest::Client::builder()
                .user_agent(concat!("catwalk/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            logs: gateway.logs().clone(),
            gateway,
            routes,
            public_url,
            ssh_command,
            policy,
            enrich,
        }
    }

    /// Deploys a push (see the module docs). `Err` is the message that rejects the push. The caller holds
    /// the app's lock (`platform::Platform::lock_app`), and keeps it while a detached deploy finishes.
    pub async fn push(self: &Arc<Self>, req: PushDeploy, progress: Progress) -> Result<Outcome, String> {
        let repo = self.dir.repo(&req.app);
        let quarantine: Vec<&Path> = req.quarantine.iter().map(PathBuf::as_path).collect();
        let tree = CommitTree::open(&repo, &quarantine, &req.commit)?;
        let plan = analyse(&tree)?;
        let secrets_file = tree.read(SECRETS_PATH);
        let prepared =
            self.prepare(&req.app, &req.commit, &req.pusher, plan, secrets_file, None, &progress).await?;
        if req.dry_run {
            progress.step("dry run: the plan is valid; nothing was deployed and the ref was not updated");
            for line in plan_lines(&prepared.release.plan) {
                progress.detail(line);
            }
            return Ok(Outcome::DryRun);
        }
        // Repository sources are unpacked now, while the quarantined objects are readable.
        if prepared.release.plan.source == Source::Repository {
            let src = self.release_dir(&req.app, prepared.release.version).join("src");
            let _ = std::fs::remove_dir_all(&src);
            std::fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
            tree.export(&src)?;
        }
        drop(tree);
        let version = prepared.release.version;
        self.store.put_release(&prepared.release).map_err(|e| e.to_string())?;
        if req.detach {
            progress.step(format!(
                "async: release v{version} continues in the background; follow it with: {} logs {} -f",
                self.ssh_command, req.app
            ));
            let this = self.clone();
            let app = req.app.clone();
            let finish = Box::pin(async move {
                let logs = this.logs.clone();
                let name = app.to_string();
                // The same lines a pusher would have seen, into the app's log (`logs APP -f`).
                let sink = Progress::to_lines(move |line| logs.push(&name, LogKind::Event, &line));
                if let Err(e) = this.finish(&app, prepared, &sink).await {
                    sink.error(format!("release v{version} failed: {e}"));
                }
            });
            return Ok(Outcome::Detached { version, finish });
        }
        let version = self.finish(&req.app, prepared, &progress).await?;
        Ok(Outcome::Live { version })
    }

    /// Analysis, pinning and secrets: everything that can reject a push before anything runs.
    /// `plan` comes from the commit's manifests (or the rolled-back release), `secrets_file` is the
    /// commit's `.catwalk/secrets.age`. (Both are read before any await: git2 handles are not `Sync`.)
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        app: &AppName,
        commit: &str,
        pusher: &str,
        mut plan: Plan,
        secrets_file: Option<Vec<u8>>,
        rollback_of: Option<&ReleaseRecord>,
        progress: &Progress,
    ) -> Result<Prepared, String> {
        let started = Instant::now();
        let short = &commit[..commit.len().min(7)];
        let mut timings = Vec::new();
        if let Source::Package { registry, name, version } = &mut plan.source
            && rollback_of.is_none()
        {
            let was_pinned = version.is_some();
            let pinned =
                pin(&self.http, &self.registries, Some(&self.store), *registry, name, version.as_deref())
                    .await?;
            *version = Some(pinned.version);
            let how = if was_pinned { "pinned by the manifest" } else { "pinned" };
            progress.step(format!("analysing {short}: {} → {} ({how})", plan.manifest, plan.describe()));
        } else {
            progress.step(format!("analysing {short}: {} → {}", plan.manifest, plan.describe()));
        }
        timings.push(("analyse".to_string(), started.elapsed().as_millis() as u64));
        // Rollbacks re-use a plan that was already enriched (or not) when it was first pushed.
        if let Some(enricher) = self.enrich.as_ref().filter(|_| rollback_of.is_none()) {
            let started = Instant::now();
            if let Some(line) = enricher.enrich(app.as_str(), &mut plan).await {
                progress.step(line);
                timings.push(("enrich".to_string(), started.elapsed().as_millis() as u64));
            }
        }

        let record = self.store.app(app.as_str()).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!("app {app} was destroyed while this push was being prepared; push again to create it")
        })?;
        let key_id = AppKeyId { app: app.as_str(), incarnation: &record.incarnation };
        // A rollback re-opens the file its release was deployed with, the same way it was opened then.
        let daemon_wide_allowed = rollback_of.is_some_and(|r| r.secrets_key == KeySource::DaemonWide);
        let (secrets, secrets_key) = match secrets_file {
            Some(bytes) => self.age.open_for(key_id, &bytes, daemon_wide_allowed)?,
            None => (Secrets::new(), KeySource::App),
        };
        let missing: Vec<&str> = plan
            .env
            .iter()
            .filter(|e| e.required && e.value.is_none() && !secrets.contains_key(&e.name))
            .map(|e| e.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "required env {} missing: add {} to {SECRETS_PATH} (encrypt with: age -r {} -o {SECRETS_PATH} .env)",
                if missing.len() == 1 { "variable is" } else { "variables are" },
                missing.join(", "),
                self.age.app_recipient(key_id)
            ));
        }
        let previous = self.store.live_release(app.as_str()).map_err(|e| e.to_string())?;
        let digests: BTreeMap<String, String> =
            secrets.iter().map(|(k, v)| (k.clone(), self.age.digest(k, v))).collect();
        if !digests.is_empty() {
            let described: Vec<String> = digests
                .iter()
                .map(|(name, d)| match previous.as_ref().and_then(|p| p.secrets.get(name)) {
                    Some(old) if old == d => format!("{name} (unchanged)"),
                    Some(_) => format!("{name} (changed)"),
                    None if previous.is_some() => format!("{name} (new)"),
                    None => name.clone(),
                })
                .collect();
            progress.step(format!("secrets: {} (from {SECRETS_PATH})", described.join(", ")));
        }
        if let Some(prev) = &previous {
            let removed: Vec<&String> = prev.secrets.keys().filter(|k| !digests.contains_key(*k)).collect();
            if !removed.is_empty() {
                progress.step(format!(
                    "secrets removed since v{}: {}",
                    prev.version,
                    removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let version = self.store.next_release_version(app.as_str()).map_err(|e| e.to_string())?;
        let release = ReleaseRecord {
            app: app.to_string(),
            version,
            commit: commit.to_string(),
            plan,
            status: ReleaseStatus::Deploying,
            created_at: now(),
            pusher: pusher.to_string(),
            secrets: digests,
            runtime: RuntimeKind::Local,
            timings,
            introspection: None,
            error: None,
            rollback_of: rollback_of.map(|r| r.version),
            install_dir: rollback_of.and_then(|r| r.install_dir.clone()),
            command: rollback_of.map(|r| r.command.clone()).unwrap_or_default(),
            secrets_key,
        };
        Ok(Prepared { release, secrets })
    }

    /// Stage, switch, promote, commit on the release's runtime. Marks the release failed (and leaves the
    /// old one serving) on error.
    async fn finish(&self, app: &AppName, prepared: Prepared, progress: &Progress) -> Result<u32, String> {
        let Prepared { mut release, secrets } = prepared;
        // The release is already recorded as deploying: a refusal here must mark it failed too.
        release.runtime = match self.runtime_for(&release.plan) {
            Ok(runtime) => runtime,
            Err(e) => return Err(self.failed(app, release, e)),
        };
        match (release.runtime, &self.fly) {
            (RuntimeKind::Fly, Some(fly)) => self.finish_on(fly, app, release, &secrets, progress).await,
            _ => {
                if let Some(n) = release.plan.machines.filter(|n| *n > 1) {
                    progress.step(format!(
                        "note: deploy.machines = {n} applies on Fly; this release runs on this host (a process per client, warm spares)"
                    ));
                }
                self.finish_on(&self.local, app, release, &secrets, progress).await
            }
        }
    }

    /// The same steps on every runtime: stage the release beside the live one (health-gated), switch the
    /// route, record it live, then let the runtime retire what served before.
    async fn finish_on<R: Runtime>(
        &self,
        runtime: &Arc<R>,
        app: &AppName,
        mut release: ReleaseRecord,
        secrets: &Secrets,
        progress: &Progress,
    ) -> Result<u32, String> {
        let live = self
            .store
            .live_release(app.as_str())
            .map_err(|e| e.to_string())?
            .filter(|r| r.runtime == release.runtime)
            .map(|r| r.version);
        // A release built from its repository is built from the exported source (a rollback's source
        // is the rolled-back release's).
        let source_dir = (release.plan.source == Source::Repository)
            .then(|| self.release_dir(app, release.rollback_of.unwrap_or(release.version)).join("src"));
        let store = self.store.clone();
        let checkpoint = move |release: &ReleaseRecord| {
            if let Err(e) = store.put_release(release) {
                tracing::warn!("recording release v{} of {}: {e}", release.version, release.app);
            }
        };
        let request = StageRequest {
            app,
            release: &mut release,
            secrets,
            source_dir,
            live,
            public_url: &self.public_url,
            logs: &self.logs,
            progress,
            checkpoint: &checkpoint,
        };
        let (route, staged) = match runtime.stage(request).await {
            Ok(staged) => staged,
            Err(e) => return Err(self.failed(app, release, e)),
        };
        let primed = runtime.take_primed(&staged);
        self.serve(app, &release.plan, route, primed);
        self.store.put_release(&release).map_err(|e| e.to_string())?;
        self.store.promote_release(app.as_str(), release.version).map_err(|e| e.to_string())?;
        if let Err(e) = runtime.commit(app, &staged, progress).await {
            // The new release serves; the next deploy retires what is left.
            progress.detail(format!("retiring the previous release failed ({e}); the next deploy retries"));
        }
        Ok(self.went_live(app, &release, progress))
    }

    /// Makes `route` (a runtime's, for a release of `plan`) the one `app` serves, with the daemon-wide
    /// origins, rate limit and the app's auth; the gateway adopts what its health gate proved (or what the
    /// release record says it speaks), and new sessions start on warm spares of it.
    fn serve(&self, app: &AppName, plan: &Plan, route: AppRoute, primed: Option<Primed>) {
        self.routes.set(app.as_str(), RoutePolicy::of(self, plan).apply(route));
        if let Some(primed) = primed {
            self.gateway.adopt(app.as_str(), primed);
        }
        self.gateway.warm(app.as_str());
    }

    /// Where a release runs: the app's choice when the operator allows it, else the daemon's default.
    fn runtime_for(&self, plan: &Plan) -> Result<RuntimeKind, String> {
        let runtime = match (plan.runtime, self.policy.allow_app_choice) {
            (Some(r), true) => r,
            (Some(r), false) if r != self.policy.default_runtime => {
                return Err(format!(
                    "this app asks for runtime \"{r}\", but the operator does not let apps choose (runtime.allow_app_choice = false)"
                ));
            }
            _ => self.policy.default_runtime,
        };
        if runtime == RuntimeKind::Fly && self.fly.is_none() {
            return Err(
                "this app asks for runtime \"fly\", but this daemon has no [runtime.fly] configuration"
                    .into(),
            );
        }
        Ok(runtime)
    }

    /// Announces a release that just became live (log event and the pusher's endpoint line).
    fn went_live(&self, app: &AppName, release: &ReleaseRecord, progress: &Progress) -> u32 {
        let on = if release.runtime == RuntimeKind::Fly { " on fly" } else { "" };
        self.logs.push(app.as_str(), LogKind::Event, &format!("release v{} is live{on}", release.version));
        progress.step(format!(
            "live at {}/mcp/{app}   (tokens: {} tokens create {app})",
            self.public_url, self.ssh_command
        ));
        match release.plan.auth {
            crate::gateway::AuthMode::Public => progress.step(format!(
                "WARNING: auth = \"none\": {}/mcp/{app} is PUBLIC: anyone who can reach it may call its \
                 tools without a token (requests are still rate-limited and audited)",
                self.public_url
            )),
            crate::gateway::AuthMode::OAuthAndToken => progress.step(format!(
                "connect Claude, Claude Code, Cursor or VS Code: {} connect {app}",
                self.ssh_command
            )),
            crate::gateway::AuthMode::Token => {}
        }
        release.version
    }

    /// Records a failed release (the previous one keeps serving) and returns the error for the pusher.
    fn failed(&self, app: &AppName, mut release: ReleaseRecord, e: String) -> String {
        release.status = ReleaseStatus::Failed;
        release.error = Some(e.clone());
        let _ = self.store.put_release(&release);
        let on = if release.runtime == RuntimeKind::Fly { " on fly" } else { "" };
        self.logs.push(
            app.as_str(),
            LogKind::Event,
            &format!("release v{} failed{on}: {e}", release.version),
        );
        e
    }

    fn release_dir(&self, app: &AppName, version: u32) -> PathBuf {
        self.dir.app(app).join("releases").join(format!("v{version}"))
    }

    /// (The caller holds the app's lock.) A new release that re-uses release `version`'s plan, install and secrets (default: the one
    /// that was live before the current one). Goes through the same health gate, then moves the
    /// deploy branch to that release's commit so the ref keeps matching the live release.
    pub async fn rollback(
        &self,
        app: &AppName,
        version: Option<u32>,
        by: &str,
        branch: &str,
        progress: &Progress,
    ) -> Result<u32, String> {
        let releases = self.store.releases(app.as_str()).map_err(|e| e.to_string())?;
        let live = releases.iter().find(|r| r.status == ReleaseStatus::Live);
        let target = match version {
            Some(v) => releases.iter().find(|r| r.version == v).ok_or(format!(
                "app {app} has no release v{v} (see `releases {app}`; the last {} are kept)",
                crate::store::RELEASE_RETENTION
            ))?,
            None => releases
                .iter()
                .find(|r| r.status == ReleaseStatus::Superseded && Some(r.version) != live.map(|l| l.version))
                .ok_or(format!("app {app} has no earlier healthy release to roll back to"))?,
        };
        // A local release that became healthy has its command recorded; a Fly release is redeployed
        // from its plan (the machine installs the pinned package), so only its status counts.
        let never_ran = target.runtime != RuntimeKind::Fly && target.command.is_empty();
        if target.status == ReleaseStatus::Failed || never_ran {
            return Err(format!(
                "release v{} never became healthy; roll back to a release that was live",
                target.version
            ));
        }
        let target = target.clone();
        let repo = self.dir.repo(app);
        let secrets_file = CommitTree::open(&repo, &[], &target.commit)?.read(SECRETS_PATH);
        progress.step(format!(
            "rolling back {app} to v{} ({})",
            target.version,
            &target.commit[..7.min(target.commit.len())]
        ));
        let plan = target.plan.clone();
        let prepared =
            self.prepare(app, &target.commit, by, plan, secrets_file, Some(&target), progress).await?;
        self.store.put_release(&prepared.release).map_err(|e| e.to_string())?;
        let version = self.finish(app, prepared, progress).await?;
        move_branch(&repo, branch, &target.commit)?;
        Ok(version)
    }

    /// Puts every app's live release back on its route after a (re)start: decrypts its secrets again
    /// from the release's commit (they are never stored) and marks interrupted deploys failed.
    pub fn restore(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.store.recover_releases() {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!("{n} deploy(s) were interrupted by a stop of the daemon and are marked failed")
            }
            Err(e) => problems.push(format!("recovering releases: {e}")),
        }
        let apps = match self.store.apps() {
            Ok(apps) => apps,
            Err(e) => return vec![format!("listing apps: {e}")],
        };
        for app in apps {
            let Ok(name) = AppName::parse(&app.name) else { continue };
            match self.restore_app(&name) {
                Ok(Some(v)) => tracing::info!(app = %name, "serving release v{v}"),
                Ok(None) => {}
                Err(e) => problems.push(format!("app {name}: {e}")),
            }
        }
        problems
    }

    fn restore_app(&self, app: &AppName) -> Result<Option<u32>, String> {
        let Some(live) = self.store.live_release(app.as_str()).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if live.runtime == RuntimeKind::Fly {
            // The live machine is found by its metadata (the Fly API is reached in the background).
            let fly = self
                .fly
                .clone()
                .ok_or("the live release runs on fly, but [runtime.fly] is not configured")?;
            let (routes, name, logs) = (self.routes.clone(), app.to_string(), self.logs.clone());
            let policy = RoutePolicy::of(self, &live.plan);
            tokio::spawn(async move {
                match fly.restore_route(&name, &logs).await {
                    Ok(Some(route)) => {
                        routes.set(&name, policy.apply(route));
                    }
                    Ok(None) => tracing::warn!(app = %name, "no live Fly machine found for the live release"),
                    Err(e) => tracing::error!(app = %name, "restoring the Fly route failed: {e}"),
                }
            });
            return Ok(Some(live.version));
        }
        let tree = CommitTree::open(&self.dir.repo(app), &[], &live.commit)?;
        let record =
            self.store.app(app.as_str()).map_err(|e| e.to_string())?.ok_or("the app record is gone")?;
        let key_id = AppKeyId { app: app.as_str(), incarnation: &record.incarnation };
        let secrets = match tree.read(SECRETS_PATH) {
            Some(bytes) => self.age.open_for(key_id, &bytes, live.secrets_key == KeySource::DaemonWide)?.0,
            None => Secrets::new(),
        };
        let route = self.local.restore(app, &live, &secrets, &self.logs)?;
        self.serve(app, &live.plan, route, known_era(&live));
        Ok(Some(live.version))
    }

    /// `restart`: ends the app's sessions and restarts the live release on its runtime; the next request
    /// starts fresh processes. Returns what was done, for the user.
    pub async fn restart(&self, app: &AppName) -> Result<String, String> {
        if self.routes.get(app.as_str()).is_none() {
            return Err(format!("app {app} has no live release to restart"));
        }
        self.gateway.drain_app(app.as_str());
        let live = self.store.live_release(app.as_str()).map_err(|e| e.to_string())?;
        let done = match (live.as_ref().map(|l| l.runtime), &self.fly) {
            (Some(RuntimeKind::Fly), Some(fly)) => fly.restart(app, live.as_ref()).await?,
            _ => self.local.restart(app, live.as_ref()).await?,
        };
        self.logs.push(app.as_str(), LogKind::Event, &done);
        if let Some(known) = live.as_ref().and_then(known_era) {
            self.gateway.adopt(app.as_str(), known);
        }
        self.gateway.warm(app.as_str());
        Ok(format!("{app}: {done}"))
    }

    /// Stops serving `app` on every runtime it ran on and removes its releases (`apps destroy`).
    pub async fn destroy(&self, app: &AppName) -> Result<(), String> {
        let releases = self.store.releases(app.as_str()).map_err(|e| e.to_string())?;
        if releases.iter().any(|r| r.runtime == RuntimeKind::Fly)
            && let Some(fly) = &self.fly
        {
            fly.destroy(app).await?;
        }
        self.routes.remove(app.as_str());
        self.gateway.drain_app(app.as_str());
        self.local.destroy(app).await?;
        // The app's directory is left to the caller (`platform::erase`), which moves it aside atomically
        // before the store forgets the app.
        self.store.delete_releases(app.as_str()).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Moves `refs/heads/BRANCH` of a bare repository to `commit` (rollbacks keep ref == live release).
fn move_branch(repo: &Path, branch: &str, commit: &str) -> Result<(), String> {
    let repo = git2::Repository::open_bare(repo).map_err(|e| e.message().to_string())?;
    let oid = git2::Oid::from_str(commit).map_err(|e| e.message().to_string())?;
    repo.reference(&format!("refs/heads/{branch}"), oid, true, "catwalk rollback")
        .map_err(|e| format!("moving {branch} to {commit}: {}", e.message()))?;
    Ok(())
}

/// The plan as `key: value` lines for dry runs.
fn plan_lines(plan: &Plan) -> Vec<String> {
    let mut lines = vec![format!("source: {}", plan.describe())];
    lines.push(format!("entry: {:?}", plan.entry));
    if !plan.args.is_empty() {
        lines.push(format!("args: {}", plan.args.join(" ")));
    }
    lines.extend(plan.env.iter().map(|e| format!("env {}", e.summary())));
    lines
}

/// What the deployer adds to every runtime's route: the app's origins plus the daemon-wide ones, the
/// daemon's rate limit, the app's auth mode.
struct RoutePolicy {
    allowed_origins: Vec<String>,
    rate_limit: Option<crate::gateway::RateLimit>,
    auth: crate::plan::AuthMode,
}

impl RoutePolicy {
    fn of(deployer: &Deployer, plan: &Plan) -> RoutePolicy {
        RoutePolicy {
            allowed_origins: plan
                .allowed_origins
                .iter()
                .chain(&deployer.policy.extra_origins)
                .cloned()
                .collect(),
            rate_limit: deployer.policy.rate_limit,
            auth: plan.auth,
        }
    }

    fn apply(self, route: AppRoute) -> AppRoute {
        AppRoute {
            allowed_origins: self.allowed_origins,
            rate_limit: self.rate_limit,
            auth: self.auth,
            ..route
        }
    }
}

/// What a release's record says its stdio server speaks (learnt by its health gate), so serving it again
/// after a restart needs no probe.
fn known_era(release: &ReleaseRecord) -> Option<Primed> {
    let modern = release.introspection.as_ref()?.speaks_2026_07_28?;
    Some(Primed::era_only(if modern { ServerEra::Modern } else { ServerEra::Handshake }))
}
