//! Starting a release on the local runtime: the gateway route (argv from validated, pinned values;
//! env = declared values + secrets + a minimal PATH/HOME; the sandbox around it), the HTTP server of a
//! `transport = "http"` release, and the health gate that probes the route through a private gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::secrets::Secrets;
use super::Deployer;
use crate::gateway::{AppRoute, Backend, Gateway, GatewayConfig, Mount, NoAudit, WakeHandle};
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::{Source, Transport};
use crate::runtime::health;
use crate::runtime::http_server::{self, HttpServer, HttpServerSpec};
use crate::runtime::install::{self, Installed};
use crate::runtime::sandbox::{self, AppSandbox};
use crate::store::{Introspection, ReleaseRecord};

impl Deployer {
    /// Makes `server` the app's live HTTP server (or none, for a stdio release). The one it
    /// replaces drains: sessions pinned to it keep being served until they go quiet.
    pub(super) async fn switch_server(&self, app: &AppName, server: Option<Arc<HttpServer>>) {
        let old = {
            let mut servers = self.servers.lock().expect("servers");
            match server {
                Some(s) => servers.insert(app.to_string(), s),
                None => servers.remove(app.as_str()),
            }
        };
        if let Some(old) = old {
            old.retire().await;
        }
    }

    pub(super) fn live_server(&self, app: &AppName) -> Option<Arc<HttpServer>> {
        self.servers.lock().expect("servers").get(app.as_str()).cloned()
    }

    /// Stops every local HTTP server (daemon shutdown).
    pub async fn stop_servers(&self) {
        let all: Vec<_> = self.servers.lock().expect("servers").drain().map(|(_, s)| s).collect();
        for s in all {
            s.shut_down().await;
        }
    }

    /// A server with a fixed port cannot run beside the release it replaces: stop the old one first
    /// (it starts again on demand if the new one fails its gate), and refuse a port held by others.
    pub(super) async fn make_room(
        &self,
        app: &AppName,
        server: &HttpServer,
        progress: &Progress,
    ) -> Result<(), String> {
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
    pub(super) fn route_for(
        &self,
        app: &AppName,
        release: &ReleaseRecord,
        secrets: &Secrets,
        installed: &Installed,
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
                *arg = arg.replace(super::super::validate::PORT_PLACEHOLDER, &port.to_string());
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
                let server = HttpServer::new(spec, self.lifecycle, self.logs.clone());
                let backend = Backend::Http {
                    url: server.url(path),
                    headers: Vec::new(),
                    wake: Some(WakeHandle(server.clone())),
                };
                (backend, Some(server))
            }
            _ => (Backend::Stdio { argv, env, cwd }, None),
        };
        let route = AppRoute {
            backend,
            allowed_origins: self.allowed_origins(&release.plan),
            shared: release.plan.shared,
            rate_limit: self.rate_limit,
            auth: release.plan.auth,
            warm: release.plan.warm.map_or(self.warm_spares, |n| n as usize),
        };
        Ok((route, server))
    }

    /// Serves the new route on a private loopback gateway (same code as `/mcp/APP`) and probes it.
    pub(super) async fn health_gate(&self, app: &AppName, route: &AppRoute) -> Result<Introspection, String> {
        struct One(Arc<AppRoute>, String);
        impl crate::gateway::AppDirectory for One {
            fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
                (app == self.1).then(|| self.0.clone())
            }
        }
        let cfg = GatewayConfig {
            mount: Mount::Single { path: "/mcp".into(), app: app.to_string() },
            ..Default::default()
        };
        let gateway = Gateway::new(
            cfg,
            // The probe's own session needs no spare behind it.
            Arc::new(One(Arc::new(AppRoute { warm: 0, ..route.clone() }), app.to_string())),
            None,
            Arc::new(NoAudit),
            self.logs.clone(),
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
        let result = health::probe(&url, None, self.health_timeout).await;
        stop.cancel();
        gateway.stop_all();
        let _ = server.await;
        result
    }
}

async fn port_accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await.is_ok()
}
