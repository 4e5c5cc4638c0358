//! The SSH surface: authentication (unknown keys, the offered-but-unsigned-key impersonation), the shell
//! hint, the command grammar over SSH and locally, tokens, and authorized_keys reloading.

use crate::daemon;

use std::sync::Arc;

use daemon::{AcceptAnyHostKey, Daemon, Key, ok, stderr, stdout};
use russh::keys::PrivateKeyWithHashAlg;
use russh::keys::agent::AgentIdentity;

#[test]
fn unknown_key_is_refused() {
    let d = Daemon::start();
    let stranger = Key::generate(d.tmp.path(), "stranger");
    let out = d.ssh(&stranger, "whoami", "");
    assert_eq!(out.status.code(), Some(255), "ssh must fail to authenticate: {}", stdout(&out));
    assert!(stderr(&out).contains("Permission denied"), "{}", stderr(&out));
    assert_eq!(
        ok(&d.ssh(&d.admin, "whoami", "")).split_whitespace().take(2).collect::<Vec<_>>(),
        ["admin", "(admin)"]
    );
}

/// A "signer" that cannot sign: it lets the client offer a public key it does not own.
struct CannotSign;

#[derive(Debug)]
struct NoPrivateKey;

impl From<russh::SendError> for NoPrivateKey {
    fn from(_: russh::SendError) -> Self {
        NoPrivateKey
    }
}

impl russh::Signer for CannotSign {
    type Error = NoPrivateKey;
    async fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        _hash: Option<russh::keys::HashAlg>,
        _to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, NoPrivateKey> {
        Err(NoPrivateKey)
    }
}

/// Runs `command` on an authenticated russh session and returns (exit status, stdout).
async fn exec(session: &russh::client::Handle<AcceptAnyHostKey>, command: &str) -> (u32, String) {
    let mut channel = session.channel_open_session().await.unwrap();
    channel.exec(true, command).await.unwrap();
    let (mut out, mut status) = (Vec::new(), None);
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    (status.expect("an exit status"), String::from_utf8_lossy(&out).into_owned())
}

/// soft-serve GHSA-pchf-49fh-w34r: a client offers the admin's public key (the server answers "this key
/// could be accepted"), cannot sign for it, then authenticates with its own key. It must be itself.
#[tokio::test(flavor = "multi_thread")]
async fn offered_but_unsigned_admin_key_does_not_impersonate() {
    let d = Daemon::start();
    let mallory = Key::generate(d.tmp.path(), "mallory");
    ok(&d.ssh(&d.admin, "keys add mallory --role deployer", &mallory.public_text()));
    let stranger = Key::generate(d.tmp.path(), "stranger");
    let admin_public = russh::keys::load_public_key(&d.admin.public).unwrap();

    for (key, registered) in [(&mallory, true), (&stranger, false)] {
        let config = Arc::new(russh::client::Config::default());
        let mut session =
            russh::client::connect(config, ("127.0.0.1", d.ssh_port), AcceptAnyHostKey).await.unwrap();
        // The offer of the admin key gets "could be accepted" (so russh asks us to sign), and we cannot.
        let offered =
            session.authenticate_publickey_with("git", admin_public.clone(), None, &mut CannotSign).await;
        assert!(offered.is_err(), "the server must ask for a signature of the offered admin key");
        let own = russh::keys::load_secret_key(&key.private, None).unwrap();
        let auth = session
            .authenticate_publickey("git", PrivateKeyWithHashAlg::new(Arc::new(own), None))
            .await
            .unwrap();
        if registered {
            assert!(auth.success(), "mallory's own key must authenticate");
            let (status, out) = exec(&session, "whoami").await;
            assert_eq!(status, 0);
            assert!(out.starts_with("mallory (deployer)"), "identity must be mallory's, got {out:?}");
            let (status, _) = exec(&session, "keys list").await;
            assert_eq!(status, 1, "mallory must not get admin rights");
        } else {
            assert!(!auth.success(), "an unknown key must not authenticate after offering the admin key");
        }
    }
}

#[test]
fn shell_requests_get_a_hint() {
    let d = Daemon::start();
    let out = daemon::run_with_stdin(
        std::process::Command::new("ssh").args(d.ssh_args(&d.admin)).args(["-tt", "git@127.0.0.1"]),
        "",
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("catwalk has no shell; try: ssh -p"), "{all}");
    assert!(!out.status.success());
}

#[test]
fn usage_errors_exit_2_and_help_works() {
    let d = Daemon::start();
    for bad in ["frobnicate", "apps destroy x", "keys add bob", "tokens", "'unbalanced"] {
        let out = d.ssh(&d.admin, bad, "");
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let out = d.local(
            &shell_words::split(bad)
                .unwrap_or_else(|_| vec![bad.to_string()])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            "",
        );
        assert_eq!(out.status.code(), Some(2), "local {bad}: {}", stderr(&out));
    }
    let help = ok(&d.ssh(&d.admin, "help", ""));
    for word in ["apps", "keys", "tokens", "whoami", "secrets", "info"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
    assert_eq!(help, ok(&d.local(&["help"], "")));
    assert!(ok(&d.ssh(&d.admin, "version", "")).starts_with("catwalk "));
}

#[test]
fn json_outputs_parse_and_local_cli_matches_ssh() {
    let d = Daemon::start();
    let bob = Key::generate(d.tmp.path(), "bob");
    // keys add over SSH reads the key from stdin; locally too.
    let added: serde_json::Value = serde_json::from_str(&ok(&d.ssh(
        &d.admin,
        "keys add bob --role deployer --json",
        &bob.public_text(),
    )))
    .unwrap();
    assert_eq!(added["role"], "deployer");
    let carol = Key::generate(d.tmp.path(), "carol");
    ok(&d.local(&["keys", "add", "carol", "--role", "deployer"], &carol.public_text()));
    ok(&d.ssh(&d.admin, "apps create hello --json", ""));
    ok(&d.local(&["apps", "create", "world"], ""));

    for command in [
        "apps --json",
        "apps list --json",
        "keys list --json",
        "info hello --json",
        "tokens list hello --json",
        "version --json",
    ] {
        let over_ssh = ok(&d.ssh(&d.admin, command, ""));
        let value: serde_json::Value =
            serde_json::from_str(&over_ssh).unwrap_or_else(|e| panic!("{command}: {e}: {over_ssh}"));
        let local = ok(&d.local(&command.split(' ').collect::<Vec<_>>(), ""));
        let local_value: serde_json::Value = serde_json::from_str(&local).unwrap();
        assert_eq!(value, local_value, "{command}: ssh and local CLI differ");
    }
    let apps: serde_json::Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "apps --json", ""))).unwrap();
    let names: Vec<&str> = apps.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hello", "world"]);
    let keys: serde_json::Value =
        serde_json::from_str(&ok(&d.local(&["keys", "list", "--json"], ""))).unwrap();
    let names: Vec<&str> = keys.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "bob", "carol"]);
    // Text output is the same too.
    assert_eq!(ok(&d.ssh(&d.admin, "apps", "")), ok(&d.local(&["apps"], "")));
    assert_eq!(
        ok(&d.ssh(&d.admin, "secrets pubkey hello", "")),
        ok(&d.local(&["secrets", "pubkey", "hello"], ""))
    );
    assert!(ok(&d.local(&["secrets", "pubkey", "hello"], "")).starts_with("age1"));
    assert_ne!(
        ok(&d.local(&["secrets", "pubkey", "hello"], "")),
        ok(&d.local(&["secrets", "pubkey", "world"], ""))
    );
    let bare = d.local(&["secrets", "pubkey"], "");
    assert_eq!(bare.status.code(), Some(1));
    assert!(stderr(&bare).contains("run `secrets pubkey APP`"), "{}", stderr(&bare));
    assert_eq!(ok(&d.local(&["whoami"], "")).trim(), "local (admin)");

    // destroy needs the confirmation and removes the repository.
    let out = d.ssh(&d.admin, "apps destroy world --confirm wrong", "");
    assert_eq!(out.status.code(), Some(1));
    assert!(d.dir.join("repos/world.git").exists());
    ok(&d.local(&["apps", "destroy", "world", "--confirm", "world"], ""));
    assert!(!d.dir.join("repos/world.git").exists());
}

#[test]
fn tokens_create_list_revoke_over_ssh() {
    let d = Daemon::start();
    let bob = Key::generate(d.tmp.path(), "bob");
    ok(&d.ssh(&d.admin, "keys add bob --role deployer", &bob.public_text()));
    ok(&d.ssh(&bob, "apps create bobs", ""));
    ok(&d.ssh(&d.admin, "apps create admins", ""));

    let created: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&bob, "tokens create bobs --name laptop --expires 30d --json", "")))
            .unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("cw_"), "{created}");
    assert!(created["expires_at"].as_u64().is_some());
    let text = ok(&d.ssh(&bob, "tokens create bobs", ""));
    assert!(text.contains("cw_") && text.contains("shown once"), "{text}");

    let listed: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&bob, "tokens list bobs --json", ""))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(token), "token plaintext must never be listed");
    let id = created["id"].as_str().unwrap();
    ok(&d.ssh(&bob, &format!("tokens revoke bobs {id}"), ""));
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&bob, "tokens list bobs --json", ""))).unwrap();
    let revoked = listed.as_array().unwrap().iter().find(|t| t["id"] == id).unwrap();
    assert_eq!(revoked["status"], "revoked");

    // Bob has no rights on the admin's app: to him it does not exist.
    let out = d.ssh(&bob, "tokens create admins", "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no app named admins"), "{}", stderr(&out));
    // The plaintext never reaches the daemon's log.
    assert!(!d.log_text().contains(token));
}

#[test]
fn authorized_keys_file_is_reloaded_on_change() {
    let tmp = tempfile::tempdir().unwrap();
    let ak = tmp.path().join("authorized_keys");
    std::fs::write(&ak, "# managed by config management\n").unwrap();
    let d = Daemon::start_with_config(&format!(
        "[ssh]\nauthorized_keys_file = \"{}\"\nauthorized_keys_role = \"deployer\"\n",
        ak.display()
    ));
    let ops = Key::generate(d.tmp.path(), "ops");
    assert_eq!(d.ssh(&ops, "whoami", "").status.code(), Some(255));

    // Written the way config management does it: a new file renamed over the old one.
    let staged = tmp.path().join("authorized_keys.new");
    std::fs::write(&staged, ops.public_text()).unwrap();
    std::fs::rename(&staged, &ak).unwrap();
    d.wait_log("authorized_keys changed: 1 keys loaded");
    let who = ok(&d.ssh(&ops, "whoami", ""));
    assert!(who.starts_with("ops (deployer)"), "{who}");

    std::fs::write(&ak, "").unwrap();
    d.wait_log("authorized_keys changed: 0 keys loaded");
    assert_eq!(d.ssh(&ops, "whoami", "").status.code(), Some(255));
}

#[test]
fn up_initialises_registers_the_users_key_and_prints_how_to_push() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key = Key::generate(&home.join(".ssh"), "id_ed25519");
    let dir = tmp.path().join("data");
    let mut child = std::process::Command::new(daemon::catwalk_bin())
        .args(["up", "--ssh-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dir"])
        .arg(&dir)
        .env("HOME", &home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut port = None;
    for line in reader.lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        if line.contains("ssh -p ") && line.contains(" help") {
            port = line.split("ssh -p ").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
            break;
        }
    }
    let all = lines.join("\n");
    assert!(all.contains("registered") && all.contains("as admin key"), "{all}");
    assert!(all.contains("git remote add catwalk ssh://git@127.0.0.1:"), "{all}");
    let port = port.unwrap_or_else(|| panic!("no ssh hint in {all}"));
    let out = daemon::run_with_stdin(
        std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&key.private)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-p",
                &port,
                "git@127.0.0.1",
                "whoami",
            ]),
        "",
    );
    assert!(ok(&out).starts_with("admin (admin)"), "{}", stdout(&out));
    drop(guard);
    let _ = child.wait();
}

/// Sends SIGKILL to a pid on drop.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
    }
}
