//! MCP Streamable HTTP load generator (`cargo bench --bench load -- --url URL ...`).
//!
//! Opens `--sessions` MCP sessions (initialize + notifications/initialized), then for `--duration` seconds
//! keeps `--inflight` `tools/call` requests in flight per session, each slot on its own keep-alive HTTP/1.1
//! connection, every request with a unique JSON-RPC id. Responses may be JSON or SSE (the response is the
//! SSE event whose `id` matches). Prints requests/s, p50, p99 and errors; `--json` adds one JSON line that
//! `scripts/bench` parses. The first `--warmup` seconds are run but not measured.
//!
//! Options (also read from env `LOAD_URL`, `LOAD_TOKEN`, `LOAD_SESSIONS`, ...):
//!   --url URL            MCP endpoint (required), http:// only
//!   --token T            sends `Authorization: Bearer T`
//!   --sessions N         default 8
//!   --inflight M         per session, default 32
//!   --duration SECS      measured seconds, default 10
//!   --warmup SECS        unmeasured seconds before, default 1
//!   --tool NAME          default echo
//!   --args JSON          tool arguments, default {"message":"hi"}
//!   --label TEXT         name printed with the results
//!   --json               also print a JSON result line
//!   --modern             MCP 2026-07-28: no sessions; every request carries `_meta` (protocol version,
//!                        client capabilities) and the MCP-Protocol-Version/Mcp-Method/Mcp-Name headers;
//!                        --sessions then only groups the in-flight slots
//!   --stdio -- CMD ARGS  instead of HTTP: run CMD and measure its own stdio round trip, one request at a
//!                        time (the baseline for QUALITY.md P2); must be the last option
//!   --hold-sessions N    instead of load: open N sessions, each with a GET SSE stream, hold them for
//!                        --duration seconds, ping each, DELETE them (QUALITY.md P8; see load/hold.rs)
//! Exits non-zero when no session could be opened or every request failed; a slow result is not an error.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[path = "load/hold.rs"]
mod hold;
#[path = "load/stdio.rs"]
mod stdio;

#[derive(Clone, Debug)]
struct Options {
    host: String,
    authority: String,
    path: String,
    token: Option<String>,
    sessions: usize,
    inflight: usize,
    duration: f64,
    warmup: f64,
    tool: String,
    args: Value,
    label: String,
    json: bool,
    /// `--stdio -- CMD ARGS...`: measure the stdio server directly (no HTTP, one request at a time).
    stdio: Vec<String>,
    /// `--hold-sessions N`: hold N sessions with GET streams open instead of sending load.
    hold_sessions: usize,
    /// `--modern`: MCP 2026-07-28 requests (no session; `_meta` and the request headers on each).
    modern: bool,
}

fn usage(msg: &str) -> anyhow::Error {
    anyhow!(
        "{msg}\nusage: load --url http://HOST:PORT/PATH [--token T] [--sessions 8] [--inflight 32] \
         [--duration 10] [--warmup 1] [--tool echo] [--args '{{\"message\":\"hi\"}}'] [--label L] [--json]\n\
         or:    load --stdio -- CMD ARGS... [same options; one request at a time, no HTTP]\n\
         or:    load --url URL [--token T] --hold-sessions N [--duration SECS] [--label L] [--json]"
    )
}

fn parse_options() -> Result<Options> {
    let env = |k: &str| std::env::var(format!("LOAD_{k}")).ok().filter(|v| !v.is_empty());
    let mut url = env("URL");
    let mut token = env("TOKEN");
    let mut sessions = env("SESSIONS").unwrap_or_else(|| "8".into());
    let mut inflight = env("INFLIGHT").unwrap_or_else(|| "32".into());
    let mut duration = env("DURATION").unwrap_or_else(|| "10".into());
    let mut warmup = env("WARMUP").unwrap_or_else(|| "1".into());
    let mut tool = env("TOOL").unwrap_or_else(|| "echo".into());
    let mut args = env("ARGS").unwrap_or_else(|| r#"{"message":"hi"}"#.into());
    let mut label = env("LABEL").unwrap_or_default();
    let mut json_out = env("JSON").is_some();
    let mut stdio: Vec<String> = Vec::new();
    let mut hold_sessions = env("HOLD_SESSIONS").unwrap_or_else(|| "0".into());
    let mut modern = false;

    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--url" => url = Some(val()?),
            "--token" => token = Some(val()?),
            "--sessions" => sessions = val()?,
            "--inflight" => inflight = val()?,
            "--duration" => duration = val()?,
            "--warmup" => warmup = val()?,
            "--tool" => tool = val()?,
            "--args" => args = val()?,
            "--label" => label = val()?,
            "--json" => json_out = true,
            "--modern" => modern = true,
            "--hold-sessions" => hold_sessions = val()?,
            "--stdio" => {
                stdio = it.by_ref().skip_while(|a| a == "--").collect();
                if stdio.is_empty() {
                    return Err(usage("--stdio needs a command: --stdio -- CMD ARGS..."));
                }
            }
            // `cargo bench` appends --bench to every bench binary's arguments.
            "--bench" => {}
            other => return Err(usage(&format!("unknown argument {other}"))),
        }
    }
    if !stdio.is_empty() {
        // The stdio baseline has no endpoint; a placeholder URL keeps the rest of the parsing uniform.
        url = Some(url.unwrap_or_else(|| "http://127.0.0.1:9/".into()));
    }
    let url = url.ok_or_else(|| usage("--url (or --stdio -- CMD) is required"))?;
    let uri: hyper::Uri = url.parse().map_err(|e| usage(&format!("bad --url {url}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(usage(&format!("--url {url}: only http:// is supported")));
    }
    let host = uri.host().ok_or_else(|| usage("--url has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let num = |name: &str, v: &str| -> Result<f64> {
        v.parse::<f64>()
            .ok()
            .filter(|n| *n >= 0.0)
            .ok_or_else(|| usage(&format!("--{name} must be a non-negative number, got {v}")))
    };
    let opts = Options {
        authority: format!("{host}:{port}"),
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        path,
        token,
        sessions: num("sessions", &sessions)? as usize,
        inflight: num("inflight", &inflight)? as usize,
        duration: num("duration", &duration)?,
        warmup: num("warmup", &warmup)?,
        tool,
        args: serde_json::from_str(&args).map_err(|e| usage(&format!("--args is not JSON ({e}): {args}")))?,
        label,
        json: json_out,
        stdio,
        hold_sessions: num("hold-sessions", &hold_sessions)? as usize,
        modern,
    };
    if opts.sessions == 0 || opts.inflight == 0 || opts.duration <= 0.0 {
        return Err(usage("--sessions, --inflight and --duration must be positive"));
    }
    Ok(opts)
}

/// One keep-alive HTTP/1.1 connection to the endpoint.
struct Conn {
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(opts: &Options) -> Result<Conn> {
        let tcp = TcpStream::connect((opts.host.as_str(), port_of(&opts.authority)))
            .await
            .with_context(|| format!("connect to {}", opts.authority))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await.context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { send })
    }

    /// POSTs `body` and returns (status, session id header, content type, body bytes).
    async fn post(&mut self, opts: &Options, session: Option<&Session>, body: Vec<u8>) -> Result<Reply> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&opts.path)
            .header("host", &opts.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(t) = &opts.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        match session {
            Some(_) if opts.modern => {
                req = req
                    .header("mcp-protocol-version", MODERN)
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", &opts.tool);
            }
            Some(s) => req = req.header("mcp-session-id", &s.id).header("mcp-protocol-version", &s.protocol),
            None => {}
        }
        self.request(req.body(Full::new(Bytes::from(body)))?).await
    }

    async fn request(&mut self, req: Request<Full<Bytes>>) -> Result<Reply> {
        self.send.ready().await.context("connection closed")?;
        let res = self.send.send_request(req).await.context("send request")?;
        let status = res.status();
        let header = |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let session_id = header("mcp-session-id");
        let sse = header("content-type").is_some_and(|c| c.starts_with("text/event-stream"));
        let body = res.into_body().collect().await.context("read response body")?.to_bytes();
        Ok(Reply { status, session_id, sse, body })
    }
}

fn port_of(authority: &str) -> u16 {
    authority.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(80)
}

struct Reply {
    status: StatusCode,
    session_id: Option<String>,
    sse: bool,
    body: Bytes,
}

impl Reply {
    /// The JSON-RPC response with `id`, from a JSON body or from the SSE events.
    fn response(&self, id: u64) -> Result<Value> {
        if !self.status.is_success() {
            bail!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            );
        }
        let matches = |v: &Value| v.get("id").and_then(Value::as_u64) == Some(id);
        if !self.sse {
            let v: Value = serde_json::from_slice(&self.body).context("response body is not JSON")?;
            return match v {
                Value::Array(items) => {
                    items.into_iter().find(matches).ok_or_else(|| anyhow!("no response with id {id}"))
                }
                v if matches(&v) => Ok(v),
                v => bail!("response id mismatch: {v}"),
            };
        }
        let text = std::str::from_utf8(&self.body).context("SSE body is not UTF-8")?;
        for event in text.split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n"))
                && matches(&v)
            {
                return Ok(v);
            }
        }
        bail!("SSE stream ended without a response for id {id}")
    }
}

struct Session {
    id: String,
    protocol: String,
}

/// The stateless revision `--modern` speaks.
const MODERN: &str = "2026-07-28";

async fn open_session(opts: &Options, ids: &AtomicU64) -> Result<Session> {
    if opts.modern {
        // No handshake in 2026-07-28: a "session" only groups in-flight slots.
        return Ok(Session { id: String::new(), protocol: MODERN.into() });
    }
    let mut conn = Conn::open(opts).await?;
    let id = ids.fetch_add(1, Ordering::Relaxed);
    let init = json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"catwalk-load","version":"1.0.0"}}});
    let reply = conn.post(opts, None, serde_json::to_vec(&init)?).await?;
    let result = reply.response(id).context("initialize")?;
    let protocol = result["result"]["protocolVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("initialize answered without result.protocolVersion: {result}"))?
        .to_string();
    let sid = reply.session_id.ok_or_else(|| anyhow!("initialize answered without Mcp-Session-Id"))?;
    let session = Session { id: sid, protocol };
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let r = conn.post(opts, Some(&session), serde_json::to_vec(&note)?).await?;
    if !r.status.is_success() {
        bail!("notifications/initialized answered HTTP {}", r.status);
    }
    Ok(session)
}

async fn close_session(opts: &Options, s: &Session) {
    if opts.modern {
        return;
    }
    if let Ok(mut conn) = Conn::open(opts).await {
        let mut req = Request::builder()
            .method(Method::DELETE)
            .uri(&opts.path)
            .header("host", &opts.authority)
            .header("mcp-session-id", &s.id)
            .header("mcp-protocol-version", &s.protocol);
        if let Some(t) = &opts.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Ok(req) = req.body(Full::new(Bytes::new())) {
            let _ = conn.request(req).await;
        }
    }
}

#[derive(Default)]
struct SlotStats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

struct Shared {
    opts: Options,
    ids: AtomicU64,
    stop: AtomicBool,
    measure_from: Instant,
}

/// One in-flight slot: a connection sending one request at a time until `stop`.
async fn slot(shared: Arc<Shared>, session: Arc<Session>) -> SlotStats {
    let opts = &shared.opts;
    let mut stats = SlotStats::default();
    let mut conn: Option<Conn> = None;
    let record_error = |stats: &mut SlotStats, e: anyhow::Error, measured: bool| {
        if measured {
            stats.errors += 1;
        }
        if stats.first_error.is_none() {
            stats.first_error = Some(format!("{e:#}"));
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match Conn::open(opts).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    record_error(&mut stats, e, Instant::now() >= shared.measure_from);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let id = shared.ids.fetch_add(1, Ordering::Relaxed);
        let mut params = json!({"name": opts.tool, "arguments": opts.args});
        if opts.modern {
            params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {}});
        }
        let body =
            serde_json::to_vec(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params}))
                .unwrap_or_default();
        let started = Instant::now();
        let outcome = match c.post(opts, Some(&session), body).await {
            Ok(reply) => reply.response(id).and_then(|v| match v.get("error") {
                Some(err) => Err(anyhow!("JSON-RPC error: {err}")),
                None if v["result"]["isError"] == true => Err(anyhow!("tool error: {}", v["result"])),
                None => Ok(()),
            }),
            Err(e) => {
                conn = None;
                Err(e)
            }
        };
        let measured = started >= shared.measure_from && !shared.stop.load(Ordering::Relaxed);
        match outcome {
            Ok(()) if measured => {
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                stats.latencies_us.push(us);
            }
            Ok(()) => {}
            Err(e) => record_error(&mut stats, e, measured),
        }
    }
    stats
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(opts: Options) -> Result<bool> {
    let ids = AtomicU64::new(1);
    let mut sessions = Vec::new();
    for i in 0..opts.sessions {
        let s = open_session(&opts, &ids).await.with_context(|| format!("opening session {}", i + 1))?;
        sessions.push(Arc::new(s));
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        ids,
        stop: AtomicBool::new(false),
        measure_from: start + Duration::from_secs_f64(opts.warmup),
    });
    let mut tasks = Vec::new();
    for s in &sessions {
        for _ in 0..opts.inflight {
            tasks.push(tokio::spawn(slot(shared.clone(), s.clone())));
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(opts.warmup + opts.duration)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let measured = shared.measure_from.elapsed().as_secs_f64();

    let mut all = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        let s = t.await.context("load task panicked")?;
        all.extend(s.latencies_us);
        errors += s.errors;
        first_error = first_error.or(s.first_error);
    }
    for s in &sessions {
        close_session(&opts, s).await;
    }
    let label = if opts.label.is_empty() { opts.authority.clone() } else { opts.label.clone() };
    Ok(report(&opts, &label, all, errors, first_error, measured))
}

/// Prints the result line (and the JSON line with `--json`); true when at least one request succeeded.
fn report(
    opts: &Options,
    label: &str,
    mut all: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    measured: f64,
) -> bool {
    all.sort_unstable();
    let ok = all.len() as u64;
    let rps = ok as f64 / measured;
    let (p50, p99) = (percentile(&all, 50.0), percentile(&all, 99.0));
    let mean =
        if all.is_empty() { 0.0 } else { all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64 };
    println!(
        "{label}: {rps:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, {ok} ok, {errors} errors \
         ({} sessions x {} in flight, {measured:.1} s)",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        mean / 1000.0,
        opts.sessions,
        opts.inflight
    );
    if let Some(e) = &first_error {
        eprintln!("{label}: first error: {e}");
    }
    if opts.json {
        println!(
            "{}",
            json!({"label":label,"rps":rps,"p50_us":p50,"p99_us":p99,"mean_us":mean,"ok":ok,"errors":errors,
                "sessions":opts.sessions,"inflight":opts.inflight,"seconds":measured,"first_error":first_error})
        );
    }
    ok > 0
}

fn main() {
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = if !opts.stdio.is_empty() {
        rt.block_on(stdio::run(opts))
    } else if opts.hold_sessions > 0 {
        let n = opts.hold_sessions;
        rt.block_on(hold::run(opts, n))
    } else {
        rt.block_on(run(opts))
    };
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("load: every request failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("load: {e:#}");
            std::process::exit(1);
        }
    }
}
