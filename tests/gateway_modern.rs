//! MCP 2026-07-28 on the same URL as legacy sessions (issue 14), through the real binaries:
//! the official TS SDK 2.x and Python SDK 2.x clients in every negotiation mode, the 2026-07-28 conformance
//! scenarios against a baseline, and raw HTTP for the wire rules (error codes, headers, the warm pool's
//! one-context-per-child rule, cancellation by closing a stream).

use crate::daemon;
use crate::deps;
use crate::gateway_support;

use std::process::Command;
use std::time::Duration;

use gateway_support::{Bridge, Sse, children_of, client, pid_alive, wait_until};
use serde_json::{Value, json};

const RUN: Duration = Duration::from_secs(300);
const MODERN: &str = "2026-07-28";

fn everything_argv() -> Vec<String> {
    vec![
        deps::node22().display().to_string(),
        deps::server_everything().display().to_string(),
        "stdio".into(),
    ]
}

fn bridge_in_front_of(argv: &[String], flags: &[&str]) -> Bridge {
    let mut args: Vec<&str> = flags.to_vec();
    args.push("--");
    args.extend(argv.iter().map(String::as_str));
    Bridge::start_raw(&args, &[("CATWALK_TEST_DEPS", &deps::deps_dir().display().to_string())])
}

/// The TS SDK 2.x client in `mode` (legacy, auto, pin); asserts every scenario passed.
fn ts_client(url: &str, mode: &str, token: Option<&str>, scenarios: &str) -> Value {
    let mut cmd = Command::new(deps::node22());
    cmd.arg(deps::repo_root().join("tests/clients/ts_modern_client.mjs"))
        .args(["--url", url, "--mode", mode, "--scenario", scenarios])
        .env("CATWALK_TEST_DEPS", deps::deps_dir());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    summary(&format!("ts 2.x {mode}"), &mut cmd)
}

/// The Python SDK 2.x client in `mode` (legacy, auto, 2026-07-28).
fn py_client(url: &str, mode: &str, token: Option<&str>, scenarios: &str) -> Value {
    let mut cmd = Command::new(deps::deps_dir().join("venv-mcp2/bin/python"));
    cmd.arg(deps::repo_root().join("tests/clients/py_modern_client.py")).args([
        "--url",
        url,
        "--mode",
        mode,
        "--scenario",
        scenarios,
    ]);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    summary(&format!("python 2.x {mode}"), &mut cmd)
}

fn summary(what: &str, cmd: &mut Command) -> Value {
    let (ok, stdout, stderr) = deps::run_with_timeout(what, cmd, RUN);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what} printed no JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert!(ok && v["ok"] == true, "{what} failed through catwalk:\n{stdout}\n{stderr}");
    v
}

fn every_mode(url: &str, token: Option<&str>, ts_scenarios: &str, py_scenarios: &str) {
    for mode in ["pin", "auto", "legacy"] {
        let v = ts_client(url, mode, token, ts_scenarios);
        let want = if mode == "legacy" { "2025-11-25" } else { MODERN };
        assert_eq!(v["negotiated"], want, "ts 2.x {mode}: {v}");
    }
    for mode in [MODERN, "auto", "legacy"] {
        let v = py_client(url, mode, token, py_scenarios);
        let want = if mode == "legacy" { "2025-11-25" } else { MODERN };
        assert_eq!(v["negotiated"], want, "python 2.x {mode}: {v}");
    }
}

#[test]
fn sdk_2_clients_in_every_mode_through_the_bridge_fronting_server_everything() {
    let b = bridge_in_front_of(&everything_argv(), &[]);
    // elicitation and sampling: server-everything asks its client mid-call; a 2026-07-28 client gets an
    // input_required result (issue 15's bridge) that the SDK fulfils with its handlers and retries.
    every_mode(
        &b.url,
        None,
        "era,basic,progress,parallel,listen,elicitation,sampling",
        "era,basic,parallel,elicitation,sampling",
    );
}

#[test]
fn sdk_2_clients_in_every_mode_through_the_daemon_fronting_the_dual_era_mcp_server_time() {
    // mcp-server-time 2026.10.19 runs on the Python SDK 2.x: it speaks both eras itself.
    let python = deps::deps_dir().join("venv-mcp2/bin/python").display().to_string();
    let d = daemon::Daemon::start_with_config(&format!(
        "[apps.time]\ncommand = [{python:?}, \"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n"
    ));
    let token = d.token("time");
    every_mode(&d.endpoint("time"), Some(&token), "era,basic,parallel,listen", "era,basic,parallel");
}

/// Through the daemon to a release on Fly (the fake Machines API; the machine runs catwalk's runner in front
/// of the stdio fixture, and the daemon passes modern requests to it as they are): the official 2.x clients
/// settle on 2026-07-28 in their automatic and pinned modes, and keep their sessions in legacy mode.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_2_clients_in_every_mode_through_the_daemon_to_a_release_on_fly() {
    let (_env, _d, token, url) = crate::fly_daemon::fixture_on_fly("modfly").await;
    tokio::task::block_in_place(|| {
        every_mode(&url, Some(&token), "era,basic,parallel", "era,basic,parallel")
    });
}

#[test]
fn sdk_2_clients_in_every_mode_through_the_bridge_fronting_a_dual_era_http_server() {
    // An HTTP upstream gets modern requests as they are (with the Mcp-Method/Mcp-Name headers it must check).
    let (_server, upstream) = deps::python_mcp2_http_fixture("modern_http_server.py", &["{port}"]);
    let b = Bridge::start_raw(&["--upstream", &upstream], &[]);
    every_mode(&b.url, None, "era,basic,parallel,listen", "era,basic,parallel");
}

#[test]
fn the_2026_07_28_conformance_scenarios_pass_through_the_bridge_against_the_baseline() {
    let fixture =
        vec![deps::node22().display().to_string(), deps::conformance_fixture().display().to_string()];
    let b = bridge_in_front_of(&fixture, &[]);
    let mut cmd = Command::new(deps::repo_root().join("scripts/conformance"));
    cmd.args([&b.url, "--revision", MODERN]).env("CATWALK_TEST_DEPS", deps::deps_dir());
    let (ok, stdout, stderr) = deps::run_with_timeout("scripts/conformance --revision", &mut cmd, RUN);
    assert!(ok, "2026-07-28 conformance failed through catwalk:\n{stdout}\n{stderr}");
    assert!(stdout.contains("http-header-validation"), "summary lacks scenarios:\n{stdout}");
    // The legacy suite still passes on the same URL.
    let mut cmd = Command::new(deps::repo_root().join("scripts/conformance"));
    cmd.arg(&b.url).env("CATWALK_TEST_DEPS", deps::deps_dir());
    let (ok, stdout, stderr) = deps::run_with_timeout("scripts/conformance", &mut cmd, RUN);
    assert!(ok, "2025-11-25 conformance failed through catwalk:\n{stdout}\n{stderr}");
}

// ---- the wire, raw ----------------------------------------------------------------------------------

fn meta() -> Value {
    json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}})
}

pub(crate) fn modern_msg(id: u64, method: &str, mut params: Value) -> Value {
    if params.get("_meta").is_none() {
        params["_meta"] = meta();
    }
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// POSTs a modern request with the headers a conforming client sends (overridable by `extra`).
pub(crate) async fn modern(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    msg: &Value,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let method = msg["method"].as_str().unwrap_or("");
    let mut headers: Vec<(String, String)> = vec![
        ("accept".into(), gateway_support::ACCEPT_BOTH.into()),
        ("content-type".into(), "application/json".into()),
        ("mcp-protocol-version".into(), MODERN.into()),
        ("mcp-method".into(), method.into()),
    ];
    if let Some(name) = msg["params"]["name"].as_str().or(msg["params"]["uri"].as_str()) {
        headers.push(("mcp-name".into(), name.into()));
    }
    for (k, v) in extra {
        headers.retain(|(h, _)| h != k);
        if !v.is_empty() {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    let mut r = c.post(url).body(msg.to_string());
    for (k, v) in headers {
        r = r.header(k, v);
    }
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.expect("POST failed")
}

pub(crate) async fn tool_text(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    id: u64,
    name: &str,
    args: Value,
) -> String {
    let r =
        modern(c, url, token, &modern_msg(id, "tools/call", json!({"name": name, "arguments": args})), &[])
            .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    v["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {v}")).to_string()
}

async fn error_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    let v: Value = r.json().await.unwrap();
    v["error"].clone()
}

#[tokio::test]
async fn modern_requests_get_the_revisions_errors_and_legacy_sessions_still_work_on_the_same_url() {
    let b = Bridge::start(&[]);
    let c = client();
    let list = modern_msg(1, "tools/list", json!({}));
    // Version header missing: HeaderMismatch.
    let e = error_of(modern(&c, &b.url, None, &list, &[("mcp-protocol-version", "")]).await, 400).await;
    assert_eq!(e["code"], -32020, "{e}");
    // Required _meta missing: invalid params.
    let bare = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});
    assert_eq!(error_of(modern(&c, &b.url, None, &bare, &[]).await, 400).await["code"], -32602);
    // An unsupported version: -32022 listing what is supported.
    let mut old = modern_msg(3, "tools/list", json!({}));
    old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("1900-01-01");
    let e =
        error_of(modern(&c, &b.url, None, &old, &[("mcp-protocol-version", "1900-01-01")]).await, 400).await;
    assert_eq!(e["code"], -32022, "{e}");
    assert_eq!(e["data"]["requested"], "1900-01-01");
    assert!(e["data"]["supported"].as_array().unwrap().contains(&json!(MODERN)), "{e}");
    // Header and body disagree: method, then name.
    let e = error_of(modern(&c, &b.url, None, &list, &[("mcp-method", "prompts/list")]).await, 400).await;
    assert_eq!(e["code"], -32020);
    let call = modern_msg(4, "tools/call", json!({"name": "echo", "arguments": {"text": "x"}}));
    let e = error_of(modern(&c, &b.url, None, &call, &[("mcp-name", "pid")]).await, 400).await;
    assert_eq!(e["code"], -32020, "a router trusting Mcp-Name would call pid while the server runs echo");
    // Methods the revision removed: 404 -32601.
    let ping = modern_msg(5, "ping", json!({}));
    assert_eq!(error_of(modern(&c, &b.url, None, &ping, &[]).await, 404).await["code"], -32601);
    // No GET stream, no DELETE in 2026-07-28.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = c.request(method, &b.url).header("mcp-protocol-version", MODERN).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "POST");
    }
    // A modern answer: the client's id, resultType and caching hints.
    let r = modern(&c, &b.url, None, &modern_msg(6, "tools/list", json!({})), &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("mcp-session-id").is_none(), "modern answers mint no session");
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["id"], &v["result"]["resultType"]), (&json!(6), &json!("complete")));
    assert_eq!((&v["result"]["ttlMs"], &v["result"]["cacheScope"]), (&json!(0), &json!("public")), "{v}");
    // server/discover from the server's own initialize answer.
    let r = modern(&c, &b.url, None, &modern_msg(7, "server/discover", json!({})), &[]).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "stdio-fixture", "{v}");
    // catwalk asked the server which era it speaks (once) and translates for this handshake-era one.
    assert!(b.wait_stderr("the server speaks only the handshake era"), "{}", b.stderr_text());
    assert!(v["result"]["supportedVersions"].as_array().unwrap().contains(&json!("2025-11-25")));
    assert_eq!(v["result"]["capabilities"]["tools"], json!({}));
    // A legacy session on the same URL is untouched.
    let sid = gateway_support::init(&c, &b.url, "2025-06-18").await;
    assert_eq!(
        gateway_support::call_text(&c, &b.url, &sid, 9, "echo", json!({"text": "legacy"})).await,
        "legacy"
    );
}

// ---- a server that speaks 2026-07-28 itself ------------------------------------------------------------

fn modern_fixture_argv() -> Vec<String> {
    vec![
        deps::deps_dir().join("venv-mcp2/bin/python").display().to_string(),
        deps::repo_root().join("tests/fixtures/modern_stdio_server.py").display().to_string(),
    ]
}

/// `greet` as a client that can answer elicitations and asked for log messages (so each call has its
/// process alone), with this round's answers and the state the server gave.
fn greet_msg(id: u64, answers: Value, state: Option<&str>) -> Value {
    let mut params = json!({"name": "greet", "arguments": {}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/logLevel": "error",
    }});
    if let Some(s) = state {
        params["inputResponses"] = answers;
        params["requestState"] = json!(s);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

fn accept(field: &str, value: &str) -> Value {
    json!({"action": "accept", "content": {field: value}})
}

/// The `input_required` result of a call: its input requests and its state.
async fn input_required(r: reqwest::Response) -> (serde_json::Map<String, Value>, String) {
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let asked = v["result"]["inputRequests"].as_object().unwrap_or_else(|| panic!("no inputRequests: {v}"));
    (asked.clone(), v["result"]["requestState"].as_str().unwrap().to_string())
}

/// A stdio server on the Python SDK 2.x answers `server/discover` itself, so catwalk passes every modern
/// request to it as it is: its own discover answer, its own `input_required` rounds (its keys, its sealed
/// `requestState`, no process parked by catwalk), and a retry reaches the process that sealed the state
/// even when that process is busy and another could serve (the SDK's key is per process).
#[tokio::test]
async fn a_server_that_speaks_2026_07_28_itself_gets_modern_requests_as_they_are() {
    let b = bridge_in_front_of(&modern_fixture_argv(), &[]);
    let c = client();
    let r = modern(&c, &b.url, None, &modern_msg(1, "server/discover", json!({})), &[]).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["result"]["supportedVersions"],
        json!([MODERN]),
        "the server's own answer, not catwalk's: {v}"
    );
    assert_eq!(v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "modern-stdio-fixture");
    assert!(b.wait_stderr("the server speaks MCP 2026-07-28 itself"), "{}", b.stderr_text());

    // Round 1: the server's own input request, under the key it chose, with the state it sealed.
    let (asked, state) =
        input_required(modern(&c, &b.url, None, &greet_msg(2, json!({}), None), &[]).await).await;
    assert_eq!(asked.keys().collect::<Vec<_>>(), ["user_name"], "{asked:?}");
    let message = asked["user_name"]["params"]["message"].as_str().unwrap();
    let asker: u32 = message.rsplit(' ').next().unwrap().trim_end_matches(')').parse().unwrap();
    assert!(state.starts_with("v1."), "the SDK's sealed state, passed through: {state}");

    // The process that asked is now busy with another call of the same client (it is the only one the
    // client has, so this call gets it), and the retry comes meanwhile: it must wait for that process, as
    // any other process of the server would refuse the state.
    let mut hold = modern_msg(3, "tools/call", json!({"name": "hold", "arguments": {"ms": 1500}}));
    hold["params"]["_meta"]["progressToken"] = json!("h");
    hold["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!("error");
    let mut busy = Sse::new(modern(&c, &b.url, None, &hold, &[]).await);
    let (_, progress) = busy.next_msg().await.expect("hold reports progress first");
    assert_eq!(progress["method"], "notifications/progress", "{progress}");
    let retry = greet_msg(4, json!({"user_name": accept("name", "Ada")}), Some(&state));
    let (asked, state) = input_required(modern(&c, &b.url, None, &retry, &[]).await).await;
    assert_eq!(asked.keys().collect::<Vec<_>>(), ["greeting"], "round 2 asks for the greeting: {asked:?}");
    let (_, done) = busy.next_msg().await.expect("hold answers");
    assert_eq!(
        done["result"]["content"][0]["text"],
        json!(asker.to_string()),
        "hold ran in the asking process"
    );

    // Round 3: the answer, from the process that asked.
    let last = greet_msg(5, json!({"greeting": accept("word", "Hello")}), Some(&state));
    let r = modern(&c, &b.url, None, &last, &[]).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["content"][0]["text"], format!("Hello, Ada (process {asker})"), "{v}");

    // A tampered state is the server's to refuse, and it does.
    let mut forged = state.clone();
    forged.push('A');
    let r = modern(
        &c,
        &b.url,
        None,
        &greet_msg(6, json!({"greeting": accept("word", "Hi")}), Some(&forged)),
        &[],
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");

    // The same URL still serves legacy sessions (the server is dual-era; catwalk initializes for them).
    let sid = gateway_support::init(&c, &b.url, "2025-11-25").await;
    let pid = gateway_support::call_text(&c, &b.url, &sid, 7, "pid", json!({})).await;
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
}

/// A handshake-era server that ignores methods it does not know never answers the era probe: its silence
/// is kept as "handshake era", so the first modern request waits for the probe once and the next ones do
/// not probe again (one probe line in the log), all answered through catwalk's translation.
#[tokio::test]
async fn a_server_silent_on_server_discover_is_learnt_once_as_handshake_era() {
    let fixture = gateway_support::fixture();
    let b = Bridge::start_raw(
        &["--warm", "0", "--env", "FIXTURE_IGNORE_UNKNOWN=1", "--", "python3", "-u", &fixture],
        &[],
    );
    let c = client();
    for id in 1..=3 {
        assert_eq!(tool_text(&c, &b.url, None, id, "echo", json!({"text": "hi"})).await, "hi");
    }
    assert!(b.wait_stderr("did not answer server/discover within 10 s"), "{}", b.stderr_text());
    assert!(b.wait_stderr("the server speaks only the handshake era"), "{}", b.stderr_text());
    let probes = b.stderr_text().matches("to ask server/discover").count();
    assert_eq!(probes, 1, "one probe per release:\n{}", b.stderr_text());
}

/// One call that asks for input twice, answered by the Python SDK 2.x client's own handlers: in front of the
/// handshake-era fixture (`sample_twice`: two sampling requests, the second sent once the first is answered)
/// in every mode — a 2026-07-28 client gets two `input_required` rounds from catwalk's bridge, a 2025 client
/// the server's own requests — and in front of the 2026-07-28 fixture (`greet`: two rounds of the server's own)
/// in the modes that reach 2026-07-28.
#[test]
fn the_python_sdk_2_client_answers_several_rounds_of_input_in_one_call() {
    let legacy_server = Bridge::start(&[]);
    for mode in [MODERN, "auto", "legacy"] {
        py_client(&legacy_server.url, mode, None, "rounds");
    }
    let modern_server = bridge_in_front_of(&modern_fixture_argv(), &[]);
    for mode in [MODERN, "auto"] {
        py_client(&modern_server.url, mode, None, "era,rounds");
    }
}

/// A tool's `x-mcp-header` arguments travel twice (SEP-2243): in the body and as `Mcp-Param-*` headers that
/// routers act on. The legacy server behind catwalk knows nothing of it, so catwalk refuses a call whose
/// headers and arguments disagree, as the revision requires of the server.
#[tokio::test]
async fn mcp_param_headers_must_agree_with_the_arguments_a_tool_marks() {
    let fixture =
        vec![deps::node22().display().to_string(), deps::conformance_fixture().display().to_string()];
    let b = bridge_in_front_of(&fixture, &[]);
    let c = client();
    let call = |id: u64, args: Value| {
        modern_msg(id, "tools/call", json!({"name": "test_x_mcp_header", "arguments": args}))
    };
    let args = json!({"region": "us-west1", "priority": 3});
    let agreeing = [("mcp-param-region", "us-west1"), ("mcp-param-priority", "3")];
    let r = modern(&c, &b.url, None, &call(1, args.clone()), &agreeing).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("us-west1"), "{v}");
    // Numbers compare as numbers; the Base64 sentinel is decoded.
    let same = [("mcp-param-region", "=?base64?dXMtd2VzdDE=?="), ("mcp-param-priority", "3.0")];
    assert_eq!(modern(&c, &b.url, None, &call(2, args.clone()), &same).await.status(), 200);
    // A router trusting the header would have sent the call to eu-west1 while the tool runs in us-west1.
    let wrong = [("mcp-param-region", "eu-west1"), ("mcp-param-priority", "3")];
    let e = error_of(modern(&c, &b.url, None, &call(3, args.clone()), &wrong).await, 400).await;
    assert_eq!(e["code"], -32020, "{e}");
    assert!(e["message"].as_str().unwrap().contains("Mcp-Param-Region"), "{e}");
    // The header left out while the argument is in the body.
    let e =
        error_of(modern(&c, &b.url, None, &call(4, args.clone()), &[("mcp-param-priority", "3")]).await, 400)
            .await;
    assert!(e["message"].as_str().unwrap().contains("missing"), "{e}");
    // A header for an argument the body does not have (null counts as absent).
    let sparse = json!({"region": "us-west1", "priority": null});
    assert_eq!(
        modern(&c, &b.url, None, &call(5, sparse.clone()), &[("mcp-param-region", "us-west1")])
            .await
            .status(),
        200
    );
    let e = error_of(modern(&c, &b.url, None, &call(6, sparse), &agreeing).await, 400).await;
    assert_eq!(e["code"], -32020, "{e}");
    // Tools without annotations are not affected.
    let echo = modern_msg(7, "tools/call", json!({"name": "echo", "arguments": {"message": "hi"}}));
    assert_eq!(modern(&c, &b.url, None, &echo, &[]).await.status(), 200);
}

#[tokio::test]
async fn the_pool_reuses_a_child_per_context_and_a_spare_becomes_the_first_child() {
    let b = Bridge::start(&["--warm", "1"]);
    let c = client();
    assert!(wait_until(Duration::from_secs(30), || children_of(b.pid()).len() == 1), "no warm spare started");
    // With warm spares the release's era is learnt in the background, before any 2026-07-28 request.
    assert!(b.wait_stderr("the server speaks only the handshake era"), "{}", b.stderr_text());
    assert!(
        wait_until(Duration::from_secs(30), || children_of(b.pid()).len() == 1),
        "the probe was not stopped"
    );
    let spare = children_of(b.pid())[0];
    let first: u32 = tool_text(&c, &b.url, None, 1, "pid", json!({})).await.parse().unwrap();
    let second: u32 = tool_text(&c, &b.url, None, 2, "pid", json!({})).await.parse().unwrap();
    assert_eq!(first, second, "one context, one request at a time: the same initialized child answers");
    // The spare was started before the request: it served it (the sandboxed server's pid is the spare's
    // or, behind a sandbox wrapper, one of its descendants).
    assert!(first == spare || descendants(spare).contains(&first), "pid {first} is not the spare {spare}");
    // A replacement spare appears.
    assert!(wait_until(Duration::from_secs(30), || children_of(b.pid()).len() == 2), "no replacement spare");
}

#[tokio::test]
async fn more_concurrent_requests_than_pooled_processes_wait_for_one_instead_of_failing() {
    let b = Bridge::start(&[]);
    let c = client();
    let calls = (0..20u64).map(|i| {
        let (c, url) = (c.clone(), b.url.clone());
        async move {
            let args = json!({"ms": 200, "text": format!("t{i}")});
            tool_text(&c, &url, None, i, "slow", args).await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let want: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    assert_eq!(
        answers, want,
        "20 requests of one client on at most 8 processes: every one answered, in order"
    );
}

/// Without warm spares the pool starts its process for the request, and what that cost the request is
/// measured (`catwalk_mcp_cold_start_duration_seconds`, era 2026-07-28).
#[tokio::test]
async fn a_pooled_process_started_for_a_request_is_measured_as_a_cold_start() {
    let b = Bridge::start(&["--warm", "0"]);
    let c = client();
    assert_eq!(tool_text(&c, &b.url, None, 1, "echo", json!({"text": "cold"})).await, "cold");
    let m = c.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    let paid = m.lines().find(|l| {
        l.starts_with("catwalk_mcp_cold_start_duration_seconds_count{") && l.contains("era=\"2026-07-28\"")
    });
    assert!(paid.is_some_and(|l| l.ends_with(" 1")), "one start-up paid by the request: {m}");
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

#[tokio::test]
async fn progress_rides_the_stream_and_an_undeclared_capability_gets_the_server_an_error() {
    let b = Bridge::start(&[]);
    let c = client();
    let mut msg =
        modern_msg(1, "tools/call", json!({"name": "progress_slow", "arguments": {"count": 3, "ms": 50}}));
    msg["params"]["_meta"]["progressToken"] = json!("tok-1");
    let r = modern(&c, &b.url, None, &msg, &[]).await;
    let mut sse = Sse::new(r);
    let mut progress = Vec::new();
    let last = loop {
        let (_, m) = sse.next_msg().await.expect("stream ended before the answer");
        if m["method"] == "notifications/progress" {
            assert_eq!(m["params"]["progressToken"], "tok-1");
            progress.push(m["params"]["progress"].clone());
        } else {
            break m;
        }
    };
    assert_eq!(progress, vec![json!(1), json!(2), json!(3)]);
    assert_eq!((&last["id"], &last["result"]["content"][0]["text"]), (&json!(1), &json!("done")));
    // A log message is only sent to a request that asked for it (with a level).
    let r = modern(
        &c,
        &b.url,
        None,
        &modern_msg(2, "tools/call", json!({"name": "notify_then_echo", "arguments": {"text": "q"}})),
        &[],
    )
    .await;
    assert_eq!(r.headers()["content-type"], "application/json", "no log level asked, so no stream");
    let mut msg =
        modern_msg(3, "tools/call", json!({"name": "notify_then_echo", "arguments": {"text": "q"}}));
    msg["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!("debug");
    let mut sse = Sse::new(modern(&c, &b.url, None, &msg, &[]).await);
    let (_, m) = sse.next_msg().await.unwrap();
    assert_eq!(m["method"], "notifications/message");
    // The legacy server asks its client for a completion, but this client declared no sampling capability:
    // it is never asked (no input_required), the child gets an error and the call finishes.
    assert_eq!(tool_text(&c, &b.url, None, 4, "sample", json!({})).await, "sampled: None");
}

// Multi-threaded: the test blocks in `wait_until` while the runtime must still close the dropped stream.
#[tokio::test(flavor = "multi_thread")]
async fn closing_the_stream_cancels_and_the_child_is_not_reused_and_a_crash_is_a_clean_error() {
    let b = Bridge::start(&[]);
    let c = client();
    let pid: u32 = tool_text(&c, &b.url, None, 1, "pid", json!({})).await.parse().unwrap();
    // A request that asked for log messages has its child alone (their messages cannot be told apart).
    let mut msg =
        modern_msg(2, "tools/call", json!({"name": "progress_slow", "arguments": {"count": 100, "ms": 200}}));
    msg["params"]["_meta"]["progressToken"] = 2.into();
    msg["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = "error".into();
    let mut sse = Sse::new(modern(&c, &b.url, None, &msg, &[]).await);
    assert_eq!(sse.next_msg().await.unwrap().1["method"], "notifications/progress");
    drop(sse);
    // The child still working on the abandoned call is stopped (after a short grace), never lent again.
    assert!(
        wait_until(Duration::from_secs(20), || !pid_alive(pid)),
        "the cancelled request's child lives on"
    );
    let next: u32 = tool_text(&c, &b.url, None, 3, "pid", json!({})).await.parse().unwrap();
    assert_ne!(next, pid);
    // A shared request (no log level, no input it could be asked for) cancelled: its child goes on serving
    // the others, and the abandoned call's late progress reaches nobody.
    let mut msg =
        modern_msg(31, "tools/call", json!({"name": "progress_slow", "arguments": {"count": 5, "ms": 100}}));
    msg["params"]["_meta"]["progressToken"] = "abandoned".into();
    let mut sse = Sse::new(modern(&c, &b.url, None, &msg, &[]).await);
    assert_eq!(sse.next_msg().await.unwrap().1["params"]["progressToken"], "abandoned");
    drop(sse);
    let mut msg =
        modern_msg(32, "tools/call", json!({"name": "progress_slow", "arguments": {"count": 2, "ms": 300}}));
    msg["params"]["_meta"]["progressToken"] = "mine".into();
    let mut sse = Sse::new(modern(&c, &b.url, None, &msg, &[]).await);
    loop {
        let (_, m) = sse.next_msg().await.expect("stream ended early");
        if m["method"] == "notifications/progress" {
            assert_eq!(m["params"]["progressToken"], "mine", "another request's progress leaked: {m}");
        } else {
            assert_eq!(m["id"], 32, "{m}");
            break;
        }
    }
    assert!(pid_alive(next), "a shared child is kept when one of its requests is cancelled");
    // A server that dies mid-call: a JSON-RPC error, and the next request gets a fresh child.
    let r = modern(
        &c,
        &b.url,
        None,
        &modern_msg(4, "tools/call", json!({"name": "crash", "arguments": {}})),
        &[],
    )
    .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!((&v["id"], &v["error"]["code"]), (&json!(4), &json!(-32603)), "{v}");
    assert_eq!(tool_text(&c, &b.url, None, 5, "echo", json!({"text": "again"})).await, "again");
}

#[tokio::test]
async fn a_pooled_child_never_serves_two_tokens() {
    let fixture = gateway_support::fixture();
    let d = daemon::Daemon::start_with_config(&format!(
        "[apps.pool]\ncommand = [\"python3\", \"-u\", {fixture:?}]\n"
    ));
    let (alice, bob) = (d.token("pool"), d.token("pool"));
    let url = d.endpoint("pool");
    let c = client();
    let a1: u32 = tool_text(&c, &url, Some(&alice), 1, "pid", json!({})).await.parse().unwrap();
    let b1: u32 = tool_text(&c, &url, Some(&bob), 1, "pid", json!({})).await.parse().unwrap();
    let a2: u32 = tool_text(&c, &url, Some(&alice), 2, "pid", json!({})).await.parse().unwrap();
    let b2: u32 = tool_text(&c, &url, Some(&bob), 2, "pid", json!({})).await.parse().unwrap();
    assert_ne!(a1, b1, "two tokens shared one server process");
    assert_eq!((a1, b1), (a2, b2), "each token keeps its own child");
    // No token, no pool: 401 before anything starts.
    let r = modern(&c, &url, None, &modern_msg(3, "tools/list", json!({})), &[]).await;
    assert_eq!(r.status(), 401);
    // Private apps' cacheable results say so.
    let r = modern(&c, &url, Some(&alice), &modern_msg(4, "tools/list", json!({})), &[]).await;
    assert_eq!(r.json::<Value>().await.unwrap()["result"]["cacheScope"], "private");
}

/// A push proves a stdio release with 2026-07-28 requests and hands the process it proved to the daemon's
/// gateway: the first modern client after the push is answered by that process (no start-up, no second
/// `initialize`), the release's era is known from the gate (one probe per push, none by the live gateway),
/// and after a restart the release record says it, so no probe runs at all.
#[tokio::test(flavor = "multi_thread")]
async fn the_process_a_push_proved_answers_the_first_2026_07_28_client() {
    let mut d = daemon::Daemon::start();
    let wt = daemon::WorkTree::new(d.tmp.path(), "proved");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("proved")]);
    let out = wt.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}", daemon::stderr(&out));
    let logs = |d: &daemon::Daemon| daemon::ok(&d.ssh(&d.admin, "logs proved -n 500", ""));
    let probes = |text: &str| text.matches("to ask server/discover").count();
    let log = logs(&d);
    let proved: u32 = log
        .lines()
        .find_map(|l| {
            l.split("process ")
                .nth(1)?
                .strip_suffix(" passed the health gate and waits for a 2026-07-28 client")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the push handed no process over:\n{log}"));
    assert_eq!(probes(&log), 1, "{log}");
    // Known as soon as the push is done, without a request.
    let translated = "2026-07-28: translated by catwalk (the server speaks only the handshake era)";
    let info = daemon::ok(&d.ssh(&d.admin, "info proved", ""));
    assert!(info.contains(translated), "{info}");
    assert!(info.contains("1 proven by the push, waiting for a 2026-07-28 client"), "{info}");

    let (c, url, token) = (client(), d.endpoint("proved"), d.token("proved"));
    let started = |text: &str| text.matches("started process").count();
    let before = started(&log);
    // The process that answers already served the gate's requests, initialized once (the sandbox's pid
    // namespace hides host pids from the server: what it saw identifies it).
    let seen: Vec<String> =
        serde_json::from_str(&tool_text(&c, &url, Some(&token), 1, "history", json!({})).await).unwrap();
    assert_eq!(seen.iter().filter(|m| *m == "initialize").count(), 1, "{seen:?}");
    assert!(seen.contains(&"tools/list".to_string()), "not the process the gate asked: {seen:?}");
    let log = logs(&d);
    assert!(
        log.contains(&format!(
            "process {proved} joined the 2026-07-28 pool (proven by the push's health gate)"
        )),
        "{log}"
    );
    assert_eq!(started(&log), before, "a process was started for the first request:\n{log}");
    assert_eq!(probes(&log), 1, "the live gateway probed the era again:\n{log}");
    let info = daemon::ok(&d.ssh(&d.admin, "info proved", ""));
    assert!(info.contains("1 for 2026-07-28 requests") && !info.contains("proven by the push"), "{info}");
    // A second context gets a process of its own (the proven one serves one token only): a warm spare,
    // initialized by catwalk for it.
    let other = d.token("proved");
    let history = |v: String| serde_json::from_str::<Vec<String>>(&v).unwrap();
    let second = history(tool_text(&c, &url, Some(&other), 1, "history", json!({})).await);
    assert_eq!(second, ["initialize"], "two tokens shared the proven process");

    // After a restart the release record says which era the server speaks: nothing probes it.
    d.kill9_and_restart();
    let url = d.endpoint("proved");
    let again = history(tool_text(&c, &url, Some(&token), 2, "history", json!({})).await);
    assert_eq!(again.first().map(String::as_str), Some("initialize"), "{again:?}");
    let log = logs(&d);
    assert_eq!(probes(&log), 0, "a restart probed the era although the release record says it:\n{log}");
    let info = daemon::ok(&d.ssh(&d.admin, "info proved", ""));
    assert!(info.contains(translated), "{info}");
}

/// A server that speaks MCP 2026-07-28 only (the fixture behind a relay that refuses `initialize`).
fn modern_only_argv() -> Vec<String> {
    let mut argv = vec!["env".to_string(), "FIXTURE_MODERN_ONLY=1".to_string()];
    argv.extend(modern_fixture_argv());
    argv
}

/// POSTs a 2025 message (in session `sid`, or an `initialize` without one).
fn session_post(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
    sid: Option<String>,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    let mut r = c
        .post(url)
        .header("accept", gateway_support::ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(s) = sid {
        r = r.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
    }
    r.send()
}

/// The official TypeScript SDK 1.x client (2025 sessions only) runs `scenarios`.
fn ts_1x_client(url: &str, token: Option<&str>, scenarios: &str) -> Value {
    let mut cmd = Command::new(deps::node22());
    cmd.arg(deps::ts_client())
        .args(["--url", url, "--scenario", scenarios])
        .env("CATWALK_TEST_DEPS", deps::deps_dir());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    summary("ts 1.x", &mut cmd)
}

/// A server that speaks 2026-07-28 only still serves the 2025 clients in use today: catwalk keeps the
/// session and speaks 2026-07-28 to the server. Its `input_required` rounds reach a TS SDK 1.x client as
/// real elicitation and sampling requests on the call's stream, and the answers come back as the retry
/// (two rounds of elicitation in one call).
#[tokio::test(flavor = "multi_thread")]
async fn a_2025_client_reaches_a_server_that_speaks_2026_07_28_only_through_the_bridge() {
    let argv = modern_only_argv();
    let b = bridge_in_front_of(&argv, &[]);
    // Learnt in the background when the bridge starts (it has a warm spare).
    assert!(b.wait_stderr("the server speaks MCP 2026-07-28 only"), "{}", b.stderr_text());
    let v = ts_1x_client(&b.url, None, "greet,sampling");
    assert_eq!(v["scenarios"]["greet"]["detail"]["asked"].as_array().map(Vec::len), Some(2), "{v}");
    // 2026-07-28 clients on the same URL are passed through as before.
    let pid = tool_text(&client(), &b.url, None, 1, "pid", json!({})).await;
    assert!(pid.parse::<u32>().is_ok(), "{pid}");
}

/// The same through the daemon's `/mcp/APP` with a token, and `info` says sessions are translated.
#[tokio::test(flavor = "multi_thread")]
async fn a_2025_session_is_translated_for_a_server_that_speaks_2026_07_28_only_through_the_daemon() {
    let argv: Vec<String> = modern_only_argv().iter().map(|a| format!("{a:?}")).collect();
    let d = daemon::Daemon::start_with_config(&format!("[apps.only]\ncommand = [{}]\n", argv.join(", ")));
    let token = d.token("only");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = daemon::ok(&d.ssh(&d.admin, "info only", ""));
        if info.contains("2025:       sessions translated by catwalk") {
            break info;
        }
        assert!(std::time::Instant::now() < deadline, "the app's eras were never learnt:\n{info}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let json: Value = serde_json::from_str(&daemon::ok(&d.ssh(&d.admin, "info only --json", ""))).unwrap();
    assert_eq!(json["mcp_2026_07_28"], "passed as they are (the server speaks 2026-07-28 itself)", "{info}");
    let url = d.endpoint("only");
    let v = ts_1x_client(&url, Some(&token), "greet");
    assert!(
        v["scenarios"]["greet"]["detail"]["result"]
            .as_str()
            .is_some_and(|t| t.starts_with("catwalk, catwalk-test")),
        "{v}"
    );
    // The raw wire: initialize is answered from server/discover, ping by catwalk, errors keep their codes.
    let c = client();
    let post = |body: Value, sid: Option<String>| session_post(&c, &url, Some(&token), body, sid);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let r = post(init, None).await.unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18", "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "modern-stdio-fixture", "{v}");
    assert_eq!(v["result"]["capabilities"]["tools"], json!({"listChanged": true}), "{v}");
    // A change the session's own call causes reaches its GET stream (through the session's listen stream).
    let get = c
        .get(&url)
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let mut changes = Sse::new(get);
    let change = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "change_tools", "arguments": {}}});
    let v: Value = post(change, Some(sid.clone())).await.unwrap().json().await.unwrap();
    assert_eq!(v["result"]["content"][0]["text"], "changed", "{v}");
    let (_, changed) = tokio::time::timeout(Duration::from_secs(30), changes.next_msg())
        .await
        .expect("the change never reached the session's GET stream")
        .expect("the GET stream ended");
    assert_eq!(changed["method"], "notifications/tools/list_changed", "{changed}");
    let r = post(json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}), Some(sid.clone())).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["result"], json!({}));
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "pid", "arguments": {}}});
    let v: Value = post(call, Some(sid.clone())).await.unwrap().json().await.unwrap();
    assert!(v["result"]["content"][0]["text"].as_str().is_some_and(|t| t.parse::<u32>().is_ok()), "{v}");
    assert!(v["result"].get("resultType").is_none(), "2026-07-28 result fields reached a 2025 client: {v}");
    let nope = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope", "arguments": {}}});
    let v: Value = post(nope, Some(sid)).await.unwrap().json().await.unwrap();
    assert!(v["error"]["code"].is_i64() || v["result"]["isError"] == true, "{v}");
}

/// A server that speaks 2026-07-28 reports the changes of its own process only (the SDK's subscription bus
/// is in-process): a client's `subscriptions/listen` stream shares its process with the client's other
/// requests, so a change the client causes reaches its stream, tagged with the stream's id.
#[tokio::test]
async fn a_listen_stream_hears_the_changes_its_clients_calls_cause_on_a_modern_server() {
    let b = bridge_in_front_of(&modern_fixture_argv(), &[]);
    let c = client();
    let listen = modern_msg(7, "subscriptions/listen", json!({"notifications": {"toolsListChanged": true}}));
    let mut stream = Sse::new(modern(&c, &b.url, None, &listen, &[]).await);
    let (_, ack) = stream.next_msg().await.expect("no acknowledgement");
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
    assert_eq!(tool_text(&c, &b.url, None, 8, "change_tools", json!({})).await, "changed");
    let (_, changed) = tokio::time::timeout(Duration::from_secs(30), stream.next_msg())
        .await
        .expect("the change never reached the listen stream")
        .expect("the listen stream ended");
    assert_eq!(changed["method"], "notifications/tools/list_changed", "{changed}");
    assert_eq!(changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 7, "{changed}");
}

/// A 2025 client that never answers what a 2026-07-28-only server asks holds nothing for ever: after
/// `--input-timeout` its call gets an error saying so, and the session goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_translated_session_whose_client_never_answers_gets_an_error_after_the_input_timeout() {
    let b = bridge_in_front_of(&modern_only_argv(), &["--input-timeout", "1s"]);
    assert!(b.wait_stderr("the server speaks MCP 2026-07-28 only"), "{}", b.stderr_text());
    let c = client();
    let post = |body: Value, sid: Option<&str>| session_post(&c, &b.url, None, body, sid.map(str::to_string));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {"elicitation": {}}, "clientInfo": {"name": "mute", "version": "1"}}});
    let r = post(init, None).await.unwrap();
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let greet = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "greet", "arguments": {}}});
    let mut call = Sse::new(post(greet, Some(&sid)).await.unwrap());
    let (_, asked) = call.next_msg().await.expect("no question");
    assert_eq!(asked["method"], "elicitation/create", "{asked}");
    // Never answered: the call ends with an error naming what was not answered.
    let (_, answer) = tokio::time::timeout(Duration::from_secs(30), call.next_msg())
        .await
        .expect("the call never ended")
        .expect("the stream ended without an answer");
    assert_eq!(answer["id"], 2, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not answer") && message.contains("within 1 s"), "{answer}");
    // The session still serves.
    let ping = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "pid", "arguments": {}}});
    let v: Value = post(ping, Some(&sid)).await.unwrap().json().await.unwrap();
    assert!(v["result"]["content"][0]["text"].as_str().is_some_and(|t| t.parse::<u32>().is_ok()), "{v}");
}
