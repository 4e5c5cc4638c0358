//! `--hold-sessions N`: open N MCP sessions, each with a standalone GET SSE stream, and hold them all open
//! for `--duration` seconds (QUALITY.md P8).
//!
//! Every session is opened with `initialize` + `notifications/initialized`, then gets its own keep-alive
//! connection carrying `GET` with `Accept: text/event-stream`. Once every stream is open the holder prints
//! `holding N sessions` on stdout (so `scripts/bench` can read the daemon's memory while they are open),
//! waits, then checks that each session still answers a `ping` on a fresh connection and that its stream
//! has not ended, and finally DELETEs every session. An error is a session that could not be opened, a GET
//! that was not answered `200 text/event-stream`, a stream that ended early, or a failed ping.

use super::{Conn, Options, Session, close_session, open_session};
use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// How many sessions are being opened (or pinged, or closed) at the same time.
const CONCURRENCY: usize = 64;

/// One held session: its id, and the task draining its GET stream (returns why the stream ended early).
struct Held {
    session: Arc<Session>,
    stream: JoinHandle<Option<String>>,
}

/// Opens one session and its GET stream; the stream task runs until `stop` flips or the stream ends.
async fn open_held(opts: &Options, ids: &AtomicU64, stop: watch::Receiver<bool>) -> Result<Held> {
    let session = Arc::new(open_session(opts, ids).await?);
    let mut conn = Conn::open(opts).await?;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(&opts.path)
        .header("host", &opts.authority)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session.id)
        .header("mcp-protocol-version", &session.protocol);
    if let Some(t) = &opts.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    conn.send.ready().await.map_err(|e| anyhow!("connection closed: {e}"))?;
    let res = conn.send.send_request(req.body(Full::new(Bytes::new()))?).await?;
    let status = res.status();
    let ctype = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if !status.is_success() || !ctype.starts_with("text/event-stream") {
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!(
            "GET stream answered HTTP {status} ({ctype}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    let mut body = res.into_body();
    let mut stop = stop;
    let stream = tokio::spawn(async move {
        // Keep the connection (and its SendRequest) alive as long as the stream is held.
        let _conn = conn;
        loop {
            tokio::select! {
                _ = stop.changed() => return None,
                frame = body.frame() => match frame {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(format!("GET stream failed: {e}")),
                    None => return Some("GET stream ended while it was held".to_string()),
                },
            }
        }
    });
    Ok(Held { session, stream })
}

/// A `ping` on a fresh connection: proves the session is still alive on the server.
async fn ping(opts: &Options, ids: &AtomicU64, s: &Session) -> Result<()> {
    let mut conn = Conn::open(opts).await?;
    let id = ids.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::to_vec(&json!({"jsonrpc":"2.0","id":id,"method":"ping"}))?;
    let v = conn.post(opts, Some(s), body).await?.response(id)?;
    if let Some(err) = v.get("error") {
        bail!("ping answered an error: {err}");
    }
    Ok(())
}

pub async fn run(opts: Options, count: usize) -> Result<bool> {
    let opts = Arc::new(opts);
    let ids = Arc::new(AtomicU64::new(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut opening = Vec::with_capacity(count);
    for _ in 0..count {
        let (opts, ids, limit, stop) = (opts.clone(), ids.clone(), limit.clone(), stop_rx.clone());
        opening.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            open_held(&opts, &ids, stop).await
        }));
    }
    let mut held = Vec::new();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let mut note = |e: String, errors: &mut u64| {
        *errors += 1;
        first_error.get_or_insert(e);
    };
    for t in opening {
        match t.await.map_err(|e| anyhow!("open task panicked: {e}")).and_then(|r| r) {
            Ok(h) => held.push(h),
            Err(e) => note(format!("{e:#}"), &mut errors),
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    println!("holding {} sessions (opened in {open_seconds:.1} s, {errors} failed)", held.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(opts.duration)).await;

    // Still alive? Every stream must still be open and every session must answer a ping.
    let mut pings = Vec::with_capacity(held.len());
    for h in &held {
        let (opts, ids, limit, s) = (opts.clone(), ids.clone(), limit.clone(), h.session.clone());
        pings.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            ping(&opts, &ids, &s).await
        }));
    }
    let mut pings_ok = 0u64;
    for p in pings {
        match p.await.map_err(|e| anyhow!("ping task panicked: {e}")).and_then(|r| r) {
            Ok(()) => pings_ok += 1,
            Err(e) => note(format!("ping: {e:#}"), &mut errors),
        }
    }
    let streams_ended: Vec<bool> = held.iter().map(|h| h.stream.is_finished()).collect();
    let _ = stop_tx.send(true);
    let mut streams_open = 0u64;
    for (h, ended) in held.iter_mut().zip(streams_ended) {
        match (&mut h.stream).await {
            Ok(Some(e)) => note(e, &mut errors),
            Ok(None) if !ended => streams_open += 1,
            Ok(None) => note("GET stream ended while it was held".into(), &mut errors),
            Err(e) => note(format!("stream task panicked: {e}"), &mut errors),
        }
    }
    let mut closing = Vec::new();
    for h in held {
        let (opts, limit) = (opts.clone(), limit.clone());
        closing.push(tokio::spawn(async move {
            if let Ok(_permit) = limit.acquire_owned().await {
                close_session(&opts, &h.session).await;
            }
        }));
    }
    for c in closing {
        let _ = c.await;
    }
    let label = if opts.label.is_empty() { opts.authority.clone() } else { opts.label.clone() };
    println!(
        "{label}: {count} sessions requested, {streams_open} GET streams held {:.0} s, {pings_ok} pings ok, \
         {errors} errors (opened in {open_seconds:.1} s)",
        opts.duration
    );
    if let Some(e) = &first_error {
        eprintln!("{label}: first error: {e}");
    }
    if opts.json {
        println!(
            "{}",
            json!({"label":label,"sessions":count,"streams_open":streams_open,"pings_ok":pings_ok,
                "errors":errors,"first_error":first_error,"open_seconds":open_seconds,"held_seconds":opts.duration})
        );
    }
    Ok(streams_open > 0)
}
