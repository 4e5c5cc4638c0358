//! Shared set-up of the isolation tests: a fake data dir full of known secrets, an activated sandbox
//! policy using the real `catwalk` binary, and bridges serving sandboxed servers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catwalk::runtime::sandbox::{AppSandbox, Identity, SandboxPolicy, Status, wrap};
use serde_json::{Value, json};

use crate::gateway_support as gw;

pub const AGE_CANARY: &str = "AGE-SECRET-KEY-1CANARYISOLATIONTEST0000000000000000000000000000000000";
pub const HOST_KEY_CANARY: &str = "-----BEGIN OPENSSH PRIVATE KEY----- canary-host-key-7f3a";
pub const STORE_CANARY: &str = "redb-state-canary-91c2";
pub const OTHER_APP_CANARY: &str = "other-app-secret-canary-55d0";
pub const ENV_CANARY: &str = "daemon-env-canary-c0ffee";

/// A fake data dir laid out like `catwalk init`'s, with canary contents.
pub struct FakeData {
    pub tmp: tempfile::TempDir,
}

impl FakeData {
    pub fn new() -> FakeData {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("apps/other/home")).unwrap();
        std::fs::create_dir_all(root.join("apps/hostile/home")).unwrap();
        std::fs::create_dir_all(root.join("repos")).unwrap();
        std::fs::write(root.join("age_identity.txt"), AGE_CANARY).unwrap();
        std::fs::write(root.join("ssh_host_ed25519_key"), HOST_KEY_CANARY).unwrap();
        std::fs::write(root.join("state.redb"), STORE_CANARY).unwrap();
        std::fs::write(root.join("catwalk.toml"), "[daemon]\n").unwrap();
        std::fs::write(root.join("apps/other/home/secret.txt"), OTHER_APP_CANARY).unwrap();
        FakeData { tmp }
    }

    /// Hands the whole tree to `uid` (the data dir of a daemon running as that user).
    pub fn chown(&self, uid: u32) {
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).unwrap();
            if p.is_dir() && !p.is_symlink() {
                stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
        }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn home(&self, app: &str) -> PathBuf {
        self.root().join("apps").join(app).join("home")
    }
}

/// The machine's real Python interpreter (through pyenv shims), absolute.
pub fn real_python() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 must be installed for the isolation tests");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The activated policy (must be available: these tests fail, never skip, without bubblewrap), with
/// `identity` forced so both the root and the user-namespace paths are exercised.
pub fn policy(identity: Identity, tune: impl FnOnce(&mut SandboxPolicy), bins: &[&Path]) -> SandboxPolicy {
    let mut p = SandboxPolicy::default().with_catwalk_exe(PathBuf::from(env!("CARGO_BIN_EXE_catwalk")));
    tune(&mut p);
    let p = p.with_toolchain(bins).activate().expect("activating the sandbox");
    let mut p = p;
    match &p.runtime.status {
        Some(Status::Active { landlock_abi, .. }) => {
            let abi = *landlock_abi;
            p.runtime.status = Some(Status::Active { identity, landlock_abi: abi });
        }
        other => panic!(
            "the sandbox must work on the test machine (run ./scripts/test-deps to install bubblewrap): {other:?}"
        ),
    }
    p
}

/// A running `catwalk bridge` (the stand-in for the daemon); its process group is killed on drop.
pub struct Bridge {
    child: Child,
    pub url: String,
    pub base: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Bridge {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // SAFETY: signals the process group created at spawn; no memory is touched.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `catwalk bridge --listen 127.0.0.1:0 -- <wrap(argv)>`, with a canary in the bridge's environment.
pub fn sandboxed_bridge(policy: &SandboxPolicy, sb: &AppSandbox, argv: &[String]) -> Bridge {
    sandboxed_bridge_as(policy, sb, argv, None)
}

/// Like [`sandboxed_bridge`], with the bridge (the daemon's stand-in) running as `uid` when given:
/// a daemon that is not root, as under the systemd unit.
pub fn sandboxed_bridge_as(
    policy: &SandboxPolicy,
    sb: &AppSandbox,
    argv: &[String],
    uid: Option<u32>,
) -> Bridge {
    use std::os::unix::process::CommandExt;
    let wrapped = wrap(policy, sb, argv).expect("wrap");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catwalk"));
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd
        .args(["bridge", "--listen", "127.0.0.1:0", "--"])
        .args(&wrapped)
        .env("CATWALK_ISOLATION_CANARY", ENV_CANARY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("failed to start the catwalk binary");
    let stderr = child.stderr.take().expect("bridge stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = lines.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[bridge] {line}");
            if let Some(rest) = line.strip_prefix("listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(rest.trim().to_string());
            }
            keep.lock().unwrap().push(line);
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        panic!("catwalk bridge did not print its address; stderr:\n{}", lines.lock().unwrap().join("\n"))
    });
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match url[after..].find('/') {
        Some(i) => url[..after + i].to_string(),
        None => url.clone(),
    };
    Bridge { child, url, base, stderr: lines }
}

/// An MCP session on a bridge.
pub struct Session {
    pub client: reqwest::Client,
    pub url: String,
    pub sid: String,
    next: u64,
}

impl Session {
    pub async fn open(url: &str) -> Session {
        let client = gw::client();
        let sid = gw::init(&client, url, "2025-06-18").await;
        Session { client, url: url.to_string(), sid, next: 10 }
    }

    /// `tools/call`; returns (isError, text).
    pub async fn call(&mut self, tool: &str, args: Value) -> (bool, String) {
        self.next += 1;
        let r = gw::post(
            &self.client,
            &self.url,
            Some(&self.sid),
            Some("2025-06-18"),
            &gw::tool_msg(self.next, tool, args),
        )
        .await;
        assert_eq!(r.status(), 200, "tools/call {tool} failed at the HTTP level");
        let v = response_json(r).await;
        assert_eq!(v["id"], self.next, "answer to the wrong request: {v}");
        let text = v["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text: {v}"));
        (v["result"]["isError"].as_bool().unwrap_or(false), text.to_string())
    }

    /// A hostile tool's JSON outcome.
    pub async fn attack(&mut self, tool: &str, args: Value) -> Value {
        let (_, text) = self.call(tool, args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool}: not JSON ({e}): {text}"))
    }

    pub async fn list_tools(&mut self) -> Vec<String> {
        self.next += 1;
        let msg = json!({"jsonrpc":"2.0","id":self.next,"method":"tools/list","params":{}});
        let r = gw::post(&self.client, &self.url, Some(&self.sid), Some("2025-06-18"), &msg).await;
        assert_eq!(r.status(), 200);
        let v = response_json(r).await;
        v["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("tools/list: {v}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// The JSON-RPC response of a POST answered either as JSON or as an SSE stream.
pub async fn response_json(r: reqwest::Response) -> Value {
    let sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .starts_with("text/event-stream");
    if !sse {
        return r.json().await.expect("JSON body");
    }
    let mut stream = gw::Sse::new(r);
    while let Some(event) = stream.next().await {
        let v = event.json();
        if v.get("id").is_some() && (v.get("result").is_some() || v.get("error").is_some()) {
            return v;
        }
    }
    panic!("SSE stream ended without a response")
}
