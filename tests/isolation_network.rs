//! A network namespace per sandboxed process (issue #12, "loopback bypass"), attacked through the real
//! daemon: a hostile server of one tenant knocks on another tenant's `transport = "http"` server (by the
//! port `info` shows its owner), on the daemon's SSH and HTTP ports, and on slirp's alias of the host
//! (10.0.2.2). Everything is refused; the victim still serves at `/mcp/APP`; outbound connections to the
//! internet still work (slirp4netns); and a daemon killed with SIGKILL leaves no server, supervisor or
//! slirp4netns behind. With the daemon as root (per-app uids) and as an ordinary user
//! (user namespaces, the systemd unit's setup).

use crate::daemon;
use crate::deps;
use crate::mcp;

use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use mcp::Mcp;
use serde_json::{Value, json};

fn push(wt: &WorkTree, d: &Daemon) {
    let out = wt.push(d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

fn everything_version() -> String {
    let text = std::fs::read_to_string(
        deps::node_modules().join("@modelcontextprotocol/server-everything/package.json"),
    )
    .expect("server-everything is installed by scripts/test-deps");
    serde_json::from_str::<Value>(&text).unwrap()["version"].as_str().unwrap().to_string()
}

/// The victim: server-everything over Streamable HTTP, listening on a port of its own.
fn deploy_http_victim(d: &Daemon) -> u16 {
    let wt = WorkTree::new(d.tmp.path(), "victim");
    wt.git(&["rm", "-q", "server.py"]);
    wt.commit(
        "catwalk.toml",
        &format!(
            "[server]\npackage = \"npm:@modelcontextprotocol/server-everything@{}\"\nargs = [\"streamableHttp\"]\ntransport = \"http\"\npath = \"/mcp\"\n",
            everything_version()
        ),
    );
    wt.git(&["remote", "add", "catwalk", &d.remote_url("victim")]);
    push(&wt, d);
    let info: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "info victim --json", ""))).unwrap();
    info["server"]["port"].as_u64().unwrap_or_else(|| panic!("no server port in {info}")) as u16
}

/// The attacker: tests/fixtures/hostile_server.py, whose `connect` tool opens TCP connections.
fn deploy_attacker(d: &Daemon) {
    let wt = WorkTree::new(d.tmp.path(), "attacker");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile_server.py");
    std::fs::copy(fixture, wt.path.join("hostile.py")).unwrap();
    wt.git(&["add", "hostile.py"]);
    wt.commit(
        "catwalk.toml",
        "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"-u\", \"hostile.py\"]\n",
    );
    wt.git(&["remote", "add", "catwalk", &d.remote_url("attacker")]);
    push(&wt, d);
}

async fn knock(c: &mut Mcp, host: &str, port: u16) -> Value {
    let text = c.call_text("connect", json!({"host": host, "port": port})).await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("connect answered {text}"))
}

/// Live (not zombie) descendants of `root`, with their command lines.
fn descendants(root: i32) -> Vec<(i32, String)> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next().unwrap_or(""), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if state != "Z"
            && let Some(ppid) = ppid
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found
        .into_iter()
        .skip(1)
        .map(|p| {
            (
                p,
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// A daemon killed with SIGKILL leaves nothing behind: no server, no bwrap, no supervisor, no slirp4netns.
fn nothing_outlives_a_killed_daemon(d: &mut Daemon) {
    let tree = descendants(d.pid());
    assert!(tree.iter().any(|(_, cmd)| cmd.contains("slirp4netns")), "no slirp4netns ran: {tree:?}");
    assert!(tree.iter().any(|(_, cmd)| cmd.contains("sandbox-net")), "no sandbox-net ran: {tree:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    d.wait_exit();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: Vec<_> = tree.iter().filter(|(p, _)| alive(*p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "outlived the daemon: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

async fn loopback_is_private(d: &Daemon) {
    let http_port: u16 = d.http_addr.rsplit(':').next().unwrap().parse().unwrap();
    let victim_port = deploy_http_victim(d);
    deploy_attacker(d);
    let mut attacker = Mcp::new(&d.endpoint("attacker"), Some(&d.token("attacker")));
    assert_eq!(attacker.initialize().await.status, 200);
    let targets = [
        ("127.0.0.1", victim_port, "the other app's HTTP server"),
        ("127.0.0.1", d.ssh_port, "the daemon's SSH port"),
        ("127.0.0.1", http_port, "the daemon's HTTP port"),
        ("10.0.2.2", victim_port, "the other app's port through slirp's host alias"),
        ("10.0.2.2", http_port, "the daemon's HTTP port through slirp's host alias"),
    ];
    for (host, port, what) in targets {
        let outcome = knock(&mut attacker, host, port).await;
        assert_eq!(outcome["ok"], false, "the attacker reached {what} ({host}:{port}): {outcome}");
    }
    // Its own network works: the internet (the npm registry) through slirp4netns.
    let outcome = knock(&mut attacker, "registry.npmjs.org", 443).await;
    assert_eq!(outcome["ok"], true, "no outbound network: {outcome}");
    // The victim still serves its clients through the gateway (host port → relay → its own loopback).
    let mut client = Mcp::new(&d.endpoint("victim"), Some(&d.token("victim")));
    assert_eq!(client.initialize().await.status, 200);
    let echoed = client.call_text("echo", json!({"message": "still mine"})).await;
    assert!(echoed.contains("still mine"), "{echoed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_apps_and_the_daemon_are_unreachable_as_root() {
    let mut d = Daemon::start();
    loopback_is_private(&d).await;
    nothing_outlives_a_killed_daemon(&mut d);
}

#[tokio::test(flavor = "multi_thread")]
async fn other_apps_and_the_daemon_are_unreachable_as_an_ordinary_user() {
    let mut d = Daemon::start_unprivileged("");
    loopback_is_private(&d).await;
    nothing_outlives_a_killed_daemon(&mut d);
}
