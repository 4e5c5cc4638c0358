//! `catwalk sandbox-exec`: the last step inside the sandbox before the server's own program.
//!
//! It runs as the first process of the sandbox's PID namespace (after bwrap's init) and, in this order:
//! sets `no_new_privs` (setuid binaries cannot regain privileges), applies the strict mode's Landlock
//! rules, drops to the app's uid with an empty capability bounding set (only when started as root),
//! sets the resource limits (soft = hard, so the server cannot raise them again), installs the seccomp
//! filter against new user namespaces, and executes the command with the environment it was given. Single-threaded on purpose: Landlock and credentials
//! apply per thread, and `exec` keeps them.

use std::os::unix::process::CommandExt;

use super::{cgroup, landlock};

/// prctl is variadic: pass full-width zeros, the kernel reads unsigned longs.
const ZERO: libc::c_ulong = 0;

/// Arguments of the hidden `catwalk sandbox-exec` subcommand (built by [`super::wrap`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// RLIMIT_NPROC: processes and threads of this uid.
    #[arg(long, value_name = "N")]
    pub nproc: Option<u64>,
    /// RLIMIT_NOFILE: open file descriptors.
    #[arg(long, value_name = "N")]
    pub nofile: Option<u64>,
    /// RLIMIT_DATA: bytes of heap and private writable mappings.
    #[arg(long, value_name = "BYTES")]
    pub mem: Option<u64>,
    /// RLIMIT_FSIZE: largest file written, bytes.
    #[arg(long, value_name = "BYTES")]
    pub fsize: Option<u64>,
    /// RLIMIT_CPU: CPU seconds.
    #[arg(long, value_name = "SECONDS")]
    pub cpu: Option<u64>,
    /// Set PR_SET_NO_NEW_PRIVS.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Switch to this uid (needs root); clears supplementary groups and the capability bounding set.
    #[arg(long, requires = "gid")]
    pub uid: Option<u32>,
    /// Switch to this gid (with --uid).
    #[arg(long, requires = "uid")]
    pub gid: Option<u32>,
    /// seccomp: creating user namespaces fails (EPERM; clone3 answers ENOSYS so libcs fall back to clone).
    #[arg(long)]
    pub no_userns: bool,
    /// Landlock: TCP connections to these ports fail (comma-separated).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub deny_tcp_connect: Vec<u16>,
    /// Landlock: no connecting to abstract unix sockets or signalling processes outside the sandbox.
    #[arg(long)]
    pub landlock_scope: bool,
    /// Outer stage: join (creating) this cgroup v2 directory before executing the command.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<std::path::PathBuf>,
    /// memory.max of that cgroup, bytes (0 = max).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub cg_memory: u64,
    /// pids.max of that cgroup (0 = max).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cg_pids: u64,
    /// cpu.weight of that cgroup.
    #[arg(long, value_name = "WEIGHT", default_value_t = 100)]
    pub cg_weight: u32,
    /// Inner stage: wait for the network supervisor (`net.rs`) before anything else.
    #[arg(long)]
    pub net_sync: bool,
    /// Inner stage: the relays of this sandbox's network namespace (see `net.rs`).
    #[command(flatten)]
    pub relays: super::net::RelayArgs,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Applies everything and executes the command. Returns only on failure, with the message to print.
pub fn exec(args: ExecArgs) -> String {
    match prepare(&args) {
        Ok(()) => {
            let err = std::process::Command::new(&args.command[0]).args(&args.command[1..]).exec();
            format!("sandbox-exec: cannot execute {}: {err}", args.command[0])
        }
        Err(e) => format!("sandbox-exec: {e}"),
    }
}

fn prepare(args: &ExecArgs) -> Result<(), String> {
    if args.net_sync {
        super::net::sync_with_supervisor()?;
    }
    if let Some(dir) = &args.cgroup {
        let limits =
            cgroup::Limits { memory: args.cg_memory, pids: args.cg_pids, cpu_weight: args.cg_weight };
        cgroup::join(dir, limits).map_err(|e| format!("joining the app's cgroup: {e}"))?;
    }
    if args.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, ZERO, ZERO, ZERO) } != 0 {
            return Err(format!("prctl(PR_SET_NO_NEW_PRIVS): {}", std::io::Error::last_os_error()));
        }
    }
    if !args.deny_tcp_connect.is_empty() || args.landlock_scope {
        landlock::restrict(&args.deny_tcp_connect, args.landlock_scope)
            .map_err(|e| format!("applying the strict mode's Landlock rules: {e}"))?;
    }
    if let (Some(uid), Some(gid)) = (args.uid, args.gid) {
        drop_to(uid, gid)?;
    }
    let limits = [
        (libc::RLIMIT_NPROC, args.nproc, "RLIMIT_NPROC"),
        (libc::RLIMIT_NOFILE, args.nofile, "RLIMIT_NOFILE"),
        (libc::RLIMIT_DATA, args.mem, "RLIMIT_DATA"),
        (libc::RLIMIT_FSIZE, args.fsize, "RLIMIT_FSIZE"),
        (libc::RLIMIT_CPU, args.cpu, "RLIMIT_CPU"),
    ];
    for (resource, value, name) in limits {
        if let Some(v) = value {
            let lim = libc::rlimit { rlim_cur: v as libc::rlim_t, rlim_max: v as libc::rlim_t };
            // SAFETY: `lim` is a valid rlimit for the duration of the call.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(format!("setrlimit({name}, {v}): {}", std::io::Error::last_os_error()));
            }
        }
    }
    if args.no_userns {
        deny_user_namespaces()?;
    }
    if let Some(dir) = &args.relays.relay_dir {
        // Forked last: the relay runs with everything above applied, as the server will.
        super::net::start_inner_relay(dir, &args.relays.expose, &args.relays.reach)?;
    }
    Ok(())
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_user_namespaces() -> Result<(), String> {
    super::seccomp::deny_user_namespaces()
        .map_err(|e| format!("installing the seccomp filter against user namespaces: {e}"))
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn deny_user_namespaces() -> Result<(), String> {
    Err("--no-userns: the seccomp filter is only built for x86_64 and aarch64".into())
}

/// Root → `uid`/`gid` for good: empty bounding set, no ambient caps, no supplementary groups, and a
/// check that root cannot be regained.
fn drop_to(uid: u32, gid: u32) -> Result<(), String> {
    let os = || std::io::Error::last_os_error();
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments; EINVAL for caps the kernel does not know is ignored.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, ZERO, ZERO, ZERO) } != 0
            && os().raw_os_error() != Some(libc::EINVAL)
        {
            return Err(format!("dropping capability {cap} from the bounding set: {}", os()));
        }
    }
    // SAFETY: integer arguments only.
    unsafe {
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, ZERO, ZERO, ZERO)
    };
    // SAFETY: a zero-length group list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(format!("clearing supplementary groups: {}", os()));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(format!("switching to gid {gid}: {}", os()));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(format!("switching to uid {uid}: {}", os()));
    }
    // SAFETY: integer arguments only.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err("dropped to an unprivileged uid but could switch back to root; refusing to run".into());
    }
    Ok(())
}
