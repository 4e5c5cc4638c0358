//! The running daemon: its shared state and `serve()`.
//!
//! `serve` binds the SSH and HTTP listeners and the control socket, reports readiness to systemd, and on
//! SIGTERM/SIGINT shuts down gracefully: it stops accepting connections, lets running pushes finish for
//! up to `daemon.shutdown_grace` (their hooks still reach the control socket), then kills what is left
//! (git discards an unfinished push's quarantine, so refs stay consistent) and exits.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::{StoreAudit, StoreAuthenticator};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::gateway::{AppLogs, AppRoute, Backend, Gateway, GatewayConfig, RateLimit};
use crate::git::locks::{DeployLocks, PushRegistry};
use crate::names::AppName;
use crate::pipeline::deploy::Deployer;
use crate::pipeline::registry::Registries;
use crate::pipeline::secrets::AgeIdentity;
use crate::runtime::install::Toolchain;
use crate::runtime::routes::RouteTable;
use crate::ssh::keys::AuthorizedKeys;
use crate::store::{Role, Store};

/// State shared by every connection.
pub struct Daemon {
    /// The loaded config, with `ssh.listen`/`http.listen` set to the addresses actually bound.
    pub config: Config,
    pub dir: DataDir,
    pub store: Store,
    pub authorized_keys: Arc<AuthorizedKeys>,
    /// Per-app deploy locks (pushes, `apps destroy`).
    pub locks: DeployLocks,
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

impl Daemon {
    /// Builds the state for `dir` with `config`. Must run inside a tokio runtime (the audit writer
    /// is a task).
    pub fn new(dir: DataDir, config: Config, store: Store) -> Result<Daemon> {
        let role = Role::parse(&config.ssh.authorized_keys_role).unwrap_or(Role::Deployer);
        let authorized_keys = Arc::new(AuthorizedKeys::new(
            store.clone(),
            config.ssh.authorized_keys_file.as_deref(),
            role,
            dir.root(),
        ));
        let identity = std::fs::read_to_string(dir.age_identity())
            .with_context(|| format!("reading {} (run `catwalk init`)", dir.age_identity().display()))?;
        let age = AgeIdentity::from_identity_file(&identity)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.age_identity().display()))?;
        let routes = Arc::new(RouteTable::default());
        let logs = Arc::new(AppLogs::new(2000));
        let public_url = config.public_url();
        let gateway_cfg = GatewayConfig {
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
            ..GatewayConfig::default()
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
        let mut deployer = Deployer::new(
            dir.clone(),
            store.clone(),
            age,
            tools,
            Registries {
                npm: config.deploy.npm_registry.clone(),
                pypi: config.deploy.pypi_registry.clone(),
                cache_ttl: config.deploy.registry_cache_ttl,
                ..Registries::default()
            },
            gateway.clone(),
            routes.clone(),
            public_url,
            format!("ssh -p {port} git@{host}"),
        );
        deployer.rate_limit = rate_limit(config.gateway.rate_limit_per_minute);
        deployer.warm_spares = config.deploy.warm;
        deployer.health_timeout = config.deploy.health_timeout;
        deployer.lifecycle = crate::runtime::http_server::Lifecycle {
            start_timeout: config.deploy.health_timeout,
            idle_timeout: (!config.deploy.idle_timeout.is_zero()).then_some(config.deploy.idle_timeout),
            drain_grace: config.deploy.drain_grace,
            max_drain: config.gateway.session_idle_timeout,
            kill_grace: crate::gateway::GatewayConfig::default().kill_grace,
        };
        deployer.default_runtime = config.runtime.default.clone();
        deployer.allow_app_choice = config.runtime.allow_app_choice;
        if let Some(fly) = &config.runtime.fly {
            let key = deployer.age.derive_key("fly bridge credentials");
            let runtime = crate::runtime::fly::FlyRuntime::new(fly.clone(), key)
                .map_err(|e| anyhow::anyhow!("[runtime.fly]: {e}"))?;
            // Machines of repository releases download their source from `/_catwalk/source/<token>`.
            gateway.set_internal_routes(runtime.sources.clone());
            deployer.fly = Some(Arc::new(runtime));
        }
        deployer.extra_origins = config.gateway.allowed_origins.clone();
        let oauth = Arc::new(crate::oauth::OAuth::new(
            store.clone(),
            config.oauth.clone(),
            config.public_url(),
            format!("ssh -p {port} git@{host}"),
            deployer.age.derive_key("oauth approval codes and csrf tokens"),
            routes.clone(),
        )?);
        gateway.set_oauth_routes(oauth.clone());
        if let Some(enrich) = &config.deploy.enrich {
            let key = std::env::var(crate::pipeline::enrich::API_KEY_ENV).ok();
            let enricher = crate::pipeline::enrich::Enricher::new(enrich, dir.root(), key)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(model = %enrich.model, "env var descriptions: enrichment on ({})", enrich.base_url);
            deployer.enrich = Some(Arc::new(enricher));
        }
        Ok(Daemon {
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
    fn route_static_apps(&self) -> Result<()> {
        for (name, app) in &self.config.apps {
            let app_name = AppName::parse(name).map_err(|e| anyhow::anyhow!("[apps.{name}]: {e}"))?;
            if self.store.app(name)?.is_none() {
                self.store.create_app(&crate::store::AppRecord::new(name, "config", Vec::new()))?;
            }
            let backend = match &app.url {
                Some(url) => Backend::Http { url: url.clone(), headers: Vec::new(), wake: None },
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
            self.deployer.gateway.warm(name);
        }
        Ok(())
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

/// Listen addresses given on the command line (they override the config).
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub ssh_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
}

/// Called once the listeners are bound, with the daemon (for `up` to print its hints).
pub type OnReady = Box<dyn FnOnce(&Daemon) + Send>;

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(dir: DataDir, options: ServeOptions, on_ready: Option<OnReady>) -> Result<()> {
    let mut config = Config::load(&dir.config())?;
    if let Some(addr) = options.ssh_listen {
        config.ssh.listen = addr;
    }
    if let Some(addr) = options.http_listen {
        config.http.listen = addr;
    }
    let store = Store::open(&dir.store()).with_context(|| format!("opening {}", dir.store().display()))?;

    let ssh_listener = TcpListener::bind(config.ssh.listen).await.with_context(|| {
        format!("binding the SSH listener on {} (ssh.listen / --ssh-listen)", config.ssh.listen)
    })?;
    // TLS is checked before anything listens: a bad certificate file stops the start with its reason.
    let tls = match &config.http.tls {
        Some(cfg) => {
            let settings = cfg.resolve(dir.root()).map_err(anyhow::Error::msg)?;
            Some(crate::tls::TlsRuntime::new(settings)?)
        }
        None => None,
    };
    let http_listener = TcpListener::bind(config.http.listen).await.with_context(|| {
        format!("binding the HTTP listener on {} (http.listen / --http-listen)", config.http.listen)
    })?;
    let redirect_listener = match tls.as_ref().and_then(|t| t.redirect_listen()) {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("binding the HTTP redirect listener on {addr} (http.tls.redirect_listen)")
        })?),
        None => None,
    };
    config.ssh.listen = ssh_listener.local_addr()?;
    config.http.listen = http_listener.local_addr()?;
    let control = crate::control::server::bind(&dir.control_socket())?;

    let daemon = Arc::new(Daemon::new(dir.clone(), config, store)?);
    daemon.route_static_apps()?;
    for problem in daemon.deployer.restore() {
        tracing::error!("restoring live releases: {problem}");
    }
    let _watcher = daemon.authorized_keys.watch()?;
    let ssh_config = crate::ssh::russh_config(&daemon)?;

    tracing::info!("ssh listening on {}", daemon.config.ssh.listen);
    tracing::info!("http listening on {}", daemon.config.http.listen);
    tracing::info!("MCP endpoints at {}/mcp/APP", daemon.config.public_url());
    if let Some(r) = &redirect_listener {
        tracing::info!("http redirect listening on {}", r.local_addr()?);
    }
    tracing::info!("control socket at {}", dir.control_socket().display());

    let ssh_task = tokio::spawn(crate::ssh::serve(daemon.clone(), ssh_listener, ssh_config));
    let http_task = {
        let (gateway, stop) = (daemon.gateway.clone(), daemon.shutdown.clone());
        tokio::spawn(async move {
            let result = match tls {
                Some(tls) => gateway.serve_tls(http_listener, redirect_listener, tls, stop).await,
                None => gateway.serve(http_listener, stop).await.map_err(anyhow::Error::from),
            };
            if let Err(e) = result {
                tracing::error!("the MCP endpoint stopped: {e:#}");
            }
        })
    };
    let control_task = tokio::spawn(crate::control::server::serve(daemon.clone(), control));

    if let Some(on_ready) = on_ready {
        on_ready(&daemon);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    wait_for_signal().await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.shutdown.cancel();
    let _ = ssh_task.await;
    let _ = http_task.await;

    let grace = daemon.config.daemon.shutdown_grace;
    let running = daemon.pushes.running();
    if running > 0 {
        tracing::info!("shutting down: waiting up to {grace:?} for {running} running push(es)");
    }
    if tokio::time::timeout(grace, daemon.pushes.wait_idle()).await.is_err() {
        tracing::warn!(
            "shutting down: {} push(es) still running after {grace:?}; stopping them (their refs stay unchanged)",
            daemon.pushes.running()
        );
        daemon.pushes.abort.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), daemon.pushes.wait_idle()).await;
    }
    daemon.deployer.stop_servers().await;
    control_task.abort();
    let _ = std::fs::remove_file(dir.control_socket());
    tracing::info!("catwalk stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received: shutting down"),
    }
    Ok(())
}
