//! SSH exec lines and the command grammar: parsing, names, permissions, unknown keys.

use std::sync::Arc;

use super::Good;
use crate::daemon::{AcceptAnyHostKey, Daemon, Key, ok, stderr};

/// Runs raw exec bytes (which the `ssh` client cannot send: NUL, invalid UTF-8) as `key`; returns
/// (exit status, stderr).
async fn raw_exec(d: &Daemon, key: &Key, command: &[u8]) -> (u32, String) {
    let config = Arc::new(russh::client::Config::default());
    let mut session =
        russh::client::connect(config, ("127.0.0.1", d.ssh_port), AcceptAnyHostKey).await.unwrap();
    let secret = russh::keys::load_secret_key(&key.private, None).unwrap();
    let auth = session
        .authenticate_publickey("git", russh::keys::PrivateKeyWithHashAlg::new(Arc::new(secret), None))
        .await
        .unwrap();
    assert!(auth.success());
    let mut channel = session.channel_open_session().await.unwrap();
    channel.exec(true, command.to_vec()).await.unwrap();
    let (mut err, mut status) = (Vec::new(), None);
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    (status.expect("an exit status"), String::from_utf8_lossy(&err).into_owned())
}

enum Who {
    Admin,
    Deployer,
    Stranger,
}

enum Line {
    /// Through the OpenSSH client, with stdin.
    Ssh(Who, String, &'static str),
    /// Raw exec bytes through a russh client, as the admin.
    Raw(Vec<u8>),
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_commands() {
    let g = Good::start();
    let d = &g.d;
    let deployer = Key::generate(d.tmp.path(), "dep");
    ok(&d.ssh(&d.admin, "keys add dep --role deployer", &deployer.public_text()));
    let stranger = Key::generate(d.tmp.path(), "stranger");
    let admin = |c: &str| Line::Ssh(Who::Admin, c.to_string(), "");
    let dep = |c: &str| Line::Ssh(Who::Deployer, c.to_string(), "");
    // (what, input, exit status, fragment of the error the caller sees)
    #[rustfmt::skip]
    let cases: Vec<(&str, Line, i32, &str)> = vec![
        ("an unknown command", admin("frobnicate"), 2, "unrecognized subcommand 'frobnicate'"),
        ("an empty command", admin("''"), 2, "unrecognized subcommand ''"),
        ("unbalanced quotes", admin("apps 'create x"), 2, "unbalanced quotes"),
        ("a 5000-byte line", admin(&format!("apps create {}", "a".repeat(5000))), 2, "at most 4096 bytes"),
        ("a NUL byte", Line::Raw(b"apps\0destroy good --confirm good".to_vec()), 2, "control character '\\0'"),
        ("an escape sequence", Line::Raw(b"info \x1b[2Jgood".to_vec()), 2, "control character '\\u{1b}'"),
        ("a newline", Line::Raw(b"apps\napps destroy good --confirm good".to_vec()), 2, "control character '\\n'"),
        ("invalid UTF-8", Line::Raw(b"info g\xffood".to_vec()), 2, "not valid UTF-8"),
        ("an unknown flag", admin("apps --bogus"), 2, "unexpected argument '--bogus'"),
        ("apps destroy without --confirm", admin("apps destroy good"), 2, "--confirm <CONFIRM>"),
        ("apps destroy with the wrong confirmation", admin("apps destroy good --confirm bad"), 1, "does not match"),
        ("apps create with a ../ name", admin("apps create ../x"), 1, "\"../x\" is not a valid app name"),
        ("apps create with an upper-case name", admin("apps create UPPER"), 1, "is not a valid app name"),
        ("apps create with a 64-char name", admin(&format!("apps create {}", "a".repeat(64))), 1, "1-63 characters"),
        ("apps create of an existing app", admin("apps create good"), 1, "already exists"),
        ("info of a ../ name", admin("info ../../etc"), 1, "is not a valid app name"),
        ("tokens for an unknown app", admin("tokens create nosuch"), 1, "no app named nosuch"),
        ("tokens with a bad name", admin("tokens create good --name 'a b'"), 1, "is not a valid token name"),
        ("tokens with a bad lifetime", admin("tokens create good --expires forever"), 1, "--expires \"forever\""),
        ("revoking an unknown token", admin("tokens revoke good nosuchid"), 1, "nosuchid"),
        ("keys add without a key", admin("keys add bob --role deployer"), 1, "expected one OpenSSH public key"),
        ("keys add with garbage", Line::Ssh(Who::Admin, "keys add bob --role deployer".into(), "ssh-ed25519 AAAAnot-base64 x\n"), 1, "expected one OpenSSH public key"),
        ("keys add with a bad name", admin("keys add 'b b' --role deployer"), 1, "is not a valid key name"),
        ("keys add with an unknown role", admin("keys add bob --role root"), 2, "invalid value 'root'"),
        ("keys remove of an unknown key", admin("keys remove nosuch"), 1, "nosuch"),
        ("rollback to a missing version", admin("rollback good v99"), 1, "no release v99"),
        ("rollback to a non-version", admin("rollback good banana"), 1, "is not a release (use vN"),
        ("logs -n garbage", admin("logs good -n garbage"), 2, "invalid value 'garbage'"),
        ("logs -n negative", admin("logs good -n -5"), 2, "unexpected argument '-5'"),
        ("restart of an unknown app", admin("restart nosuch"), 1, "nosuch"),
        ("git-receive-pack with two paths", admin("git-receive-pack good other"), 1, "one repository path"),
        ("git-upload-pack of an unknown app", admin("git-upload-pack 'nosuch'"), 1, "no app named nosuch"),
        ("git-receive-pack of a ../ path", admin("git-receive-pack '../good'"), 1, "is not a valid app name"),
        ("a deployer lists keys", dep("keys list"), 1, "`keys list` needs the admin role"),
        ("a deployer adds a key", dep("keys add x --role admin"), 1, "needs the admin role"),
        // Another tenant's app answers exactly like a missing one (tests/isolation_tenants.rs compares the bytes).
        ("a deployer mints a token for another's app", dep("tokens create good"), 1, "no app named good (see `apps` for yours)"),
        ("a deployer destroys another's app", dep("apps destroy good --confirm good"), 1, "no app named good"),
        ("a deployer rolls back another's app", dep("rollback good"), 1, "no app named good"),
        ("a deployer reads another's info", dep("info good --json"), 1, "no app named good"),
        ("a deployer reads another's logs", dep("logs good -f"), 1, "no app named good"),
        ("a deployer lists another's releases", dep("releases good"), 1, "no app named good"),
        ("a deployer restarts another's app", dep("restart good"), 1, "no app named good"),
        ("a deployer lists another's tokens", dep("tokens list good"), 1, "no app named good"),
        ("a deployer revokes another's token", dep("tokens revoke good laptop"), 1, "no app named good"),
        ("a deployer clones another's app", dep("git-upload-pack 'good'"), 1, "no app named good (see `apps` for yours)"),
        ("a deployer pushes to another's app", dep("git-receive-pack 'good'"), 1, "the app name good is taken"),
        ("a deployer creates another's app name", dep("apps create good"), 1, "the app name good is taken"),
        ("an unknown key", Line::Ssh(Who::Stranger, "apps".into(), ""), 255, "Permission denied"),
    ];
    assert!(cases.len() >= 40);
    let before = g.snapshot(false);
    for (what, line, status, expected) in cases {
        let (code, err) = match &line {
            Line::Ssh(who, command, stdin) => {
                let key = match who {
                    Who::Admin => &d.admin,
                    Who::Deployer => &deployer,
                    Who::Stranger => &stranger,
                };
                let out = d.ssh(key, command, stdin);
                (out.status.code().unwrap_or(-1), stderr(&out))
            }
            Line::Raw(bytes) => {
                let (code, err) = raw_exec(d, &d.admin, bytes).await;
                (code as i32, err)
            }
        };
        assert_eq!(code, status, "{what}: exit status; stderr:\n{err}");
        assert!(err.contains(expected), "{what}: expected {expected:?} in:\n{err}");
        eprintln!("row [{what}] exit {code}: {}", err.trim());
        g.unchanged(what, &before, false).await;
    }
}
