//! Streaming reverse proxy to apps that speak Streamable HTTP themselves (and to Fly machines).
//!
//! Request and response bodies (including SSE) are passed through frame by frame, never
//! buffered. Only MCP-relevant headers go upstream; the client's `Authorization` never does
//! (the route's own upstream headers carry the upstream credential).
//!
//! Sessions stay on the backend that created them: the `Mcp-Session-Id` an upstream hands out is
//! remembered with the route and the server (target) that served it, so after a blue/green switch the
//! old release's sessions keep reaching the old server while it drains and new sessions reach the new
//! one, and on an app of several machines a session keeps reaching the machine that holds it. A
//! pin is dropped when the session is deleted, when its backend answers 404 (session gone) or
//! cannot be reached, when the backend was retired and stopped, or after the idle timeout.
//!
//! A request of no session (a 2026-07-28 request, or the `initialize` that opens a 2025 session) goes
//! to the least busy server of the route ([`place`]): fewest requests and streams in flight among
//! those awake, ties taken in turn. When every awake one is busy and another sleeps (scaled to zero),
//! that one is started in the background for the requests that follow; only when none is awake does a
//! request wait for a start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::protocol::{self as p, GatewayBody, Resp};
use super::{AppRoute, Backend, HttpTarget};

/// Request headers copied to the upstream.
const FORWARD_REQUEST: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "user-agent",
    // 2026-07-28 mirrors body fields into headers for intermediaries; the server validates them.
    "mcp-method",
    "mcp-name",
];

/// 2026-07-28 tool parameters mirrored into headers (`Mcp-Param-{Name}`): forwarded as they are.
const FORWARD_REQUEST_PREFIX: &str = "mcp-param-";

/// Response headers never copied back (hop-by-hop).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

/// Most remembered session pins; beyond this the oldest idle ones are swept first.
const MAX_PINS: usize = 100_000;

/// A session pinned to the route (backend) and the server of it that created it.
struct Pin {
    route: Arc<AppRoute>,
    target: usize,
    last: Instant,
}

/// A pooled HTTP/1.1 client shared by all HTTP apps, and the session pins.
pub struct Proxy {
    client: Client<HttpConnector, Limited<Incoming>>,
    pins: Mutex<HashMap<(Arc<str>, String), Pin>>,
    /// Where ties between equally busy servers start (one counter for all apps: turns, not fairness).
    turn: AtomicUsize,
}

impl Proxy {
    pub fn new() -> Proxy {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(conn);
        Proxy { client, pins: Mutex::new(HashMap::new()), turn: AtomicUsize::new(0) }
    }

    /// Proxies a request for `app`, whose current route is `current` (an HTTP backend): to the
    /// backend the request's session is pinned to, else to `current`; pins new sessions.
    pub async fn proxy(
        &self,
        req: Request<Incoming>,
        app: &str,
        current: Arc<AppRoute>,
        max_body: usize,
        idle_timeout: Duration,
    ) -> Resp {
        let sid = req.headers().get(p::SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let is_delete = req.method() == http::Method::DELETE;
        let pinned = sid.as_ref().and_then(|sid| self.pinned(app, sid, idle_timeout));
        let (route, target) = match pinned.clone() {
            Some(pin) => pin,
            None => {
                let target = match &current.backend {
                    Backend::Http { targets } => place(targets, self.turn.fetch_add(1, Ordering::Relaxed)),
                    Backend::Stdio { .. } => 0,
                };
                (current, target)
            }
        };
        let Some(server) = route.backend.http_target(target) else {
            return p::error(
                StatusCode::BAD_GATEWAY,
                -32603,
                "Bad Gateway: the app's session moved to a stdio server",
            );
        };
        // Requests in flight are counted where something reads them: a wake's idle timer, or `place`.
        let placed = matches!(&route.backend, Backend::Http { targets } if targets.len() > 1);
        let resp = self.forward(req, server, placed, max_body).await;
        let status = resp.status();
        match &sid {
            Some(sid) if pinned.is_some() => {
                let gone = status == StatusCode::NOT_FOUND
                    || status == StatusCode::BAD_GATEWAY
                    || (is_delete && status.is_success());
                if gone {
                    self.unpin(app, sid);
                }
            }
            Some(_) => {}
            None => {
                let created = resp.headers().get(p::SESSION_HEADER).and_then(|v| v.to_str().ok());
                if let Some(created) = created
                    && status.is_success()
                {
                    self.pin(app, created, route.clone(), target, idle_timeout);
                }
            }
        }
        resp
    }

    fn pinned(&self, app: &str, sid: &str, idle_timeout: Duration) -> Option<(Arc<AppRoute>, usize)> {
        let mut pins = self.pins.lock().ok()?;
        let key = (Arc::<str>::from(app), sid.to_string());
        let pin = pins.get_mut(&key)?;
        let retired = pin
            .route
            .backend
            .http_target(pin.target)
            .and_then(|t| t.wake.as_ref())
            .is_some_and(|w| w.0.is_retired());
        if retired || pin.last.elapsed() > idle_timeout {
            pins.remove(&key);
            return None;
        }
        pin.last = Instant::now();
        Some((pin.route.clone(), pin.target))
    }

    fn pin(&self, app: &str, sid: &str, route: Arc<AppRoute>, target: usize, idle_timeout: Duration) {
        let Ok(mut pins) = self.pins.lock() else { return };
        if pins.len() >= MAX_PINS {
            pins.retain(|_, p| p.last.elapsed() <= idle_timeout);
            if pins.len() >= MAX_PINS {
                // Still full of live sessions: forget the oldest (it falls back to the current route).
                if let Some(oldest) = pins.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| k.clone()) {
                    pins.remove(&oldest);
                }
            }
        }
        pins.insert((Arc::from(app), sid.to_string()), Pin { route, target, last: Instant::now() });
    }

    fn unpin(&self, app: &str, sid: &str) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.remove(&(Arc::<str>::from(app), sid.to_string()));
        }
    }

    /// Forgets every pin of `app` (the app was destroyed or restarted).
    pub fn unpin_app(&self, app: &str) {
        if let Ok(mut pins) = self.pins.lock() {
            pins.retain(|(a, _), _| &**a != app);
        }
    }

    /// Forward `req` to `server` and stream the answer back. `placed`: the server is one of several the
    /// gateway places requests on, so its requests in flight are counted even without a wake.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        server: &HttpTarget,
        placed: bool,
        max_body: usize,
    ) -> Resp {
        let HttpTarget { url, headers: extra, wake, .. } = server;
        let wake = wake.as_ref();
        let bad_gateway = |m: String| p::error(StatusCode::BAD_GATEWAY, -32603, &format!("Bad Gateway: {m}"));
        let uri: Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                return bad_gateway(format!("the app's upstream URL {url:?} is invalid: {e}"));
            }
        };
        if uri.scheme_str() != Some("http") {
            return bad_gateway(format!(
                "the app's upstream URL {url:?} must start with http:// (https upstreams are not supported)"
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return p::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("Payload Too Large: request bodies are limited to {max_body} bytes"),
            );
        }
        // In flight before asking whether the backend is awake (see `wake.rs`), until the body ends.
        let in_flight = (wake.is_some() || placed).then(|| server.activity().begin());
        if let Some(w) = wake
            && !w.0.is_awake()
            && let Err(e) = w.0.wake().await
        {
            let mut r = p::error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32603,
                &format!("Service Unavailable: the app's server could not be started: {e}"),
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        let (parts, body) = req.into_parts();
        let mut out = Request::new(Limited::new(body, max_body));
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        for name in FORWARD_REQUEST {
            for v in parts.headers.get_all(*name) {
                out.headers_mut().append(*name, v.clone());
            }
        }
        for (name, v) in parts.headers.iter().filter(|(n, _)| n.as_str().starts_with(FORWARD_REQUEST_PREFIX))
        {
            out.headers_mut().append(name.clone(), v.clone());
        }
        for (k, v) in extra {
            match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => {
                    out.headers_mut().insert(k, v);
                }
                _ => {
                    return bad_gateway(format!(
                        "the app's upstream header {k:?} is not a valid HTTP header"
                    ));
                }
            }
        }
        let resp = match self.client.request(out).await {
            Ok(r) => r,
            Err(e) => {
                let mut msg = format!("could not reach the app's upstream server at {url}: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                return bad_gateway(msg);
            }
        };
        let (parts, body) = resp.into_parts();
        if parts.status.is_server_error() && body.is_end_stream() {
            return bad_gateway(format!(
                "the app's upstream server answered {} without a body",
                parts.status
            ));
        }
        let mut r = http::Response::new(GatewayBody::Proxy(body, in_flight));
        *r.status_mut() = parts.status;
        for (k, v) in parts.headers.iter() {
            if !HOP_BY_HOP.contains(&k.as_str()) {
                r.headers_mut().append(k.clone(), v.clone());
            }
        }
        let is_sse = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        r
    }
}

/// Which of a route's servers takes a request of no session (see the module docs): of those not known
/// to sleep, the one with the fewest requests in flight, ties taken in turn from `turn`; when all of
/// them are busy, a sleeping one is started in the background for what follows. With all asleep, the
/// first (the request waits for its start in [`Proxy::forward`]).
fn place(targets: &[HttpTarget], turn: usize) -> usize {
    if targets.len() <= 1 {
        return 0;
    }
    let n = targets.len();
    let mut best: Option<(usize, usize)> = None;
    for i in (0..n).map(|k| (turn + k) % n) {
        let t = &targets[i];
        if t.is_asleep() {
            continue;
        }
        let load = t.activity().in_flight();
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((i, load));
        }
    }
    match best {
        Some((i, load)) => {
            if load > 0
                && let Some(sleeping) = targets.iter().find(|t| t.is_asleep())
            {
                // Busy everywhere awake: bring one more up for the requests that follow.
                sleeping.start_in_background();
            }
            i
        }
        None => 0,
    }
}
