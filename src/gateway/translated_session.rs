//! A 2025 session in front of a stdio server that speaks MCP 2026-07-28 only (it refuses `initialize`;
//! `server_era::probe_initialize` said so): catwalk keeps the session and speaks 2026-07-28 to the server.
//!
//! Most clients in use today (Claude Code, Cursor, the 1.x SDKs) only know sessions; a server built for
//! the stateless revision alone would be out of their reach. The session is the gateway's
//! ([`Session`], the same as for any stdio app: ids, streams, resumption); what reaches the server is one
//! 2026-07-28 request per client request, on the pool's children of the session's authorization context
//! (`pool.rs`, as for a 2026-07-28 client: one context per process, a retry back to the process that
//! sealed its state), driven by [`Exchange`] as on the pass-through path.
//!
//! The translation, message by message:
//! - `initialize` is answered from the server's `server/discover` (capabilities, server info,
//!   instructions), at the handshake revision the client asked for when catwalk knows it. What the
//!   client declared (its capabilities) travels with every request in
//!   `_meta["io.modelcontextprotocol/clientCapabilities"]`; `logging/setLevel` becomes each later
//!   request's `io.modelcontextprotocol/logLevel`; `ping` is answered by catwalk.
//! - An `input_required` answer becomes real server→client requests (elicitation, sampling, roots) on the
//!   stream of the client request it belongs to; the client's answers go back as the retry's
//!   `inputResponses` with the server's `requestState` byte for byte, for as many rounds as the server asks.
//!   A client that does not answer within `[gateway] input_timeout` gets an error for its request.
//! - Progress and log messages ride the request's stream; `notifications/cancelled` drops the exchange
//!   (the server's request stream closes, which cancels in 2026-07-28).
//! - Change notifications and resource subscriptions: the session holds one `subscriptions/listen` stream
//!   for the lists the server says change and the URIs the client subscribed to (`resources/subscribe` and
//!   `unsubscribe` open it again with the new set); what it reports goes to the session's GET stream. It
//!   shares its process with the session's requests (`Mode::Shared`, see `passthrough::listen`), since a
//!   server reports the changes of its own process only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::exchange::{Exchange, Step};
use super::jsonrpc::{self, Classified, IdKey, Kind};
use super::modern::{
    META_CAPABILITIES, META_LOG_LEVEL, META_SUBSCRIPTION, META_VERSION, MODERN_VERSION, server_info_of,
};
use super::passthrough::child_request;
use super::pool::{self, ChildMsg, Lease, Mode};
use super::protocol::KNOWN_VERSIONS;
use super::server_era::ServerEra;
use super::session::{Session, SharedLink};
use super::{AppRoute, Gateway};

/// The handshake revision a session gets when the client asks for one catwalk does not know.
const NEWEST_HANDSHAKE: &str = "2025-11-25";
/// Most `input_required` rounds one request may take (a server asking forever is an error).
const MAX_ROUNDS: usize = 16;

/// What the client said about itself in `initialize`, its log level and its subscriptions since, and what
/// the server offers.
#[derive(Default)]
struct ClientFacts {
    capabilities: Value,
    log_level: Option<String>,
    /// The resources the client subscribed to.
    subscribed: std::collections::BTreeSet<String>,
    /// The server's capabilities (from `server/discover`).
    offers: Value,
}

/// The link of one translated session (see the module's doc). Each client request runs as a task of its
/// own; the client's answers to the input requests it was sent come back through [`SharedLink::send`].
pub struct TranslatedLink {
    /// Itself, for the tasks it spawns ([`SharedLink::send`] has only `&self`).
    me: Weak<TranslatedLink>,
    gw: Weak<Gateway>,
    app: String,
    route: Arc<AppRoute>,
    context: String,
    client: Mutex<ClientFacts>,
    /// Client requests being served, to cancel them.
    tasks: Mutex<HashMap<IdKey, AbortHandle>>,
    /// Input requests sent to the client and not answered yet, by the id catwalk gave them.
    asks: Mutex<HashMap<IdKey, oneshot::Sender<Value>>>,
    /// The session's `subscriptions/listen` stream, while one is open.
    listening: Mutex<Option<AbortHandle>>,
    next_ask: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TranslatedLink {
    pub fn new(gw: &Arc<Gateway>, app: &str, route: Arc<AppRoute>, context: &str) -> Arc<TranslatedLink> {
        Arc::new_cyclic(|me| TranslatedLink {
            me: me.clone(),
            gw: Arc::downgrade(gw),
            app: app.to_string(),
            route,
            context: context.to_string(),
            client: Mutex::default(),
            tasks: Mutex::default(),
            asks: Mutex::default(),
            listening: Mutex::default(),
            next_ask: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// Runs `work` for the client request `id` as a task of its own, cancellable by the client.
    fn spawn<F>(self: &Arc<Self>, id: IdKey, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let key = id.clone();
        // Held while spawning: the task's own removal cannot come before its insertion.
        let mut tasks = lock(&self.tasks);
        let task = tokio::spawn(async move {
            work.await;
            lock(&this.tasks).remove(&key);
        });
        tasks.insert(id, task.abort_handle());
    }

    /// The 2026-07-28 form of a client request: its params with what the session knows in `_meta`.
    fn modern_request(&self, msg: &Value) -> Value {
        let mut msg = msg.clone();
        let client = lock(&self.client);
        if !msg.get("params").is_some_and(Value::is_object) {
            msg["params"] = json!({});
        }
        let params = &mut msg["params"];
        if !params.get("_meta").is_some_and(Value::is_object) {
            params["_meta"] = json!({});
        }
        let meta = &mut params["_meta"];
        meta[META_VERSION] = json!(MODERN_VERSION);
        meta[META_CAPABILITIES] = client.capabilities.clone();
        if let Some(level) = &client.log_level {
            meta[META_LOG_LEVEL] = json!(level);
        }
        msg
    }

    /// Serves one client request through the server, round after round, and delivers its answer.
    async fn serve(self: Arc<Self>, session: Arc<Session>, id: IdKey, msg: Value) {
        let answer = match self.exchange(&session, &id, msg).await {
            Ok(answer) => answer,
            Err(why) => {
                json!({"jsonrpc": "2.0", "id": msg_id(&id), "error": {"code": -32603, "message": why}})
            }
        };
        deliver(&session, &id, &answer);
    }

    /// The final answer to the client request `id` (with its id), or why there is none.
    async fn exchange(&self, session: &Arc<Session>, id: &IdKey, msg: Value) -> Result<Value, String> {
        let gw = self.gw.upgrade().ok_or("the gateway is shutting down")?;
        let mut request = self.modern_request(&msg);
        for _ in 0..MAX_ROUNDS {
            // Alone only for log messages, as for a 2026-07-28 client; a retry goes to the process that asked.
            let mode = if request["params"]["_meta"].get(META_LOG_LEVEL).is_some() {
                Mode::Exclusive
            } else {
                Mode::Shared
            };
            let lent = match request["params"].get("requestState").and_then(Value::as_str) {
                Some(state) => {
                    pool::lease_resuming(&gw, &self.app, &self.route, &self.context, mode, state).await
                }
                None => pool::lease(&gw, &self.app, &self.route, &self.context, mode).await,
            };
            let lease = lent.map_err(|e| match e {
                pool::LeaseError::Busy(why) | pool::LeaseError::Start(why) => why,
            })?;
            let mut ex = Exchange::start(lease, request.clone(), child_request, "private", ServerEra::Modern)
                .ok_or("the server process exited")?;
            let answer = loop {
                match ex.next().await {
                    Step::Note(note) => session.deliver_to_request(id, note),
                    Step::Final { body, .. } => {
                        break serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())?;
                    }
                    Step::Gone(why) => return Err(why),
                    // A server that speaks 2026-07-28 asks with input_required results (below), never this.
                    Step::InputRequired(_) => return Err("the server asked for input out of turn".into()),
                }
            };
            let Some(result) = answer.get("result") else { return Ok(answer) };
            if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
                return Ok(handshake_answer(answer));
            }
            let asked = result.get("inputRequests").and_then(Value::as_object).cloned().unwrap_or_default();
            let responses = self.ask_client(session, id, asked, gw.cfg.input_timeout).await?;
            request["params"]["inputResponses"] = Value::Object(responses);
            request["params"]["requestState"] = result.get("requestState").cloned().unwrap_or(Value::Null);
        }
        Err(format!("the server asked for input more than {MAX_ROUNDS} times in one call"))
    }

    /// Sends the server's input requests to the client as server→client requests on the stream of its
    /// request `id`, and collects its answers by the server's keys.
    async fn ask_client(
        &self,
        session: &Arc<Session>,
        id: &IdKey,
        asked: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Map<String, Value>, String> {
        let mut waiting = Vec::new();
        for (key, ask) in asked {
            let n = self.next_ask.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ask_id = format!("cw-ask-{n}");
            let (tx, rx) = oneshot::channel();
            lock(&self.asks).insert(IdKey::Str(ask_id.clone().into()), tx);
            let line = json!({
                "jsonrpc": "2.0",
                "id": ask_id,
                "method": ask.get("method").cloned().unwrap_or(Value::Null),
                "params": ask.get("params").cloned().unwrap_or_else(|| json!({})),
            });
            session.deliver_to_request(id, Bytes::from(serde_json::to_vec(&line).unwrap_or_default()));
            waiting.push((key, rx));
        }
        let mut responses = Map::new();
        for (key, rx) in waiting {
            let answer = tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| {
                    format!(
                        "the client did not answer the server's {key} request within {} s",
                        timeout.as_secs()
                    )
                })?
                .map_err(|_| "the session ended while the server waited for input".to_string())?;
            match answer.get("result") {
                Some(result) => responses.insert(key, result.clone()),
                None => {
                    let err = answer.get("error").map(Value::to_string).unwrap_or_default();
                    return Err(format!("the client refused the server's {key} request: {err}"));
                }
            };
        }
        Ok(responses)
    }

    /// `initialize`, answered from the server's `server/discover`.
    async fn initialize(self: Arc<Self>, session: Arc<Session>, id: IdKey, msg: Value) {
        let asked_version = msg["params"]["protocolVersion"].as_str().unwrap_or(NEWEST_HANDSHAKE).to_string();
        {
            let mut client = lock(&self.client);
            client.capabilities = msg["params"]["capabilities"].clone();
            if !client.capabilities.is_object() {
                client.capabilities = json!({});
            }
        }
        let discover = json!({"jsonrpc": "2.0", "id": msg["id"], "method": "server/discover", "params": {}});
        let answer = match self.exchange(&session, &id, discover).await {
            Ok(a) => match a.get("result") {
                Some(found) => {
                    lock(&self.client).offers = found.get("capabilities").cloned().unwrap_or_default();
                    self.listen(&session);
                    let version = if KNOWN_VERSIONS.contains(&asked_version.as_str()) {
                        asked_version
                    } else {
                        NEWEST_HANDSHAKE.into()
                    };
                    json!({"jsonrpc": "2.0", "id": msg["id"], "result": initialize_result(found, &version)})
                }
                None => a,
            },
            Err(why) => json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32603, "message": why}}),
        };
        deliver(&session, &id, &answer);
    }
}

impl TranslatedLink {
    /// (Re)opens the session's `subscriptions/listen` stream for what the server offers and the client
    /// subscribed to; none when there is nothing to listen for.
    fn listen(&self, session: &Arc<Session>) {
        if let Some(old) = lock(&self.listening).take() {
            old.abort();
        }
        let filter = {
            let client = lock(&self.client);
            let mut filter = serde_json::Map::new();
            for (field, cap) in [
                ("toolsListChanged", "/tools/listChanged"),
                ("promptsListChanged", "/prompts/listChanged"),
                ("resourcesListChanged", "/resources/listChanged"),
            ] {
                if client.offers.pointer(cap) == Some(&json!(true)) {
                    filter.insert(field.into(), json!(true));
                }
            }
            if !client.subscribed.is_empty()
                && client.offers.pointer("/resources/subscribe") == Some(&json!(true))
            {
                filter.insert("resourceSubscriptions".into(), json!(client.subscribed));
            }
            filter
        };
        let Some(gw) = self.gw.upgrade() else { return };
        if filter.is_empty() {
            return;
        }
        let msg = self.modern_request(
            &json!({"jsonrpc": "2.0", "method": "subscriptions/listen", "params": {"notifications": filter}}),
        );
        let (app, route, context, session) =
            (self.app.clone(), self.route.clone(), self.context.clone(), session.clone());
        let task = tokio::spawn(async move {
            let Ok(lease) = pool::lease(&gw, &app, &route, &context, Mode::Shared).await else { return };
            let Some((n, mut rx)) = lease.request(msg) else { return };
            let _stream = Listening { lease, n };
            while let Some(m) = rx.recv().await {
                match m {
                    ChildMsg::Notification(line, c) => {
                        if c.method.as_deref() != Some("notifications/subscriptions/acknowledged") {
                            session.deliver_unrelated(untagged(&line));
                        }
                    }
                    ChildMsg::Request(line, c) => _stream.lease.refuse(&line, &c),
                    ChildMsg::Response(_) | ChildMsg::Exited(_) => break,
                }
            }
        });
        *lock(&self.listening) = Some(task.abort_handle());
    }
}

/// An open `subscriptions/listen` stream: when it is dropped (the session ended, or it is opened again with
/// another set) the server hears `notifications/cancelled`, which ends its subscription.
struct Listening {
    lease: Lease,
    n: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.lease.cancel(self.n, "the session's subscriptions changed or it ended");
    }
}

/// A change notification as a 2025 client gets it: without the subscription's tag.
fn untagged(line: &[u8]) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(line) else { return Bytes::copy_from_slice(line) };
    if let Some(meta) = v.pointer_mut("/params/_meta").and_then(Value::as_object_mut) {
        meta.remove(META_SUBSCRIPTION);
        if meta.is_empty()
            && let Some(params) = v.get_mut("params").and_then(Value::as_object_mut)
        {
            params.remove("_meta");
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The final answer to the session's request `id` (the whole JSON-RPC message).
fn deliver(session: &Session, id: &IdKey, answer: &Value) {
    let is_error = answer.get("error").is_some();
    session.deliver_response(id, Bytes::from(serde_json::to_vec(answer).unwrap_or_default()), is_error);
}

/// The JSON form of a client's id.
fn msg_id(id: &IdKey) -> Value {
    serde_json::from_str(&jsonrpc::id_json(id)).unwrap_or(Value::Null)
}

/// A 2026-07-28 answer as a handshake-era client expects it: without the revision's result fields.
fn handshake_answer(mut answer: Value) -> Value {
    if let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) {
        for k in ["resultType", "ttlMs", "cacheScope"] {
            result.remove(k);
        }
    }
    answer
}

/// The `initialize` result made of a `server/discover` result.
fn initialize_result(found: &Value, version: &str) -> Value {
    let capabilities = found.get("capabilities").cloned().unwrap_or_else(|| json!({}));
    let info = server_info_of(found).cloned().unwrap_or_else(|| json!({"name": "unknown", "version": ""}));
    let mut result = json!({"protocolVersion": version, "capabilities": capabilities, "serverInfo": info});
    if let Some(i) = found.get("instructions") {
        result["instructions"] = i.clone();
    }
    result
}

impl SharedLink for TranslatedLink {
    fn send(&self, session: &Arc<Session>, c: &Classified, body: &[u8]) -> bool {
        let Some(this) = self.me.upgrade() else { return false };
        match c.kind {
            Kind::Request => {
                let Some(id) = c.id.clone() else { return true };
                let Ok(msg) = serde_json::from_slice::<Value>(body) else {
                    // Classified as a request already, so this does not happen; never leave it unanswered.
                    let line = json!({"jsonrpc": "2.0", "id": msg_id(&id), "error": {"code": -32700, "message": "Parse error"}});
                    deliver(session, &id, &line);
                    return true;
                };
                let answer_now = |result: Value| {
                    deliver(session, &id, &json!({"jsonrpc": "2.0", "id": msg["id"], "result": result}));
                };
                match c.method.as_deref() {
                    Some("initialize") => {
                        let (s, key) = (session.clone(), id.clone());
                        this.spawn(id, this.clone().initialize(s, key, msg));
                    }
                    Some("ping") => answer_now(json!({})),
                    Some("logging/setLevel") => {
                        lock(&self.client).log_level = msg["params"]["level"].as_str().map(str::to_string);
                        answer_now(json!({}));
                    }
                    Some(method @ ("resources/subscribe" | "resources/unsubscribe")) => {
                        let Some(uri) = msg["params"]["uri"].as_str().map(str::to_string) else {
                            let line = json!({"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32602, "message": "Invalid params: uri is required"}});
                            deliver(session, &id, &line);
                            return true;
                        };
                        {
                            let mut client = lock(&self.client);
                            if method == "resources/subscribe" {
                                client.subscribed.insert(uri);
                            } else {
                                client.subscribed.remove(&uri);
                            }
                        }
                        self.listen(session);
                        answer_now(json!({}));
                    }
                    _ => {
                        let (s, key) = (session.clone(), id.clone());
                        this.spawn(id, this.clone().serve(s, key, msg));
                    }
                }
            }
            Kind::Response => {
                let waiting = c.id.as_ref().and_then(|id| lock(&self.asks).remove(id));
                if let (Some(tx), Ok(answer)) = (waiting, serde_json::from_slice::<Value>(body)) {
                    let _ = tx.send(answer);
                }
            }
            Kind::Notification => {
                if c.method.as_deref() == Some("notifications/cancelled")
                    && let Some((id, _)) = &c.request_id
                    && let Some(task) = lock(&self.tasks).remove(id)
                {
                    // Dropping the exchange closes the server's request: the 2026-07-28 way to cancel.
                    task.abort();
                }
            }
        }
        true
    }

    fn detach(&self, _session_id: &str) {
        for (_, task) in lock(&self.tasks).drain() {
            task.abort();
        }
        if let Some(listening) = lock(&self.listening).take() {
            listening.abort();
        }
        lock(&self.asks).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_is_made_of_discover() {
        let found = json!({
            "resultType": "complete",
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": true}},
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s", "version": "1"}},
            "instructions": "be nice",
        });
        assert_eq!(
            initialize_result(&found, "2025-06-18"),
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {"listChanged": true}, "resources": {"subscribe": true, "listChanged": true}},
                "serverInfo": {"name": "s", "version": "1"},
                "instructions": "be nice",
            })
        );
    }

    #[test]
    fn answers_lose_the_revisions_result_fields() {
        let a = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}});
        assert_eq!(handshake_answer(a), json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}));
        let e = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "x"}});
        assert_eq!(handshake_answer(e.clone()), e);
    }

    #[test]
    fn change_notifications_lose_the_subscription_tag() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":3}}}"#;
        let v: Value = serde_json::from_slice(&untagged(line)).unwrap();
        assert_eq!(v, json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {}}));
        let updated = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a://b","_meta":{"io.modelcontextprotocol/subscriptionId":3,"x":1}}}"#;
        let v: Value = serde_json::from_slice(&untagged(updated)).unwrap();
        assert_eq!(v["params"], json!({"uri": "a://b", "_meta": {"x": 1}}));
    }
}
