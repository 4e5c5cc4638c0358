//! Secrets stay with the app they were made for (issue #12, "secrets replay"), tried as a second tenant
//! would on one real daemon: Bob copies Alice's `.catwalk/secrets.age` (it sits in her repository,
//! often a public one) into his own app, and into a new app under her name once she destroyed hers.
//! Every attempt is refused with a message that says how to make a good file and shows nothing of the
//! content; Bob's live release keeps serving and his ref does not move.

use crate::daemon;
use crate::deps;

use std::process::{Command, Output, Stdio};

use daemon::{Daemon, Key, WorkTree, ok, stderr, stdout};

const MANIFEST: &str = "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n\
                        [env.API_TOKEN]\nrequired = true\nsecret = true\n";

fn add_deployer(d: &Daemon, name: &str) -> Key {
    let key = Key::generate(d.tmp.path(), name);
    ok(&d.ssh(&d.admin, &format!("keys add {name} --role deployer"), &key.public_text()));
    key
}

fn age_encrypt(recipient: &str, plaintext: &str) -> Vec<u8> {
    let mut child = Command::new(deps::age())
        .args(["-r", recipient])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("age (run ./scripts/test-deps)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(plaintext.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Writes `secrets.age` and the manifest that requires `API_TOKEN` into `wt`, and commits.
fn commit_secrets(wt: &WorkTree, secrets_age: &[u8], message: &str) {
    std::fs::create_dir_all(wt.path.join(".catwalk")).unwrap();
    std::fs::write(wt.path.join(".catwalk/secrets.age"), secrets_age).unwrap();
    std::fs::write(wt.path.join("catwalk.toml"), MANIFEST).unwrap();
    wt.git(&["add", "-A"]);
    wt.git(&["commit", "-q", "-m", message]);
}

fn all(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn live_version(d: &Daemon, key: &Key, app: &str) -> Option<u64> {
    let releases: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(key, &format!("releases {app} --json"), ""))).unwrap();
    releases.as_array().unwrap().iter().find(|r| r["status"] == "live").and_then(|r| r["version"].as_u64())
}

/// Asserts a refused replay: the message, the recipient to use, nothing of the plaintext, nothing moved.
fn assert_refused(d: &Daemon, bob: &Key, app: &str, out: &Output, canary: &str, before: Option<String>) {
    let text = all(out);
    assert!(!out.status.success(), "a copied secrets file was accepted for {app}:\n{text}");
    assert!(text.contains(&format!("is not encrypted to app {app}")), "{text}");
    let recipient = ok(&d.ssh(bob, &format!("secrets pubkey {app}"), "")).trim().to_string();
    assert!(text.contains(&format!("age -r {recipient}")), "the refusal must say how to re-encrypt:\n{text}");
    assert!(!text.contains(canary), "the refusal shows the secret:\n{text}");
    assert!(!d.log_text().contains(canary), "the daemon log shows the secret");
    assert_eq!(d.server_ref(app, "main"), before, "a refused push moved {app}'s ref");
}

#[test]
fn a_copied_secrets_file_never_decrypts_for_another_app() {
    let d = Daemon::start();
    let alice = add_deployer(&d, "alice");
    let bob = add_deployer(&d, "bob");
    let canary = format!("alice-secret-{}", std::process::id() as u64 * 7919 + 17);

    // Alice deploys with a secret encrypted to her app's own recipient.
    ok(&d.ssh(&alice, "apps create vault", ""));
    let vault_recipient = ok(&d.ssh(&alice, "secrets pubkey vault", "")).trim().to_string();
    assert!(vault_recipient.starts_with("age1"), "{vault_recipient}");
    let alices = WorkTree::new(d.tmp.path(), "alices-tree");
    let file = age_encrypt(&vault_recipient, &format!("API_TOKEN={canary}\n"));
    commit_secrets(&alices, &file, "secrets");
    let out = alices.push(&d, &alice, &[&d.remote_url("vault"), "main"]);
    assert!(out.status.success() && all(&out).contains("secrets: API_TOKEN"), "{}", all(&out));

    // Bob cannot even ask for Alice's recipient: her app answers like a missing one.
    let asked = d.ssh(&bob, "secrets pubkey vault", "");
    assert_eq!(asked.status.code(), Some(1));
    assert!(stderr(&asked).contains("no app named vault"), "{}", stderr(&asked));

    // Bob's own app is live (v1, no secrets); then he pushes Alice's file into it.
    let bobs = WorkTree::new(d.tmp.path(), "bobs-tree");
    ok(&bobs.push(&d, &bob, &[&d.remote_url("copycat"), "main"]));
    let before = d.server_ref("copycat", "main");
    assert!(before.is_some());
    assert_ne!(ok(&d.ssh(&bob, "secrets pubkey copycat", "")).trim(), vault_recipient);
    commit_secrets(&bobs, &file, "borrowed secrets");
    let out = bobs.push(&d, &bob, &[&d.remote_url("copycat"), "main"]);
    assert_refused(&d, &bob, "copycat", &out, &canary, before);
    assert_eq!(live_version(&d, &bob, "copycat"), Some(1), "the previous release must keep serving");

    // Alice destroys her app; Bob takes the name and pushes her file to it.
    ok(&d.ssh(&alice, "apps destroy vault --confirm vault", ""));
    ok(&d.ssh(&bob, "apps create vault", ""));
    assert_ne!(
        ok(&d.ssh(&bob, "secrets pubkey vault", "")).trim(),
        vault_recipient,
        "a re-created name must get a new recipient"
    );
    let out = bobs.push(&d, &bob, &[&d.remote_url("vault"), "main"]);
    assert_refused(&d, &bob, "vault", &out, &canary, None);

    // The file Bob makes for his own app works.
    let own = ok(&d.ssh(&bob, "secrets pubkey copycat", "")).trim().to_string();
    bobs.git(&["reset", "-q", "--hard", "HEAD~1"]);
    commit_secrets(&bobs, &age_encrypt(&own, "API_TOKEN=bobs-own\n"), "bob's own secrets");
    let out = bobs.push(&d, &bob, &[&d.remote_url("copycat"), "main"]);
    assert!(out.status.success(), "{}", all(&out));
    assert!(live_version(&d, &bob, "copycat").is_some_and(|v| v > 1), "bob's own file must deploy");
}
