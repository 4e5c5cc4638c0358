//! The Fly runtime against the real Machines API. Runs only when `FLY_API_TOKEN` is set; otherwise it
//! prints that it was NOT RUN and returns (reported as not run, never as a pass of the real API).
//!
//! Needs, besides the token: `CATWALK_FLY_IMAGE` (the pushed runner image), optionally `FLY_ORG`
//! (default `personal`) and `FLY_REGION` (default `iad`). The daemon side must reach 6PN (run the test
//! on a Fly machine or through `fly wireguard`). It deploys PyPI `mcp-server-time`, calls it, and
//! deletes the Fly app it created.

use std::sync::Arc;
use std::time::Duration;

use catwalk::names::AppName;
use catwalk::pipeline::secrets::Secrets;
use catwalk::plan::{Entry, Language, Plan, Registry, Source, Transport};
use catwalk::runtime::Runtime;
use catwalk::runtime::fly::{FlyConfig, FlyRuntime};
use catwalk::store::{ReleaseRecord, ReleaseStatus};

/// Fly.io cannot be reached from CI, so this test is ignored there and shows as "skipped" (not run),
/// never as passed. Run it with a token: `FLY_API_TOKEN=... CATWALK_FLY_IMAGE=...
/// cargo nextest run --run-ignored only --test fly_live`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live Fly.io test: needs FLY_API_TOKEN and CATWALK_FLY_IMAGE (run with --run-ignored only)"]
async fn fly_live_optional() {
    assert!(
        std::env::var("FLY_API_TOKEN").map(|t| !t.trim().is_empty()).unwrap_or(false),
        "the live Fly test needs FLY_API_TOKEN"
    );
    let image = std::env::var("CATWALK_FLY_IMAGE").expect(
        "FLY_API_TOKEN is set, so the live test runs: set CATWALK_FLY_IMAGE to the pushed runner image too",
    );
    let suffix: u32 = rand::random::<u32>() % 1_000_000;
    let cfg = FlyConfig {
        org: std::env::var("FLY_ORG").unwrap_or_else(|_| "personal".into()),
        region: std::env::var("FLY_REGION").unwrap_or_else(|_| "iad".into()),
        app_prefix: format!("cwt{suffix}-"),
        image,
        boot_timeout: Duration::from_secs(600),
        ..FlyConfig::default()
    };
    let rt = Arc::new(FlyRuntime::new(cfg, rand::random()).expect("runtime"));
    let release = ReleaseRecord {
        app: "time".into(),
        version: 1,
        commit: "0".repeat(40),
        plan: Plan {
            manifest: "catwalk.toml".into(),
            language: Language::Python,
            source: Source::Package {
                registry: Registry::Pypi,
                name: "mcp-server-time".into(),
                version: Some("2026.10.10".into()),
            },
            entry: Entry::PythonModule { module: "mcp_server_time".into() },
            args: Vec::new(),
            transport: Transport::Stdio,
            env: Vec::new(),
            shared: false,
            install_scripts: false,
            runtime: Some(catwalk::plan::RuntimeKind::Fly),
            allowed_origins: Vec::new(),
            no_network: false,
            auth: Default::default(),
            warm: None,
            machines: None,
        },
        status: ReleaseStatus::Deploying,
        created_at: 0,
        pusher: "live-test".into(),
        secrets: Default::default(),
        runtime: catwalk::plan::RuntimeKind::Fly,
        timings: Vec::new(),
        introspection: None,
        error: None,
        rollback_of: None,
        install_dir: None,
        command: Vec::new(),
        secrets_key: Default::default(),
    };
    let out = catwalk::output::Progress::to_lines(|l: String| println!("{l}"));
    let result = rt.deploy(&release, &Secrets::new(), None, &out).await;
    let staged_ok = match &result {
        Ok(staged) => rt
            .commit(&AppName::parse("time").unwrap(), staged, &out)
            .await
            .map(|()| staged.introspection.tools.clone()),
        Err(e) => Err(e.clone()),
    };
    // Always delete the app, then judge.
    let cleanup = rt.destroy(&AppName::parse("time").unwrap()).await;
    let tools = staged_ok.expect("live deploy");
    assert!(tools.iter().any(|t| t == "get_current_time"), "{tools:?}");
    cleanup.expect("deleting the live test's Fly app");
}
