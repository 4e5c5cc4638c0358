//! Isolation of deployed servers and their install steps (bubblewrap + rlimits + Landlock).
//!
//! Every server process and every install command runs inside a `bwrap` sandbox built by [`wrap`]:
//! fresh mount, PID, IPC and UTS namespaces (network too with `network = "none"`), in which only the
//! system's read-only directories (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc`), the language toolchains,
//! the release's install directory (read-only), the app's home (writable) and a private `/tmp` exist.
//! The data dir, other apps, the daemon's keys and its state store are simply not in that file system,
//! and the daemon's processes are not in that PID namespace, so nothing can read or signal them.
//!
//! Inside, `catwalk sandbox-exec` (see [`exec`]) sets `no_new_privs`, the resource limits, a seccomp
//! filter against new user namespaces, the optional Landlock rules of the strict mode, and (when the daemon runs as root) drops to an unprivileged uid
//! with an empty capability bounding set before it executes the server:
//!
//! ```text
//! bwrap [namespaces, mounts] -- /path/to/catwalk sandbox-exec [limits] -- CMD ARGS...
//! ```
//!
//! Two identities, chosen by the daemon's own uid:
//! - daemon is root: `bwrap` runs without a user namespace (it may, as root) and `sandbox-exec` switches
//!   to a real unprivileged uid derived from the app's name (`uid_base + hash % uid_count`). The server
//!   is unprivileged on the host too, so root-only files that are visible (`/etc/shadow`, the host's
//!   OpenSSH keys) stay unreadable, and `RLIMIT_NPROC` counts the app's processes across its sessions.
//! - daemon is an ordinary user (the systemd unit): `bwrap --unshare-user --uid 65534 --disable-userns
//!   --cap-drop ALL`; uid 65534 inside maps to the daemon's uid outside, which owns nothing visible
//!   except the app's own directories. `RLIMIT_NPROC` then counts per server process tree.
//!
//! Availability is probed once ([`SandboxPolicy::activate`]): `strict` refuses to start without a
//! working sandbox and Landlock; `standard` (default) warns in the log and in every push's output and
//! runs unsandboxed; `off` is the operator's explicit choice (and still shows the warning).

mod cgroup;
mod exec;
mod landlock;
mod net;
mod probe;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod seccomp;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

pub use exec::{ExecArgs, exec};
pub use net::{NetArgs, supervise as supervise_network};
pub use probe::{Identity, SandboxSupport, probe};

/// The operator's choice of how hard isolation is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Sandbox plus Landlock (daemon ports unreachable, signals and abstract sockets scoped);
    /// the daemon refuses to start when any part is unavailable.
    Strict,
    /// Sandbox when available; otherwise run unsandboxed with a loud warning everywhere.
    #[default]
    Standard,
    /// No sandbox (explicit; pushes still print a warning).
    Off,
}

/// Network access of sandboxed processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network (most MCP servers call APIs).
    #[default]
    Default,
    /// A private network namespace with only a loopback interface.
    None,
}

/// `[sandbox]` in the daemon's config plus what start-up learned (probe result, paths to expose or hide).
///
/// Sizes are byte counts; 0 disables a limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxPolicy {
    pub mode: SandboxMode,
    /// Memory per server process, bytes: `RLIMIT_DATA` (heap and private mappings), and `memory.max`
    /// of the app's cgroup when cgroups v2 are delegated.
    #[serde(deserialize_with = "size")]
    pub memory_max: u64,
    /// Processes plus threads (`RLIMIT_NPROC`; `pids.max` with cgroups v2).
    pub max_processes: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
    /// Largest file a process may write, bytes (`RLIMIT_FSIZE`).
    #[serde(deserialize_with = "size")]
    pub max_file_size: u64,
    /// CPU seconds per process before SIGXCPU/SIGKILL (`RLIMIT_CPU`); 0 = unlimited.
    pub cpu_seconds: u64,
    /// Relative CPU share (cgroups v2 `cpu.weight`, 1..=10000); without cgroups it is not enforced.
    pub cpu_weight: u32,
    /// Size of the private `/tmp` tmpfs, bytes.
    #[serde(deserialize_with = "size")]
    pub tmp_size: u64,
    /// Network access of every sandboxed server: `default` is outbound through slirp4netns from a
    /// network namespace of its own (installs get the same), `none` only a private loopback.
    pub network: Network,
    /// Extra host directories made visible read-only (toolchains installed somewhere unusual).
    pub extra_ro_paths: Vec<PathBuf>,
    /// The bubblewrap binary (a name is looked up on PATH).
    pub bwrap: PathBuf,
    /// First uid of the range servers run as when the daemon is root (per-app uid = base + hash % count).
    pub uid_base: u32,
    /// Size of that range.
    pub uid_count: u32,
    #[serde(skip)]
    pub runtime: Runtime,
}

/// What start-up adds to the configured policy.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// The probe's verdict; `None` until [`SandboxPolicy::activate`] ran.
    pub status: Option<Status>,
    /// The catwalk binary bound into the sandbox to run `sandbox-exec` (default: this executable).
    pub catwalk_exe: Option<PathBuf>,
    /// Toolchain directories (Node, Python) made visible read-only.
    pub toolchain_paths: Vec<PathBuf>,
    /// TCP ports of the daemon itself (SSH, HTTP) that strict mode makes unreachable.
    pub protected_ports: Vec<u16>,
    /// The daemon's delegated cgroup v2 directory, when there is one (apps get `app-<identity>` in it).
    pub cgroup_parent: Option<PathBuf>,
    /// Catwalk-owned paths masked in every sandbox when they lie under a visible system directory
    /// (an `authorized_keys_file` in `/etc/catwalk`, a data dir in `/etc`); see [`AppSandbox::hidden`].
    pub hidden_paths: Vec<PathBuf>,
    /// Where per-process relay directories live (`DATA/run/net`); `None`: no network namespaces (the
    /// bridge, unit tests), processes keep the host's network unless they asked for `none`.
    pub net_dir: Option<PathBuf>,
    /// The slirp4netns binary (found at activation); without it `network = "default"` processes keep
    /// the host's network, with a warning at start-up.
    pub slirp4netns: Option<PathBuf>,
}

/// Whether servers are sandboxed, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Active { identity: Identity, landlock_abi: u32 },
    Unavailable(String),
    Off,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        SandboxPolicy {
            mode: SandboxMode::Standard,
            memory_max: 2 << 30,
            max_processes: 512,
            max_open_files: 4096,
            max_file_size: 1 << 30,
            cpu_seconds: 0,
            cpu_weight: 100,
            tmp_size: 256 << 20,
            network: Network::Default,
            extra_ro_paths: Vec::new(),
            bwrap: PathBuf::from("bwrap"),
            uid_base: 1_900_000_000,
            uid_count: 1_000_000,
            runtime: Runtime::default(),
        }
    }
}

/// What one sandboxed process may see, besides the system directories and toolchains.
#[derive(Debug, Clone, Default)]
pub struct AppSandbox {
    /// Whose process this is: the app's name, or `install` for shared installs. Chooses the uid.
    pub identity: String,
    /// The app's home: writable, also `HOME`.
    pub home: PathBuf,
    /// More writable directories (the install directory during an install, the download cache).
    pub writable: Vec<PathBuf>,
    /// Read-only directories (the release's install or source directory).
    pub readonly: Vec<PathBuf>,
    /// Working directory inside the sandbox (must be one of the visible paths).
    pub cwd: PathBuf,
    /// Catwalk-owned paths to mask if they happen to live under a visible system directory
    /// (a data dir in `/etc/catwalk`, a config file); masked with an empty tmpfs or `/dev/null`.
    pub hidden: Vec<PathBuf>,
    /// Network override for this process (an app that declared `network = "none"`).
    pub network: Option<Network>,
    /// TCP ports the process listens on inside its namespace, served on the host's 127.0.0.1 (a
    /// `transport = "http"` server's port; see `net.rs`).
    pub expose: Vec<u16>,
    /// Host 127.0.0.1 ports the process may reach, as the same ports inside (a registry mirror on
    /// loopback during an install).
    pub reach: Vec<u16>,
}

/// The system directories every sandbox sees read-only.
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

impl SandboxPolicy {
    /// Checks the configured values (called by the config parser).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10000).contains(&self.cpu_weight) {
            return Err(format!("sandbox.cpu_weight = {}: expected 1..=10000", self.cpu_weight));
        }
        if self.uid_count == 0 || self.uid_base == 0 || self.uid_base.checked_add(self.uid_count).is_none() {
            return Err(format!(
                "sandbox.uid_base = {} / uid_count = {}: the range must be non-empty, above 0 and below 2^32",
                self.uid_base, self.uid_count
            ));
        }
        if self.memory_max != 0 && self.memory_max < 16 << 20 {
            return Err(format!(
                "sandbox.memory_max = {}: below 16 MiB no runtime starts (0 disables the limit)",
                self.memory_max
            ));
        }
        for p in &self.extra_ro_paths {
            if !p.is_absolute() {
                return Err(format!("sandbox.extra_ro_paths: {} is not an absolute path", p.display()));
            }
        }
        Ok(())
    }

    /// Uses `exe` as the binary that runs `sandbox-exec` (tests pass the real `catwalk`).
    pub fn with_catwalk_exe(mut self, exe: PathBuf) -> Self {
        self.runtime.catwalk_exe = Some(exe);
        self
    }

    /// Makes the real install directories of these runtime binaries (e.g. `/root/.pyenv/versions/3.11.7`
    /// for its `bin/python3`) visible read-only.
    pub fn with_toolchain(mut self, binaries: &[&Path]) -> Self {
        for root in toolchain_roots(binaries) {
            if !self.runtime.toolchain_paths.contains(&root) {
                self.runtime.toolchain_paths.push(root);
            }
        }
        self
    }

    /// The daemon's own TCP ports, unreachable from servers in strict mode.
    pub fn with_protected_ports(mut self, ports: &[u16]) -> Self {
        self.runtime.protected_ports = ports.iter().copied().filter(|p| *p != 0).collect();
        self
    }

    /// Masks these catwalk-owned paths in every sandbox (when they are under a visible system directory).
    pub fn with_hidden(mut self, paths: &[PathBuf]) -> Self {
        self.runtime.hidden_paths.extend(paths.iter().cloned());
        self
    }

    /// Probes the host once and records the verdict. `Err` (strict mode without a full sandbox) is the
    /// message the daemon prints before refusing to start.
    pub fn activate(mut self) -> Result<SandboxPolicy, String> {
        if self.mode == SandboxMode::Off {
            tracing::warn!(
                "sandbox: [sandbox] mode = \"off\": deployed servers run unsandboxed with the daemon's privileges"
            );
            self.runtime.status = Some(Status::Off);
            return Ok(self);
        }
        let support = probe(&self);
        if let Some(bwrap) = &support.bwrap {
            self.bwrap = bwrap.clone();
        }
        let status = match (&support.unavailable, self.mode) {
            (Some(why), SandboxMode::Strict) => {
                return Err(format!(
                    "sandbox mode \"strict\" needs a working bubblewrap sandbox, but {why}. Install the Debian \
                     package `bubblewrap` and allow user namespaces, or set [sandbox] mode = \"standard\""
                ));
            }
            (Some(why), _) => {
                tracing::warn!("WARNING: servers run without a sandbox: {why}");
                Status::Unavailable(why.clone())
            }
            (None, mode) => {
                let abi = support.landlock_abi;
                if mode == SandboxMode::Strict && abi < landlock::ABI_NET {
                    return Err(format!(
                        "sandbox mode \"strict\" blocks the daemon's own ports with Landlock TCP rules, which \
                         need Landlock ABI {} (Linux 6.7 or newer with landlock in the lsm= list); this \
                         kernel offers ABI {abi}{}. Use mode = \"standard\" to run without that protection",
                        landlock::ABI_NET,
                        if abi == 0 { " (Landlock unavailable)" } else { "" }
                    ));
                }
                tracing::info!(
                    identity = ?support.identity,
                    landlock_abi = abi,
                    "sandbox: servers run in bubblewrap ({})",
                    support.describe()
                );
                match cgroup::prepare() {
                    Ok(dir) => {
                        tracing::info!("sandbox: cgroups v2 limits per app under {}", dir.display());
                        self.runtime.cgroup_parent = Some(dir);
                    }
                    Err(why) => {
                        tracing::info!("sandbox: cgroups v2 not used ({why}); rlimits enforce the limits")
                    }
                }
                Status::Active { identity: support.identity, landlock_abi: abi }
            }
        };
        if matches!(status, Status::Active { .. }) && self.runtime.net_dir.is_some() {
            self.runtime.slirp4netns = find_on_path("slirp4netns");
            // slirp4netns opens /dev/net/tun as the daemon's user (Debian makes it 0666; some hosts 0600).
            if self.runtime.slirp4netns.is_some()
                && let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")
            {
                tracing::warn!(
                    "sandbox: slirp4netns cannot open /dev/net/tun ({e}); `chmod 0666 /dev/net/tun`"
                );
                self.runtime.slirp4netns = None;
            }
            match &self.runtime.slirp4netns {
                Some(p) => {
                    tracing::info!("sandbox: a network namespace per process, outbound via {}", p.display())
                }
                None if self.network == Network::Default => tracing::warn!(
                    "WARNING: slirp4netns is not installed (Debian package slirp4netns): servers and installs \
                     share the host's network, so they can reach each other's and the daemon's loopback ports"
                ),
                None => {}
            }
        }
        self.runtime.status = Some(status);
        Ok(self)
    }

    /// Gives every sandboxed process a network namespace of its own, with relay directories under `dir`.
    pub fn with_net_dir(mut self, dir: PathBuf) -> SandboxPolicy {
        self.runtime.net_dir = Some(dir);
        self
    }

    /// True when [`wrap`] sandboxes.
    pub fn is_active(&self) -> bool {
        matches!(self.runtime.status, Some(Status::Active { .. }))
    }

    /// The line every push prints when servers are not sandboxed; `None` when they are.
    pub fn warning(&self) -> Option<String> {
        let why = match &self.runtime.status {
            Some(Status::Active { .. }) => return None,
            Some(Status::Unavailable(why)) => why.clone(),
            Some(Status::Off) => "[sandbox] mode = \"off\" in the daemon's config".to_string(),
            None => "the sandbox was never activated at start-up (SandboxPolicy::activate)".to_string(),
        };
        Some(format!("WARNING: servers run without a sandbox: {why}"))
    }

    /// The uid a process of `identity` runs as when the daemon is root.
    pub fn uid_for(&self, identity: &str) -> u32 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(identity.as_bytes());
        let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        self.uid_base + n % self.uid_count.max(1)
    }

    fn catwalk_exe(&self) -> Result<PathBuf, String> {
        match &self.runtime.catwalk_exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the catwalk executable for sandbox-exec: {e}")),
        }
    }
}

/// The real install roots of runtime binaries outside the system directories: `<root>/bin/<exe>` gives
/// `<root>`, anything else its directory. Symlinks (pyenv shims, venvs) are resolved first.
pub fn toolchain_roots(binaries: &[&Path]) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for bin in binaries {
        let Ok(real) = std::fs::canonicalize(bin) else { continue };
        if under_system_dir(&real) {
            continue;
        }
        let Some(dir) = real.parent() else { continue };
        let root = if dir.file_name().is_some_and(|n| n == "bin") {
            dir.parent().unwrap_or(dir).to_path_buf()
        } else {
            dir.to_path_buf()
        };
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    roots
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn under_system_dir(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
}

/// Returns the argv that runs `argv` inside the sandbox described by `policy` and `sb` (unchanged when
/// the sandbox is off or unavailable: [`SandboxPolicy::warning`] says so). When the daemon is root it
/// also hands the writable directories to the app's uid (`chown -R`), since that uid writes them.
pub fn wrap(policy: &SandboxPolicy, sb: &AppSandbox, argv: &[String]) -> Result<Vec<String>, String> {
    let Some(Status::Active { identity, landlock_abi }) = &policy.runtime.status else {
        return Ok(argv.to_vec());
    };
    if argv.is_empty() {
        return Err("internal: cannot sandbox an empty command".into());
    }
    let exe = policy.catwalk_exe()?;
    let uid = match identity {
        Identity::DropToUid => policy.uid_for(&sb.identity),
        Identity::UserNamespace => 65534,
    };
    for dir in std::iter::once(&sb.home).chain(&sb.writable) {
        // bwrap binds only existing directories; the sandbox's uid must own what it writes.
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if *identity == Identity::DropToUid {
            chown_tree(dir, uid)?;
        }
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    if let Some(parent) = &policy.runtime.cgroup_parent {
        // Outer stage, still outside the namespaces: join the app's cgroup, then exec bwrap.
        let name: String = sb
            .identity
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
            .collect();
        let dir = parent.join(format!("app-{name}"));
        push(&[&exe.to_string_lossy(), "sandbox-exec", "--cgroup", &dir.to_string_lossy()]);
        push(&[
            "--cg-memory",
            &policy.memory_max.to_string(),
            "--cg-pids",
            &policy.max_processes.to_string(),
        ]);
        push(&["--cg-weight", &policy.cpu_weight.to_string(), "--"]);
    }
    let network = sb.network.unwrap_or(policy.network);
    // A namespace of its own (net.rs): always for `none`; for `default` when slirp4netns can give it
    // an uplink. The supervisor in front of bwrap adds the uplink and the relays.
    let own_namespace = network == Network::None || policy.runtime.slirp4netns.is_some();
    let relay_dir = match &policy.runtime.net_dir {
        Some(net_dir) if own_namespace && !(sb.expose.is_empty() && sb.reach.is_empty()) => Some(relay_dir(
            net_dir,
            &sb.identity,
            if *identity == Identity::DropToUid { Some(uid) } else { None },
        )?),
        _ => None,
    };
    // The same relay arguments go to the supervisor (host side) and to sandbox-exec (inside).
    let mut relay_args: Vec<String> = Vec::new();
    if let Some(dir) = &relay_dir {
        relay_args.extend(["--relay-dir".to_string(), dir.to_string_lossy().into_owned()]);
        let ports = sb.expose.iter().map(|p| ("--expose", p)).chain(sb.reach.iter().map(|p| ("--reach", p)));
        for (flag, port) in ports {
            relay_args.extend([flag.to_string(), port.to_string()]);
        }
    }
    if policy.runtime.net_dir.is_some() && own_namespace {
        push(&[&exe.to_string_lossy(), "sandbox-net"]);
        if network == Network::Default
            && let Some(slirp) = &policy.runtime.slirp4netns
        {
            push(&["--slirp", &slirp.to_string_lossy()]);
        }
        let relay: Vec<&str> = relay_args.iter().map(String::as_str).collect();
        push(&relay);
        push(&["--"]);
    }
    push(&[&policy.bwrap.to_string_lossy()]);
    push(&["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]);
    if own_namespace && (network == Network::None || policy.runtime.net_dir.is_some()) {
        push(&["--unshare-net"]);
    }
    if *identity == Identity::UserNamespace {
        let id = uid.to_string();
        push(&["--unshare-user", "--uid", &id, "--gid", &id, "--disable-userns", "--cap-drop", "ALL"]);
    }
    // No `--new-session`: the spawner already put the command in a session of its own
    // ([`crate::process_group::own_session`]), which keeps TIOCSTI away from any terminal just the same, while SIGTERM to
    // the process group still reaches the server (bwrap's --new-session would shield it).
    push(&["--die-with-parent", "--hostname", "catwalk-app"]);
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(path).map_err(|e| format!("reading link {dir}: {e}"))?;
                push(&["--symlink", &target.to_string_lossy(), dir]);
            }
            Ok(m) if m.is_dir() => push(&["--ro-bind", dir, dir]),
            _ => {}
        }
    }
    // Mount points in order: (path, is a tmpfs bwrap may create directories in).
    let mut mounts: Vec<(PathBuf, bool)> = SYSTEM_DIRS.iter().map(|d| (PathBuf::from(d), false)).collect();
    mounts.extend([(PathBuf::from("/proc"), false), (PathBuf::from("/dev"), false), ("/tmp".into(), true)]);
    push(&["--proc", "/proc", "--dev", "/dev"]);
    if policy.tmp_size > 0 {
        push(&["--size", &policy.tmp_size.to_string()]);
    }
    push(&["--perms", "1777", "--tmpfs", "/tmp"]);
    for hidden in policy.runtime.hidden_paths.iter().chain(&sb.hidden) {
        if !under_system_dir(hidden) {
            continue; // not visible anyway: only the paths bound below exist in the sandbox
        }
        let h = hidden.to_string_lossy();
        match std::fs::metadata(hidden) {
            Ok(m) if m.is_dir() => {
                push(&["--tmpfs", &h]);
                mounts.push((hidden.clone(), true));
            }
            Ok(_) => {
                push(&["--ro-bind", "/dev/null", &h]);
                mounts.push((hidden.clone(), false));
            }
            Err(_) => {}
        }
    }
    let ro_extra = policy.runtime.toolchain_paths.iter().chain(&policy.extra_ro_paths);
    let readonly = ro_extra.chain(std::iter::once(&exe)).chain(&sb.readonly);
    for path in readonly.filter(|p| !under_system_dir(p) && p.exists()) {
        let d = path.to_string_lossy();
        push(&["--ro-bind", &d, &d]);
        mounts.push((path.clone(), false));
    }
    for dir in std::iter::once(&sb.home).chain(&sb.writable).chain(&relay_dir) {
        let d = dir.to_string_lossy();
        push(&["--bind", &d, &d]);
        mounts.push((dir.clone(), false));
    }
    // bwrap creates missing parents of mount points with the modes of the host's directories (`/root` is
    // 0700): open them up so the unprivileged uid can reach what was bound for it.
    for dir in traversable_parents(&mounts) {
        push(&["--chmod", "0755", &dir.to_string_lossy()]);
    }
    push(&["--chdir", &sb.cwd.to_string_lossy()]);
    push(&["--", &exe.to_string_lossy(), "sandbox-exec", "--no-new-privs", "--no-userns"]);
    if policy.runtime.net_dir.is_some() && network == Network::Default && policy.runtime.slirp4netns.is_some()
    {
        push(&["--net-sync"]);
    }
    let relay: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    push(&relay);
    for (flag, value) in [
        ("--nproc", policy.max_processes),
        ("--nofile", policy.max_open_files),
        ("--mem", policy.memory_max),
        ("--fsize", policy.max_file_size),
        ("--cpu", policy.cpu_seconds),
    ] {
        if value > 0 {
            push(&[flag, &value.to_string()]);
        }
    }
    if *identity == Identity::DropToUid {
        let id = uid.to_string();
        push(&["--uid", &id, "--gid", &id]);
    }
    if policy.mode == SandboxMode::Strict && *landlock_abi >= landlock::ABI_NET {
        if network != Network::None && !policy.runtime.protected_ports.is_empty() {
            let ports: Vec<String> = policy.runtime.protected_ports.iter().map(u16::to_string).collect();
            push(&["--deny-tcp-connect", &ports.join(",")]);
        }
        if *landlock_abi >= landlock::ABI_SCOPE {
            push(&["--landlock-scope"]);
        }
    }
    push(&["--"]);
    a.extend(argv.iter().cloned());
    Ok(a)
}

/// A fresh directory for one sandboxed process's relay sockets (`net.rs`), writable by its uid. Random,
/// so that concurrent processes of one identity (installs) never share sockets.
fn relay_dir(net_dir: &Path, identity: &str, owner: Option<u32>) -> Result<PathBuf, String> {
    let safe: String = identity
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(40)
        .collect();
    let mut random = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    let dir = net_dir.join(format!("{safe}-{}", hex::encode(random)));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if let Some(uid) = owner {
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .map_err(|e| format!("handing {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok(dir)
}

/// Parents of mount points that bwrap creates itself (on its root tmpfs or inside a tmpfs mount), which
/// are therefore safe to chmod; parents inside bind mounts and the mount points themselves are left alone.
fn traversable_parents(mounts: &[(PathBuf, bool)]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for (mount, _) in mounts {
        for parent in mount.ancestors().skip(1) {
            if parent == Path::new("/") || out.iter().any(|p| p == parent) {
                continue;
            }
            let holder =
                mounts.iter().filter(|(m, _)| parent.starts_with(m)).max_by_key(|(m, _)| m.as_os_str().len());
            let created_by_bwrap = match holder {
                None => true,
                Some((m, tmpfs)) => *tmpfs && m != parent,
            };
            if created_by_bwrap {
                out.push(parent.to_path_buf());
            }
        }
    }
    out.sort_by_key(|p| p.components().count());
    out
}

/// `chown -R uid:uid dir` without following symlinks: hands `dir` and everything beneath it to `uid`
/// (directories, files and links themselves).
///
/// `dir` is the daemon's path, but what is beneath it was written by the app's own processes, which may
/// be running while this walks (another session's server in the same home). So no path beneath `dir`
/// is ever resolved: each directory is opened from its parent's handle with `O_NOFOLLOW`, and each
/// entry is chowned with `fchownat(parent, name, AT_SYMLINK_NOFOLLOW)`. A directory swapped for a link
/// mid-walk fails to open (and is skipped: its owner already is the sandbox), a link is chowned as a
/// link, and nothing outside `dir` changes owner. Hard links to files outside `dir` cannot exist: the
/// sandbox sees `dir` as its own mount, and `link(2)` across mounts fails (`EXDEV`).
fn chown_tree(dir: &Path, uid: u32) -> Result<(), String> {
    let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    // The directory itself, through its handle (an `O_PATH` descriptor: hence `AT_EMPTY_PATH`).
    let itself = nix::fcntl::AtFlags::AT_EMPTY_PATH | nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    nix::unistd::fchownat(&root, "", owner, group, itself)
        .map_err(|e| format!("handing {} to the sandbox's uid {uid}: {e}", dir.display()))?;
    chown_beneath(&root, dir, uid, 0)
}

/// Directories deeper than this are not descended into: the walk holds one handle per level.
const CHOWN_MAX_DEPTH: usize = 256;

fn chown_beneath(dir: &cap_std::fs::Dir, shown: &Path, uid: u32, depth: usize) -> Result<(), String> {
    use cap_fs_ext::DirExt;
    use nix::errno::Errno;
    if depth >= CHOWN_MAX_DEPTH {
        return Err(format!("{} is nested deeper than {CHOWN_MAX_DEPTH} directories", shown.display()));
    }
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    // The names first, so that only one directory handle per level is open while descending.
    let mut subdirs = Vec::new();
    for entry in dir.entries().map_err(|e| format!("reading {}: {e}", shown.display()))? {
        let entry = entry.map_err(|e| format!("reading {}: {e}", shown.display()))?;
        let name = entry.file_name();
        match nix::unistd::fchownat(
            dir,
            name.as_os_str(),
            owner,
            group,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {}
            // Removed by the app while we walked: nothing left to hand over.
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                return Err(format!(
                    "handing {} to the sandbox's uid {uid}: {e}",
                    shown.join(&name).display()
                ));
            }
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(name);
        }
    }
    for name in subdirs {
        match dir.open_dir_nofollow(&name) {
            Ok(sub) => chown_beneath(&sub, &shown.join(&name), uid, depth + 1)?,
            // Replaced by a link, a file or nothing since it was listed: not followed, not ours to walk.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)) => {}
            Err(e) => return Err(format!("opening {}: {e}", shown.join(&name).display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod chown_tree_tests {
    use super::chown_tree;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hands_over_the_tree_and_never_what_a_link_points_at() {
        if !nix::unistd::Uid::effective().is_root() {
            // Only root can chown to another uid; the daemon uses chown_tree only as root.
            return assert!(chown_tree(std::path::Path::new("/nonexistent-catwalk"), 1).is_err());
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir_all(h.join("a/b")).unwrap();
        std::fs::write(h.join("a/b/f"), "y").unwrap();
        std::os::unix::fs::symlink(outside.path(), h.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), h.join("a/file-link")).unwrap();
        let uid = 54_321;
        chown_tree(h, uid).unwrap();
        for inside in ["", "a", "a/b", "a/b/f", "dir-link", "a/file-link"] {
            assert_eq!(std::fs::symlink_metadata(h.join(inside)).unwrap().uid(), uid, "{inside:?}");
        }
        for outside in [outside.path().to_path_buf(), outside.path().join("secret")] {
            assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0, "{} changed owner", outside.display());
        }
    }
}

/// A shared, activated policy (cheap to clone into every deploy).
pub type SharedPolicy = Arc<SandboxPolicy>;

/// Deserialises a size given either as a byte count or as a string such as `"512M"` / `"2G"`.
pub fn size<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(de)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// `"512M"` → 536870912; plain digits are bytes; K/M/G/T are powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size like 1073741824 or \"1G\""))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or(format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests;
