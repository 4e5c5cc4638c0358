//! The client side of the control socket: `catwalk hook ...` (run by git) and `catwalk --dir DIR <command>`.
//!
//! Plain blocking I/O on purpose: a hook runs once per push and should start fast, without a runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::{ClientFrame, DaemonFrame, HookKind, MAX_FRAME, encode};
use crate::git::hook::{QuarantineEnv, RefUpdate};

/// Largest stdin the local CLI forwards (a public key, a small file).
const MAX_STDIN: u64 = 1 << 20;

fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        anyhow!(
            "cannot reach the catwalk daemon at {}: {e}\n  is it running? start it with `catwalk serve --dir {}`",
            socket.display(),
            socket.parent().map(|p| p.display().to_string()).unwrap_or_default()
        )
    })
}

/// Sends `first`, then relays daemon frames to stdout/stderr until the exit frame; returns its code.
/// `stdin` is read and sent only if the daemon asks for it.
fn exchange(socket: &Path, first: &ClientFrame, mut stdin: impl Read) -> Result<i32> {
    let stream = connect(socket)?;
    let mut writer = stream.try_clone().context("cloning the control socket")?;
    writer.write_all(encode(first).as_bytes()).context("sending the request to the daemon")?;
    let mut reader = BufReader::new(stream);
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_FRAME as u64 + 1)
            .read_line(&mut line)
            .context("reading from the daemon")?;
        if n == 0 {
            bail!("the catwalk daemon closed the connection before answering (did it stop?)");
        }
        let frame: DaemonFrame = serde_json::from_str(line.trim_end())
            .with_context(|| format!("unexpected answer from the daemon: {:?}", line.trim_end()))?;
        match frame {
            DaemonFrame::Stdout { data } => {
                let mut out = stdout.lock();
                let _ = out.write_all(data.as_bytes());
                let _ = out.flush();
            }
            DaemonFrame::Stderr { data } => {
                let mut err = stderr.lock();
                let _ = err.write_all(data.as_bytes());
                let _ = err.flush();
            }
            DaemonFrame::StdinRequest => {
                let mut buf = Vec::new();
                (&mut stdin).take(MAX_STDIN + 1).read_to_end(&mut buf).context("reading standard input")?;
                if buf.len() as u64 > MAX_STDIN {
                    bail!("standard input is larger than {MAX_STDIN} bytes");
                }
                let data = String::from_utf8_lossy(&buf).into_owned();
                writer.write_all(encode(&ClientFrame::Stdin { data }).as_bytes())?;
                writer.write_all(encode(&ClientFrame::StdinEof).as_bytes())?;
            }
            DaemonFrame::Exit { code } => return Ok(code),
        }
    }
}

/// `catwalk --dir DIR <argv...>`: runs one command of the grammar in the daemon as the `local` admin.
pub fn run_command(socket: &Path, argv: Vec<String>) -> Result<i32> {
    exchange(socket, &ClientFrame::Command { argv }, std::io::stdin())
}

/// `catwalk hook pre-receive|post-receive`, run by git inside a push. Reads the ref updates from stdin
/// and the push id, push options and quarantine paths from the environment git and catwalk set.
pub fn run_hook(hook: HookKind) -> Result<i32> {
    let socket = std::env::var_os("CATWALK_SOCKET")
        .context("CATWALK_SOCKET is not set: this hook only works in pushes served by catwalk")?;
    let push_id = std::env::var("CATWALK_PUSH_ID")
        .context("CATWALK_PUSH_ID is not set: this hook only works in pushes served by catwalk")?;
    let mut updates = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the ref updates from git")?;
        if line.trim().is_empty() {
            continue;
        }
        updates.push(RefUpdate::parse(&line).with_context(|| format!("unexpected line from git: {line:?}"))?);
    }
    let count: usize = std::env::var("GIT_PUSH_OPTION_COUNT").ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    let options =
        (0..count).filter_map(|i| std::env::var(format!("GIT_PUSH_OPTION_{i}")).ok()).collect::<Vec<_>>();
    let quarantine = QuarantineEnv {
        quarantine_path: std::env::var("GIT_QUARANTINE_PATH").ok(),
        object_directory: std::env::var("GIT_OBJECT_DIRECTORY").ok(),
        alternate_object_directories: std::env::var("GIT_ALTERNATE_OBJECT_DIRECTORIES").ok(),
    };
    let frame = ClientFrame::Hook { hook, push_id, updates, options, quarantine };
    exchange(Path::new(&socket), &frame, std::io::empty())
}
