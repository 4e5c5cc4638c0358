//! The input_required bridge (issue 15): a handshake-era server asks its client for input mid-call
//! (sampling, elicitation, roots); a 2026-07-28 client gets an `input_required` result and retries with its
//! answers. Through the real `catwalk bridge` and daemon: rounds, a forged / replayed / foreign / expired
//! `requestState`, a client that never retries, two clients at once. (The official SDK clients doing the
//! same against server-everything are in `gateway_modern.rs`.) And the other way round: a server that asks
//! with `input_required` itself has its rounds passed through untouched, checked by the official suite.

use crate::daemon;
use crate::deps;
use crate::gateway_support;

use std::process::Command;
use std::time::Duration;

use gateway_support::{Bridge, client, pid_alive, wait_until};
use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";

fn call(id: u64, tool: &str, capabilities: Value, extra: Value) -> Value {
    let mut params = json!({
        "name": tool,
        "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": capabilities},
    });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

async fn send(c: &reqwest::Client, url: &str, token: Option<&str>, msg: &Value) -> (u16, Value) {
    let mut r = c
        .post(url)
        .header("accept", gateway_support::ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "tools/call")
        .header("mcp-name", msg["params"]["name"].as_str().unwrap())
        .body(msg.to_string());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.expect("POST failed");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON answer"))
}

fn sampled(text: &str) -> Value {
    json!({"role": "assistant", "content": {"type": "text", "text": text}, "model": "test"})
}

/// Asks, checks the input_required result, and returns (key, requestState).
async fn ask(c: &reqwest::Client, url: &str, token: Option<&str>, id: u64, tool: &str) -> (String, String) {
    let (status, v) = send(c, url, token, &call(id, tool, json!({"sampling": {}}), json!({}))).await;
    assert_eq!(status, 200, "{v}");
    let r = &v["result"];
    assert_eq!((&v["id"], &r["resultType"]), (&json!(id), &json!("input_required")), "{v}");
    let requests = r["inputRequests"].as_object().expect("inputRequests");
    assert_eq!(requests.len(), 1, "{v}");
    let (key, request) = requests.iter().next().unwrap();
    assert_eq!(request["method"], "sampling/createMessage", "{v}");
    (key.clone(), r["requestState"].as_str().expect("requestState").to_string())
}

fn retry(id: u64, tool: &str, key: &str, answer: &str, state: &str) -> Value {
    call(
        id,
        tool,
        json!({"sampling": {}}),
        json!({"inputResponses": {key: sampled(answer)}, "requestState": state}),
    )
}

#[tokio::test]
async fn a_legacy_servers_requests_become_rounds_of_input_required() {
    let b = Bridge::start(&[]);
    let c = client();
    // One round.
    let (key, state) = ask(&c, &b.url, None, 1, "sample").await;
    let (_, v) = send(&c, &b.url, None, &retry(2, "sample", &key, "forty-two", &state)).await;
    assert_eq!((&v["id"], &v["result"]["resultType"]), (&json!(2), &json!("complete")), "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "sampled: forty-two");
    // Replayed: the state is spent.
    let (status, v) = send(&c, &b.url, None, &retry(3, "sample", &key, "again", &state)).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!(-32602)), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("already used"), "{v}");
    // Two rounds in one call: the second input request comes with a new state.
    let (key1, state1) = ask(&c, &b.url, None, 4, "sample_twice").await;
    let (_, v) = send(&c, &b.url, None, &retry(5, "sample_twice", &key1, "one", &state1)).await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let key2 = v["result"]["inputRequests"].as_object().unwrap().keys().next().unwrap().clone();
    assert_ne!(key1, key2, "keys are unique within the call");
    let state2 = v["result"]["requestState"].as_str().unwrap().to_string();
    let (_, v) = send(&c, &b.url, None, &retry(6, "sample_twice", &key2, "two", &state2)).await;
    assert_eq!(v["result"]["content"][0]["text"], "sampled twice: one, two", "{v}");
    // A retry without the answer is asked again (the revision's SHOULD), with the same process waiting.
    let (key, state) = ask(&c, &b.url, None, 7, "sample").await;
    let nothing =
        call(8, "sample", json!({"sampling": {}}), json!({"inputResponses": {}, "requestState": state}));
    let (_, v) = send(&c, &b.url, None, &nothing).await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    assert!(v["result"]["inputRequests"].get(&key).is_some(), "the same request is asked again: {v}");
    let state = v["result"]["requestState"].as_str().unwrap().to_string();
    let (_, v) = send(&c, &b.url, None, &retry(9, "sample", &key, "late", &state)).await;
    assert_eq!(v["result"]["content"][0]["text"], "sampled: late", "{v}");
    // A client that did not declare sampling is never asked: the server gets an error instead.
    let (_, v) = send(&c, &b.url, None, &call(10, "sample", json!({}), json!({}))).await;
    assert_eq!(v["result"]["content"][0]["text"], "sampled: None", "{v}");
}

#[tokio::test]
async fn forged_altered_and_foreign_states_never_reach_a_server() {
    let fixture = gateway_support::fixture();
    let d = daemon::Daemon::start_with_config(&format!(
        "[apps.ask]\ncommand = [\"python3\", \"-u\", {fixture:?}]\n[apps.other]\ncommand = [\"python3\", \"-u\", {fixture:?}]\n"
    ));
    let (alice, bob) = (d.token("ask"), d.token("ask"));
    let url = d.endpoint("ask");
    let c = client();
    let (key, state) = ask(&c, &url, Some(&alice), 1, "sample").await;
    let refused = |v: &Value| {
        v["error"]["code"] == -32602 && v["error"]["message"].as_str().unwrap().contains("not valid")
    };
    // Forged from nothing, altered by one character, and taken to another token, another call, another app.
    let mut altered = state.clone().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (what, token, msg, at) in [
        ("forged", &alice, retry(2, "sample", &key, "x", "AAAA.BBBB"), url.clone()),
        ("altered", &alice, retry(3, "sample", &key, "x", &altered), url.clone()),
        ("another token's", &bob, retry(4, "sample", &key, "x", &state), url.clone()),
        ("another call's", &alice, retry(5, "sample_twice", &key, "x", &state), url.clone()),
    ] {
        let (status, v) = send(&c, &at, Some(token), &msg).await;
        assert!(status == 400 && refused(&v), "{what} state was not refused: {v}");
    }
    let other = d.token("other");
    let (status, v) =
        send(&c, &d.endpoint("other"), Some(&other), &retry(6, "sample", &key, "x", &state)).await;
    assert!(status == 400 && refused(&v), "another app's state was not refused: {v}");
    // None of that spent the real state: Alice's retry still completes.
    let (_, v) = send(&c, &url, Some(&alice), &retry(7, "sample", &key, "mine", &state)).await;
    assert_eq!(v["result"]["content"][0]["text"], "sampled: mine", "{v}");
}

// Multi-threaded: the test blocks in `wait_until` while the bridge's streams must keep moving.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_retries_has_its_waiting_server_recycled() {
    let b = Bridge::start(&["--input-timeout", "1s", "--warm", "0"]);
    let c = client();
    let pid: u32 = {
        let msg = call(1, "pid", json!({}), json!({}));
        let (_, v) = send(&c, &b.url, None, &msg).await;
        v["result"]["content"][0]["text"].as_str().unwrap().parse().unwrap()
    };
    let (key, state) = ask(&c, &b.url, None, 2, "sample").await;
    // The waiting process is the pooled one; after the timeout it is stopped and the state has expired.
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(pid)), "the waiting server was not recycled");
    let (status, v) = send(&c, &b.url, None, &retry(3, "sample", &key, "too late", &state)).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!(-32602)), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"), "{v}");
}

#[tokio::test]
async fn two_clients_asked_at_once_get_their_own_answers() {
    let b = Bridge::start(&[]);
    let c = client();
    let ((k1, s1), (k2, s2)) =
        tokio::join!(ask(&c, &b.url, None, 1, "sample"), ask(&c, &b.url, None, 2, "sample"));
    assert_ne!(s1, s2);
    let (m1, m2) = (retry(3, "sample", &k1, "for one", &s1), retry(4, "sample", &k2, "for two", &s2));
    let (r1, r2) = tokio::join!(send(&c, &b.url, None, &m1), send(&c, &b.url, None, &m2));
    assert_eq!(r1.1["result"]["content"][0]["text"], "sampled: for one", "{:?}", r1);
    assert_eq!(r2.1["result"]["content"][0]["text"], "sampled: for two", "{:?}", r2);
}

/// On Fly the daemon proxies 2026-07-28 requests to the release's machine as they are, and the machine's
/// own bridge (the runner serves the release with the same gateway) does the input_required rounds: the
/// sealed state it hands out comes back through the daemon on the retry and completes the call. Through
/// the real daemon, the real runner and the fake Machines API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn input_required_rounds_work_through_the_daemon_to_a_release_on_fly() {
    // The stdio fixture from its repository, on a machine (the daemon's default runtime here is fly).
    let (_env, _d, token, url) = crate::fly_daemon::fixture_on_fly("askfly").await;
    let c = client();
    let (key, state) = ask(&c, &url, Some(&token), 1, "sample").await;
    let (_, v) = send(&c, &url, Some(&token), &retry(2, "sample", &key, "from fly", &state)).await;
    assert_eq!((&v["id"], &v["result"]["resultType"]), (&json!(2), &json!("complete")), "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "sampled: from fly");
    // The machine's state is single-use too, also when it comes back through the daemon.
    let (status, v) = send(&c, &url, Some(&token), &retry(3, "sample", &key, "again", &state)).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!(-32602)), "{v}");
}

/// The official suite's `input-required-result-*` scenarios (0.2.0-alpha), which call tools of its own and
/// expect the server's keys and sealed state.
const INPUT_REQUIRED_SCENARIOS: &[&str] = &[
    "input-required-result-basic-elicitation",
    "input-required-result-basic-sampling",
    "input-required-result-basic-list-roots",
    "input-required-result-request-state",
    "input-required-result-multiple-input-requests",
    "input-required-result-multi-round",
    "input-required-result-missing-input-response",
    "input-required-result-non-tool-request",
    "input-required-result-result-type",
    "input-required-result-unsupported-methods",
    "input-required-result-tampered-state",
    "input-required-result-capability-check",
    "input-required-result-ignore-extra-params",
    "input-required-result-validate-input",
];

fn input_required_scenarios(url: &str, token: Option<&str>) {
    let mut cmd = Command::new(deps::repo_root().join("scripts/conformance"));
    cmd.args([url, "--revision", MODERN]).env("CATWALK_TEST_DEPS", deps::deps_dir());
    for s in INPUT_REQUIRED_SCENARIOS {
        cmd.args(["--scenario", s]);
    }
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let (ok, stdout, stderr) =
        deps::run_with_timeout("conformance input-required", &mut cmd, Duration::from_secs(300));
    assert!(ok, "input-required-result scenarios failed against {url}:\n{stdout}\n{stderr}");
}

/// A stdio server on the Python SDK 2.x implementing the scenarios' tools passes all of them served
/// directly (its own Streamable HTTP) and through catwalk (stdio behind the daemon, with a token): catwalk
/// learns that it speaks 2026-07-28 and passes its rounds through as they are.
#[test]
fn the_suites_input_required_scenarios_pass_through_catwalk_as_they_do_directly() {
    let python = deps::deps_dir().join("venv-mcp2/bin/python");
    let fixture = deps::repo_root().join("tests/fixtures/conformance_modern_server.py");
    let (_server, direct) =
        deps::python_mcp2_http_fixture("conformance_modern_server.py", &["--http", "{port}"]);
    input_required_scenarios(&direct, None);

    let d = daemon::Daemon::start_with_config(&format!(
        "[apps.modern]\ncommand = [{:?}, {:?}]\n",
        python.display().to_string(),
        fixture.display().to_string()
    ));
    let token = d.token("modern");
    input_required_scenarios(&d.endpoint("modern"), Some(&token));
}
