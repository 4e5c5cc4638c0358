//! End to end through a real push: a hostile repository deployed on the real daemon runs sandboxed (the
//! push prints no "without a sandbox" warning), cannot read the daemon's keys, store or another app,
//! cannot see or kill the daemon, and the daemon and the other app keep serving.

use crate::daemon;
use crate::mcp;

use daemon::{Daemon, WorkTree, stderr, stdout};
use mcp::Mcp;
use serde_json::{Value, json};

fn deploy(d: &Daemon, app: &str, hostile: bool) -> String {
    let wt = WorkTree::new(d.tmp.path(), app);
    if hostile {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile_server.py");
        std::fs::copy(fixture, wt.path.join("server.py")).unwrap();
        wt.git(&["commit", "-q", "-am", "hostile"]);
    }
    wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
    let out = wt.push(d, &d.admin, &["catwalk", "main"]);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "push of {app} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_hostile_server_is_contained() {
    let d = Daemon::start();
    let victim_output = deploy(&d, "victim", false);
    let hostile_output = deploy(&d, "hostile", true);
    for output in [&victim_output, &hostile_output] {
        assert!(!output.contains("without a sandbox"), "the daemon deployed unsandboxed:\n{output}");
    }
    let url = |app: &str| format!("http://{}/mcp/{app}", d.http_addr);
    let mut h = Mcp::new(&url("hostile"), Some(&d.token("hostile")));
    assert_eq!(h.initialize().await.status, 200);
    let mut attack = async |tool: &str, args: Value| -> Value {
        let text = h.call_text(tool, args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: {e}: {text}"))
    };
    let me = attack("whoami", json!({})).await;
    assert_ne!(me["uid"], 0, "{me}");
    assert_eq!(me["cap_eff"], "0000000000000000", "{me}");
    let dir = d.dir.clone();
    let daemon_pid = d.pid();
    let victim_files = dir.join("apps/victim");
    for path in [
        dir.join("age_identity.txt"),
        dir.join("ssh_host_ed25519_key"),
        dir.join("state.redb"),
        dir.join("catwalk.toml"),
        dir.join("repos/victim.git/config"),
        std::path::PathBuf::from(format!("/proc/{daemon_pid}/environ")),
    ] {
        let outcome = attack("read_file", json!({"path": path})).await;
        assert_eq!(outcome["ok"], false, "read {}: {outcome}", path.display());
    }
    let outcome = attack("list_dir", json!({"path": victim_files})).await;
    assert_eq!(outcome["ok"], false, "listed the other app's directory: {outcome}");
    let outcome = attack("kill", json!({"pid": daemon_pid, "signal": 9})).await;
    assert_eq!(outcome["ok"], false, "killed the daemon: {outcome}");

    // The daemon and the other app keep serving; the hostile app's own tool still works.
    assert_eq!(h.call_text("echo", json!({"text": "still here"})).await, "still here");
    let mut v = Mcp::new(&url("victim"), Some(&d.token("victim")));
    assert_eq!(v.initialize().await.status, 200);
    assert_eq!(v.call_text("echo", json!({"text": "victim ok"})).await, "victim ok");
}

/// The daemon applies `[sandbox]` from its config; without a sandbox every push says so.
#[tokio::test(flavor = "multi_thread")]
async fn every_push_warns_when_servers_run_unsandboxed() {
    let d = Daemon::start_with_config("[sandbox]\nmode = \"off\"\n");
    let output = deploy(&d, "plain", false);
    assert!(output.contains("WARNING: servers run without a sandbox: [sandbox] mode = \"off\""), "{output}");
}
