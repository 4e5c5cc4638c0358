//! The HTTP upstream proxy: `catwalk bridge --upstream` in front of a `catwalk bridge` that runs
//! the stdio fixture. Streaming, header forwarding, credentials, upstream failures.

use crate::gateway_support;

use gateway_support::*;
use serde_json::{Value, json};

#[tokio::test]
async fn proxy_streams_and_keeps_sessions() {
    let fixture = fixture();
    // The inner bridge requires its own credential; the client's token must never reach it.
    let inner = Bridge::start_raw(
        &["--token-env", "INNER_TOKEN", "--", "python3", &fixture],
        &[("INNER_TOKEN", "inner-secret")],
    );
    let proxy = Bridge::start_raw(
        &["--upstream", &inner.url, "--upstream-header", "Authorization: Bearer inner-secret"],
        &[],
    );
    let c = client();
    let sid = init(&c, &proxy.url, "2025-06-18").await;
    assert_eq!(call_text(&c, &proxy.url, &sid, 2, "echo", json!({"text":"via proxy"})).await, "via proxy");

    // A client Authorization header is not forwarded (the inner bridge would refuse it).
    let r = c
        .post(&proxy.url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-token")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(tool_msg(3, "echo", json!({"text":"x"})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // SSE responses stream through: the progress events arrive before the final response.
    let msg = json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{
        "name":"progress_slow","arguments":{"count":2,"ms":200},"_meta":{"progressToken":"p"}}});
    let r = post(&c, &proxy.url, Some(&sid), Some("2025-06-18"), &msg).await;
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let mut sse = Sse::new(r);
    let (_, p1) = sse.next_msg().await.unwrap();
    assert_eq!(p1["method"], "notifications/progress");
    let (_, p2) = sse.next_msg().await.unwrap();
    assert_eq!(p2["params"]["progress"], 2);
    let (_, fin) = sse.next_msg().await.unwrap();
    assert_eq!(fin["id"], 4);

    // GET stream through the proxy.
    let g = c
        .get(&proxy.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(g.status(), 200);
    let mut g = Sse::new(g);
    call_text(&c, &proxy.url, &sid, 5, "notify_later", json!({"count":1,"ms":50})).await;
    let (_, n) = g.next_msg().await.unwrap();
    assert_eq!(n["params"]["data"], "later 0");

    // Session errors from the upstream pass through unchanged.
    let r = c.delete(&proxy.url).header("mcp-session-id", &sid).send().await.unwrap();
    assert!(r.status().is_success());
    let r = post(
        &c,
        &proxy.url,
        Some(&sid),
        Some("2025-06-18"),
        &json!({"jsonrpc":"2.0","id":6,"method":"ping"}),
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_with_a_jsonrpc_body() {
    // A port nobody listens on.
    let port = crate::deps::free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let proxy = Bridge::start_raw(&["--upstream", &url], &[]);
    let c = client();
    let r = post(&c, &proxy.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["message"].as_str().unwrap().contains("upstream"), "{v}");
}

#[tokio::test]
async fn upstream_5xx_without_body_is_a_502() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A broken upstream: every request gets `500` with an empty body.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let proxy = Bridge::start_raw(&["--upstream", &format!("http://127.0.0.1:{port}/mcp")], &[]);
    let c = client();
    let r = post(&c, &proxy.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["message"].as_str().unwrap().contains("500"), "{v}");
}
