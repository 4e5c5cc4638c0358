//! The daemon side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::{ClientFrame, DaemonFrame, HookKind, MAX_FRAME, encode};
use crate::git::hook::{QuarantineEnv, RefUpdate};
use crate::identity::Identity;
use crate::output::{Input, Output, Progress, Stream};
use crate::platform::Platform;
use crate::platform::push::{self, Verdict};

/// Binds the socket (0600), replacing a stale one but refusing to steal a live daemon's socket.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another catwalk daemon is running on this data dir ({} answers); stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to its owner", path.display()))?;
    Ok(listener)
}

/// Accepts connections until the process exits (hooks of running pushes need it during shutdown).
pub async fn serve(platform: Arc<Platform>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let platform = platform.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(platform, stream).await {
                        tracing::debug!("control connection: {e:#}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one newline-terminated frame of at most [`MAX_FRAME`] bytes; `None` at EOF.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Result<Option<ClientFrame>> {
    let mut line = Vec::new();
    let n = (&mut *reader).take(MAX_FRAME as u64 + 1).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_FRAME {
        bail!("frame larger than {MAX_FRAME} bytes");
    }
    Ok(Some(serde_json::from_slice(&line).context("malformed frame")?))
}

async fn handle(platform: Arc<Platform>, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let Some(first) = read_frame(&mut reader).await? else { return Ok(()) };

    let (out, mut out_rx) = Output::channel();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let (request_tx, request_rx) = oneshot::channel::<()>();

    // Frames after the first one carry stdin, sent by the client only once asked for.
    let stdin_pump = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Ok(Some(frame)) = read_frame(&mut reader).await {
            match frame {
                ClientFrame::Stdin { data } => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data.into_bytes()).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                ClientFrame::StdinEof => stdin_tx = None,
                _ => break,
            }
        }
    });

    let work = {
        let platform = platform.clone();
        tokio::spawn(async move {
            let code = match first {
                ClientFrame::Command { argv } => {
                    if platform.shutdown.is_cancelled() {
                        out.eline("catwalk: the daemon is shutting down; try again when it is back");
                        1
                    } else {
                        let mut input = Input::new(stdin_rx, Some(request_tx));
                        crate::commands::run(&platform, &Identity::local(), &argv, &mut input, &out).await
                    }
                }
                ClientFrame::Hook { hook, push_id, updates, options, quarantine } => {
                    run_hook(&platform, hook, &push_id, updates, options, quarantine, &out).await
                }
                _ => {
                    out.eline("catwalk: the first frame must be a command or a hook");
                    2
                }
            };
            drop(out);
            code
        })
    };

    // Forward output (and the stdin request) until the work is done and its output drained.
    let mut request_rx = Some(request_rx);
    loop {
        tokio::select! {
            chunk = out_rx.recv() => match chunk {
                Some((stream, data)) => {
                    // What a command or a push prints reaches a terminal (the local CLI's, or the
                    // pusher's through git's `remote:` lines): control characters made visible.
                    let data = crate::terminal_text::visible_lines(&data).into_owned();
                    let frame = match stream {
                        Stream::Stdout => DaemonFrame::Stdout { data },
                        Stream::Stderr => DaemonFrame::Stderr { data },
                    };
                    if write.write_all(encode(&frame).as_bytes()).await.is_err() {
                        // The client went away; let the work finish, stop writing.
                        break;
                    }
                }
                None => break,
            },
            requested = async { request_rx.as_mut().expect("guarded").await }, if request_rx.is_some() => {
                // Resolved either way (asked, or the work ended without asking): never poll it again.
                request_rx = None;
                if requested.is_ok() {
                    write.write_all(encode(&DaemonFrame::StdinRequest).as_bytes()).await?;
                }
            }
        }
    }
    let code = work.await.unwrap_or(1);
    stdin_pump.abort();
    write.write_all(encode(&DaemonFrame::Exit { code }).as_bytes()).await?;
    write.shutdown().await?;
    Ok(())
}

async fn run_hook(
    platform: &Platform,
    hook: HookKind,
    push_id: &str,
    updates: Vec<RefUpdate>,
    options: Vec<String>,
    quarantine: QuarantineEnv,
    out: &Output,
) -> i32 {
    let progress = Progress::new(out.clone());
    let Some(ctx) = platform.push_context(push_id, updates, options, quarantine, progress) else {
        out.eline(
            "catwalk: this push is not known to the daemon (pushes must go through catwalk's SSH server)",
        );
        return 1;
    };
    match hook {
        HookKind::PreReceive => match push::pre_receive(&ctx).await {
            Verdict::Accept => 0,
            Verdict::Reject(_) => 1,
        },
        HookKind::PostReceive => {
            push::post_receive(&ctx).await;
            0
        }
    }
}
