//! One MCP session of a stdio app: in-flight requests, SSE streams, event ids, the replay buffer
//! for `Last-Event-ID`, and the routing of every server message onto exactly one stream.
//!
//! All state sits behind one `std::sync::Mutex` that is only held for map updates and channel
//! sends (unbounded sends never wait), never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::jsonrpc::{self, Classified, IdKey};
use super::sse::{self, OnClose, OutSink};
use super::stdio::{ChildEvents, ChildProc};
use super::{AuditEvent, AuditSink, metrics};

/// What a request's waiter receives: the final response as plain JSON (fast path), or SSE
/// frames once the exchange became a stream.
#[derive(Debug)]
pub enum Out {
    Json(Bytes),
    Frame(Bytes),
}

impl Out {
    pub fn len(&self) -> usize {
        match self {
            Out::Json(b) | Out::Frame(b) => b.len(),
        }
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            Out::Json(b) | Out::Frame(b) => b,
        }
    }
}

/// Facts kept per request for its audit record and latency metric.
pub struct AuditInfo {
    pub method: Box<str>,
    pub tool: Option<Box<str>>,
    pub token_name: Option<Arc<str>>,
    pub started: Instant,
}

enum Target {
    /// Nothing sent yet: the first message decides JSON (final response) or SSE (anything else).
    Pending(OutSink),
    /// The request's messages go to this SSE stream.
    Stream(u64),
}

struct InFlight {
    order: u64,
    progress: Option<Box<str>>,
    target: Target,
    audit: AuditInfo,
}

struct Stream {
    /// The connection currently reading this stream (`None` or closed: messages are only kept
    /// in the replay buffer until the client resumes).
    sink: Option<OutSink>,
    seq: u64,
    /// Requests whose final response is still due on this stream (POST streams).
    remaining: usize,
}

struct State {
    inflight: HashMap<IdKey, InFlight>,
    order: u64,
    streams: HashMap<u64, Stream>,
    next_stream: u64,
    get_stream: Option<u64>,
    replay: VecDeque<(u64, u64, Bytes)>,
    replay_bytes: usize,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    open_streams: usize,
    last_active: Instant,
    last_request: Instant,
}

/// Bytes of SSE events kept per session for resumption (besides the event-count limit), so
/// large results cannot pin unbounded memory.
const MAX_REPLAY_BYTES: usize = 8 << 20;
/// Bytes of undelivered server messages kept per session for the next GET stream.
const MAX_BACKLOG_BYTES: usize = 4 << 20;

/// Per-session limits copied from the gateway config.
#[derive(Clone, Copy)]
pub struct Limits {
    pub replay_events: usize,
    pub backlog_messages: usize,
}

pub struct Session {
    pub id: Arc<str>,
    pub app: Arc<str>,
    pub link: Link,
    version: OnceLock<Box<str>>,
    state: Mutex<State>,
    limits: Limits,
    terminated: AtomicBool,
    audit: Arc<dyn AuditSink>,
}

/// Why a stream could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamError {
    /// A standalone GET stream is already open (409).
    Conflict,
    /// The session ended (404).
    Gone,
}

impl Session {
    pub fn new(
        id: Arc<str>,
        app: Arc<str>,
        link: Link,
        limits: Limits,
        audit: Arc<dyn AuditSink>,
    ) -> Session {
        let now = Instant::now();
        Session {
            id,
            app,
            link,
            version: OnceLock::new(),
            state: Mutex::new(State {
                inflight: HashMap::new(),
                order: 0,
                streams: HashMap::new(),
                next_stream: 1,
                get_stream: None,
                replay: VecDeque::new(),
                replay_bytes: 0,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                open_streams: 0,
                last_active: now,
                last_request: now,
            }),
            limits,
            terminated: AtomicBool::new(false),
            audit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the session, so recover the guard.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// The negotiated protocol version (from the server's initialize result).
    pub fn version(&self) -> Option<&str> {
        self.version.get().map(|v| &**v)
    }

    pub fn set_version(&self, v: &str) {
        let _ = self.version.set(v.into());
    }

    /// 2025-11-25 and later prime every SSE stream with an empty event.
    fn priming(&self) -> bool {
        self.version().is_some_and(|v| v >= "2025-11-25")
    }

    /// Register a request that is answered on its own HTTP response. Fails when the id is
    /// already in flight in this session.
    pub fn begin(
        &self,
        id: IdKey,
        progress: Option<Box<str>>,
        tx: OutSink,
        audit: AuditInfo,
    ) -> Result<(), ()> {
        let mut st = self.lock();
        if st.inflight.contains_key(&id) {
            return Err(());
        }
        st.order += 1;
        let order = st.order;
        let now = Instant::now();
        st.last_active = now;
        st.last_request = now;
        st.inflight.insert(id, InFlight { order, progress, target: Target::Pending(tx), audit });
        Ok(())
    }

    /// Register the requests of a batch, all answered on one new SSE stream.
    pub fn begin_batch(
        &self,
        reqs: Vec<(IdKey, Option<Box<str>>, AuditInfo)>,
        tx: OutSink,
    ) -> Result<(), ()> {
        let mut st = self.lock();
        if reqs.iter().any(|(id, _, _)| st.inflight.contains_key(id)) {
            return Err(());
        }
        let s = st.next_stream;
        st.next_stream += 1;
        st.streams.insert(s, Stream { sink: Some(tx), seq: 0, remaining: reqs.len() });
        let now = Instant::now();
        st.last_active = now;
        st.last_request = now;
        for (id, progress, audit) in reqs {
            st.order += 1;
            let order = st.order;
            st.inflight.insert(id, InFlight { order, progress, target: Target::Stream(s), audit });
        }
        Ok(())
    }

    /// Forget a request that could not be sent to the server.
    pub fn abandon(&self, id: &IdKey) {
        self.lock().inflight.remove(id);
    }

    /// The client cancelled request `id`: the server will not answer it, so answer the
    /// waiting HTTP request with a JSON-RPC error (fast path) or close its stream.
    pub fn cancel(&self, id: &IdKey) {
        let info = {
            let mut st = self.lock();
            let Some(inf) = st.inflight.remove(id) else {
                return;
            };
            match inf.target {
                Target::Pending(tx) => {
                    let body = jsonrpc::error_body(
                        Some(&jsonrpc::id_json(id)),
                        -32800,
                        "Request cancelled by the client",
                    );
                    let _ = tx.send(Out::Json(body));
                }
                Target::Stream(s) => {
                    if let Some(stream) = st.streams.get_mut(&s) {
                        stream.remaining = stream.remaining.saturating_sub(1);
                        if stream.remaining == 0 && st.get_stream != Some(s) {
                            st.streams.remove(&s);
                        }
                    }
                }
            }
            inf.audit
        };
        self.record(info, 200, true);
    }

    /// Note client activity that is not a request (notifications, responses, GET, DELETE).
    pub fn touch(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        st.last_active = now;
        st.last_request = now;
    }

    /// A final response from the server (its id already mapped back to the client's).
    pub fn deliver_response(&self, id: &IdKey, line: Bytes, is_error: bool) {
        if self.version.get().is_none()
            && let Some(v) = jsonrpc::result_protocol_version(&line)
        {
            self.set_version(&v);
        }
        let info = {
            let mut st = self.lock();
            let Some(inf) = st.inflight.remove(id) else {
                tracing::debug!(session = %self.id, "dropping a response to an unknown request id");
                return;
            };
            match inf.target {
                Target::Pending(tx) => {
                    let _ = tx.send(Out::Json(line));
                }
                Target::Stream(s) => {
                    self.emit(&mut st, s, &line);
                    if let Some(stream) = st.streams.get_mut(&s) {
                        stream.remaining = stream.remaining.saturating_sub(1);
                        if stream.remaining == 0 && st.get_stream != Some(s) {
                            // Dropping the sink ends the HTTP response after the last frame.
                            st.streams.remove(&s);
                        }
                    }
                }
            }
            inf.audit
        };
        self.record(info, 200, is_error);
    }

    fn record(&self, info: AuditInfo, status: u16, error: bool) {
        let duration = info.started.elapsed();
        let label = metrics::method_label(&info.method);
        ::metrics::counter!(metrics::REQUESTS, "app" => self.app.to_string(), "method" => label, "status" => status_label(status)).increment(1);
        ::metrics::histogram!(metrics::LATENCY, "app" => self.app.to_string(), "method" => label)
            .record(duration.as_secs_f64());
        if !self.audit.enabled() {
            return;
        }
        self.audit.record(AuditEvent {
            app: self.app.to_string(),
            token_name: info.token_name.map(|t| t.to_string()),
            method: info.method.into(),
            tool_name: info.tool.map(Into::into),
            status,
            error,
            duration,
        });
    }

    /// A server notification or server→client request: onto the stream of the request whose
    /// progress token matches, else the oldest in-flight request, else the GET stream, else
    /// the backlog for the next GET stream.
    pub fn deliver_server_message(&self, progress: Option<&str>, line: Bytes) {
        let mut st = self.lock();
        let by_token = progress.and_then(|p| {
            st.inflight.iter().find(|(_, f)| f.progress.as_deref() == Some(p)).map(|(k, _)| k.clone())
        });
        let target =
            by_token.or_else(|| st.inflight.iter().min_by_key(|(_, f)| f.order).map(|(k, _)| k.clone()));
        if let Some(key) = target {
            if let Some(s) = self.stream_of(&mut st, &key) {
                self.emit(&mut st, s, &line);
            }
            return;
        }
        self.to_get_stream(&mut st, line);
    }

    /// A message that belongs to the request `id` of this session (a translated server's input request
    /// during it, its progress): onto that request's stream; to the GET stream when it is no longer in flight.
    pub fn deliver_to_request(&self, id: &IdKey, line: Bytes) {
        let mut st = self.lock();
        match self.stream_of(&mut st, id) {
            Some(s) => self.emit(&mut st, s, &line),
            None => self.to_get_stream(&mut st, line),
        }
    }

    /// A server message that belongs to no request (a change notification): onto the GET stream, else the
    /// backlog for the next GET stream.
    pub fn deliver_unrelated(&self, line: Bytes) {
        let mut st = self.lock();
        self.to_get_stream(&mut st, line);
    }

    /// The SSE stream of in-flight request `key`, made one if its answer has not started yet (its first
    /// message is not its final response).
    fn stream_of(&self, st: &mut State, key: &IdKey) -> Option<u64> {
        match st.inflight.get(key).map(|f| &f.target) {
            Some(Target::Stream(s)) => Some(*s),
            Some(Target::Pending(tx)) => {
                let tx = tx.clone();
                let s = st.next_stream;
                st.next_stream += 1;
                if self.priming() {
                    let _ = tx.send(Out::Frame(sse::priming(s)));
                }
                st.streams.insert(s, Stream { sink: Some(tx), seq: 0, remaining: 1 });
                if let Some(f) = st.inflight.get_mut(key) {
                    f.target = Target::Stream(s);
                }
                Some(s)
            }
            None => None,
        }
    }

    /// Onto the GET stream, else the backlog for the next GET stream.
    fn to_get_stream(&self, st: &mut State, line: Bytes) {
        if let Some(g) = st.get_stream {
            self.emit(st, g, &line);
            return;
        }
        st.backlog_bytes += line.len();
        st.backlog.push_back(line);
        while st.backlog.len() > self.limits.backlog_messages || st.backlog_bytes > MAX_BACKLOG_BYTES {
            match st.backlog.pop_front() {
                Some(m) => st.backlog_bytes -= m.len(),
                None => break,
            }
            tracing::warn!(session = %self.id, "backlog full: dropped the oldest undelivered server message");
        }
    }

    /// Frame `msg` as the next event of stream `s`, keep it for replay, send it if connected.
    fn emit(&self, st: &mut State, s: u64, msg: &[u8]) {
        let Some(stream) = st.streams.get_mut(&s) else {
            return;
        };
        stream.seq += 1;
        let frame = sse::event(s, stream.seq, msg);
        if let Some(sink) = &stream.sink
            && sink.send(Out::Frame(frame.clone())).is_err()
        {
            stream.sink = None;
        }
        let seq = stream.seq;
        st.replay_bytes += frame.len();
        st.replay.push_back((s, seq, frame));
        while st.replay.len() > self.limits.replay_events || st.replay_bytes > MAX_REPLAY_BYTES {
            match st.replay.pop_front() {
                Some((_, _, f)) => st.replay_bytes -= f.len(),
                None => break,
            }
        }
    }

    /// Open the standalone GET stream (409 if one is connected). Backlogged messages go first.
    pub fn open_get(&self, tx: OutSink) -> Result<(), StreamError> {
        if self.is_terminated() {
            return Err(StreamError::Gone);
        }
        let mut st = self.lock();
        if let Some(g) = st.get_stream
            && st.streams.get(&g).and_then(|s| s.sink.as_ref()).is_some_and(|sink| !sink.is_closed())
        {
            return Err(StreamError::Conflict);
        }
        if let Some(old) = st.get_stream.take() {
            st.streams.remove(&old);
        }
        let s = st.next_stream;
        st.next_stream += 1;
        if self.priming() {
            let _ = tx.send(Out::Frame(sse::priming(s)));
        }
        st.streams.insert(s, Stream { sink: Some(tx), seq: 0, remaining: 0 });
        st.get_stream = Some(s);
        st.last_active = Instant::now();
        let backlog: Vec<Bytes> = st.backlog.drain(..).collect();
        st.backlog_bytes = 0;
        for m in backlog {
            self.emit(&mut st, s, &m);
        }
        Ok(())
    }

    /// Resume stream `s` after event `seq`: replay what the client missed from that stream
    /// only, then keep the new connection attached if the stream is still live.
    pub fn resume(&self, s: u64, seq: u64, tx: OutSink) -> Result<(), StreamError> {
        if self.is_terminated() {
            return Err(StreamError::Gone);
        }
        let mut st = self.lock();
        if let Some(stream) = st.streams.get(&s)
            && st.get_stream == Some(s)
            && stream.sink.as_ref().is_some_and(|k| !k.is_closed())
        {
            return Err(StreamError::Conflict);
        }
        for (_, _, frame) in st.replay.iter().filter(|(rs, rq, _)| *rs == s && *rq > seq) {
            let _ = tx.send(Out::Frame(frame.clone()));
        }
        if let Some(stream) = st.streams.get_mut(&s) {
            stream.sink = Some(tx);
        }
        st.last_active = Instant::now();
        Ok(())
    }

    /// Count an open SSE connection; the returned guard uncounts it when the body is dropped.
    pub fn stream_guard(self: &Arc<Self>) -> Box<dyn OnClose> {
        self.lock().open_streams += 1;
        Box::new(StreamGuard(self.clone()))
    }

    /// Why this session should be reaped now, if it should.
    pub fn reap_reason(&self, grace: Duration, idle: Duration) -> Option<&'static str> {
        if self.is_terminated() {
            return Some("the session ended");
        }
        let st = self.lock();
        if st.inflight.is_empty() && st.open_streams == 0 && st.last_active.elapsed() >= grace {
            return Some("the client went away (no open stream and no request)");
        }
        if st.last_request.elapsed() >= idle {
            return Some("the session was idle too long");
        }
        None
    }

    /// End the session: every in-flight request gets a JSON-RPC error, streams close, and the
    /// child is stopped (own child) or the session is detached (shared child).
    pub fn terminate(&self, why: &str) {
        if self.terminated.swap(true, Ordering::AcqRel) {
            return;
        }
        let pending: Vec<IdKey> = self.lock().inflight.keys().cloned().collect();
        let msg = format!("the MCP session ended before the server answered: {why}");
        for id in pending {
            let body = jsonrpc::error_body(Some(&jsonrpc::id_json(&id)), -32000, &msg);
            self.deliver_response(&id, body, true);
        }
        {
            let mut st = self.lock();
            st.streams.clear();
            st.get_stream = None;
            st.backlog.clear();
            st.backlog_bytes = 0;
        }
        self.link.detach(&self.id);
    }

    /// Route a classified message from the server (per-session child).
    pub fn route_from_server(&self, line: Bytes, c: &Classified) {
        match c.kind {
            jsonrpc::Kind::Response => {
                if let Some(id) = &c.id {
                    self.deliver_response(id, line, c.is_error);
                }
            }
            _ => self.deliver_server_message(c.progress_token.as_deref(), line),
        }
    }
}

pub(super) fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        202 => "202",
        400 => "400",
        404 => "404",
        429 => "429",
        502 => "502",
        _ => "other",
    }
}

struct StreamGuard(Arc<Session>);

impl OnClose for StreamGuard {
    fn closed(&self) {
        let mut st = self.0.lock();
        st.open_streams = st.open_streams.saturating_sub(1);
        st.last_active = Instant::now();
    }
}
impl ChildEvents for Session {
    fn message(&self, line: Bytes, c: Classified) {
        self.route_from_server(line, &c);
    }
    fn exited(&self, why: &str) {
        self.terminate(why);
    }
}

/// A child several sessions share (`shared_child.rs`), as a session sees it. A trait, so that the
/// shared child (which routes answers to sessions) depends on sessions and not the other way round.
pub trait SharedLink: Send + Sync {
    /// Sends a client message of `session`, its id rewritten; `false` when the child is gone.
    fn send(&self, session: &Arc<Session>, c: &Classified, body: &[u8]) -> bool;
    /// `session` ended: forget it and its requests in flight.
    fn detach(&self, session_id: &str);
}

/// How a session reaches its server.
pub enum Link {
    Own(Arc<ChildProc>),
    Shared(Arc<dyn SharedLink>),
}

impl Link {
    /// Send a client message. `false` when the server is gone.
    pub fn send(&self, session: &Arc<Session>, c: &Classified, body: &[u8]) -> bool {
        match self {
            Link::Own(p) => p.send(jsonrpc::to_line(body)),
            Link::Shared(h) => h.send(session, c, body),
        }
    }

    /// The session ended: stop its own child, or leave the shared one.
    pub fn detach(&self, session_id: &str) {
        match self {
            Link::Own(p) => p.stop(),
            Link::Shared(h) => h.detach(session_id),
        }
    }
}
