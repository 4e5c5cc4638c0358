//! `catwalk runner`: the entry point of the runner image on a Fly machine.
//!
//! It reads the release plan from `CATWALK_PLAN` (set in the machine config; a plan holds no secret
//! values), installs the pinned package with the same code the local runtime uses (npm / pip into
//! `CATWALK_RUNNER_DIR`, default `/srv/catwalk`), then serves it with the bridge, which requires the
//! per-app credential from the `CATWALK_BRIDGE_TOKEN` secret and hands the server exactly the
//! variables named with `--pass-env` (the plan's plain values and the app's secrets).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::PLAN_ENV;
use super::machine::plan_from_env;
use crate::bridge::BridgeArgs;
use crate::runtime::install::{self, Toolchain};

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
    let progress = |line: String| eprintln!("[runner] {line}");
    let installed = install::install_package(&tools, &args.dir.join("installs"), &plan, &progress)
        .await
        .map_err(anyhow::Error::msg)?;
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
        max_sessions: 4096,
        max_body_bytes: 4 << 20,
        upstream: None,
        upstream_header: Vec::new(),
        tls: Default::default(),
        command,
    };
    crate::bridge::run(bridge).await
}
