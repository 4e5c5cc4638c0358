//! What happens when the sandbox is unavailable: strict refuses with a precise message, standard warns
//! (and pushes print the warning), off is explicit; `sandbox-exec` is hidden but usable.

use std::path::PathBuf;
use std::process::Command;

use catwalk::runtime::sandbox::{SandboxMode, SandboxPolicy};

fn without_bwrap(mode: SandboxMode) -> SandboxPolicy {
    SandboxPolicy { mode, bwrap: PathBuf::from("/nonexistent/bwrap"), ..Default::default() }
        .with_catwalk_exe(PathBuf::from(env!("CARGO_BIN_EXE_catwalk")))
}

#[test]
fn strict_mode_refuses_to_start_without_bubblewrap() {
    let err = without_bwrap(SandboxMode::Strict).activate().unwrap_err();
    assert!(err.contains("strict") && err.contains("bubblewrap"), "{err}");
    assert!(err.contains("/nonexistent/bwrap"), "names what is missing: {err}");
}

#[test]
fn standard_mode_runs_unsandboxed_with_a_warning() {
    let policy = without_bwrap(SandboxMode::Standard).activate().unwrap();
    assert!(!policy.is_active());
    let warning = policy.warning().unwrap();
    assert!(warning.starts_with("WARNING: servers run without a sandbox: "), "{warning}");
    assert!(warning.contains("bubblewrap"), "{warning}");
    let argv = vec!["/usr/bin/true".to_string()];
    let home = tempfile::tempdir().unwrap();
    let sb = catwalk::runtime::sandbox::AppSandbox {
        identity: "x".into(),
        home: home.path().into(),
        cwd: home.path().into(),
        ..Default::default()
    };
    assert_eq!(catwalk::runtime::sandbox::wrap(&policy, &sb, &argv).unwrap(), argv);
}

#[test]
fn off_mode_is_explicit_and_still_warns() {
    let policy = without_bwrap(SandboxMode::Off).activate().unwrap();
    assert!(!policy.is_active());
    assert!(policy.warning().unwrap().contains("mode = \"off\""));
}

#[test]
fn standard_mode_with_bubblewrap_is_active() {
    let policy = SandboxPolicy::default()
        .with_catwalk_exe(PathBuf::from(env!("CARGO_BIN_EXE_catwalk")))
        .activate()
        .unwrap();
    assert!(policy.is_active(), "run ./scripts/test-deps (bubblewrap): {:?}", policy.warning());
    assert_eq!(policy.warning(), None);
}

#[test]
fn a_binary_that_is_not_catwalk_fails_the_probe() {
    // The probe runs a real sandboxed command; a wrong sandbox-exec binary must not pass as working.
    let policy = SandboxPolicy::default().with_catwalk_exe(PathBuf::from("/bin/true")).activate().unwrap();
    assert!(!policy.is_active());
    assert!(policy.warning().unwrap().contains("trial sandbox"), "{:?}", policy.warning());
}

#[test]
fn sandbox_exec_is_hidden_and_explains_failures() {
    let help = Command::new(env!("CARGO_BIN_EXE_catwalk")).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("sandbox-exec"));
    let out = Command::new(env!("CARGO_BIN_EXE_catwalk"))
        .args(["sandbox-exec", "--nofile", "64", "--", "/nonexistent/server"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sandbox-exec: cannot execute /nonexistent/server"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_catwalk"))
        .args([
            "sandbox-exec",
            "--nofile",
            "64",
            "--no-new-privs",
            "--",
            "/bin/sh",
            "-c",
            "ulimit -n; grep NoNewPrivs /proc/self/status",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("64\n") && text.contains("NoNewPrivs:\t1"), "{text}");
}
