//! `--stdio -- CMD ARGS`: the stdio server's own round trip with nothing in between, one request at a time.
//! This is the baseline the bridge's added latency is measured against (QUALITY.md P2).

use super::{Options, report};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

struct Pipe {
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Pipe {
    async fn send(&mut self, msg: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await.context("write to the server's stdin")?;
        self.stdin.flush().await.context("flush the server's stdin")
    }

    /// Reads lines until the response with `id` (notifications and other lines are skipped).
    async fn response(&mut self, id: u64) -> Result<Value> {
        loop {
            let line = self
                .lines
                .next_line()
                .await
                .context("read the server's stdout")?
                .ok_or_else(|| anyhow!("the server closed stdout"))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            if v.get("id").and_then(Value::as_u64) == Some(id) && v.get("method").is_none() {
                return Ok(v);
            }
        }
    }
}

pub async fn run(opts: Options) -> Result<bool> {
    // One request at a time on one pipe, whatever --sessions/--inflight said.
    let opts = Options { sessions: 1, inflight: 1, ..opts };
    let (program, args) = opts.stdio.split_first().ok_or_else(|| anyhow!("--stdio needs a command"))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {program}"))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
    let mut pipe = Pipe { stdin, lines: BufReader::new(stdout).lines() };

    pipe.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},
        "clientInfo":{"name":"catwalk-load","version":"1.0.0"}}}))
        .await?;
    let init = tokio::time::timeout(Duration::from_secs(30), pipe.response(0))
        .await
        .context("initialize: no answer within 30 s")??;
    if init.get("result").is_none() {
        bail!("initialize failed: {init}");
    }
    pipe.send(&json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await?;

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(opts.warmup);
    let end = measure_from + Duration::from_secs_f64(opts.duration);
    let (mut all, mut errors, mut first_error) = (Vec::new(), 0u64, None);
    let mut id = 1u64;
    while Instant::now() < end {
        let sent = Instant::now();
        pipe.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":opts.tool,"arguments":opts.args}}))
            .await?;
        let v = pipe.response(id).await?;
        let elapsed = sent.elapsed();
        if sent >= measure_from {
            if v.get("error").is_some() || v["result"]["isError"] == true {
                errors += 1;
                first_error.get_or_insert_with(|| v.to_string());
            } else {
                all.push(elapsed.as_micros().min(u32::MAX as u128) as u32);
            }
        }
        id += 1;
    }
    let measured = measure_from.elapsed().as_secs_f64();
    drop(pipe);
    let _ = child.kill().await;
    let label = if opts.label.is_empty() { format!("stdio:{program}") } else { opts.label.clone() };
    Ok(report(&opts, &label, all, errors, first_error, measured))
}
