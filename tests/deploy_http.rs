//! `transport = "http"` servers on the local runtime, end to end: a real npm server
//! (`@modelcontextprotocol/server-everything streamableHttp`) pushed over SSH, served at `/mcp/APP`
//! through the gateway's proxy, supervised (a killed process comes back), blue/green with sessions
//! pinned to the release that created them, scale to zero and wake, fixed ports, and the refusals.

use crate::daemon;
use crate::deps;
use crate::mcp;

use std::time::{Duration, Instant};

use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use mcp::Mcp;
use serde_json::{Value, json};

fn push(wt: &WorkTree, d: &Daemon) -> (bool, String) {
    let out = wt.push(d, &d.admin, &["catwalk", "main"]);
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn app_log(d: &Daemon, app: &str) -> String {
    ok(&d.ssh(&d.admin, &format!("logs {app} -n 1000"), ""))
}

/// Waits (generously) until the app log satisfies `cond`; returns the log.
fn wait_app_log(d: &Daemon, app: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = app_log(d, app);
        if cond(&log) {
            return log;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; app log:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pids from `started process PID for release vN` lines, in order.
fn started_pids(log: &str, release: u32) -> Vec<i32> {
    let marker = format!(" for release v{release} on port ");
    log.lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| l.split("started process ").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn everything_version() -> String {
    let text = std::fs::read_to_string(
        deps::node_modules().join("@modelcontextprotocol/server-everything/package.json"),
    )
    .expect("server-everything is installed by scripts/test-deps");
    serde_json::from_str::<Value>(&text).unwrap()["version"].as_str().unwrap().to_string()
}

/// A work tree whose catwalk.toml runs server-everything over Streamable HTTP (`extra` is appended
/// to `[server]`).
fn http_app(d: &Daemon, app: &str, extra: &str) -> WorkTree {
    let wt = WorkTree::new(d.tmp.path(), app);
    wt.git(&["rm", "-q", "server.py"]);
    wt.commit(
        "catwalk.toml",
        &format!(
            "[server]\npackage = \"npm:@modelcontextprotocol/server-everything@{}\"\nargs = [\"streamableHttp\"]\ntransport = \"http\"\npath = \"/mcp\"\n{extra}",
            everything_version()
        ),
    );
    wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
    wt
}

async fn echo(c: &mut Mcp, text: &str) {
    let got = c.call_text("echo", json!({"message": text})).await;
    assert!(got.contains(text), "echo answered {got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_server_is_supervised_and_switches_blue_green() {
    // drain_grace: a retired release stops once it had no request for that long. The v1 session below must
    // reach v1 after the v2 push; a loaded machine can take more than a second between the switch and that
    // request, so the grace is generous (it only lengthens the wait for v1 to stop at the end).
    let d = Daemon::start_with_config("[deploy]\nidle_timeout = \"0s\"\ndrain_grace = \"10s\"\n");
    let wt = http_app(&d, "web", "");
    let (pushed, output) = push(&wt, &d);
    assert!(pushed, "{output}");
    for expected in ["(http /mcp)", "healthy in", "echo", &format!("live at {}", d.endpoint("web"))] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
    let token = d.token("web");

    // The health gate's process is the one that serves: no second start for the first request.
    let mut first = Mcp::new(&d.endpoint("web"), Some(&token));
    assert_eq!(first.initialize().await.status, 200);
    echo(&mut first, "one").await;
    let log = app_log(&d, "web");
    let v1_pids = started_pids(&log, 1);
    assert_eq!(v1_pids.len(), 1, "one v1 process expected:\n{log}");
    let info = ok(&d.ssh(&d.admin, "info web", ""));
    assert!(info.contains("(release v1): running"), "{info}");

    // Supervision: a process killed from outside comes back (with backoff) and serves again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(v1_pids[0]), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the server");
    let log = wait_app_log(&d, "web", "the restart", |l| started_pids(l, 1).len() == 2);
    assert!(log.contains("exited on its own"), "{log}");
    assert!(log.contains("restarting in"), "{log}");
    let mut pinned = Mcp::new(&d.endpoint("web"), Some(&token));
    assert_eq!(pinned.initialize().await.status, 200, "a new session after the restart");
    echo(&mut pinned, "two").await;
    let v1_pid = started_pids(&app_log(&d, "web"), 1)[1];

    // Blue/green: v2 starts on its own port beside v1; the v1 session keeps reaching v1.
    wt.commit("README.md", "v2\n");
    let (pushed, output) = push(&wt, &d);
    assert!(pushed, "{output}");
    assert!(output.contains("re-used an identical install"), "{output}");
    assert!(output.contains("release v2 healthy"), "{output}");
    assert!(alive(v1_pid), "v1 must keep serving its sessions while they are active");
    echo(&mut pinned, "still on v1").await;
    let mut fresh = Mcp::new(&d.endpoint("web"), Some(&token));
    assert_eq!(fresh.initialize().await.status, 200);
    echo(&mut fresh, "on v2").await;
    assert_ne!(fresh.session, pinned.session);

    // Once v1's sessions are gone and it was quiet for drain_grace, its process stops.
    // (`first` is not closed: its session id stays pinned to v1, which must not keep v1 alive.)
    pinned.close().await;
    let log = wait_app_log(&d, "web", "v1 to drain", |l| l.contains("release v1: replaced and drained"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(v1_pid) {
        assert!(Instant::now() < deadline, "v1 process {v1_pid} still alive:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    echo(&mut fresh, "v2 unaffected").await;

    // A client still holding a v1 session id now reaches v2 (not a 503 from the stopped v1), which
    // does not know the session (server-everything answers 400 "No valid session ID"; the spec's 404
    // would do too), so the client re-initializes.
    let stale = first.request("tools/list", json!({})).await;
    assert!(
        stale.status == 400 || stale.status == 404,
        "stale session answered {}: {}",
        stale.status,
        stale.body
    );

    // Destroy stops the server.
    let v2_pid = started_pids(&app_log(&d, "web"), 2)[0];
    ok(&d.ssh(&d.admin, "apps destroy web --confirm web", ""));
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(v2_pid) {
        assert!(Instant::now() < deadline, "v2 process {v2_pid} survived apps destroy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_server_scales_to_zero_fixed_ports_and_refusals() {
    let d = Daemon::start_with_config(
        "[deploy]\nidle_timeout = \"1s\"\ndrain_grace = \"1s\"\nhealth_timeout = \"20s\"\n",
    );
    let wt = http_app(&d, "sleepy", "");
    let (pushed, output) = push(&wt, &d);
    assert!(pushed, "{output}");
    let token = d.token("sleepy");

    // Idle for a second: the process stops; the next request starts it and waits for it.
    let log = wait_app_log(&d, "sleepy", "scale to zero", |l| l.contains("(scale to zero)"));
    let pid = started_pids(&log, 1)[0];
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive after scaling to zero");
        std::thread::sleep(Duration::from_millis(100));
    }
    let info: Value = serde_json::from_str(&ok(&d.local(&["info", "sleepy", "--json"], ""))).unwrap();
    assert!(info["server"]["state"].as_str().unwrap().starts_with("asleep"), "{info}");
    let mut c = Mcp::new(&d.endpoint("sleepy"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    echo(&mut c, "woken").await;
    assert_eq!(started_pids(&app_log(&d, "sleepy"), 1).len(), 2, "{}", app_log(&d, "sleepy"));
    c.close().await;

    // A fixed port: the old release stops before the new one starts on the same port.
    let port = deps::free_port();
    let fixed = http_app(&d, "fixed", &format!("port = {port}\n"));
    let (pushed, output) = push(&fixed, &d);
    assert!(pushed, "{output}");
    assert!(output.contains(&format!("(http :{port}/mcp)")), "{output}");
    let token_fixed = d.token("fixed");
    let mut c = Mcp::new(&d.endpoint("fixed"), Some(&token_fixed));
    assert_eq!(c.initialize().await.status, 200);
    echo(&mut c, "fixed v1").await;
    c.close().await;
    fixed.commit("README.md", "v2\n");
    let (pushed, output) = push(&fixed, &d);
    assert!(pushed, "{output}");
    assert!(output.contains(&format!("port {port} is fixed by the manifest: stopping v1")), "{output}");
    let mut c = Mcp::new(&d.endpoint("fixed"), Some(&token_fixed));
    assert_eq!(c.initialize().await.status, 200);
    echo(&mut c, "fixed v2").await;
    c.close().await;

    // Refused: a fixed port someone else listens on. The ref and the live release stay.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let before = d.server_ref("sleepy", "main");
    wt.commit(
        "catwalk.toml",
        &std::fs::read_to_string(wt.path.join("catwalk.toml"))
            .unwrap()
            .replace("path = \"/mcp\"\n", &format!("path = \"/mcp\"\nport = {taken}\n")),
    );
    let (pushed, output) = push(&wt, &d);
    assert!(!pushed, "{output}");
    assert!(output.contains(&format!("port {taken} is already in use")), "{output}");
    assert_eq!(d.server_ref("sleepy", "main"), before);
    drop(squatter);

    // Refused: a server that never listens on $PORT (server-everything in stdio mode) fails its gate.
    wt.commit(
        "catwalk.toml",
        &std::fs::read_to_string(wt.path.join("catwalk.toml"))
            .unwrap()
            .replace("args = [\"streamableHttp\"]\n", "args = [\"stdio\"]\n")
            .replace(&format!("port = {taken}\n"), ""),
    );
    let (pushed, output) = push(&wt, &d);
    assert!(!pushed, "{output}");
    assert!(output.contains("did not listen on 127.0.0.1:"), "{output}");
    assert!(output.contains("$PORT"), "{output}");
    assert_eq!(d.server_ref("sleepy", "main"), before);
    let mut c = Mcp::new(&d.endpoint("sleepy"), Some(&token));
    assert_eq!(c.initialize().await.status, 200, "the live release still answers");
    echo(&mut c, "still live").await;
    c.close().await;
}
