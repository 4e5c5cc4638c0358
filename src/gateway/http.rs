//! The hyper server and the request pipeline: routing, Host/Origin, auth, rate limit, then the
//! Streamable HTTP methods (POST/GET/DELETE) for stdio apps or the proxy for HTTP apps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{bearer, query_has_token};
use super::jsonrpc::{self, Classified, Invalid, Kind};
use super::modern;
use super::protocol::{self as p, Resp, SESSION_HEADER};
use super::session::{AuditInfo, Limits, Out, Session, StreamError};
use super::sse::{self, SseBody};
use super::stdio::{self, Link, OwnEvents, SharedChild};
use super::{AppRoute, Backend, Gateway, Mount, TokenIdentity, metrics};

pub async fn serve(
    gw: &Arc<Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tokio::spawn(reaper(Arc::downgrade(gw), shutdown.clone()));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(gw.cfg.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let limits = crate::listener::ConnLimits::new(gw.cfg.max_connections, gw.cfg.max_connections_per_ip);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = admit(&limits, peer) else { continue };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let (builder, watcher, deadline) = (builder.clone(), graceful.watcher(), gw.cfg.header_read_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            // Protocol detection gets the same deadline as the headers (see crate::listener).
            let Ok(io) = crate::listener::first_bytes(stream, deadline).await else { return };
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(&gw, req, local).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
            let _ = watcher.watch(conn).await;
        });
    }
    // Ending the sessions ends their SSE bodies, so graceful shutdown can finish.
    gw.stop_all();
    stdio::wait_all_stopped(gw.cfg.kill_grace + Duration::from_millis(500)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

/// Admits a connection within the caps; a refused one is closed at once (and counted).
pub(crate) fn admit(
    limits: &Arc<crate::listener::ConnLimits>,
    peer: SocketAddr,
) -> Option<crate::listener::ConnPermit> {
    match limits.admit(peer.ip()) {
        Ok(permit) => Some(permit),
        Err(cap) => {
            ::metrics::counter!(metrics::CONNECTIONS_REFUSED, "cap" => cap).increment(1);
            tracing::debug!(%peer, "connection refused: [http] {cap} reached");
            None
        }
    }
}

/// Reap sessions whose client went away or that idled out.
pub(super) async fn reaper(gw: std::sync::Weak<Gateway>, shutdown: CancellationToken) {
    loop {
        let every = match gw.upgrade() {
            Some(g) => (g.cfg.session_grace / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
            None => return,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(g) = gw.upgrade() else { return };
        let all: Vec<Arc<Session>> = match g.sessions.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => continue,
        };
        for s in all {
            if let Some(why) = s.reap_reason(g.cfg.session_grace, g.cfg.session_idle_timeout) {
                g.end_session(&s, why);
            }
        }
        // Scale idle apps' spares to zero; replace spares that died.
        for app in g.spares.tick(g.cfg.spare_idle_timeout, &g.logs) {
            g.warm(&app);
        }
        g.pool.tick(g.cfg.pool_idle_timeout);
        let expired = g.parking.expire();
        if expired > 0 {
            tracing::debug!(
                expired,
                "stopped servers whose 2026-07-28 client never answered their input requests"
            );
        }
    }
}

pub async fn handle(gw: &Arc<Gateway>, req: Request<Incoming>, local: SocketAddr) -> Resp {
    let path = req.uri().path();
    if path == "/healthz" {
        let mut r = p::json(StatusCode::OK, Bytes::from_static(b"ok"));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return r;
    }
    if path == "/metrics" {
        return match &gw.metrics {
            Some(h) => {
                let mut r = p::json(StatusCode::OK, Bytes::from(h.render()));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                r
            }
            None => p::error(StatusCode::NOT_FOUND, -32601, "metrics are not enabled"),
        };
    }
    if let (Some(rest), Some(internal)) = (path.strip_prefix("/_catwalk/"), gw.internal.get()) {
        let rest = rest.to_string();
        return internal.serve(&rest, req).await;
    }
    if (path.starts_with("/.well-known/") || path.starts_with("/oauth/"))
        && let Some(oauth) = gw.oauth.get()
    {
        let path = path.to_string();
        return oauth.serve(&path, req).await;
    }
    let app = match &gw.cfg.mount {
        Mount::Single { path: mp, app } if path == mp => app.clone(),
        Mount::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some(a) if !a.is_empty() && !a.contains('/') => a.to_string(),
            _ => return not_found(path),
        },
        _ => return not_found(path),
    };
    let resp = endpoint(gw, req, &app, local).await;
    let status = resp.status();
    if !status.is_success() {
        // Only apps that have a route get their own label: any client can send `/mcp/<anything>`, and a
        // series per made-up name would grow memory without bound and list probed names on /metrics.
        let label = if gw.directory.resolve(&app).is_some() { app } else { metrics::UNKNOWN_APP.to_string() };
        ::metrics::counter!(metrics::REQUESTS, "app" => label, "method" => "-", "status" => status.as_str().to_string()).increment(1);
    }
    resp
}

fn not_found(path: &str) -> Resp {
    p::error(StatusCode::NOT_FOUND, -32601, &format!("Not Found: no MCP endpoint at {path}"))
}

async fn endpoint(gw: &Arc<Gateway>, req: Request<Incoming>, app: &str, local: SocketAddr) -> Resp {
    let loopback = local.ip().is_loopback();
    let headers = req.headers();
    if let Err(r) = p::check_host(headers, req.uri().authority().map(|a| a.as_str()), loopback) {
        return *r;
    }
    let route = gw.directory.resolve(app);
    let allowed: &[String] = route.as_deref().map(|r| &r.allowed_origins[..]).unwrap_or(&[]);
    if let Err(r) = p::check_origin(headers, allowed, gw.cfg.public_origin.as_deref(), loopback) {
        return *r;
    }
    let mode = route.as_deref().map(|r| r.auth).unwrap_or_default();
    if query_has_token(req.uri().query()) {
        let challenge = gw.auth.as_ref().map(|a| a.challenge(app, mode, &super::AuthError::Invalid));
        return unauthorized(
            "tokens in the URL are refused (URLs end up in logs): send `Authorization: Bearer <token>` instead",
            challenge,
        );
    }
    let identity = match (&gw.auth, mode) {
        (_, super::AuthMode::Public) => Some(TokenIdentity::public()),
        (Some(auth), mode) => match auth.authenticate_in(app, bearer(headers), mode) {
            Ok(id) => Some(id),
            Err(e) => return unauthorized(&e.to_string(), Some(auth.challenge(app, mode, &e))),
        },
        (None, _) => None,
    };
    let Some(route) = route else {
        // With tokens, an unknown app was already refused (401, so app names do not leak): this app
        // exists but serves nothing yet (or was destroyed).
        return p::error(
            StatusCode::NOT_FOUND,
            -32601,
            &format!("Not Found: app {app:?} has no live release; push to it first (see `releases {app}`)"),
        );
    };
    if let (Some(limit), Some(id)) = (route.rate_limit, &identity)
        && let Err(wait) = gw.limiters.check(app, limit, &id.token_id)
    {
        let secs = wait.as_secs() + 1;
        let mut r = p::error(
            StatusCode::TOO_MANY_REQUESTS,
            -32000,
            &format!("Too Many Requests: this token's rate limit is exceeded; retry in {secs} s"),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    match &route.backend {
        Backend::Http { .. } => {
            gw.proxy.proxy(req, app, route.clone(), gw.cfg.max_body_bytes, gw.cfg.session_idle_timeout).await
        }
        Backend::Stdio { .. } => {
            if *req.method() != Method::POST && modern::is_modern(req.headers(), false) {
                // 2026-07-28 has no GET stream and no sessions to delete.
                let mut r = p::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    -32600,
                    "Method Not Allowed: MCP 2026-07-28 requests are POSTs (use subscriptions/listen for notifications)",
                );
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            match *req.method() {
                Method::POST => post(gw, req, app, &route, identity).await,
                Method::GET => get(gw, req, app).await,
                Method::DELETE => delete(gw, req, app),
                _ => {
                    let mut r = p::error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        -32600,
                        "Method Not Allowed: the MCP endpoint accepts POST, GET and DELETE",
                    );
                    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
                    r
                }
            }
        }
    }
}

fn unauthorized(msg: &str, challenge: Option<String>) -> Resp {
    let mut r = p::error(StatusCode::UNAUTHORIZED, -32001, &format!("Unauthorized: {msg}"));
    let challenge = challenge.and_then(|c| HeaderValue::from_str(&c).ok());
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.unwrap_or_else(|| HeaderValue::from_static("Bearer")));
    r
}

fn session_missing() -> Resp {
    p::error(
        StatusCode::BAD_REQUEST,
        -32600,
        "Bad Request: the Mcp-Session-Id header is required; send an initialize request first to get one",
    )
}

fn session_unknown() -> Resp {
    p::error(
        StatusCode::NOT_FOUND,
        -32001,
        "Not Found: this MCP session does not exist or has ended; start a new one with an initialize request without Mcp-Session-Id",
    )
}

impl Gateway {
    /// The live session `id` of `app`. A session of another app is "unknown": a token for one
    /// app must never reach another app's server, even with a guessed or leaked session id.
    fn lookup(&self, app: &str, id: &str) -> Option<Arc<Session>> {
        let s = self.sessions.lock().ok()?.get(id).cloned()?;
        if &*s.app != app {
            return None;
        }
        if s.is_terminated() {
            self.end_session(&s, "the session ended");
            return None;
        }
        Some(s)
    }

    fn limits(&self) -> Limits {
        Limits { replay_events: self.cfg.replay_events, backlog_messages: self.cfg.backlog_messages }
    }

    /// The app's shared child, started (or restarted after it died) on demand.
    fn shared_child(&self, app: &str, route: &AppRoute) -> Result<Arc<SharedChild>, String> {
        let Backend::Stdio { argv, env, cwd } = &route.backend else {
            return Err("not a stdio app".into());
        };
        let mut map = self.shared.lock().map_err(|_| "internal lock poisoned".to_string())?;
        if let Some(h) = map.get(app) {
            if !h.is_dead() {
                return Ok(h.clone());
            }
            ::metrics::counter!(metrics::CHILD_RESTARTS, "app" => app.to_string()).increment(1);
        }
        let cmd = stdio::Command { app, argv, env, cwd };
        let hub = SharedChild::start(cmd, self.logs.clone(), self.cfg.kill_grace)?;
        map.insert(app.to_string(), hub.clone());
        Ok(hub)
    }
}

fn session_id() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

async fn read_body(gw: &Gateway, headers: &http::HeaderMap, incoming: Incoming) -> Result<Bytes, Resp> {
    let limit = gw.cfg.max_body_bytes;
    let too_large = || {
        p::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            -32600,
            &format!("Payload Too Large: request bodies are limited to {limit} bytes"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(incoming, limit);
    match tokio::time::timeout(gw.cfg.body_read_timeout, body.collect()).await {
        Err(_) => Err(p::error(
            StatusCode::REQUEST_TIMEOUT,
            -32600,
            "Request Timeout: the request body did not arrive in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(p::error(
            StatusCode::BAD_REQUEST,
            -32700,
            &format!("Bad Request: could not read the request body: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn invalid(e: Invalid) -> Resp {
    match e {
        Invalid::Parse(m) => p::error(StatusCode::BAD_REQUEST, -32700, &format!("Parse error: {m}")),
        Invalid::Shape(m) => p::error(StatusCode::BAD_REQUEST, -32600, &format!("Invalid Request: {m}")),
    }
}

fn audit_info(c: &Classified, token: &Option<Arc<str>>) -> AuditInfo {
    AuditInfo {
        method: c.method.clone().unwrap_or_default(),
        tool: c.name.clone(),
        token_name: token.clone(),
        started: Instant::now(),
    }
}

async fn post(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    app: &str,
    route: &Arc<AppRoute>,
    identity: Option<TokenIdentity>,
) -> Resp {
    if let Err(r) = p::check_post_accept(req.headers()) {
        return *r;
    }
    if let Err(r) = p::check_content_type(req.headers()) {
        return *r;
    }
    let (parts, incoming) = req.into_parts();
    let headers = &parts.headers;
    let body = match read_body(gw, headers, incoming).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    // One URL, two eras: a request that claims a protocol version in `_meta` is 2026-07-28 (modern.rs).
    // (The body is only classified here when the header does not already say 2026-07-28.)
    let modern = modern::is_modern(headers, false)
        || (!jsonrpc::is_batch(&body) && jsonrpc::classify(&body).is_ok_and(|c| c.claims_version));
    if modern {
        return modern::post(gw, headers, body, app, route, identity.as_ref()).await;
    }
    let token = identity.map(|i: TokenIdentity| Arc::<str>::from(i.token_name));
    let session = match headers.get(SESSION_HEADER) {
        Some(v) => match v.to_str().ok().and_then(|id| gw.lookup(app, id)) {
            Some(s) => Some(s),
            None => return session_unknown(),
        },
        None => None,
    };
    let version = match p::header_version(headers, session.as_ref().and_then(|s| s.version())) {
        Ok(v) => v.map(str::to_string),
        Err(r) => return *r,
    };
    if jsonrpc::is_batch(&body) {
        let v = version
            .as_deref()
            .or(session.as_ref().and_then(|s| s.version()))
            .unwrap_or(p::DEFAULT_VERSION)
            .to_string();
        return batch(gw, session, &v, &body, token).await;
    }
    let c = match jsonrpc::classify(&body) {
        Ok(c) => c,
        Err(e) => return invalid(e),
    };
    if c.kind == Kind::Request && c.method.as_deref() == Some("initialize") {
        if session.is_some() {
            return p::error(
                StatusCode::BAD_REQUEST,
                -32600,
                "Bad Request: this session is already initialized; send initialize without Mcp-Session-Id to start a new session",
            );
        }
        return initialize(gw, app, route, c, body, token).await;
    }
    let Some(session) = session else {
        return session_missing();
    };
    match c.kind {
        Kind::Notification | Kind::Response => {
            session.touch();
            if session.link.send(&session, &c, &body) {
                // The server will not answer a cancelled request: end its exchange here.
                if c.method.as_deref() == Some("notifications/cancelled")
                    && let Some((id, _)) = &c.request_id
                {
                    session.cancel(id);
                }
                p::status_only(StatusCode::ACCEPTED)
            } else {
                session_unknown()
            }
        }
        Kind::Request => request(gw, &session, &c, &body, token, None).await,
    }
}

/// Send one request and answer with its first message: JSON if that is the final response,
/// otherwise an SSE stream that ends after the final response.
async fn request(
    gw: &Gateway,
    session: &Arc<Session>,
    c: &Classified,
    body: &[u8],
    token: Option<Arc<str>>,
    session_header: Option<&str>,
) -> Resp {
    let Some(id) = c.id.clone() else {
        return invalid(Invalid::Shape("a request needs an id"));
    };
    let (tx, mut rx) = super::sse::out_channel();
    if session.begin(id.clone(), c.progress_token.clone(), tx, audit_info(c, &token)).is_err() {
        return p::error(
            StatusCode::BAD_REQUEST,
            -32600,
            &format!(
                "Invalid Request: request id {} is already in flight in this session; use unique ids",
                jsonrpc::id_json(&id)
            ),
        );
    }
    if !session.link.send(session, c, body) {
        session.abandon(&id);
        return session_unknown();
    }
    let mut resp = match rx.recv().await {
        Some(Out::Json(b)) => p::json(StatusCode::OK, b),
        Some(Out::Frame(first)) => p::sse_response(SseBody::new(
            Some(first),
            rx,
            gw.cfg.keepalive_interval,
            Some(session.stream_guard()),
        )),
        None => session_unknown(),
    };
    if let Some(sid) = session_header
        && let Ok(v) = HeaderValue::from_str(sid)
    {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}

async fn initialize(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    c: Classified,
    body: Bytes,
    token: Option<Arc<str>>,
) -> Resp {
    let Backend::Stdio { argv, env, cwd } = &route.backend else {
        return p::error(StatusCode::INTERNAL_SERVER_ERROR, -32603, "not a stdio app");
    };
    let open = gw.app_sessions(app) + gw.pool.live(app);
    if open >= gw.cfg.max_sessions_per_app {
        let mut r = p::error(
            StatusCode::SERVICE_UNAVAILABLE,
            -32000,
            &format!(
                "Service Unavailable: app {app:?} already has {open} open sessions (the limit); \
                 end unused sessions with DELETE or retry later"
            ),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    let sid: Arc<str> = session_id().into();
    let bad_gateway = |e: String| {
        gw.logs.push(app, super::LogKind::Event, &e);
        p::error(StatusCode::BAD_GATEWAY, -32603, &format!("Bad Gateway: {e}"))
    };
    let session = if route.shared {
        let hub = match gw.shared_child(app, route) {
            Ok(h) => h,
            Err(e) => return bad_gateway(e),
        };
        let s = Arc::new(Session::new(
            sid.clone(),
            app.into(),
            Link::Shared(hub.clone()),
            gw.limits(),
            gw.audit.clone(),
        ));
        hub.attach(&s);
        if let Some(result) = hub.cached_init() {
            if let Some(v) = jsonrpc::result_protocol_version(&[b"{\"result\":", &result[..], b"}"].concat())
            {
                s.set_version(&v);
            }
            gw.insert_session(s);
            let id = c.id.as_ref().map(jsonrpc::id_json).unwrap_or_else(|| "null".into());
            let msg =
                [b"{\"jsonrpc\":\"2.0\",\"id\":".as_slice(), id.as_bytes(), b",\"result\":", &result, b"}"]
                    .concat();
            let mut r = p::json(StatusCode::OK, Bytes::from(msg));
            if let Ok(v) = HeaderValue::from_str(&sid) {
                r.headers_mut().insert(SESSION_HEADER, v);
            }
            return r;
        }
        s
    } else {
        // A warm spare if one is ready (see spares.rs), else a cold start.
        let (proc, events) = match gw.spares.take(app, route) {
            Some(spare) => (spare.proc, spare.events),
            None => {
                gw.spares.cold_start(app, route);
                let events = Arc::new(OwnEvents::default());
                let cmd = stdio::Command { app, argv, env, cwd };
                match stdio::spawn(cmd, events.clone(), gw.logs.clone(), gw.cfg.kill_grace) {
                    Ok(p) => (p, events),
                    Err(e) => return bad_gateway(e),
                }
            }
        };
        let s =
            Arc::new(Session::new(sid.clone(), app.into(), Link::Own(proc), gw.limits(), gw.audit.clone()));
        let owner: std::sync::Weak<dyn stdio::ChildEvents> = Arc::downgrade(&s) as std::sync::Weak<Session>;
        let _ = events.owner.set(owner);
        s
    };
    gw.insert_session(session.clone());
    if !route.shared && route.warm > 0 {
        // The replacement starts off the request's path.
        let (gw, app) = (gw.clone(), app.to_string());
        tokio::spawn(async move { gw.warm(&app) });
    }
    request(gw, &session, &c, &body, token, Some(&sid)).await
}

impl Gateway {
    fn insert_session(&self, s: Arc<Session>) {
        let n = match self.sessions.lock() {
            Ok(mut m) => {
                m.insert(s.id.clone(), s);
                m.len()
            }
            Err(_) => return,
        };
        ::metrics::gauge!(metrics::SESSIONS).set(n as f64);
    }
}

async fn batch(
    gw: &Gateway,
    session: Option<Arc<Session>>,
    version: &str,
    body: &[u8],
    token: Option<Arc<str>>,
) -> Resp {
    if !p::batches_allowed(version) {
        return p::error(
            StatusCode::BAD_REQUEST,
            -32600,
            &format!(
                "Invalid Request: JSON-RPC batches are not supported in protocol version {version} (they were removed in 2025-06-18); send one message per request"
            ),
        );
    }
    let items = match jsonrpc::split_batch(body) {
        Ok(i) => i,
        Err(e) => return invalid(e),
    };
    let mut parsed = Vec::with_capacity(items.len());
    for item in items {
        match jsonrpc::classify(&item) {
            Ok(c) if c.method.as_deref() == Some("initialize") => {
                return invalid(Invalid::Shape("initialize must not be part of a batch"));
            }
            Ok(c) => parsed.push((c, item)),
            Err(e) => return invalid(e),
        }
    }
    let Some(session) = session else {
        return session_missing();
    };
    let reqs: Vec<_> = parsed
        .iter()
        .filter(|(c, _)| c.kind == Kind::Request)
        .filter_map(|(c, _)| c.id.clone().map(|id| (id, c.progress_token.clone(), audit_info(c, &token))))
        .collect();
    session.touch();
    if reqs.is_empty() {
        for (c, item) in &parsed {
            if !session.link.send(&session, c, item) {
                return session_unknown();
            }
        }
        return p::status_only(StatusCode::ACCEPTED);
    }
    let ids: Vec<_> = reqs.iter().map(|(id, _, _)| id.clone()).collect();
    let (tx, rx) = super::sse::out_channel();
    if session.begin_batch(reqs, tx).is_err() {
        return invalid(Invalid::Shape(
            "a request id in this batch is already in flight in this session (or repeated)",
        ));
    }
    for (c, item) in &parsed {
        if !session.link.send(&session, c, item) {
            for id in &ids {
                session.abandon(id);
            }
            return session_unknown();
        }
    }
    p::sse_response(SseBody::new(None, rx, gw.cfg.keepalive_interval, Some(session.stream_guard())))
}

async fn get(gw: &Gateway, req: Request<Incoming>, app: &str) -> Resp {
    let headers = req.headers();
    if let Err(r) = p::check_get_accept(headers) {
        return *r;
    }
    let Some(sid) = headers.get(SESSION_HEADER) else {
        return session_missing();
    };
    let Some(session) = sid.to_str().ok().and_then(|id| gw.lookup(app, id)) else {
        return session_unknown();
    };
    if let Err(r) = p::header_version(headers, session.version()) {
        return *r;
    }
    session.touch();
    let (tx, rx) = super::sse::out_channel();
    let opened = match headers.get("last-event-id") {
        Some(last) => {
            let Some((s, q)) = last.to_str().ok().and_then(sse::parse_event_id) else {
                return p::error(
                    StatusCode::BAD_REQUEST,
                    -32600,
                    "Bad Request: Last-Event-ID was not issued by this server",
                );
            };
            session.resume(s, q, tx)
        }
        None => session.open_get(tx),
    };
    match opened {
        Ok(()) => {
            p::sse_response(SseBody::new(None, rx, gw.cfg.keepalive_interval, Some(session.stream_guard())))
        }
        Err(StreamError::Conflict) => p::error(
            StatusCode::CONFLICT,
            -32600,
            "Conflict: this session already has an open GET stream; only one is allowed at a time",
        ),
        Err(StreamError::Gone) => session_unknown(),
    }
}

fn delete(gw: &Gateway, req: Request<Incoming>, app: &str) -> Resp {
    let Some(sid) = req.headers().get(SESSION_HEADER) else {
        return session_missing();
    };
    let Some(session) = sid.to_str().ok().and_then(|id| gw.lookup(app, id)) else {
        return session_unknown();
    };
    gw.end_session(&session, "the client ended the session (HTTP DELETE)");
    p::status_only(StatusCode::NO_CONTENT)
}
