//! One tenant sees nothing of another, through commands, logs and SSH (issue #12), tried with two
//! deployer keys on one real daemon: a foreign app answers exactly as a missing one; a destroyed app's
//! name, re-created by someone else, shows nothing of the old tenant (also after a crash left its files
//! behind); a server's and a pusher's escape sequences are shown, never obeyed; a forged SSH signature is
//! refused at once.

use crate::daemon;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use daemon::{AcceptAnyHostKey, Daemon, Key, WAIT, WorkTree, ok, stderr, stdout};
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_encoding::Encode;

/// A signer that claims someone else's public key and signs with its own private key: the signature is
/// well-formed (right algorithm, right length) and verifies against nothing but the signer's own key.
struct ForgingSigner {
    own: russh::keys::PrivateKey,
    /// Append a blob that is not a signature at all instead (wrong length for its algorithm).
    malformed: bool,
}

#[derive(Debug)]
struct Unreachable;

impl From<russh::SendError> for Unreachable {
    fn from(_: russh::SendError) -> Self {
        Unreachable
    }
}

impl russh::Signer for ForgingSigner {
    type Error = Unreachable;
    async fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        _hash: Option<russh::keys::HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Unreachable> {
        use russh::keys::signature::Signer;
        if self.malformed {
            let mut blob = Vec::new();
            "ssh-ed25519".encode(&mut blob).expect("encodes");
            vec![7u8; 10].encode(&mut blob).expect("encodes");
            blob.encode(&mut to_sign).expect("encodes");
        } else {
            let signature: russh::keys::ssh_key::Signature =
                self.own.try_sign(&to_sign).expect("ed25519 signs");
            // What an SSH agent answers: the request with the signature blob appended.
            signature.encode_prefixed(&mut to_sign).expect("encodes");
        }
        Ok(to_sign)
    }
}

/// The escape sequences a hostile server writes to stderr: retitle the terminal, clear the screen.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J";
/// How they must be shown.
const SHOWN: &str = r"\x1b]0;pwned\x07\x1b[2J";

fn add_deployer(d: &Daemon, name: &str) -> Key {
    let key = Key::generate(d.tmp.path(), name);
    ok(&d.ssh(&d.admin, &format!("keys add {name} --role deployer"), &key.public_text()));
    key
}

fn all(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// Exit status, stdout and stderr, exactly.
fn answer(out: &Output) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    (out.status.code(), out.stdout.clone(), out.stderr.clone())
}

/// A work tree whose server writes [`HOSTILE`] and `marker` to stderr when it starts, then serves MCP.
fn hostile_tree(d: &Daemon, name: &str, marker: &str) -> WorkTree {
    let wt = WorkTree::new(d.tmp.path(), name);
    std::fs::write(
        wt.path.join("hostile.py"),
        // SHOWN is also how Python spells HOSTILE in a string literal.
        format!(
            "import runpy, sys\nsys.stderr.write('{SHOWN} {marker}\\n')\nsys.stderr.flush()\n\
             runpy.run_path('server.py', run_name='__main__')\n"
        ),
    )
    .unwrap();
    wt.commit("catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"hostile.py\"]\n");
    wt.git(&["add", "hostile.py"]);
    wt.git(&["commit", "-q", "-m", "a server that writes escape sequences to stderr"]);
    wt
}

fn no_raw_escape(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.contains('\x07'),
        "{what} carries raw control characters: {text:?}"
    );
}

/// Every command a deployer may run on an app of theirs, for `app`.
fn app_commands(app: &str) -> Vec<String> {
    [
        "info {}",
        "info {} --json",
        "releases {}",
        "releases {} --json",
        "rollback {}",
        "rollback {} v1",
        "restart {}",
        "logs {}",
        "logs {} -n 5",
        "tokens create {}",
        "tokens create {} --name x --json",
        "tokens list {}",
        "tokens list {} --json",
        "tokens revoke {} abcd1234",
        "grants list {}",
        "grants list {} --json",
        "grants revoke {} abcd1234",
        "connect {}",
        "secrets pubkey {}",
        "secrets pubkey {} --json",
        "apps destroy {0} --confirm {0}",
    ]
    .iter()
    .map(|c| c.replace("{0}", app).replace("{}", app))
    .collect()
}

fn clone(d: &Daemon, key: &Key, app: &str, into: &str) -> Output {
    let _ = std::fs::remove_dir_all(d.tmp.path().join(into));
    d.git(key, d.tmp.path()).args(["clone", &d.remote_url(app), into]).output().unwrap()
}

/// Bob asks about Alice's app, and then about the same name once it no longer exists: byte for byte the
/// same answer from every command and from `git clone`, never Alice's name. A push to the taken name is
/// refused with what `apps create` says (the name is taken), without saying by whom.
#[test]
fn a_foreign_app_answers_exactly_like_a_missing_one() {
    let d = Daemon::start();
    let alice = add_deployer(&d, "alice");
    let bob = add_deployer(&d, "bob");
    ok(&d.ssh(&alice, "apps create hidden", ""));
    ok(&d.ssh(&alice, "tokens create hidden --name laptop", ""));

    let commands = app_commands("hidden");
    let foreign: Vec<_> = commands.iter().map(|c| answer(&d.ssh(&bob, c, ""))).collect();
    let clone_foreign = answer(&clone(&d, &bob, "hidden", "stolen"));
    for (command, (code, out, err)) in commands.iter().zip(&foreign) {
        let text = format!("{}{}", String::from_utf8_lossy(out), String::from_utf8_lossy(err));
        assert_eq!(*code, Some(1), "{command}: {text}");
        assert!(text.contains("no app named hidden"), "{command}: {text}");
        assert!(!text.contains("alice") && !text.contains("permission"), "{command} tells: {text}");
    }
    let push = WorkTree::new(d.tmp.path(), "bobs-tree").push(&d, &bob, &[&d.remote_url("hidden"), "main"]);
    assert!(!push.status.success());
    let create = d.ssh(&bob, "apps create hidden", "");
    assert_eq!(create.status.code(), Some(1));
    let taken = stderr(&create);
    assert!(taken.contains("the app name hidden is taken"), "{taken}");
    assert!(stderr(&push).contains(taken.trim().trim_start_matches("catwalk: ")), "{}", stderr(&push));
    for text in [all(&push), all(&create)] {
        assert!(!text.contains("alice"), "the refusal names the owner: {text}");
    }
    // The owner and the admin still see the owners.
    assert!(ok(&d.ssh(&alice, "info hidden", "")).contains("owners:     alice"));
    assert!(ok(&d.ssh(&d.admin, "info hidden", "")).contains("owners:     alice"));

    ok(&d.ssh(&alice, "apps destroy hidden --confirm hidden", ""));
    let missing: Vec<_> = commands.iter().map(|c| answer(&d.ssh(&bob, c, ""))).collect();
    for ((command, f), m) in commands.iter().zip(&foreign).zip(&missing) {
        assert_eq!(f, m, "{command}: a foreign app and a missing one answer differently");
    }
    assert_eq!(clone_foreign, answer(&clone(&d, &bob, "hidden", "stolen")), "git clone tells them apart");
}

/// Alice deploys under a name, pushes with an option, mints a token, and her server logs a marker; she
/// destroys the app and Bob creates the name again. Bob sees nothing of Alice: not in `logs`, `info`,
/// `releases`, `tokens list`, nor the repository. Then the files a crash between the store's erase and
/// the file removal would leave are planted back: re-creating the name clears them too.
#[test]
fn a_destroyed_name_created_again_shows_nothing_of_the_old_tenant() {
    let d = Daemon::start();
    let alice = add_deployer(&d, "alice");
    let bob = add_deployer(&d, "bob");
    let wt = hostile_tree(&d, "alices-tree", "alice-stderr-marker");
    let alice_head = wt.git(&["rev-parse", "HEAD"]);
    ok(&wt.push(&d, &alice, &["-o", "note=alice-option-marker", &d.remote_url("reused"), "main"]));
    let token = ok(&d.ssh(&alice, "tokens create reused --name alice-laptop", ""));
    assert!(token.contains("alice-laptop"), "{token}");
    let logs = ok(&d.ssh(&alice, "logs reused", ""));
    assert!(logs.contains("alice-stderr-marker"), "the old tenant's log must have the marker first: {logs}");
    assert!(ok(&d.ssh(&alice, "info reused", "")).contains("alice-option-marker"));
    // What a crash right after the store's erase (before the files go) would have left: kept aside.
    let saved = d.tmp.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    copy_tree(&d.dir.join("repos/reused.git"), &saved.join("reused.git"));
    std::fs::create_dir_all(d.dir.join("apps/reused/home")).unwrap();
    std::fs::write(d.dir.join("apps/reused/home/alice-file-marker"), "alice").unwrap();
    copy_tree(&d.dir.join("apps/reused"), &saved.join("app"));

    let destroyed = ok(&d.ssh(&alice, "apps destroy reused --confirm reused", ""));
    assert!(destroyed.contains("destroyed app reused"), "{destroyed}");
    assert!(!d.dir.join("repos/reused.git").exists() && !d.dir.join("apps/reused").exists());

    let check_nothing_of_alice = |round: &str| {
        let mut seen = String::new();
        for command in [
            "info reused",
            "info reused --json",
            "releases reused",
            "releases reused --json",
            "logs reused",
            "logs reused -n 1000",
            "tokens list reused",
            "tokens list reused --json",
        ] {
            let out = d.ssh(&bob, command, "");
            assert!(out.status.success(), "{round}: bob's {command}: {}", all(&out));
            seen.push_str(&all(&out));
        }
        for marker in ["alice", &alice_head[..12]] {
            assert!(!seen.contains(marker), "{round}: bob sees {marker:?} of the old tenant:\n{seen}");
        }
        let cloned = clone(&d, &bob, "reused", "bobs-clone");
        let log =
            d.git(&bob, &d.tmp.path().join("bobs-clone")).args(["log", "--all", "--format=%H"]).output();
        let history = log.map(|o| stdout(&o)).unwrap_or_default();
        assert!(!history.contains(&alice_head), "{round}: bob cloned alice's commits: {}", all(&cloned));
        assert!(!d.dir.join("apps/reused/home/alice-file-marker").exists(), "{round}: alice's files remain");
    };

    ok(&d.ssh(&bob, "apps create reused", ""));
    check_nothing_of_alice("after apps destroy");

    // The crash case: Bob's app goes, Alice's files come back at the name's paths, Bob creates it again
    // by pushing.
    ok(&d.ssh(&bob, "apps destroy reused --confirm reused", ""));
    copy_tree(&saved.join("reused.git"), &d.dir.join("repos/reused.git"));
    copy_tree(&saved.join("app"), &d.dir.join("apps/reused"));
    let bobs = WorkTree::new(d.tmp.path(), "bobs-tree");
    ok(&bobs.push(&d, &bob, &[&d.remote_url("reused"), "main"]));
    check_nothing_of_alice("after a crash left files behind");
    let mine = ok(&d.ssh(&bob, "info reused", ""));
    assert!(mine.contains("owners:     bob"), "{mine}");
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// A server writes escape sequences to stderr and a pusher sends them as a push option: `logs`, `info`
/// and the push's own `remote:` lines show them as `\x1b...` text, and `--json` stays valid JSON that
/// means the original string.
#[test]
fn escape_sequences_are_shown_never_obeyed() {
    let d = Daemon::start();
    let alice = add_deployer(&d, "alice");
    let wt = hostile_tree(&d, "tree", "marker");
    let option = format!("note={HOSTILE}");
    let push = wt.push(&d, &alice, &["-o", &option, &d.remote_url("loud"), "main"]);
    let echoed = all(&push);
    assert!(push.status.success(), "{echoed}");
    assert!(
        echoed.contains(&format!("push options: note={SHOWN}")),
        "the option is echoed escaped: {echoed}"
    );
    no_raw_escape("the push output", &echoed);

    // The server's stderr, through SSH and through the local CLI.
    for (via, logs) in
        [("ssh", ok(&d.ssh(&alice, "logs loud", ""))), ("local", ok(&d.local(&["logs", "loud"], "")))]
    {
        assert!(logs.contains(&format!("stderr {SHOWN} marker")), "{via}: {logs}");
        no_raw_escape(via, &logs);
    }
    let info = ok(&d.ssh(&alice, "info loud", ""));
    assert!(info.contains(&format!("-o note={SHOWN}")), "{info}");
    no_raw_escape("info", &info);
    let json = ok(&d.ssh(&alice, "info loud --json", ""));
    no_raw_escape("info --json", &json);
    let value: serde_json::Value = serde_json::from_str(&json).expect("info --json stays valid JSON");
    assert_eq!(value["last_push"]["options"], serde_json::json!([option]), "JSON keeps the exact string");
}

/// After a forged signature (the admin's public key, signed with another key) the server answers
/// USERAUTH_FAILURE at once: the client learns it failed and may go on (here: with its own key), instead of
/// waiting for the 30 s authentication timeout. Identity is still never taken from the offered key.
#[tokio::test(flavor = "multi_thread")]
async fn forged_signature_gets_an_immediate_failure() {
    let d = Daemon::start();
    let mallory = Key::generate(d.tmp.path(), "mallory");
    ok(&d.ssh(&d.admin, "keys add mallory --role deployer", &mallory.public_text()));
    let admin_public = russh::keys::load_public_key(&d.admin.public).unwrap();
    let own = russh::keys::load_secret_key(&mallory.private, None).unwrap();

    for malformed in [false, true] {
        let config = Arc::new(russh::client::Config::default());
        let mut session =
            russh::client::connect(config, ("127.0.0.1", d.ssh_port), AcceptAnyHostKey).await.unwrap();
        let mut forger = ForgingSigner { own: own.clone(), malformed };
        let forged = tokio::time::timeout(
            WAIT,
            session.authenticate_publickey_with("git", admin_public.clone(), None, &mut forger),
        )
        .await
        .expect("the server must answer a forged signature, not go silent until the auth timeout")
        .expect("the forging signer never fails");
        assert!(!forged.success(), "a forged signature must never authenticate (malformed: {malformed})");
        if malformed {
            // russh drops a connection whose signature blob does not even decode; the client knows at once.
            continue;
        }
        let russh::client::AuthResult::Failure { remaining_methods, .. } = &forged else { unreachable!() };
        assert!(
            remaining_methods.contains(&russh::MethodKind::PublicKey),
            "USERAUTH_FAILURE must still offer publickey: {forged:?}"
        );
        // The same connection goes on, and is whoever really signs: mallory, never the admin.
        let auth = tokio::time::timeout(
            WAIT,
            session.authenticate_publickey(
                "git",
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(own.clone()), None),
            ),
        )
        .await
        .expect("the server answers the next attempt")
        .unwrap();
        assert!(auth.success(), "mallory's own key authenticates after the forged attempt");
        let mut channel = session.channel_open_session().await.unwrap();
        channel.exec(true, "whoami").await.unwrap();
        let mut out = Vec::new();
        while let Some(msg) = channel.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        let who = String::from_utf8_lossy(&out).into_owned();
        assert!(who.starts_with("mallory (deployer)"), "identity must be mallory's, got {who:?}");
    }
}
