//! The MCP gateway: a Streamable HTTP endpoint in front of stdio MCP servers (a child process per
//! session, or one shared child) and of HTTP MCP servers (a streaming reverse proxy).
//!
//! The same [`Gateway`] serves `catwalk bridge` (one app at `/mcp`) and the daemon (many apps at
//! `/mcp/<app>`). Everything that depends on the daemon's state is behind three small traits:
//! - [`AppDirectory`]: app name → [`AppRoute`] (backend + per-app options),
//! - [`Authenticator`]: bearer token → [`TokenIdentity`] (bridge: none, or one env-var token),
//! - [`AuditSink`]: one [`AuditEvent`] per JSON-RPC request (never arguments or results).
//!
//! Request path for a stdio app (see `http.rs`): route → Host/Origin → auth → rate limit →
//! method/Accept/Content-Type/version checks → session → child stdin; the child's reader task
//! routes each stdout line to the waiting request (JSON fast path, or SSE once a notification or
//! server→client request arrives first), the standalone GET stream, or a bounded backlog.

pub mod applog;
mod auth;
mod exchange;
mod http;
pub(crate) mod jsonrpc;
pub mod metrics;
mod modern;
mod param_headers;
mod park;
mod passthrough;
mod pool;
pub(crate) mod protocol;
mod server_era;
mod session;
mod session_endpoint;
mod shared_child;
mod spares;
pub(crate) mod sse;
mod stdio;
mod translated_session;
mod upstream;
mod wake;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use applog::{AppLogs, LogKind, LogLine};
pub use auth::{AuthError, AuthMode, EnvTokenAuthenticator, TokenIdentity};
/// The 2026-07-28 revision's version and `_meta` keys, for clients of the gateway (the health gate).
pub use modern::{META_CAPABILITIES, META_CLIENT_INFO, META_VERSION, MODERN_VERSION, server_info_of};
pub use pool::Primed;
pub use protocol::GatewayBody;
pub use server_era::ServerEra;
/// The bounded line reader of child output, also used for install steps' output.
pub(crate) use stdio::{Line as BoundedLine, read_line_bounded};
pub use wake::{Activity, InFlight, Wake, WakeHandle};

/// How to reach an app's MCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A stdio server: started with exactly this argv, environment (nothing inherited) and
    /// working directory, in its own process group.
    Stdio { argv: Vec<String>, env: BTreeMap<String, String>, cwd: PathBuf },
    /// Streamable HTTP servers (`http://` only) running the same release: requests are proxied,
    /// bodies streamed. Usually one; several when the app runs on several machines
    /// (`[deploy] machines`): a request of no session goes to the least busy of them, and a
    /// 2025 session stays on the one that created it (see `upstream.rs`). Never empty.
    Http { targets: Vec<HttpTarget> },
}

impl Backend {
    /// The HTTP server at `index` of this backend (`None` for a stdio server or past the end).
    pub fn http_target(&self, index: usize) -> Option<&HttpTarget> {
        match self {
            Backend::Http { targets } => targets.get(index),
            Backend::Stdio { .. } => None,
        }
    }

    /// An HTTP backend of one server.
    pub fn http(url: impl Into<String>, headers: Vec<(String, String)>, wake: Option<WakeHandle>) -> Backend {
        Backend::Http { targets: vec![HttpTarget::new(url, headers, wake)] }
    }
}

/// One Streamable HTTP server of an app (one of its machines).
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub url: String,
    /// Sent upstream on every request (e.g. the upstream's own credential); the client's
    /// `Authorization` is never forwarded.
    pub headers: Vec<(String, String)>,
    /// When set, starts a server that scaled to zero before a request is forwarded (see [`Wake`]).
    pub wake: Option<WakeHandle>,
    /// Requests in flight to a target without a wake (with one, the wake's counter is used, which
    /// its idle timer reads): how busy it is when a request of no session is placed.
    load: Arc<Activity>,
    /// A start in the background is under way (see `upstream::place`): one at a time.
    starting: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpTarget {
    pub fn new(
        url: impl Into<String>,
        headers: Vec<(String, String)>,
        wake: Option<WakeHandle>,
    ) -> HttpTarget {
        HttpTarget { url: url.into(), headers, wake, load: Arc::default(), starting: Arc::default() }
    }

    /// Starts a server that sleeps, without waiting for it (at most one such start at a time).
    pub(crate) fn start_in_background(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(wake) = self.wake.clone() else { return };
        if self.starting.swap(true, SeqCst) {
            return;
        }
        let starting = self.starting.clone();
        tokio::spawn(async move {
            if let Err(e) = wake.0.wake().await {
                tracing::info!("starting one more server for the load failed: {e}");
            }
            starting.store(false, SeqCst);
        });
    }

    /// The requests in flight to this server (and, with a wake, what keeps it from scaling to zero).
    pub fn activity(&self) -> &Arc<Activity> {
        match &self.wake {
            Some(w) => w.0.activity(),
            None => &self.load,
        }
    }

    /// Known to be stopped (scaled to zero): a request would wait for its start.
    pub fn is_asleep(&self) -> bool {
        self.wake.as_ref().is_some_and(|w| w.0.is_asleep())
    }
}

/// Two targets are the same server when they have the same address, credential and wake (the load
/// counter is state, not identity).
impl PartialEq for HttpTarget {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.headers == other.headers && self.wake == other.wake
    }
}
impl Eq for HttpTarget {}

/// What an app's server processes are for, counted (see [`Gateway::processes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Processes {
    /// Open 2025 sessions (each its own process, unless the app shares one or catwalk translates).
    pub sessions: usize,
    /// Warm spares, started and not initialized.
    pub spares: usize,
    /// Processes lent to 2026-07-28 requests (idle ones included).
    pub pooled: usize,
    /// Processes the push's health gate proved, waiting for a 2026-07-28 client.
    pub proven: usize,
}

impl Processes {
    /// `2 sessions, 1 warm spare, 1 for 2026-07-28 requests, 1 proven by the push`, or `none running`.
    pub fn describe(&self) -> String {
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = Vec::new();
        if self.sessions > 0 {
            parts.push(plural(self.sessions, "session", "sessions"));
        }
        if self.spares > 0 {
            parts.push(plural(self.spares, "warm spare", "warm spares"));
        }
        if self.pooled > 0 {
            parts.push(format!("{} for 2026-07-28 requests", self.pooled));
        }
        if self.proven > 0 {
            parts.push(format!("{} proven by the push, waiting for a 2026-07-28 client", self.proven));
        }
        if parts.is_empty() { "none running".into() } else { parts.join(", ") }
    }
}

/// Per-token request rate: one request replenished every `period`, bursts up to `burst`.
/// (`period` 100 ms, `burst` 20 = 10 requests/s sustained, 20 at once.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub period: Duration,
    pub burst: NonZeroU32,
}

/// Everything the gateway needs to serve one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRoute {
    pub backend: Backend,
    /// Extra allowed `Origin` values (`scheme://host[:port]`), besides the public origin and,
    /// on a loopback listener, loopback origins.
    pub allowed_origins: Vec<String>,
    /// One child shared by all sessions (ids rewritten) instead of one child per session.
    pub shared: bool,
    pub rate_limit: Option<RateLimit>,
    /// Which credentials the endpoint accepts (`Public`: none at all).
    pub auth: AuthMode,
    /// Warm spares to keep for a stdio app with a process per session (see `spares.rs`); 0: none.
    pub warm: usize,
}

impl AppRoute {
    /// A stdio app whose clients get processes of their own (not one shared child): what the 2026-07-28
    /// pool, the health gate's proven process and translated sessions apply to.
    pub fn has_own_processes(&self) -> bool {
        !self.shared && matches!(self.backend, Backend::Stdio { .. })
    }
}

/// The daemon's own endpoints under `/_catwalk/` (e.g. release source downloads for Fly machines),
/// answered before any MCP routing and without the MCP token check: each checks its own credential.
pub trait InternalRoutes: Send + Sync {
    /// Answers a request whose path was `/_catwalk/<rest>`.
    fn serve(
        &self,
        rest: &str,
        req: ::http::Request<hyper::body::Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ::http::Response<GatewayBody>> + Send + '_>>;
}

/// Resolves app names. Called once per HTTP request, so keep it cheap (return a shared `Arc`).
pub trait AppDirectory: Send + Sync {
    fn resolve(&self, app: &str) -> Option<Arc<AppRoute>>;
}

/// Checks bearer tokens. `bearer` is the value after `Authorization: Bearer`, `None` when absent.
/// Implementations must compare in constant time and must fail for unknown apps.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, app: &str, bearer: Option<&str>) -> Result<TokenIdentity, AuthError>;

    /// Like [`Authenticator::authenticate`], knowing the app's [`AuthMode`] (never `Public`: the gateway
    /// lets those through itself). The default ignores the mode (a single-token authenticator).
    fn authenticate_in(
        &self,
        app: &str,
        bearer: Option<&str>,
        _mode: AuthMode,
    ) -> Result<TokenIdentity, AuthError> {
        self.authenticate(app, bearer)
    }

    /// The `WWW-Authenticate` value of a 401 for `app` (the daemon adds RFC 9728 `resource_metadata`).
    fn challenge(&self, _app: &str, _mode: AuthMode, _error: &AuthError) -> String {
        "Bearer".into()
    }
}

/// One audit record per JSON-RPC request that reached a backend (or was refused by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub app: String,
    pub token_name: Option<String>,
    pub method: String,
    /// `params.name` of `tools/call` (and of `prompts/get`).
    pub tool_name: Option<String>,
    /// HTTP status of the exchange (200 for a JSON-RPC error delivered normally).
    pub status: u16,
    /// `true` when the final JSON-RPC message was an error object.
    pub error: bool,
    pub duration: Duration,
}

/// Receives audit records. Must not block (the daemon queues and batch-writes them).
pub trait AuditSink: Send + Sync {
    fn record(&self, event: AuditEvent);
    /// `false` lets the gateway skip building events nobody keeps.
    fn enabled(&self) -> bool {
        true
    }
}

/// Discards audit records (the standalone bridge).
pub struct NoAudit;
impl AuditSink for NoAudit {
    fn record(&self, _event: AuditEvent) {}
    fn enabled(&self) -> bool {
        false
    }
}

/// Where the MCP endpoint lives in the URL space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// One app at an exact path (the bridge: `/mcp`).
    Single { path: String, app: String },
    /// Many apps under a prefix: `/mcp/` serves `/mcp/<app>`.
    Prefix(String),
}

/// Limits and timeouts. [`GatewaySettings::default`] has production values.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub mount: Mount,
    /// The daemon's public origin (`https://deploy.example.com`), always an allowed `Origin`.
    pub public_origin: Option<String>,
    /// Largest accepted request body (413 above).
    pub max_body_bytes: usize,
    /// Time allowed to start a request and send its headers (also bounds idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Most open connections in total / per client address (0: no cap); see `crate::listener`.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Time allowed to send a request body.
    pub body_read_timeout: Duration,
    /// Interval of SSE keep-alive comments.
    pub keepalive_interval: Duration,
    /// A session with no open stream and no request in flight for this long is reaped.
    pub session_grace: Duration,
    /// A session without any request for this long is reaped even with a stream open.
    pub session_idle_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when stopping a child.
    pub kill_grace: Duration,
    /// SSE events kept per session for `Last-Event-ID` resumption.
    pub replay_events: usize,
    /// Server messages kept for the next GET stream when no stream can take them.
    pub backlog_messages: usize,
    /// Most concurrent sessions per app (each may be a process): initialize answers 503 above.
    /// Warm spares count against it too.
    pub max_sessions_per_app: usize,
    /// An app without a new session for this long releases its warm spares (`None`: never).
    pub spare_idle_timeout: Option<Duration>,
    /// A pooled child of the 2026-07-28 endpoint idle for this long is stopped (see `pool.rs`).
    pub pool_idle_timeout: Duration,
    /// Most pooled children per app and authorization context (concurrent modern requests of one token).
    pub pool_max_per_context: usize,
    /// Time a pooled child gets to answer the gateway's `initialize`.
    pub pool_init_timeout: Duration,
    /// How long a pooled child that asked a 2026-07-28 client for input waits for the client's retry
    /// before it is stopped and the call fails (see `park.rs`).
    pub input_timeout: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            mount: Mount::Prefix("/mcp/".into()),
            public_origin: None,
            max_body_bytes: 4 << 20,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
            body_read_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            session_grace: Duration::from_secs(300),
            session_idle_timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(3),
            replay_events: 512,
            backlog_messages: 256,
            max_sessions_per_app: 4096,
            spare_idle_timeout: Some(Duration::from_secs(15 * 60)),
            pool_idle_timeout: Duration::from_secs(5 * 60),
            pool_max_per_context: 8,
            pool_init_timeout: Duration::from_secs(60),
            input_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// The gateway. Create with [`Gateway::new`], then either [`Gateway::serve`] a listener or call
/// [`Gateway::handle`] from the daemon's own hyper service.
pub struct Gateway {
    cfg: GatewaySettings,
    directory: Arc<dyn AppDirectory>,
    auth: Option<Arc<dyn Authenticator>>,
    audit: Arc<dyn AuditSink>,
    logs: Arc<AppLogs>,
    metrics: Option<::metrics_exporter_prometheus::PrometheusHandle>,
    sessions: Mutex<HashMap<Arc<str>, Arc<session::Session>>>,
    shared: Mutex<HashMap<String, Arc<shared_child::SharedChild>>>,
    spares: spares::Spares,
    pool: Arc<pool::Pool>,
    /// This gateway's children, for its shutdown (never another gateway's: see `stdio::LiveGroups`).
    groups: Arc<stdio::LiveGroups>,
    parking: park::Parking,
    limiters: auth::Limiters,
    proxy: upstream::Proxy,
    internal: std::sync::OnceLock<Arc<dyn InternalRoutes>>,
    /// OAuth endpoints (`/.well-known/...`, `/oauth/...`), given the whole path.
    oauth: std::sync::OnceLock<Arc<dyn InternalRoutes>>,
}

impl Gateway {
    /// Build a gateway. `metrics` is the handle of an installed Prometheus recorder (see
    /// [`metrics::install`]); without it `/metrics` answers 404.
    pub fn new(
        cfg: GatewaySettings,
        directory: Arc<dyn AppDirectory>,
        auth: Option<Arc<dyn Authenticator>>,
        audit: Arc<dyn AuditSink>,
        logs: Arc<AppLogs>,
        metrics: Option<::metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Arc<Gateway> {
        let groups = Arc::new(stdio::LiveGroups::default());
        let spares = spares::Spares::new(groups.clone(), logs.clone(), cfg.kill_grace);
        Arc::new(Gateway {
            cfg,
            directory,
            auth,
            audit,
            logs,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            spares,
            groups,
            pool: Arc::new(pool::Pool::default()),
            parking: park::Parking::default(),
            limiters: auth::Limiters::default(),
            proxy: upstream::Proxy::new(),
            internal: std::sync::OnceLock::new(),
            oauth: std::sync::OnceLock::new(),
        })
    }

    /// Serves `/_catwalk/...` with `routes` (set once, by the daemon; later calls are ignored).
    pub fn set_internal_routes(&self, routes: Arc<dyn InternalRoutes>) {
        let _ = self.internal.set(routes);
    }

    /// Serves `/.well-known/*` and `/oauth/*` with `routes` (the daemon's OAuth authorization server and
    /// protected-resource metadata), passing the whole path; set once.
    pub fn set_oauth_routes(&self, routes: Arc<dyn InternalRoutes>) {
        let _ = self.oauth.set(routes);
    }

    /// The per-app logs (child stderr and lifecycle events) for the `logs` command.
    pub fn logs(&self) -> &Arc<AppLogs> {
        &self.logs
    }

    /// Number of live MCP sessions (stdio apps) across all apps.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// End every session of `app` (their children are stopped; clients get 404 and
    /// re-initialize) and stop its shared child. Call when the app's release changes.
    pub fn drain_app(&self, app: &str) {
        self.proxy.unpin_app(app);
        let victims: Vec<_> = match self.sessions.lock() {
            Ok(s) => s.values().filter(|s| &*s.app == app).cloned().collect(),
            Err(_) => Vec::new(),
        };
        for s in victims {
            self.end_session(&s, "the app was redeployed or stopped");
        }
        let shared = self.shared.lock().ok().and_then(|mut m| m.remove(app));
        if let Some(shared) = shared {
            shared.stop();
        }
        self.spares.drop_app(app);
        self.pool.drop_app(app);
        self.parking.drop_app(app);
    }

    /// Open sessions of `app`.
    fn app_sessions(&self, app: &str) -> usize {
        self.sessions.lock().map(|m| m.values().filter(|s| &*s.app == app).count()).unwrap_or(0)
    }

    /// Idle pooled children of `app` (2026-07-28 requests to a legacy server), for tests and `info`.
    pub fn pooled_idle(&self, app: &str) -> usize {
        self.pool.idle(app)
    }

    /// The server processes `app` runs now, by what they are for (`info APP`).
    pub fn processes(&self, app: &str) -> Processes {
        let primed = self.pool.primed(app);
        Processes {
            sessions: self.app_sessions(app),
            spares: self.spares.ready(app),
            pooled: self.pool.live(app).saturating_sub(primed),
            proven: primed,
        }
    }

    /// Brings `app`'s warm spares in line with its current route: spares of an older release are
    /// stopped and, when the route wants them, new ones start. The daemon calls it whenever it points
    /// the app at a release (push, rollback, restore, restart); the reaper keeps them topped up.
    pub fn warm(self: &Arc<Self>, app: &str) {
        match self.directory.resolve(app) {
            Some(route) => {
                self.fill_spares(app, &route);
                if route.warm > 0 && !route.shared {
                    // Instant first answers for 2026-07-28 clients too: the release's era is learnt now,
                    // not by its first modern request (after the spares, so none of them is the probe).
                    pool::learn_era(self, app, &route, true);
                }
            }
            None => self.spares.drop_app(app),
        }
    }

    /// Starts one process of `app`'s release ahead of its first request and learns its era meanwhile, so
    /// the two start-ups overlap. For the health gate's private gateway, whose route wants no spares.
    pub fn prestart(self: &Arc<Self>, app: &str) {
        let Some(route) = self.directory.resolve(app).filter(|r| r.has_own_processes()) else { return };
        let one = AppRoute { warm: 1, ..(*route).clone() };
        self.spares.fill(app, &one, 0, self.cfg.max_sessions_per_app, "started for the health gate");
        pool::learn_era(self, app, &route, false);
    }

    /// What a health gate learnt and proved for `app` on this (private) gateway, taken out of it: see
    /// [`Primed`]. `None` when the gate did not learn the release's era (an HTTP or shared-process app).
    pub fn export_primed(&self, app: &str) -> Option<Primed> {
        self.pool.export_primed(app)
    }

    /// Adopts what the health gate of `app`'s live release left: its era (no probe), and the process it
    /// proved, which serves the first 2026-07-28 client instead of a new one. Call right after pointing
    /// the app at the release; a route that cannot use it drops it (its processes stop).
    pub fn adopt(&self, app: &str, primed: Primed) {
        let Some(route) = self.directory.resolve(app).filter(|r| r.has_own_processes()) else { return };
        for pid in primed.pids() {
            self.logs.push(
                app,
                LogKind::Event,
                &format!("process {pid} passed the health gate and waits for a 2026-07-28 client"),
            );
        }
        self.pool.adopt(app, &route.backend, primed, &self.groups);
    }

    /// How 2026-07-28 requests reach `app`'s live release, for `info` (`None`: not known yet, or no route).
    pub fn modern_path(&self, app: &str) -> Option<&'static str> {
        let route = self.directory.resolve(app)?;
        match &route.backend {
            Backend::Stdio { .. } => match self.pool.era_known(app, &route.backend)? {
                server_era::ServerEra::Modern => {
                    Some("passed as they are (the server speaks 2026-07-28 itself)")
                }
                server_era::ServerEra::Handshake => {
                    Some("translated by catwalk (the server speaks only the handshake era)")
                }
            },
            Backend::Http { .. } => Some("passed as they are (an HTTP server)"),
        }
    }

    /// How 2025 sessions reach `app`'s live release, for `info`, when catwalk translates them (the server
    /// speaks 2026-07-28 only); `None` when they reach the server as they are, or it is not known yet.
    pub fn session_translation(&self, app: &str) -> Option<&'static str> {
        let route = self.directory.resolve(app)?;
        let modern = self.pool.era_known(app, &route.backend)? == server_era::ServerEra::Modern;
        (modern && !self.pool.sessions_known(app, &route.backend)?)
            .then_some("translated by catwalk (the server speaks MCP 2026-07-28 only)")
    }

    /// Warm spares ready for `app` right now.
    pub fn spares_ready(&self, app: &str) -> usize {
        self.spares.ready(app)
    }

    fn fill_spares(&self, app: &str, route: &AppRoute) {
        let sessions = self.app_sessions(app) + self.pool.live(app);
        self.spares.fill(app, route, sessions, self.cfg.max_sessions_per_app, "is a warm spare");
    }

    /// End all sessions and stop all children (daemon shutdown).
    pub fn stop_all(&self) {
        let victims: Vec<_> = match self.sessions.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for s in victims {
            self.end_session(&s, "the gateway is shutting down");
        }
        let shared: Vec<_> = match self.shared.lock() {
            Ok(mut m) => m.drain().map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        for s in shared {
            s.stop();
        }
        self.spares.drop_all();
        self.pool.drop_all();
        self.parking.clear();
    }

    /// Answer one HTTP request (for the daemon's own server). `local` is the address the
    /// connection was accepted on (Host validation applies when it is a loopback address).
    pub async fn handle(
        self: &Arc<Self>,
        req: ::http::Request<hyper::body::Incoming>,
        local: SocketAddr,
    ) -> ::http::Response<GatewayBody> {
        http::handle(self, req, local).await
    }

    /// Serve HTTP/1.1 and HTTP/2 on `listener` until `shutdown` is cancelled, then end all
    /// sessions and stop all children.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<()> {
        http::serve(self, listener, shutdown).await
    }

    /// Serve HTTPS on `listener` (and the plain redirect/HTTP-01 listener `redirect`, when given) until
    /// `shutdown` is cancelled: the TLS twin of [`Gateway::serve`]. Starts the certificate watcher or
    /// ACME task, reaps sessions of vanished clients, and on shutdown ends every session before draining.
    pub async fn serve_tls(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        redirect: Option<tokio::net::TcpListener>,
        tls: crate::tls::TlsRuntime,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let https_port = listener.local_addr()?.port();
        // Both listeners are bound: the CA may validate as soon as the ACME task places its order.
        tls.start(shutdown.clone())?;
        if let Some(r) = redirect {
            tokio::spawn(crate::tls::serve_redirect(r, tls.clone(), https_port, shutdown.clone()));
        }
        tokio::spawn(http::reaper(Arc::downgrade(self), shutdown.clone()));
        let gw = self.clone();
        let make_service = move |local: SocketAddr| {
            let gw = gw.clone();
            hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(gw.handle(req, local).await) }
            })
        };
        // As `serve` does for plain HTTP: on shutdown end every session first (their SSE bodies end,
        // so connections drain at once), then give the children their SIGTERM→SIGKILL grace.
        let stopper = {
            let (gw, shutdown) = (self.clone(), shutdown.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                gw.stop_all();
            })
        };
        let limits = crate::tls::Limits {
            header_read_timeout: self.cfg.header_read_timeout,
            max_connections: self.cfg.max_connections,
            max_connections_per_ip: self.cfg.max_connections_per_ip,
        };
        crate::tls::serve_https(listener, tls, make_service, limits, shutdown).await?;
        let _ = stopper.await;
        self.groups.wait_all_stopped(self.cfg.kill_grace + Duration::from_millis(500)).await;
        Ok(())
    }

    fn end_session(&self, s: &Arc<session::Session>, why: &str) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(&s.id);
        }
        s.terminate(why);
        ::metrics::gauge!(metrics::SESSIONS).set(self.session_count() as f64);
    }
}
