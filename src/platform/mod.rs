//! The transport-free core: one type owning the store, the deployer, the SSH keys, the app locks and the
//! running pushes, with the operations the transports ask for.
//!
//! In the spirit of soft-serve's `backend`: ssh (`git push`, commands), the control socket (the local CLI
//! and git's hooks) and the commands all act through [`Platform`], so a push is one story told here
//! ([`Platform::begin_push`], then per hook [`Platform::push_context`] → [`push::pre_receive`] /
//! [`push::post_receive`]), every app-level
//! change waits on the same lock with the same "queued behind" line ([`Platform::lock_app`]), and the push
//! gate is testable without a socket.

pub mod erase;
mod error;
pub mod push;

pub use error::PlatformError;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::access::{StoreAudit, StoreAuthenticator};
use crate::authorized_keys::AuthorizedKeys;
use crate::config::Config;
use crate::datadir::DataDir;
use crate::gateway::{AppLogs, AppRoute, Backend, Gateway, GatewaySettings, RateLimit};
use crate::git::hook::{QuarantineEnv, RefUpdate};
use crate::git::locks::{DeployGuard, DeployLocks, PushRegistry, PushTicket};
use crate::identity::Identity;
use crate::names::AppName;
use crate::output::Progress;
use crate::pipeline::deploy::{DeployPolicy, Deployer, DeployerParts};
use crate::pipeline::registry::Registries;
use crate::pipeline::secrets::AgeIdentity;
use crate::runtime::install::Toolchain;
use crate::runtime::local::{LocalRuntime, LocalSettings};
use crate::runtime::routes::RouteTable;
use crate::store::{AppRecord, Erased, Store};

/// Everything a push, a command or an MCP request acts on, and nothing about how it arrived.
///
/// ssh, the control socket and the commands take an `Arc<Platform>` (or `&Platform`) and nothing else;
/// `daemon.rs` only builds one, binds the listeners and shuts down.
pub struct Platform {
    /// The loaded config, with `ssh.listen`/`http.listen` set to the addresses actually bound.
    pub config: Config,
    pub dir: DataDir,
    pub store: Store,
    pub authorized_keys: Arc<AuthorizedKeys>,
    /// Per-app deploy locks: pushes, `apps create`, `apps destroy`, `rollback` (see [`Platform::lock_app`]).
    locks: DeployLocks,
    /// Running pushes: matched by the hooks, drained by shutdown.
    pub pushes: PushRegistry,
    /// Cancelled when shutdown starts: listeners stop accepting, new requests are refused.
    pub shutdown: CancellationToken,
    /// The MCP gateway serving `/mcp/<app>`.
    pub gateway: Arc<Gateway>,
    /// Which backend serves each app right now.
    pub routes: Arc<RouteTable>,
    /// The deploy pipeline (pushes, rollbacks, restarts).
    pub deployer: Arc<Deployer>,
    /// The OAuth authorization server (`/oauth/*`, `/.well-known/*`, `approve`, `grants`, `login`).
    pub oauth: Arc<crate::oauth::OAuth>,
}

impl Platform {
    /// Builds the state for `dir` with `config`. Must run inside a tokio runtime (the audit writer
    /// is a task).
    pub fn new(dir: DataDir, config: Config, store: Store) -> Result<Platform> {
        let authorized_keys = Arc::new(AuthorizedKeys::new(
            store.clone(),
            config.ssh.authorized_keys_file.as_deref(),
            config.ssh.authorized_keys_role,
            dir.root(),
        ));
        let identity = std::fs::read_to_string(dir.age_identity())
            .with_context(|| format!("reading {} (run `catwalk init`)", dir.age_identity().display()))?;
        let age = AgeIdentity::from_identity_file(&identity)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.age_identity().display()))?;
        let routes = Arc::new(RouteTable::default());
        let logs = Arc::new(AppLogs::new(2000));
        let public_url = config.public_url();
        let gateway_cfg = GatewaySettings {
            public_origin: Some(public_url.clone()),
            max_body_bytes: config.gateway.body_limit,
            session_grace: config.gateway.disconnect_grace,
            session_idle_timeout: config.gateway.session_idle_timeout,
            header_read_timeout: config.http.header_read_timeout,
            max_connections: config.http.max_connections,
            max_connections_per_ip: config.http.max_connections_per_ip,
            max_sessions_per_app: config.gateway.max_sessions_per_app,
            pool_idle_timeout: config.gateway.pool_idle_timeout,
            pool_max_per_context: config.gateway.pool_max_per_token,
            input_timeout: config.gateway.input_timeout,
            spare_idle_timeout: (!config.deploy.idle_timeout.is_zero()).then_some(config.deploy.idle_timeout),
            ..GatewaySettings::default()
        };
        let gateway = Gateway::new(
            gateway_cfg,
            routes.clone(),
            Some(Arc::new(StoreAuthenticator { store: store.clone(), public_url: public_url.clone() })),
            Arc::new(StoreAudit::start(store.clone(), std::time::Duration::from_millis(200))),
            logs,
            Some(crate::gateway::metrics::install()),
        );
        let (host, port) = config.ssh_host_port();
        let mut tools = Toolchain {
            install_timeout: config.deploy.install_timeout,
            registry_env: registry_env(&config.deploy),
            ..Toolchain::detect(dir.root().join("cache"))
        };
        // `[sandbox]`: strict mode without a working sandbox refuses to start here.
        // Relay directories of the previous run are stale (their processes are gone).
        let net_dir = dir.root().join("run/net");
        let _ = std::fs::remove_dir_all(&net_dir);
        tools
            .set_sandbox(config.sandbox_policy().with_net_dir(net_dir))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let local = LocalRuntime::new(
            dir.clone(),
            tools,
            LocalSettings {
                health_timeout: config.deploy.health_timeout,
                lifecycle: crate::runtime::http_server::Lifecycle {
                    start_timeout: config.deploy.health_timeout,
                    idle_timeout: (!config.deploy.idle_timeout.is_zero())
                        .then_some(config.deploy.idle_timeout),
                    drain_grace: config.deploy.drain_grace,
                    max_drain: config.gateway.session_idle_timeout,
                    kill_grace: crate::gateway::GatewaySettings::default().kill_grace,
                },
                warm_spares: config.deploy.warm,
            },
        );
        let fly = match &config.runtime.fly {
            Some(fly) => {
                let key = age.derive_key("fly bridge credentials");
                let runtime = crate::runtime::fly::FlyRuntime::new(fly.clone(), key)
                    .map_err(|e| anyhow::anyhow!("[runtime.fly]: {e}"))?;
                // Machines of repository releases download their source from `/_catwalk/source/<token>`.
                gateway.set_internal_routes(runtime.sources.clone());
                Some(Arc::new(runtime))
            }
            None => None,
        };
        let enrich = match &config.deploy.enrich {
            Some(enrich) => {
                let key = std::env::var(crate::pipeline::enrich::API_KEY_ENV).ok();
                let enricher = crate::pipeline::enrich::Enricher::new(enrich, dir.root(), key)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tracing::info!(model = %enrich.model, "env var descriptions: enrichment on ({})", enrich.base_url);
                Some(Arc::new(enricher))
            }
            None => None,
        };
        let oauth_key = age.derive_key("oauth approval codes and csrf tokens");
        let deployer = Deployer::new(DeployerParts {
            dir: dir.clone(),
            store: store.clone(),
            age,
            local,
            fly,
            registries: Registries {
                npm: config.deploy.npm_registry.clone(),
                pypi: config.deploy.pypi_registry.clone(),
                cache_ttl: config.deploy.registry_cache_ttl,
                ..Registries::default()
            },
            gateway: gateway.clone(),
            routes: routes.clone(),
            public_url,
            ssh_command: format!("ssh -p {port} git@{host}"),
            policy: DeployPolicy {
                rate_limit: rate_limit(config.gateway.rate_limit_per_minute),
                extra_origins: config.gateway.allowed_origins.clone(),
                default_runtime: config.runtime.default,
                allow_app_choice: config.runtime.allow_app_choice,
            },
            enrich,
        });
        let oauth = Arc::new(crate::oauth::OAuth::new(
            store.clone(),
            config.oauth.clone(),
            config.public_url(),
            format!("ssh -p {port} git@{host}"),
            oauth_key,
            routes.clone(),
        )?);
        gateway.set_oauth_routes(oauth.clone());
        Ok(Platform {
            config,
            dir,
            store,
            authorized_keys,
            locks: DeployLocks::default(),
            pushes: PushRegistry::default(),
            shutdown: CancellationToken::new(),
            gateway,
            routes,
            deployer: Arc::new(deployer),
            oauth,
        })
    }

    /// Routes the apps declared in the config (`[apps.NAME]`) and creates their store records.
    pub fn route_static_apps(&self) -> Result<()> {
        for (name, app) in &self.config.apps {
            let app_name = AppName::parse(name).map_err(|e| anyhow::anyhow!("[apps.{name}]: {e}"))?;
            if self.store.app(name)?.is_none() {
                self.store.create_app(&crate::store::AppRecord::new(name, "config", Vec::new()))?;
            }
            let backend = match &app.url {
                Some(url) => Backend::http(url.clone(), Vec::new(), None),
                None => {
                    let cwd = app.cwd.clone().unwrap_or_else(|| self.dir.app(&app_name).join("home"));
                    std::fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
                    Backend::Stdio { argv: app.command.clone(), env: app.env.clone(), cwd }
                }
            };
            let mut allowed_origins = app.allowed_origins.clone();
            allowed_origins.extend(self.config.gateway.allowed_origins.iter().cloned());
            self.routes.set(
                name,
                AppRoute {
                    backend,
                    allowed_origins,
                    shared: app.shared,
                    rate_limit: rate_limit(self.config.gateway.rate_limit_per_minute),
                    auth: Default::default(),
                    warm: self.config.deploy.warm,
                },
            );
            self.gateway.warm(name);
        }
        Ok(())
    }

    /// Takes `app`'s deploy lock for `what` (a push, `apps create`, `apps destroy`, `rollback`), waiting
    /// in line behind whoever holds it. Every waiter gets the same line, `APP: WHAT by WHO queued behind
    /// HOLDER`, through `on_wait` (to show the caller) and in the daemon's log.
    pub async fn lock_app(
        &self,
        app: &AppName,
        who: &str,
        what: &str,
        on_wait: impl FnOnce(String),
    ) -> DeployGuard {
        self.locks
            .acquire(app, who, |holder| {
                let line = format!("{app}: {what} by {who} queued behind {}", holder.describe());
                tracing::info!("{line}");
                on_wait(line);
            })
            .await
    }

    /// Starts a push of `app` by `who`: checks the right to push, takes the app's lock (held until the
    /// returned ticket is dropped, after `git receive-pack` exits), and prepares the repository. Returns
    /// the ticket (its id is what the hooks name) and the repository to run `git receive-pack` in.
    pub async fn begin_push(
        &self,
        app: &AppName,
        who: &Identity,
        on_wait: impl FnOnce(String),
    ) -> Result<(PushTicket<'_>, PathBuf), PlatformError> {
        let record = self.store.app(app.as_str())?;
        push::may_push(who, record.as_ref())?;
        let guard = self.lock_app(app, &who.name, "push", on_wait).await;
        // Read again under the lock: the app may have been created or destroyed while this push waited.
        let record = self.store.app(app.as_str())?;
        push::may_push(who, record.as_ref())?;
        if record.is_none() {
            // A first push creates the app: whatever an earlier app of this name left (a crash
            // mid-destroy, an operator's copy) goes before the new repository is made.
            erase::clear_before_create(self, app).map_err(PlatformError::internal)?;
        }
        let branch = self.deploy_branch(record.as_ref());
        let repo = crate::git::ensure_repo(&self.dir, &self.config, app, &branch)
            .map_err(|e| PlatformError::internal(format!("preparing the repository of {app}: {e:#}")))?;
        let ticket = self.pushes.register(app.clone(), who.clone(), guard);
        tracing::info!("push to {app} by {}: started (push {})", who.name, ticket.session.id);
        Ok((ticket, repo))
    }

    /// What the gate needs for a hook of the running push `push_id`; `None` for a push this daemon did
    /// not start (a hook run by hand, or a guessed id).
    pub fn push_context(
        &self,
        push_id: &str,
        updates: Vec<RefUpdate>,
        options: Vec<String>,
        quarantine: QuarantineEnv,
        progress: Progress,
    ) -> Option<push::PushContext<'_>> {
        let session = self.pushes.get(push_id)?;
        Some(push::PushContext { platform: self, push: session, updates, options, quarantine, progress })
    }

    /// `apps create`: a new, empty app owned by `who`, and its repository.
    pub async fn create_app(
        &self,
        app: &AppName,
        who: &Identity,
        on_wait: impl FnOnce(String),
    ) -> Result<AppRecord, PlatformError> {
        // Under the deploy lock, like a first push: nothing else creates, pushes to or destroys it meanwhile.
        let _guard = self.lock_app(app, &who.name, "apps create", on_wait).await;
        match self.store.app(app.as_str())? {
            Some(existing) if who.can_manage(&existing) => {
                return Err(PlatformError::Refused(format!("app {app} already exists (see `info {app}`)")));
            }
            Some(_) => return Err(PlatformError::Refused(push::name_taken(app.as_str()))),
            None => {}
        }
        let apps = self.store.apps()?;
        who.may_create_app(&apps, self.config.deploy.max_apps_per_deployer)?;
        erase::clear_before_create(self, app).map_err(PlatformError::internal)?;
        let record = AppRecord::new(app.as_str(), &who.name, vec![who.name.clone()]);
        self.store.create_app(&record).map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => PlatformError::Refused(push::name_taken(app.as_str())),
            e => e.into(),
        })?;
        crate::git::ensure_repo(&self.dir, &self.config, app, &self.config.git.deploy_branch)
            .map_err(|e| PlatformError::internal(format!("creating the repository of {app}: {e:#}")))?;
        Ok(record)
    }

    /// `apps destroy`: erases `app` (the caller checked that `by` manages it), after any running push.
    pub async fn destroy_app(
        &self,
        app: &AppName,
        by: &str,
        on_wait: impl FnOnce(String),
    ) -> Result<Erased, PlatformError> {
        // Never pull a repository from under a running push: wait for it like a push would.
        let _guard = self.lock_app(app, by, "apps destroy", on_wait).await;
        erase::destroy(self, app, by).await.map_err(PlatformError::internal)
    }

    /// `rollback`: makes release `version` (default: the one before the live one) live again and moves the
    /// deploy branch to its commit, serialised with pushes. Returns the version now live.
    pub async fn rollback(
        &self,
        app: &AppName,
        version: Option<u32>,
        by: &str,
        progress: &Progress,
        on_wait: impl FnOnce(String),
    ) -> Result<u32, PlatformError> {
        let record =
            self.store.app(app.as_str())?.ok_or_else(|| PlatformError::Refused(format!("no app {app}")))?;
        let branch = self.deploy_branch(Some(&record));
        // A rollback moves the branch, so no push may be mid-flight.
        let _guard = self.lock_app(app, by, "rollback", on_wait).await;
        // The deployer words its refusals for the user (no such release, a release that never ran, a
        // failed health gate).
        Ok(self.deployer.rollback(app, version, by, &branch, progress).await?)
    }

    /// `restart`: stops `app`'s running server processes (and restarts a long-running server), serialised
    /// with pushes: a restart in the middle of a push's switch could stop the new release's first
    /// processes, so it waits for the push like a rollback would, and says so.
    pub async fn restart(
        &self,
        app: &AppName,
        by: &str,
        on_wait: impl FnOnce(String),
    ) -> Result<String, PlatformError> {
        if self.store.app(app.as_str())?.is_none() {
            return Err(PlatformError::Refused(format!("no app {app}")));
        }
        let _guard = self.lock_app(app, by, "restart", on_wait).await;
        self.deployer.restart(app).await.map_err(PlatformError::Refused)
    }

    /// The deploy branch of `app` (its own setting, else the daemon's; the daemon's for an app that does
    /// not exist yet).
    pub fn deploy_branch(&self, app: Option<&AppRecord>) -> String {
        app.and_then(|a| a.deploy_branch.clone()).unwrap_or_else(|| self.config.git.deploy_branch.clone())
    }
}

/// Mirror settings for installs when `[deploy]` names registries other than the public ones.
fn registry_env(deploy: &crate::config::DeployConfig) -> Vec<(String, String)> {
    let defaults = crate::config::DeployConfig::default();
    let mut env = Vec::new();
    if deploy.npm_registry != defaults.npm_registry {
        env.push(("npm_config_registry".to_string(), deploy.npm_registry.clone()));
    }
    if deploy.pypi_registry != defaults.pypi_registry {
        env.push((
            "PIP_INDEX_URL".to_string(),
            format!("{}/simple", deploy.pypi_registry.trim_end_matches('/')),
        ));
    }
    env
}

/// `rate_limit_per_minute` as the gateway's token bucket: a minute's worth may come at once (an agent
/// listing and calling tools in a burst), then the rate is held to the configured average.
fn rate_limit(per_minute: u32) -> Option<RateLimit> {
    let burst = std::num::NonZeroU32::new(per_minute)?;
    (per_minute > 0).then(|| RateLimit { period: std::time::Duration::from_secs(60) / per_minute, burst })
}

#[cfg(test)]
pub(crate) mod tests;
