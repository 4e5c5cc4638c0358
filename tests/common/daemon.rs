//! Test helpers: a real `catwalk serve` in a temporary data dir on loopback port 0, throwaway SSH keys
//! made by `ssh-keygen`, and wrappers around the real `ssh` and `git` clients.
//!
//! Include with `#[path = "common/daemon.rs"] mod daemon;`. Every process started here is killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous upper bound for anything the tests wait for (never a pass/fail timing assumption).
pub const WAIT: Duration = Duration::from_secs(60);

pub fn catwalk_bin() -> &'static str {
    env!("CARGO_BIN_EXE_catwalk")
}

/// A throwaway ed25519 key pair.
#[derive(Clone, Debug)]
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    pub fn generate(dir: &Path, name: &str) -> Key {
        let private = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .status()
            .expect("ssh-keygen must be installed (openssh-client)");
        assert!(status.success(), "ssh-keygen failed");
        Key { public: private.with_extension("pub"), private }
    }

    pub fn public_text(&self) -> String {
        std::fs::read_to_string(&self.public).unwrap()
    }
}

/// Lines the daemon wrote to stderr, shared with a reader thread.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// The uid an unprivileged daemon runs as in [`Daemon::start_unprivileged`]: an unused, unprivileged uid
/// standing in for the systemd unit's `catwalk` user (it owns nothing on the host but the data dir).
pub const UNPRIVILEGED_UID: u32 = 4343;

/// A running daemon; killed on drop.
pub struct Daemon {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub admin: Key,
    pub ssh_port: u16,
    pub http_addr: String,
    /// `Some(uid)` when the daemon runs as that unprivileged uid instead of the test's (root) user.
    pub uid: Option<u32>,
    child: Option<Child>,
    log: Arc<Log>,
}

impl Daemon {
    /// Inits a data dir with an admin key and starts `catwalk serve` on 127.0.0.1:0.
    pub fn start() -> Daemon {
        Daemon::start_with_config("")
    }

    /// Like [`Daemon::start`], with `extra` TOML replacing the config file's content.
    pub fn start_with_config(extra: &str) -> Daemon {
        Daemon::start_as(None, extra)
    }

    /// Like [`Daemon::start_with_config`], with the daemon running as the unprivileged
    /// [`UNPRIVILEGED_UID`] (the systemd unit's setup: servers are sandboxed in a user namespace).
    /// The data dir is created and owned by that uid; the daemon's PATH holds only system directories,
    /// since a toolchain under `/root` (pyenv) is unreachable for it.
    pub fn start_unprivileged(extra: &str) -> Daemon {
        Daemon::start_as(Some(UNPRIVILEGED_UID), extra)
    }

    fn start_as(uid: Option<u32>, extra: &str) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cw");
        let admin = Key::generate(tmp.path(), "admin");
        if let Some(uid) = uid {
            // The temp dir is 0700 root; the daemon's user must reach its data dir and the admin key,
            // and owns the (empty) data dir that `init` fills.
            set_mode(tmp.path(), 0o755);
            set_mode(&admin.public, 0o644);
            std::fs::create_dir(&dir).unwrap();
            chown_tree(&dir, uid);
        }
        let mut init = Command::new(catwalk_bin());
        init.args(["init", "--dir"]).arg(&dir).arg("--admin-key").arg(&admin.public);
        as_user(&mut init, uid);
        let out = init.output().unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        if !extra.is_empty() {
            std::fs::write(dir.join("catwalk.toml"), extra).unwrap();
        }
        if let Some(uid) = uid {
            chown_tree(&dir, uid);
        }
        let mut daemon = Daemon {
            tmp,
            dir,
            admin,
            ssh_port: 0,
            http_addr: String::new(),
            uid,
            child: None,
            log: Arc::new(Log::default()),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let mut serve = Command::new(catwalk_bin());
        as_user(&mut serve, self.uid);
        let mut child = serve
            .args(["serve", "--ssh-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dir"])
            .arg(&self.dir)
            .env("CATWALK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        self.log = Arc::new(Log::default());
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[daemon] {line}");
                log.lines.lock().unwrap().push(line);
                log.changed.notify_all();
            }
        });
        self.child = Some(child);
        let ssh = self.wait_log("ssh listening on ");
        self.ssh_port = ssh.rsplit(':').next().unwrap().trim().parse().unwrap();
        let http = self.wait_log("http listening on ");
        self.http_addr = http.split("http listening on ").nth(1).unwrap().trim().to_string();
    }

    /// Waits for a daemon stderr line containing `needle` and returns it.
    /// Kills the daemon with SIGKILL (no cleanup at all) and starts it again on the same data dir.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Kills the daemon with SIGKILL (no cleanup at all) and leaves it dead.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_count(needle, 1)
    }

    /// Waits until `count` stderr lines contain `needle`; returns the last one.
    pub fn wait_log_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            let found: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the daemon never logged {needle:?} ({count}x); log:\n{}",
                lines.join("\n")
            );
            lines = self.log.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the daemon to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GIT_SSH_COMMAND`/`ssh` arguments for `key`.
    pub fn ssh_args(&self, key: &Key) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            key.private.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-p".into(),
            self.ssh_port.to_string(),
        ]
    }

    pub fn git_ssh_command(&self, key: &Key) -> String {
        format!("ssh {}", self.ssh_args(key).join(" "))
    }

    /// `ssh git@127.0.0.1 <command>` as `key`, with `stdin`.
    pub fn ssh(&self, key: &Key, command: &str, stdin: &str) -> Output {
        run_with_stdin(Command::new("ssh").args(self.ssh_args(key)).arg("git@127.0.0.1").arg(command), stdin)
    }

    /// `catwalk --dir DIR <args>` (the local CLI through the control socket), with `stdin`.
    pub fn local(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(Command::new(catwalk_bin()).arg("--dir").arg(&self.dir).args(args), stdin)
    }

    /// A new access token of `app`, created over SSH by the admin.
    pub fn token(&self, app: &str) -> String {
        let out = self.ssh(&self.admin, &format!("tokens create {app} --name test --json"), "");
        let v: serde_json::Value = serde_json::from_str(&ok(&out)).expect("tokens create --json");
        v["token"].as_str().expect("a token").to_string()
    }

    /// `http://ADDR/mcp/APP`.
    pub fn endpoint(&self, app: &str) -> String {
        format!("http://{}/mcp/{app}", self.http_addr)
    }

    pub fn remote_url(&self, app: &str) -> String {
        format!("ssh://git@127.0.0.1:{}/{app}", self.ssh_port)
    }

    /// A `git` command in `cwd` that talks to this daemon as `key`.
    pub fn git(&self, key: &Key, cwd: &Path) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(cwd).env("GIT_SSH_COMMAND", self.git_ssh_command(key));
        isolate_git(&mut cmd);
        cmd
    }

    /// The sha of `refs/heads/BRANCH` in the server's repository of `app`, if any.
    pub fn server_ref(&self, app: &str, branch: &str) -> Option<String> {
        let repo = self.dir.join("repos").join(format!("{app}.git"));
        let mut cmd = Command::new("git");
        // The repository may belong to an unprivileged daemon's uid: git refuses foreign repos by default.
        cmd.args(["-c", "safe.directory=*", "--git-dir"]).arg(repo).args([
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ]);
        isolate_git(&mut cmd);
        let out = cmd.output().unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` as `uid` (group `uid`, no supplementary groups) with a HOME and PATH that uid can use.
fn as_user(cmd: &mut Command, uid: Option<u32>) {
    use std::os::unix::process::CommandExt;
    let Some(uid) = uid else { return };
    // std drops root's supplementary groups itself (setgroups(0)) before it changes the uid.
    cmd.uid(uid).gid(uid).env("PATH", "/usr/local/bin:/usr/bin:/bin").env("HOME", "/nonexistent");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `chown -R uid:uid path` without following symlinks.
pub fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// Keeps the user's and the system's git config out of the tests.
pub fn isolate_git(cmd: &mut Command) {
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_TERMINAL_PROMPT", "0");
}

pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, printing both streams otherwise.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// A local work tree to commit in and push from.
pub struct WorkTree {
    pub path: PathBuf,
}

impl WorkTree {
    pub fn new(parent: &Path, name: &str) -> WorkTree {
        let path = parent.join(name);
        std::fs::create_dir_all(&path).unwrap();
        let wt = WorkTree { path };
        wt.git(&["init", "-q", "-b", "main"]);
        // Every push deploys, so every work tree starts as a deployable app: the dependency-free stdio
        // fixture server, run from the repository with the host's Python (no install step).
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stdio_fixture.py");
        std::fs::copy(fixture, wt.path.join("server.py")).unwrap();
        std::fs::write(
            wt.path.join("catwalk.toml"),
            "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n",
        )
        .unwrap();
        wt.git(&["add", "server.py", "catwalk.toml"]);
        wt.git(&["commit", "-q", "-m", "a deployable MCP server"]);
        wt
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.path).args(args);
        isolate_git(&mut cmd);
        ok(&cmd.output().unwrap()).trim().to_string()
    }

    /// Writes `file` and commits it; returns the new HEAD sha.
    pub fn commit(&self, file: &str, content: &str) -> String {
        std::fs::write(self.path.join(file), content).unwrap();
        self.git(&["add", file]);
        self.git(&["commit", "-q", "-m", &format!("write {file}")]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `git push <args>` to `daemon` as `key` (does not assert).
    pub fn push(&self, daemon: &Daemon, key: &Key, args: &[&str]) -> Output {
        daemon.git(key, &self.path).arg("push").args(args).output().unwrap()
    }

    /// Starts a push whose upload is held until `gate` exists: the daemon has started `git receive-pack`
    /// (and holds the app's deploy lock) but receives nothing until the test opens the gate.
    pub fn push_held(&self, daemon: &Daemon, key: &Key, gate: &Path, args: &[&str]) -> Child {
        let wrapper = self.path.with_extension("held-ssh.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n( i=0; while [ ! -e '{}' ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done; exec cat ) | exec ssh \"$@\"\n",
                gate.display()
            ),
        )
        .unwrap();
        let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&wrapper, perms).unwrap();
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.path)
            .env("GIT_SSH_COMMAND", format!("{} {}", wrapper.display(), daemon.ssh_args(key).join(" ")))
            .env("GIT_SSH_VARIANT", "ssh")
            .arg("push")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        isolate_git(&mut cmd);
        cmd.spawn().unwrap()
    }
}

/// Kills a child on drop (for pushes started in the background).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A russh client handler that trusts any host key (the tests' own throwaway daemons), for tests that
/// speak SSH directly instead of through the `ssh` binary.
pub struct AcceptAnyHostKey;

impl russh::client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}
