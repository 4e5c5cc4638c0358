//! A hostile MCP server inside the sandbox: every attempt to read catwalk's keys, state or other apps,
//! to see or signal the daemon, to fork-bomb, to exhaust memory or to write outside its home fails or
//! is contained; the process that spawned it (the real `catwalk bridge`, standing in for the daemon)
//! and another app keep serving, and the hostile app's own benign tool still works.
//!
//! Both identities run: `DropToUid` (the daemon is root: a real per-app uid) and `UserNamespace`
//! (the daemon is an ordinary user: uid 65534 in a user namespace).

use crate::gateway_support as gw;
use crate::isolation_support as support;

use std::path::PathBuf;

use catwalk::runtime::sandbox::{AppSandbox, Identity};
use serde_json::json;
use support::*;

const MAX_PROCESSES: u64 = 48;
const MEMORY_MB: u64 = 256;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn app_sandbox(data: &FakeData, app: &str) -> AppSandbox {
    AppSandbox {
        identity: app.into(),
        home: data.home(app),
        readonly: vec![fixtures()],
        cwd: data.home(app),
        hidden: vec![data.root()],
        ..Default::default()
    }
}

fn assert_not_leaked(what: &str, outcome: &serde_json::Value, canaries: &[&str]) {
    assert_eq!(outcome["ok"], false, "{what} succeeded from inside the sandbox: {outcome}");
    let text = outcome.to_string();
    for c in canaries {
        assert!(!text.contains(c), "{what} leaked a secret: {text}");
    }
}

/// The uid the daemon's stand-in runs as in the user-namespace case (any unprivileged, unused uid).
const DAEMON_UID: u32 = 4242;

async fn hostile_attempts_are_contained(identity: Identity) {
    let data = FakeData::new();
    // A non-root daemon cannot reach a toolchain under /root; it uses the system's Python.
    let (python, daemon_uid) = match identity {
        Identity::DropToUid => (real_python(), None),
        Identity::UserNamespace => (PathBuf::from("/usr/bin/python3"), Some(DAEMON_UID)),
    };
    if let Some(uid) = daemon_uid {
        data.chown(uid);
    }
    let policy = policy(
        identity,
        |p| {
            p.max_processes = MAX_PROCESSES;
            p.memory_max = MEMORY_MB << 20;
        },
        &[&python],
    );
    let fixture = fixtures().join("hostile_server.py").to_string_lossy().into_owned();
    let py = python.to_string_lossy().into_owned();
    let argv = [py.clone(), "-u".into(), fixture];
    let hostile = sandboxed_bridge_as(&policy, &app_sandbox(&data, "hostile"), &argv, daemon_uid);
    // Another app on the same host, sandboxed the same way, serving the benign fixture.
    let benign = fixtures().join("stdio_fixture.py").to_string_lossy().into_owned();
    let other =
        sandboxed_bridge_as(&policy, &app_sandbox(&data, "other"), &[py, "-u".into(), benign], daemon_uid);
    let daemon_pid = hostile.pid();
    let other_pid = other.pid();

    let mut s = Session::open(&hostile.url).await;
    let me = s.attack("whoami", json!({})).await;
    assert_ne!(me["uid"], 0, "runs as root: {me}");
    assert_ne!(me["euid"], 0, "runs as root: {me}");
    assert_eq!(me["cap_eff"], "0000000000000000", "has capabilities: {me}");
    assert_eq!(me["cap_bnd"], "0000000000000000", "capability bounding set not empty: {me}");
    assert_eq!(me["no_new_privs"], "1", "no_new_privs not set: {me}");

    let root = data.root();
    let secrets = [AGE_CANARY, HOST_KEY_CANARY, STORE_CANARY, OTHER_APP_CANARY, ENV_CANARY];
    for (what, path) in [
        ("reading the age identity", root.join("age_identity.txt")),
        ("reading the SSH host key", root.join("ssh_host_ed25519_key")),
        ("reading the state store", root.join("state.redb")),
        ("reading the daemon's config", root.join("catwalk.toml")),
        ("reading another app's files", root.join("apps/other/home/secret.txt")),
        ("reading the daemon's environment", PathBuf::from(format!("/proc/{daemon_pid}/environ"))),
        ("reading the other app's environment", PathBuf::from(format!("/proc/{other_pid}/environ"))),
    ] {
        let outcome = s.attack("read_file", json!({"path": path})).await;
        assert_not_leaked(what, &outcome, &secrets);
    }
    // Only the path down to its own home exists (empty directories bwrap created); nothing else.
    for (dir, visible) in [(root.clone(), json!(["apps"])), (root.join("apps"), json!(["hostile"]))] {
        let outcome = s.attack("list_dir", json!({"path": dir})).await;
        assert_eq!(outcome["entries"], visible, "listing {}: {outcome}", dir.display());
    }
    let outcome = s.attack("list_dir", json!({"path": root.join("apps/other")})).await;
    assert_not_leaked("listing another app's directory", &outcome, &["secret.txt"]);
    if identity == Identity::DropToUid {
        // A real unprivileged uid: root-only system files in the visible /etc stay unreadable.
        let outcome = s.attack("read_file", json!({"path": "/etc/shadow"})).await;
        assert_eq!(outcome["ok"], false, "read /etc/shadow: {outcome}");
    }
    let procs = s.attack("list_dir", json!({"path": "/proc"})).await;
    let pids: Vec<&str> = procs["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .filter(|e| e.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert!(!pids.contains(&daemon_pid.to_string().as_str()), "the daemon is visible in /proc: {pids:?}");
    assert!(pids.len() <= 4, "processes outside the sandbox are visible: {pids:?}");

    for target in [daemon_pid, other_pid] {
        let outcome = s.attack("kill", json!({"pid": target, "signal": 9})).await;
        assert_eq!(outcome["ok"], false, "kill -9 {target} succeeded: {outcome}");
    }

    let userns = s.attack("new_userns", json!({})).await;
    assert_eq!(userns["ok"], false, "created a user namespace: {userns}");

    let bomb = s.attack("fork_bomb", json!({"max": 2000})).await;
    assert!(bomb["forked"].as_u64().unwrap() < MAX_PROCESSES, "fork bomb not contained: {bomb}");
    assert!(bomb["error"].as_str().unwrap_or("").contains("Resource temporarily unavailable"), "{bomb}");

    let mem = s.attack("allocate", json!({"mb": 4 * MEMORY_MB})).await;
    assert_eq!(mem["ok"], false, "allocated past the memory limit: {mem}");
    assert!(mem["allocated_mb"].as_u64().unwrap() < MEMORY_MB, "{mem}");
    assert!(mem["error"].as_str().unwrap_or("").contains("MemoryError"), "{mem}");

    // The data dir's skeleton inside the sandbox lives on the sandbox's private tmpfs: whatever is
    // written there (possible in the user-namespace case, where bwrap's directories belong to the
    // sandbox user) never reaches the host.
    let _ = s.attack("write_file", json!({"path": root.join("pwned")})).await;
    assert!(!root.join("pwned").exists(), "a write reached the real data dir");
    let outside = [data.home("other").join("pwned"), PathBuf::from("/usr/pwned")];
    for path in &outside {
        let outcome = s.attack("write_file", json!({"path": path})).await;
        assert_eq!(outcome["ok"], false, "wrote {}: {outcome}", path.display());
        assert!(!path.exists(), "{} appeared on the host", path.display());
    }
    for path in ["/etc/pwned", "/tmp/../etc/pwned"] {
        let outcome = s.attack("write_file", json!({"path": path})).await;
        assert_eq!(outcome["ok"], false, "wrote {path}: {outcome}");
    }
    assert!(!PathBuf::from("/etc/pwned").exists());
    // Its own home is writable (and really is the app's home on the host).
    let mine = data.home("hostile").join("notes.txt");
    let outcome = s.attack("write_file", json!({"path": mine, "text": "mine"})).await;
    assert_eq!(outcome["ok"], true, "cannot write its own home: {outcome}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");

    // Everything is still up: the daemon stand-in, the other app, and the hostile app's benign tool.
    assert!(gw::pid_alive(daemon_pid) && gw::pid_alive(other_pid), "a bridge died");
    assert_eq!(s.call("echo", json!({"text": "still here"})).await, (false, "still here".to_string()));
    let mut fresh = Session::open(&hostile.url).await;
    assert_eq!(fresh.call("echo", json!({"text": "new session"})).await.1, "new session");
    let mut o = Session::open(&other.url).await;
    assert_eq!(o.call("echo", json!({"text": "other app"})).await.1, "other app");
    for c in secrets {
        assert!(!hostile.stderr_text().contains(c), "a secret reached the bridge's log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_server_is_contained_with_a_per_app_uid() {
    assert_eq!(
        Identity::current(),
        Identity::DropToUid,
        "this test exercises the root daemon's identity: run the tests as root (as CI does)"
    );
    hostile_attempts_are_contained(Identity::DropToUid).await;
}

/// The daemon as an ordinary user (the systemd unit's case): the bridge runs as uid 4242.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_server_is_contained_in_a_user_namespace() {
    hostile_attempts_are_contained(Identity::UserNamespace).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_none_leaves_only_loopback() {
    let data = FakeData::new();
    let python = real_python();
    let policy =
        policy(Identity::current(), |p| p.network = catwalk::runtime::sandbox::Network::None, &[&python]);
    let fixture = fixtures().join("hostile_server.py").to_string_lossy().into_owned();
    let bridge = sandboxed_bridge(
        &policy,
        &app_sandbox(&data, "offline"),
        &[python.to_string_lossy().into_owned(), "-u".into(), fixture],
    );
    // The bridge's own port on the host's loopback is not reachable from a private network namespace.
    let port: u16 = bridge.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = Session::open(&bridge.url).await;
    let outcome = s.attack("connect", json!({"host": "127.0.0.1", "port": port})).await;
    assert_eq!(outcome["ok"], false, "reached the host's loopback: {outcome}");
    assert_eq!(s.call("echo", json!({"text": "ok"})).await.1, "ok");
}

/// Strict mode: the daemon's own ports are unreachable (Landlock TCP rules); other ports still work.
#[tokio::test(flavor = "multi_thread")]
async fn strict_mode_blocks_the_daemons_ports() {
    let daemon_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = daemon_port.local_addr().unwrap().port();
    let allowed = api.local_addr().unwrap().port();
    let data = FakeData::new();
    let python = real_python();
    let policy = policy(
        Identity::current(),
        |p| {
            p.mode = catwalk::runtime::sandbox::SandboxMode::Strict;
            *p = p.clone().with_protected_ports(&[blocked]);
        },
        &[&python],
    );
    let fixture = fixtures().join("hostile_server.py").to_string_lossy().into_owned();
    let argv = [python.to_string_lossy().into_owned(), "-u".into(), fixture];
    let bridge = sandboxed_bridge(&policy, &app_sandbox(&data, "strict"), &argv);
    let mut s = Session::open(&bridge.url).await;
    let outcome = s.attack("connect", json!({"host": "127.0.0.1", "port": blocked})).await;
    assert_eq!(outcome["ok"], false, "reached the daemon's port: {outcome}");
    assert!(outcome["error"].as_str().unwrap().contains("Permission denied"), "{outcome}");
    let outcome = s.attack("connect", json!({"host": "127.0.0.1", "port": allowed})).await;
    assert_eq!(outcome["ok"], true, "other ports must stay reachable: {outcome}");
    assert_eq!(s.call("echo", json!({"text": "strict"})).await.1, "strict");
}
