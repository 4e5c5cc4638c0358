//! Outside suites through catwalk (QUALITY.md C1, C2): the MCP conformance suite and the official TS and
//! Python SDK clients, against `catwalk bridge` and against the daemon's `/mcp/APP` with a bearer token.

use crate::daemon;
use crate::deps;

use std::process::{Command, Stdio};
use std::time::Duration;

use deps::ChildGuard;

const RUN: Duration = Duration::from_secs(300);
const FIXTURE_SCENARIOS: &str = "basic,progress,logging,sampling,elicitation,subscribe,terminate";
const EVERYTHING_SCENARIOS: &str =
    "basic,progress,logging,sampling,elicitation,subscribe,terminate,isolation";

/// `catwalk bridge` on a free port in front of `server`.
fn bridge(server: &[String]) -> (ChildGuard, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catwalk"));
    cmd.args(["bridge", "--listen", "127.0.0.1:0", "--"]).args(server);
    cmd.env("CATWALK_TEST_DEPS", deps::deps_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn("catwalk bridge", &mut cmd);
    let url = guard.wait_listening(Duration::from_secs(30));
    (guard, url)
}

fn fixture_argv() -> Vec<String> {
    vec![deps::node22().display().to_string(), deps::conformance_fixture().display().to_string()]
}

fn everything_argv() -> Vec<String> {
    vec![
        deps::node22().display().to_string(),
        deps::server_everything().display().to_string(),
        "stdio".into(),
    ]
}

fn conformance(url: &str, token: Option<&str>) {
    let mut cmd = Command::new(deps::repo_root().join("scripts/conformance"));
    cmd.arg(url).env("CATWALK_TEST_DEPS", deps::deps_dir());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let (ok, stdout, stderr) = deps::run_with_timeout("scripts/conformance", &mut cmd, RUN);
    assert!(ok, "conformance suite failed through catwalk at {url}\n{stdout}\n{stderr}");
    assert!(stdout.contains("dns-rebinding-protection"), "summary lacks scenarios:\n{stdout}");
}

fn client(kind: &str, url: &str, token: Option<&str>, scenarios: &str) {
    let mut cmd = match kind {
        "ts" => {
            let mut c = Command::new(deps::node22());
            c.arg(deps::ts_client());
            c
        }
        _ => {
            let mut c = Command::new(deps::venv_python());
            c.arg(deps::py_client());
            c
        }
    };
    cmd.args(["--url", url, "--scenario", scenarios]).env("CATWALK_TEST_DEPS", deps::deps_dir());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    let (ok, stdout, stderr) = deps::run_with_timeout(kind, &mut cmd, RUN);
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{kind} client printed no JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert!(ok && summary["ok"] == true, "{kind} client failed through catwalk:\n{stdout}\n{stderr}");
    for s in scenarios.split(',') {
        assert_eq!(summary["scenarios"][s]["ok"], true, "{kind}: scenario {s} did not pass:\n{stdout}");
    }
}

#[test]
fn conformance_suite_passes_through_the_bridge() {
    let (_bridge, url) = bridge(&fixture_argv());
    conformance(&url, None);
}

#[test]
fn sdk_clients_pass_through_the_bridge_fronting_server_everything() {
    let (_bridge, url) = bridge(&everything_argv());
    client("ts", &url, None, EVERYTHING_SCENARIOS);
    client("py", &url, None, "basic,progress,logging,sampling,elicitation,subscribe,terminate");
}

#[test]
fn sdk_clients_pass_through_the_bridge_fronting_the_fixture() {
    let (_bridge, url) = bridge(&fixture_argv());
    client("ts", &url, None, FIXTURE_SCENARIOS);
    client("py", &url, None, FIXTURE_SCENARIOS);
}

#[test]
fn conformance_and_sdk_clients_pass_through_the_daemon_with_a_token() {
    let argv = fixture_argv().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "[apps.conf]\ncommand = [{argv}]\nenv = {{ CATWALK_TEST_DEPS = {:?} }}\n",
        deps::deps_dir().display().to_string()
    );
    let d = daemon::Daemon::start_with_config(&config);
    let token: serde_json::Value =
        serde_json::from_str(&daemon::ok(&d.ssh(&d.admin, "tokens create conf --json", ""))).unwrap();
    let token = token["token"].as_str().unwrap();
    let url = format!("http://{}/mcp/conf", d.http_addr);
    conformance(&url, Some(token));
    client("ts", &url, Some(token), FIXTURE_SCENARIOS);
    client("py", &url, Some(token), FIXTURE_SCENARIOS);
}
