//! Proves the test harness itself: dependencies are installed, the conformance fixture passes the MCP
//! conformance suite over the SDK's own Streamable HTTP transport, and the TS/Python SDK scenario clients
//! pass against it. The gateway's tests run the same programs against `catwalk bridge`.

use crate::deps;

use deps::ChildGuard;
use std::process::{Command, Stdio};
use std::time::Duration;

const START: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(180);

/// Starts the conformance fixture in `--http 0` mode and returns its guard and endpoint URL.
fn fixture_over_http() -> (ChildGuard, String) {
    let mut cmd = Command::new(deps::node22());
    cmd.arg(deps::conformance_fixture())
        .args(["--http", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn("conformance fixture", &mut cmd);
    let url = guard.wait_listening(START);
    (guard, url)
}

#[test]
fn test_dependencies_are_installed() {
    let node = deps::node22();
    let out = Command::new(&node).arg("--version").output().expect("run node22 --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("v22."), "{} reports {version}", node.display());
    for path in [
        deps::server_everything(),
        deps::supergateway(),
        deps::conformance_cli(),
        deps::venv_python(),
        deps::mcp_proxy(),
        deps::sshd(),
        deps::age(),
        deps::age_keygen(),
    ] {
        assert!(path.is_file(), "{} is not a file", path.display());
    }
    let py = Command::new(deps::venv_python())
        .args(["-c", "import importlib.metadata as m; print(m.version('mcp'))"])
        .output()
        .expect("run venv python");
    let mcp_version = String::from_utf8_lossy(&py.stdout);
    assert!(mcp_version.starts_with("1."), "venv has mcp {mcp_version}, want 1.x (<2)");
}

#[test]
fn conformance_fixture_passes_every_active_scenario_over_sdk_http() {
    let (_fixture, url) = fixture_over_http();
    let mut cmd = Command::new(deps::repo_root().join("scripts/conformance"));
    cmd.arg(&url);
    let (ok, stdout, stderr) = deps::run_with_timeout("scripts/conformance", &mut cmd, RUN);
    assert!(ok, "conformance suite failed against the fixture at {url}\n{stdout}\n{stderr}");
    assert!(stdout.contains("dns-rebinding-protection"), "summary lacks scenarios:\n{stdout}");
}

const FIXTURE_SCENARIOS: &str = "basic,progress,logging,sampling,elicitation,subscribe,terminate";

fn assert_client_ok(name: &str, ok: bool, stdout: &str, stderr: &str) {
    let summary: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{name} printed no JSON summary ({e}):\n{stdout}\n{stderr}"));
    assert!(ok && summary["ok"] == true, "{name} failed:\n{stdout}\n{stderr}");
    for s in FIXTURE_SCENARIOS.split(',') {
        assert_eq!(summary["scenarios"][s]["ok"], true, "{name}: scenario {s} did not pass:\n{stdout}");
    }
}

#[test]
fn typescript_sdk_client_scenarios_pass_against_fixture() {
    let (_fixture, url) = fixture_over_http();
    let mut cmd = Command::new(deps::node22());
    cmd.arg(deps::ts_client()).args(["--url", &url, "--scenario", FIXTURE_SCENARIOS]);
    let (ok, stdout, stderr) = deps::run_with_timeout("ts_client", &mut cmd, RUN);
    assert_client_ok("ts_client", ok, &stdout, &stderr);
}

#[test]
fn python_sdk_client_scenarios_pass_against_fixture() {
    let (_fixture, url) = fixture_over_http();
    let mut cmd = Command::new(deps::venv_python());
    cmd.arg(deps::py_client()).args(["--url", &url, "--scenario", FIXTURE_SCENARIOS]);
    let (ok, stdout, stderr) = deps::run_with_timeout("py_client", &mut cmd, RUN);
    assert_client_ok("py_client", ok, &stdout, &stderr);
}
