//! A network namespace of its own for every sandboxed process, and the only ways in and out of it.
//!
//! Why: with the host's network, any server could reach every other app's `transport = "http"` server on
//! its loopback port (no credential there: the gateway holds the tokens), the daemon's own ports, and
//! could bind a port another app freed and receive that app's traffic. In a namespace of its own a
//! process has its own loopback: nothing of the host's or other apps' loopback exists there.
//!
//! `catwalk sandbox-net` supervises one sandboxed process from outside (the spawner runs it in front of
//! `bwrap --unshare-net`):
//! - **outbound** (`--slirp PATH`, apps with `network = "default"`): once bwrap reports its child's pid
//!   (`--info-fd`), `slirp4netns --configure --disable-host-loopback` gives the namespace a user-space
//!   uplink to the internet. `--disable-host-loopback` is the point: the host's 127.0.0.1 (the daemon,
//!   other apps' forwarded ports) stays out of reach. Without `--slirp` only the loopback exists.
//! - **inbound** (`--expose PORT`, `transport = "http"` servers): the gateway keeps connecting to
//!   `127.0.0.1:PORT` on the host. The supervisor opens that host port only once the server answers
//!   inside (so "the port accepts connections" still means "the server is up"), and relays each
//!   connection through a Unix socket in a directory only this process's sandbox sees, to a relay
//!   inside the namespace ([`start_inner_relay`], forked by `sandbox-exec`) that connects to the
//!   server's own loopback port.
//! - **to a host-loopback service** (`--reach PORT`, installs from a registry mirror on 127.0.0.1): the
//!   inner relay listens on that port inside and forwards through the directory to the host port,
//!   exactly that port and nothing else.
//!
//! The relays speak one byte of handshake on each Unix connection (`READY`: the far side connected), so
//! a failed inner connect closes the outer connection instead of hanging it.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// First byte on every relayed Unix connection: the far side reached its target (also the byte of the
/// ready/go handshake with `sandbox-exec`).
const READY: u8 = 1;
/// Descriptors of the start-up handshake inside the sandbox (`sandbox-exec --net-sync`): high numbers
/// that nothing else in the chain uses.
pub const READY_FD: i32 = 100;
pub const GO_FD: i32 = 101;

/// Inside the sandbox, before anything else: tells the supervisor that bwrap's set-up is done and waits
/// until the network is configured. Fails when the supervisor gave up (no network: do not start).
pub fn sync_with_supervisor() -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: the supervisor placed these two descriptors for us (dup2 in its pre_exec); nothing else
    // in this process owns them.
    let (mut ready, mut go) =
        unsafe { (std::fs::File::from_raw_fd(READY_FD), std::fs::File::from_raw_fd(GO_FD)) };
    ready.write_all(&[READY]).map_err(|e| format!("telling the network supervisor we are ready: {e}"))?;
    drop(ready);
    let mut byte = [0u8; 1];
    match go.read(&mut byte) {
        Ok(1) if byte[0] == READY => Ok(()),
        _ => Err("the sandbox's network could not be set up (see the lines above)".into()),
    }
}

/// The relays of one sandbox: the same flags on both sides (the supervisor outside, `sandbox-exec` inside).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RelayArgs {
    /// Directory (bound into the sandbox at the same path) holding the relays' Unix sockets.
    #[arg(long, value_name = "DIR")]
    pub relay_dir: Option<PathBuf>,
    /// A TCP port the server listens on inside, opened on the host's 127.0.0.1 once it answers.
    #[arg(long, value_name = "PORT")]
    pub expose: Vec<u16>,
    /// A host 127.0.0.1 port made reachable, as the same port, inside the namespace.
    #[arg(long, value_name = "PORT")]
    pub reach: Vec<u16>,
}

/// Arguments of the hidden `catwalk sandbox-net` subcommand (built by [`super::wrap`]).
#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// slirp4netns binary: give the namespace outbound access (host loopback excluded).
    #[arg(long, value_name = "PATH")]
    pub slirp: Option<PathBuf>,
    #[command(flatten)]
    pub relays: RelayArgs,
    /// bwrap and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn expose_socket(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("expose-{port}.sock"))
}

fn reach_socket(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("reach-{port}.sock"))
}

/// Runs the supervisor; returns the process's exit code (the sandboxed command's, or 125 when the
/// sandbox could not be set up).
pub fn supervise(args: NetArgs) -> i32 {
    // The stop signal goes to the whole process group: the server ends, bwrap ends, then this process
    // reports its status. Ignoring it here keeps the status (SIGKILL after the grace period still ends us).
    // SAFETY: setting a disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    // Servers die with the daemon. This supervisor leads the process group of its sandbox (the daemon
    // starts it in a session of its own): when the daemon dies it ends the whole group — bwrap, a bwrap
    // child still setting up (blocked before `--die-with-parent` applies, it would wait forever), the
    // server, slirp4netns — and itself. Run outside such a group, it just dies (and bwrap with it).
    // SAFETY: prctl, getpgrp, getpid, getppid and signal with integer arguments; the handler only calls
    // kill, which is async-signal-safe.
    unsafe {
        let leads_its_group = libc::getpgrp() == libc::getpid();
        let on_parent_death = if leads_its_group {
            libc::signal(libc::SIGHUP, end_the_group as *const () as libc::sighandler_t);
            libc::SIGHUP
        } else {
            libc::SIGKILL
        };
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            on_parent_death as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        if libc::getppid() == 1 {
            return fail("the daemon that started this sandbox is gone");
        }
    }
    // Nothing the daemon's own parent left open (a lock, a socket) may reach bwrap or slirp4netns.
    // SAFETY: close_range only sets FD_CLOEXEC; on kernels without it the call fails harmlessly.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start its runtime: {e}")),
    };
    match runtime.block_on(run(args)) {
        Ok(status) => exit_code(status),
        Err(e) => fail(&e),
    }
}

/// The supervisor's parent-death signal handler (see `supervise`): SIGKILL to its own process group.
extern "C" fn end_the_group(_signal: libc::c_int) {
    // SAFETY: kill is async-signal-safe; 0 addresses the caller's process group, which it leads.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

fn fail(message: &str) -> i32 {
    eprintln!("sandbox-net: {message}");
    125
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// A pipe whose ends do not leak into bwrap: the ends the sandbox needs are placed with dup2 in bwrap's
/// pre_exec. (An end held inside the sandbox too would keep `sandbox-exec` waiting forever for a
/// network that its dead supervisor will never set up.)
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

async fn run(args: NetArgs) -> Result<ExitStatus, String> {
    let dir = args.relays.relay_dir.clone();
    if (!args.relays.expose.is_empty() || !args.relays.reach.is_empty()) && dir.is_none() {
        return Err("--expose and --reach need --relay-dir".into());
    }
    // Host side of --reach: listening before the sandbox starts, so its first connection finds us.
    if let Some(dir) = &dir {
        for &port in &args.relays.reach {
            let path = reach_socket(dir, port);
            let _ = std::fs::remove_file(&path);
            let listener =
                UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            // The sandbox's uid (not ours, when the daemon is root) connects to it; only that sandbox
            // sees the directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("opening {} to the sandbox: {e}", path.display()))?;
            tokio::spawn(unix_to_tcp(listener, port));
        }
    }
    let (info_read, info_write) = pipe()?;
    // The sandbox's `sandbox-exec` says on READY_FD that bwrap finished setting the namespace up (bwrap
    // configures its loopback itself: slirp4netns must not race it), then waits on GO_FD until the
    // uplink is configured, so the server never starts without its network.
    let (ready_read, ready_write) = pipe()?;
    let (go_read, go_write) = pipe()?;
    let (program, rest) = args.command.split_first().ok_or("no command after --")?;
    let mut bwrap = Command::new(program);
    if args.slirp.is_some() {
        bwrap.arg("--info-fd").arg(info_write.as_raw_fd().to_string());
    }
    bwrap.args(rest);
    let sync = args.slirp.is_some();
    let (info_fd, ready_fd, go_fd) = (info_write.as_raw_fd(), ready_write.as_raw_fd(), go_read.as_raw_fd());
    // SAFETY: signal/fcntl/dup2 on fds we own, async-signal-safe, no allocation.
    unsafe {
        bwrap.pre_exec(move || {
            // This supervisor ignores the stop signal (see `supervise`), and an ignored signal stays ignored
            // across exec: the server must get it back, or it never hears SIGTERM and every stop waits
            // out the grace period for a SIGKILL.
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            // bwrap dies with this supervisor (which dies with the daemon), and the server with bwrap
            // (`--die-with-parent`): a killed daemon leaves no sandbox behind, even around a server
            // that ignores the end of its input.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(info_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves the new descriptors without FD_CLOEXEC: they reach sandbox-exec.
            if sync && (libc::dup2(ready_fd, READY_FD) < 0 || libc::dup2(go_fd, GO_FD) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = bwrap.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
    drop((info_write, ready_write, go_read));
    let mut slirp = None;
    if let Some(slirp_bin) = &args.slirp {
        let started = async {
            let pid = read_child_pid(info_read).await?;
            let ready = tokio::task::spawn_blocking(move || {
                let mut byte = [0u8; 1];
                std::fs::File::from(ready_read).read(&mut byte).map(|n| n == 1)
            });
            match ready.await {
                Ok(Ok(true)) => {}
                _ => return Err("the sandbox ended before its network was set up".to_string()),
            }
            start_slirp(slirp_bin, pid).await
        };
        match started.await {
            Ok(s) => slirp = Some(s),
            Err(e) => {
                // Without a go, sandbox-exec refuses to start the server: report how the sandbox ended.
                drop(go_write);
                let status = tokio::task::spawn_blocking(move || child.wait()).await;
                eprintln!("sandbox-net: {e}");
                return match status {
                    Ok(Ok(status)) => Ok(status),
                    _ => Err(e),
                };
            }
        }
        use std::io::Write;
        let _ = std::fs::File::from(go_write).write_all(&[READY]);
    }
    if let Some(dir) = &dir {
        for &port in &args.relays.expose {
            tokio::spawn(expose_host_side(expose_socket(dir, port), port));
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| format!("waiting for the sandbox: {e}"))?
        .map_err(|e| format!("waiting for the sandbox: {e}"))?;
    if let Some(mut slirp) = slirp {
        let _ = slirp.kill();
        let _ = slirp.wait();
    }
    if let Some(dir) = &dir {
        for &port in &args.relays.reach {
            let _ = std::fs::remove_file(reach_socket(dir, port));
        }
    }
    Ok(status)
}

/// bwrap's `--info-fd` JSON: `{ "child-pid": N }` — the sandbox's first process, in its namespaces.
async fn read_child_pid(fd: OwnedFd) -> Result<i32, String> {
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let mut file = std::fs::File::from(fd);
        file.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let value: serde_json::Value =
            serde_json::from_str(text.trim()).map_err(|e| format!("{e} in {text:?}"))?;
        value["child-pid"].as_i64().map(|p| p as i32).ok_or_else(|| format!("no child-pid in {text:?}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Starts slirp4netns for the namespace of `pid` and waits until it configured the interface.
async fn start_slirp(bin: &Path, pid: i32) -> Result<std::process::Child, String> {
    let (ready_read, ready_write) = pipe()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--ready-fd={}", ready_write.as_raw_fd()));
    let user_ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let mut owner_fd = None;
    if user_ns(&pid.to_string()) != user_ns("self") {
        // An unprivileged daemon's sandbox has user namespaces of its own (which this uid owns): the
        // network namespace can only be joined from inside the one that owns it — the first bwrap
        // created, not the nested one of `--disable-userns` that the process runs in.
        let fd = owning_user_ns(pid)?;
        cmd.arg("--netns-type=path")
            .arg(format!("--userns-path=/proc/self/fd/{}", fd.as_raw_fd()))
            .arg(format!("/proc/{pid}/ns/net"));
        owner_fd = Some(fd);
    } else {
        cmd.arg(pid.to_string());
    }
    let inherit: Vec<i32> = owner_fd.iter().map(|f| f.as_raw_fd()).collect();
    // Never the server's stdio: stdout is an MCP channel, and slirp's chatter would fill the log.
    cmd.arg("tap0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let keep = ready_write.as_raw_fd();
    // SAFETY: prctl and fcntl on fds we own, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // slirp4netns outlives nothing: killed with this supervisor, however it ends (SIGKILL too).
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for fd in std::iter::once(keep).chain(inherit.iter().copied()) {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    drop(ready_write);
    drop(owner_fd);
    let ready = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        std::fs::File::from(ready_read).read(&mut byte).map(|n| n == 1)
    });
    match tokio::time::timeout(Duration::from_secs(10), ready).await {
        Ok(Ok(Ok(true))) => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("slirp4netns did not configure the sandbox's network ({other:?})"))
        }
    }
}

/// The user namespace that owns the network namespace of `pid` (`ioctl(NS_GET_USERNS)`).
fn owning_user_ns(pid: i32) -> Result<OwnedFd, String> {
    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1)
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
    // SAFETY: the ioctl takes no argument and returns a new descriptor (or -1).
    let fd = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(format!(
            "finding the owner of the sandbox's network namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Host side of `--expose PORT`: waits until the server answers inside, then serves `127.0.0.1:PORT`.
async fn expose_host_side(socket: PathBuf, port: u16) {
    loop {
        if let Ok(probe) = relay_connect(&socket).await {
            drop(probe);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(e) => {
                eprintln!("sandbox-net: cannot listen on 127.0.0.1:{port} yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    tcp_to_unix(listener, socket).await
}

/// Relays each TCP connection accepted on `listener` to the relay socket `socket` (after its READY).
/// Outside: `--expose` on the host's port; inside: `--reach` on the namespace's port.
async fn tcp_to_unix(listener: TcpListener, socket: PathBuf) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else { continue };
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Ok(mut unix) = relay_connect(&socket).await {
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
            }
        });
    }
}

/// Relays each Unix connection accepted on `listener` to `127.0.0.1:port`, saying READY once connected.
/// Outside: `--reach` to the host's port; inside: `--expose` to the server's own port.
async fn unix_to_tcp(listener: UnixListener, port: u16) {
    loop {
        let Ok((mut unix, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await
                && unix.write_all(&[READY]).await.is_ok()
            {
                let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
            }
        });
    }
}

/// Connects to a relay socket and waits for its [`READY`] byte.
async fn relay_connect(path: &Path) -> std::io::Result<UnixStream> {
    let mut unix = UnixStream::connect(path).await?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), unix.read_exact(&mut byte)).await {
        Ok(Ok(_)) if byte[0] == READY => Ok(unix),
        _ => Err(std::io::Error::other("the relay's far side is not reachable")),
    }
}

/// Inside the sandbox (called by `sandbox-exec` after it dropped privileges, before it executes the
/// server): forks the relay process that serves `--expose` and `--reach` from inside the namespace.
/// The relay ends with the sandbox's PID namespace.
pub fn start_inner_relay(dir: &Path, expose: &[u16], reach: &[u16]) -> Result<(), String> {
    if expose.is_empty() && reach.is_empty() {
        return Ok(());
    }
    // Bind before forking so that failures are reported and the server starts only with its relay.
    let mut expose_listeners = Vec::new();
    for &port in expose {
        let path = expose_socket(dir, port);
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("binding {}: {e}", path.display()))?;
        expose_listeners.push((l, port));
    }
    let mut reach_listeners = Vec::new();
    for &port in reach {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("listening on 127.0.0.1:{port} in the sandbox: {e}"))?;
        reach_listeners.push((l, reach_socket(dir, port)));
    }
    // SAFETY: sandbox-exec is single-threaded here; the child only runs the relay and exits.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => Ok(()),
        nix::unistd::ForkResult::Child => {
            // The server's stdio is not ours: the relay must not hold its pipes open.
            if let Ok(null) = std::fs::File::options().read(true).write(true).open("/dev/null") {
                for fd in 0..=2 {
                    // SAFETY: dup2 onto the standard descriptors.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            let code = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => {
                    rt.block_on(inner_relay(expose_listeners, reach_listeners));
                    0
                }
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

async fn inner_relay(
    expose: Vec<(std::os::unix::net::UnixListener, u16)>,
    reach: Vec<(std::net::TcpListener, PathBuf)>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, port) in expose {
        let _ = listener.set_nonblocking(true);
        if let Ok(listener) = UnixListener::from_std(listener) {
            tasks.spawn(unix_to_tcp(listener, port));
        }
    }
    for (listener, socket) in reach {
        let _ = listener.set_nonblocking(true);
        if let Ok(listener) = TcpListener::from_std(listener) {
            tasks.spawn(tcp_to_unix(listener, socket));
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_child_pid_is_read_from_bwraps_info() {
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::io::Write;
        std::fs::File::from(w).write_all(b"{\n    \"child-pid\": 4242\n}\n").unwrap();
        assert_eq!(read_child_pid(r).await.unwrap(), 4242);
    }
}
