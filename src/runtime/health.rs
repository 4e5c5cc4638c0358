//! The health gate: prove a release answers MCP before it serves anybody.
//!
//! The probe is a small Streamable HTTP client that goes through the same gateway code clients use, in
//! one of two styles ([`Style`]):
//! - **a 2025 session**: `initialize` → `notifications/initialized` → `tools/list` (all pages) →
//!   `resources/list` and `prompts/list` when the server advertises them → `DELETE`;
//! - **2026-07-28 requests**: `server/discover` → the same lists, each a stateless request. A stdio release
//!   is proven this way: the gateway's pool serves it with a process that catwalk initialized (or that
//!   speaks 2026-07-28 itself), and that process, proven, goes on serving after the push
//!   (`gateway::Primed`) — a session's process could not (it was initialized for the probe's session).
//!
//! What it learns (real tool names, not guesses) is stored with the release and printed to the pusher.

use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway::{META_CAPABILITIES, META_CLIENT_INFO, META_VERSION, MODERN_VERSION, server_info_of};
use crate::store::Introspection;

const PROTOCOL_VERSION: &str = "2025-06-18";
const MAX_PAGES: usize = 50;

/// How the probe speaks MCP (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A 2025 session: what an HTTP server or a Fly machine is proven with.
    Session,
    /// Stateless 2026-07-28 requests: what a stdio release is proven with.
    Stateless,
}

/// Probes the MCP endpoint at `url` (a loopback gateway in front of the new release).
pub async fn probe(
    url: &str,
    bearer: Option<&str>,
    timeout: Duration,
    style: Style,
) -> Result<Introspection, String> {
    tokio::time::timeout(timeout, probe_inner(url, bearer, style))
        .await
        .map_err(|_| format!("the server did not answer MCP within {}s", timeout.as_secs()))?
}

async fn probe_inner(url: &str, bearer: Option<&str>, style: Style) -> Result<Introspection, String> {
    let client = reqwest::Client::builder().no_proxy().build().map_err(|e| e.to_string())?;
    let mut probe = Probe {
        client,
        url: url.to_string(),
        bearer: bearer.map(str::to_string),
        session: None,
        next_id: 1,
        style,
    };
    if style == Style::Stateless {
        let found = probe.request("server/discover", json!({})).await?;
        let info = server_info_of(&found).cloned().unwrap_or(Value::Null);
        let out = Introspection {
            server_name: info.get("name").and_then(Value::as_str).map(str::to_string),
            server_version: info.get("version").and_then(Value::as_str).map(str::to_string),
            ..Default::default()
        };
        let caps = found.get("capabilities").cloned().unwrap_or(Value::Null);
        return probe.lists(out, &caps).await;
    }
    let init = probe
        .request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "catwalk-health-gate", "version": env!("CARGO_PKG_VERSION")}
            }),
        )
        .await
        .map_err(|e| format!("initialize failed: {e}"))?;
    let out = Introspection {
        server_name: init.pointer("/serverInfo/name").and_then(Value::as_str).map(str::to_string),
        server_version: init.pointer("/serverInfo/version").and_then(Value::as_str).map(str::to_string),
        protocol_version: init.get("protocolVersion").and_then(Value::as_str).map(str::to_string),
        ..Default::default()
    };
    probe.notify("notifications/initialized").await?;
    let caps = init.get("capabilities").cloned().unwrap_or(Value::Null);
    let out = probe.lists(out, &caps).await?;
    probe.close().await;
    Ok(out)
}

struct Probe {
    client: reqwest::Client,
    url: String,
    bearer: Option<String>,
    session: Option<String>,
    next_id: u64,
    style: Style,
}

impl Probe {
    /// The tools, resources and prompts the server offers (`caps`: its capabilities).
    async fn lists(&mut self, mut out: Introspection, caps: &Value) -> Result<Introspection, String> {
        if caps.get("tools").is_some() {
            for tool in self.list("tools/list", "tools").await? {
                if let Some(name) = tool.get("name").and_then(Value::as_str) {
                    out.tools.push(name.to_string());
                }
            }
        }
        if caps.get("resources").is_some() {
            out.resources = self.list("resources/list", "resources").await?.len();
        }
        if caps.get("prompts").is_some() {
            out.prompts = self.list("prompts/list", "prompts").await?.len();
        }
        Ok(out)
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if self.style == Style::Stateless {
            let method = body.get("method").and_then(Value::as_str).unwrap_or_default();
            req = req.header("mcp-protocol-version", MODERN_VERSION).header("mcp-method", method);
        }
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s).header("mcp-protocol-version", PROTOCOL_VERSION);
        }
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        req
    }

    async fn request(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut params = params;
        if self.style == Style::Stateless {
            params["_meta"] = json!({
                META_VERSION: MODERN_VERSION,
                META_CAPABILITIES: {},
                META_CLIENT_INFO: {"name": "catwalk-health-gate", "version": env!("CARGO_PKG_VERSION")},
            });
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.post(&body).send().await.map_err(|e| format!("{method}: {e}"))?;
        let status = response.status();
        if let Some(s) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()) {
            self.session = Some(s.to_string());
        }
        let is_sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let text = response.text().await.map_err(|e| format!("{method}: reading the answer: {e}"))?;
        if !status.is_success() {
            // A JSON-RPC error says more than its HTTP status (a 502 saying the server did not start).
            let said = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(format!("{method}: HTTP {status}: {said}"));
        }
        let messages: Vec<Value> = if is_sse {
            sse_data(&text).filter_map(|d| serde_json::from_str(&d).ok()).collect()
        } else {
            vec![serde_json::from_str(&text).map_err(|e| format!("{method}: the answer is not JSON: {e}"))?]
        };
        let answer = messages
            .into_iter()
            .find(|m| m.get("id").and_then(Value::as_u64) == Some(id) && m.get("method").is_none())
            .ok_or(format!("{method}: no answer to request {id}"))?;
        if let Some(err) = answer.get("error") {
            return Err(format!("{method}: the server answered an error: {err}"));
        }
        answer.get("result").cloned().ok_or(format!("{method}: the answer has no result"))
    }

    async fn notify(&self, method: &str) -> Result<(), String> {
        let body = json!({"jsonrpc": "2.0", "method": method});
        let response = self.post(&body).send().await.map_err(|e| format!("{method}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{method}: HTTP {}", response.status()));
        }
        Ok(())
    }

    async fn list(&mut self, method: &str, field: &str) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let result = self.request(method, params).await?;
            if let Some(page) = result.get(field).and_then(Value::as_array) {
                items.extend(page.iter().cloned());
            }
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        Ok(items)
    }

    async fn close(&self) {
        if let Some(s) = &self.session {
            let mut req = self.client.delete(&self.url).header("mcp-session-id", s);
            if let Some(b) = &self.bearer {
                req = req.bearer_auth(b);
            }
            let _ = req.send().await;
        }
    }
}

/// The `data:` payloads of an SSE body (multi-line data joined with '\n').
fn sse_data(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split("\n\n").filter_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
            .collect();
        (!data.is_empty() && data.iter().any(|d| !d.is_empty())).then(|| data.join("\n"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sse_parsing() {
        let body = "id: 1\ndata: \n\nid: 2\nevent: message\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":\ndata: 2}\n\n";
        let got: Vec<String> = super::sse_data(body).collect();
        assert_eq!(got, ["{\"a\":1}", "{\"b\":\n2}"]);
    }
}
