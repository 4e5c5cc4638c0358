//! Shared helpers for the gateway tests: run the real `catwalk bridge` binary in front of the
//! Python stdio fixture, talk raw HTTP to it, and read SSE streams.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

pub fn fixture() -> String {
    format!("{}/tests/fixtures/stdio_fixture.py", env!("CARGO_MANIFEST_DIR"))
}

/// A running `catwalk bridge`; killed on drop.
pub struct Bridge {
    child: Child,
    pub url: String,
    pub base: String,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Bridge {
    /// `catwalk bridge --listen 127.0.0.1:0 <flags> -- python3 fixture`.
    pub fn start(flags: &[&str]) -> Bridge {
        let fixture = fixture();
        let mut argv: Vec<&str> = flags.to_vec();
        argv.extend(["--", "python3", "-u", &fixture]);
        Self::start_raw(&argv, &[])
    }

    /// The bridge's own pid (its server processes are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `catwalk bridge --listen 127.0.0.1:0 <args>` with extra environment.
    pub fn start_raw(args: &[&str], env: &[(&str, &str)]) -> Bridge {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_catwalk"));
        cmd.arg("bridge").arg("--listen").arg("127.0.0.1:0").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("failed to start the catwalk binary");
        let stderr = child.stderr.take().expect("bridge stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.to_string());
                }
                keep.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "catwalk bridge did not print its address; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let after = url.find("://").map(|i| i + 3).unwrap_or(0);
        let base = match url[after..].find('/') {
            Some(i) => url[..after + i].to_string(),
            None => url.clone(),
        };
        Bridge { child, url, base, stderr: lines }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Wait (up to 30 s) until the bridge's stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(30), || self.stderr_text().contains(needle))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

pub fn pid_alive(pid: u32) -> bool {
    // Zombies count as gone: the bridge reaps its children, but check state to be exact.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("reqwest client")
}

pub fn init_msg(id: u64, version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion": version, "capabilities": {"sampling": {}},
        "clientInfo": {"name":"gateway-test","version":"0"}}})
}

pub fn tool_msg(id: u64, name: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}})
}

/// POST a JSON-RPC message with the usual headers.
pub async fn post(
    c: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    version: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut r = c
        .post(url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    if let Some(v) = version {
        r = r.header("mcp-protocol-version", v);
    }
    r.send().await.expect("POST failed")
}

/// Initialize a session (and send `initialized`); returns the session id.
pub async fn init(c: &reqwest::Client, url: &str, version: &str) -> String {
    let r = post(c, url, None, None, &init_msg(1, version)).await;
    assert_eq!(r.status(), 200, "initialize failed");
    let sid = r
        .headers()
        .get("mcp-session-id")
        .expect("initialize response lacks Mcp-Session-Id")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"]["protocolVersion"], version);
    let n = post(
        c,
        url,
        Some(&sid),
        Some(version),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(n.status(), 202);
    sid
}

/// Call a tool expecting a JSON (fast path) answer; returns the text content.
pub async fn call_text(
    c: &reqwest::Client,
    url: &str,
    sid: &str,
    id: u64,
    name: &str,
    args: Value,
) -> String {
    let r = post(c, url, Some(sid), Some("2025-06-18"), &tool_msg(id, name, args)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], id, "response to the wrong request: {v}");
    v["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {v}")).to_string()
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<String>,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Incremental SSE reader over a reqwest response.
pub struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    pub fn new(resp: reqwest::Response) -> Sse {
        assert!(
            resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"),
            "not an SSE response"
        );
        Sse { resp, buf: String::new() }
    }

    /// The next event (comments skipped), `None` at end of stream. Panics after 30 s.
    pub async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(Duration::from_secs(30), self.next_inner())
            .await
            .expect("timed out waiting for an SSE event")
    }

    async fn next_inner(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf[..end].to_string();
                self.buf.drain(..end + 2);
                let mut ev = Event { id: None, data: String::new(), retry: None };
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    any = true;
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "id" => ev.id = Some(v.to_string()),
                        "data" => ev.data.push_str(v),
                        "retry" => ev.retry = Some(v.to_string()),
                        _ => {}
                    }
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            match self.resp.chunk().await {
                Ok(Some(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }

    /// Next event that carries a JSON-RPC message (skips priming events).
    pub async fn next_msg(&mut self) -> Option<(Option<String>, Value)> {
        loop {
            let ev = self.next().await?;
            if ev.data.is_empty() {
                continue;
            }
            return Some((ev.id.clone(), ev.json()));
        }
    }
}

/// Live (not zombie) child processes of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            out.push(pid);
        }
    }
    out.sort();
    out
}
