//! The one command grammar, served over SSH exec (`ssh -p PORT git@HOST apps`) and the local CLI
//! (`catwalk --dir DIR apps`, through the control socket).
//!
//! Commands never see their transport: they get an [`Identity`], argv, an [`Input`] and an [`Output`],
//! and return an exit code (0 ok, 1 failure or permission denied, 2 usage error).

mod apps;
mod keys;
mod machines;
mod oauth;
mod releases;
mod render;
mod tokens;

use clap::{Parser, Subcommand};

use crate::identity::Identity;
use crate::output::{Input, Output};
use crate::platform::Platform;

/// Exit code of a usage error (unknown command, bad arguments), as with clap and most Unix tools.
pub const USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "catwalk",
    no_binary_name = true,
    disable_version_flag = true,
    about = "catwalk: git push an MCP server. Commands (run over ssh, or locally with `catwalk --dir DIR`):",
    after_help = "Deploy: git remote add catwalk ssh://git@HOST:PORT/APP && git push catwalk main"
)]
pub struct Grammar {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Print catwalk's version.
    Version {
        #[arg(long)]
        json: bool,
    },
    /// Show the key you are authenticated as and its role.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// List apps (all for admins, your own for deployers); create or destroy one.
    Apps {
        #[command(subcommand)]
        action: Option<apps::AppsCmd>,
        #[arg(long)]
        json: bool,
    },
    /// Show an app: repository, deployed sha, last push, owners, endpoint.
    Info {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// List an app's releases (newest first) with their status, commit and source.
    Releases {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier release live again (default: the one before the current), through the health gate.
    Rollback {
        app: String,
        /// The release to return to, e.g. v2 (see `releases APP`).
        version: Option<String>,
    },
    /// End an app's sessions so the next request starts fresh server processes.
    Restart { app: String },
    /// Show an app's server stderr and lifecycle events.
    Logs {
        app: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
    },
    /// Manage the SSH keys allowed in (admins only).
    Keys {
        #[command(subcommand)]
        action: keys::KeysCmd,
    },
    /// Manage access tokens of an app's MCP endpoint (admins and the app's owners).
    Tokens {
        #[command(subcommand)]
        action: tokens::TokensCmd,
    },
    /// Approve an OAuth authorization request with the code its page shows (admins and the app's owners).
    Approve {
        code: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time link that signs a browser in as your key (to click Allow on authorization pages).
    Login {
        #[arg(long)]
        json: bool,
    },
    /// List or revoke the OAuth grants of an app (admins and the app's owners).
    Grants {
        #[command(subcommand)]
        action: oauth::GrantsCmd,
    },
    /// Print what to paste into Claude, Claude Code, Cursor and VS Code to use APP.
    Connect {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// An app's age recipient, to encrypt its `.catwalk/secrets.age`.
    Secrets {
        #[command(subcommand)]
        action: SecretsCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCmd {
    /// Print the age recipient (public key) APP's `.catwalk/secrets.age` must be encrypted to.
    Pubkey {
        /// Each app has its own recipient: a file made for one app never decrypts for another.
        app: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// The longest exec command accepted. Real ones (`git-receive-pack '/app.git'`, `tokens create APP --name
/// laptop --expires 30d --json`) are far shorter; a longer line is refused before it is split or echoed back.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Splits an SSH exec command into argv the way a POSIX shell would split words (shell-words), without
/// ever running a shell. Refuses, with a message for the person who typed it: non-UTF-8 bytes, lines over
/// [`MAX_COMMAND_LINE`], control characters (NUL, escape sequences, newlines: no command needs them and
/// they would end up in logs and error messages) and unbalanced quotes.
pub fn split_line(command: &[u8]) -> Result<Vec<String>, String> {
    if command.len() > MAX_COMMAND_LINE {
        return Err(format!(
            "the command is {} bytes long; commands are at most {MAX_COMMAND_LINE} bytes (see `help`)",
            command.len()
        ));
    }
    let text = std::str::from_utf8(command).map_err(|_| "the command is not valid UTF-8".to_string())?;
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "the command contains the control character {c:?}; send one line of printable text (see `help`)"
        ));
    }
    shell_words::split(text)
        .map_err(|_| "cannot parse the command: unbalanced quotes (quote each argument once)".to_string())
}

/// Parses and runs one command line. Usage errors print the usage and return [`USAGE`].
pub async fn run(
    platform: &Platform,
    who: &Identity,
    argv: &[String],
    input: &mut Input,
    out: &Output,
) -> i32 {
    let grammar = match Grammar::try_parse_from(argv) {
        Ok(g) => g,
        Err(e) => {
            let text = e.render().to_string();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | clap::error::ErrorKind::DisplayVersion => {
                    out.out(text);
                    if e.kind() == clap::error::ErrorKind::DisplayHelp { 0 } else { USAGE }
                }
                _ => {
                    out.err(text);
                    USAGE
                }
            };
        }
    };
    let ctx = Ctx { platform, who, out };
    let result = match grammar.command {
        Cmd::Version { json } => {
            let version = env!("CARGO_PKG_VERSION");
            if json {
                ctx.json(&serde_json::json!({ "version": version }));
            } else {
                out.line(format!("catwalk {version}"));
            }
            Ok(())
        }
        Cmd::Whoami { json } => {
            if json {
                ctx.json(&serde_json::json!({
                    "name": who.name, "role": who.role.as_str(), "fingerprint": who.fingerprint,
                }));
            } else {
                out.line(format!(
                    "{} ({}){}",
                    who.name,
                    who.role.as_str(),
                    who.fingerprint.as_deref().map(|f| format!(" {f}")).unwrap_or_default()
                ));
            }
            Ok(())
        }
        Cmd::Apps { action, json } => apps::run(&ctx, action, json).await,
        Cmd::Info { app, json } => apps::info(&ctx, &app, json).await,
        Cmd::Releases { app, json } => releases::releases(&ctx, &app, json),
        Cmd::Rollback { app, version } => releases::rollback(&ctx, &app, version.as_deref()).await,
        Cmd::Restart { app } => releases::restart(&ctx, &app).await,
        Cmd::Logs { app, follow, lines } => releases::logs(&ctx, &app, follow, lines).await,
        Cmd::Keys { action } => keys::run(&ctx, action, input).await,
        Cmd::Tokens { action } => tokens::run(&ctx, action),
        Cmd::Approve { code, json } => oauth::approve(&ctx, &code, json),
        Cmd::Login { json } => oauth::login(&ctx, json),
        Cmd::Grants { action } => oauth::grants(&ctx, action),
        Cmd::Connect { app, json } => oauth::connect(&ctx, &app, json),
        Cmd::Secrets { action: SecretsCmd::Pubkey { app, json } } => {
            secrets_pubkey(&ctx, app.as_deref(), json)
        }
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Error(message)) => {
            out.eline(format!("catwalk: {message}"));
            1
        }
        Err(Failure::Denied(message)) => {
            out.eline(format!("catwalk: permission denied: {message}"));
            1
        }
    }
}

/// Why a command failed; both exit 1, worded differently.
pub enum Failure {
    Error(String),
    Denied(String),
}

impl From<crate::platform::PlatformError> for Failure {
    fn from(e: crate::platform::PlatformError) -> Self {
        Failure::Error(e.to_string())
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Failure::Error(e.to_string())
    }
}

pub type CmdResult = Result<(), Failure>;

/// What every command handler gets.
pub struct Ctx<'a> {
    pub platform: &'a Platform,
    pub who: &'a Identity,
    pub out: &'a Output,
}

impl Ctx<'_> {
    /// Prints `value` as pretty JSON on stdout, with the characters JSON leaves raw inside strings (C1
    /// controls, bidi overrides) escaped, so the transports' control-character rendering never touches it.
    pub fn json(&self, value: &serde_json::Value) {
        let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        self.out.line(crate::terminal_text::json(text));
    }

    /// Refuses non-admins, naming the command and the role needed.
    pub fn require_admin(&self, what: &str) -> CmdResult {
        if self.who.is_admin() {
            Ok(())
        } else {
            Err(Failure::Denied(format!("`{what}` needs the admin role (you are {})", self.who.describe())))
        }
    }

    /// Loads `name` and checks that the caller manages it. An app the caller may not manage gets exactly
    /// the answer a missing app gets ([`no_such_app`]): a deployer cannot tell another tenant's app from
    /// a name nobody uses, nor learn who owns it.
    pub fn managed_app(&self, name: &str, _what: &str) -> Result<crate::store::AppRecord, Failure> {
        let app = crate::names::AppName::parse(name).map_err(|e| Failure::Error(e.to_string()))?;
        match self.platform.store.app(app.as_str())? {
            Some(record) if self.who.can_manage(&record) => Ok(record),
            Some(_) | None => Err(Failure::Error(no_such_app(&app))),
        }
    }
}

/// `secrets pubkey APP`: the app's own recipient (see `pipeline/secrets.rs` for why it is per app).
fn secrets_pubkey(ctx: &Ctx<'_>, app: Option<&str>, json: bool) -> CmdResult {
    let Some(name) = app else {
        return Err(Failure::Error(
            "secrets are encrypted to each app's own recipient (a file made for one app never decrypts for \
             another): run `secrets pubkey APP`; for an app that does not exist yet, `apps create APP` first"
                .into(),
        ));
    };
    let record = ctx.managed_app(name, "secrets pubkey")?;
    let key_id = crate::pipeline::secrets::AppKeyId { app: &record.name, incarnation: &record.incarnation };
    let recipient = ctx.platform.deployer.age.app_recipient(key_id);
    if json {
        ctx.json(&serde_json::json!({ "app": record.name, "recipient": recipient }));
    } else {
        ctx.out.line(recipient);
    }
    Ok(())
}

/// The one answer for an app the caller cannot see, whether it does not exist or belongs to someone else:
/// every command and `git clone` use it, byte for byte.
pub fn no_such_app(app: &crate::names::AppName) -> String {
    format!("no app named {app} (see `apps` for yours)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Grammar, clap::Error> {
        Grammar::try_parse_from(shell_words::split(s).unwrap())
    }

    /// Runs one command line as `who` against `platform`: (exit code, stdout, stderr).
    async fn run_line(
        platform: &crate::platform::Platform,
        who: &Identity,
        line: &str,
    ) -> (i32, String, String) {
        let argv = split_line(line.as_bytes()).unwrap();
        let (out, mut rx) = Output::channel();
        let code = run(platform, who, &argv, &mut Input::empty(), &out).await;
        drop(out);
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some((stream, text)) = rx.recv().await {
            match stream {
                crate::output::Stream::Stdout => stdout.push_str(&text),
                crate::output::Stream::Stderr => stderr.push_str(&text),
            }
        }
        (code, stdout, stderr)
    }

    /// The commands against the core itself (no SSH, no socket): what a tenant sees of another's app.
    #[tokio::test]
    async fn commands_act_through_the_platform_and_hide_other_tenants_apps() {
        let f = crate::platform::tests::fixture();
        let p = &f.platform;
        let (bob, alice) =
            (crate::platform::tests::deployer("bob"), crate::platform::tests::deployer("alice"));
        let (code, out, _) = run_line(p, &bob, "apps create shop").await;
        assert_eq!(code, 0);
        assert!(out.contains("created app shop") && out.contains("git remote add catwalk"), "{out}");
        let (code, _, err) = run_line(p, &alice, "apps create shop").await;
        assert_eq!(code, 1);
        assert!(err.contains("the app name shop is taken"), "{err}");
        // Every command answers alice about bob's app exactly as about a name nobody uses.
        for line in
            ["info shop", "releases shop", "logs shop", "rollback shop", "apps destroy shop --confirm shop"]
        {
            let (code, _, err) = run_line(p, &alice, line).await;
            let (_, _, missing) = run_line(p, &alice, &line.replace("shop", "nosuch")).await;
            assert_eq!(code, 1, "{line}");
            assert_eq!(err.replace("shop", "nosuch"), missing, "{line}");
        }
        let (_, out, _) = run_line(p, &alice, "apps --json").await;
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!([]));
        assert_eq!(run_line(p, &bob, "apps destroy shop --confirm shop").await.0, 0);
        assert!(p.store.app("shop").unwrap().is_none());
        assert_eq!(run_line(p, &bob, "apps frobnicate").await.0, USAGE);
    }

    #[test]
    fn exec_lines_are_split_or_refused_clearly() {
        assert_eq!(split_line(b"git-receive-pack '/app.git'").unwrap(), ["git-receive-pack", "/app.git"]);
        assert_eq!(split_line(b"logs\tapp  -n 5").unwrap(), ["logs", "app", "-n", "5"]);
        for (bad, expected) in [
            (&b"apps 'unbalanced"[..], "unbalanced quotes"),
            (b"apps\0destroy", "control character '\\0'"),
            (b"apps\ndestroy x", "control character '\\n'"),
            (b"apps \x1b[31m", "control character '\\u{1b}'"),
            (b"apps \xff", "not valid UTF-8"),
        ] {
            let err = split_line(bad).unwrap_err();
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
        let long = vec![b'a'; MAX_COMMAND_LINE + 1];
        assert!(split_line(&long).unwrap_err().contains("at most 4096 bytes"));
    }

    #[test]
    fn grammar_parses_the_documented_commands() {
        for ok in [
            "help",
            "version",
            "whoami --json",
            "apps",
            "apps --json",
            "apps list --json",
            "apps create hello",
            "apps destroy hello --confirm hello",
            "info hello --json",
            "keys list --json",
            "keys add bob --role deployer",
            "keys remove bob",
            "tokens create hello --name laptop --expires 30d --json",
            "tokens list hello",
            "tokens revoke hello abcd1234",
            "secrets pubkey",
            "secrets pubkey time-tools --json",
            "releases hello --json",
            "rollback hello",
            "rollback hello v2",
            "restart hello",
            "logs hello -f -n 5",
            "approve K7QX-M2PD",
            "approve k7qxm2pd --json",
            "login",
            "grants list hello --json",
            "grants revoke hello g_0123abcd",
            "connect hello --json",
        ] {
            let r = parse(ok);
            assert!(
                r.is_ok() || r.as_ref().unwrap_err().kind() == clap::error::ErrorKind::DisplayHelp,
                "{ok}"
            );
        }
        for bad in ["", "frobnicate", "apps destroy hello", "keys add bob", "tokens create", "apps --bogus"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
