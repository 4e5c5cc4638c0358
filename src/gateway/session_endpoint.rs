//! The 2025 session endpoint of a stdio app: `initialize` (a warm spare, a cold start, the app's shared
//! child, or, for a server that speaks 2026-07-28 only, a session catwalk translates: `translated_session.rs`), requests and notifications in a session, batches (2025-03-26), the GET stream with
//! `Last-Event-ID` replay, and DELETE. `http.rs` routes here once a POST is known not to be 2026-07-28;
//! HTTP backends never come here (`upstream.rs` proxies them whole).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use rand::RngCore;

use super::http::invalid;
use super::jsonrpc::{self, Classified, Invalid, Kind};
use super::pool;
use super::protocol::{self as p, Resp, SESSION_HEADER};
use super::server_era::ServerEra;
use super::session::{AuditInfo, Limits, Link, Out, Session, StreamError};
use super::shared_child::SharedChild;
use super::sse::{self, SseBody};
use super::stdio::{self, OwnEvents};
use super::translated_session::TranslatedLink;
use super::{AppRoute, Backend, Gateway, TokenIdentity, metrics};

/// A POST of the 2025 era (the body is read and checked for size; not a 2026-07-28 request).
pub(super) async fn post(
    gw: &Arc<Gateway>,
    headers: &http::HeaderMap,
    body: Bytes,
    app: &str,
    route: &Arc<AppRoute>,
    identity: Option<TokenIdentity>,
) -> Resp {
    // The authorization context a translated session's requests are served in (as for 2026-07-28 requests).
    let context = identity.as_ref().map(|i| i.token_id.clone()).unwrap_or_else(|| "anonymous".into());
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
        return initialize(gw, app, route, c, body, token, &context).await;
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
    route: &Arc<AppRoute>,
    c: Classified,
    body: Bytes,
    token: Option<Arc<str>>,
    context: &str,
) -> Resp {
    let Backend::Stdio { argv, env, cwd } = &route.backend else {
        return p::error(StatusCode::INTERNAL_SERVER_ERROR, -32603, "not a stdio app");
    };
    let mut open = gw.app_sessions(app) + gw.pool.live(app);
    // The process a push's health gate proved waits for a 2026-07-28 client; a session needs the place more.
    if open >= gw.cfg.max_sessions_per_app && gw.pool.yield_primed(app) {
        open -= 1;
    }
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
    // Set when this session's process is started for it (no spare was ready): what that cost is measured.
    let mut cold: Option<Instant> = None;
    let bad_gateway = |e: String| {
        gw.logs.push(app, super::LogKind::Event, &e);
        p::error(StatusCode::BAD_GATEWAY, -32603, &format!("Bad Gateway: {e}"))
    };
    let session = if translates_sessions(gw, app, route).await {
        // A server that speaks 2026-07-28 only: catwalk keeps the session and translates.
        let link = TranslatedLink::new(gw, app, route.clone(), context);
        Arc::new(Session::new(sid.clone(), app.into(), Link::Shared(link), gw.limits(), gw.audit.clone()))
    } else if route.shared {
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
                cold = Some(Instant::now());
                let events = Arc::new(OwnEvents::default());
                let cmd = stdio::Command { groups: &gw.groups, app, argv, env, cwd };
                match stdio::spawn(cmd, events.clone(), gw.logs.clone(), gw.cfg.kill_grace) {
                    Ok(p) => (p, events),
                    Err(e) => return bad_gateway(e),
                }
            }
        };
        let s =
            Arc::new(Session::new(sid.clone(), app.into(), Link::Own(proc), gw.limits(), gw.audit.clone()));
        let owner: std::sync::Weak<dyn stdio::ChildEvents> = Arc::downgrade(&s) as std::sync::Weak<Session>;
        events.set_owner(owner);
        s
    };
    gw.insert_session(session.clone());
    if !route.shared && route.warm > 0 && matches!(session.link, Link::Own(_)) {
        // The replacement starts off the request's path.
        let (gw, app) = (gw.clone(), app.to_string());
        tokio::spawn(async move { gw.warm(&app) });
    }
    let answer = request(gw, &session, &c, &body, token, Some(&sid)).await;
    if let Some(started) = cold {
        metrics::cold_start_paid(app, "2025", started);
    }
    answer
}

/// Whether `app`'s release speaks 2026-07-28 only, so that a 2025 session must be translated. Known once
/// its era is (the push's health gate, or the background probe); a release whose era is not known yet is
/// served as it is.
async fn translates_sessions(gw: &Gateway, app: &str, route: &AppRoute) -> bool {
    route.has_own_processes()
        && gw.pool.era_known(app, &route.backend) == Some(ServerEra::Modern)
        && !pool::takes_sessions(gw, app, route).await
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

pub(super) async fn get(gw: &Gateway, req: Request<Incoming>, app: &str) -> Resp {
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

pub(super) fn delete(gw: &Gateway, req: Request<Incoming>, app: &str) -> Resp {
    let Some(sid) = req.headers().get(SESSION_HEADER) else {
        return session_missing();
    };
    let Some(session) = sid.to_str().ok().and_then(|id| gw.lookup(app, id)) else {
        return session_unknown();
    };
    gw.end_session(&session, "the client ended the session (HTTP DELETE)");
    p::status_only(StatusCode::NO_CONTENT)
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
        let cmd = stdio::Command { groups: &self.groups, app, argv, env, cwd };
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

fn audit_info(c: &Classified, token: &Option<Arc<str>>) -> AuditInfo {
    AuditInfo {
        method: c.method.clone().unwrap_or_default(),
        tool: c.name.clone(),
        token_name: token.clone(),
        started: Instant::now(),
    }
}
