//! The hyper server and the request pipeline: routing, Host/Origin, auth, rate limit, then the
//! Streamable HTTP methods (POST/GET/DELETE) for stdio apps or the proxy for HTTP apps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::{bearer, query_has_token};
use super::jsonrpc::{self, Invalid};
use super::modern;
use super::protocol::{self as p, Resp};
use super::session::Session;
use super::{AppRoute, Backend, Gateway, Mount, TokenIdentity, metrics, session_endpoint};

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
    gw.groups.wait_all_stopped(gw.cfg.kill_grace + Duration::from_millis(500)).await;
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
        for app in g.spares.tick(g.cfg.spare_idle_timeout) {
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
                Method::GET => session_endpoint::get(gw, req, app).await,
                Method::DELETE => session_endpoint::delete(gw, req, app),
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

pub(super) fn invalid(e: Invalid) -> Resp {
    match e {
        Invalid::Parse(m) => p::error(StatusCode::BAD_REQUEST, -32700, &format!("Parse error: {m}")),
        Invalid::Shape(m) => p::error(StatusCode::BAD_REQUEST, -32600, &format!("Invalid Request: {m}")),
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
    session_endpoint::post(gw, headers, body, app, route, identity).await
}
