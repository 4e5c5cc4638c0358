//! `catwalk runner`: the entry point of the runner image on a Fly machine.
//!
//! It reads the release plan from `CATWALK_PLAN` (set in the machine config; a plan holds no secret
//! values), installs the pinned package with the same code the local runtime uses (npm / pip into
//! `CATWALK_RUNNER_DIR`, default `/srv/catwalk`) — or, for a release built from its repository,
//! downloads the release's source from the daemon once (`CATWALK_SOURCE_URL` + the one-time
//! `CATWALK_SOURCE_TOKEN` secret, see [`super::source`]) and builds it like the local runtime does —
//! then serves it with the bridge, which requires the per-app credential from the
//! `CATWALK_BRIDGE_TOKEN` secret and hands the server exactly the variables named with `--pass-env`
//! (the plan's plain values and the app's secrets; never the catwalk tokens).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::machine::plan_from_env;
use super::{PLAN_ENV, SOURCE_ID_ENV, SOURCE_TOKEN_SECRET, SOURCE_URL_ENV};
use crate::bridge::BridgeArgs;
use crate::output::Progress;
use crate::plan::{Plan, Source};
use crate::runtime::install::{self, Installed, Toolchain};

#[derive(clap::Args, Debug, Clone)]
pub struct RunnerArgs {
    /// Address the bridge listens on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Environment variable holding the credential clients must send as `Authorization: Bearer`.
    #[arg(long, value_name = "VAR")]
    pub token_env: String,
    /// Pass this variable to the server; repeatable.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// One server process for all sessions.
    #[arg(long)]
    pub shared: bool,
    /// Where packages are installed.
    #[arg(long, env = "CATWALK_RUNNER_DIR", default_value = "/srv/catwalk")]
    pub dir: PathBuf,
}

/// Install, then bridge until SIGTERM.
pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    let plan_json = std::env::var(PLAN_ENV)
        .with_context(|| format!("{PLAN_ENV} is not set: this machine was not created by catwalk"))?;
    let plan = plan_from_env(&plan_json).map_err(anyhow::Error::msg)?;
    if std::env::var(&args.token_env).map(|v| v.is_empty()).unwrap_or(true) {
        bail!("the secret {} is not set: the machine was created before its secrets version", args.token_env);
    }
    let tools = Toolchain::detect(args.dir.join("cache"));
    eprintln!("[runner] installing {}", plan.describe());
    let progress = Progress::to_lines(|line| eprintln!("[runner] {}", line.trim_start()));
    let installed = match plan.source {
        Source::Repository => {
            let installed = build_source(&tools, &args.dir, &plan, &progress).await?;
            // The server runs in its source tree (`python server.py`), as with the local runtime.
            std::env::set_current_dir(&installed.dir)
                .with_context(|| format!("entering {}", installed.dir.display()))?;
            installed
        }
        Source::Package { .. } => {
            install::install_package(&tools, &args.dir.join("installs"), &plan, &progress)
                .await
                .map_err(anyhow::Error::msg)?
        }
    };
    eprintln!("[runner] installed{}", if installed.reused { " (re-used)" } else { "" });
    let mut command = installed.command;
    command.extend(plan.args.iter().cloned());
    let bridge = BridgeArgs {
        listen: args.listen,
        path: "/mcp".into(),
        shared: args.shared,
        allow_origin: Vec::new(),
        token_env: Some(args.token_env),
        env: Vec::new(),
        pass_env: args.pass_env,
        session_grace: std::time::Duration::from_secs(300).into(),
        idle_timeout: std::time::Duration::from_secs(3600).into(),
        keepalive: std::time::Duration::from_secs(15).into(),
        // Warm spares inside the machine: a started machine answers a new session without a start-up
        // (the machine's own scale to zero releases them with everything else).
        warm: plan.warm.unwrap_or(1).min(16) as u8,
        warm_idle: std::time::Duration::ZERO.into(),
        input_timeout: std::time::Duration::from_secs(5 * 60).into(),
        max_sessions: 4096,
        // Every request comes from the daemon's address (its pooled proxy connections): no per-address cap.
        max_connections_per_ip: 0,
        pool_size: 8,
        max_body_bytes: 4 << 20,
        upstream: None,
        upstream_header: Vec::new(),
        tls: Default::default(),
        command,
    };
    crate::bridge::run(bridge).await
}

/// Downloads the release's source once and builds it under `DIR/sources/<id>`; later boots (the
/// root file system persists) re-use the build, recorded in `DIR/sources/<id>.built` (its argv).
async fn build_source(
    tools: &Toolchain,
    dir: &std::path::Path,
    plan: &Plan,
    progress: &Progress,
) -> anyhow::Result<Installed> {
    let id = std::env::var(SOURCE_ID_ENV).with_context(|| format!("{SOURCE_ID_ENV} is not set"))?;
    if id.is_empty()
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        || id.starts_with('.')
    {
        bail!("{SOURCE_ID_ENV} = {id:?} is not a release name");
    }
    let sources = dir.join("sources");
    let src = sources.join(&id);
    let built = sources.join(format!("{id}.built"));
    if let Ok(text) = std::fs::read_to_string(&built) {
        let command: Vec<String> =
            serde_json::from_str(&text).with_context(|| format!("reading {}", built.display()))?;
        return Ok(Installed { dir: src, command, reused: true });
    }
    let url = std::env::var(SOURCE_URL_ENV).with_context(|| format!("{SOURCE_URL_ENV} is not set"))?;
    let token = std::env::var(SOURCE_TOKEN_SECRET).unwrap_or_default();
    if token.is_empty() {
        bail!(
            "the secret {SOURCE_TOKEN_SECRET} is not set: this machine cannot download its release's source"
        );
    }
    progress.detail(format!("downloading the release's source from {url}..."));
    let http = reqwest::Client::builder()
        .user_agent(concat!("catwalk-runner/", env!("CARGO_PKG_VERSION")))
        .timeout(std::time::Duration::from_secs(300))
        .build()?;
    // Errors never name the full URL: it ends with the token.
    let resp = http
        .get(format!("{url}{token}"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("downloading the source from {url}...: {}", e.without_url()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!(
            "downloading the source from {url}... answered {status}: {} (the token is single-use and expires; redeploy the app)",
            body.trim()
        );
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("downloading the source from {url}...: {}", e.without_url()))?;
    // A half-unpacked or half-built tree of an interrupted boot is discarded, never trusted.
    let _ = std::fs::remove_dir_all(&src);
    super::source::unpack(&bytes, &src).map_err(anyhow::Error::msg)?;
    progress.detail(format!("building {} ({} bytes of source)", plan.describe(), bytes.len()));
    let installed =
        install::install_repository(tools, &src, plan, progress).await.map_err(anyhow::Error::msg)?;
    let partial = sources.join(format!("{id}.built.partial"));
    std::fs::write(&partial, serde_json::to_vec(&installed.command)?)
        .and_then(|()| std::fs::rename(&partial, &built))
        .with_context(|| format!("recording the build in {}", built.display()))?;
    Ok(installed)
}
