//! The MCP endpoint: tokens, Origin/Host, content negotiation, body limits, JSON-RPC shape, sessions,
//! protocol versions, methods, paths and header limits.

use serde_json::{Value, json};

use super::Good;
use crate::daemon::ok;
use crate::mcp::Mcp;

struct Http {
    what: &'static str,
    method: &'static str,
    /// Path and query after the host.
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// JSON-RPC error code of the body, when the gateway answers one.
    code: Option<i64>,
    expected: &'static str,
    /// Written by hand on one TCP connection in a single write (see [`raw_http`]), for requests a
    /// client library would not send, or would keep sending after the answer.
    raw: bool,
}

/// Sends `head` (request line and headers, `Connection: close` added) on a fresh connection in one
/// write and reads the answer's status and body. A declared body that is never sent makes an
/// over-limit request without a race: the gateway refuses on `Content-Length` and reads nothing more.
async fn raw_http(addr: &str, c: &Http) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!("{} {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n", c.method, c.path);
    for (k, v) in &c.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !c.headers.iter().any(|(k, _)| *k == "content-length") {
        head.push_str(&format!("content-length: {}\r\n", c.body.len()));
    }
    let mut request = format!("{head}\r\n").into_bytes();
    request.extend_from_slice(&c.body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status =
        text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{}: {text:?}", c.what));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_jsonrpc_and_headers() {
    let g = Good::start();
    let d = &g.d;
    ok(&d.ssh(&d.admin, "apps create other", ""));
    let other: Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "tokens create other --name o --json", ""))).unwrap();
    let other_token = other["token"].as_str().unwrap().to_string();
    let revoked: Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "tokens create good --name gone --json", ""))).unwrap();
    ok(&d.ssh(&d.admin, &format!("tokens revoke good {}", revoked["id"].as_str().unwrap()), ""));
    // A session opened before the table, which every row must leave working.
    let mut kept = Mcp::new(&g.endpoint("good"), Some(&g.token));
    assert_eq!(kept.initialize().await.status, 200);
    let sid = kept.session.clone().unwrap();

    let bearer = format!("Bearer {}", g.token);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bad", "version": "0"}}})
    .to_string()
    .into_bytes();
    let ping = br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#.to_vec();
    let std_headers = |extra: &[(&'static str, &str)]| {
        let mut h = vec![
            ("authorization", bearer.clone()),
            ("accept", "application/json, text/event-stream".to_string()),
            ("content-type", "application/json".to_string()),
        ];
        for (k, v) in extra {
            h.retain(|(name, _)| name != k);
            if !v.is_empty() {
                h.push((k, v.to_string()));
            }
        }
        h
    };
    let in_session = |extra: &[(&'static str, &str)]| {
        let mut all = vec![("mcp-session-id", sid.as_str()), ("mcp-protocol-version", "2025-06-18")];
        all.extend_from_slice(extra);
        std_headers(&all)
    };
    let case = |what, method, path: &str, headers, body: &[u8], status, code, expected| Http {
        what,
        method,
        path: path.to_string(),
        headers,
        body: body.to_vec(),
        status,
        code,
        expected,
        raw: false,
    };
    let mcp = "/mcp/good";
    #[rustfmt::skip]
    let cases = vec![
        case("no token", "POST", mcp, std_headers(&[("authorization", "")]), &init, 401, Some(-32001), "requires a token"),
        case("a wrong token", "POST", mcp, std_headers(&[("authorization", "Bearer cw_wrong")]), &init, 401, Some(-32001), "not valid for this app"),
        case("a revoked token", "POST", mcp, std_headers(&[("authorization", &format!("Bearer {}", revoked["token"].as_str().unwrap()))]), &init, 401, Some(-32001), "not valid for this app"),
        case("another app's token", "POST", mcp, std_headers(&[("authorization", &format!("Bearer {other_token}"))]), &init, 401, Some(-32001), "not valid for this app"),
        case("a Basic credential", "POST", mcp, std_headers(&[("authorization", "Basic dXNlcjpwYXNz")]), &init, 401, Some(-32001), "requires a token"),
        case("a token in the query string", "POST", &format!("{mcp}?access_token={}", g.token), std_headers(&[("authorization", "")]), &init, 401, Some(-32001), "tokens in the URL are refused"),
        case("a forged Origin", "POST", mcp, std_headers(&[("origin", "https://evil.example")]), &init, 403, Some(-32600), "Origin \"https://evil.example\" is not allowed"),
        case("a forged Host (DNS rebinding)", "POST", mcp, std_headers(&[("host", "evil.example")]), &init, 403, Some(-32600), "DNS rebinding protection"),
        case("a wrong Content-Type", "POST", mcp, std_headers(&[("content-type", "text/plain")]), &init, 415, Some(-32600), "Content-Type: application/json"),
        case("Accept without JSON or SSE", "POST", mcp, std_headers(&[("accept", "text/html")]), &init, 406, Some(-32600), "must list both application/json and text/event-stream"),
        case("Accept without SSE", "POST", mcp, std_headers(&[("accept", "application/json")]), &init, 406, Some(-32600), "must list both application/json and text/event-stream"),
        Http { raw: true, ..case("a body over the limit", "POST", mcp, std_headers(&[("content-length", "4194305")]), b"", 413, Some(-32600), "limited to 4194304 bytes") },
        case("an empty body", "POST", mcp, std_headers(&[]), b"", 400, Some(-32700), "Parse error"),
        case("invalid JSON", "POST", mcp, std_headers(&[]), b"{\"jsonrpc\": \"2.0\", oops", 400, Some(-32700), "Parse error"),
        case("not JSON-RPC (no jsonrpc)", "POST", mcp, std_headers(&[]), br#"{"id":1,"method":"initialize"}"#, 400, Some(-32600), "lacks \"jsonrpc\": \"2.0\""),
        case("jsonrpc 1.0", "POST", mcp, std_headers(&[]), br#"{"jsonrpc":"1.0","id":1,"method":"initialize"}"#, 400, Some(-32600), "lacks \"jsonrpc\""),
        case("a JSON array of numbers", "POST", mcp, in_session(&[("mcp-protocol-version", "2025-03-26")]), b"[1, 2]", 400, Some(-32600), "must be a JSON object"),
        case("a JSON string", "POST", mcp, std_headers(&[]), b"\"hello\"", 400, Some(-32600), "must be a JSON object"),
        case("an object id", "POST", mcp, in_session(&[]), br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, 400, Some(-32600), "must be a string or a number"),
        // (serde would map `null` to a missing id, i.e. a notification answered 202; MCP requires a string or integer.)
        case("a null id on a request", "POST", mcp, in_session(&[]), br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, 400, Some(-32600), "must be a string or a number"),
        case("neither method nor result", "POST", mcp, in_session(&[]), br#"{"jsonrpc":"2.0","id":3}"#, 400, Some(-32600), "neither \"method\" nor"),
        case("a batch on 2025-06-18", "POST", mcp, in_session(&[]), &[b"[".as_slice(), &ping, b"]"].concat(), 400, Some(-32600), "batches are not supported in protocol version 2025-06-18"),
        case("an empty batch", "POST", mcp, in_session(&[("mcp-protocol-version", "2025-03-26")]), b"[]", 400, Some(-32600), "empty batch"),
        case("initialize in a batch", "POST", mcp, std_headers(&[]), &[b"[".as_slice(), &init, b"]"].concat(), 400, Some(-32600), "initialize must not be part of a batch"),
        case("initialize inside a session", "POST", mcp, in_session(&[]), &init, 400, Some(-32600), "already initialized"),
        case("a request without a session", "POST", mcp, std_headers(&[]), &ping, 400, Some(-32600), "Mcp-Session-Id header is required"),
        case("an unknown session id", "POST", mcp, in_session(&[("mcp-session-id", "0123456789abcdef")]), &ping, 404, Some(-32001), "does not exist or has ended"),
        case("a bad MCP-Protocol-Version", "POST", mcp, in_session(&[("mcp-protocol-version", "1999-01-01")]), &ping, 400, Some(-32600), "unsupported MCP-Protocol-Version \"1999-01-01\""),
        case("GET without a session", "GET", mcp, std_headers(&[("accept", "text/event-stream")]), b"", 400, Some(-32600), "Mcp-Session-Id header is required"),
        case("GET without SSE in Accept", "GET", mcp, in_session(&[("accept", "application/json")]), b"", 406, Some(-32600), "must list text/event-stream"),
        case("GET with a forged Last-Event-ID", "GET", mcp, in_session(&[("accept", "text/event-stream"), ("last-event-id", "../../etc")]), b"", 400, Some(-32600), "Last-Event-ID was not issued by this server"),
        case("DELETE of an unknown session", "DELETE", mcp, in_session(&[("mcp-session-id", "ffff")]), b"", 404, Some(-32001), "does not exist or has ended"),
        case("PUT", "PUT", mcp, std_headers(&[]), &init, 405, Some(-32600), "accepts POST, GET and DELETE"),
        case("an unknown app", "POST", "/mcp/nosuch", std_headers(&[]), &init, 401, Some(-32001), "not valid for this app"),
        case("an encoded ../ app path", "POST", "/mcp/..%2Fgood", std_headers(&[]), &init, 401, Some(-32001), "not valid for this app"),
        case("an empty app name", "POST", "/mcp/", std_headers(&[]), &init, 404, Some(-32601), "no MCP endpoint at /mcp/"),
        case("an app without a live release", "POST", "/mcp/other", std_headers(&[("authorization", &format!("Bearer {other_token}"))]), &init, 404, Some(-32601), "app \"other\" has no live release; push to it first"),
        case("a nested app path", "POST", "/mcp/good/x", std_headers(&[]), &init, 404, Some(-32601), "no MCP endpoint at /mcp/good/x"),
        // OAuth (src/oauth): answers are RFC 6749 error objects or the authorization error page, not JSON-RPC.
        case("an OAuth access token that was never issued", "POST", mcp, std_headers(&[("authorization", &format!("Bearer cwa_{}", "0".repeat(76)))]), &init, 401, Some(-32001), "not valid for this app"),
        case("registration that is not JSON", "POST", "/oauth/register", vec![("content-type", "text/plain".into())], b"redirect_uris=x", 400, None, "\"error\":\"invalid_client_metadata\""),
        case("registration with an http redirect to another host", "POST", "/oauth/register", vec![("content-type", "application/json".into())], br#"{"redirect_uris":["http://example.com/cb"],"token_endpoint_auth_method":"none"}"#, 400, None, "\"error\":\"invalid_redirect_uri\""),
        case("registration with a javascript: redirect", "POST", "/oauth/register", vec![("content-type", "application/json".into())], br#"{"redirect_uris":["javascript:alert(1)"]}"#, 400, None, "invalid_redirect_uri"),
        Http { raw: true, ..case("a registration body over 64 KiB", "POST", "/oauth/register", vec![("content-type", "application/json".into()), ("content-length", "70000".into())], b"", 413, None, "too large") },
        case("a token request as JSON", "POST", "/oauth/token", vec![("content-type", "application/json".into())], br#"{"grant_type":"authorization_code"}"#, 400, None, "application/x-www-form-urlencoded"),
        case("a token request with a repeated parameter", "POST", "/oauth/token", vec![("content-type", "application/x-www-form-urlencoded".into())], b"client_id=a&client_id=b", 400, None, "is repeated"),
        case("a token request from an unknown client", "POST", "/oauth/token", vec![("content-type", "application/x-www-form-urlencoded".into())], b"client_id=c_nope&grant_type=authorization_code&code=cwc_x", 401, None, "\"error\":\"invalid_client\""),
        case("a revocation without client", "POST", "/oauth/revoke", vec![("content-type", "application/x-www-form-urlencoded".into())], b"token=cwr_x", 401, None, "invalid_client"),
        case("an authorization request without client_id", "GET", "/oauth/authorize?response_type=code", vec![], b"", 400, None, "client_id is missing"),
        case("an authorization request with a repeated parameter", "GET", "/oauth/authorize?client_id=a&client_id=b", vec![], b"", 400, None, "is repeated"),
        case("resource metadata for a path that is no app", "GET", "/.well-known/oauth-protected-resource/mcp/..%2Fgood", vec![], b"", 404, None, "not an app name"),
        case("GET on the token endpoint", "GET", "/oauth/token", vec![], b"", 405, None, "not allowed"),
        case("a sign-in link that was never issued", "GET", &format!("/oauth/login/cwl_{}", "0".repeat(76)), vec![], b"", 404, None, "not valid"),
        Http { raw: true, ..case("200 headers", "POST", mcp, (0..200).map(|_| ("x-many", "y".to_string())).chain(std_headers(&[])).collect(), b"", 431, None, "") },
    ];
    assert!(cases.len() >= 35);
    let client = reqwest::Client::new();
    let before = g.snapshot(false);
    for c in cases {
        let (status, body) = if c.raw {
            raw_http(&d.http_addr, &c).await
        } else {
            let mut req =
                client.request(c.method.parse().unwrap(), format!("http://{}{}", d.http_addr, c.path));
            for (k, v) in &c.headers {
                req = req.header(*k, v);
            }
            let resp = req.body(c.body.clone()).send().await.unwrap_or_else(|e| panic!("{}: {e}", c.what));
            (resp.status().as_u16(), resp.text().await.unwrap_or_default())
        };
        assert_eq!(status, c.status, "{}: status; body: {body}", c.what);
        // The gateway's own refusals are JSON-RPC errors with a message for a person; hyper's (431) are bare.
        let message = match c.code {
            Some(code) => {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {body}", c.what));
                assert_eq!(
                    (&v["jsonrpc"], &v["error"]["code"]),
                    (&json!("2.0"), &json!(code)),
                    "{}: {body}",
                    c.what
                );
                v["error"]["message"].as_str().unwrap_or_default().to_string()
            }
            None => body.clone(),
        };
        assert!(message.contains(c.expected), "{}: expected {:?} in: {message}", c.what, c.expected);
        eprintln!("row [{}] {status}: {message}", c.what);
        assert!(!body.contains(&g.token), "{}: the answer shows the token", c.what);
        // The session opened before the table still answers, then the usual checks.
        assert_eq!(
            kept.call_text("echo", json!({"text": c.what})).await,
            c.what,
            "{}: the kept session",
            c.what
        );
        let health = client.get(format!("http://{}/healthz", d.http_addr)).send().await.unwrap();
        assert_eq!(health.status(), 200, "{}: healthz", c.what);
        g.unchanged(c.what, &before, false).await;
    }
}
