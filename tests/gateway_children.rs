//! Child process management of the stdio bridge: one child per session, shared mode with id
//! rewriting, reaping of abandoned sessions, crashes, environment isolation.

use crate::gateway_support;

use std::time::Duration;

use gateway_support::*;
use serde_json::{Value, json};

async fn pid_of(c: &reqwest::Client, url: &str, sid: &str, id: u64) -> u32 {
    call_text(c, url, sid, id, "pid", json!({})).await.parse().unwrap()
}

#[tokio::test]
async fn one_child_per_session_and_delete_kills_it() {
    let b = Bridge::start(&[]);
    let c = client();
    let a = init(&c, &b.url, "2025-06-18").await;
    let z = init(&c, &b.url, "2025-06-18").await;
    assert_ne!(a, z);
    let pa = pid_of(&c, &b.url, &a, 2).await;
    let pz = pid_of(&c, &b.url, &z, 2).await;
    assert_ne!(pa, pz, "two sessions must not share a child");
    assert!(pid_alive(pa) && pid_alive(pz));
    let r = c.delete(&b.url).header("mcp-session-id", &a).send().await.unwrap();
    assert!(r.status().is_success());
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(pa)), "DELETE did not stop the child");
    assert!(pid_alive(pz), "DELETE of one session must not touch the other");
    assert_eq!(call_text(&c, &b.url, &z, 3, "echo", json!({"text":"ok"})).await, "ok");
}

#[tokio::test]
async fn shared_mode_rewrites_ids() {
    let b = Bridge::start(&["--shared"]);
    let c = client();
    let a = init(&c, &b.url, "2025-06-18").await;
    let z = init(&c, &b.url, "2025-06-18").await;
    let pa = pid_of(&c, &b.url, &a, 2).await;
    let pz = pid_of(&c, &b.url, &z, 2).await;
    assert_eq!(pa, pz, "shared mode must use one child");
    // Same ids in both sessions, in flight at the same time, answered out of order.
    let mut tasks = Vec::new();
    for round in 0..5u64 {
        for (sid, tag, ms) in [(a.clone(), "A", 300), (z.clone(), "Z", 50)] {
            let c = c.clone();
            let url = b.url.clone();
            tasks.push(tokio::spawn(async move {
                let id = 100 + round;
                let text = format!("{tag}{round}");
                let got = call_text(&c, &url, &sid, id, "slow", json!({"ms": ms, "text": text})).await;
                assert_eq!(got, text, "a session saw another session's response");
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Same progress token in both sessions: each sees only its own progress notifications.
    let mut streams = Vec::new();
    for (sid, count) in [(a.clone(), 2u64), (z.clone(), 4u64)] {
        let msg = json!({"jsonrpc":"2.0","id":150,"method":"tools/call","params":{
            "name":"progress_slow","arguments":{"count":count,"ms":100},"_meta":{"progressToken":"same"}}});
        let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &msg).await;
        streams.push((Sse::new(r), count));
    }
    for (mut sse, count) in streams {
        let mut seen = Vec::new();
        let fin = loop {
            let (_, m) = sse.next_msg().await.expect("stream ended early");
            if m.get("id").is_some() {
                break m;
            }
            assert_eq!(m["params"]["progressToken"], "same", "token not restored: {m}");
            assert_eq!(m["params"]["total"], count, "another session's progress: {m}");
            seen.push(m["params"]["progress"].as_u64().unwrap());
        };
        assert_eq!(seen, (1..=count).collect::<Vec<_>>());
        assert_eq!(fin["id"], 150);
    }
    // A server→client request goes to the session that caused it.
    let r = post(&c, &b.url, Some(&z), Some("2025-06-18"), &tool_msg(200, "sample", json!({}))).await;
    let mut sse = Sse::new(r);
    let (_, req) = sse.next_msg().await.unwrap();
    assert_eq!(req["method"], "sampling/createMessage");
    let answer = json!({"jsonrpc":"2.0","id":req["id"].clone(),"result":{"role":"assistant","model":"m","content":{"type":"text","text":"zz"}}});
    assert_eq!(post(&c, &b.url, Some(&z), Some("2025-06-18"), &answer).await.status(), 202);
    let (_, fin) = sse.next_msg().await.unwrap();
    assert_eq!(fin["id"], 200);
    assert_eq!(fin["result"]["content"][0]["text"], "sampled: zz");
    // Ending one session leaves the shared child running for the other.
    c.delete(&b.url).header("mcp-session-id", &a).send().await.unwrap();
    assert_eq!(pid_of(&c, &b.url, &z, 300).await, pz);
}

#[tokio::test]
async fn abandoned_session_is_reaped() {
    let b = Bridge::start(&["--session-grace", "1s", "--keepalive", "1s"]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let pid = pid_of(&c, &b.url, &sid, 2).await;
    // A GET stream keeps the session alive while open; then the client vanishes (its socket
    // closes without any further request).
    {
        use std::io::{Read, Write};
        let addr = b.base.trim_start_matches("http://").to_string();
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            sock,
            "GET /mcp HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 12];
        sock.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        // Still alive while the stream is open.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(pid_alive(pid), "a session with an open GET stream was reaped");
    }
    assert!(wait_until(Duration::from_secs(30), || !pid_alive(pid)), "the abandoned child was not reaped");
    let r =
        post(&c, &b.url, Some(&sid), Some("2025-06-18"), &json!({"jsonrpc":"2.0","id":3,"method":"ping"}))
            .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn crashed_child_ends_its_session() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let pid = pid_of(&c, &b.url, &sid, 2).await;
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &tool_msg(3, "crash", json!({}))).await;
    // The request in flight gets an answer (an error), not a hang.
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(pid)));
    let r =
        post(&c, &b.url, Some(&sid), Some("2025-06-18"), &json!({"jsonrpc":"2.0","id":4,"method":"ping"}))
            .await;
    assert_eq!(r.status(), 404);
    assert!(b.wait_stderr("fatal: crashing on purpose"), "{}", b.stderr_text());
    assert!(b.wait_stderr("exit status: 3"), "{}", b.stderr_text());
}

#[tokio::test]
async fn child_environment_is_not_inherited() {
    let fixture = fixture();
    let b = Bridge::start_raw(
        &["--env", "GIVEN=yes", "--", "python3", &fixture],
        &[("CATWALK_TEST_SECRET", "do-not-leak")],
    );
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let env: Value = serde_json::from_str(&call_text(&c, &b.url, &sid, 2, "env", json!({})).await).unwrap();
    assert_eq!(env["GIVEN"], "yes");
    assert!(env.get("CATWALK_TEST_SECRET").is_none(), "the bridge's environment leaked: {env}");
    assert!(env.get("PATH").is_some());
}

#[tokio::test]
async fn failing_command_is_a_clear_error() {
    let b = Bridge::start_raw(&["--", "/nonexistent/server-binary"], &[]);
    let c = client();
    let r = post(&c, &b.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("/nonexistent/server-binary"), "{m}");
}

#[tokio::test]
async fn whole_process_group_is_stopped() {
    let b = Bridge::start(&[]);
    let c = client();
    let a = init(&c, &b.url, "2025-06-18").await;
    let ga: u32 = call_text(&c, &b.url, &a, 2, "spawn_grandchild", json!({})).await.parse().unwrap();
    let z = init(&c, &b.url, "2025-06-18").await;
    let gz: u32 = call_text(&c, &b.url, &z, 2, "spawn_grandchild", json!({})).await.parse().unwrap();
    assert!(pid_alive(ga) && pid_alive(gz));
    // DELETE stops the session's whole process group, grandchildren included.
    c.delete(&b.url).header("mcp-session-id", &a).send().await.unwrap();
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(ga)), "grandchild survived DELETE");
    // Stopping the bridge stops every remaining group.
    drop(b);
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(gz)), "grandchild survived the bridge");
}

#[tokio::test]
async fn shared_child_restarts_after_a_crash() {
    let b = Bridge::start(&["--shared"]);
    let c = client();
    let a = init(&c, &b.url, "2025-06-18").await;
    let first = pid_of(&c, &b.url, &a, 2).await;
    let r = post(&c, &b.url, Some(&a), Some("2025-06-18"), &tool_msg(3, "crash", json!({}))).await;
    let _ = r.bytes().await;
    assert!(wait_until(Duration::from_secs(20), || !pid_alive(first)));
    let r = post(&c, &b.url, Some(&a), Some("2025-06-18"), &json!({"jsonrpc":"2.0","id":4,"method":"ping"}))
        .await;
    assert_eq!(r.status(), 404);
    let again = init(&c, &b.url, "2025-06-18").await;
    let second = pid_of(&c, &b.url, &again, 2).await;
    assert_ne!(first, second);
    let m = c.get(format!("{}/metrics", b.base)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("catwalk_mcp_child_restarts_total"), "{m}");
}

#[tokio::test]
async fn session_limit_is_a_clear_503() {
    let b = Bridge::start(&["--max-sessions", "2"]);
    let c = client();
    let a = init(&c, &b.url, "2025-06-18").await;
    let _z = init(&c, &b.url, "2025-06-18").await;
    let r = post(&c, &b.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("sessions"), "{v}");
    // Ending one frees a slot.
    c.delete(&b.url).header("mcp-session-id", &a).send().await.unwrap();
    init(&c, &b.url, "2025-06-18").await;
}

/// A server that stops reading its stdin (after answering `initialize`): the gateway queues at most
/// 4 MiB for it, then stops it and ends the session, instead of buffering whatever clients send.
#[tokio::test]
async fn a_server_that_stops_reading_stdin_is_stopped() {
    const DEAF: &str = "import json,sys,time\nm=json.loads(sys.stdin.readline())\n\
        sys.stdout.write(json.dumps({'jsonrpc':'2.0','id':m['id'],'result':{'protocolVersion':'2025-06-18',\
        'capabilities':{},'serverInfo':{'name':'deaf','version':'1'}}})+'\\n')\nsys.stdout.flush()\ntime.sleep(600)\n";
    let b = Bridge::start_raw(&["--warm", "0", "--", "python3", "-c", DEAF], &[]);
    let c = client();
    let r = post(&c, &b.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let big = "x".repeat(256 << 10);
    let note = json!({"jsonrpc":"2.0","method":"notifications/message","params":{"data": big}});
    let mut statuses = Vec::new();
    for _ in 0..64 {
        let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &note).await;
        statuses.push(r.status().as_u16());
        if r.status() == 404 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&404),
        "16 MiB were queued for a server that reads nothing: {statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 202).count() <= 20, "{statuses:?}");
    assert!(b.wait_stderr("left more than 4 MiB of messages unread on its stdin"), "{}", b.stderr_text());
}
