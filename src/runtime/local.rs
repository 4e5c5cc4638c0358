//! The local runtime: releases run as sandboxed processes on the daemon's host.
//!
//! Staging installs the pinned package (or builds the repository) into the data dir, builds the gateway
//! route (argv from validated, pinned values; env = declared values + secrets + a minimal PATH/HOME; the
//! sandbox around it), starts the HTTP server of a `transport = "http"` release on a fresh port beside
//! the live one, and proves the release answers MCP through a private loopback gateway (the same code as
//! `/mcp/APP`). Committing retires the previous HTTP server (it drains its pinned sessions); a stdio
//! release has no server of its own: the gateway starts its processes per session (and as warm spares).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::health;
use super::http_server::{self, HttpServer, HttpServerSpec, Lifecycle};
use super::install::{self, Installed, Toolchain};
use super::sandbox::{self, AppSandbox};
use super::{Runtime, StageRequest};
use crate::datadir::DataDir;
use crate::gateway::{
    AppLogs, AppRoute, Backend, Gateway, GatewaySettings, Mount, NoAudit, Primed, ServerEra, WakeHandle,
};
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::{Secrets, Source, Transport};
use crate::store::{Introspection, ReleaseRecord};

/// How the local runtime starts, gates and stops releases (from `[deploy]`).
#[derive(Debug, Clone, Copy)]
pub struct LocalSettings {
    /// How long a new release may take to answer its health probe.
    pub health_timeout: Duration,
    /// Start, idle, drain and stop timeouts of `transport = "http"` servers.
    pub lifecycle: Lifecycle,
    /// Warm spares per stdio app whose manifest does not say (`[deploy] warm`).
    pub warm_spares: usize,
}

/// Sandboxed processes on this host (the embedded default runtime).
pub struct LocalRuntime {
    dir: DataDir,
    tools: Toolchain,
    settings: LocalSettings,
    /// The live release's HTTP server per app (`transport = "http"` apps only).
    servers: Mutex<HashMap<String, Arc<HttpServer>>>,
}

/// A staged local release: its HTTP server, or none for a stdio release; and what its health gate
/// proved, for the daemon's gateway to adopt (a stdio release).
pub struct LocalStaged {
    server: Option<Arc<HttpServer>>,
    primed: Mutex<Option<Primed>>,
}

impl LocalRuntime {
    pub fn new(dir: DataDir, tools: Toolchain, settings: LocalSettings) -> LocalRuntime {
        LocalRuntime { dir, tools, settings, servers: Mutex::new(HashMap::new()) }
    }

    /// Serves the live `release` again after a daemon restart (its install is kept; the secrets were
    /// decrypted again by the caller, since they are never stored). Returns its route.
    pub fn restore(
        &self,
        app: &AppName,
        live: &ReleaseRecord,
        secrets: &Secrets,
        logs: &Arc<AppLogs>,
    ) -> Result<AppRoute, String> {
        let dir = live.install_dir.clone().ok_or("the live release has no install")?;
        let installed = Installed { dir: PathBuf::from(dir), command: live.command.clone(), reused: true };
        let (route, server) = self.route_for(app, live, secrets, &installed, logs)?;
        if let Some(server) = server {
            self.servers.lock().expect("servers").insert(app.to_string(), server);
        }
        Ok(route)
    }

    /// The live HTTP server of `app` for `info`: `{"port", "release", "state"}`.
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

    /// Stops every HTTP server (daemon shutdown).
    pub async fn stop_servers(&self) {
        let all: Vec<_> = self.servers.lock().expect("servers").drain().map(|(_, s)| s).collect();
        for s in all {
            s.shut_down().await;
        }
    }

    fn live_server(&self, app: &AppName) -> Option<Arc<HttpServer>> {
        self.servers.lock().expect("servers").get(app.as_str()).cloned()
    }

    /// A server with a fixed port cannot run beside the release it replaces: stop the old one first
    /// (it starts again on demand if the new one fails its gate), and refuse a port held by others.
    async fn make_room(&self, app: &AppName, server: &HttpServer, progress: &Progress) -> Result<(), String> {
        let spec = server.spec();
        if !spec.fixed_port {
            return Ok(());
        }
        if let Some(old) = self.live_server(app)
            && old.spec().port == spec.port
        {
            progress.step(format!("port {} is fixed by the manifest: stopping v{} before starting v{} (leave `port` out for deploys without a gap)",
                spec.port,
                old.spec().release,
                spec.release
            ));
            old.stop().await;
            // The process group is gone; give the kernel a moment to release the listening socket.
            let deadline = Instant::now() + Duration::from_secs(5);
            while port_accepts(spec.port).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if port_accepts(spec.port).await {
            return Err(format!(
                "port {} is already in use on this host (another app or process listens on it); leave `port` out of catwalk.toml so catwalk assigns a free port through $PORT",
                spec.port
            ));
        }
        Ok(())
    }

    /// The gateway route for a release: argv from validated, pinned values; env = declared + secrets.
    fn route_for(
        &self,
        app: &AppName,
        release: &ReleaseRecord,
        secrets: &Secrets,
        installed: &Installed,
        logs: &Arc<AppLogs>,
    ) -> Result<(AppRoute, Option<Arc<HttpServer>>), String> {
        let home = self.dir.app(app).join("home");
        std::fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), self.tools.path_env());
        env.insert("HOME".into(), home.to_string_lossy().into_owned());
        env.insert("LANG".into(), "C.UTF-8".into());
        let tmp = if self.tools.sandbox.is_active() { "/tmp".into() } else { std::env::temp_dir() };
        env.insert("TMPDIR".into(), tmp.to_string_lossy().into_owned());
        for (k, v) in install::host_network_env() {
            env.insert(k.to_string(), v.to_string_lossy().into_owned());
        }
        for e in &release.plan.env {
            if let Some(v) = &e.value {
                env.insert(e.name.clone(), v.clone());
            }
        }
        for (k, v) in secrets {
            env.insert(k.clone(), v.expose().to_string());
        }
        let http_port = match &release.plan.transport {
            Transport::Http { port: Some(port), .. } => Some((*port, true)),
            Transport::Http { port: None, .. } => Some((http_server::free_port()?, false)),
            Transport::Stdio => None,
        };
        let mut argv = installed.command.clone();
        argv.extend(release.plan.args.iter().cloned());
        if let Some((port, _)) = http_port {
            // The server learns its port from $PORT or from `{port}` in its args; it should bind loopback.
            env.insert("PORT".into(), port.to_string());
            env.insert("HOST".into(), "127.0.0.1".into());
            for arg in argv.iter_mut() {
                *arg = arg.replace(crate::plan::PORT_PLACEHOLDER, &port.to_string());
            }
        }
        let cwd = match release.plan.source {
            Source::Repository => installed.dir.clone(),
            Source::Package { .. } => home.clone(),
        };
        let visible = AppSandbox {
            identity: app.to_string(),
            home,
            readonly: vec![installed.dir.clone()],
            cwd: cwd.clone(),
            hidden: vec![self.dir.root().to_path_buf()],
            network: release.plan.no_network.then_some(sandbox::Network::None),
            // An HTTP server listens in its own network namespace; the host port relays to it.
            expose: http_port.map(|(port, _)| vec![port]).unwrap_or_default(),
            ..Default::default()
        };
        if release.plan.no_network && !self.tools.sandbox.is_active() {
            return Err("deploy.network = \"none\" needs the server sandbox, which is not active on this host (see `[sandbox]`)".into());
        }
        if release.plan.no_network && http_port.is_some() {
            return Err("deploy.network = \"none\" cannot serve a transport = \"http\" server (nothing could reach its port); use stdio".into());
        }
        let argv = sandbox::wrap(&self.tools.sandbox, &visible, &argv)?;
        let (backend, server) = match (&release.plan.transport, http_port) {
            (Transport::Http { path, .. }, Some((port, fixed_port))) => {
                let spec = HttpServerSpec {
                    app: app.to_string(),
                    release: release.version,
                    argv,
                    env,
                    cwd,
                    port,
                    fixed_port,
                };
                let server = HttpServer::new(spec, self.settings.lifecycle, logs.clone());
                let backend = Backend::http(server.url(path), Vec::new(), Some(WakeHandle(server.clone())));
                (backend, Some(server))
            }
            _ => (Backend::Stdio { argv, env, cwd }, None),
        };
        let route = AppRoute {
            backend,
            // The deployer adds the daemon-wide origins and rate limit.
            allowed_origins: Vec::new(),
            shared: release.plan.shared,
            rate_limit: None,
            auth: release.plan.auth,
            warm: release.plan.warm.map_or(self.settings.warm_spares, |n| n as usize),
        };
        Ok((route, server))
    }

    /// Serves the new route on a private loopback gateway (same code as `/mcp/APP`) and probes it.
    ///
    /// A stdio release is probed with 2026-07-28 requests (`health::Style`): the private gateway learns
    /// the server's era (a throwaway probe, overlapping the start of the process that will answer) and
    /// serves the probe from its pool; what it learnt and the process it proved are returned for the
    /// daemon's gateway to adopt, so the push's process goes on serving.
    async fn health_gate(
        &self,
        app: &AppName,
        route: &AppRoute,
        logs: &Arc<AppLogs>,
    ) -> Result<(Introspection, Option<Primed>), String> {
        struct One(Arc<AppRoute>, String);
        impl crate::gateway::AppDirectory for One {
            fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
                (app == self.1).then(|| self.0.clone())
            }
        }
        let cfg = GatewaySettings {
            mount: Mount::Single { path: "/mcp".into(), app: app.to_string() },
            ..Default::default()
        };
        let gateway = Gateway::new(
            cfg,
            // The probe's own session needs no spare behind it.
            Arc::new(One(Arc::new(AppRoute { warm: 0, ..route.clone() }), app.to_string())),
            None,
            Arc::new(NoAudit),
            logs.clone(),
            None,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let url = format!("http://{}/mcp", listener.local_addr().map_err(|e| e.to_string())?);
        let stop = tokio_util::sync::CancellationToken::new();
        let server = {
            let gateway = gateway.clone();
            let stop = stop.clone();
            tokio::spawn(async move { gateway.serve(listener, stop).await })
        };
        let stateless = route.has_own_processes();
        let style = if stateless {
            gateway.prestart(app.as_str());
            health::Style::Stateless
        } else {
            health::Style::Session
        };
        let result = health::probe(&url, None, self.settings.health_timeout, style).await;
        let primed = match &result {
            Ok(_) if stateless => gateway.export_primed(app.as_str()),
            _ => None,
        };
        stop.cancel();
        gateway.stop_all();
        let _ = server.await;
        let mut intro = result?;
        if let Some(primed) = &primed {
            intro.protocol_version = primed.protocol_version();
            intro.speaks_2026_07_28 = Some(primed.era() == ServerEra::Modern);
        }
        Ok((intro, primed))
    }
}

impl Runtime for LocalRuntime {
    type Staged = LocalStaged;

    async fn stage(self: &Arc<Self>, req: StageRequest<'_>) -> Result<(AppRoute, LocalStaged), String> {
        let StageRequest { app, release, secrets, source_dir, progress, logs, checkpoint, .. } = req;
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
                    let src = source_dir.ok_or("the release has no exported source")?;
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
        checkpoint(release);

        let (route, server) = self.route_for(app, release, secrets, &installed, logs)?;
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
                Ok(()) => self.health_gate(app, &route, logs).await,
                Err(e) => Err(e),
            },
            None => self.health_gate(app, &route, logs).await,
        };
        if let (Err(_), Some(server)) = (&gate, &server) {
            server.shut_down().await;
        }
        let (intro, primed) = match gate {
            Ok(gated) => gated,
            Err(e) => {
                let tail = logs.stderr_tail(app.as_str(), 20);
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
            intro.describe()
        ));
        release.introspection = Some(intro);
        if let Some(server) = &server
            && http_server::listens_on_all_interfaces(server.spec().port)
        {
            progress.step(format!("warning: the server listens on all interfaces (port {}), so other hosts can reach it without a catwalk token unless a firewall blocks that port; make it bind 127.0.0.1 (catwalk sets $HOST=127.0.0.1)",
                server.spec().port
            ));
        }
        Ok((route, LocalStaged { server, primed: Mutex::new(primed) }))
    }

    /// Makes the staged server the app's live one (or none, for a stdio release). The one it replaces
    /// drains: sessions pinned to it keep being served until they go quiet.
    async fn commit(&self, app: &AppName, staged: &LocalStaged, _progress: &Progress) -> Result<(), String> {
        let old = {
            let mut servers = self.servers.lock().expect("servers");
            match &staged.server {
                Some(s) => servers.insert(app.to_string(), s.clone()),
                None => servers.remove(app.as_str()),
            }
        };
        if let Some(old) = old {
            old.retire().await;
        }
        Ok(())
    }

    fn take_primed(&self, staged: &LocalStaged) -> Option<Primed> {
        staged.primed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    async fn abort(&self, _app: &AppName, staged: &LocalStaged, _progress: &Progress) -> Result<(), String> {
        if let Some(server) = &staged.server {
            server.shut_down().await;
        }
        Ok(())
    }

    async fn restart(&self, app: &AppName, _live: Option<&ReleaseRecord>) -> Result<String, String> {
        if let Some(server) = self.live_server(app) {
            server.stop().await;
        }
        Ok("restarted: sessions ended, processes stopped".into())
    }

    async fn destroy(&self, app: &AppName) -> Result<(), String> {
        let server = self.servers.lock().expect("servers").remove(app.as_str());
        if let Some(server) = server {
            server.shut_down().await;
        }
        Ok(())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

async fn port_accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await.is_ok()
}
