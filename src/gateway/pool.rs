//! The warm pool of the 2026-07-28 endpoint: stdio children that serve stateless (modern) requests.
//!
//! Nearly every stdio server deployed today speaks only the handshake era: it wants `initialize`, then
//! requests. A modern request carries no session, so the gateway keeps children that it initialized
//! itself and lends one to each modern request ([`lease`]). A server that speaks 2026-07-28 itself
//! ([`era`], asked once per release) gets children that are never initialized: they take modern
//! requests as they are (`passthrough.rs`). Why these rules (the same for both):
//!
//! - **One authorization context per child.** A server keeps state between requests (open files,
//!   caches, a logged-in API client); a child only ever serves the token (or OAuth grant) it was first
//!   lent to, so one user's state never reaches another user's request.
//! - **Alone only when it matters** ([`Mode`]). Legacy servers send log messages and server→client
//!   requests that do not say which request they belong to; a request that may need them (it asked for
//!   log messages, or it may be asked for input and its client can answer) has its child alone. Every
//!   other request shares a child with up to `MAX_SHARED` others of its context: its answer is routed by
//!   id and its progress by a token catwalk gives it, so nothing crosses. Concurrent requests of one
//!   context get more children (up to `pool_max_per_context`), then wait (up to `POOL_WAIT`) for room.
//! - **Children come from the warm spares** (`spares.rs`) when one is ready, so a modern client's first
//!   request pays an `initialize`, not a process start; a cold start is counted like a session's.
//! - **A child never outlives its release**: leases and returns compare the route's backend, and
//!   [`Pool::drop_app`] stops every child of an app that was redeployed or stopped.
//! - **Idle children go away** after `pool_idle_timeout` (the reaper's [`Pool::tick`]), and pooled
//!   children count against `max_sessions_per_app` with sessions and spares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::applog::LogKind;
use super::jsonrpc::{self, Classified, IdKey, Kind};
use super::param_headers::ToolHeaders;
use super::server_era::{self, ServerEra};
use super::stdio::{self, ChildEvents, ChildProc, OwnEvents};
use super::{AppRoute, Backend, Gateway};

/// How long a request waits for one of its context's children when all are busy (then 503).
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The protocol version the gateway speaks to legacy children (the newest handshake-era revision;
/// a server that only knows an older one answers with it, and that is fine).
const CHILD_PROTOCOL_VERSION: &str = "2025-11-25";

/// What a lent child sends back to the exchange that holds it.
#[derive(Debug)]
pub enum ChildMsg {
    /// The final response to the exchange's request (id still the gateway's).
    Response(Bytes),
    /// A notification from the child (progress, log message).
    Notification(Bytes, Classified),
    /// A server→client request of the child (elicitation, sampling, roots, ping) during the exchange.
    Request(Bytes, Classified),
    /// The process exited; the exchange cannot finish.
    Exited(String),
}

/// What the gateway learnt from a child's `initialize` result: answers `server/discover` without
/// lending a child, and says which notifications a `subscriptions/listen` can honour.
#[derive(Debug)]
pub struct ServerFacts {
    pub capabilities: Value,
    pub server_info: Value,
    pub instructions: Option<Value>,
    /// The handshake-era revision it answered `initialize` with.
    pub protocol_version: Option<String>,
}

/// The `x-mcp-header` annotations of a release's tools (`param_headers.rs`): learnt from its `tools/list` on
/// the first `tools/call`, forgotten when one of its children says its tool list changed.
pub type ToolHeadersSlot = Arc<Mutex<Option<Arc<ToolHeaders>>>>;

/// The open `subscriptions/listen` streams of one app release and authorization context. Every child of
/// that context reports its change notifications here: a legacy server changes its lists per process, and
/// the change a client caused through one pooled child must reach its listen stream held by another.
#[derive(Default)]
pub struct Listeners {
    streams: Mutex<Vec<mpsc::UnboundedSender<(Bytes, Classified)>>>,
}

impl Listeners {
    fn publish(&self, line: &Bytes, c: &Classified) {
        lock(&self.streams).retain(|tx| tx.send((line.clone(), c.clone())).is_ok());
    }
}

/// The gateway id of the `subscriptions/listen` a modern server tagged a notification with
/// (`_meta["io.modelcontextprotocol/subscriptionId"]`), if any.
fn subscription_of(line: &[u8]) -> Option<u64> {
    if !line.windows(14).any(|w| w == b"subscriptionId") {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    v.get("params")?.get("_meta")?.get(super::modern::META_SUBSCRIPTION)?.as_u64()
}

/// Notifications that concern listeners rather than the request in flight.
fn is_change_notification(method: Option<&str>) -> bool {
    matches!(
        method,
        Some(
            "notifications/tools/list_changed"
                | "notifications/prompts/list_changed"
                | "notifications/resources/list_changed"
                | "notifications/resources/updated"
        )
    )
}

/// A child of one app release and one authorization context, ready for modern requests: a handshake-era
/// server initialized by the gateway, or a server that speaks 2026-07-28 itself (`modern`).
pub struct PooledChild {
    /// It speaks 2026-07-28 itself: everything it sends concerns the request that holds it (a change
    /// notification is tagged with the subscription that asked for it), nothing goes to the listeners.
    modern: bool,
    listeners: Arc<Listeners>,
    tool_headers: ToolHeadersSlot,
    context: Arc<str>,
    generation: u64,
    proc: OnceLock<Arc<ChildProc>>,
    /// Where the process's output is routed: to this child now, to the daemon's pool after a health gate.
    events: Arc<OwnEvents>,
    next_id: AtomicU64,
    /// Requests sent to the child and not yet answered, by the gateway's id.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<ChildMsg>>>,
    /// The exchange that holds the child now: its notifications go there.
    holder: Mutex<Option<mpsc::UnboundedSender<ChildMsg>>>,
    dead: AtomicBool,
    idle_since: Mutex<Instant>,
    /// Shared exchanges in flight on this child (see [`Mode::Shared`]).
    load: AtomicUsize,
}

/// How a request uses the child it is lent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Alone: the request may need the child's unattributable messages (log messages at a level it asked
    /// for, server→client requests it could turn into input requests). One exchange at a time.
    Exclusive,
    /// Beside up to [`MAX_SHARED`] other shared requests of the same context: everything the request can
    /// get from the child is attributable (its response by id, its progress by a token catwalk gives it),
    /// and server→client requests during it are answered with an error anyway.
    Shared,
}

/// Most shared requests in flight on one pooled child (a 2025 server handles concurrent requests itself).
const MAX_SHARED: usize = 32;

/// The progress token a request with id `n` carries at the child: unique per child, so progress is routed
/// by it whatever token the client chose, and mapped back by the exchange.
pub fn child_progress_token(n: u64) -> String {
    format!("cw-p-{n}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PooledChild {
    fn proc(&self) -> Option<&Arc<ChildProc>> {
        self.proc.get()
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.proc().is_none_or(|p| p.is_exited())
    }

    fn stop(&self) {
        self.dead.store(true, Ordering::Release);
        if let Some(p) = self.proc() {
            p.stop();
        }
    }

    /// Sends `request` (a JSON-RPC request object without `id`) under a fresh gateway id; its response
    /// arrives on `tx`. `None` when the child is gone.
    fn send_request(&self, mut request: Value, tx: mpsc::UnboundedSender<ChildMsg>) -> Option<u64> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(n);
        if let Some(token) = request
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(|m| m.get_mut("progressToken"))
        {
            *token = json!(child_progress_token(n));
        }
        lock(&self.waiting).insert(n, tx);
        // serde_json escapes every line break inside strings: the serialized request is one line as it is.
        let mut line = serde_json::to_vec(&request).ok()?;
        line.push(b'\n');
        if self.proc()?.send(Bytes::from(line)) {
            Some(n)
        } else {
            lock(&self.waiting).remove(&n);
            None
        }
    }

    fn send_notification(&self, method: &str, params: Value) -> bool {
        let msg = json!({"jsonrpc": "2.0", "method": method, "params": params});
        let line = serde_json::to_vec(&msg).unwrap_or_default();
        self.proc().is_some_and(|p| p.send(jsonrpc::to_line(&line)))
    }

    /// Answers a server→client request of a legacy child that no exchange holds (sent while idle or during
    /// the gateway's own `initialize`): `ping` and `roots/list` (no roots) are answered, everything else
    /// gets an error, never silence.
    fn answer_server_request(&self, line: &[u8], c: &Classified) {
        let Some(id) = c.id_span.clone().map(|s| String::from_utf8_lossy(&line[s]).into_owned()) else {
            return;
        };
        let reply = match c.method.as_deref() {
            Some("ping") => format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{}}}}").into_bytes(),
            // Outside a request there is no client whose roots to ask: none.
            Some("roots/list") => {
                format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"roots\":[]}}}}").into_bytes()
            }
            Some(m) => jsonrpc::error_body(
                Some(&id),
                -32601,
                &format!(
                    "{m} is not available: no client that declared it can answer is waiting on this process"
                ),
            )
            .to_vec(),
            None => return,
        };
        if let Some(p) = self.proc() {
            p.send(jsonrpc::to_line(&reply));
        }
    }
}

impl ChildEvents for PooledChild {
    fn message(&self, line: Bytes, c: Classified) {
        match c.kind {
            Kind::Response => {
                let n = match &c.id {
                    Some(IdKey::Num(n)) => n.parse::<u64>().ok(),
                    _ => None,
                };
                if let Some(tx) = n.and_then(|n| lock(&self.waiting).remove(&n)) {
                    let _ = tx.send(ChildMsg::Response(line));
                }
            }
            Kind::Request => {
                // The exchange holding the child decides (an input request for its client, or an error);
                // with nobody holding it, the child gets its answer here.
                let holder = lock(&self.holder).clone();
                match holder {
                    Some(tx) => {
                        if let Err(mpsc::error::SendError(ChildMsg::Request(line, c))) =
                            tx.send(ChildMsg::Request(line, c))
                        {
                            self.answer_server_request(&line, &c);
                        }
                    }
                    None => self.answer_server_request(&line, &c),
                }
            }
            Kind::Notification if !self.modern && is_change_notification(c.method.as_deref()) => {
                if c.method.as_deref() == Some("notifications/tools/list_changed") {
                    *lock(&self.tool_headers) = None;
                }
                self.listeners.publish(&line, &c);
            }
            Kind::Notification => {
                // Progress goes to the request whose token it carries, a modern server's subscription
                // notification to the `subscriptions/listen` it is tagged with; anything else only to an
                // exclusive holder.
                let owner = c
                    .progress_token
                    .as_deref()
                    .and_then(|t| serde_json::from_str::<String>(t).ok())
                    .and_then(|t| t.strip_prefix("cw-p-").and_then(|n| n.parse::<u64>().ok()))
                    .or_else(|| if self.modern { subscription_of(&line) } else { None })
                    .and_then(|n| lock(&self.waiting).get(&n).cloned());
                let to = owner.or_else(|| lock(&self.holder).clone());
                if let Some(tx) = to {
                    let _ = tx.send(ChildMsg::Notification(line, c));
                }
            }
        }
    }

    fn exited(&self, why: &str) {
        self.dead.store(true, Ordering::Release);
        for (_, tx) in lock(&self.waiting).drain() {
            let _ = tx.send(ChildMsg::Exited(why.to_string()));
        }
        if let Some(tx) = lock(&self.holder).take() {
            let _ = tx.send(ChildMsg::Exited(why.to_string()));
        }
    }
}

/// The children of one app.
struct AppPool {
    backend: Backend,
    /// Bumped whenever the app's children are dropped, so a child of an older generation coming back
    /// from a lease is stopped and not counted.
    generation: u64,
    idle: HashMap<Arc<str>, Vec<Arc<PooledChild>>>,
    /// Children lent to shared requests, per context (with room while `load < MAX_SHARED`).
    sharing: HashMap<Arc<str>, Vec<Arc<PooledChild>>>,
    /// Children alive (idle, lent, or starting) per context.
    live: HashMap<Arc<str>, usize>,
    listeners: HashMap<Arc<str>, Arc<Listeners>>,
    /// Signalled when a context's child comes back or goes away: a request waiting for room goes on.
    returned: HashMap<Arc<str>, Arc<tokio::sync::Notify>>,
    facts: Option<Arc<ServerFacts>>,
    tool_headers: ToolHeadersSlot,
    /// Which era the release's server speaks, once a probe said (`server_era.rs`).
    era: Arc<tokio::sync::OnceCell<ServerEra>>,
    /// Whether a server that speaks 2026-07-28 also accepts 2025 sessions (`server_era::probe_initialize`).
    sessions: Arc<tokio::sync::OnceCell<bool>>,
    /// The child that issued each `requestState` still awaiting its retry (by digest; modern children
    /// only): SDKs seal the state with a key of the process, so the retry must reach that process.
    resumes: HashMap<[u8; 32], (Weak<PooledChild>, Instant)>,
    /// Processes the push's health gate proved (see [`Primed`]), ready and not yet lent to any context.
    primed: Vec<PrimedChild>,
}

/// What a push's health gate leaves for the daemon's pool: the release's era and, for a stdio release,
/// the process the gate proved — initialized by catwalk (a handshake-era server) or never initialized (a
/// server that speaks 2026-07-28 itself), either way ready for a modern request and bound to no
/// authorization context yet (the gate asked only for lists, as nobody). The first context that needs a
/// child takes it, so a push's process serves instead of being stopped and started again. (A 2025 session
/// cannot take it: MCP allows one `initialize` per connection; sessions get warm spares.)
///
/// Dropped without being adopted (the push failed after its gate), its processes stop.
pub struct Primed {
    era: ServerEra,
    facts: Option<Arc<ServerFacts>>,
    children: Vec<PrimedChild>,
}

struct PrimedChild {
    proc: Arc<ChildProc>,
    events: Arc<OwnEvents>,
    /// The next JSON-RPC id to send it: ids are never reused on a connection.
    next_id: u64,
    since: Instant,
}

impl Primed {
    /// Only what the release speaks (a daemon restart knows it from the release record; no process).
    pub fn era_only(era: ServerEra) -> Primed {
        Primed { era, facts: None, children: Vec::new() }
    }

    pub fn era(&self) -> ServerEra {
        self.era
    }

    /// The revision the release's server speaks: 2026-07-28, or what it answered catwalk's `initialize` with.
    pub fn protocol_version(&self) -> Option<String> {
        match self.era {
            ServerEra::Modern => Some(super::modern::MODERN_VERSION.to_string()),
            ServerEra::Handshake => self.facts.as_ref().and_then(|f| f.protocol_version.clone()),
        }
    }

    /// Processes handed over (for the push's output).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.proc.pid).collect()
    }
}

impl Drop for Primed {
    fn drop(&mut self) {
        for c in self.children.drain(..) {
            c.proc.stop();
        }
    }
}

impl AppPool {
    /// A child of `context` ready for a request in `mode`: a shared one with room, else an idle one.
    fn take_ready(&mut self, context: &Arc<str>, mode: Mode) -> Option<Arc<PooledChild>> {
        let entry = self;
        if mode == Mode::Shared
            && let Some(child) = entry
                .sharing
                .get(context)
                .and_then(|list| {
                    list.iter()
                        .filter(|c| !c.is_dead() && c.load.load(Ordering::Acquire) < MAX_SHARED)
                        .min_by_key(|c| c.load.load(Ordering::Acquire))
                })
                .cloned()
        {
            child.load.fetch_add(1, Ordering::AcqRel);
            return Some(child);
        }
        while let Some(child) = entry.idle.get_mut(context).and_then(Vec::pop) {
            if child.is_dead() {
                entry.forget(context);
                continue;
            }
            if mode == Mode::Shared {
                child.load.store(1, Ordering::Release);
                entry.sharing.entry(context.clone()).or_default().push(child.clone());
            }
            return Some(child);
        }
        None
    }

    fn live_total(&self) -> usize {
        self.live.values().sum::<usize>() + self.primed.len()
    }

    /// A proven process of the health gate for a new child, if one is still alive.
    fn take_primed(&mut self) -> Option<PrimedChild> {
        while let Some(p) = self.primed.pop() {
            if !p.proc.is_exited() {
                return Some(p);
            }
        }
        None
    }

    fn stop_idle(&mut self) {
        for child in self.idle.drain().flat_map(|(_, v)| v) {
            child.stop();
        }
        for p in self.primed.drain(..) {
            p.proc.stop();
        }
    }

    /// `child` itself for a request in `mode`, if it has room now (idle, or shared with room).
    fn take_this(&mut self, child: &Arc<PooledChild>, mode: Mode) -> Option<Arc<PooledChild>> {
        if child.is_dead() {
            return None;
        }
        let context = child.context.clone();
        if mode == Mode::Shared
            && child.load.load(Ordering::Acquire) > 0
            && child.load.load(Ordering::Acquire) < MAX_SHARED
            && self.sharing.get(&context).is_some_and(|l| l.iter().any(|c| Arc::ptr_eq(c, child)))
        {
            child.load.fetch_add(1, Ordering::AcqRel);
            return Some(child.clone());
        }
        let idle = self.idle.get_mut(&context)?;
        let at = idle.iter().position(|c| Arc::ptr_eq(c, child))?;
        let child = idle.remove(at);
        if mode == Mode::Shared {
            child.load.store(1, Ordering::Release);
            self.sharing.entry(context).or_default().push(child.clone());
        }
        Some(child)
    }

    fn signal(&self, context: &Arc<str>) {
        if let Some(n) = self.returned.get(context) {
            n.notify_one();
        }
    }

    fn forget(&mut self, context: &Arc<str>) {
        self.signal(context);
        if let Some(n) = self.live.get_mut(context) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(context);
            }
        }
    }
}

/// Every app's pooled children (one per gateway).
#[derive(Default)]
pub struct Pool {
    apps: Mutex<HashMap<String, AppPool>>,
    generations: AtomicU64,
}

/// Why no child could be lent.
#[derive(Debug)]
pub enum LeaseError {
    /// The app (or this context) is at its process limit: 503 with Retry-After.
    Busy(String),
    /// The server did not start or did not answer `initialize`: 502.
    Start(String),
}

/// A child lent to one exchange. Dropping the lease gives the child back (or stops it when the lease
/// was marked single-use, its release is gone, or it died).
pub struct Lease {
    pool: Arc<Pool>,
    app: String,
    child: Arc<PooledChild>,
    reusable: bool,
    mode: Mode,
}

impl Lease {
    /// Sends a request to the child; its response and progress come on the receiver, and (exclusive
    /// lease) everything else the child sends during it too.
    pub fn request(&self, request: Value) -> Option<(u64, mpsc::UnboundedReceiver<ChildMsg>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.mode == Mode::Exclusive {
            *lock(&self.child.holder) = Some(tx.clone());
        }
        let n = self.child.send_request(request, tx)?;
        Some((n, rx))
    }

    /// Asks the child one request of the gateway's own (`initialize`, `tools/list`) and returns its
    /// answer; whatever the child asks meanwhile gets an error, its notifications are dropped.
    pub async fn ask(&self, request: Value, timeout: Duration) -> Result<Value, String> {
        let pid = self.pid();
        let method = request.get("method").and_then(Value::as_str).unwrap_or("a request").to_string();
        let Some((_, mut rx)) = self.request(request) else {
            return Err(format!("process {pid} exited before it could be asked {method}"));
        };
        let answer = tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Some(ChildMsg::Response(line)) => return Ok(line),
                    Some(ChildMsg::Notification(..)) => continue,
                    Some(ChildMsg::Request(line, c)) => self.child.answer_server_request(&line, &c),
                    Some(ChildMsg::Exited(why)) => return Err(why),
                    None => return Err(format!("process {pid} went away during {method}")),
                }
            }
        })
        .await
        .map_err(|_| format!("process {pid} did not answer {method} within {} s", timeout.as_secs()))??;
        serde_json::from_slice(&answer).map_err(|e| format!("bad {method} answer: {e}"))
    }

    /// Sends the child a message as it is (an answer to one of its requests).
    pub fn send_raw(&self, msg: &Value) -> bool {
        let line = serde_json::to_vec(msg).unwrap_or_default();
        self.child.proc().is_some_and(|p| p.send(jsonrpc::to_line(&line)))
    }

    /// Remembers that this child issued `request_state` (an `input_required` answer of a modern server):
    /// the retry carrying it is lent the same child ([`lease_resuming`]).
    pub fn remember_state(&self, request_state: &str) {
        let mut apps = lock(&self.pool.apps);
        let Some(entry) = apps.get_mut(&self.app).filter(|e| e.generation == self.child.generation) else {
            return;
        };
        let now = Instant::now();
        if entry.resumes.len() >= MAX_REMEMBERED_STATES {
            entry.resumes.retain(|_, (c, at)| c.strong_count() > 0 && now.duration_since(*at) < STATE_MEMORY);
        }
        if entry.resumes.len() < MAX_REMEMBERED_STATES {
            entry.resumes.insert(state_digest(request_state), (Arc::downgrade(&self.child), now));
        }
    }

    /// Answers a request of the child that nobody can take (see `PooledChild::answer_server_request`).
    pub fn refuse(&self, line: &[u8], c: &Classified) {
        self.child.answer_server_request(line, c);
    }

    /// Tells the child the client gave up on request `n` (its stream closed).
    pub fn cancel(&self, n: u64, reason: &str) {
        lock(&self.child.waiting).remove(&n);
        self.child.send_notification("notifications/cancelled", json!({"requestId": n, "reason": reason}));
    }

    /// Stop the child instead of giving it back (a `subscriptions/listen` left subscriptions on it, or
    /// an exclusive request was cancelled). A shared child serves others: it is kept (a late answer of
    /// the cancelled request finds no waiter, its progress no token).
    pub fn discard(&mut self) {
        if self.mode == Mode::Exclusive {
            self.reusable = false;
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn pid(&self) -> u32 {
        self.child.proc().map(|p| p.pid).unwrap_or(0)
    }

    /// Change notifications of every child of this lease's context, from now until the receiver is dropped.
    pub fn changes(&self) -> mpsc::UnboundedReceiver<(Bytes, Classified)> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.child.listeners.streams).push(tx);
        rx
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.mode == Mode::Exclusive {
            *lock(&self.child.holder) = None;
        }
        self.pool.give_back(&self.app, self.child.clone(), self.reusable, self.mode);
    }
}

impl Pool {
    /// `app`'s pool for the release serving `backend` (a new generation when the release changed: the
    /// previous release's idle children stop).
    fn entry_for<'a>(
        &self,
        apps: &'a mut HashMap<String, AppPool>,
        app: &str,
        backend: &Backend,
    ) -> &'a mut AppPool {
        // Looked up before it is inserted: no key is allocated on the hot path.
        if !apps.contains_key(app) {
            apps.insert(app.to_string(), self.fresh(backend));
        }
        let entry = apps.get_mut(app).expect("inserted above");
        if entry.backend != *backend {
            entry.stop_idle();
            *entry = self.fresh(backend);
        }
        entry
    }

    /// A child of `context` ready for a request in `mode` (see [`AppPool::take_ready`]).
    fn take_ready(
        &self,
        app: &str,
        backend: &Backend,
        context: &Arc<str>,
        mode: Mode,
    ) -> Option<Arc<PooledChild>> {
        let mut apps = lock(&self.apps);
        self.entry_for(&mut apps, app, backend).take_ready(context, mode)
    }

    /// An empty pool for `backend`, in a generation of its own.
    fn fresh(&self, backend: &Backend) -> AppPool {
        AppPool {
            backend: backend.clone(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            idle: HashMap::new(),
            sharing: HashMap::new(),
            live: HashMap::new(),
            listeners: HashMap::new(),
            returned: HashMap::new(),
            facts: None,
            tool_headers: ToolHeadersSlot::default(),
            era: Arc::default(),
            sessions: Arc::default(),
            resumes: HashMap::new(),
            primed: Vec::new(),
        }
    }

    /// Takes what a health gate's private gateway learnt and proved for `app` (see [`Primed`]): the era,
    /// the server's facts and its idle children, which leave this pool (and this gateway's process groups
    /// when the daemon's gateway adopts them). `None` when the era is not known.
    pub fn export_primed(&self, app: &str) -> Option<Primed> {
        let mut apps = lock(&self.apps);
        let entry = apps.get_mut(app)?;
        let era = *entry.era.get()?;
        let mut children = Vec::new();
        for (context, list) in std::mem::take(&mut entry.idle) {
            for child in list {
                entry.forget(&context);
                let Some(proc) = child.proc().filter(|_| !child.is_dead()).cloned() else { continue };
                proc.leave_groups();
                // The old owner is done with it; the process keeps running for the next one.
                child.dead.store(true, Ordering::Release);
                let next_id = child.next_id.load(Ordering::Acquire);
                children.push(PrimedChild {
                    proc,
                    events: child.events.clone(),
                    next_id,
                    since: Instant::now(),
                });
            }
        }
        Some(Primed { era, facts: entry.facts.clone(), children })
    }

    /// Stops one process the health gate proved for `app`, if one is waiting: it yields its place to a
    /// 2025 session at the app's process limit (a session cannot use it). `true` when one was stopped.
    pub fn yield_primed(&self, app: &str) -> bool {
        let mut apps = lock(&self.apps);
        let Some(p) = apps.get_mut(app).and_then(|e| e.primed.pop()) else { return false };
        drop(apps);
        p.proc.stop();
        true
    }

    /// Adopts what a health gate left for `app`'s release serving `backend` (see [`Primed`]): its era is
    /// known without a probe, its proven processes wait for the first contexts that need a child, counted
    /// among this gateway's children from now on.
    pub fn adopt(&self, app: &str, backend: &Backend, mut primed: Primed, groups: &Arc<stdio::LiveGroups>) {
        let mut apps = lock(&self.apps);
        let entry = self.entry_for(&mut apps, app, backend);
        let _ = entry.era.set(primed.era);
        if let Some(facts) = primed.facts.take() {
            entry.facts.get_or_insert(facts);
        }
        for mut child in std::mem::take(&mut primed.children) {
            child.proc.move_to(groups);
            child.since = Instant::now();
            entry.primed.push(child);
        }
    }

    fn give_back(&self, app: &str, child: Arc<PooledChild>, reusable: bool, mode: Mode) {
        let mut apps = lock(&self.apps);
        let Some(entry) = apps.get_mut(app).filter(|e| e.generation == child.generation) else {
            drop(apps);
            child.stop();
            return;
        };
        if mode == Mode::Shared {
            let left = child.load.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
            if left > 0 && !child.is_dead() {
                // Still serving other shared requests: there is room on it again.
                entry.signal(&child.context);
                return;
            }
            if let Some(list) = entry.sharing.get_mut(&child.context) {
                list.retain(|c| !Arc::ptr_eq(c, &child));
            }
            if left > 0 {
                return;
            }
        }
        if reusable && !child.is_dead() {
            *lock(&child.idle_since) = Instant::now();
            entry.signal(&child.context);
            entry.idle.entry(child.context.clone()).or_default().push(child);
        } else {
            entry.forget(&child.context);
            drop(apps);
            child.stop();
        }
    }

    /// Where the annotations of `app`'s tools are kept for its release serving `backend`.
    pub fn tool_headers(&self, app: &str, backend: &Backend) -> Option<ToolHeadersSlot> {
        let apps = lock(&self.apps);
        apps.get(app).filter(|e| &e.backend == backend).map(|e| e.tool_headers.clone())
    }

    /// What the app's server said about itself, if a child of the current release was initialized.
    pub fn facts(&self, app: &str, backend: &Backend) -> Option<Arc<ServerFacts>> {
        let apps = lock(&self.apps);
        apps.get(app).filter(|e| &e.backend == backend).and_then(|e| e.facts.clone())
    }

    /// Where the era of `app`'s release serving `backend` is kept (see [`era`]).
    fn era_cell(&self, app: &str, backend: &Backend) -> Arc<tokio::sync::OnceCell<ServerEra>> {
        let mut apps = lock(&self.apps);
        self.entry_for(&mut apps, app, backend).era.clone()
    }

    fn sessions_cell(&self, app: &str, backend: &Backend) -> Arc<tokio::sync::OnceCell<bool>> {
        let mut apps = lock(&self.apps);
        self.entry_for(&mut apps, app, backend).sessions.clone()
    }

    /// Whether `app`'s release serving `backend` takes 2025 sessions itself, if known (never asks).
    pub fn sessions_known(&self, app: &str, backend: &Backend) -> Option<bool> {
        let apps = lock(&self.apps);
        apps.get(app).filter(|e| &e.backend == backend).and_then(|e| e.sessions.get().copied())
    }

    /// The era of `app`'s release serving `backend`, if a probe said (never starts one).
    pub fn era_known(&self, app: &str, backend: &Backend) -> Option<ServerEra> {
        let apps = lock(&self.apps);
        apps.get(app).filter(|e| &e.backend == backend).and_then(|e| e.era.get().copied())
    }

    /// Children alive for `app` (idle, lent or starting), for the process limit.
    pub fn live(&self, app: &str) -> usize {
        lock(&self.apps).get(app).map(AppPool::live_total).unwrap_or(0)
    }

    /// Processes the health gate proved for `app`, still waiting for their first context (for `info`).
    pub fn primed(&self, app: &str) -> usize {
        lock(&self.apps).get(app).map(|e| e.primed.len()).unwrap_or(0)
    }

    /// Idle children of `app` right now (for tests and `info`).
    pub fn idle(&self, app: &str) -> usize {
        lock(&self.apps)
            .get(app)
            .map(|e| e.idle.values().map(Vec::len).sum::<usize>() + e.primed.len())
            .unwrap_or(0)
    }

    /// Stops every child of `app` (redeploy, restart, destroy); lent ones stop when given back.
    pub fn drop_app(&self, app: &str) {
        let entry = lock(&self.apps).remove(app);
        if let Some(mut entry) = entry {
            entry.stop_idle();
        }
    }

    pub fn drop_all(&self) {
        let all: Vec<AppPool> = lock(&self.apps).drain().map(|(_, v)| v).collect();
        for mut entry in all {
            entry.stop_idle();
        }
    }

    /// The reaper's pass: stops children idle for `idle` and forgets dead ones.
    pub fn tick(&self, idle: Duration) {
        let mut stopped = Vec::new();
        {
            let mut apps = lock(&self.apps);
            for entry in apps.values_mut() {
                let mut gone = Vec::new();
                for (context, children) in entry.idle.iter_mut() {
                    children.retain(|c| {
                        let keep = !c.is_dead() && lock(&c.idle_since).elapsed() < idle;
                        if !keep {
                            gone.push(context.clone());
                            stopped.push(c.clone());
                        }
                        keep
                    });
                }
                entry.idle.retain(|_, v| !v.is_empty());
                for context in gone {
                    entry.forget(&context);
                }
                entry.primed.retain(|p| {
                    let keep = !p.proc.is_exited() && p.since.elapsed() < idle;
                    if !keep {
                        p.proc.stop();
                    }
                    keep
                });
            }
        }
        for c in stopped {
            c.stop();
        }
    }
}

/// Lends the child that issued `request_state` to its retry, waiting (a bounded time) while it is busy;
/// any child of the context when no child of this context is known to have issued it (it exited, the
/// release changed, or the server shares its sealing key between processes and the state came from
/// elsewhere).
pub async fn lease_resuming(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    mode: Mode,
    request_state: &str,
) -> Result<Lease, LeaseError> {
    let digest = state_digest(request_state);
    let deadline = tokio::time::Instant::now() + POOL_WAIT;
    let pool = gw.pool.clone();
    loop {
        let wait = {
            let mut apps = lock(&pool.apps);
            let entry = pool.entry_for(&mut apps, app, &route.backend);
            let issuer = entry.resumes.get(&digest).and_then(|(c, _)| c.upgrade());
            let Some(issuer) = issuer.filter(|c| &*c.context == context && !c.is_dead()) else { break };
            if let Some(child) = entry.take_this(&issuer, mode) {
                entry.resumes.remove(&digest);
                return Ok(Lease { pool: pool.clone(), app: app.to_string(), child, reusable: true, mode });
            }
            entry.returned.entry(issuer.context.clone()).or_default().clone()
        };
        if tokio::time::timeout_at(deadline, wait.notified()).await.is_err() {
            break;
        }
    }
    lease(gw, app, route, context, mode).await
}

fn state_digest(request_state: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(request_state.as_bytes()).into()
}

/// Most `requestState`s remembered per release, and for how long (a retry later than that goes to any child).
const MAX_REMEMBERED_STATES: usize = 4096;
const STATE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Which era `app`'s current release speaks: known after one probe per release (a throwaway process,
/// `server_era.rs`); until then the callers wait for the probe, started by whichever asks first (or in
/// the background by [`learn_era`] when the release's spares are filled). A probe that could not ask (the
/// server did not start) is not kept: this request is served as handshake-era and the next one asks again.
pub async fn era(gw: &Gateway, app: &str, route: &AppRoute) -> ServerEra {
    let Backend::Stdio { argv, env, cwd } = &route.backend else { return ServerEra::Handshake };
    let cell = gw.pool.era_cell(app, &route.backend);
    if let Some(era) = cell.get() {
        return *era;
    }
    let probed = cell
        .get_or_try_init(|| {
            let cmd = stdio::Command { groups: &gw.groups, app, argv, env, cwd };
            server_era::probe(cmd, gw.logs.clone(), gw.cfg.kill_grace)
        })
        .await;
    match probed {
        Ok(era) => *era,
        Err(e) => {
            gw.logs.push(app, LogKind::Event, &format!("could not learn the server's era: {e}"));
            ServerEra::Handshake
        }
    }
}

/// Starts learning the era of `app`'s release in the background, unless it is known or being learnt, so
/// that a modern client's first request finds it; with `sessions`, for a server that speaks 2026-07-28,
/// also whether it takes 2025 sessions, so that a 2025 client's first session finds that.
pub fn learn_era(gw: &Arc<Gateway>, app: &str, route: &AppRoute, sessions: bool) {
    if !matches!(route.backend, Backend::Stdio { .. })
        || (gw.pool.era_cell(app, &route.backend).initialized()
            && (!sessions || gw.pool.sessions_cell(app, &route.backend).initialized()))
    {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let (gw, app, route) = (gw.clone(), app.to_string(), route.clone());
    runtime.spawn(async move {
        if era(&gw, &app, &route).await == ServerEra::Modern && sessions {
            takes_sessions(&gw, &app, &route).await;
        }
    });
}

/// Whether `app`'s current release (a server that speaks 2026-07-28) takes 2025 sessions itself: asked
/// once per release (`server_era::probe_initialize`); until then the callers wait for it. A question that
/// could not be put (the process did not start) is not kept, and answered "yes" (the session then goes to
/// the server as it is, and fails there if it must).
pub async fn takes_sessions(gw: &Gateway, app: &str, route: &AppRoute) -> bool {
    let Backend::Stdio { argv, env, cwd } = &route.backend else { return true };
    let cell = gw.pool.sessions_cell(app, &route.backend);
    let asked = cell
        .get_or_try_init(|| {
            let cmd = stdio::Command { groups: &gw.groups, app, argv, env, cwd };
            server_era::probe_initialize(cmd, gw.logs.clone(), gw.cfg.kill_grace)
        })
        .await;
    asked.copied().unwrap_or(true)
}

/// Lends a child of `app`'s current release to one exchange of authorization `context`: an idle one of
/// that context, else a new one (a warm spare when ready, else a fresh process), initialized by the
/// gateway itself unless the release's server speaks 2026-07-28 (ask [`era`] first).
pub async fn lease(
    gw: &Arc<Gateway>,
    app: &str,
    route: &AppRoute,
    context: &str,
    mode: Mode,
) -> Result<Lease, LeaseError> {
    let Backend::Stdio { argv, env, cwd } = &route.backend else {
        return Err(LeaseError::Start("not a stdio app".into()));
    };
    let pool = gw.pool.clone();
    let context: Arc<str> = context.into();
    // A context at its limit waits (a bounded time) for one of its children to come back, as a client
    // sending many requests at once would expect, rather than getting 503s.
    let deadline = tokio::time::Instant::now() + POOL_WAIT;
    let lent = |child| Ok(Lease { pool: pool.clone(), app: app.to_string(), child, reusable: true, mode });
    let (generation, listeners, tool_headers, era, primed) = loop {
        // The common case, a child ready for this context, costs one lock of the pool.
        if let Some(child) = pool.take_ready(app, &route.backend, &context, mode) {
            return lent(child);
        }
        let room = {
            // Counted for the process limit only when a process may start: sessions and spares have locks
            // of their own, taken before the pool's (never inside it).
            let sessions = gw.app_sessions(app);
            let spares = gw.spares.ready(app);
            let mut apps = lock(&pool.apps);
            let entry = pool.entry_for(&mut apps, app, &route.backend);
            if let Some(child) = entry.take_ready(&context, mode) {
                return lent(child);
            }
            let mine = entry.live.get(&context).copied().unwrap_or(0);
            if mine < gw.cfg.pool_max_per_context {
                // A process the health gate proved is already counted: taking it needs no room.
                let primed = entry.take_primed();
                let total = sessions + spares + entry.live_total();
                if primed.is_none() && total >= gw.cfg.max_sessions_per_app {
                    return Err(LeaseError::Busy(format!(
                        "app {app:?} already runs {total} server processes (the limit); retry later"
                    )));
                }
                *entry.live.entry(context.clone()).or_default() += 1;
                break (
                    entry.generation,
                    entry.listeners.entry(context.clone()).or_default().clone(),
                    entry.tool_headers.clone(),
                    entry.era.get().copied().unwrap_or(ServerEra::Handshake),
                    primed,
                );
            }
            entry.returned.entry(context.clone()).or_default().clone()
        };
        if tokio::time::timeout_at(deadline, room.notified()).await.is_err() {
            return Err(LeaseError::Busy(format!(
                "this token's {} server processes on app {app:?} stayed busy for {} s; retry later",
                gw.cfg.pool_max_per_context,
                POOL_WAIT.as_secs()
            )));
        }
    };
    let unreserve = |pool: &Pool| {
        if let Some(e) = lock(&pool.apps).get_mut(app).filter(|e| e.generation == generation) {
            e.forget(&context);
        }
    };
    let modern = era == ServerEra::Modern;
    // Where the process comes from: one the health gate proved (ready), a warm spare, or a fresh start.
    let spare = if primed.is_none() { gw.spares.take(app, route) } else { None };
    let events = match (&primed, &spare) {
        (Some(p), _) => p.events.clone(),
        (None, Some(s)) => s.events.clone(),
        (None, None) => Arc::new(OwnEvents::default()),
    };
    let child = Arc::new(PooledChild {
        modern,
        listeners,
        tool_headers,
        context: context.clone(),
        generation,
        proc: OnceLock::new(),
        events: events.clone(),
        next_id: AtomicU64::new(primed.as_ref().map_or(1, |p| p.next_id)),
        waiting: Mutex::new(HashMap::new()),
        holder: Mutex::new(None),
        dead: AtomicBool::new(false),
        idle_since: Mutex::new(Instant::now()),
        load: AtomicUsize::new(0),
    });
    events.set_owner(Arc::downgrade(&child) as Weak<dyn ChildEvents>);
    // Set when the process is started for this request (no spare was ready): what that cost is measured.
    let mut cold: Option<Instant> = None;
    let ready_already = primed.is_some();
    let proc = match (primed, spare) {
        (Some(p), _) => p.proc,
        (None, Some(spare)) => spare.proc,
        (None, None) => {
            gw.spares.cold_start(app, route);
            cold = Some(Instant::now());
            let cmd = stdio::Command { groups: &gw.groups, app, argv, env, cwd };
            match stdio::spawn(cmd, events.clone(), gw.logs.clone(), gw.cfg.kill_grace) {
                Ok(p) => p,
                Err(e) => {
                    unreserve(&pool);
                    return Err(LeaseError::Start(e));
                }
            }
        }
    };
    if route.warm > 0 && !ready_already {
        let (gw, app) = (gw.clone(), app.to_string());
        tokio::spawn(async move { gw.warm(&app) });
    }
    let _ = child.proc.set(proc.clone());
    // Initialized alone, then lent as asked.
    let lease = Lease {
        pool: pool.clone(),
        app: app.to_string(),
        child: child.clone(),
        reusable: true,
        mode: Mode::Exclusive,
    };
    // A process the health gate proved was initialized by it (or, speaking 2026-07-28, never is).
    let ready = if modern || ready_already {
        Ok(None)
    } else {
        initialize(&lease, gw.cfg.pool_init_timeout).await.map(Some)
    };
    match ready {
        Ok(facts) => {
            if let Some(started) = cold {
                super::metrics::cold_start_paid(app, "2026-07-28", started);
            }
            let how = match (ready_already, modern) {
                (true, _) => "proven by the push's health gate",
                (false, true) => "it speaks 2026-07-28 itself",
                (false, false) => "initialized by catwalk",
            };
            gw.logs.push(
                app,
                LogKind::Event,
                &format!("process {} joined the 2026-07-28 pool ({how})", proc.pid),
            );
            let mut lease = lease;
            *lock(&child.holder) = None;
            if let Some(e) = lock(&pool.apps).get_mut(app).filter(|e| e.generation == generation) {
                if let Some(facts) = facts {
                    e.facts.get_or_insert(Arc::new(facts));
                }
                if mode == Mode::Shared {
                    child.load.store(1, Ordering::Release);
                    e.sharing.entry(context.clone()).or_default().push(child.clone());
                }
            }
            lease.mode = mode;
            Ok(lease)
        }
        Err(e) => {
            let mut lease = lease;
            lease.discard();
            drop(lease);
            gw.logs.push(app, LogKind::Event, &e);
            Err(LeaseError::Start(e))
        }
    }
}

/// The gateway's own handshake with a legacy child: `initialize`, then `notifications/initialized`.
///
/// It declares elicitation, sampling and roots: many servers only offer the tools that ask for input
/// when their client can answer, and through the input_required bridge (`exchange.rs`) a 2026-07-28
/// client can. Each request then says what its client can really do: a server request its client did not
/// declare gets an error, never reaches the client.
async fn initialize(lease: &Lease, timeout: Duration) -> Result<ServerFacts, String> {
    let request = json!({
        "jsonrpc": "2.0",
        "method": "initialize",
        "params": {
            "protocolVersion": CHILD_PROTOCOL_VERSION,
            "capabilities": {"elicitation": {}, "sampling": {}, "roots": {}},
            "clientInfo": {"name": "catwalk", "version": env!("CARGO_PKG_VERSION")},
        },
    });
    let pid = lease.pid();
    let v = lease.ask(request, timeout).await?;
    let Some(result) = v.get("result") else {
        let err = v.get("error").map(Value::to_string).unwrap_or_default();
        return Err(format!("process {pid} refused initialize: {err}"));
    };
    lease.child.send_notification("notifications/initialized", json!({}));
    Ok(ServerFacts {
        capabilities: result.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        server_info: result.get("serverInfo").cloned().unwrap_or_else(|| json!({})),
        instructions: result.get("instructions").cloned(),
        protocol_version: result.get("protocolVersion").and_then(Value::as_str).map(str::to_string),
    })
}
