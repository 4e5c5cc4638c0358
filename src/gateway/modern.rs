//! MCP 2026-07-28 ("modern") requests on the same URL as legacy sessions, in front of legacy stdio
//! servers.
//!
//! The revision's versioning page negotiates per request: a POST whose `_meta` claims a protocol
//! version (and whose `MCP-Protocol-Version` header is not a handshake-era version) is modern and is
//! answered statelessly here; `initialize` and session traffic keep their legacy path in `http.rs`.
//! Every modern request is checked the way the Streamable HTTP page requires (header and body agree,
//! required `_meta` present), then:
//!
//! - `server/discover` is answered from what the app's server said in its `initialize` result;
//! - `subscriptions/listen` holds a child of its own for as long as the stream is open and forwards the
//!   change notifications the client asked for, tagged with the subscription id;
//! - anything else goes to an initialized child lent by the warm pool (`pool.rs`) under a gateway id,
//!   and comes back with the client's id, `resultType` and caching hints. Progress (and log messages at
//!   the requested `io.modelcontextprotocol/logLevel`) ride the request's own SSE stream; closing that
//!   stream cancels the request at the child.
//!
//! That is for the handshake-era servers most apps run. A server that speaks 2026-07-28 itself (asked
//! once per release, `server_era.rs`) gets every modern request as it is (`passthrough.rs`) after the
//! same checks.
//!
//! Tokens, Origin and Host checks and rate limits ran before this module is reached (`http.rs`), the
//! same for both eras; each modern request gets one audit record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::exchange::{self, Exchange, Step, params_of};
use super::param_headers::{self, ToolHeaders};
use super::park::StateError;
use super::passthrough;
use super::pool::{self, ChildMsg, Lease, LeaseError, Mode, ServerFacts};
use super::protocol::{self as p, Resp};
use super::server_era::ServerEra;
use super::session::Out;
use super::sse::{self, OutSink, SseBody};
use super::{AppRoute, AuditEvent, AuthMode, Gateway, LogKind, TokenIdentity, metrics};

/// The stateless revision this endpoint speaks.
pub const MODERN_VERSION: &str = "2026-07-28";
/// Every version a client may use here: the modern one per request, the legacy ones through
/// `initialize` (listed in `server/discover` and in `-32022` errors).
pub const SUPPORTED_VERSIONS: &[&str] =
    &["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

// The revision's `_meta` keys (one place: the gateway, its pass-through and translation, and the health
// gate's client all speak them).
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub(super) const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub(super) const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// The `serverInfo` of a `server/discover` result: at its top level where a server puts it there, else in
/// its `_meta` (where catwalk's own answer for a handshake-era server puts it).
pub fn server_info_of(discovered: &Value) -> Option<&Value> {
    discovered.get("serverInfo").or_else(|| discovered.get("_meta").and_then(|m| m.get(META_SERVER_INFO)))
}

/// Methods of the handshake era that 2026-07-28 removed: a modern request for one is "method not found".
const REMOVED: &[&str] =
    &["initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"];

/// Is this POST a modern request? `claims_version` says whether the body's `_meta` carries
/// `io.modelcontextprotocol/protocolVersion`. A header naming a version the legacy path does not know,
/// on a request outside any session, is modern too (and is then refused with the right modern error).
pub fn is_modern(headers: &HeaderMap, claims_version: bool) -> bool {
    if claims_version {
        return true;
    }
    if headers.contains_key(p::SESSION_HEADER) {
        return false;
    }
    headers
        .get(p::VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !p::KNOWN_VERSIONS.contains(&v.trim()))
}

/// A refusal before anything reached a server.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

fn refusal(status: StatusCode, code: i64, message: impl Into<String>) -> Refusal {
    Refusal { status, code, message: message.into(), data: None }
}

fn header_mismatch(message: impl Into<String>) -> Refusal {
    refusal(StatusCode::BAD_REQUEST, -32020, format!("Header mismatch: {}", message.into()))
}

/// Decodes a header value that may use the `=?base64?…?=` sentinel (Mcp-Name, Mcp-Param-*).
fn decode_header_value(raw: &str) -> Option<String> {
    match raw.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(raw.to_string()),
    }
}

fn unsupported(requested: &str) -> Refusal {
    let mut r = refusal(
        StatusCode::BAD_REQUEST,
        -32022,
        format!(
            "Unsupported protocol version {requested:?}: send {MODERN_VERSION} per request, or `initialize` for {}",
            SUPPORTED_VERSIONS[1..].join(", ")
        ),
    );
    r.data = Some(json!({"supported": SUPPORTED_VERSIONS, "requested": requested}));
    r
}

/// The checks of the revision's "Server Validation", in the order its conformance suite expects:
/// version header present, required `_meta` present, header and `_meta` agree, version supported,
/// `Mcp-Method` and `Mcp-Name` agree with the body.
pub fn check(headers: &HeaderMap, msg: &Value) -> Result<(), Refusal> {
    let Some(header_version) = headers.get(p::VERSION_HEADER) else {
        return Err(header_mismatch("the MCP-Protocol-Version header is required on every request"));
    };
    let header_version = header_version.to_str().unwrap_or("").trim();
    let meta = params_of(msg, "_meta").and_then(Value::as_object);
    if header_version != MODERN_VERSION && meta.and_then(|m| m.get(META_VERSION)).is_none() {
        // A version this endpoint does not know, from a client of neither era we speak: say what we speak.
        return Err(unsupported(header_version));
    }
    let missing: Vec<&str> = [META_VERSION, META_CAPABILITIES]
        .into_iter()
        .filter(|k| meta.and_then(|m| m.get(*k)).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            -32602,
            format!(
                "Invalid params: every 2026-07-28 request carries params._meta with {}",
                missing.join(" and ")
            ),
        ));
    }
    let body_version = meta.and_then(|m| m.get(META_VERSION)).and_then(Value::as_str).unwrap_or("");
    if body_version != header_version {
        return Err(header_mismatch(format!(
            "MCP-Protocol-Version header {header_version:?} does not match _meta {META_VERSION} {body_version:?}"
        )));
    }
    if body_version != MODERN_VERSION {
        return Err(unsupported(body_version));
    }
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    match headers.get("mcp-method").and_then(|v| v.to_str().ok()) {
        None => return Err(header_mismatch("the Mcp-Method header is required")),
        Some(h) if h != method => {
            return Err(header_mismatch(format!(
                "Mcp-Method header {h:?} does not match the body's method {method:?}"
            )));
        }
        Some(_) => {}
    }
    let name_field = match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    if let Some(field) = name_field {
        let body_name = params_of(msg, field).and_then(Value::as_str).unwrap_or("");
        let header = headers.get("mcp-name").map(|v| v.to_str().ok().and_then(decode_header_value));
        match header {
            None => return Err(header_mismatch(format!("the Mcp-Name header is required for {method}"))),
            Some(None) => return Err(header_mismatch("the Mcp-Name header is not a valid value")),
            Some(Some(h)) if h != body_name => {
                return Err(header_mismatch(format!(
                    "Mcp-Name header {h:?} does not match the body's params.{field} {body_name:?}"
                )));
            }
            Some(Some(_)) => {}
        }
    }
    for (name, value) in headers {
        if name.as_str().starts_with("mcp-param-")
            && value.to_str().ok().and_then(decode_header_value).is_none()
        {
            return Err(header_mismatch(format!("the {name} header is not a valid value")));
        }
    }
    Ok(())
}

pub(super) fn error_response(
    status: StatusCode,
    id: &Value,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Resp {
    let mut error = json!({"code": code, "message": message});
    if let Some(d) = data {
        error["data"] = d;
    }
    let body = json!({"jsonrpc": "2.0", "id": id, "error": error});
    p::json(status, Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

pub(super) fn bad_gateway(id: &Value, message: &str) -> Resp {
    error_response(StatusCode::BAD_GATEWAY, id, -32603, message, None)
}

fn result_response(id: &Value, result: Value) -> Resp {
    let body = json!({"jsonrpc": "2.0", "id": id, "result": result});
    p::json(StatusCode::OK, Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
}

/// One modern exchange's audit record and request metric.
pub(super) struct Record {
    gw: Arc<Gateway>,
    app: String,
    method: String,
    tool: Option<String>,
    token_name: Option<String>,
    started: Instant,
}

impl Record {
    /// Records a refusal and passes it on.
    pub(super) fn fail(self, r: Resp) -> Resp {
        self.done(r.status().as_u16(), true);
        r
    }

    pub(super) fn done(self, status: u16, error: bool) {
        let duration = self.started.elapsed();
        let label = metrics::method_label(&self.method);
        ::metrics::counter!(metrics::REQUESTS, "app" => self.app.clone(), "method" => label, "status" => super::session::status_label(status)).increment(1);
        ::metrics::histogram!(metrics::LATENCY, "app" => self.app.clone(), "method" => label)
            .record(duration.as_secs_f64());
        if self.gw.audit.enabled() {
            self.gw.audit.record(AuditEvent {
                app: self.app,
                token_name: self.token_name,
                method: self.method,
                tool_name: self.tool,
                status,
                error,
                duration,
            });
        }
    }
}

/// Answers one modern POST for a stdio app (`body` already read, `http.rs` checks done).
pub async fn post(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    body: Bytes,
    app: &str,
    route: &Arc<AppRoute>,
    identity: Option<&TokenIdentity>,
) -> Resp {
    let msg: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                -32700,
                &format!("Parse error: {e}"),
                None,
            );
        }
    };
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    if !msg.is_object() || msg.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let m = "Invalid Request: send one JSON-RPC 2.0 request object per POST (2026-07-28 has no batches)";
        return error_response(StatusCode::BAD_REQUEST, &id, -32600, m, None);
    }
    let Some(method) = msg.get("method").and_then(Value::as_str).map(str::to_string) else {
        let m = "Invalid Request: clients send requests (and no responses) in 2026-07-28";
        return error_response(StatusCode::BAD_REQUEST, &id, -32600, m, None);
    };
    if msg.get("id").is_none() {
        // 2026-07-28 defines no client notifications over HTTP (closing a stream cancels): accept and drop.
        return p::status_only(StatusCode::ACCEPTED);
    }
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            -32600,
            "Invalid Request: the id must be a string or an integer",
            None,
        );
    }
    if let Err(r) = check(headers, &msg) {
        return error_response(r.status, &id, r.code, &r.message, r.data);
    }
    let record = Record {
        gw: gw.clone(),
        app: app.to_string(),
        method: method.clone(),
        tool: params_of(&msg, "name").and_then(Value::as_str).map(str::to_string),
        token_name: identity.map(|i| i.token_name.clone()),
        started: Instant::now(),
    };
    // Without a credential every client gets the same answers; with one, answers may be per user.
    let scope = if route.auth == AuthMode::Public || identity.is_none() { "public" } else { "private" };
    let context = identity.map(|i| i.token_id.as_str()).unwrap_or("anonymous");
    if REMOVED.contains(&method.as_str()) {
        record.done(404, true);
        let m = format!(
            "Method not found: {method} is not part of MCP {MODERN_VERSION} (it belongs to the handshake era)"
        );
        return error_response(StatusCode::NOT_FOUND, &id, -32601, &m, None);
    }
    let era = pool::era(gw, app, route).await;
    if era == ServerEra::Modern && method != "subscriptions/listen" {
        return passthrough::post(gw, app, route, context, &id, msg, scope, record).await;
    }
    if method == "tools/call"
        && let Err(r) = param_headers_agree(gw, app, route, context, &id, headers, &msg).await
    {
        return record.fail(r);
    }
    match method.as_str() {
        "server/discover" => discover(gw, app, route, context, &id, scope, record).await,
        "subscriptions/listen" => listen(gw, app, route, context, &id, &msg, era, record).await,
        _ => forward(gw, app, route, context, &id, msg, scope, record).await,
    }
}

pub(super) async fn lend(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    mode: Mode,
) -> Result<Lease, Resp> {
    pool::lease(gw, app, route, context, mode).await.map_err(|e| lease_refusal(id, e))
}

/// The answer to a request no child could be lent to.
pub(super) fn lease_refusal(id: &Value, e: LeaseError) -> Resp {
    match e {
        LeaseError::Busy(m) => {
            let mut r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                id,
                -32000,
                &format!("Service Unavailable: {m}"),
                None,
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        LeaseError::Start(m) => {
            error_response(StatusCode::BAD_GATEWAY, id, -32603, &format!("Bad Gateway: {m}"), None)
        }
    }
}

/// The `server/discover` result built from a legacy server's `initialize` answer.
fn discover_result(facts: &ServerFacts, scope: &str) -> Value {
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": SUPPORTED_VERSIONS,
        "capabilities": facts.capabilities,
        "_meta": {META_SERVER_INFO: facts.server_info},
        "ttlMs": 0,
        "cacheScope": scope,
    });
    if let Some(i) = &facts.instructions {
        result["instructions"] = i.clone();
    }
    result
}

async fn discover(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    scope: &str,
    record: Record,
) -> Resp {
    let facts = match gw.pool.facts(app, &route.backend) {
        Some(f) => f,
        None => {
            // The first modern request of a release initializes a child (which then stays in the pool).
            let lease = match lend(gw, app, route, context, id, Mode::Shared).await {
                Ok(l) => l,
                Err(r) => return record.fail(r),
            };
            drop(lease);
            match gw.pool.facts(app, &route.backend) {
                Some(f) => f,
                None => {
                    return record.fail(bad_gateway(
                        id,
                        "Bad Gateway: the app was redeployed while it was being asked; retry",
                    ));
                }
            }
        }
    };
    record.done(200, false);
    result_response(id, discover_result(&facts, scope))
}

/// Refuses a `tools/call` whose `Mcp-Param-*` headers disagree with its arguments (see `param_headers.rs`).
async fn param_headers_agree(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    headers: &HeaderMap,
    msg: &Value,
) -> Result<(), Resp> {
    let Some(tool) = params_of(msg, "name").and_then(Value::as_str) else { return Ok(()) };
    let table = tool_headers(gw, app, route, context, id).await?;
    let Some(params) = table.get(tool) else { return Ok(()) };
    param_headers::check(params, headers, params_of(msg, "arguments"), decode_header_value).map_err(|m| {
        let r = header_mismatch(m);
        error_response(r.status, id, r.code, &r.message, None)
    })
}

/// The release's `x-mcp-header` annotations: learnt once per release from its `tools/list` (every page),
/// asked of a pooled child. A server that cannot list its tools has none to check.
async fn tool_headers(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
) -> Result<Arc<ToolHeaders>, Resp> {
    let known = gw.pool.tool_headers(app, &route.backend).and_then(|slot| slot.lock().ok()?.clone());
    if let Some(table) = known {
        return Ok(table);
    }
    let lease = lend(gw, app, route, context, id, Mode::Shared).await?;
    let mut table = ToolHeaders::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_TOOL_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let request = json!({"jsonrpc": "2.0", "method": "tools/list", "params": params});
        let answer = match lease.ask(request, TOOLS_LIST_TIMEOUT).await {
            Ok(a) => a,
            Err(e) => {
                // Not cached: the next call asks again.
                gw.logs.push(app, LogKind::Event, &format!("listing tools to check Mcp-Param headers: {e}"));
                return Ok(Arc::new(ToolHeaders::new()));
            }
        };
        let Some(result) = answer.get("result") else { break };
        if let Some(tools) = result.get("tools").and_then(Value::as_array) {
            param_headers::scan(tools, &mut table);
        }
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => break,
        }
    }
    drop(lease);
    let table = Arc::new(table);
    if let Some(slot) = gw.pool.tool_headers(app, &route.backend)
        && let Ok(mut slot) = slot.lock()
    {
        *slot = Some(table.clone());
    }
    Ok(table)
}

/// Most `tools/list` pages read to learn a release's annotations.
const MAX_TOOL_PAGES: usize = 100;
/// How long one `tools/list` page may take.
const TOOLS_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// The request as the legacy child gets it: no 2026-07-28 `_meta` keys (a handshake-era server has no
/// use for them and an old SDK may refuse unknown ones), no input responses.
fn legacy_request(msg: Value) -> Value {
    let mut m = msg;
    if let Some(obj) = m.as_object_mut() {
        obj.remove("id");
    }
    if let Some(params) = m.get_mut("params").and_then(Value::as_object_mut) {
        params.remove("inputResponses");
        params.remove("requestState");
        let empty = match params.get_mut("_meta").and_then(Value::as_object_mut) {
            Some(meta) => {
                meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
                meta.is_empty()
            }
            None => false,
        };
        if empty {
            params.remove("_meta");
        }
    }
    m
}

/// Any other request: to a lent child (or, with a `requestState`, to the parked exchange it resumes).
#[allow(clippy::too_many_arguments)]
async fn forward(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    msg: Value,
    scope: &'static str,
    record: Record,
) -> Resp {
    let exchange = match params_of(&msg, "requestState") {
        Some(state) => {
            let digest = exchange::call_digest(&msg);
            let resumed = match state.as_str() {
                Some(s) => gw.parking.resume(s, app, context, &digest),
                None => Err(StateError::Invalid),
            };
            let mut ex = match resumed {
                Ok(ex) => ex,
                Err(e) => {
                    let m = format!("Invalid params: {e}");
                    return record.fail(error_response(StatusCode::BAD_REQUEST, id, -32602, &m, None));
                }
            };
            let still = ex.resume(&msg);
            if !still.is_empty() {
                // Some answers are missing: ask for those again (the revision's SHOULD), same process waiting.
                let body = park_for_input(gw, ex, still, app, context);
                record.done(200, false);
                return p::json(StatusCode::OK, body);
            }
            ex
        }
        None => {
            let lease = match lend(gw, app, route, context, id, exchange::mode_for(&msg)).await {
                Ok(l) => l,
                Err(r) => return record.fail(r),
            };
            match Exchange::start(lease, msg, legacy_request, scope, ServerEra::Handshake) {
                Some(ex) => ex,
                None => return record.fail(bad_gateway(id, "Bad Gateway: the server process exited")),
            }
        }
    };
    drive(gw, exchange, app, context, record).await
}

/// Answers the client with the exchange's first step: the final answer as JSON, an `input_required` result
/// (the exchange is parked), or an SSE stream once a notification comes first (fed by [`pump`]).
pub(super) async fn drive(
    gw: &Arc<Gateway>,
    mut ex: Exchange,
    app: &str,
    context: &str,
    record: Record,
) -> Resp {
    match ex.next().await {
        Step::Final { body, status, error } => {
            record.done(status.as_u16(), error);
            p::json(status, body)
        }
        Step::Gone(why) => record.fail(bad_gateway(ex.client_id(), &format!("Bad Gateway: {why}"))),
        Step::InputRequired(asked) => {
            record.done(200, false);
            p::json(StatusCode::OK, park_for_input(gw, ex, asked, app, context))
        }
        Step::Note(first) => {
            let (sink, stream) = sse::out_channel();
            let _ = sink.send(Out::Frame(sse::data_event(&first)));
            tokio::spawn(pump(gw.clone(), ex, sink, app.to_string(), context.to_string(), record));
            p::sse_response(SseBody::new(None, stream, gw.cfg.keepalive_interval, None))
        }
    }
}

/// Feeds a request's SSE stream until the final answer (or an `input_required` result); the client
/// closing the stream drops the exchange, which cancels the call at the child.
async fn pump(
    gw: Arc<Gateway>,
    mut ex: Exchange,
    sink: OutSink,
    app: String,
    context: String,
    record: Record,
) {
    loop {
        let step = tokio::select! {
            s = ex.next() => s,
            _ = sink.closed() => return record.done(200, true),
        };
        let (frame, error) = match step {
            Step::Note(note) => {
                if sink.send(Out::Frame(sse::data_event(&note))).is_err() {
                    return record.done(200, true);
                }
                continue;
            }
            Step::Final { body, error, .. } => (body, error),
            Step::Gone(why) => {
                let body = json!({"jsonrpc": "2.0", "id": ex.client_id(), "error": {"code": -32603, "message": why}});
                (Bytes::from(serde_json::to_vec(&body).unwrap_or_default()), true)
            }
            Step::InputRequired(asked) => (park_for_input(&gw, ex, asked, &app, &context), false),
        };
        let _ = sink.send(Out::Frame(sse::data_event(&frame)));
        return record.done(200, error);
    }
}

/// Parks the exchange and returns the `input_required` answer that carries its sealed `requestState`.
fn park_for_input(gw: &Gateway, ex: Exchange, asked: Map<String, Value>, app: &str, context: &str) -> Bytes {
    let id = ex.client_id().clone();
    let state = gw.parking.park(ex, app, context, gw.cfg.input_timeout);
    let body = json!({"jsonrpc": "2.0", "id": id, "result": {
        "resultType": "input_required",
        "inputRequests": asked,
        "requestState": state,
    }});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// `subscriptions/listen`: a child of its own (its subscriptions are server-side state), the
/// acknowledgement first, then the requested change notifications tagged with the subscription id,
/// until the client closes the stream. The child is stopped afterwards, never reused. A server that
/// speaks 2026-07-28 gets the request as it is (`passthrough::listen`).
#[allow(clippy::too_many_arguments)]
async fn listen(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    id: &Value,
    msg: &Value,
    era: ServerEra,
    record: Record,
) -> Resp {
    let filter = msg.pointer("/params/notifications").cloned().unwrap_or_else(|| json!({}));
    if !filter.is_object() {
        record.done(400, true);
        return error_response(
            StatusCode::BAD_REQUEST,
            id,
            -32602,
            "Invalid params: params.notifications must be an object",
            None,
        );
    }
    if era == ServerEra::Modern {
        // Shared: a modern server tags the stream's notifications, and the context's other requests should
        // reach the same process, whose changes the stream reports (see `passthrough::listen`).
        let lease = match lend(gw, app, route, context, id, Mode::Shared).await {
            Ok(l) => l,
            Err(r) => return record.fail(r),
        };
        return passthrough::listen(gw, lease, id, msg, record).await;
    }
    let mut lease = match lend(gw, app, route, context, id, Mode::Exclusive).await {
        Ok(l) => l,
        Err(r) => return record.fail(r),
    };
    lease.discard();
    let caps = gw.pool.facts(app, &route.backend).map(|f| f.capabilities.clone()).unwrap_or_default();
    let mut accepted = Map::new();
    for (field, cap) in [
        ("toolsListChanged", "/tools/listChanged"),
        ("promptsListChanged", "/prompts/listChanged"),
        ("resourcesListChanged", "/resources/listChanged"),
    ] {
        if filter.get(field) == Some(&json!(true)) && caps.pointer(cap) == Some(&json!(true)) {
            accepted.insert(field.into(), json!(true));
        }
    }
    let mut uris: Vec<String> = Vec::new();
    if let Some(list) = filter.get("resourceSubscriptions").and_then(Value::as_array)
        && caps.pointer("/resources/subscribe") == Some(&json!(true))
    {
        uris = list.iter().filter_map(Value::as_str).map(str::to_string).collect();
        for uri in &uris {
            let req = json!({"jsonrpc": "2.0", "method": "resources/subscribe", "params": {"uri": uri}});
            let Some((_, mut rx)) = lease.request(req) else { break };
            let answered = tokio::time::timeout(gw.cfg.pool_init_timeout, async {
                loop {
                    match rx.recv().await {
                        Some(ChildMsg::Response(_)) => return true,
                        Some(ChildMsg::Notification(..)) => continue,
                        _ => return false,
                    }
                }
            })
            .await;
            if answered != Ok(true) {
                return record.fail(bad_gateway(
                    id,
                    &format!("Bad Gateway: the server did not accept the subscription to {uri}"),
                ));
            }
        }
        accepted.insert("resourceSubscriptions".into(), json!(uris));
    }
    let mut rx = lease.changes();
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": {"_meta": {META_SUBSCRIPTION: id}, "notifications": accepted}});
    let (sink, stream) = sse::out_channel();
    let _ = sink.send(Out::Frame(sse::data_event(&serde_json::to_vec(&ack).unwrap_or_default())));
    let id = id.clone();
    tokio::spawn(async move {
        let _lease = lease;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sink.closed() => break,
            };
            let Some((line, c)) = msg else { break };
            let wanted = match c.method.as_deref() {
                Some("notifications/tools/list_changed") => accepted.contains_key("toolsListChanged"),
                Some("notifications/prompts/list_changed") => accepted.contains_key("promptsListChanged"),
                Some("notifications/resources/list_changed") => accepted.contains_key("resourcesListChanged"),
                Some("notifications/resources/updated") => {
                    let v: Value = serde_json::from_slice(&line).unwrap_or_default();
                    v.pointer("/params/uri")
                        .and_then(Value::as_str)
                        .is_some_and(|u| uris.iter().any(|x| x == u))
                }
                _ => false,
            };
            if !wanted {
                continue;
            }
            let mut v: Value = serde_json::from_slice(&line).unwrap_or_default();
            if !v.get("params").is_some_and(Value::is_object) {
                v["params"] = json!({});
            }
            if !v.pointer("/params/_meta").is_some_and(Value::is_object) {
                v["params"]["_meta"] = json!({});
            }
            v["params"]["_meta"][META_SUBSCRIPTION] = id.clone();
            if sink.send(Out::Frame(sse::data_event(&serde_json::to_vec(&v).unwrap_or_default()))).is_err() {
                break;
            }
        }
        record.done(200, false);
    });
    p::sse_response(SseBody::new(None, stream, gw.cfg.keepalive_interval, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn request(method: &str, params: Value) -> Value {
        let mut params = params;
        params["_meta"] = json!({META_VERSION: MODERN_VERSION, META_CAPABILITIES: {}});
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    }

    fn ok_headers(method: &str) -> Vec<(&'static str, String)> {
        vec![("mcp-protocol-version", MODERN_VERSION.to_string()), ("mcp-method", method.to_string())]
    }

    fn h(v: &[(&'static str, String)]) -> HeaderMap {
        headers(&v.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
    }

    #[test]
    fn detection_leaves_legacy_traffic_alone() {
        assert!(!is_modern(&headers(&[]), false));
        assert!(!is_modern(&headers(&[("mcp-protocol-version", "2025-11-25")]), false));
        assert!(is_modern(&headers(&[("mcp-protocol-version", "2026-07-28")]), false));
        assert!(is_modern(&headers(&[]), true));
        assert!(!is_modern(
            &headers(&[("mcp-session-id", "x"), ("mcp-protocol-version", "2026-07-28")]),
            false
        ));
    }

    #[test]
    fn the_checks_give_the_revisions_codes() {
        let tools = request("tools/list", json!({}));
        assert_eq!(check(&h(&ok_headers("tools/list")), &tools), Ok(()));
        assert_eq!(check(&headers(&[("mcp-method", "tools/list")]), &tools).unwrap_err().code, -32020);
        let bare = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
        assert_eq!(check(&h(&ok_headers("tools/list")), &bare).unwrap_err().code, -32602);
        let mut old = tools.clone();
        old["params"]["_meta"][META_VERSION] = json!("1900-01-01");
        let mut hs = ok_headers("tools/list");
        hs[0].1 = "1900-01-01".into();
        let e = check(&h(&hs), &old).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, -32022));
        assert_eq!(e.data.unwrap()["requested"], "1900-01-01");
        assert_eq!(check(&h(&hs), &tools).unwrap_err().code, -32020, "header and _meta disagree");
        assert_eq!(check(&h(&ok_headers("tools/call")), &tools).unwrap_err().code, -32020);
        let call = request("tools/call", json!({"name": "get_time"}));
        assert_eq!(check(&h(&ok_headers("tools/call")), &call).unwrap_err().code, -32020, "Mcp-Name missing");
        let mut hs = ok_headers("tools/call");
        hs.push(("mcp-name", "get_time".into()));
        assert_eq!(check(&h(&hs), &call), Ok(()));
        hs[2].1 = "=?base64?Z2V0X3RpbWU=?=".into();
        assert_eq!(check(&h(&hs), &call), Ok(()), "base64 sentinel decoded");
        hs[2].1 = "other".into();
        assert_eq!(check(&h(&hs), &call).unwrap_err().code, -32020);
    }

    #[test]
    fn requests_reach_legacy_children_without_modern_meta() {
        let mut msg = request("tools/call", json!({"name": "x", "inputResponses": {}, "requestState": "s"}));
        msg["params"]["_meta"]["progressToken"] = json!(7);
        let legacy = legacy_request(msg);
        assert_eq!(
            legacy,
            json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "x", "_meta": {"progressToken": 7}}})
        );
        let legacy = legacy_request(request("tools/list", json!({})));
        assert_eq!(legacy, json!({"jsonrpc": "2.0", "method": "tools/list", "params": {}}));
    }
}
