//! Finding out once, at start-up, whether the sandbox really works on this host.
//!
//! The probe does not guess from kernel versions or sysctls: it runs a real sandboxed command built by
//! the same [`super::wrap`] the servers get, and checks that it ran as the expected uid and that the
//! probe's own "data dir" does not exist inside. Anything else is reported as the reason the sandbox is
//! unavailable, for the operator to read in the log and in push output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{AppSandbox, SandboxPolicy, Status, landlock, wrap};

/// How the sandboxed process gets its unprivileged identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The daemon is root: no user namespace; `sandbox-exec` switches to a real per-app uid.
    DropToUid,
    /// The daemon is an ordinary user: a user namespace maps uid 65534 inside to the daemon's uid.
    UserNamespace,
}

impl Identity {
    /// The identity the current process would use.
    pub fn current() -> Identity {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 { Identity::DropToUid } else { Identity::UserNamespace }
    }
}

/// What the probe found.
#[derive(Debug, Clone)]
pub struct SandboxSupport {
    /// The resolved bubblewrap binary.
    pub bwrap: Option<PathBuf>,
    pub identity: Identity,
    /// Landlock ABI version, 0 when unavailable.
    pub landlock_abi: u32,
    /// `Some(reason)` when servers cannot be sandboxed.
    pub unavailable: Option<String>,
}

impl SandboxSupport {
    /// One line for the log: mechanism and limits enforcement.
    pub fn describe(&self) -> String {
        let who = match self.identity {
            Identity::DropToUid => "daemon is root: servers switch to a per-app uid, no user namespace",
            Identity::UserNamespace => "user namespace, uid 65534 inside",
        };
        let landlock = match self.landlock_abi {
            0 => "Landlock unavailable".to_string(),
            n => format!("Landlock ABI {n}"),
        };
        format!("{who}; limits via rlimits; {landlock}")
    }
}

/// Runs a sandboxed `sh -c` with `policy` and reports whether it behaved.
pub fn probe(policy: &SandboxPolicy) -> SandboxSupport {
    let identity = Identity::current();
    let landlock_abi = landlock::abi();
    let mut support = SandboxSupport { bwrap: None, identity, landlock_abi, unavailable: None };
    let Some(bwrap) = find_program(&policy.bwrap) else {
        support.unavailable = Some(format!(
            "bubblewrap ({}) is not installed (Debian/Ubuntu: apt-get install bubblewrap)",
            policy.bwrap.display()
        ));
        return support;
    };
    support.bwrap = Some(bwrap.clone());
    if let Err(why) = trial_run(policy, &bwrap, identity, landlock_abi) {
        support.unavailable = Some(why);
    }
    support
}

fn trial_run(policy: &SandboxPolicy, bwrap: &Path, identity: Identity, abi: u32) -> Result<(), String> {
    // Unique per probe: several probes may run at once in one process (tests, a reload).
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("catwalk-sandbox-probe-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let secret = root.join("secret");
    let home = root.join("home");
    std::fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
    std::fs::write(&secret, b"x").map_err(|e| format!("writing {}: {e}", secret.display()))?;
    let result = (|| -> Result<(), String> {
        let mut trial = policy.clone();
        trial.bwrap = bwrap.to_path_buf();
        trial.runtime.status = Some(Status::Active { identity, landlock_abi: abi });
        let sb = AppSandbox {
            identity: "catwalk-probe".into(),
            home: home.clone(),
            cwd: home.clone(),
            ..Default::default()
        };
        let script = format!(
            "echo catwalk-sandbox-probe $(id -u); if test -e '{}'; then echo LEAK; fi",
            secret.display()
        );
        let argv = wrap(&trial, &sb, &["/bin/sh".into(), "-c".into(), script])?;
        let output = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected_uid = match identity {
            Identity::DropToUid => trial.uid_for("catwalk-probe"),
            Identity::UserNamespace => 65534,
        };
        if !output.status.success() || !stdout.contains("catwalk-sandbox-probe") {
            return Err(format!(
                "a trial sandbox failed ({}): {}",
                output.status,
                first_line(&stderr)
                    .unwrap_or("no error output; is the catwalk binary's sandbox-exec reachable?")
            ));
        }
        if stdout.contains("LEAK") {
            return Err("a trial sandbox could see a file outside its directories".into());
        }
        if !stdout.contains(&format!("catwalk-sandbox-probe {expected_uid}")) {
            return Err(format!("a trial sandbox ran as the wrong uid: {}", stdout.trim()));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// `name` if it is a path to a file, else the first match on PATH.
fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let paths = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file())
}
