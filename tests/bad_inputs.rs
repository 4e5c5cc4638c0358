//! R1, the bad-input catalogue: one table per surface (SSH commands, git pushes and manifests, secrets
//! files, HTTP/JSON-RPC/headers), each row an input and the clear error it must get.
//!
//! Each test starts one real daemon, deploys one good app (the Python stdio fixture), snapshots what
//! must not change, then runs its table. After every row it checks that nothing was lost or changed:
//! the daemon is alive and logged no panic, the good app still answers an MCP `tools/call` (and, for
//! HTTP, a session opened before the table still answers too), the server's ref still names the live
//! release, and the store's apps, keys, tokens and live release are as before.

use crate::daemon;
use crate::mcp;

#[path = "bad_inputs/http.rs"]
mod http;
#[path = "bad_inputs/pushes.rs"]
mod pushes;
#[path = "bad_inputs/ssh.rs"]
mod ssh;

use daemon::{Daemon, WorkTree, ok, stderr};
use mcp::Mcp;
use serde_json::{Value, json};

pub const FIXTURE_TOML: &str = "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n";

/// A daemon with one good, live app named `good` and a token for it.
pub struct Good {
    pub d: Daemon,
    pub wt: WorkTree,
    pub token: String,
    pub live: String,
}

impl Good {
    pub fn start() -> Good {
        let d = Daemon::start();
        let wt = WorkTree::new(d.tmp.path(), "good");
        wt.git(&["remote", "add", "catwalk", &d.remote_url("good")]);
        let out = wt.push(&d, &d.admin, &["catwalk", "main"]);
        assert!(out.status.success(), "the good app did not deploy: {}", stderr(&out));
        let live = wt.git(&["rev-parse", "HEAD"]);
        let created: Value =
            serde_json::from_str(&ok(&d.ssh(&d.admin, "tokens create good --name test --json", ""))).unwrap();
        let token = created["token"].as_str().unwrap().to_string();
        Good { d, wt, token, live }
    }

    pub fn endpoint(&self, app: &str) -> String {
        format!("http://{}/mcp/{app}", self.d.http_addr)
    }

    pub fn admin(&self, command: &str) -> String {
        ok(&self.d.ssh(&self.d.admin, command, ""))
    }

    /// What no bad input may change: apps, keys, tokens and the live release (JSON listings), the ref.
    pub fn snapshot(&self, with_pushes: bool) -> Vec<String> {
        let releases: Vec<Value> = serde_json::from_str(&self.admin("releases good --json")).unwrap();
        let live: Vec<&Value> = releases.iter().filter(|r| r["status"] == "live").collect();
        let mut state = vec![
            self.admin("keys list --json"),
            self.admin("tokens list good --json"),
            json!(live.iter().map(|r| (&r["version"], &r["commit"])).collect::<Vec<_>>()).to_string(),
            format!("{:?}", self.d.server_ref("good", "main")),
        ];
        // A rejected push is recorded (as the app's last push, as a failed release); other inputs
        // change nothing at all.
        if !with_pushes {
            state.push(self.admin("apps --json"));
            state.push(serde_json::to_string(&releases).unwrap());
        }
        state
    }

    /// Nothing lost or changed after `what`: alive, no panic, the good app answers, state as before.
    pub async fn unchanged(&self, what: &str, before: &[String], with_pushes: bool) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.d.pid())).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?");
        assert!(state != "Z" && state != "?", "{what}: the daemon died");
        assert!(
            !self.d.log_text().contains("panicked"),
            "{what}: the daemon panicked:\n{}",
            self.d.log_text()
        );
        assert_eq!(
            self.d.server_ref("good", "main").as_deref(),
            Some(self.live.as_str()),
            "{what}: the ref moved"
        );
        assert_eq!(self.snapshot(with_pushes), before, "{what}: the state changed");
        let mut c = Mcp::new(&self.endpoint("good"), Some(&self.token));
        let init = c.initialize().await;
        assert_eq!(init.status, 200, "{what}: the good app no longer initializes: {}", init.body);
        assert_eq!(c.call_text("echo", json!({"text": what})).await, what, "{what}: echo");
        c.close().await;
    }
}
