//! The running daemon: `serve()` wires a [`Platform`] to its listeners.
//!
//! `serve` builds the platform, binds the SSH and HTTP listeners and the control socket, reports readiness to systemd, and on
//! SIGTERM/SIGINT shuts down gracefully: it stops accepting connections, lets running pushes finish for
//! up to `daemon.shutdown_grace` (their hooks still reach the control socket), then kills what is left
//! (git discards an unfinished push's quarantine, so refs stay consistent) and exits.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::datadir::DataDir;
use crate::platform::Platform;
use crate::store::Store;

/// Listen addresses given on the command line (they override the config).
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub ssh_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
}

/// Called once the listeners are bound, with the platform (for `up` to print its hints).
pub type OnReady = Box<dyn FnOnce(&Platform) + Send>;

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(dir: DataDir, options: ServeOptions, on_ready: Option<OnReady>) -> Result<()> {
    let mut config = Config::load(&dir.config())?;
    if let Some(addr) = options.ssh_listen {
        config.ssh.listen = addr;
    }
    if let Some(addr) = options.http_listen {
        config.http.listen = addr;
    }
    let store = Store::open_waiting(&dir.store(), std::time::Duration::from_secs(10))
        .with_context(|| format!("opening {}", dir.store().display()))?;

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

    let platform = Arc::new(Platform::new(dir.clone(), config, store)?);
    platform.route_static_apps()?;
    for problem in platform.deployer.restore() {
        tracing::error!("restoring live releases: {problem}");
    }
    let _watcher = platform.authorized_keys.watch()?;
    let ssh_config = crate::ssh::russh_config(&platform)?;

    tracing::info!("ssh listening on {}", platform.config.ssh.listen);
    tracing::info!("http listening on {}", platform.config.http.listen);
    tracing::info!("MCP endpoints at {}/mcp/APP", platform.config.public_url());
    if let Some(r) = &redirect_listener {
        tracing::info!("http redirect listening on {}", r.local_addr()?);
    }
    tracing::info!("control socket at {}", dir.control_socket().display());

    let ssh_task = tokio::spawn(crate::ssh::serve(platform.clone(), ssh_listener, ssh_config));
    let http_task = {
        let (gateway, stop) = (platform.gateway.clone(), platform.shutdown.clone());
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
    let control_task = tokio::spawn(crate::control::server::serve(platform.clone(), control));

    if let Some(on_ready) = on_ready {
        on_ready(&platform);
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    wait_for_signal().await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    platform.shutdown.cancel();
    let _ = ssh_task.await;
    let _ = http_task.await;

    let grace = platform.config.daemon.shutdown_grace;
    let running = platform.pushes.running();
    if running > 0 {
        tracing::info!("shutting down: waiting up to {grace:?} for {running} running push(es)");
    }
    if tokio::time::timeout(grace, platform.pushes.wait_idle()).await.is_err() {
        tracing::warn!(
            "shutting down: {} push(es) still running after {grace:?}; stopping them (their refs stay unchanged)",
            platform.pushes.running()
        );
        platform.pushes.abort.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), platform.pushes.wait_idle()).await;
    }
    platform.deployer.local.stop_servers().await;
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
