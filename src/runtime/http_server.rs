//! Local servers that speak Streamable HTTP themselves (`transport = "http"`): one supervised,
//! long-running process per release, on the release's own loopback port.
//!
//! Unlike stdio servers (a process per session, owned by the gateway), an HTTP server is one
//! process that holds all of its sessions, so it needs a lifecycle of its own:
//! - **on demand**: nothing runs until the first request (or the health gate) wakes it; the
//!   gateway calls [`Wake::wake`] and the request waits until the port accepts connections;
//! - **supervision**: a process that exits on its own is started again with exponential backoff
//!   (0.5 s doubling to 30 s, reset after a minute of uptime); requests meanwhile wait in `wake`;
//! - **scale to zero**: after `idle_timeout` with nothing in flight the process is stopped (the
//!   asleep-then-recheck protocol in `gateway/wake.rs` keeps this race-free);
//! - **blue/green**: each release gets its own port, so the new one starts and passes its health
//!   gate while the old one serves; the old one is then [`retired`](HttpServer::retire) and stops
//!   once its sessions went quiet for `drain_grace` (or after `max_drain` at the latest). A server
//!   whose manifest fixes its port cannot overlap: the old one is stopped before the new one starts.
//!
//! The process is started with exactly the release's argv, environment and working directory, in
//! its own process group (stopping sends SIGTERM to the group, SIGKILL after the grace period); its
//! stdout and stderr go to the app log line by line.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::gateway::{Activity, AppLogs, LogKind, Wake};

/// What to run for one release.
#[derive(Debug, Clone)]
pub struct HttpServerSpec {
    pub app: String,
    pub release: u32,
    /// Final argv (sandbox wrapper included, `{port}` already substituted).
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited); includes `PORT`.
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// The loopback port the server listens on.
    pub port: u16,
    /// `true` when the manifest fixes the port (no blue/green overlap possible).
    pub fixed_port: bool,
}

/// Timeouts of the lifecycle (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// How long a start may take until the port accepts connections.
    pub start_timeout: Duration,
    /// Stop after this long without requests (`None`: keep running).
    pub idle_timeout: Option<Duration>,
    /// A retired release stops once quiet for this long...
    pub drain_grace: Duration,
    /// ...or this long after it was retired, whatever its sessions do.
    pub max_drain: Duration,
    /// SIGTERM → SIGKILL.
    pub kill_grace: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            start_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            drain_grace: Duration::from_secs(30),
            max_drain: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(3),
        }
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Uptime after which a crash starts the backoff from the beginning again.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// The running supervisor of a started server.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the process (SIGTERM, then SIGKILL after the grace) and waits for the supervisor.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// One release's HTTP server (see the module docs). Shared by the route (as its [`Wake`]) and the
/// deployer (which retires or stops it).
pub struct HttpServer {
    spec: HttpServerSpec,
    life: Lifecycle,
    logs: Arc<AppLogs>,
    activity: Arc<Activity>,
    awake: AtomicBool,
    /// Replaced by a newer release: stops once drained.
    retired: Mutex<Option<Instant>>,
    /// Retired and stopped for good: sessions pinned to it are over, wakes are refused.
    gone: AtomicBool,
    state: Mutex<Option<Running>>,
    /// Set by the supervisor when the process exits on its own (wakes wait for the restart).
    crashed: Arc<AtomicBool>,
}

impl HttpServer {
    /// A server that is not running yet; the first wake starts it. Spawns its idle/drain watcher.
    pub fn new(spec: HttpServerSpec, life: Lifecycle, logs: Arc<AppLogs>) -> Arc<HttpServer> {
        let server = Arc::new(HttpServer {
            spec,
            life,
            logs,
            activity: Arc::new(Activity::default()),
            awake: AtomicBool::new(false),
            retired: Mutex::new(None),
            gone: AtomicBool::new(false),
            state: Mutex::new(None),
            crashed: Arc::new(AtomicBool::new(false)),
        });
        tokio::spawn(watch(Arc::downgrade(&server)));
        server
    }

    pub fn spec(&self) -> &HttpServerSpec {
        &self.spec
    }

    /// The server's URL for the gateway (`http://127.0.0.1:PORT/PATH`).
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.spec.port)
    }

    fn event(&self, msg: &str) {
        self.logs.push(&self.spec.app, LogKind::Event, msg);
    }

    /// Starts the process if it is not running and waits until its port accepts connections.
    async fn start(&self) -> Result<(), String> {
        let mut state = self.state.lock().await;
        if self.gone.load(Ordering::SeqCst) {
            return Err(format!(
                "release v{} of {} was replaced; start a new session",
                self.spec.release, self.spec.app
            ));
        }
        if state.is_none() {
            let stop = CancellationToken::new();
            self.crashed.store(false, Ordering::SeqCst);
            let task = tokio::spawn(supervise(
                self.spec.clone(),
                self.logs.clone(),
                stop.clone(),
                self.life.kill_grace,
                self.crashed.clone(),
            ));
            *state = Some(Running { stop, task });
        }
        let started = Instant::now();
        let deadline = started + self.life.start_timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.spec.port));
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if state.as_ref().is_some_and(|r| r.task.is_finished()) {
                *state = None;
                return Err("the server's supervisor ended unexpectedly".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the server did not listen on 127.0.0.1:{} within {}s; it must listen on the port in \
                     $PORT (or `{{port}}` in its args), or set `port` in catwalk.toml to the port it always uses",
                    self.spec.port,
                    self.life.start_timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.crashed.store(false, Ordering::SeqCst);
        self.activity.touch();
        self.awake.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the process now (if running). The server can be woken again unless it is gone.
    pub async fn stop(&self) {
        let mut state = self.state.lock().await;
        self.awake.store(false, Ordering::SeqCst);
        if let Some(running) = state.take() {
            running.stop().await;
        }
    }

    /// Scale to zero: stops the process unless a request is in flight or a wake just happened.
    async fn sleep_if_idle(&self, idle: Duration) {
        self.awake.store(false, Ordering::SeqCst);
        if self.activity.in_flight() > 0 {
            self.awake.store(true, Ordering::SeqCst);
            return;
        }
        let mut state = self.state.lock().await;
        if self.awake.load(Ordering::SeqCst) || self.activity.in_flight() > 0 {
            // Woken (or used) between the check and the lock.
            self.awake.store(true, Ordering::SeqCst);
            return;
        }
        if let Some(running) = state.take() {
            running.stop().await;
            self.event(&format!(
                "release v{}: stopped after {}s without requests (scale to zero); the next request starts it",
                self.spec.release,
                idle.as_secs()
            ));
        }
    }

    /// Marks the server replaced: it keeps serving the sessions pinned to it and stops once they
    /// are quiet (see [`Lifecycle::drain_grace`]).
    pub async fn retire(&self) {
        let mut retired = self.retired.lock().await;
        if retired.is_none() {
            *retired = Some(Instant::now());
        }
    }

    /// Stops for good (destroy, shutdown, a failed health gate).
    pub async fn shut_down(&self) {
        self.gone.store(true, Ordering::SeqCst);
        self.stop().await;
    }

    /// One phrase for `info`: running, restarting after a crash, asleep, or stopped for good.
    pub fn state(&self) -> &'static str {
        if self.gone.load(Ordering::SeqCst) {
            "stopped (replaced)"
        } else if !self.is_running() {
            "asleep (scaled to zero; the next request starts it)"
        } else if self.crashed.load(Ordering::SeqCst) {
            "restarting after its process exited"
        } else {
            "running"
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.try_lock().map(|s| s.is_some()).unwrap_or(true)
    }
}

impl Wake for HttpServer {
    fn is_awake(&self) -> bool {
        self.awake.load(Ordering::SeqCst) && !self.crashed.load(Ordering::SeqCst)
    }

    fn wake(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.start())
    }

    fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn is_retired(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// Idle and drain timer: wakes a few times per period and stops the server when it is due.
async fn watch(server: Weak<HttpServer>) {
    loop {
        let tick = match server.upgrade() {
            None => return,
            Some(s) => {
                let shortest = s.life.idle_timeout.unwrap_or(s.life.drain_grace).min(s.life.drain_grace);
                (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
            }
        };
        tokio::time::sleep(tick).await;
        let Some(s) = server.upgrade() else { return };
        if s.gone.load(Ordering::SeqCst) {
            return;
        }
        let retired_at = *s.retired.lock().await;
        let idle = s.activity.idle_for();
        if let Some(at) = retired_at {
            let quiet = idle.is_some_and(|i| i >= s.life.drain_grace) || !s.is_running();
            if quiet || at.elapsed() >= s.life.max_drain {
                s.shut_down().await;
                s.event(&format!("release v{}: replaced and drained; process stopped", s.spec.release));
                return;
            }
            continue;
        }
        if let (Some(limit), Some(idle)) = (s.life.idle_timeout, idle)
            && idle >= limit
            && s.is_awake()
        {
            s.sleep_if_idle(idle).await;
        }
    }
}

/// Runs the process until `stop`, restarting it with backoff when it exits on its own.
async fn supervise(
    spec: HttpServerSpec,
    logs: Arc<AppLogs>,
    stop: CancellationToken,
    kill_grace: Duration,
    crashed: Arc<AtomicBool>,
) {
    let app = spec.app.clone();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&spec, &logs) {
            Ok(c) => c,
            Err(e) => {
                logs.push(&app, LogKind::Event, &e);
                crashed.store(true, Ordering::SeqCst);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id().unwrap_or(0) as i32;
        logs.push(
            &app,
            LogKind::Event,
            &format!("started process {pid} for release v{} on port {}", spec.release, spec.port),
        );
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.cancelled() => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
                let status = match tokio::time::timeout(kill_grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        child.wait().await
                    }
                };
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                logs.push(&app, LogKind::Event, &format!("process {pid} stopped ({status})"));
                return;
            }
        };
        // Orphans left in the group go too.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        crashed.store(true, Ordering::SeqCst);
        if started.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_FIRST;
        }
        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        tracing::warn!(app = %app, pid, %status, "MCP server process exited; restarting");
        logs.push(
            &app,
            LogKind::Event,
            &format!(
                "process {pid} exited on its own ({status}); restarting in {:.1}s",
                backoff.as_secs_f64()
            ),
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn spawn(spec: &HttpServerSpec, logs: &Arc<AppLogs>) -> Result<tokio::process::Child, String> {
    let (prog, args) = spec.argv.split_first().ok_or("internal: the server's command is empty")?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::process_group::own_session(&mut cmd);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the server when the
    // daemon dies, so a killed daemon does not leave servers holding their ports.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "could not start `{prog}` (working directory {}): {e}; check that the install is intact \
             (`restart` or push again)",
            spec.cwd.display()
        )
    })?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pipe_to_log(out, logs.clone(), spec.app.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pipe_to_log(err, logs.clone(), spec.app.clone()));
    }
    Ok(child)
}

/// Copies a process's output into the app log, a line at a time (lines over 64 KiB are cut).
async fn pipe_to_log<R: AsyncRead + Unpin>(reader: R, logs: Arc<AppLogs>, app: String) {
    let mut r = BufReader::new(reader);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut r).take(64 << 10).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buf.last() != Some(&b'\n') && buf.len() >= 64 << 10 {
                    // Skip the rest of an over-long line.
                    let mut rest = Vec::new();
                    let _ = r.read_until(b'\n', &mut rest).await;
                }
                logs.push(&app, LogKind::Stderr, &String::from_utf8_lossy(&buf));
            }
        }
    }
}

/// A free loopback port for a new release, chosen *below* the kernel's ephemeral range.
///
/// Why not `bind(:0)`: a port from the ephemeral range is free when we let go of it, but the kernel may
/// hand it to any other program's `bind(:0)` or outgoing connection before the server binds it, and the
/// start-up check (something answers on the port) would then take that program for the server. A port
/// below the range only goes to programs that ask for it by number.
pub fn free_port() -> Result<u16, String> {
    let low = ephemeral_low();
    let base = low.saturating_sub(12_000).max(1024);
    for _ in 0..64 {
        let port = rand::random_range(base..low);
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("could not find a free loopback port: {e}"))
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`; 32768 by default).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .filter(|p| *p > 2048)
        .unwrap_or(32768)
}

/// Whether something listens on `port` on a wildcard address (0.0.0.0 or ::), i.e. is reachable
/// from other hosts unless a firewall blocks it. Reads /proc/net/tcp{,6}; `false` when unreadable.
pub fn listens_on_all_interfaces(port: u16) -> bool {
    let hex_port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let (Some(_), Some(local), Some(_), Some(state)) =
                    (cols.next(), cols.next(), cols.next(), cols.next())
                else {
                    return false;
                };
                let Some((ip, p)) = local.rsplit_once(':') else { return false };
                state == "0A" && p == hex_port && ip.chars().all(|c| c == '0')
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No other program's `bind(:0)` can be handed a release's port while its server starts.
    #[test]
    fn release_ports_are_below_the_ephemeral_range() {
        for _ in 0..20 {
            let port = free_port().unwrap();
            assert!(port < ephemeral_low() && port >= 1024, "{port}");
        }
    }

    #[test]
    fn wildcard_listeners_are_detected() {
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            let port = l.local_addr().expect("addr").port();
            assert!(listens_on_all_interfaces(port));
            port
        };
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        assert!(!listens_on_all_interfaces(l.local_addr().expect("addr").port()));
        drop(l);
        let _ = port;
    }
}
