//! A push with `runtime = "fly"` through the real daemon, against the fake Machines API: the release is
//! created on a machine (the real `catwalk runner` installing the pinned PyPI package at boot), health
//! gated, switched to, and answers MCP through `/mcp/APP`; `info` and `logs` show the machine and its
//! events (and say so when Fly cannot be read); a second push replaces the machine blue/green.

use crate::daemon;
use crate::fly_daemon;
use crate::mcp;

use daemon::{Daemon, ok};
use fly_daemon::{FlyEnv, package_worktree, push, token};
use serde_json::json;
use tokio::task::block_in_place as blocking;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_with_runtime_fly_goes_live_on_a_machine() {
    let env = FlyEnv::start().await;
    let d = blocking(|| Daemon::start_with_config(&env.daemon_config("")));
    let wt = blocking(|| package_worktree(&d, "timefly", "pypi:mcp-server-time", ""));
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed, "{output}");
    assert!(output.contains("fly:") && output.contains("live at"), "{output}");
    let token = blocking(|| token(&d, "timefly"));
    let url = format!("http://{}/mcp/timefly", d.http_addr);
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    let answer = c.call_text("get_current_time", json!({"timezone": "UTC"})).await;
    assert!(answer.contains("UTC"), "{answer}");
    c.close().await;
    let rel: serde_json::Value =
        serde_json::from_str(&blocking(|| ok(&d.ssh(&d.admin, "releases timefly --json", "")))).unwrap();
    assert_eq!(rel[0]["runtime"], "fly");
    assert_eq!(rel[0]["status"], "live");

    // `info` and `logs` show the machine: id, state, region, release and its events.
    let machines = env.fake.machines("cw-timefly");
    let [(id, state, _)] = machines.as_slice() else { panic!("one machine expected: {machines:?}") };
    assert_eq!(state, "started");
    let info = blocking(|| ok(&d.ssh(&d.admin, "info timefly", "")));
    assert!(info.contains("fly app:    cw-timefly"), "{info}");
    assert!(
        info.contains(&format!("machine:    {id} started (iad) release v1; last: start (started)")),
        "{info}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&blocking(|| ok(&d.local(&["info", "timefly", "--json"], "")))).unwrap();
    assert_eq!(json["fly"]["machines"][0]["id"], id.as_str());
    assert_eq!(json["fly"]["machines"][0]["state"], "started");
    assert_eq!(json["fly"]["machines"][0]["release"], 1);
    let logs = blocking(|| ok(&d.ssh(&d.admin, "logs timefly", "")));
    assert!(logs.contains(&format!("fly    machine {id}: start (started)")), "{logs}");
    assert!(logs.contains("release v1 is live on fly"), "{logs}");
    // With the Machines API down, both still print the rest, and say what they could not read.
    env.fake.faults(|f| f.outage = true);
    let info = blocking(|| ok(&d.ssh(&d.admin, "info timefly", "")));
    assert!(info.contains("live:       v1") && info.contains("fly: could not read machines ("), "{info}");
    assert!(info.contains("injected outage"), "{info}");
    let logs = blocking(|| ok(&d.ssh(&d.admin, "logs timefly", "")));
    assert!(logs.contains("fly: could not read machines (") && logs.contains("is live on fly"), "{logs}");
    env.fake.faults(|f| f.outage = false);

    // A second push replaces the machine blue/green and still answers.
    let (pushed, output) = blocking(|| {
        wt.git(&["commit", "-q", "--allow-empty", "-m", "again"]);
        push(&d, &wt)
    });
    assert!(pushed, "{output}");
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert!(c.call_text("get_current_time", json!({"timezone": "UTC"})).await.contains("UTC"));
    c.close().await;

    // Rolling back to v1 redeploys its plan on a new machine (v3), health-gated like a push.
    let out = blocking(|| ok(&d.ssh(&d.admin, "rollback timefly v1", "")));
    assert!(out.contains("rolling back timefly to v1"), "{out}");
    let rel: serde_json::Value =
        serde_json::from_str(&blocking(|| ok(&d.ssh(&d.admin, "releases timefly --json", "")))).unwrap();
    assert_eq!(rel[0]["version"], 3);
    assert_eq!(rel[0]["status"], "live");
    assert_eq!(rel[0]["runtime"], "fly");
    assert_eq!(rel[0]["rollback_of"], 1);
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert!(c.call_text("get_current_time", json!({"timezone": "UTC"})).await.contains("UTC"));
    c.close().await;

    // `restart` stops the live machine and starts it again; it answers afterwards.
    let out = blocking(|| ok(&d.ssh(&d.admin, "restart timefly", "")));
    assert!(out.contains("Fly machine was stopped and started again"), "{out}");
    let logs = blocking(|| ok(&d.ssh(&d.admin, "logs timefly", "")));
    assert!(logs.contains(": exit (stopped)"), "the machine's stop event is in the logs:\n{logs}");
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert!(c.call_text("get_current_time", json!({"timezone": "UTC"})).await.contains("UTC"));
    c.close().await;
}
