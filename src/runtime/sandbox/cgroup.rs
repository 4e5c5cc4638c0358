//! cgroups v2 limits, used only when the daemon's cgroup was delegated to it.
//!
//! Delegation is recognised the way systemd marks it (`Delegate=yes` sets the `trusted.delegate`
//! extended attribute on the service's cgroup; user managers set `user.delegate`), never merely from
//! write permission: root can write any cgroup, and re-arranging a cgroup nobody delegated (a login
//! session's, a container's) would be an intrusion. With delegation, start-up moves the daemon into a
//! `daemon` leaf (cgroup v2 allows controllers only on cgroups without processes), enables the memory,
//! pids and cpu controllers, and each sandboxed process joins `app-<identity>` (created on demand with
//! `memory.max`, `pids.max`, `cpu.weight`) before bubblewrap starts. Without delegation (cgroup v1 hosts,
//! containers, a plain `catwalk serve`) the rlimits of `sandbox-exec` are the enforced limits.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Finds the daemon's delegated cgroup v2 and prepares it; `Err` explains why cgroups are not used.
pub fn prepare() -> Result<PathBuf, String> {
    if !Path::new(ROOT).join("cgroup.controllers").exists() {
        return Err("no cgroup v2 unified hierarchy at /sys/fs/cgroup".into());
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the process is not in a cgroup v2 hierarchy")?
        .trim_start_matches('/');
    let mut dir = PathBuf::from(ROOT).join(rel);
    if dir.file_name().is_some_and(|n| n == "daemon") {
        dir.pop(); // already moved into our leaf by an earlier start in this cgroup
    }
    if !delegated(&dir) {
        return Err(format!(
            "{} is not delegated to catwalk (systemd: Delegate=yes in the unit)",
            dir.display()
        ));
    }
    let leaf = dir.join("daemon");
    std::fs::create_dir_all(&leaf).map_err(|e| format!("creating {}: {e}", leaf.display()))?;
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        write(&leaf.join("cgroup.procs"), pid)?;
    }
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = ["memory", "pids", "cpu"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.iter().any(|w| w == "+memory") || !wanted.iter().any(|w| w == "+pids") {
        return Err(format!("{} does not offer the memory and pids controllers", dir.display()));
    }
    write(&dir.join("cgroup.subtree_control"), &wanted.join(" "))?;
    Ok(dir)
}

fn delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("static name");
        let mut buf = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
        let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0 && buf[0] == b'1'
    })
}

/// Limits of one app's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory: u64,
    pub pids: u64,
    pub cpu_weight: u32,
}

/// Creates (or updates) `dir` with `limits` and moves the calling process into it. Called by the outer
/// `sandbox-exec --cgroup` stage, before it executes bubblewrap, so everything inside inherits it.
pub fn join(dir: &Path, limits: Limits) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let max = |v: u64| if v == 0 { "max".to_string() } else { v.to_string() };
    write(&dir.join("memory.max"), &max(limits.memory))?;
    write(&dir.join("pids.max"), &max(limits.pids))?;
    if dir.join("cpu.weight").exists() {
        write(&dir.join("cpu.weight"), &limits.cpu_weight.to_string())?;
    }
    write(&dir.join("cgroup.procs"), &std::process::id().to_string())
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_writes_the_limits_then_the_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app-weather");
        join(&dir, Limits { memory: 512 << 20, pids: 0, cpu_weight: 50 }).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (512u64 << 20).to_string());
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("cgroup.procs"), std::process::id().to_string());
        assert!(!dir.join("cpu.weight").exists(), "cpu.weight only when the cpu controller is on");
    }

    #[test]
    fn an_undelegated_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!delegated(tmp.path()));
    }
}
