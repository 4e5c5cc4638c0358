//! Deploying a push: analyse → pin → secrets → release → install → health gate → switch.
//!
//! [`Deployer::push`] runs inside the pre-receive hook (between "objects received" and "ref updated"),
//! streaming one `-----> step` line per stage with its timing. Any error rejects the push: the ref does
//! not move and the previous release keeps serving, because the route is only switched after the new
//! release passed its health gate. Secret values are decrypted into memory, handed to the server's
//! environment, and otherwise only ever appear as names and keyed digests.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod start;

use super::analyse::{Tree, analyse};
use super::registry::{Registries, pin};
use super::secrets::{AgeIdentity, AppKeyId, KeySource, SECRETS_PATH, Secrets};
use super::source::CommitTree;
use crate::datadir::DataDir;
use crate::gateway::{AppLogs, AppRoute, Gateway, LogKind};
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::{Plan, RuntimeKind, Source};
use crate::runtime::http_server::{self, HttpServer, Lifecycle};
use crate::runtime::install::{self, Installed, Toolchain};
use crate::runtime::routes::RouteTable;
use crate::store::{Introspection, ReleaseRecord, ReleaseStatus, Store, now};

/// Everything a deploy needs, shared by all pushes.
pub struct Deployer {
    pub dir: DataDir,
    pub store: Store,
    pub age: AgeIdentity,
    pub tools: Toolchain,
    pub registries: Registries,
    pub http: reqwest::Client,
    pub gateway: Arc<Gateway>,
    pub routes: Arc<RouteTable>,
    pub logs: Arc<AppLogs>,
    /// `http://HOST:PORT` as clients reach the daemon.
    pub public_url: String,
    /// `ssh -p PORT git@HOST`, for hints.
    pub ssh_command: String,
    pub health_timeout: Duration,
    /// Per-token rate limit applied to every deployed app.
    pub rate_limit: Option<crate::gateway::RateLimit>,
    /// `Origin` values allowed for every app (besides the public URL and each app's own list).
    pub extra_origins: Vec<String>,
    /// The Fly Machines runtime, when `[runtime.fly]` is configured.
    pub fly: Option<Arc<crate::runtime::fly::FlyRuntime>>,
    /// Runtime of apps that do not choose one (`local` or `fly`).
    pub default_runtime: RuntimeKind,
    /// Whether an app's catwalk.toml may choose its runtime.
    pub allow_app_choice: bool,
    /// Start, idle, drain and stop timeouts of local `transport = "http"` servers.
    pub lifecycle: Lifecycle,
    /// Warm spares per stdio app whose manifest does not say (`[deploy] warm` of the daemon's config).
    pub warm_spares: usize,
    /// The live release's HTTP server per app (local `transport = "http"` apps only).
    servers: Mutex<HashMap<String, Arc<HttpServer>>>,
    /// `[deploy.enrich]`: fills missing env var descriptions from a chat API (off when `None`).
    pub enrich: Option<Arc<super::enrich::Enricher>>,
    /// Deploys of one app run one at a time (pushes are also queued by the SSH layer; this covers
    /// rollbacks, restarts and detached deploys).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Live {
        version: u32,
    },
    /// Validated only; nothing deployed (the hook rejects the ref update so nothing changes).
    DryRun,
    /// Validated; the deploy continues in the background.
    Detached {
        version: u32,
    },
}

/// A release ready to install: plan pinned, secrets decrypted.
struct Prepared {
    release: ReleaseRecord,
    secrets: Secrets,
}

impl Deployer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: DataDir,
        store: Store,
        age: AgeIdentity,
        tools: Toolchain,
        registries: Registries,
        gateway: Arc<Gateway>,
        routes: Arc<RouteTable>,
        public_url: String,
        ssh_command: String,
    ) -> Deployer {
        let logs = gateway.logs().clone();
        Deployer {
            dir,
            store,
            age,
            tools,
            registries,
            http: reqwest::Client::builder()
                .user_agent(concat!("catwalk/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            gateway,
            routes,
            logs,
            public_url,
            ssh_command,
            health_timeout: Duration::from_secs(60),
            rate_limit: None,
            extra_origins: Vec::new(),
            fly: None,
            default_runtime: RuntimeKind::Local,
            allow_app_choice: true,
            warm_spares: 1,
            lifecycle: Lifecycle::default(),
            servers: Mutex::new(HashMap::new()),
            enrich: None,
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("deploy locks").entry(app.to_string()).or_default().clone()
    }

    /// Deploys a push (see the module docs). `Err` is the message that rejects the push.
    pub async fn push(self: &Arc<Self>, req: PushDeploy, progress: Progress) -> Result<Outcome, String> {
        let lock = self.app_lock(req.app.as_str());
        let guard = lock.clone().lock_owned().await;
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
            tokio::spawn(async move {
                let logs = this.logs.clone();
                let name = app.to_string();
                // The same lines a pusher would have seen, into the app's log (`logs APP -f`).
                let sink = Progress::to_lines(move |line| logs.push(&name, LogKind::Event, &line));
                let _guard = guard;
                if let Err(e) = this.finish(&app, prepared, &sink).await {
                    sink.error(format!("release v{version} failed: {e}"));
                }
            });
            return Ok(Outcome::Detached { version });
        }
        let result = self.finish(&req.app, prepared, &progress).await;
        drop(guard);
        result.map(|version| Outcome::Live { version })
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

    /// Install, health gate, switch. Marks the release failed (and leaves the old one serving) on error.
    async fn finish(&self, app: &AppName, prepared: Prepared, progress: &Progress) -> Result<u32, String> {
        let Prepared { mut release, secrets } = prepared;
        // The release is already recorded as deploying: a refusal here must mark it failed too.
        release.runtime = match self.runtime_for(&release.plan) {
            Ok(runtime) => runtime,
            Err(e) => return Err(self.failed(app, release, e)),
        };
        if release.runtime == RuntimeKind::Fly {
            return self.finish_on_fly(app, release, &secrets, progress).await;
        }
        let result = self.install_and_check(app, &mut release, &secrets, progress).await;
        match result {
            Ok((route, server)) => {
                self.routes.set(app.as_str(), route);
                // New sessions of the new release start on warm spares; the old release's go.
                self.gateway.warm(app.as_str());
                self.switch_server(app, server).await;
                self.store.put_release(&release).map_err(|e| e.to_string())?;
                self.store.promote_release(app.as_str(), release.version).map_err(|e| e.to_string())?;
                Ok(self.went_live(app, &release, progress))
            }
            Err(e) => Err(self.failed(app, release, e)),
        }
    }

    /// `Origin` values allowed for a release's route: the app's own plus the daemon-wide ones.
    fn allowed_origins(&self, plan: &Plan) -> Vec<String> {
        plan.allowed_origins.iter().chain(&self.extra_origins).cloned().collect()
    }

    /// Where a release runs: the app's choice when the operator allows it, else the daemon's default.
    fn runtime_for(&self, plan: &Plan) -> Result<RuntimeKind, String> {
        let runtime = match (plan.runtime, self.allow_app_choice) {
            (Some(r), true) => r,
            (Some(r), false) if r != self.default_runtime => {
                return Err(format!(
                    "this app asks for runtime \"{r}\", but the operator does not let apps choose (runtime.allow_app_choice = false)"
                ));
            }
            _ => self.default_runtime,
        };
        if runtime == RuntimeKind::Fly && self.fly.is_none() {
            return Err(
                "this app asks for runtime \"fly\", but this daemon has no [runtime.fly] configuration"
                    .into(),
            );
        }
        Ok(runtime)
    }

    /// The Fly path of [`Deployer::finish`]: stage on new machines (health-gated by the runtime), switch
    /// the route, then retire the old machines. On failure the new machines are destroyed and the old
    /// release keeps serving.
    async fn finish_on_fly(
        &self,
        app: &AppName,
        mut release: ReleaseRecord,
        secrets: &Secrets,
        progress: &Progress,
    ) -> Result<u32, String> {
        let fly = self.fly.clone().ok_or("no [runtime.fly] configuration")?;
        let started = Instant::now();
        // A release built from its repository: its machine downloads the exported source once, with a
        // one-time token (a rollback's source is the rolled-back release's).
        let source = match release.plan.source {
            Source::Package { .. } => None,
            Source::Repository => {
                let of = release.rollback_of.unwrap_or(release.version);
                let dir = self.release_dir(app, of).join("src");
                if !dir.is_dir() {
                    let e = format!(
                        "the source of release v{of} is no longer kept on the daemon; push the commit again"
                    );
                    return Err(self.failed(app, release, e));
                }
                Some(crate::runtime::fly::ReleaseSource { dir, daemon_url: self.public_url.clone() })
            }
        };
        let live = self
            .store
            .live_release(app.as_str())
            .map_err(|e| e.to_string())?
            .filter(|r| r.runtime == RuntimeKind::Fly)
            .map(|r| r.version);
        let result = match fly.deploy_with_source(&release, secrets, live, source.as_ref(), progress).await {
            Ok(staged) => {
                // Over 6PN the route carries the machine's wake (scale to zero).
                let live_route = fly.live_route(
                    app.as_str(),
                    staged.route.clone(),
                    &staged.machine.id,
                    crate::runtime::fly::wake::Awake::Started,
                    &self.logs,
                );
                let route = AppRoute {
                    rate_limit: self.rate_limit,
                    allowed_origins: self.allowed_origins(&release.plan),
                    auth: release.plan.auth,
                    ..live_route
                };
                self.routes.set(app.as_str(), route);
                self.gateway.warm(app.as_str());
                release.timings.push(("fly".into(), started.elapsed().as_millis() as u64));
                release.introspection = Some(staged.introspection.clone());
                self.store.put_release(&release).map_err(|e| e.to_string())?;
                self.store.promote_release(app.as_str(), release.version).map_err(|e| e.to_string())?;
                if let Err(e) = fly.commit(&staged, progress).await {
                    // The new release serves; the next deploy retires what is left.
                    progress.detail(format!(
                        "fly: retiring the old machines failed ({e}); the next deploy retries"
                    ));
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(self.went_live(app, &release, progress)),
            Err(e) => Err(self.failed(app, release, e)),
        }
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

    async fn install_and_check(
        &self,
        app: &AppName,
        release: &mut ReleaseRecord,
        secrets: &Secrets,
        progress: &Progress,
    ) -> Result<(AppRoute, Option<Arc<HttpServer>>), String> {
        if let Some(warning) = self.tools.sandbox.warning() {
            progress.step(warning);
        }
        let started = Instant::now();
        let installed = if let (Some(dir), false) = (&release.install_dir, release.command.is_empty()) {
            Installed { dir: PathBuf::from(dir), command: release.command.clone(), reused: true }
        } else {
            match &release.plan.source {
                Source::Package { .. } => {
                    progress.step("installing ...");
                    install::install_package(
                        &self.tools,
                        &self.dir.root().join("installs"),
                        &release.plan,
                        progress,
                    )
                    .await?
                }
                Source::Repository => {
                    progress.step("building from the repository ...");
                    let src = self.release_dir(app, release.version).join("src");
                    install::install_repository(&self.tools, &src, &release.plan, progress).await?
                }
            }
        };
        let took = started.elapsed();
        release.timings.push(("install".into(), took.as_millis() as u64));
        progress.step(if installed.reused {
            format!("installing ... re-used an identical install ({})", secs(took))
        } else {
            format!("installing ... done in {}", secs(took))
        });
        release.install_dir = Some(installed.dir.to_string_lossy().into_owned());
        release.command = installed.command.clone();
        self.store.put_release(release).map_err(|e| e.to_string())?;

        let (route, server) = self.route_for(app, release, secrets, &installed)?;
        if let Some(server) = &server
            && let Err(e) = self.make_room(app, server, progress).await
        {
            server.shut_down().await;
            return Err(e);
        }
        progress.step(format!("starting release v{} ...", release.version));
        let started = Instant::now();
        // An HTTP server is started first so a server that never listens gets that precise error.
        let gate = match &server {
            Some(server) => match crate::gateway::Wake::wake(server.as_ref()).await {
                Ok(()) => self.health_gate(app, &route).await,
                Err(e) => Err(e),
            },
            None => self.health_gate(app, &route).await,
        };
        if let (Err(_), Some(server)) = (&gate, &server) {
            server.shut_down().await;
        }
        let intro = match gate {
            Ok(intro) => intro,
            Err(e) => {
                let tail = self.logs.stderr_tail(app.as_str(), 20);
                let mut msg = format!("release v{} failed its health check: {e}", release.version);
                if !tail.is_empty() {
                    msg.push_str("\n       server stderr (last lines):");
                    for line in tail.lines() {
                        msg.push_str("\n       | ");
                        msg.push_str(line);
                    }
                }
                return Err(msg);
            }
        };
        let took = started.elapsed();
        release.timings.push(("health".into(), took.as_millis() as u64));
        progress.step(format!(
            "release v{} healthy in {}: {}",
            release.version,
            secs(took),
            describe_introspection(&intro)
        ));
        release.introspection = Some(intro);
        if let Some(server) = &server
            && http_server::listens_on_all_interfaces(server.spec().port)
        {
            progress.step(format!("warning: the server listens on all interfaces (port {}), so other hosts can reach it without a catwalk token unless a firewall blocks that port; make it bind 127.0.0.1 (catwalk sets $HOST=127.0.0.1)",
                server.spec().port
            ));
        }
        Ok((route, server))
    }

    fn release_dir(&self, app: &AppName, version: u32) -> PathBuf {
        self.dir.app(app).join("releases").join(format!("v{version}"))
    }

    /// A new release that re-uses release `version`'s plan, install and secrets (default: the one
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
        let lock = self.app_lock(app.as_str());
        let _guard = lock.lock().await;
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
            let (allowed_origins, rate_limit, auth) =
                (self.allowed_origins(&live.plan), self.rate_limit, live.plan.auth);
            tokio::spawn(async move {
                match fly.restore_route(&name, &logs).await {
                    Ok(Some(route)) => {
                        routes.set(&name, AppRoute { allowed_origins, rate_limit, auth, ..route });
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
        let dir = live.install_dir.clone().ok_or("the live release has no install")?;
        let installed = Installed { dir: PathBuf::from(dir), command: live.command.clone(), reused: true };
        let (route, server) = self.route_for(app, &live, &secrets, &installed)?;
        self.routes.set(app.as_str(), route);
        self.gateway.warm(app.as_str());
        if let Some(server) = server {
            self.servers.lock().expect("servers").insert(app.to_string(), server);
        }
        Ok(Some(live.version))
    }

    /// Ends the app's sessions; the next request starts fresh processes of the live release.
    /// The live local HTTP server of `app` for `info`: `{"port", "release", "state"}`.
    pub fn server_status(&self, app: &str) -> Option<serde_json::Value> {
        let server = self.servers.lock().expect("servers").get(app).cloned()?;
        let spec = server.spec();
        Some(serde_json::json!({
            "port": spec.port,
            "fixed_port": spec.fixed_port,
            "release": spec.release,
            "state": server.state(),
        }))
    }

    /// Returns what was done, for the user.
    pub async fn restart(&self, app: &AppName) -> Result<String, String> {
        if self.routes.get(app.as_str()).is_none() {
            return Err(format!("app {app} has no live release to restart"));
        }
        self.gateway.drain_app(app.as_str());
        let live = self.store.live_release(app.as_str()).map_err(|e| e.to_string())?;
        if let (Some(fly), Some(live)) = (&self.fly, &live)
            && live.runtime == RuntimeKind::Fly
        {
            // The machine is stopped and started again (its bridge and server start fresh).
            fly.scale_to_zero(app.as_str()).await?;
            fly.ensure_started(app.as_str()).await?;
            let msg =
                format!("restarted: release v{}'s Fly machine was stopped and started again", live.version);
            self.logs.push(app.as_str(), LogKind::Event, &msg);
            return Ok(format!("{app}: {msg}"));
        }
        if let Some(server) = self.live_server(app) {
            server.stop().await;
        }
        self.logs.push(app.as_str(), LogKind::Event, "restarted: sessions ended, processes stopped");
        self.gateway.warm(app.as_str());
        Ok(format!("{app}: sessions ended; the next request starts fresh processes"))
    }

    /// Stops serving `app` and removes its releases and runtime data (`apps destroy`).
    pub async fn destroy(&self, app: &AppName) -> Result<(), String> {
        let releases = self.store.releases(app.as_str()).map_err(|e| e.to_string())?;
        if releases.iter().any(|r| r.runtime == RuntimeKind::Fly)
            && let Some(fly) = &self.fly
        {
            fly.destroy(app.as_str()).await?;
        }
        self.routes.remove(app.as_str());
        self.gateway.drain_app(app.as_str());
        let server = self.servers.lock().expect("servers").remove(app.as_str());
        if let Some(server) = server {
            server.shut_down().await;
        }
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

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `2 tools (get_current_time, convert_time), 0 resources, 0 prompts`.
pub fn describe_introspection(i: &Introspection) -> String {
    let names = if i.tools.is_empty() {
        String::new()
    } else if i.tools.len() <= 8 {
        format!(" ({})", i.tools.join(", "))
    } else {
        format!(" ({}, ...)", i.tools[..8].join(", "))
    };
    format!(
        "{} tool{}{names}, {} resource{}, {} prompt{}",
        i.tools.len(),
        if i.tools.len() == 1 { "" } else { "s" },
        i.resources,
        if i.resources == 1 { "" } else { "s" },
        i.prompts,
        if i.prompts == 1 { "" } else { "s" }
    )
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
