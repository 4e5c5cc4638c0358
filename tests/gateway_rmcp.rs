//! QUALITY.md C2 with the third official client: rmcp (the Rust SDK) over Streamable HTTP, through
//! `catwalk bridge` and through the daemon's `/mcp/APP` with a token, in front of the real
//! `@modelcontextprotocol/server-everything`: initialize, list and call tools, progress and logging
//! notifications, sampling and elicitation answered by the client, and session termination. And rmcp's
//! 2026-07-28 lifecycle (`server/discover`, no session), pinned and automatic: sampling and elicitation
//! then come as `input_required` rounds that rmcp fulfils with the same handlers and retries.
// rmcp marks sampling and logging deprecated for its newest protocol (2026-07-28, SEP-2577); the
// protocol versions catwalk serves (2025-03-26 .. 2025-11-25) have them, and C2 requires them.
#![allow(deprecated)]

use crate::daemon;
use crate::deps;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deps::ChildGuard;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, LoggingMessageNotificationParam, ProgressNotificationParam,
    ProgressToken, ProtocolVersion, RequestMetaObject,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ErrorData as McpError, ServiceExt};
use serde_json::{Map, Value, json};

const SAMPLING_ANSWER: &str = "catwalk sampling answer 42";
const WAIT: Duration = Duration::from_secs(60);

/// What the client saw from the server.
#[derive(Default)]
struct Seen {
    sampling: AtomicUsize,
    elicitation: AtomicUsize,
    progress: Mutex<Vec<f64>>,
    logs: AtomicUsize,
}

struct Client {
    seen: std::sync::Arc<Seen>,
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        serde_json::from_value(json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "catwalk-rmcp-client", "version": "0"}
        }))
        .expect("client info")
    }

    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.seen.sampling.fetch_add(1, Ordering::SeqCst);
        Ok(serde_json::from_value(json!({
            "model": "catwalk-test-model",
            "stopReason": "endTurn",
            "role": "assistant",
            "content": {"type": "text", "text": SAMPLING_ANSWER}
        }))
        .expect("sampling result"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        self.seen.elicitation.fetch_add(1, Ordering::SeqCst);
        let schema = match &request {
            ElicitRequestParams::FormElicitationParams { requested_schema, .. } => {
                serde_json::to_value(requested_schema).unwrap_or_default()
            }
            _ => Value::Null,
        };
        Ok(serde_json::from_value(json!({"action": "accept", "content": fill_form(&schema)}))
            .expect("elicitation result"))
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _ctx: NotificationContext<RoleClient>) {
        self.seen.progress.lock().unwrap().push(params.progress);
    }

    async fn on_logging_message(
        &self,
        _params: LoggingMessageNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.seen.logs.fetch_add(1, Ordering::SeqCst);
    }
}

/// An answer to an elicitation form that validates against its requested schema.
fn fill_form(schema: &Value) -> Value {
    let mut out = Map::new();
    let props = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    for (key, p) in props {
        let v = if let Some(d) = p.get("default") {
            d.clone()
        } else if let Some(e) = p.get("enum").and_then(|e| e.get(0)) {
            e.clone()
        } else if let Some(c) = p.pointer("/oneOf/0/const") {
            c.clone()
        } else {
            match p.get("type").and_then(Value::as_str) {
                Some("string") => json!(match p.get("format").and_then(Value::as_str) {
                    Some("email") => "test@example.com",
                    Some("uri") => "https://example.com",
                    Some("date") => "2000-01-01",
                    Some("date-time") => "2000-01-01T00:00:00Z",
                    _ => "catwalk",
                }),
                Some("integer") | Some("number") => p.get("minimum").cloned().unwrap_or(json!(1)),
                Some("boolean") => json!(true),
                Some("array") => {
                    let item = p
                        .pointer("/items/enum/0")
                        .or_else(|| p.pointer("/items/anyOf/0/const"))
                        .cloned()
                        .unwrap_or(json!("catwalk"));
                    json!([item])
                }
                _ => continue,
            }
        };
        out.insert(key, v);
    }
    Value::Object(out)
}

async fn connect(
    url: &str,
    token: Option<&str>,
) -> (RunningService<RoleClient, Client>, std::sync::Arc<Seen>) {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(t) = token {
        cfg = cfg.auth_header(t.to_string());
    }
    let transport = StreamableHttpClientTransport::from_config(cfg);
    let seen = std::sync::Arc::new(Seen::default());
    let client = Client { seen: seen.clone() }
        .serve(transport)
        .await
        .unwrap_or_else(|e| panic!("rmcp client could not initialize through catwalk at {url}: {e}"));
    (client, seen)
}

fn text_of(result: &rmcp::model::CallToolResult) -> String {
    let v = serde_json::to_value(result).unwrap();
    v["content"]
        .as_array()
        .map(|items| items.iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    serde_json::from_value(json!({"name": name, "arguments": args})).unwrap()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every C2 scenario with one rmcp client session (plus one to terminate).
async fn scenarios(url: &str, token: Option<&str>) {
    let (client, seen) = connect(url, token).await;
    let info = client.peer_info().expect("server info after initialize");
    assert!(info.server_info.as_ref().is_some_and(|s| !s.name.is_empty()), "{info:?}");

    // Tools: list and call.
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for needed in ["echo", "trigger-long-running-operation", "trigger-sampling-request"] {
        assert!(names.contains(&needed), "tools/list lacks {needed}: {names:?}");
    }
    let r = client.call_tool(call("echo", json!({"message": "hello from rmcp"}))).await.expect("echo");
    assert!(text_of(&r).contains("hello from rmcp"), "{r:?}");

    // Progress: notifications for our token arrive in order before the result.
    let mut params = call("trigger-long-running-operation", json!({"duration": 1, "steps": 3}));
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(ProgressToken(rmcp::model::NumberOrString::String("rmcp-progress".into())));
    params.meta = Some(meta);
    client.call_tool(params).await.expect("long-running operation");
    let progress = seen.progress.lock().unwrap().clone();
    assert!(progress.len() >= 2, "expected >= 2 progress notifications, got {progress:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress not increasing: {progress:?}");

    // Logging: after logging/setLevel debug, the simulated log messages arrive.
    client
        .set_level(serde_json::from_value(json!({"level": "debug"})).unwrap())
        .await
        .expect("logging/setLevel");
    client.call_tool(call("toggle-simulated-logging", json!({}))).await.expect("toggle logging");
    wait_for("a notifications/message", || seen.logs.load(Ordering::SeqCst) > 0).await;
    client.call_tool(call("toggle-simulated-logging", json!({}))).await.expect("toggle logging off");

    asks_for_input(&client, &seen).await;

    // Termination: the client's DELETE ends the session (and its server process).
    let metrics = url.rsplit_once("/mcp").map(|(base, _)| format!("{base}/metrics")).unwrap();
    assert_eq!(open_sessions(&metrics).await, 1.0);
    client.cancel().await.expect("close the rmcp session");
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_sessions(&metrics).await != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "the rmcp client's session was not terminated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sampling and elicitation: server-everything asks this client mid-call (a 2025 session gets the requests,
/// a 2026-07-28 client `input_required` rounds); the handlers' answers reach the tools' results.
async fn asks_for_input(client: &RunningService<RoleClient, Client>, seen: &Seen) {
    let r = client
        .call_tool(call("trigger-sampling-request", json!({"prompt": "say something"})))
        .await
        .expect("sampling tool");
    assert_eq!(seen.sampling.load(Ordering::SeqCst), 1);
    assert!(text_of(&r).contains(SAMPLING_ANSWER), "{}", text_of(&r));
    let r = client
        .call_tool(call("trigger-elicitation-request", json!({"message": "Please provide your information"})))
        .await
        .expect("elicitation tool");
    assert_eq!(seen.elicitation.load(Ordering::SeqCst), 1);
    let t = text_of(&r);
    assert!(t.contains("accept") || t.contains("provided the requested"), "{t}");
}

/// `catwalk_mcp_sessions_open` from the gateway's /metrics.
async fn open_sessions(metrics_url: &str) -> f64 {
    let text = reqwest::get(metrics_url).await.expect("GET /metrics").text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("catwalk_mcp_sessions_open "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no catwalk_mcp_sessions_open in /metrics:\n{text}"))
}

fn everything_argv() -> Vec<String> {
    vec![
        deps::node22().display().to_string(),
        deps::server_everything().display().to_string(),
        "stdio".into(),
    ]
}

/// `catwalk bridge` in front of server-everything (stdio): its guard and its URL.
fn bridge_in_front_of_everything() -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catwalk"));
    cmd.args(["bridge", "--listen", "127.0.0.1:0", "--"]).args(everything_argv());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut bridge = ChildGuard::spawn("catwalk bridge", &mut cmd);
    let url = bridge.wait_listening(Duration::from_secs(30));
    (bridge, url)
}

/// A daemon serving server-everything as app `everything`: the daemon, the app's URL and a token for it.
fn daemon_in_front_of_everything() -> (daemon::Daemon, String, String) {
    let argv = everything_argv().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let d = daemon::Daemon::start_with_config(&format!("[apps.everything]\ncommand = [{argv}]\n"));
    let out = daemon::ok(&d.ssh(&d.admin, "tokens create everything --json", ""));
    let token: Value = serde_json::from_str(&out).unwrap();
    let url = format!("http://{}/mcp/everything", d.http_addr);
    (d, url, token["token"].as_str().expect("a token").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_through_the_bridge() {
    let (_bridge, url) = bridge_in_front_of_everything();
    scenarios(&url, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_client_through_the_daemon_with_a_token() {
    let (_d, url, token) = daemon_in_front_of_everything();
    scenarios(&url, Some(&token)).await;
    // And without the token the rmcp client is refused before anything runs.
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.clone());
    let refused =
        Client { seen: Default::default() }.serve(StreamableHttpClientTransport::from_config(cfg)).await;
    assert!(refused.is_err(), "an rmcp client without a token must not get a session");
}

/// rmcp with the 2026-07-28 lifecycle against server-everything (a handshake-era stdio server) through
/// catwalk: `server/discover`, tools, and sampling and elicitation as `input_required` rounds that rmcp
/// answers with its handlers (catwalk's bridge turns the server's requests into those rounds).
async fn modern_scenarios(url: &str, token: Option<&str>, lifecycle: ClientLifecycleMode) {
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string());
    if let Some(t) = token {
        cfg = cfg.auth_header(t.to_string());
    }
    let seen = std::sync::Arc::new(Seen::default());
    let client = Client { seen: seen.clone() }
        .serve_with_lifecycle(StreamableHttpClientTransport::from_config(cfg), lifecycle)
        .await
        .unwrap_or_else(|e| panic!("rmcp (2026-07-28) could not start through catwalk at {url}: {e}"));
    let info = client.peer_info().expect("server info after server/discover");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2026_07_28, "{info:?}");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let r = client.call_tool(call("echo", json!({"message": "modern rmcp"}))).await.expect("echo");
    assert!(text_of(&r).contains("modern rmcp"), "{r:?}");
    asks_for_input(&client, &seen).await;
    // No session was minted: nothing to terminate, nothing left open.
    let metrics = url.rsplit_once("/mcp").map(|(base, _)| format!("{base}/metrics")).unwrap();
    let text = reqwest::get(&metrics).await.expect("GET /metrics").text().await.unwrap();
    let open = text.lines().find_map(|l| l.strip_prefix("catwalk_mcp_sessions_open "));
    assert!(open.is_none_or(|v| v.trim() == "0"), "a 2026-07-28 client has no session:\n{text}");
    client.cancel().await.expect("stop the rmcp client");
}

fn pinned() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] }
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_modern_client_pinned_and_automatic_through_the_bridge() {
    let (_bridge, url) = bridge_in_front_of_everything();
    modern_scenarios(&url, None, pinned()).await;
    let auto = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_06_18),
    };
    modern_scenarios(&url, None, auto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rmcp_modern_client_through_the_daemon_with_a_token() {
    let (_d, url, token) = daemon_in_front_of_everything();
    modern_scenarios(&url, Some(&token), pinned()).await;
}
