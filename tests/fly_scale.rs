//! Scale to zero over 6PN through the real daemon, against the fake Machines API: with
//! `idle_timeout = "2s"` the live machine is stopped when idle, an MCP request through `/mcp/APP`
//! starts it again and waits for it, an open SSE stream keeps it running, and after a daemon restart
//! the restored route still wakes (and still stops) its machine.

use crate::daemon;
use crate::fly_daemon;
use crate::mcp;

use std::time::{Duration, Instant};

use daemon::{Daemon, ok};
use fly_daemon::{FlyEnv, package_worktree, push, token};
use serde_json::json;
use tokio::task::block_in_place as blocking;

const APP: &str = "sleepy";
const FLY_APP: &str = "cw-sleepy";

/// A fresh MCP session calls a tool (the first request may have to start the machine).
async fn call_time(url: &str, token: &str) {
    let mut c = mcp::Mcp::new(url, Some(token));
    let init = c.initialize().await;
    assert_eq!(init.status, 200, "initialize: {}", init.body);
    let answer = c.call_text("get_current_time", json!({"timezone": "UTC"})).await;
    assert!(answer.contains("UTC"), "{answer}");
    c.close().await;
}

/// Like [`call_time`], retrying while the route is not there yet (restored in the background after
/// a daemon restart).
async fn call_time_when_routed(url: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut c = mcp::Mcp::new(url, Some(token));
        let init = c.initialize().await;
        if init.status == 200 {
            let answer = c.call_text("get_current_time", json!({"timezone": "UTC"})).await;
            assert!(answer.contains("UTC"), "{answer}");
            c.close().await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restored route never answered: {} {}",
            init.status,
            init.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new session with its GET stream open. (Retried: the machine may be stopped again between the
/// initialize and the GET if the test runs slowly; the restarted server then no longer knows the session.)
async fn open_stream(url: &str, token: &str) -> (mcp::Mcp, reqwest::Response) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut c = mcp::Mcp::new(url, Some(token));
        let init = c.initialize().await;
        assert_eq!(init.status, 200, "initialize: {}", init.body);
        let stream = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.clone().unwrap())
            .header("mcp-protocol-version", "2025-06-18")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if stream.status().as_u16() == 200 {
            return (c, stream);
        }
        assert!(Instant::now() < deadline, "the GET stream never opened: HTTP {}", stream.status());
    }
}

fn app_logs(d: &Daemon) -> String {
    ok(&d.ssh(&d.admin, &format!("logs {APP} -n 200"), ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_machine_stops_and_the_next_request_starts_it() {
    let env = FlyEnv::start().await;
    let mut d = blocking(|| Daemon::start_with_config(&env.daemon_config("idle_timeout = \"2s\"\n")));
    let wt = blocking(|| package_worktree(&d, APP, "pypi:mcp-server-time", ""));
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed, "{output}");
    let token = blocking(|| token(&d, APP));
    let url = format!("http://{}/mcp/{APP}", d.http_addr);

    // Nothing in flight: the machine is stopped (scale to zero) ...
    let id = env.wait_machine_state(FLY_APP, "stopped").await;
    assert!(!env.fake.process_alive(FLY_APP, &id));
    // ... and a request starts it again and gets its answer.
    call_time(&url, &token).await;
    let logs = blocking(|| app_logs(&d));
    assert!(
        logs.contains(&format!("machine {id} stopped after")) && logs.contains("(scale to zero)"),
        "{logs}"
    );
    assert!(logs.contains(&format!("machine {id} started on demand in")), "{logs}");

    // An open SSE stream is a request in flight: the machine keeps running while it is open.
    env.wait_machine_state(FLY_APP, "stopped").await;
    let (mut c, stream) = open_stream(&url, &token).await;
    let stops = |logs: &str| logs.matches("(scale to zero)").count();
    let stops_before = stops(&blocking(|| app_logs(&d)));
    // Several idle periods pass with the stream open (this can only fail if the stream is ignored).
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(env.fake.machines(FLY_APP)[0].1, "started", "stopped under an open stream");
    assert!(env.fake.process_alive(FLY_APP, &id));
    assert_eq!(stops(&blocking(|| app_logs(&d))), stops_before);
    // The same session still works; once the stream closes, the machine stops again.
    assert!(c.call_text("get_current_time", json!({"timezone": "UTC"})).await.contains("UTC"));
    drop(stream);
    c.close().await;
    env.wait_machine_state(FLY_APP, "stopped").await;

    // After a daemon restart the restored route starts the stopped machine on demand ...
    blocking(|| d.kill9_and_restart());
    let url = format!("http://{}/mcp/{APP}", d.http_addr);
    call_time_when_routed(&url, &token).await;
    // ... and a machine that was running when the daemon restarted is still stopped when idle.
    blocking(|| d.kill9_and_restart());
    env.wait_machine_state(FLY_APP, "stopped").await;
    let url = format!("http://{}/mcp/{APP}", d.http_addr);
    call_time_when_routed(&url, &token).await;
    let logs = blocking(|| app_logs(&d));
    assert!(logs.contains(&format!("machine {id} stopped after")), "{logs}");
    assert!(logs.contains(&format!("machine {id} started on demand in")), "{logs}");
}
