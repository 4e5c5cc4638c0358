//! Limits a hostile tenant or client runs into (issue #12): `/metrics` grows no series for made-up app
//! names (and so lists none of them), and a deployer key cannot own more apps than
//! `[deploy] max_apps_per_deployer`, by `apps create` or by a first push; admins are exempt.

use crate::daemon;

use daemon::{Daemon, Key, WorkTree, ok, stderr, stdout};

fn add_deployer(d: &Daemon, name: &str) -> Key {
    let key = Key::generate(d.tmp.path(), name);
    ok(&d.ssh(&d.admin, &format!("keys add {name} --role deployer"), &key.public_text()));
    key
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_label_only_existing_apps() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "known");
    ok(&wt.push(&d, &d.admin, &[&d.remote_url("known"), "main"]));
    let c = reqwest::Client::new();
    for i in 0..40 {
        let r = c.post(format!("http://{}/mcp/probe-{i}", d.http_addr)).body("{}").send().await.unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let r = c.post(format!("http://{}/mcp/known", d.http_addr)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let metrics =
        c.get(format!("http://{}/metrics", d.http_addr)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("probe-"), "made-up app names became series:\n{metrics}");
    assert!(metrics.contains("app=\"(unknown)\""), "{metrics}");
    assert!(metrics.contains("app=\"known\""), "{metrics}");
}

#[test]
fn a_deployer_key_owns_at_most_max_apps_per_deployer() {
    let d = Daemon::start_with_config("[deploy]\nmax_apps_per_deployer = 2\n");
    let bob = add_deployer(&d, "bob");
    ok(&d.ssh(&bob, "apps create one", ""));
    let wt = WorkTree::new(d.tmp.path(), "bobs");
    ok(&wt.push(&d, &bob, &[&d.remote_url("two"), "main"]));
    let refused = d.ssh(&bob, "apps create three", "");
    assert_eq!(refused.status.code(), Some(1));
    let text = stderr(&refused);
    assert!(text.contains("bob already owns 2 apps") && text.contains("max_apps_per_deployer = 2"), "{text}");
    let push = wt.push(&d, &bob, &[&d.remote_url("four"), "main"]);
    let output = format!("{}{}", stdout(&push), stderr(&push));
    assert!(!push.status.success() && output.contains("bob already owns 2 apps"), "{output}");
    assert_eq!(d.server_ref("four", "main"), None);
    assert!(stderr(&d.ssh(&bob, "info four", "")).contains("no app named four"));
    // Destroying one frees a place; admins are not limited.
    ok(&d.ssh(&bob, "apps destroy one --confirm one", ""));
    ok(&d.ssh(&bob, "apps create three", ""));
    for name in ["a1", "a2", "a3"] {
        ok(&d.ssh(&d.admin, &format!("apps create {name}"), ""));
    }
}

/// Reads until the server closes the connection (or 60 s pass: then it never did).
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Slow clients (slowloris): one that stops in the middle of the HTTP/2 preface, one that never ends its
/// request line's headers, one that sends nothing. Each is disconnected after `header_read_timeout`
/// while the daemon keeps answering others.
#[test]
fn slow_clients_are_disconnected() {
    use std::io::Write;
    let d = Daemon::start_with_config("[http]\nheader_read_timeout = \"1s\"\n");
    let partial: [&[u8]; 3] =
        [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r", b"POST /mcp/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1", b""];
    let mut held = Vec::new();
    for bytes in partial {
        let mut s = std::net::TcpStream::connect(&d.http_addr).unwrap();
        s.write_all(bytes).unwrap();
        held.push(s);
    }
    for (s, bytes) in held.iter_mut().zip(partial) {
        assert!(
            closed_by_server(s),
            "a client that sent {:?} was never disconnected",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(ok_healthz(&d.http_addr));
}

/// `max_connections_per_ip`: the connection over the cap is closed at once; closing one frees a place.
#[test]
fn connections_per_address_are_capped() {
    let d = Daemon::start_with_config("[http]\nmax_connections_per_ip = 3\nheader_read_timeout = \"60s\"\n");
    let held: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(&d.http_addr).unwrap()).collect();
    let mut extra = std::net::TcpStream::connect(&d.http_addr).unwrap();
    assert!(closed_by_server(&mut extra), "the connection over the cap was kept");
    drop(held);
    let mut tries = 0;
    while !ok_healthz(&d.http_addr) {
        tries += 1;
        assert!(tries < 100, "no place came free after closing the held connections");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn ok_healthz(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// `[gateway] max_sessions_per_app`: one token cannot start more server processes than that; the next
/// `initialize` gets a 503 with a JSON-RPC error saying why and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_per_app_are_capped() {
    let d = Daemon::start_with_config("[gateway]\nmax_sessions_per_app = 2\n");
    let wt = WorkTree::new(d.tmp.path(), "capped");
    ok(&wt.push(&d, &d.admin, &[&d.remote_url("capped"), "main"]));
    let token = d.token("capped");
    let c = reqwest::Client::new();
    let init = || {
        c.post(d.endpoint("capped"))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(init().await.unwrap().status(), 200);
    }
    let refused = init().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("already has 2 open sessions"), "{body}");
}
