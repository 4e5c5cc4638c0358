//! An app on several Fly machines (`[deploy] machines = N`), through the real daemon against the fake
//! Machines API: a push stages and gates every machine (a release runs on all of them or on none),
//! 2026-07-28 requests are spread across the machines while a 2025 session stays on the machine that
//! holds it, `info` and `restart` cover every machine, a daemon restart finds them all again, and with
//! scale to zero each machine sleeps on its own: a request wakes one, and another is started in the
//! background only when the awake ones are busy.

use crate::daemon;
use crate::fly_daemon;
use crate::gateway_modern::tool_text;
use crate::mcp;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use daemon::{Daemon, WorkTree, ok};
use fly_daemon::{FlyEnv, push, token};
use serde_json::json;
use tokio::task::block_in_place as blocking;

/// The stdio fixture (its `pid` tool names the process that answers) as `app`, on `machines` machines.
fn fixture_on_machines(d: &Daemon, app: &str, machines: u32) -> WorkTree {
    let wt = WorkTree::new(d.tmp.path(), app);
    set_machines(&wt, machines);
    wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
    wt
}

fn set_machines(wt: &WorkTree, machines: u32) {
    std::fs::write(
        wt.path.join("catwalk.toml"),
        format!(
            "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n[deploy]\nmachines = {machines}\n"
        ),
    )
    .unwrap();
    wt.git(&["commit", "-q", "-am", &format!("{machines} machines")]);
}

/// The pids that answer `count` 2026-07-28 `tools/call pid` requests, one after the other.
async fn modern_pids(url: &str, token: &str, count: u64) -> BTreeSet<String> {
    let c = reqwest::Client::new();
    let mut pids = BTreeSet::new();
    for id in 0..count {
        pids.insert(tool_text(&c, url, Some(token), id + 1, "pid", json!({})).await);
    }
    pids
}

/// Like [`modern_pids`], retrying while the route is not there yet (restored in the background after a
/// daemon restart).
async fn modern_pids_when_routed(url: &str, token: &str, count: u64) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let c = reqwest::Client::new();
    loop {
        let probe = crate::gateway_modern::modern_msg(1, "tools/list", json!({}));
        let r = crate::gateway_modern::modern(&c, url, Some(token), &probe, &[]).await;
        if r.status() == 200 {
            return modern_pids(url, token, count).await;
        }
        assert!(Instant::now() < deadline, "the restored route never answered: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The states of `cw-naps`'s machines, sorted, are `want`.
fn states(env: &FlyEnv, want: &[&str]) -> bool {
    let mut s: Vec<String> = env.fake.machines("cw-naps").into_iter().map(|(_, s, _)| s).collect();
    s.sort();
    s == want
}

async fn wait_states(env: &FlyEnv, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !states(env, want) {
        assert!(Instant::now() < deadline, "machines never {want:?}: {:?}", env.fake.machines("cw-naps"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn machine_ids(env: &FlyEnv, fly_app: &str, release: &str) -> BTreeSet<String> {
    env.fake.machines(fly_app).into_iter().filter(|(_, _, r)| r == release).map(|(id, _, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modern_requests_spread_across_machines_and_sessions_stay_on_theirs() {
    let env = FlyEnv::start().await;
    let d = blocking(|| Daemon::start_with_config(&env.daemon_config("")));
    let wt = blocking(|| fixture_on_machines(&d, "wide", 3));
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed, "{output}");
    for n in 1..=3 {
        assert!(output.contains(&format!("machine ({n} of 3) started in")), "{output}");
    }
    let v1 = machine_ids(&env, "cw-wide", "1");
    assert_eq!(v1.len(), 3, "{:?}", env.fake.machines("cw-wide"));
    let token = blocking(|| token(&d, "wide"));
    let url = format!("http://{}/mcp/wide", d.http_addr);

    // Requests of no session take turns among machines that are equally idle: every machine answers.
    assert_eq!(modern_pids(&url, &token, 6).await.len(), 3, "2026-07-28 requests reach every machine");

    // A 2025 session stays on the machine that created it, whatever else arrives meanwhile.
    let mut session = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(session.initialize().await.status, 200);
    let mine = session.call_text("pid", json!({})).await;
    for _ in 0..4 {
        modern_pids(&url, &token, 1).await;
        assert_eq!(session.call_text("pid", json!({})).await, mine, "the session moved machines");
    }
    session.close().await;

    // `info` lists every machine; `restart` stops and starts them all.
    let info = blocking(|| ok(&d.ssh(&d.admin, "info wide", "")));
    for id in &v1 {
        assert!(info.contains(&format!("{id} started (iad) release v1")), "{id}:\n{info}");
    }
    let out = blocking(|| ok(&d.ssh(&d.admin, "restart wide", "")));
    assert!(out.contains("3 Fly machines were stopped and started again"), "{out}");
    assert_eq!(modern_pids(&url, &token, 6).await.len(), 3, "after the restart");

    // A release that fails on one of its machines fails as a whole: all its machines go, v1 serves on.
    env.fake.faults(|f| f.crash_loop_next = true);
    let (pushed, output) = blocking(|| {
        wt.git(&["commit", "-q", "--allow-empty", "-m", "one machine crashes"]);
        push(&d, &wt)
    });
    assert!(!pushed, "{output}");
    assert!(output.contains("destroyed (release failed)"), "{output}");
    let left: Vec<_> = env.fake.machines("cw-wide").into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(left.into_iter().collect::<BTreeSet<_>>(), v1, "only v1's machines are left");
    assert_eq!(modern_pids(&url, &token, 6).await.len(), 3, "v1 still serves on its three machines");

    // Fewer machines in the next release: blue/green replaces all three with two.
    let (pushed, output) = blocking(|| {
        set_machines(&wt, 2);
        push(&d, &wt)
    });
    assert!(pushed, "{output}");
    assert_eq!(output.matches("stopped and destroyed").count(), 3, "{output}");
    let v3 = machine_ids(&env, "cw-wide", "3");
    assert_eq!(v3.len(), 2, "{:?}", env.fake.machines("cw-wide"));
    assert_eq!(env.fake.machines("cw-wide").len(), 2, "{:?}", env.fake.machines("cw-wide"));
    assert_eq!(modern_pids(&url, &token, 4).await.len(), 2);

    // After a daemon restart the route is read back from Fly with both machines.
    let mut d = d;
    blocking(|| d.kill9_and_restart());
    let url = format!("http://{}/mcp/wide", d.http_addr);
    assert_eq!(modern_pids_when_routed(&url, &token, 4).await.len(), 2, "both machines after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_machine_sleeps_on_its_own_and_a_busy_app_wakes_another() {
    let env = FlyEnv::start().await;
    let d = blocking(|| Daemon::start_with_config(&env.daemon_config("idle_timeout = \"2s\"\n")));
    let wt = blocking(|| fixture_on_machines(&d, "naps", 2));
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed, "{output}");
    let token = blocking(|| token(&d, "naps"));
    let url = format!("http://{}/mcp/naps", d.http_addr);
    // Idle: both machines stop.
    wait_states(&env, &["stopped", "stopped"]).await;

    // A session wakes one machine only; its open GET stream keeps that one busy (and awake).
    let mut session = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(session.initialize().await.status, 200);
    assert!(states(&env, &["started", "stopped"]), "{:?}", env.fake.machines("cw-naps"));
    let stream = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session.session.clone().unwrap())
        .header("mcp-protocol-version", "2025-06-18")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // With every awake machine busy, the next request is answered at once by the awake one, and the
    // sleeping machine is started in the background for what follows.
    let c = reqwest::Client::new();
    assert!(!tool_text(&c, &url, Some(&token), 1, "pid", json!({})).await.is_empty());
    wait_states(&env, &["started", "started"]).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // (The event is written once the machine's server answers, a moment after Fly says started.)
        let logs = blocking(|| ok(&d.ssh(&d.admin, "logs naps -n 200", "")));
        if logs.matches("started on demand in").count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the second machine was not started on demand:\n{logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once nothing is in flight, both fall asleep again.
    drop(stream);
    session.close().await;
    wait_states(&env, &["stopped", "stopped"]).await;
}
