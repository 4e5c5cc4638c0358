//! One exec request: `git-receive-pack 'APP'`, `git-upload-pack 'APP'`, or a command of the grammar.
//!
//! The command string is split into words (shell-words) and never given to a shell. App names are
//! validated before anything touches the disk. A push takes the app's deploy lock before `git
//! receive-pack` starts and keeps it until that process exits.

use std::sync::Arc;

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::git::locks::PushTicket;
use crate::git::{self, Service};
use crate::identity::Identity;
use crate::names::AppName;
use crate::output::{Input, Output, Stream};
use crate::platform::Platform;

pub struct Request {
    pub platform: Arc<Platform>,
    pub identity: Identity,
    pub command: Vec<u8>,
    pub git_protocol: Option<String>,
}

type Writer = ChannelWriteHalf<Msg>;

/// Runs the request on `channel`, then sends exit-status, EOF and close (in that order).
pub async fn run(req: Request, channel: Channel<Msg>) {
    let (mut read, write) = channel.split();
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    let gone = CancellationToken::new();
    // Client bytes → `in_rx` until EOF (which closes it); a closed channel cancels `gone`.
    let pump = {
        let gone = gone.clone();
        tokio::spawn(async move {
            let mut tx = Some(in_tx);
            loop {
                match read.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        if let Some(sender) = &tx
                            && sender.send(data.to_vec()).await.is_err()
                        {
                            tx = None;
                        }
                    }
                    Some(ChannelMsg::Eof) => tx = None,
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                }
            }
            gone.cancel();
        })
    };
    let (code, ticket) = dispatch(&req, in_rx, &write, &gone).await;
    let _ = write.exit_status(code as u32).await;
    let _ = write.eof().await;
    let _ = write.close().await;
    // A push counts as running until the client has its exit status (the client answers our close), so
    // a graceful shutdown never cuts a finished push's last message.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), gone.cancelled()).await;
    pump.abort();
    drop(ticket);
}

/// Writes `text` to the client's stderr (control characters made visible).
async fn to_stderr(write: &Writer, text: &str) {
    let mut w = write.make_writer_ext(Some(1));
    let _ = w.write_all(crate::terminal_text::visible_lines(text).as_bytes()).await;
    let _ = w.flush().await;
}

/// Runs the request; returns its exit code and, for a push, the ticket that keeps it registered.
async fn dispatch<'r>(
    req: &'r Request,
    input: mpsc::Receiver<Vec<u8>>,
    write: &Writer,
    gone: &CancellationToken,
) -> (i32, Option<PushTicket<'r>>) {
    let mut ticket = None;
    let code = dispatch_inner(req, input, write, gone, &mut ticket).await;
    (code, ticket)
}

async fn dispatch_inner<'r>(
    req: &'r Request,
    input: mpsc::Receiver<Vec<u8>>,
    write: &Writer,
    gone: &CancellationToken,
    ticket: &mut Option<PushTicket<'r>>,
) -> i32 {
    let argv = match crate::commands::split_line(&req.command) {
        Ok(argv) => argv,
        Err(message) => {
            to_stderr(write, &format!("catwalk: {message}\n")).await;
            return crate::commands::USAGE;
        }
    };
    if req.platform.shutdown.is_cancelled() {
        to_stderr(write, "catwalk: the daemon is shutting down; try again in a moment\n").await;
        return 1;
    }
    if let Some((service, args)) = Service::from_argv(&argv) {
        tracing::info!("ssh: {} runs {} {:?}", req.identity.name, service.git_subcommand(), args);
        return match git_service(req, service, args, input, write, gone, ticket).await {
            Ok(code) => code,
            Err(message) => {
                to_stderr(write, &format!("catwalk: {message}\n")).await;
                1
            }
        };
    }
    tracing::info!("ssh: {} runs {:?}", req.identity.name, argv.first().map(String::as_str).unwrap_or(""));
    let (out, mut out_rx) = Output::channel();
    // Every chunk a command prints reaches the terminal with its control characters made visible.
    let forward = {
        let mut stdout = write.make_writer();
        let mut stderr = write.make_writer_ext(Some(1));
        tokio::spawn(async move {
            while let Some((stream, data)) = out_rx.recv().await {
                let w = match stream {
                    Stream::Stdout => &mut stdout as &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
                    Stream::Stderr => &mut stderr,
                };
                if w.write_all(crate::terminal_text::visible_lines(&data).as_bytes()).await.is_err() {
                    break;
                }
                let _ = w.flush().await;
            }
        })
    };
    let mut input = Input::new(input, None);
    let code = crate::commands::run(&req.platform, &req.identity, &argv, &mut input, &out).await;
    drop(out);
    let _ = forward.await;
    code
}

async fn git_service<'r>(
    req: &'r Request,
    service: Service,
    args: &[String],
    input: mpsc::Receiver<Vec<u8>>,
    write: &Writer,
    gone: &CancellationToken,
    slot: &mut Option<PushTicket<'r>>,
) -> Result<i32, String> {
    let platform = &req.platform;
    let who = &req.identity;
    let [path] = args else {
        return Err(format!("usage: git-{} 'APP' (one repository path)", service.git_subcommand()));
    };
    // Validated before anything touches the disk: `../x`, `a/b`, quotes, upper case never get further.
    let app = AppName::from_repo_path(path).map_err(|e| e.to_string())?;
    let env = |push_id: Option<String>| git::GitEnv { push_id, git_protocol: req.git_protocol.clone() };
    match service {
        Service::UploadPack => {
            let record = platform.store.app(app.as_str()).map_err(|e| e.to_string())?;
            let readable = record.as_ref().is_some_and(|r| who.can_manage(r));
            let repo = platform.dir.repo(&app);
            if !readable || !repo.exists() {
                // The same words as every command's answer for an app the caller cannot see.
                return Err(crate::commands::no_such_app(&app));
            }
            let cmd = git::command(&platform.config, &platform.dir, service, &repo, &env(None));
            relay(cmd, input, write, platform.pushes.abort.clone()).await
        }
        Service::ReceivePack => {
            let started = tokio::select! {
                started = platform.begin_push(&app, who, |queued| {
                    let message = format!("catwalk: {queued}\n");
                    let write_stderr = write.make_writer_ext(Some(1));
                    tokio::spawn(async move {
                        let mut w = write_stderr;
                        let _ = w.write_all(message.as_bytes()).await;
                        let _ = w.flush().await;
                    });
                }) => started,
                _ = gone.cancelled() => return Ok(1),
            };
            let (ticket, repo) = started.map_err(|e| e.to_string())?;
            let cmd = git::command(
                &platform.config,
                &platform.dir,
                service,
                &repo,
                &env(Some(ticket.session.id.clone())),
            );
            let code = relay(cmd, input, write, platform.pushes.abort.clone()).await;
            tracing::info!("push to {app} by {}: finished with status {code:?}", who.name);
            // Kept (with the deploy lock) until the client has the exit status.
            *slot = Some(ticket);
            code
        }
    }
}

async fn relay(
    cmd: tokio::process::Command,
    input: mpsc::Receiver<Vec<u8>>,
    write: &Writer,
    abort: CancellationToken,
) -> Result<i32, String> {
    git::relay::relay(cmd, input, write.make_writer(), write.make_writer_ext(Some(1)), abort)
        .await
        .map_err(|e| format!("cannot run git: {e} (is git installed and in PATH?)"))
}
