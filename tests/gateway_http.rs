//! Streamable HTTP protocol rules, checked with raw HTTP against the real `catwalk bridge`
//! fronting the Python stdio fixture.

use crate::gateway_support;

use gateway_support::*;
use serde_json::{Value, json};

fn assert_jsonrpc_error(v: &Value, code: i64) {
    assert_eq!(v["jsonrpc"], "2.0", "not a JSON-RPC body: {v}");
    assert_eq!(v["error"]["code"], code, "wrong error code: {v}");
    assert!(
        v["error"]["message"].as_str().is_some_and(|m| m.len() > 10),
        "error without a human message: {v}"
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let b = Bridge::start(&[]);
    let c = client();
    let r = c.get(format!("{}/healthz", b.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    let sid = init(&c, &b.url, "2025-06-18").await;
    assert_eq!(call_text(&c, &b.url, &sid, 2, "echo", json!({"text":"hi"})).await, "hi");
    let m = c.get(format!("{}/metrics", b.base)).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(text.contains("catwalk_mcp_requests_total"), "{text}");
    assert!(text.contains("catwalk_mcp_sessions_open"), "{text}");
    assert!(text.contains("catwalk_mcp_request_duration_seconds"), "{text}");
}

#[tokio::test]
async fn header_and_body_errors() {
    let b = Bridge::start(&["--max-body-bytes", "2000"]);
    let c = client();
    // 406: POST must accept JSON and SSE.
    let r = c
        .post(&b.url)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(init_msg(1, "2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    // 415: the body must be JSON.
    let r = c
        .post(&b.url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "text/plain")
        .body(init_msg(1, "2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    // 400 -32700: not JSON.
    let r = c
        .post(&b.url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body("{\"jsonrpc\": \"2.0\", oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32700);
    // 400 -32600: JSON but not JSON-RPC.
    let r = post(&c, &b.url, None, None, &json!({"hello": "world"})).await;
    assert_eq!(r.status(), 400);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    // 413: over the body limit.
    let big = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"pad":"x".repeat(5000)}});
    let r = post(&c, &b.url, None, None, &big).await;
    assert_eq!(r.status(), 413);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    // 400: unsupported protocol version (the 2026-07-28 UnsupportedProtocolVersion error, listing ours).
    let r = post(&c, &b.url, None, Some("1999-01-01"), &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 400);
    let v = r.json().await.unwrap();
    assert_jsonrpc_error(&v, -32022);
    assert_eq!(v["error"]["data"]["requested"], "1999-01-01");
    // 405 for other methods.
    let r = c.put(&b.url).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn session_lifecycle_statuses() {
    let b = Bridge::start(&[]);
    let c = client();
    // 400 without a session on a non-initialize request.
    let r = post(&c, &b.url, None, None, &json!({"jsonrpc":"2.0","id":5,"method":"tools/list"})).await;
    assert_eq!(r.status(), 400);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    // 404 for an unknown session.
    let r =
        post(&c, &b.url, Some("nope"), None, &json!({"jsonrpc":"2.0","id":5,"method":"tools/list"})).await;
    assert_eq!(r.status(), 404);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32001);

    let sid = init(&c, &b.url, "2025-06-18").await;
    assert!(sid.len() >= 32 && sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    // 202 for a notification and for a response.
    let r = post(
        &c,
        &b.url,
        Some(&sid),
        Some("2025-06-18"),
        &json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &json!({"jsonrpc":"2.0","id":"x","result":{}}))
        .await;
    assert_eq!(r.status(), 202);
    // The JSON fast path.
    let r = post(
        &c,
        &b.url,
        Some(&sid),
        Some("2025-06-18"),
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let v: Value = r.json().await.unwrap();
    assert!(v["result"]["tools"].as_array().is_some_and(|t| t.len() > 3));
    // GET without Accept: text/event-stream → 406.
    let r = c
        .get(&b.url)
        .header("accept", "application/json")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    // DELETE ends the session, then 404.
    let r = c.delete(&b.url).header("mcp-session-id", &sid).send().await.unwrap();
    assert!(r.status() == 204 || r.status() == 200, "{}", r.status());
    let r = post(
        &c,
        &b.url,
        Some(&sid),
        Some("2025-06-18"),
        &json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = c.delete(&b.url).header("mcp-session-id", &sid).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn origin_and_host_checks() {
    let b = Bridge::start(&["--allow-origin", "https://app.example"]);
    let c = client();
    let send = |origin: Option<&'static str>, host: Option<&'static str>| {
        let mut r = c
            .post(&b.url)
            .header("accept", ACCEPT_BOTH)
            .header("content-type", "application/json")
            .body(init_msg(1, "2025-06-18").to_string());
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.send()
    };
    let r = send(Some("https://evil.example"), None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    assert_eq!(send(Some("https://app.example"), None).await.unwrap().status(), 200);
    assert_eq!(send(Some("http://localhost:5173"), None).await.unwrap().status(), 200);
    let r = send(None, Some("evil.example:80")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    assert_eq!(send(None, Some("localhost:1")).await.unwrap().status(), 200);
    // HTTP/2 has no Host header: the forged name arrives as :authority and is refused the same way.
    assert_eq!(h2_status(&b.url, "evil.example:80").await, 403);
    assert_eq!(h2_status(&b.url, "localhost:80").await, 200);
}

/// POSTs an initialize over HTTP/2 (prior knowledge) to the listener of `url`, with `authority` as
/// the request's `:authority`; returns the status.
async fn h2_status(url: &str, authority: &str) -> u16 {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{authority}/mcp"))
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(init_msg(1, "2025-06-18").to_string())))
        .unwrap();
    send.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn tokens_only_in_the_authorization_header() {
    let b = Bridge::start_raw(
        &["--token-env", "BRIDGE_TOKEN", "--", "python3", &fixture()],
        &[("BRIDGE_TOKEN", "t0ken-value")],
    );
    let c = client();
    let r = post(&c, &b.url, None, None, &init_msg(1, "2025-06-18")).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let body = c
        .post(format!("{}?access_token=t0ken-value", b.url))
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("authorization", "Bearer t0ken-value")
        .body(init_msg(1, "2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 401);
    assert_jsonrpc_error(&body.json().await.unwrap(), -32001);
    let wrong = c
        .post(&b.url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("authorization", "Bearer wrong")
        .body(init_msg(1, "2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = c
        .post(&b.url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("authorization", "Bearer t0ken-value")
        .body(init_msg(1, "2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn batches_only_on_2025_03_26() {
    let b = Bridge::start(&[]);
    let c = client();
    let old = init(&c, &b.url, "2025-03-26").await;
    let batch = json!([
        {"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"z","progress":1}},
        {"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}}
    ]);
    let r = post(&c, &b.url, Some(&old), Some("2025-03-26"), &batch).await;
    assert_eq!(r.status(), 200);
    let mut sse = Sse::new(r);
    let mut got = Vec::new();
    while let Some((_, m)) = sse.next_msg().await {
        got.push((
            m["id"].as_u64().unwrap(),
            m["result"]["content"][0]["text"].as_str().unwrap().to_string(),
        ));
    }
    got.sort();
    assert_eq!(got, vec![(10, "a".to_string()), (11, "b".to_string())]);
    // Notifications-only batch: 202.
    let r = post(
        &c,
        &b.url,
        Some(&old),
        Some("2025-03-26"),
        &json!([{"jsonrpc":"2.0","method":"notifications/x"}]),
    )
    .await;
    assert_eq!(r.status(), 202);
    // Garbage inside a batch is a clean 400, and the session still works.
    let r = post(&c, &b.url, Some(&old), Some("2025-03-26"), &json!([1, "two", null])).await;
    assert_eq!(r.status(), 400);
    let r = post(&c, &b.url, Some(&old), Some("2025-03-26"), &json!([])).await;
    assert_eq!(r.status(), 400);
    assert_eq!(call_text(&c, &b.url, &old, 12, "echo", json!({"text":"still"})).await, "still");

    let new = init(&c, &b.url, "2025-06-18").await;
    let r = post(&c, &b.url, Some(&new), Some("2025-06-18"), &batch).await;
    assert_eq!(r.status(), 400);
    assert_jsonrpc_error(&r.json().await.unwrap(), -32600);
    assert_eq!(call_text(&c, &b.url, &new, 12, "echo", json!({"text":"fine"})).await, "fine");
}

#[tokio::test]
async fn sse_when_a_notification_comes_first() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let msg = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{
        "name":"notify_then_echo","arguments":{"text":"hey"},"_meta":{"progressToken":"tok"}}});
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &msg).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let mut sse = Sse::new(r);
    let (id1, m1) = sse.next_msg().await.unwrap();
    assert_eq!(m1["method"], "notifications/message");
    let (id2, m2) = sse.next_msg().await.unwrap();
    assert_eq!(m2["method"], "notifications/progress");
    assert_eq!(m2["params"]["progressToken"], "tok");
    let (id3, m3) = sse.next_msg().await.unwrap();
    assert_eq!(m3["id"], 7);
    assert_eq!(m3["result"]["content"][0]["text"], "hey");
    let ids = [id1.unwrap(), id2.unwrap(), id3.unwrap()];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
    assert!(sse.next().await.is_none(), "stream must end after the final response");
}

#[tokio::test]
async fn priming_event_on_2025_11_25() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-11-25").await;
    let r = post(
        &c,
        &b.url,
        Some(&sid),
        Some("2025-11-25"),
        &tool_msg(3, "notify_then_echo", json!({"text":"p"})),
    )
    .await;
    let mut sse = Sse::new(r);
    let first = sse.next().await.unwrap();
    assert!(first.id.is_some() && first.data.is_empty(), "{first:?}");
    assert!(first.retry.is_some(), "{first:?}");
    let (_, m) = sse.next_msg().await.unwrap();
    assert_eq!(m["method"], "notifications/message");
    // GET streams are primed too.
    let g = c
        .get(&b.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    let mut g = Sse::new(g);
    let primed = g.next().await.unwrap();
    assert!(primed.id.is_some() && primed.data.is_empty());
}

#[tokio::test]
async fn sampling_round_trip() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &tool_msg(4, "sample", json!({}))).await;
    let mut sse = Sse::new(r);
    let (_, req) = sse.next_msg().await.unwrap();
    assert_eq!(req["method"], "sampling/createMessage");
    let answer = json!({"jsonrpc":"2.0","id":req["id"].clone(),"result":{
        "role":"assistant","model":"test","content":{"type":"text","text":"forty-two"}}});
    let a = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &answer).await;
    assert_eq!(a.status(), 202);
    let (_, fin) = sse.next_msg().await.unwrap();
    assert_eq!(fin["id"], 4);
    assert_eq!(fin["result"]["content"][0]["text"], "sampled: forty-two");
}

#[tokio::test]
async fn get_stream_is_single_and_receives_unrelated_notifications() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let open = || {
        c.get(&b.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
    };
    let g = open().await.unwrap();
    assert_eq!(g.status(), 200);
    let second = open().await.unwrap();
    assert_eq!(second.status(), 409);
    assert_jsonrpc_error(&second.json().await.unwrap(), -32600);
    let mut g = Sse::new(g);
    assert_eq!(
        call_text(&c, &b.url, &sid, 5, "notify_later", json!({"count":2,"ms":100})).await,
        "scheduled"
    );
    let (_, n1) = g.next_msg().await.unwrap();
    let (_, n2) = g.next_msg().await.unwrap();
    assert_eq!(n1["params"]["data"], "later 0");
    assert_eq!(n2["params"]["data"], "later 1");
    // After the client closes the stream, a new GET is allowed.
    drop(g);
    assert!(
        {
            let mut ok = false;
            for _ in 0..100 {
                let r = open().await.unwrap();
                if r.status() == 200 {
                    ok = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            ok
        },
        "GET stream was not released after the client closed it"
    );
}

#[tokio::test]
async fn resume_with_last_event_id() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let msg = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{
        "name":"progress_slow","arguments":{"count":3,"ms":300},"_meta":{"progressToken":"pp"}}});
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &msg).await;
    let mut sse = Sse::new(r);
    let (id, first) = sse.next_msg().await.unwrap();
    assert_eq!(first["params"]["progress"], 1);
    drop(sse); // the connection breaks
    let r = c
        .get(&b.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("last-event-id", id.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut resumed = Sse::new(r);
    let mut progress = Vec::new();
    let fin = loop {
        let (_, m) = resumed.next_msg().await.expect("resumed stream ended early");
        if m.get("id").is_some() {
            break m;
        }
        progress.push(m["params"]["progress"].as_u64().unwrap());
    };
    assert_eq!(progress, vec![2, 3], "replay must start after the last seen event");
    assert_eq!(fin["id"], 9);
    assert_eq!(fin["result"]["content"][0]["text"], "done");
}

#[tokio::test]
async fn unknown_fields_and_methods_survive() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let msg = json!({"jsonrpc":"2.0","id":"str-id","method":"x/vendor.thing",
        "params":{"deep":{"a":[1,2,{"b":null}]},"ünï":"cødé"},"x-client-field":{"z":true}});
    let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &msg).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "str-id");
    assert_eq!(v["result"]["received"], msg);
    assert_eq!(v["x-extra"], json!({"kept": true}));
}

#[tokio::test]
async fn cancellation_ends_the_waiting_request() {
    let b = Bridge::start(&[]);
    let c = client();
    let sid = init(&c, &b.url, "2025-06-18").await;
    let pending = {
        let c = c.clone();
        let url = b.url.clone();
        let sid = sid.clone();
        tokio::spawn(async move {
            let r = post(
                &c,
                &url,
                Some(&sid),
                Some("2025-06-18"),
                &tool_msg(77, "slow", json!({"ms": 600000, "text": "late"})),
            )
            .await;
            r.json::<Value>().await.unwrap()
        })
    };
    // Cancel until the request is known to be in flight (the cancel may race the POST).
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        assert!(tries < 600, "the cancelled request was never answered");
        let r = post(&c, &b.url, Some(&sid), Some("2025-06-18"), &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77,"reason":"test"}})).await;
        assert_eq!(r.status(), 202);
        if pending.is_finished() {
            break pending.await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(answer["id"], 77);
    assert_eq!(answer["error"]["code"], -32800, "{answer}");
    // The session keeps working.
    assert_eq!(call_text(&c, &b.url, &sid, 78, "echo", json!({"text":"after"})).await, "after");
}
