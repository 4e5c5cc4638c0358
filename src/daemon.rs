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

use crate::config::Config;
use crate::datadir::DataDir;
use crate::git::locks::{DeployLocks, PushRegistry};
use crate::ssh::keys::KeyRing;
use crate::store::{Role, Store};

/// State shared by every connection.
pub struct Daemon {
    /// The loaded config, with `ssh.listen`/`http.listen` set to the addresses actually bound.
    pub config: Config,
    pub dir: DataDir,
    pub store: Store,
    pub keyring: Arc<KeyRing>,
    /// Per-app deploy locks (pushes, `apps destroy`).
    pub locks: DeployLocks,
    /// Running pushes: matched by the hooks, drained by shutdown.
    pub pushes: PushRegistry,
    /// Cancelled when shutdown starts: listeners stop accepting, new requests are refused.
    pub shutdown: CancellationToken,
}

impl Daemon {
    /// Builds the state for `dir` with `config` (used by `serve` and by tests).
    pub fn new(dir: DataDir, config: Config, store: Store) -> Daemon {
        let role = Role::parse(&config.ssh.authorized_keys_role).unwrap_or(Role::Deployer);
        let keyring = Arc::new(KeyRing::new(
            store.clone(),
            config.ssh.authorized_keys_file.as_deref(),
            role,
            dir.root(),
        ));
        Daemon {
            config,
            dir,
            store,
            keyring,
            locks: DeployLocks::default(),
            pushes: PushRegistry::default(),
            shutdown: CancellationToken::new(),
        }
    }
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
    let http_listener = TcpListener::bind(config.http.listen).await.with_context(|| {
        format!("binding the HTTP listener on {} (http.listen / --http-listen)", config.http.listen)
    })?;
    config.ssh.listen = ssh_listener.local_addr()?;
    config.http.listen = http_listener.local_addr()?;
    let control = crate::control::server::bind(&dir.control_socket())?;

    let daemon = Arc::new(Daemon::new(dir.clone(), config, store));
    let _watcher = daemon.keyring.watch()?;
    let ssh_config = crate::ssh::russh_config(&daemon)?;

    tracing::info!("ssh listening on {}", daemon.config.ssh.listen);
    tracing::info!("http listening on {}", daemon.config.http.listen);
    tracing::info!("control socket at {}", dir.control_socket().display());

    let ssh_task = tokio::spawn(crate::ssh::serve(daemon.clone(), ssh_listener, ssh_config));
    let http_task = tokio::spawn(serve_http(daemon.clone(), http_listener));
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

/// The HTTP listener. For now it answers `GET /healthz` only; the MCP gateway replaces this function.
pub async fn serve_http(daemon: Arc<Daemon>, listener: TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    loop {
        let (stream, _) = tokio::select! {
            _ = daemon.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("http accept: {e}");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match (req.method(), req.uri().path()) {
                        (&hyper::Method::GET, "/healthz") => (StatusCode::OK, "ok\n"),
                        _ => (StatusCode::NOT_FOUND, "not found\n"),
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}
