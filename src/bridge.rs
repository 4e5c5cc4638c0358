//! `catwalk bridge`: the gateway on its own, serving one stdio MCP server (or one HTTP upstream)
//! at one path. The same code the daemon uses; it also runs inside Fly machines.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::gateway::{
    self, AppDirectory, AppLogs, AppRoute, Authenticator, Backend, EnvTokenAuthenticator, Gateway,
    GatewaySettings, LogKind, Mount, NoAudit,
};
use crate::tls::{AcmeConfig, TlsConfig, TlsRuntime};

/// Environment variables a bridged server gets from the bridge's own environment by default.
/// Everything else must be passed explicitly with --pass-env or --env.
const DEFAULT_PASS_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

/// The name the bridge's single app has in logs and metrics.
const APP: &str = "bridge";

#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// URL path of the MCP endpoint.
    #[arg(long, default_value = "/mcp")]
    pub path: String,
    /// One child for all sessions (ids rewritten) instead of one child per session.
    #[arg(long)]
    pub shared: bool,
    /// Allowed browser Origin (scheme://host[:port]); repeatable.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Require `Authorization: Bearer <value of this environment variable>`.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Set NAME=VALUE in the server's environment; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Pass this variable from the bridge's environment to the server; repeatable.
    /// PATH, HOME, LANG, LC_ALL, TZ, TMPDIR and USER are passed by default.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Reap a session whose client has no open stream and no request for this long.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub session_grace: humantime::Duration,
    /// Reap a session without any request for this long.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub idle_timeout: humantime::Duration,
    /// Interval of SSE keep-alive comments (they also reveal clients that went away).
    #[arg(long, value_name = "DURATION", default_value = "15s")]
    pub keepalive: humantime::Duration,
    /// Server processes kept started ahead of need, so a new session's `initialize` reaches a running
    /// process (0: start one per session on demand; ignored with --shared).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub warm: u8,
    /// Release the warm spares after this long without a new session (0: never).
    #[arg(long, value_name = "DURATION", default_value = "15m")]
    pub warm_idle: humantime::Duration,
    /// How long a server that asked a 2026-07-28 client for input (elicitation, sampling, roots) waits for
    /// the client's retry before it is stopped and the call fails.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub input_timeout: humantime::Duration,
    /// Most concurrent sessions (with one process each unless --shared).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_sessions: usize,
    /// Most open connections from one client address (0: no cap).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// Most processes serving MCP 2026-07-28 requests at once for one token (or, without --token-env, for
    /// everyone); more requests at once wait for one of them.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub pool_size: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Proxy to this Streamable HTTP server (http://...) instead of running a command.
    #[arg(long, value_name = "URL", conflicts_with = "command")]
    pub upstream: Option<String>,
    /// Header sent to the upstream (NAME: VALUE), e.g. its credential; repeatable.
    #[arg(long = "upstream-header", value_name = "NAME: VALUE", requires = "upstream")]
    pub upstream_header: Vec<String>,
    /// HTTPS options (boxed: they would make every `Command` value large).
    #[command(flatten)]
    pub tls: Box<BridgeTlsArgs>,
    /// The stdio MCP server to run: CMD [ARGS...] after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `catwalk bridge` HTTPS flags: certificate files, or ACME.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BridgeTlsArgs {
    /// Serve HTTPS with this PEM certificate chain (leaf first); reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_key", help_heading = "HTTPS")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert", help_heading = "HTTPS")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate for this DNS name from an ACME CA (Let's Encrypt by default),
    /// validated with TLS-ALPN-01 on --listen, or HTTP-01 on --redirect-listen; repeatable.
    #[arg(
        long = "acme-domain",
        value_name = "DOMAIN",
        conflicts_with = "tls_cert",
        requires = "acme_cache",
        help_heading = "HTTPS"
    )]
    pub acme_domain: Vec<String>,
    /// ACME directory: "production" (Let's Encrypt, default), "staging", or an https:// URL.
    #[arg(long, value_name = "URL", requires = "acme_domain", help_heading = "HTTPS")]
    pub acme_directory: Option<String>,
    /// Contact email for the ACME account.
    #[arg(long, value_name = "EMAIL", requires = "acme_domain", help_heading = "HTTPS")]
    pub acme_contact: Option<String>,
    /// Directory keeping the ACME account key and certificates (created 0700).
    #[arg(long, value_name = "DIR", requires = "acme_domain", help_heading = "HTTPS")]
    pub acme_cache: Option<PathBuf>,
    /// PEM CA certificate that signed a private ACME server's HTTPS certificate (step-ca, Pebble).
    #[arg(long, value_name = "FILE", requires = "acme_domain", help_heading = "HTTPS")]
    pub acme_ca_bundle: Option<PathBuf>,
    /// Renew the ACME certificate when this much validity is left (default: a third of its lifetime,
    /// at most 30 days).
    #[arg(long, value_name = "DURATION", requires = "acme_domain", help_heading = "HTTPS")]
    pub acme_renew_before: Option<String>,
    /// Plain-HTTP listener that redirects to HTTPS (301) and answers ACME HTTP-01 challenges.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "HTTPS")]
    pub redirect_listen: Option<SocketAddr>,
    /// Do not send Strict-Transport-Security.
    #[arg(long, help_heading = "HTTPS")]
    pub no_hsts: bool,
}

struct SingleApp(Arc<AppRoute>);

impl AppDirectory for SingleApp {
    fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
        (app == APP).then(|| self.0.clone())
    }
}

fn backend(args: &BridgeArgs) -> anyhow::Result<Backend> {
    if let Some(url) = &args.upstream {
        let mut headers = Vec::new();
        for h in &args.upstream_header {
            let Some((k, v)) = h.split_once(':') else {
                bail!("--upstream-header {h:?}: expected `NAME: VALUE`");
            };
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        return Ok(Backend::http(url.clone(), headers, None));
    }
    if args.command.is_empty() {
        bail!(
            "no server to bridge: give the command after `--` (catwalk bridge --listen 127.0.0.1:8931 -- CMD ARGS...) or use --upstream URL"
        );
    }
    let mut env = BTreeMap::new();
    for name in DEFAULT_PASS_ENV.iter().copied().chain(args.pass_env.iter().map(String::as_str)) {
        if let Ok(v) = std::env::var(name) {
            env.insert(name.to_string(), v);
        }
    }
    for kv in &args.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env {kv:?}: expected NAME=VALUE");
        };
        if k.is_empty() {
            bail!("--env {kv:?}: the variable name is empty");
        }
        env.insert(k.to_string(), v.to_string());
    }
    let cwd = std::env::current_dir().context("reading the current directory for the server")?;
    Ok(Backend::Stdio { argv: args.command.clone(), env, cwd })
}

/// The `[http.tls]` equivalent of the HTTPS flags (`None`: plain HTTP).
fn tls_config(args: &BridgeTlsArgs) -> Option<TlsConfig> {
    let acme = (!args.acme_domain.is_empty()).then(|| AcmeConfig {
        domains: args.acme_domain.clone(),
        contact: args.acme_contact.clone(),
        directory: args.acme_directory.clone(),
        cache_dir: args.acme_cache.clone(),
        ca_bundle: args.acme_ca_bundle.clone(),
        renew_before: args.acme_renew_before.clone(),
    });
    if args.tls_cert.is_none() && acme.is_none() {
        return None;
    }
    Some(TlsConfig {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        acme,
        redirect_listen: args.redirect_listen,
        hsts: !args.no_hsts,
    })
}

/// Run the bridge until SIGINT/SIGTERM.
pub async fn run(args: BridgeArgs) -> anyhow::Result<()> {
    if !args.path.starts_with('/') {
        bail!("--path {:?} must start with /", args.path);
    }
    let route = AppRoute {
        backend: backend(&args)?,
        allowed_origins: args.allow_origin.clone(),
        shared: args.shared,
        rate_limit: None,
        auth: Default::default(),
        warm: args.warm as usize,
    };
    let auth: Option<Arc<dyn Authenticator>> = match &args.token_env {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Arc::new(EnvTokenAuthenticator::new(v))),
            _ => bail!("--token-env {var}: the environment variable {var} is not set or empty"),
        },
        None => None,
    };
    let cfg = GatewaySettings {
        mount: Mount::Single { path: args.path.clone(), app: APP.into() },
        session_grace: args.session_grace.into(),
        session_idle_timeout: args.idle_timeout.into(),
        max_body_bytes: args.max_body_bytes,
        keepalive_interval: args.keepalive.into(),
        max_sessions_per_app: args.max_sessions,
        max_connections_per_ip: args.max_connections_per_ip,
        pool_max_per_context: args.pool_size.max(1),
        input_timeout: args.input_timeout.into(),
        spare_idle_timeout: {
            let idle: std::time::Duration = args.warm_idle.into();
            (!idle.is_zero()).then_some(idle)
        },
        ..GatewaySettings::default()
    };
    let tls = match tls_config(&args.tls) {
        Some(cfg) => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let settings = cfg.resolve(&cwd).map_err(anyhow::Error::msg)?;
            Some(TlsRuntime::new(settings)?)
        }
        None if args.tls.redirect_listen.is_some() => {
            bail!("--redirect-listen redirects to HTTPS: give --tls-cert/--tls-key or --acme-domain too")
        }
        None => None,
    };
    let logs = Arc::new(AppLogs::new(2000));
    // The server's stderr and lifecycle events go to the bridge's stderr.
    let (_, mut follow) = logs.subscribe(APP, 0);
    tokio::spawn(async move {
        loop {
            match follow.recv().await {
                Ok(line) => match line.kind {
                    LogKind::Stderr => eprintln!("[server] {}", line.text),
                    LogKind::Event => eprintln!("[bridge] {}", line.text),
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("[bridge] {n} log lines skipped (stderr too fast)");
                }
                Err(_) => return,
            }
        }
    });
    let gw = Gateway::new(
        cfg,
        Arc::new(SingleApp(Arc::new(route))),
        auth,
        Arc::new(NoAudit),
        logs,
        Some(gateway::metrics::install()),
    );
    // The first session should not wait for a start-up either.
    gw.warm(APP);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                stop.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    let Some(tls) = tls else {
        eprintln!("listening on http://{addr}{}", args.path);
        // serve() stops every child (SIGTERM, then SIGKILL of its process group) before returning.
        gw.serve(listener, shutdown).await?;
        return Ok(());
    };
    let redirect = match tls.redirect_listen() {
        Some(a) => {
            let r = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("could not listen on {a} (--redirect-listen)"))?;
            eprintln!("redirecting http://{}/ to https", r.local_addr()?);
            Some(r)
        }
        None => None,
    };
    eprintln!("listening on https://{addr}{}", args.path);
    gw.serve_tls(listener, redirect, tls, shutdown).await?;
    Ok(())
}
