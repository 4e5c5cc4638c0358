use super::*;

fn active(identity: Identity) -> SandboxPolicy {
    let mut p = SandboxPolicy::default().with_catwalk_exe(PathBuf::from("/opt/catwalk/bin/catwalk"));
    p.bwrap = PathBuf::from("/usr/bin/bwrap");
    p.runtime.status = Some(Status::Active { identity, landlock_abi: 7 });
    p
}

fn app(home: &Path) -> AppSandbox {
    AppSandbox {
        identity: "weather".into(),
        home: home.to_path_buf(),
        readonly: vec![home.with_extension("install"), PathBuf::from("/nonexistent/skipped")],
        cwd: home.to_path_buf(),
        ..Default::default()
    }
}

fn pairs(argv: &[String], flag: &str) -> Vec<String> {
    argv.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
}

#[test]
fn sizes_accept_bytes_and_units() {
    assert_eq!(parse_size("1024").unwrap(), 1024);
    assert_eq!(parse_size("512M").unwrap(), 512 << 20);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert!(parse_size("lots").unwrap_err().contains("not a size"));
    assert!(parse_size("5X").unwrap_err().contains("unknown unit"));
}

#[test]
fn inactive_policy_leaves_argv_alone() {
    let argv = vec!["/usr/bin/node".to_string(), "x.js".into()];
    let p = SandboxPolicy::default();
    assert_eq!(wrap(&p, &app(Path::new("/nonexistent")), &argv).unwrap(), argv);
    assert!(p.warning().unwrap().starts_with("WARNING: servers run without a sandbox: "));
}

#[test]
fn user_namespace_argv_has_every_isolation_flag() {
    let home = tempfile::tempdir().unwrap();
    let install = home.path().with_extension("install");
    std::fs::create_dir_all(&install).unwrap();
    let argv = wrap(&active(Identity::UserNamespace), &app(home.path()), &["/usr/bin/node".into()]);
    let _ = std::fs::remove_dir(&install);
    let argv = argv.unwrap();
    assert_eq!(argv[0], "/usr/bin/bwrap");
    for flag in ["--unshare-pid", "--unshare-user", "--disable-userns", "--die-with-parent"] {
        assert!(argv.contains(&flag.to_string()), "{flag} missing in {argv:?}");
    }
    // The spawner gives the command its own session instead (see `own_session`).
    assert!(!argv.contains(&"--new-session".to_string()), "{argv:?}");
    assert!(!argv.contains(&"--unshare-net".to_string()), "network is shared by default");
    assert_eq!(pairs(&argv, "--cap-drop"), ["ALL"]);
    assert_eq!(pairs(&argv, "--uid"), ["65534"], "inside uid");
    assert_eq!(pairs(&argv, "--proc"), ["/proc"]);
    let ro = pairs(&argv, "--ro-bind");
    assert!(ro.contains(&install.to_string_lossy().into_owned()), "{ro:?}");
    assert!(!ro.contains(&"/nonexistent/skipped".to_string()), "missing paths are not bound: {ro:?}");
    assert!(pairs(&argv, "--bind").contains(&home.path().to_string_lossy().into_owned()));
    let split = argv.iter().position(|a| a == "sandbox-exec").unwrap();
    assert_eq!(argv[split - 1], "/opt/catwalk/bin/catwalk");
    assert_eq!(argv.last().unwrap(), "/usr/bin/node");
    assert_eq!(pairs(&argv[split..], "--nproc"), ["512"]);
}

#[test]
fn root_identity_switches_uid_inside_and_network_none_unshares_net() {
    let home = tempfile::tempdir().unwrap();
    let mut sb = app(home.path());
    sb.network = Some(Network::None);
    let policy = active(Identity::DropToUid);
    // chown needs root; only build the argv shape when we are root (the tests run as root in CI).
    if Identity::current() != Identity::DropToUid {
        return assert!(wrap(&policy, &sb, &["/bin/true".into()]).is_err());
    }
    let argv = wrap(&policy, &sb, &["/bin/true".into()]).unwrap();
    assert!(argv.contains(&"--unshare-net".to_string()));
    assert!(!argv.contains(&"--unshare-user".to_string()));
    let split = argv.iter().position(|a| a == "sandbox-exec").unwrap();
    let uid = policy.uid_for("weather").to_string();
    assert_eq!(pairs(&argv[split..], "--uid"), std::slice::from_ref(&uid));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(home.path()).unwrap().uid().to_string(), uid);
}

#[test]
fn strict_mode_passes_the_daemon_ports_to_landlock() {
    let home = tempfile::tempdir().unwrap();
    let mut policy = active(Identity::UserNamespace).with_protected_ports(&[2222, 8080, 0]);
    policy.mode = SandboxMode::Strict;
    let argv = wrap(&policy, &app(home.path()), &["/bin/true".into()]).unwrap();
    assert_eq!(pairs(&argv, "--deny-tcp-connect"), ["2222,8080"]);
    assert!(argv.contains(&"--landlock-scope".to_string()));
}

#[test]
fn catwalk_paths_under_etc_are_masked() {
    let home = tempfile::tempdir().unwrap();
    let mut sb = app(home.path());
    sb.hidden = vec![PathBuf::from("/etc"), PathBuf::from("/etc/hostname"), PathBuf::from("/var/lib/x")];
    let policy = active(Identity::UserNamespace).with_hidden(&[PathBuf::from("/etc/passwd")]);
    let argv = wrap(&policy, &sb, &["/bin/true".into()]).unwrap();
    assert!(pairs(&argv, "--tmpfs").contains(&"/etc".to_string()));
    let policy_masked =
        argv.windows(3).any(|w| w[0] == "--ro-bind" && w[1] == "/dev/null" && w[2] == "/etc/passwd");
    assert!(policy_masked, "{argv:?}");
    let masked =
        argv.windows(3).any(|w| w[0] == "--ro-bind" && w[1] == "/dev/null" && w[2] == "/etc/hostname");
    assert!(masked, "{argv:?}");
}

#[test]
fn uids_are_stable_and_in_range() {
    let p = SandboxPolicy::default();
    let a = p.uid_for("weather");
    assert_eq!(a, p.uid_for("weather"));
    assert_ne!(a, p.uid_for("github-tools"));
    assert!((p.uid_base..p.uid_base + p.uid_count).contains(&a));
}

#[test]
fn validation_rejects_nonsense() {
    let p = SandboxPolicy { cpu_weight: 0, ..Default::default() };
    assert!(p.validate().unwrap_err().contains("cpu_weight"));
    let p = SandboxPolicy { memory_max: 1000, ..Default::default() };
    assert!(p.validate().unwrap_err().contains("memory_max"));
    let p = SandboxPolicy { extra_ro_paths: vec!["rel".into()], ..Default::default() };
    assert!(p.validate().unwrap_err().contains("absolute"));
    SandboxPolicy::default().validate().unwrap();
}

#[test]
fn parents_created_by_bwrap_are_opened_but_not_bind_mounts() {
    let mounts = vec![
        (PathBuf::from("/etc"), false),
        (PathBuf::from("/tmp"), true),
        (PathBuf::from("/etc/catwalk"), true),
        (PathBuf::from("/root/.pyenv/versions/3.11.7"), false),
        (PathBuf::from("/tmp/x/data/apps/a/home"), false),
        (PathBuf::from("/etc/catwalk/apps/b/home"), false),
    ];
    let got = traversable_parents(&mounts);
    for want in ["/root", "/root/.pyenv", "/root/.pyenv/versions", "/tmp/x", "/tmp/x/data/apps/a"] {
        assert!(got.contains(&PathBuf::from(want)), "{want} missing in {got:?}");
    }
    assert!(got.contains(&PathBuf::from("/etc/catwalk/apps/b")), "inside a tmpfs: {got:?}");
    for not in ["/etc", "/tmp", "/etc/catwalk", "/"] {
        assert!(!got.contains(&PathBuf::from(not)), "{not} is a mount point: {got:?}");
    }
}
