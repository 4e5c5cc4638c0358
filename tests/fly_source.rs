//! A release built from its repository, on Fly, through the real daemon and the fake Machines API:
//! the machine's runner downloads the release's source from the daemon with a one-time token (a Fly
//! secret, never in the machine config), builds it (venv + requirements, like the local runtime) and
//! serves it; the token is refused on a second use and a forged one is refused; after a scale-to-zero
//! stop the machine starts again from its persisted build, without downloading again.

use crate::daemon;
use crate::fly_daemon;
use crate::mcp;

use daemon::{Daemon, WorkTree};
use fly_daemon::{FlyEnv, push, token};
use serde_json::{Value, json};
use tokio::task::block_in_place as blocking;

const APP: &str = "fastfly";
const FLY_APP: &str = "cw-fastfly";

async fn shout(url: &str, token: &str, text: &str) -> String {
    let mut c = mcp::Mcp::new(url, Some(token));
    let init = c.initialize().await;
    assert_eq!(init.status, 200, "initialize: {}", init.body);
    let answer = c.call_text("shout", json!({"text": text})).await;
    c.close().await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repository_source_is_fetched_once_with_a_one_time_token() {
    let env = FlyEnv::start().await;
    let d = blocking(|| Daemon::start_with_config(&env.daemon_config("idle_timeout = \"2s\"\n")));
    let wt = blocking(|| {
        let wt = WorkTree::new(d.tmp.path(), APP);
        std::fs::write(wt.path.join("requirements.txt"), "mcp==1.30.0\n").unwrap();
        std::fs::write(wt.path.join("server.py"), include_str!("fixtures/fastmcp_server.py")).unwrap();
        wt.git(&["add", "-A"]);
        wt.git(&["commit", "-q", "-m", "fastmcp"]);
        wt.git(&["remote", "add", "catwalk", &d.remote_url(APP)]);
        wt
    });
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed, "{output}");
    assert!(output.contains("fly:") && output.contains("1 tool"), "{output}");
    let token = blocking(|| token(&d, APP));
    let url = format!("http://{}/mcp/{APP}", d.http_addr);
    assert_eq!(shout(&url, &token, "hi").await, "HI");

    // The source token went through the secrets API only; the machine config names the URL, not it.
    let requests = env.fake.requests();
    let source_token = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/secrets"))
        .find_map(|r| {
            let body: Value = serde_json::from_str(&r.body).ok()?;
            body.pointer("/values/CATWALK_SOURCE_TOKEN")?.as_str().map(str::to_string)
        })
        .expect("the source token is set as a Fly secret");
    assert_eq!(source_token.len(), 64);
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with(&format!("/apps/{FLY_APP}/machines")))
        .expect("machine created");
    assert!(!create.body.contains(&source_token), "the token is in the machine config");
    let config: Value = serde_json::from_str(&create.body).unwrap();
    let source_url = config.pointer("/config/env/CATWALK_SOURCE_URL").and_then(Value::as_str).unwrap();
    assert_eq!(source_url, format!("http://{}/_catwalk/source/", d.http_addr));
    assert_eq!(config.pointer("/config/rootfs/persist"), Some(&json!("always")));

    // The machine used the token: a second use is refused, like a forged token.
    let http = reqwest::Client::new();
    let second = http.get(format!("{source_url}{source_token}")).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 404);
    let forged = http.get(format!("{source_url}{}", "ab".repeat(32))).send().await.unwrap();
    assert_eq!(forged.status().as_u16(), 404);

    // Stopped when idle and started again on demand: the build on the persisted root file system is
    // re-used (downloading again would fail: the token is spent).
    env.wait_machine_state(FLY_APP, "stopped").await;
    assert_eq!(shout(&url, &token, "again").await, "AGAIN");
    let log = d.log_text();
    assert_eq!(log.matches("source sent to its Fly machine").count(), 1, "{log}");
}
