//! stdio children: spawning (clean env, own process group), one writer task fed by a channel of
//! ready-made lines, one reader task classifying stdout lines, stderr into the app log, and
//! stopping the whole process group (SIGTERM, then SIGKILL).
//!
//! A session uses a child of its own ([`crate::gateway::session::Link::Own`]), or the app's shared one
//! (`shared_child.rs`); pooled children serve 2026-07-28 requests (`pool.rs`). This file knows none of
//! them: a child reports to whatever [`ChildEvents`] owns it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::applog::{AppLogs, LogKind};
use super::jsonrpc::{self, Classified};
use super::metrics;

/// Process groups of one gateway's children that have not exited yet, so that its shutdown can make
/// sure none outlives it.
///
/// Per gateway, never process-wide: a push proves its release on a private gateway beside the daemon's
/// (the health gate), and that gateway's shutdown must not touch the daemon's children — every other
/// app's sessions and spares. (A process-wide list once made every push SIGKILL them all once the private
/// gateway's grace ran out; `tests/deploy_push.rs` guards it.)
#[derive(Default)]
pub struct LiveGroups(Mutex<Vec<i32>>);

impl LiveGroups {
    fn add(&self, pgid: i32) {
        lock(&self.0).push(pgid);
    }

    fn remove(&self, pgid: i32) {
        lock(&self.0).retain(|g| *g != pgid);
    }

    /// After everything was asked to stop: wait up to `grace` for this gateway's children to exit, then
    /// SIGKILL the process groups of those that did not.
    pub async fn wait_all_stopped(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if lock(&self.0).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pgid in lock(&self.0).drain(..) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Which gateway's [`LiveGroups`] a child's process group is counted in, if any. It changes once at most:
/// the health gate proves a release on a private gateway, then hands the process it proved to the daemon's
/// gateway (`pool::Primed`), whose shutdown must then wait for it (and the private one's must not kill it).
struct Membership {
    pgid: i32,
    groups: Mutex<Option<Arc<LiveGroups>>>,
}

impl Membership {
    /// Out of the groups it is counted in (the process exited, or it is handed to another gateway).
    fn leave(&self) {
        if let Some(old) = lock(&self.groups).take() {
            old.remove(self.pgid);
        }
    }
}

/// Largest message accepted from a child's stdout; a longer line is dropped (and logged) so a
/// misbehaving server cannot grow the gateway's memory without bound.
const MAX_STDOUT_LINE: usize = 64 << 20;
/// Largest stderr line read (the app log truncates further for storage).
const MAX_STDERR_LINE: usize = 64 << 10;
/// Most bytes waiting for a child to read its stdin. A server that stops reading while clients keep
/// sending would otherwise grow the gateway's memory; past this it is stopped (its session ends).
const MAX_STDIN_QUEUE: u64 = 4 << 20;

pub(crate) enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Read one `\n`-terminated line into `buf` (newline included), but never hold more than `max`
/// bytes: an over-long line is skipped up to its newline and reported as `TooLong`.
pub(crate) async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Line {
    let mut too_long = false;
    loop {
        let avail = match r.fill_buf().await {
            Ok(a) => a,
            Err(_) => return Line::Eof,
        };
        if avail.is_empty() {
            return if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Complete
            };
        }
        let (chunk, done) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..=i], true),
            None => (avail, false),
        };
        let n = chunk.len();
        if !too_long {
            if buf.len() + n > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(n);
        if done {
            return if too_long { Line::TooLong } else { Line::Complete };
        }
    }
}

/// Receives what a child writes.
pub trait ChildEvents: Send + Sync {
    fn message(&self, line: Bytes, c: Classified);
    fn exited(&self, why: &str);
}

/// A running child process.
pub struct ChildProc {
    pub pid: u32,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued for stdin that the child has not read yet (bounded by [`MAX_STDIN_QUEUE`]).
    stdin_queued: Arc<AtomicU64>,
    app: Arc<str>,
    logs: Arc<AppLogs>,
    exited: CancellationToken,
    stopping: AtomicBool,
    kill_grace: Duration,
    membership: Arc<Membership>,
}

/// What to start.
pub struct Command<'a> {
    /// The starting gateway's children, which this one joins until it exits.
    pub groups: &'a Arc<LiveGroups>,
    pub app: &'a str,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start a child. Its stdout lines go to `events`, its stderr lines into `logs`.
pub fn spawn(
    cmd: Command<'_>,
    events: Arc<dyn ChildEvents>,
    logs: Arc<AppLogs>,
    kill_grace: Duration,
) -> Result<Arc<ChildProc>, String> {
    let (prog, args) =
        cmd.argv.split_first().ok_or_else(|| format!("app `{}` has an empty command", cmd.app))?;
    let mut command = tokio::process::Command::new(prog);
    command
        .args(args)
        .env_clear()
        .envs(cmd.env)
        .current_dir(cmd.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::process_group::own_session(&mut command);
    let mut child = command.spawn().map_err(|e| {
        format!(
            "could not start `{prog}` (working directory {}): {e}; check that the command \
                 exists on the PATH given to the app and that the directory exists",
            cmd.cwd.display()
        )
    })?;
    let pid = child.id().unwrap_or(0);
    let (stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => (i, o, e),
        _ => return Err(format!("`{prog}` started without its stdio pipes")),
    };
    let app: Arc<str> = cmd.app.into();
    cmd.groups.add(pid as i32);
    let membership = Arc::new(Membership { pgid: pid as i32, groups: Mutex::new(Some(cmd.groups.clone())) });
    let groups = membership.clone();
    logs.push(&app, LogKind::Event, &format!("started process {pid}: {prog}"));
    ::metrics::gauge!(metrics::CHILDREN).increment(1.0);

    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let stdin_queued = Arc::new(AtomicU64::new(0));
    let written = stdin_queued.clone();
    tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(64 * 1024, stdin);
        'outer: while let Some(line) = rx.recv().await {
            if w.write_all(&line).await.is_err() {
                break;
            }
            written.fetch_sub(line.len() as u64, Ordering::AcqRel);
            // Batch whatever else is queued into one write syscall.
            while let Ok(more) = rx.try_recv() {
                if w.write_all(&more).await.is_err() {
                    break 'outer;
                }
                written.fetch_sub(more.len() as u64, Ordering::AcqRel);
            }
            if w.flush().await.is_err() {
                break;
            }
        }
    });

    let reader_events = events.clone();
    let reader_logs = logs.clone();
    let reader_app = app.clone();
    let reader = tokio::spawn(async move {
        let mut r = BufReader::with_capacity(64 * 1024, stdout);
        loop {
            let mut buf = Vec::with_capacity(512);
            match read_line_bounded(&mut r, &mut buf, MAX_STDOUT_LINE).await {
                Line::Eof => break,
                Line::TooLong => {
                    reader_logs.push(
                        &reader_app,
                        LogKind::Event,
                        &format!("dropped a message over {MAX_STDOUT_LINE} bytes on stdout"),
                    );
                    continue;
                }
                Line::Complete => {}
            }
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            match jsonrpc::classify(&buf) {
                Ok(c) => reader_events.message(Bytes::from(buf), c),
                Err(e) => {
                    let text = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
                    reader_logs.push(
                        &reader_app,
                        LogKind::Event,
                        &format!("ignored a line on stdout that is not JSON-RPC ({e:?}): {text}"),
                    );
                }
            }
        }
    });

    let err_logs = logs.clone();
    let err_app = app.clone();
    let err_reader = tokio::spawn(async move {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match read_line_bounded(&mut r, &mut buf, MAX_STDERR_LINE).await {
                Line::Eof => break,
                Line::TooLong => {
                    err_logs.push(&err_app, LogKind::Event, "a stderr line was too long and was dropped")
                }
                Line::Complete => err_logs.push(&err_app, LogKind::Stderr, &String::from_utf8_lossy(&buf)),
            }
        }
    });

    let proc = Arc::new(ChildProc {
        pid,
        tx,
        stdin_queued,
        app: app.clone(),
        logs: logs.clone(),
        exited: CancellationToken::new(),
        stopping: AtomicBool::new(false),
        kill_grace,
        membership,
    });
    let watch = proc.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        // Let the readers drain what the process wrote before it died.
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), err_reader).await;
        watch.exited.cancel();
        // Orphans left in the group go too.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        groups.leave();
        ::metrics::gauge!(metrics::CHILDREN).decrement(1.0);
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        let msg = if watch.stopping.load(Ordering::Acquire) {
            format!("process {pid} stopped ({status})")
        } else {
            ::metrics::counter!(metrics::CHILD_EXITS, "app" => app.to_string()).increment(1);
            let tail = logs.stderr_tail(&app, 10);
            tracing::warn!(app = %app, pid, %status, "MCP server process exited");
            if tail.is_empty() {
                format!("process {pid} exited on its own ({status}); it wrote nothing to stderr")
            } else {
                format!("process {pid} exited on its own ({status}); last stderr lines:\n{tail}")
            }
        };
        logs.push(&app, LogKind::Event, &msg);
        events.exited(&msg);
    });
    Ok(proc)
}

impl ChildProc {
    /// Queue one line for stdin. `false` when the child is gone — or stopped because it left more than
    /// [`MAX_STDIN_QUEUE`] bytes unread.
    pub fn send(&self, line: Bytes) -> bool {
        if self.exited.is_cancelled() {
            return false;
        }
        let len = line.len() as u64;
        if self.stdin_queued.fetch_add(len, Ordering::AcqRel) + len > MAX_STDIN_QUEUE {
            self.stdin_queued.fetch_sub(len, Ordering::AcqRel);
            if !self.stopping.load(Ordering::Acquire) {
                self.logs.push(
                    &self.app,
                    LogKind::Event,
                    &format!(
                        "process {} stopped: it left more than {} MiB of messages unread on its stdin",
                        self.pid,
                        MAX_STDIN_QUEUE >> 20
                    ),
                );
                self.stop();
            }
            return false;
        }
        if self.tx.send(line).is_ok() {
            true
        } else {
            self.stdin_queued.fetch_sub(len, Ordering::AcqRel);
            false
        }
    }

    pub fn is_exited(&self) -> bool {
        self.exited.is_cancelled()
    }

    /// Takes the process out of the process groups of the gateway that started it (whose shutdown would
    /// kill it), until [`ChildProc::move_to`] another gateway's.
    pub fn leave_groups(&self) {
        self.membership.leave();
    }

    /// Moves the process to `groups` (another gateway's children): that gateway's shutdown waits for it
    /// from now on, the one that started it forgets it. A process that already exited joins nothing.
    pub fn move_to(&self, groups: &Arc<LiveGroups>) {
        let mut current = lock(&self.membership.groups);
        if let Some(old) = current.take() {
            old.remove(self.membership.pgid);
        }
        // Checked under the lock the exit watcher takes after marking the exit: never a stale group.
        if !self.exited.is_cancelled() {
            groups.add(self.membership.pgid);
            *current = Some(groups.clone());
        }
    }

    /// SIGTERM the process group, SIGKILL it after the grace period if still alive.
    pub fn stop(&self) {
        if self.exited.is_cancelled() || self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pgid = Pid::from_raw(self.pid as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let exited = self.exited.clone();
        let grace = self.kill_grace;
        tokio::spawn(async move {
            tokio::select! {
                _ = exited.cancelled() => {}
                _ = tokio::time::sleep(grace) => { let _ = killpg(pgid, Signal::SIGKILL); }
            }
        });
    }
}

/// Routes a child's output to whoever owns it now: a session (a process per session) or a pooled
/// child of the 2026-07-28 endpoint (see `pool.rs`). Set right after the owner exists; a warm spare has
/// no owner yet and prints nothing before it is initialized. It changes owner once at most: the process a
/// health gate proved passes from the gate's pooled child to the daemon's (`pool::Primed`).
#[derive(Default)]
pub struct OwnEvents {
    owner: RwLock<Option<Weak<dyn ChildEvents>>>,
}

impl OwnEvents {
    pub fn set_owner(&self, owner: Weak<dyn ChildEvents>) {
        *self.owner.write().unwrap_or_else(|e| e.into_inner()) = Some(owner);
    }

    fn owner(&self) -> Option<Arc<dyn ChildEvents>> {
        self.owner.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(Weak::upgrade)
    }
}

impl ChildEvents for OwnEvents {
    fn message(&self, line: Bytes, c: Classified) {
        if let Some(owner) = self.owner() {
            owner.message(line, c);
        }
    }
    fn exited(&self, why: &str) {
        if let Some(owner) = self.owner() {
            owner.exited(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_lines() {
        let data: &[u8] = b"short\nthis line is far too long\nok\nlast-no-newline";
        let mut r = BufReader::with_capacity(4, data);
        let mut got = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line_bounded(&mut r, &mut buf, 10).await {
                Line::Eof => break,
                Line::TooLong => got.push("<too long>".to_string()),
                Line::Complete => got.push(String::from_utf8(buf).unwrap()),
            }
        }
        assert_eq!(got, vec!["short\n", "<too long>", "ok\n", "<too long>"]);
    }
}
