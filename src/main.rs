//! The `catwalk` binary: daemon (`serve`, `up`), setup (`init`), the standalone bridge, git hooks, and the
//! local CLI that sends the shared command grammar to the running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use catwalk::datadir::DataDir;

#[derive(Parser)]
#[command(name = "catwalk", version, about = "git push an MCP server; serve it with access control")]
struct Cli {
    /// Data directory (also from CATWALK_DIR).
    #[arg(long, global = true, env = "CATWALK_DIR", default_value = "./catwalk-data")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: config, SSH host key, age identity, state store. Never overwrites keys.
    Init {
        /// OpenSSH public key file of the first admin.
        #[arg(long)]
        admin_key: Option<PathBuf>,
    },
    /// Serve one stdio MCP server (or an HTTP upstream) over Streamable HTTP, without a daemon.
    Bridge(catwalk::bridge::BridgeArgs),
    /// Inside the Fly runner image: install the plan in CATWALK_PLAN, then bridge it.
    #[command(hide = true)]
    Runner(catwalk::runtime::fly::runner::RunnerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.dir);
    let result = match cli.command {
        Command::Init { admin_key } => run_init(&dir, admin_key.as_deref()),
        Command::Bridge(args) => {
            init_logging("warn");
            block_on(async { catwalk::bridge::run(args).await.map(|()| ExitCode::SUCCESS) })
        }
        Command::Runner(args) => {
            init_logging("warn");
            block_on(async { catwalk::runtime::fly::runner::run(args).await.map(|()| ExitCode::SUCCESS) })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("catwalk: ✗ {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides `default`.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).init();
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(f: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .map_err(|e| anyhow::anyhow!("could not start the async runtime: {e}"))?
        .block_on(f)
}

fn run_init(dir: &DataDir, admin_key: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let report = catwalk::init::init(dir, admin_key)?;
    for path in &report.created {
        println!("created {path}");
    }
    for path in &report.kept {
        println!("kept    {path} (exists)");
    }
    if let Some(admin) = &report.admin {
        println!("admin key: {admin}");
    }
    println!("age recipient for secrets: {}", catwalk::init::age_recipient(dir)?);
    Ok(ExitCode::SUCCESS)
}
