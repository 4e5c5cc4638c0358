//! Every secret-bearing file the daemon's config names (the Fly API token, the enrichment API key, the
//! `authorized_keys_file`) is invisible to deployed servers, even when it sits in a directory every sandbox
//! sees (`/etc`) and, with an unprivileged daemon, belongs to the very uid the sandbox's user namespace maps
//! to (so file modes alone would not keep it out). A hostile server pushed by a deployer tries to read them.

use crate::daemon;
use crate::mcp;

use std::path::{Path, PathBuf};

use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use mcp::Mcp;
use serde_json::{Value, json};

/// A directory under `/etc` holding the config's secret files; removed on drop.
struct EtcFiles {
    dir: PathBuf,
    canary: String,
}

impl EtcFiles {
    /// Writes `fly-token`, `enrich-key` and `authorized_keys` (each holding the canary) into a fresh
    /// `/etc/catwalk-itest-*` directory owned by `owner` (mode 0700, files 0600).
    fn new(owner: Option<u32>) -> EtcFiles {
        let dir = tempfile::Builder::new().prefix("catwalk-itest-").tempdir_in("/etc").unwrap().keep();
        let canary = format!("CANARY{:016x}", rand_u64());
        for file in ["fly-token", "enrich-key", "authorized_keys"] {
            let text =
                if file == "authorized_keys" { format!("# {canary}\n") } else { format!("{canary}\n") };
            std::fs::write(dir.join(file), text).unwrap();
            set_mode(&dir.join(file), 0o600);
        }
        set_mode(&dir, 0o700);
        if let Some(uid) = owner {
            daemon::chown_tree(&dir, uid);
        }
        EtcFiles { dir, canary }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn config(&self) -> String {
        format!(
            "[ssh]\nauthorized_keys_file = \"{}\"\n\n[runtime.fly]\ntoken_file = \"{}\"\n\n\
             [deploy.enrich]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"unused\"\napi_key_file = \"{}\"\n",
            self.path("authorized_keys"),
            self.path("fly-token"),
            self.path("enrich-key"),
        )
    }
}

impl Drop for EtcFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    u64::from_le_bytes(bytes)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Pushes the hostile fixture server as `app` and returns a connected MCP client.
async fn hostile_app(d: &Daemon, app: &str) -> Mcp {
    let wt = WorkTree::new(d.tmp.path(), app);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile_server.py");
    std::fs::copy(fixture, wt.path.join("server.py")).unwrap();
    wt.git(&["commit", "-q", "-am", "a hostile server"]);
    let out = wt.push(d, &d.admin, &[&d.remote_url(app), "main"]);
    assert!(out.status.success(), "push failed:\n{}{}", stdout(&out), stderr(&out));
    let token = d.token(app);
    let mut client = Mcp::new(&d.endpoint(app), Some(&token));
    assert_eq!(client.initialize().await.status, 200);
    client
}

async fn attempt(client: &mut Mcp, tool: &str, args: Value) -> Value {
    serde_json::from_str(&client.call_text(tool, args).await).unwrap()
}

async fn config_files_are_invisible(d: Daemon, files: EtcFiles) {
    let mut client = hostile_app(&d, "curious").await;
    // The server runs: its benign tool answers.
    assert_eq!(client.call_text("echo", json!({"text": "still here"})).await, "still here");
    for file in ["fly-token", "enrich-key", "authorized_keys"] {
        let outcome = attempt(&mut client, "read_file", json!({"path": files.path(file)})).await;
        let text = outcome.to_string();
        assert!(!text.contains(&files.canary), "the server read the config's {file}: {text}");
        // The mask is an empty file (`/dev/null` bound over it) or an unreadable one; never the content.
        assert!(
            outcome["ok"] == false || outcome["content"] == "",
            "{file} was readable from the sandbox: {text}"
        );
    }
    // The daemon itself still reads them: the Fly token and authorized_keys were loaded at start-up.
    let keys = ok(&d.ssh(&d.admin, "keys list --json", ""));
    assert!(keys.contains("admin"), "{keys}");
}

/// The daemon runs as root: servers drop to a per-app uid, and the files are masked on top.
#[tokio::test(flavor = "multi_thread")]
async fn config_files_are_invisible_to_servers_of_a_root_daemon() {
    let files = EtcFiles::new(None);
    let d = Daemon::start_with_config(&files.config());
    config_files_are_invisible(d, files).await;
}

/// The systemd unit's setup: the sandbox's uid 65534 maps to the daemon's own user, which owns the files.
#[tokio::test(flavor = "multi_thread")]
async fn config_files_are_invisible_to_servers_of_an_unprivileged_daemon() {
    let files = EtcFiles::new(Some(daemon::UNPRIVILEGED_UID));
    let d = Daemon::start_unprivileged(&files.config());
    config_files_are_invisible(d, files).await;
}
