//! Graceful shutdown: SIGTERM during a push lets it finish (or, past the grace period, stops it with the
//! ref unchanged), refuses new connections, and exits.

use crate::daemon;

use daemon::{ChildGuard, Daemon, WorkTree, ok};

#[test]
fn sigterm_during_a_push_lets_it_finish_then_exits() {
    let mut d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "w");
    let url = d.remote_url("app");
    let sha = wt.commit("a", "1\n");
    let gate = d.tmp.path().join("gate");
    let held = ChildGuard(Some(wt.push_held(&d, &d.admin, &gate, &[&url, "main"])));
    d.wait_log("push to app by admin: started");

    d.sigterm();
    d.wait_log("shutting down: waiting up to");
    // No new connections once shutdown started.
    let out = d.ssh(&d.admin, "whoami", "");
    assert!(!out.status.success(), "a new connection was served during shutdown");

    // The running push completes (its hooks still reach the control socket), then the daemon exits.
    std::fs::write(&gate, "").unwrap();
    let out = held.wait();
    ok(&out);
    let status = d.wait_exit();
    assert!(status.success(), "daemon exit status {status:?}");
    assert_eq!(d.server_ref("app", "main").as_deref(), Some(sha.as_str()));
    assert!(!d.dir.join("control.sock").exists(), "control socket left behind");
}

#[test]
fn sigterm_past_the_grace_period_stops_the_push_and_keeps_the_ref() {
    let mut d = Daemon::start_with_config("[daemon]\nshutdown_grace = \"1s\"\n");
    let wt = WorkTree::new(d.tmp.path(), "w");
    let url = d.remote_url("app");
    let first = wt.commit("a", "1\n");
    ok(&wt.push(&d, &d.admin, &[&url, "main"]));
    wt.commit("a", "2\n");
    let gate = d.tmp.path().join("never-opened");
    let held = ChildGuard(Some(wt.push_held(&d, &d.admin, &gate, &[&url, "main"])));
    d.wait_log_count("push to app by admin: started", 2);

    d.sigterm();
    let status = d.wait_exit();
    assert!(status.success(), "daemon exit status {status:?}");
    d.wait_log("still running after");
    // The push did not land: the ref is the previous one, and the repository is intact.
    assert_eq!(d.server_ref("app", "main").as_deref(), Some(first.as_str()));
    std::fs::write(&gate, "").unwrap();
    let out = held.wait();
    assert!(!out.status.success(), "the stopped push must fail on the client");
}
