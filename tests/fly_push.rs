//! A push with `runtime = "fly"` through the real daemon, against the fake Machines API: the release is
//! created on a machine (the real `catwalk runner` installing the pinned PyPI package at boot), health
//! gated, switched to, and answers MCP through `/mcp/APP`; a second push replaces the machine blue/green.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "fly_fake/mod.rs"]
mod fly_fake;
#[path = "common/mcp.rs"]
mod mcp;

use std::collections::BTreeMap;
use std::path::Path;

use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use fly_fake::{FakeFly, FakeImage};
use serde_json::json;

const TOKEN: &str = "fly-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_with_runtime_fly_goes_live_on_a_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bin = root.join("image/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_catwalk"), bin.join("catwalk")).unwrap();
    for d in ["srv", "home"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default()));
    env.insert("HOME".into(), s(&root.join("home")));
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("CATWALK_RUNNER_DIR".into(), s(&root.join("srv")));
    for key in ["SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"] {
        if let Ok(v) = std::env::var(key) {
            env.insert(key.into(), v);
        }
    }
    let fake = FakeFly::start(TOKEN, &["personal"], FakeImage { bin_dir: bin, env }).await;
    let token_file = root.join("fly-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = format!(
        "[runtime]\ndefault = \"fly\"\n[runtime.fly]\napi_url = {:?}\ntoken_file = {:?}\nmachine_url_template = {:?}\nflycast_url_template = {:?}\nimage = \"registry.fly.io/catwalk-runner:test\"\nboot_timeout = \"5m\"\nrequests_per_second = 5\nburst = 5\n",
        fake.url,
        s(&token_file),
        format!("{}/6pn/{{machine_id}}{{path}}", fake.url),
        format!("{}/flycast/{{app}}{{path}}", fake.url),
    );
    let d = tokio::task::spawn_blocking(move || Daemon::start_with_config(&config)).await.unwrap();
    let d = std::sync::Arc::new(d);
    let wt = {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let wt = WorkTree::new(d.tmp.path(), "timefly");
            std::fs::write(wt.path.join("catwalk.toml"), "[server]\npackage = \"pypi:mcp-server-time\"\n")
                .unwrap();
            wt.git(&["rm", "-q", "server.py"]);
            wt.git(&["add", "-A"]);
            wt.git(&["commit", "-q", "-m", "on fly"]);
            wt.git(&["remote", "add", "catwalk", &d.remote_url("timefly")]);
            wt
        })
        .await
        .unwrap()
    };
    let push = |d: std::sync::Arc<Daemon>, path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let out = d.git(&d.admin, &path).args(["push", "catwalk", "main"]).output().unwrap();
            (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
        })
    };
    let (pushed, output) = push(d.clone(), wt.path.clone()).await.unwrap();
    assert!(pushed, "{output}");
    assert!(output.contains("fly:") && output.contains("live at"), "{output}");
    let token: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "tokens create timefly --json", ""))).unwrap();
    let token = token["token"].as_str().unwrap().to_string();
    let url = format!("http://{}/mcp/timefly", d.http_addr);
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    let answer = c.call_text("get_current_time", json!({"timezone": "UTC"})).await;
    assert!(answer.contains("UTC"), "{answer}");
    c.close().await;
    let rel: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "releases timefly --json", ""))).unwrap();
    assert_eq!(rel[0]["runtime"], "fly");
    assert_eq!(rel[0]["status"], "live");

    // A second push replaces the machine blue/green and still answers.
    {
        let wt_path = wt.path.clone();
        tokio::task::spawn_blocking(move || {
            let wt = WorkTree { path: wt_path };
            wt.git(&["commit", "-q", "--allow-empty", "-m", "again"]);
        })
        .await
        .unwrap();
    }
    let (pushed, output) = push(d.clone(), wt.path.clone()).await.unwrap();
    assert!(pushed, "{output}");
    let mut c = mcp::Mcp::new(&url, Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert!(c.call_text("get_current_time", json!({"timezone": "UTC"})).await.contains("UTC"));
    c.close().await;
}
