use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "catwalk",
    version,
    about = "git push a repository or a package name, get a live, access-controlled MCP server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one stdio MCP server (or an HTTP upstream) over Streamable HTTP.
    Bridge(catwalk::bridge::BridgeArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("catwalk: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Bridge(args) => catwalk::bridge::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catwalk: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
