//! The `catwalk` binary: daemon (`serve`, `up`), setup (`init`), git hooks (`hook`), and the local CLI
//! that sends any other command of the shared grammar to the running daemon (`catwalk --dir DIR apps`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use catwalk::control::HookKind;
use catwalk::daemon::ServeOptions;
use catwalk::datadir::DataDir;

#[derive(Parser)]
#[command(
    name = "catwalk",
    version,
    about = "git push an MCP server; serve it with access control",
    disable_help_subcommand = true,
    after_help = "Any other command (apps, keys, tokens, info, whoami, help, ...) is sent to the running daemon:\n  catwalk --dir DIR help"
)]
struct Cli {
    /// Data directory (also from CATWALK_DIR).
    #[arg(long, global = true, env = "CATWALK_DIR", default_value = "./catwalk-data")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory: config, SSH host key, age identity, state store. Never overwrites keys.
    Init {
        /// OpenSSH public key file of the first admin.
        #[arg(long)]
        admin_key: Option<PathBuf>,
    },
    /// Run the daemon (SSH for git and commands, HTTP for MCP clients).
    Serve(ServeArgs),
    /// Initialise DIR if needed (your ~/.ssh key becomes the admin), then serve.
    Up(ServeArgs),
    /// Run a git hook (installed into every app repository; not for direct use).
    Hook {
        #[arg(value_enum)]
        name: HookName,
    },
    /// Serve one stdio MCP server (or an HTTP upstream) over Streamable HTTP, without a daemon.
    Bridge(Box<catwalk::bridge::BridgeArgs>),
    /// Inside the Fly runner image: install the plan in CATWALK_PLAN, then bridge it.
    #[command(hide = true)]
    Runner(catwalk::runtime::fly::runner::RunnerArgs),
    /// Inside a server's sandbox: set limits and privileges, then execute the server (internal).
    #[command(hide = true, name = "sandbox-exec")]
    SandboxExec(catwalk::runtime::sandbox::ExecArgs),
    /// Internal: supervises one sandboxed process's network namespace (uplink and relays).
    #[command(hide = true, name = "sandbox-net")]
    SandboxNet(catwalk::runtime::sandbox::NetArgs),
    /// A command of the daemon's grammar, run through the control socket.
    #[command(external_subcommand)]
    Remote(Vec<String>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// SSH listen address (overrides ssh.listen); port 0 picks a free port.
    #[arg(long)]
    ssh_listen: Option<SocketAddr>,
    /// HTTP listen address (overrides http.listen); port 0 picks a free port.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum HookName {
    PreReceive,
    PostReceive,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = DataDir::new(&cli.dir);
    let result = match cli.command {
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            Ok(ExitCode::from(2))
        }
        Some(Command::Init { admin_key }) => run_init(&dir, admin_key.as_deref()),
        Some(Command::Serve(args)) => run_serve(dir, args, false),
        Some(Command::Up(args)) => run_serve(dir, args, true),
        Some(Command::Hook { name }) => {
            let kind = match name {
                HookName::PreReceive => HookKind::PreReceive,
                HookName::PostReceive => HookKind::PostReceive,
            };
            catwalk::control::client::run_hook(kind).map(exit_code)
        }
        Some(Command::Bridge(args)) => run_bridge(*args),
        Some(Command::Runner(args)) => run_runner(args),
        // Single-threaded and before any logging set-up: credentials and Landlock apply per thread.
        Some(Command::SandboxExec(args)) => Err(anyhow::anyhow!(catwalk::runtime::sandbox::exec(args))),
        Some(Command::SandboxNet(args)) => {
            std::process::exit(catwalk::runtime::sandbox::supervise_network(args))
        }
        Some(Command::Remote(argv)) => {
            catwalk::control::client::run_command(&dir.control_socket(), argv).map(exit_code)
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

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
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
    println!("secrets: each app has its own age recipient (`secrets pubkey APP`, after `apps create APP`)");
    Ok(ExitCode::SUCCESS)
}

fn run_bridge(args: catwalk::bridge::BridgeArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CATWALK_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(catwalk::bridge::run(args))?;
    Ok(ExitCode::SUCCESS)
}

fn run_runner(args: catwalk::runtime::fly::runner::RunnerArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CATWALK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(catwalk::runtime::fly::runner::run(args))?;
    Ok(ExitCode::SUCCESS)
}

fn run_serve(dir: DataDir, args: ServeArgs, up: bool) -> anyhow::Result<ExitCode> {
    let mut on_ready: Option<catwalk::daemon::OnReady> = None;
    if up {
        for note in catwalk::up::prepare(&dir)? {
            println!("{note}");
        }
        on_ready = Some(Box::new(|daemon| {
            for line in catwalk::up::hints(daemon) {
                println!("{line}");
            }
        }));
    }
    let config = catwalk::config::Config::load(&dir.config())?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CATWALK_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.daemon.log))
        .map_err(|e| anyhow::anyhow!("daemon.log = {:?} is not a log filter: {e}", config.daemon.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let options = ServeOptions { ssh_listen: args.ssh_listen, http_listen: args.http_listen };
    runtime.block_on(catwalk::daemon::serve(dir, options, on_ready))?;
    // Pending SSH sessions and blocking tasks must not delay the exit once shutdown is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
