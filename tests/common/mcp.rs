//! A minimal raw Streamable HTTP MCP client for end-to-end tests (JSON or SSE answers).
#![allow(dead_code)]

use serde_json::{Value, json};

pub struct Mcp {
    client: reqwest::Client,
    pub url: String,
    token: Option<String>,
    pub session: Option<String>,
    next_id: u64,
}

/// The answer of a request: HTTP status and, when there was one, the JSON-RPC message answering it.
pub struct Answer {
    pub status: u16,
    pub message: Option<Value>,
    pub body: String,
}

impl Mcp {
    pub fn new(url: &str, token: Option<&str>) -> Mcp {
        Mcp {
            client: reqwest::Client::new(),
            url: url.into(),
            token: token.map(Into::into),
            session: None,
            next_id: 1,
        }
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Answer {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut req = self
            .client
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
        let text = resp.text().await.unwrap_or_default();
        let messages: Vec<Value> = if sse {
            text.split("\n\n")
                .filter_map(|ev| {
                    let data: Vec<&str> =
                        ev.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                    serde_json::from_str(&data.join("\n")).ok()
                })
                .collect()
        } else {
            serde_json::from_str(&text).into_iter().collect()
        };
        let message =
            messages.into_iter().find(|m| m.get("id") == Some(&json!(id)) && m.get("method").is_none());
        Answer { status, message, body: text }
    }

    /// initialize + notifications/initialized; returns the initialize answer.
    pub async fn initialize(&mut self) -> Answer {
        let answer = self
            .request(
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "catwalk-tests", "version": "0"}}),
            )
            .await;
        if answer.status == 200 {
            let mut req = self
                .client
                .post(&self.url)
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-session-id", self.session.clone().unwrap_or_default())
                .header("mcp-protocol-version", "2025-06-18")
                .body(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("HTTP request");
            assert_eq!(resp.status().as_u16(), 202, "notifications/initialized");
        }
        answer
    }

    /// DELETE the session (its server process stops).
    pub async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            let mut req = self.client.delete(&self.url).header("mcp-session-id", s);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let _ = req.send().await;
        }
    }

    /// tools/call NAME ARGS → the text of the first content item.
    pub async fn call_text(&mut self, name: &str, args: Value) -> String {
        let answer = self.request("tools/call", json!({"name": name, "arguments": args})).await;
        assert_eq!(answer.status, 200, "tools/call {name}: {}", answer.body);
        let message =
            answer.message.unwrap_or_else(|| panic!("no answer to tools/call {name}: {}", answer.body));
        message
            .pointer("/result/content/0/text")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("tools/call {name} answered {message}"))
            .to_string()
    }
}
