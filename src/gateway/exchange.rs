//! One 2026-07-28 request in flight on a pooled child, from the gateway's side: what the child
//! says becomes the client's notifications, its final answer, or — when the child asks its client for
//! something mid-call — an `input_required` result (issue 15's bridge).
//!
//! Why a driver of its own: the same exchange outlives HTTP requests. A legacy server that sends
//! `elicitation/create`, `sampling/createMessage` or `roots/list` in the middle of a tool call waits for
//! the answer; a 2026-07-28 client cannot receive requests, it receives an `input_required` result and
//! retries the call with `inputResponses`. So the exchange (the child, its pending requests, the progress
//! token it knows) is parked (`park.rs`) between the two HTTP requests and resumed by the retry, which
//! answers the child's requests with the client's responses and goes on waiting for the final answer.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::jsonrpc::Classified;
use super::modern::{META_CAPABILITIES, META_LOG_LEVEL};
use super::pool::{ChildMsg, Lease, Mode, child_progress_token};
use super::server_era::ServerEra;

/// How long a cancelled request's child may take to finish before it is stopped instead of reused.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Results that carry caching hints (`ttlMs`, `cacheScope`).
const CACHEABLE: &[&str] = &[
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// Requests that may answer `input_required` (the revision's MRTR "Supported Requests").
const MAY_ASK_FOR_INPUT: &[&str] = &["tools/call", "prompts/get", "resources/read"];

/// How a request is lent its child: alone when it may need the child's unattributable messages (it asked
/// for log messages, or it may be asked for input and its client declared it can answer), else shared.
pub fn mode_for(msg: &Value) -> Mode {
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let wants_logs = wants_logs(msg);
    let caps = meta_of(msg, META_CAPABILITIES);
    let can_answer =
        ["elicitation", "sampling", "roots"].iter().any(|c| caps.and_then(|m| m.get(*c)).is_some());
    if wants_logs || (MAY_ASK_FOR_INPUT.contains(&method) && can_answer) {
        Mode::Exclusive
    } else {
        Mode::Shared
    }
}

/// Did the request ask for log messages (`io.modelcontextprotocol/logLevel`)? They are not tagged with the
/// request they belong to, so such a request has its child alone, whatever era the server speaks.
pub fn wants_logs(msg: &Value) -> bool {
    meta_of(msg, META_LOG_LEVEL).is_some()
}

/// Server→client requests of the handshake era that 2026-07-28 carries as input requests, and the client
/// capability each needs.
fn input_capability(method: &str) -> Option<&'static str> {
    match method {
        "elicitation/create" => Some("elicitation"),
        "sampling/createMessage" => Some("sampling"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// The common case of [`modern_response`] without building a `Value`: a result object gets the client's id
/// spliced in and the missing `resultType` (and, on cacheable results, caching hints) inserted after its
/// opening brace; everything else is relayed byte for byte. `None` (the general path) for errors and
/// anything unusual.
fn modern_result_fast(line: &[u8], id: &Value, method: &str, scope: &str) -> Option<Bytes> {
    use serde::Deserialize;
    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        error: Option<IgnoredAny>,
    }
    #[derive(Deserialize)]
    struct Present {
        #[serde(rename = "resultType")]
        result_type: Option<IgnoredAny>,
        #[serde(rename = "ttlMs")]
        ttl: Option<IgnoredAny>,
        #[serde(rename = "cacheScope")]
        scope: Option<String>,
    }
    let env: Envelope<'_> = serde_json::from_slice(line).ok()?;
    if env.error.is_some() {
        return None;
    }
    let (raw_id, result) = (env.id?, env.result?);
    let text = result.get();
    if !text.starts_with('{') {
        return None;
    }
    let present: Present = serde_json::from_str(text).ok()?;
    if scope == "private" && present.scope.as_deref().is_some_and(|s| s != "private") {
        // Corrected on the general path.
        return None;
    }
    let mut fields = Vec::new();
    if present.result_type.is_none() {
        fields.push("\"resultType\":\"complete\"".to_string());
    }
    if CACHEABLE.contains(&method) {
        if present.ttl.is_none() {
            fields.push("\"ttlMs\":0".to_string());
        }
        if present.scope.is_none() {
            fields.push(format!("\"cacheScope\":\"{scope}\""));
        }
    }
    let result_span = super::jsonrpc::span_of(line, result);
    let empty = text[1..].trim_start().starts_with('}');
    let mut insert = fields.join(",");
    if !insert.is_empty() && !empty {
        insert.push(',');
    }
    let id_span = super::jsonrpc::span_of(line, raw_id);
    let id_text = serde_json::to_vec(id).ok()?;
    let at = result_span.start + 1;
    Some(super::jsonrpc::splice_many(line, vec![(id_span, id_text), (at..at, insert.into_bytes())]))
}

/// A child's final response as a modern one: the client's id, `resultType`, caching hints on the
/// cacheable results (`private` wins over what the server said when the request came with a credential),
/// and the 2026-07-28 code for "resource not found" (a modern server's answer passes unchanged otherwise).
/// Returns the bytes, whether the error was "method not found" (HTTP 404 on the JSON path), and whether it
/// is an error at all.
fn modern_response(
    line: &[u8],
    id: &Value,
    method: &str,
    scope: &str,
    uri: Option<&str>,
) -> (Bytes, bool, bool) {
    if let Some(fast) = modern_result_fast(line, id, method, scope) {
        return (fast, false, false);
    }
    let mut v: Value = serde_json::from_slice(line).unwrap_or_else(|_| json!({}));
    v["id"] = id.clone();
    let mut not_found = false;
    if let Some(result) = v.get_mut("result").and_then(Value::as_object_mut) {
        result.entry("resultType").or_insert_with(|| json!("complete"));
        if CACHEABLE.contains(&method) {
            result.entry("ttlMs").or_insert_with(|| json!(0));
            result.entry("cacheScope").or_insert_with(|| json!(scope));
        }
        // Behind a credential an answer may differ per user, whatever the server (which knows nothing of
        // catwalk's tokens) said: never let a shared cache keep it.
        if scope == "private" && result.contains_key("cacheScope") {
            result.insert("cacheScope".into(), json!("private"));
        }
    } else if let Some(error) = v.get_mut("error").and_then(Value::as_object_mut) {
        match error.get("code").and_then(Value::as_i64) {
            // 2025-11-25's "resource not found"; 2026-07-28 forbids emitting it and uses invalid params.
            Some(-32002) => {
                error.insert("code".into(), json!(-32602));
            }
            Some(-32601) => not_found = true,
            _ => {}
        }
        // 2026-07-28 asks a resource error to name the resource (`data.uri`); older servers did not.
        if let Some(uri) = uri.filter(|_| method == "resources/read")
            && error.get("code") == Some(&json!(-32602))
            && let Some(d) = error.entry("data").or_insert_with(|| json!({})).as_object_mut()
        {
            d.entry("uri").or_insert_with(|| json!(uri));
        }
    } else {
        v = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "the server answered with neither result nor error"}});
    }
    let error = v.get("error").is_some();
    (Bytes::from(serde_json::to_vec(&v).unwrap_or_default()), not_found, error)
}

const LOG_LEVELS: &[&str] =
    &["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

fn level_rank(level: &str) -> Option<usize> {
    LOG_LEVELS.iter().position(|l| *l == level)
}

/// Which of a child's notifications belong on a request's stream: its progress, and log messages at or
/// above the level the request asked for (none when it asked for none).
fn request_note_wanted(
    line: &[u8],
    method: Option<&str>,
    progress: Option<&Value>,
    min_level: Option<usize>,
) -> bool {
    match method {
        Some("notifications/progress") => {
            let v: Value = serde_json::from_slice(line).unwrap_or_default();
            progress.is_some() && v.pointer("/params/progressToken") == progress
        }
        Some("notifications/message") => {
            let Some(min) = min_level else { return false };
            let v: Value = serde_json::from_slice(line).unwrap_or_default();
            v.pointer("/params/level").and_then(Value::as_str).and_then(level_rank).is_some_and(|l| l >= min)
        }
        _ => false,
    }
}

/// What the exchange has for the client next.
pub enum Step {
    /// A notification for the request's stream (progress, or a log message at the asked level).
    Note(Bytes),
    /// The final answer (already modern), with the status of a JSON answer and whether it is an error.
    Final { body: Bytes, status: StatusCode, error: bool },
    /// The child asks the client for input: these `inputRequests` go to the client in an `input_required`
    /// result, and the exchange must be parked until the retry.
    InputRequired(Map<String, Value>),
    /// The child is gone: a 502 with this message.
    Gone(String),
}

/// A request in flight on a lent child. Dropped before its final answer (the client closed the stream, or
/// a parked exchange expired): the child hears `notifications/cancelled` and is stopped after
/// [`CANCEL_GRACE`], never lent again, so a late answer or notification never reaches another exchange.
pub struct Exchange {
    lease: Option<Lease>,
    rx: mpsc::UnboundedReceiver<ChildMsg>,
    /// Messages taken from `rx` while collecting input requests, handled first.
    backlog: VecDeque<ChildMsg>,
    /// The gateway's id of the request at the child.
    n: u64,
    done: bool,
    /// What the client request currently waiting asked for (the first call, then each retry).
    asked: Asked,
    method: String,
    uri: Option<String>,
    scope: &'static str,
    /// The progress token the child was given (the first call's; the current request's is `asked`'s).
    child_progress: Option<Value>,
    /// Digest of the call (method and params without `_meta`, `inputResponses`, `requestState`): a retry
    /// must be the same call.
    pub digest: [u8; 32],
    /// Input requests the client was asked and has not answered yet, by key.
    pending: BTreeMap<String, Pending>,
    rounds: u64,
    era: ServerEra,
}

/// The digest binding a retry to its call.
pub fn call_digest(msg: &Value) -> [u8; 32] {
    let mut params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    if let Some(p) = params.as_object_mut() {
        for k in ["_meta", "inputResponses", "requestState"] {
            p.remove(k);
        }
    }
    let canonical = json!({"method": msg.get("method"), "params": params});
    Sha256::digest(serde_json::to_vec(&canonical).unwrap_or_default()).into()
}

/// `params[key]` of a message (without `Value::pointer`, which allocates per path segment: this is
/// the hot path of every modern request).
pub(super) fn params_of<'a>(msg: &'a Value, key: &str) -> Option<&'a Value> {
    msg.get("params")?.get(key)
}

fn meta_of<'a>(msg: &'a Value, key: &str) -> Option<&'a Value> {
    params_of(msg, "_meta")?.get(key)
}

/// What the client request an exchange currently answers asked for.
struct Asked {
    client_id: Value,
    client_progress: Option<Value>,
    min_level: Option<usize>,
    /// What the request declared it can do (`io.modelcontextprotocol/clientCapabilities`). Only kept for an
    /// exchange that can be asked for input (an exclusive one): the others never see a server→client request.
    capabilities: Value,
}

impl Asked {
    fn of(msg: &Value, exclusive: bool) -> Asked {
        Asked {
            client_id: msg.get("id").cloned().unwrap_or(Value::Null),
            client_progress: meta_of(msg, "progressToken").cloned(),
            min_level: meta_of(msg, META_LOG_LEVEL).and_then(Value::as_str).and_then(level_rank),
            capabilities: if exclusive {
                meta_of(msg, META_CAPABILITIES).cloned().unwrap_or_else(|| json!({}))
            } else {
                Value::Null
            },
        }
    }
}

impl Exchange {
    /// Sends `msg` (the client's modern request, already checked) to the lent child.
    /// A server of `era` [`ServerEra::Modern`] answers with `input_required` itself: a server→client request
    /// from it is refused, never turned into input requests of catwalk's.
    pub fn start(
        lease: Lease,
        msg: Value,
        to_child: impl FnOnce(Value) -> Value,
        scope: &'static str,
        era: ServerEra,
    ) -> Option<Exchange> {
        let exclusive = lease.mode() == Mode::Exclusive;
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("").to_string();
        let uri = params_of(&msg, "uri").and_then(Value::as_str).map(str::to_string);
        let with_progress = meta_of(&msg, "progressToken").is_some();
        // Only an exclusive exchange can be parked (and resumed by a digest-bound retry).
        let digest = if exclusive { call_digest(&msg) } else { [0; 32] };
        let asked = Asked::of(&msg, exclusive);
        // The request moves to the child (no copy of it is kept: only what the exchange needs, above).
        let (n, rx) = lease.request(to_child(msg))?;
        let ex = Exchange {
            lease: Some(lease),
            rx,
            backlog: VecDeque::new(),
            n,
            done: false,
            asked,
            method,
            uri,
            scope,
            child_progress: with_progress.then(|| json!(child_progress_token(n))),
            digest,
            pending: BTreeMap::new(),
            rounds: 0,
            era,
        };
        Some(ex)
    }

    /// The id of the client request currently waiting (the first call, then each retry).
    pub fn client_id(&self) -> &Value {
        &self.asked.client_id
    }

    /// Resumes a parked exchange with the client's retry: each pending input request answered in
    /// `inputResponses` goes to the child (keys it does not know are ignored). Returns the input requests
    /// still unanswered, to be asked again.
    pub fn resume(&mut self, retry: &Value) -> Map<String, Value> {
        // Only an exclusive exchange is parked and resumed.
        self.asked = Asked::of(retry, true);
        let responses =
            params_of(retry, "inputResponses").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut still = Map::new();
        for (key, pending) in std::mem::take(&mut self.pending) {
            match responses.get(&key) {
                Some(answer) if answer.is_object() => {
                    self.reply(&pending.child_id, json!({"result": answer}))
                }
                _ => {
                    still.insert(key.clone(), pending.request.clone());
                    self.pending.insert(key, pending);
                }
            }
        }
        still
    }

    fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Sends the child the answer (`{"result": …}` or `{"error": …}`) to its request `child_id` (raw JSON).
    fn reply(&self, child_id: &str, body: Value) {
        if let Some(lease) = self.lease() {
            let mut msg = json!({"jsonrpc": "2.0"});
            if let (Some(m), Some(b)) = (msg.as_object_mut(), body.as_object()) {
                m.extend(b.clone());
                m.insert("id".into(), serde_json::from_str(child_id).unwrap_or(Value::Null));
            }
            lease.send_raw(&msg);
        }
    }

    async fn recv(&mut self) -> Option<ChildMsg> {
        match self.backlog.pop_front() {
            Some(m) => Some(m),
            None => self.rx.recv().await,
        }
    }

    /// Waits for the next thing the client must hear.
    pub async fn next(&mut self) -> Step {
        loop {
            let Some(msg) = self.recv().await else {
                self.done = true;
                return Step::Gone("the server process went away before it answered".into());
            };
            match msg {
                ChildMsg::Response(line) => {
                    self.done = true;
                    if self.era == ServerEra::Modern {
                        self.remember_request_state(&line);
                    }
                    let (body, not_found, error) = modern_response(
                        &line,
                        &self.asked.client_id,
                        &self.method,
                        self.scope,
                        self.uri.as_deref(),
                    );
                    let status = if not_found { StatusCode::NOT_FOUND } else { StatusCode::OK };
                    return Step::Final { body, status, error };
                }
                ChildMsg::Notification(line, c) => {
                    if let Some(note) = self.note(&line, &c) {
                        return Step::Note(note);
                    }
                }
                ChildMsg::Request(line, c) => {
                    let mut asked = Map::new();
                    self.ask(&line, &c, &mut asked);
                    // Requests the child sent together go to the client together.
                    while let Ok(more) = self.rx.try_recv() {
                        match more {
                            ChildMsg::Request(line, c) => self.ask(&line, &c, &mut asked),
                            other => self.backlog.push_back(other),
                        }
                    }
                    if !asked.is_empty() {
                        return Step::InputRequired(asked);
                    }
                }
                ChildMsg::Exited(why) => {
                    self.done = true;
                    return Step::Gone(format!("the server process ended before it answered: {why}"));
                }
            }
        }
    }

    /// A modern server's `input_required` answer: its retry must reach this process (see
    /// `pool::lease_resuming`).
    fn remember_request_state(&self, line: &[u8]) {
        if !line.windows(14).any(|w| w == b"input_required") {
            return;
        }
        let v: Value = serde_json::from_slice(line).unwrap_or_default();
        if let (Some(state), Some(lease)) =
            (v.pointer("/result/requestState").and_then(Value::as_str), self.lease())
        {
            lease.remember_state(state);
        }
    }

    /// A server→client request of the child: an input request for the client when this call may ask and
    /// the client declared the capability; otherwise the child gets an answer at once (`ping`) or an error.
    fn ask(&mut self, line: &[u8], c: &Classified, asked: &mut Map<String, Value>) {
        let Some(child_id) = c.id_span.clone().map(|s| String::from_utf8_lossy(&line[s]).into_owned()) else {
            return;
        };
        let method = c.method.as_deref().unwrap_or("");
        if method == "ping" {
            return self.reply(&child_id, json!({"result": {}}));
        }
        if self.era == ServerEra::Modern {
            let why = format!(
                "{method} is not available: this exchange speaks MCP 2026-07-28, where a server asks for input \
                 with an input_required result"
            );
            return self.reply(&child_id, json!({"error": {"code": -32601, "message": why}}));
        }
        let declared = input_capability(method).is_some_and(|cap| self.asked.capabilities.get(cap).is_some());
        if !declared || !MAY_ASK_FOR_INPUT.contains(&self.method.as_str()) {
            let why = match input_capability(method) {
                Some(cap) if MAY_ASK_FOR_INPUT.contains(&self.method.as_str()) => format!(
                    "{method} is not available: the client did not declare the {cap} capability on this request"
                ),
                _ => {
                    format!("{method} is not available to this server through catwalk during {}", self.method)
                }
            };
            return self.reply(&child_id, json!({"error": {"code": -32601, "message": why}}));
        }
        let v: Value = serde_json::from_slice(line).unwrap_or_default();
        self.rounds += 1;
        let key = format!("{}-{}", method.replace('/', "-"), self.rounds);
        let request =
            json!({"method": method, "params": v.get("params").cloned().unwrap_or_else(|| json!({}))});
        self.pending.insert(key.clone(), Pending { child_id, request: request.clone() });
        asked.insert(key, request);
    }

    /// A notification of the child as the client should see it, if the client should see it.
    fn note(&self, line: &[u8], c: &Classified) -> Option<Bytes> {
        if !request_note_wanted(line, c.method.as_deref(), self.child_progress.as_ref(), self.asked.min_level)
        {
            return None;
        }
        if c.method.as_deref() == Some("notifications/progress")
            && self.asked.client_progress != self.child_progress
        {
            // A retry may use another progress token than the call the child is working on.
            let mut v: Value = serde_json::from_slice(line).ok()?;
            v["params"]["progressToken"] = self.asked.client_progress.clone()?;
            return Some(Bytes::from(serde_json::to_vec(&v).ok()?));
        }
        Some(Bytes::copy_from_slice(line))
    }
}

/// An input request the client was asked: the child's id of it (raw JSON), and the request as asked.
struct Pending {
    child_id: String,
    request: Value,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(mut lease) = self.lease.take() else { return };
        if self.done {
            return;
        }
        lease.cancel(self.n, "the client closed the request's stream or never retried it");
        lease.discard();
        let _ = tokio::runtime::Handle::try_current().map(|h| {
            h.spawn(async move {
                tokio::time::sleep(CANCEL_GRACE).await;
                drop(lease);
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_modern() {
        let (b, nf, _) = modern_response(
            br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}"#,
            &json!("a"),
            "tools/list",
            "private",
            None,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "id": "a", "result": {"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}})
        );
        assert!(!nf);
        let (b, _, _) = modern_response(
            br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#,
            &json!(1),
            "tools/call",
            "public",
            None,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["result"].get("ttlMs").is_none());
        let (b, _, _) = modern_response(
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32002,"message":"no"}}"#,
            &json!(1),
            "resources/read",
            "public",
            Some("x://y"),
        );
        let v = serde_json::from_slice::<Value>(&b).unwrap();
        assert_eq!((&v["error"]["code"], &v["error"]["data"]["uri"]), (&json!(-32602), &json!("x://y")));
        let (_, nf, _) = modern_response(
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no"}}"#,
            &json!(1),
            "x/y",
            "public",
            None,
        );
        assert!(nf);
    }

    #[test]
    fn a_request_with_a_credential_never_gets_a_public_answer() {
        let line = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[],"resultType":"complete","ttlMs":5000,"cacheScope":"public"}}"#;
        let (b, _, _) = modern_response(line, &json!(1), "tools/list", "private", None);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!((&v["result"]["cacheScope"], &v["result"]["ttlMs"]), (&json!("private"), &json!(5000)));
        let (b, _, _) = modern_response(line, &json!(1), "tools/list", "public", None);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["result"]["cacheScope"], "public", "without a credential the server's word stands");
    }

    #[test]
    fn log_messages_only_at_the_requested_level() {
        let line =
            br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        assert!(!request_note_wanted(line, Some("notifications/message"), None, None));
        assert!(request_note_wanted(line, Some("notifications/message"), None, level_rank("debug")));
        assert!(!request_note_wanted(line, Some("notifications/message"), None, level_rank("warning")));
        let progress = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":5,"progress":1}}"#;
        assert!(request_note_wanted(progress, Some("notifications/progress"), Some(&json!(5)), None));
        assert!(!request_note_wanted(progress, Some("notifications/progress"), Some(&json!(6)), None));
    }

    #[test]
    fn the_fast_path_equals_the_general_one() {
        for (line, method) in [
            (&br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a"}]}}"#[..], "tools/list"),
            (br#"{"jsonrpc":"2.0","id":3,"result":{}}"#, "tools/list"),
            (br#"{"jsonrpc":"2.0","id":3,"result":{ }}"#, "tools/call"),
            (
                br#"{"jsonrpc":"2.0","result":{"content":[],"resultType":"complete","ttlMs":5},"id":3}"#,
                "resources/read",
            ),
        ] {
            let fast = modern_result_fast(line, &json!("x"), method, "public").expect("fast path taken");
            let fast: Value = serde_json::from_slice(&fast).unwrap_or_else(|e| panic!("{e}: {fast:?}"));
            // The general path on the same input (the fast one bypassed by going through an error-free Value).
            let mut v: Value = serde_json::from_slice(line).unwrap();
            v["id"] = json!("x");
            let r = v["result"].as_object_mut().unwrap();
            r.entry("resultType").or_insert(json!("complete"));
            if CACHEABLE.contains(&method) {
                r.entry("ttlMs").or_insert(json!(0));
                r.entry("cacheScope").or_insert(json!("public"));
            }
            assert_eq!(fast, v, "{}", String::from_utf8_lossy(line));
        }
        assert!(
            modern_result_fast(
                br#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"m"}}"#,
                &json!(1),
                "x",
                "public"
            )
            .is_none()
        );
    }

    #[test]
    fn a_retry_is_bound_to_its_call() {
        let call = json!({"method": "tools/call", "params": {"name": "x", "arguments": {"a": 1}, "_meta": {"k": 1}}});
        let retry = json!({"method": "tools/call", "params": {"arguments": {"a": 1}, "name": "x", "requestState": "s", "inputResponses": {}}});
        assert_eq!(call_digest(&call), call_digest(&retry));
        let other = json!({"method": "tools/call", "params": {"name": "x", "arguments": {"a": 2}}});
        assert_ne!(call_digest(&call), call_digest(&other));
    }
}
