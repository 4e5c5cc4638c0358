//! Which era a stdio server speaks: does it answer 2026-07-28 requests itself, or only after an
//! `initialize` handshake?
//!
//! Servers built on the 2026-07-28 SDKs (Python `mcp` 2.x, TS `@modelcontextprotocol/server` 2.x) answer
//! `server/discover` and serve modern requests natively: their own `input_required` rounds with the keys
//! and `requestState` they chose, their own caching hints, their own `subscriptions/listen` and
//! `Mcp-Param-*` checks. Passing modern requests to them as they are (`passthrough.rs`) keeps all of that
//! and needs no parked process per user. Handshake-era servers get the warm pool's translation instead
//! (`modern.rs`, `pool.rs`).
//!
//! Why a throwaway process: the era of a stdio connection is decided by its first message. A dual-era
//! server that answered `server/discover` refuses `initialize` on that connection, a handshake-era one
//! may be left in a bad state by a request before `initialize`, and rmcp servers exit on it. So the probe
//! never uses a warm spare or a pooled child: it starts the release's command once, asks, and stops it.
//! The answer is kept per release by the pool (`pool::era`), asked in the background when the release's
//! warm spares are filled (so a modern client's first request finds it), else by the release's first
//! modern request, which then waits for it (one process start, once per release and gateway).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::applog::{AppLogs, LogKind};
use super::jsonrpc::{self, Classified, Kind};
use super::modern::{META_CAPABILITIES, META_VERSION, MODERN_VERSION};
use super::stdio::{self, ChildEvents};

/// What a release's stdio server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEra {
    /// It wants `initialize` first: the gateway initializes pooled children and translates.
    Handshake,
    /// It answered `server/discover` offering 2026-07-28: modern requests go to it as they are.
    Modern,
}

/// The longest a probe waits for the server's answer; silence is a handshake-era server's (many ignore a
/// method they do not know), and is kept like any answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe's request: the smallest valid 2026-07-28 request.
fn discover_request() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {"_meta": {META_VERSION: MODERN_VERSION, META_CAPABILITIES: {}}},
    })
}

/// Reads the era from the server's answer to `server/discover`: modern only when it is a result that
/// offers 2026-07-28 among its `supportedVersions`. An error (method not found, invalid params, "not
/// initialized") is a handshake-era server.
pub fn era_of_answer(answer: &Value) -> ServerEra {
    let offers_modern = answer
        .pointer("/result/supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(MODERN_VERSION)));
    if offers_modern { ServerEra::Modern } else { ServerEra::Handshake }
}

/// The probe process's output: the first response, or its exit.
struct FirstAnswer(Mutex<Option<oneshot::Sender<Result<Bytes, String>>>>);

impl FirstAnswer {
    fn finish(&self, outcome: Result<Bytes, String>) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(outcome);
        }
    }
}

impl ChildEvents for FirstAnswer {
    fn message(&self, line: Bytes, c: Classified) {
        if c.kind == Kind::Response {
            self.finish(Ok(line));
        }
    }
    fn exited(&self, why: &str) {
        self.finish(Err(why.to_string()));
    }
}

/// What a throwaway process said to the one request it was sent.
enum Heard {
    /// Its first response.
    Answer(Value),
    /// It exited before answering.
    Exited,
    /// It said nothing for [`PROBE_TIMEOUT`].
    Silent,
}

/// Starts `cmd` once, sends it `request` (logged as asking `question`), waits for its first response and
/// stops it. `Err` when the question could not be put (the process did not start, or vanished unheard: not
/// an answer about the server, the caller does not keep it).
async fn ask_once(
    cmd: stdio::Command<'_>,
    logs: &AppLogs,
    kill_grace: Duration,
    request: Value,
    question: &str,
) -> Result<Heard, String> {
    let app = cmd.app.to_string();
    let (tx, rx) = oneshot::channel();
    let events = Arc::new(FirstAnswer(Mutex::new(Some(tx))));
    // Its stderr is not the app's: a server may complain about the request at length.
    let scratch = Arc::new(AppLogs::new(8));
    let proc = stdio::spawn(cmd, events, scratch, kill_grace)?;
    logs.push(
        &app,
        LogKind::Event,
        &format!("started process {} to ask {question} (stopped once it answered)", proc.pid),
    );
    proc.send(jsonrpc::to_line(&serde_json::to_vec(&request).unwrap_or_default()));
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, rx).await;
    proc.stop();
    match outcome {
        Ok(Ok(Ok(line))) => Ok(Heard::Answer(serde_json::from_slice(&line).unwrap_or(Value::Null))),
        Ok(Ok(Err(_exited))) => Ok(Heard::Exited),
        Ok(Err(_)) => Err("the probe process went away unheard".into()),
        Err(_) => {
            let secs = PROBE_TIMEOUT.as_secs();
            let asked = question.split(':').next().unwrap_or(question);
            logs.push(
                &app,
                LogKind::Event,
                &format!("process {} did not answer {asked} within {secs} s", proc.pid),
            );
            Ok(Heard::Silent)
        }
    }
}

/// Starts `cmd` once, asks it `server/discover`, stops it. `Err` when the question could not be put (the
/// process did not start: not an answer about the server, the caller does not keep it).
pub async fn probe(
    cmd: stdio::Command<'_>,
    logs: Arc<AppLogs>,
    kill_grace: Duration,
) -> Result<ServerEra, String> {
    let app = cmd.app.to_string();
    let question = "server/discover: does the server speak MCP 2026-07-28 itself?";
    let era = match ask_once(cmd, &logs, kill_grace, discover_request(), question).await? {
        Heard::Answer(answer) => era_of_answer(&answer),
        // Exiting on a request before `initialize` (rmcp does) is the answer of a handshake-era server.
        Heard::Exited => ServerEra::Handshake,
        // A started server that stays silent ignores methods it does not know: a handshake-era server
        // (kept, or every modern request would wait for a probe again). A slow dual-era server classed so
        // is still served, translated: it accepts `initialize` too.
        Heard::Silent => ServerEra::Handshake,
    };
    logs.push(
        &app,
        LogKind::Event,
        match era {
            ServerEra::Modern => {
                "the server speaks MCP 2026-07-28 itself: 2026-07-28 requests are passed to it as they are"
            }
            ServerEra::Handshake => {
                "the server speaks only the handshake era: catwalk initializes the processes that serve \
                 2026-07-28 requests and translates"
            }
        },
    );
    Ok(era)
}

/// The second question, for a server that speaks 2026-07-28: does it also accept a 2025 session? The
/// official SDKs' servers do (a fresh connection may start with `initialize`), so their 2025 sessions are
/// served as they are; a server that refuses it (or ignores it, or exits) speaks 2026-07-28 only, and
/// catwalk translates 2025 sessions for it (`translated_session.rs`). Asked of a throwaway process too
/// (`initialize` fixes the connection's era), once per release, in the background.
pub async fn probe_initialize(
    cmd: stdio::Command<'_>,
    logs: Arc<AppLogs>,
    kill_grace: Duration,
) -> Result<bool, String> {
    let app = cmd.app.to_string();
    let request = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "catwalk", "version": env!("CARGO_PKG_VERSION")},
        },
    });
    let question = "initialize: does the server also accept 2025 sessions?";
    let accepts = match ask_once(cmd, &logs, kill_grace, request, question).await? {
        Heard::Answer(answer) => answer.get("result").is_some(),
        Heard::Exited | Heard::Silent => false,
    };
    logs.push(
        &app,
        LogKind::Event,
        if accepts {
            "the server accepts 2025 sessions too: they are passed to it as they are"
        } else {
            "the server speaks MCP 2026-07-28 only: catwalk translates 2025 sessions for it"
        },
    );
    Ok(accepts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_result_offering_2026_07_28_is_modern() {
        let modern = json!({"jsonrpc": "2.0", "id": 1, "result": {"supportedVersions": ["2026-07-28"]}});
        assert_eq!(era_of_answer(&modern), ServerEra::Modern);
        let later = json!({"result": {"supportedVersions": ["2027-01-01"]}});
        assert_eq!(era_of_answer(&later), ServerEra::Handshake);
        let not_found =
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}});
        assert_eq!(era_of_answer(&not_found), ServerEra::Handshake);
        assert_eq!(era_of_answer(&json!({"result": {}})), ServerEra::Handshake);
        assert_eq!(era_of_answer(&Value::Null), ServerEra::Handshake);
    }
}
