//! The push gate and the app-level operations against the core itself, without a socket or a binary:
//! what a hostile second tenant can try through any transport is decided here.

use std::sync::Arc;

use super::push::{self, Verdict};
use super::{Platform, PlatformError};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::git::hook::{QuarantineEnv, RefUpdate};
use crate::identity::Identity;
use crate::names::AppName;
use crate::output::{Output, Progress};
use crate::store::{Role, Store};

/// A platform on a fresh data dir (the default config), for tests of the core and of the commands.
pub(crate) struct Fixture {
    _tmp: tempfile::TempDir,
    pub(crate) platform: Arc<Platform>,
}

pub(crate) fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(&tmp.path().join("data"));
    crate::init::init(&dir, None).unwrap();
    let config = Config::load(&dir.config()).unwrap();
    let store = Store::open(&dir.store()).unwrap();
    let platform = Arc::new(Platform::new(dir, config, store).unwrap());
    Fixture { _tmp: tmp, platform }
}

pub(crate) fn deployer(name: &str) -> Identity {
    Identity { name: name.into(), role: Role::Deployer, fingerprint: None }
}

fn app(name: &str) -> AppName {
    AppName::parse(name).unwrap()
}

fn never_waits(line: String) {
    panic!("did not expect to wait: {line}")
}

fn update(refname: &str, old: char, new: char) -> RefUpdate {
    RefUpdate { old: old.to_string().repeat(40), new: new.to_string().repeat(40), refname: refname.into() }
}

#[tokio::test]
async fn a_push_to_another_tenants_app_is_refused_before_it_takes_the_lock() {
    let f = fixture();
    let (alice, bob) = (deployer("alice"), deployer("bob"));
    f.platform.create_app(&app("shop"), &alice, never_waits).await.unwrap();
    let refused = f.platform.begin_push(&app("shop"), &bob, never_waits).await.err().unwrap();
    assert_eq!(refused, PlatformError::Refused(push::name_taken("shop")));
    // Bob queued for nothing: the owner's push starts at once.
    let (ticket, repo) = f.platform.begin_push(&app("shop"), &alice, never_waits).await.unwrap();
    assert!(repo.join("HEAD").exists(), "{}", repo.display());
    drop(ticket);
    assert_eq!(f.platform.pushes.running(), 0);
}

#[tokio::test]
async fn pushes_and_commands_wait_in_one_line_with_one_message() {
    let f = fixture();
    let alice = deployer("alice");
    f.platform.create_app(&app("shop"), &alice, never_waits).await.unwrap();
    let (ticket, _) = f.platform.begin_push(&app("shop"), &alice, never_waits).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let platform = f.platform.clone();
        tokio::spawn(async move {
            platform
                .rollback(&app("shop"), None, "alice", &Progress::to_lines(|_| {}), |line| {
                    tx.send(line).unwrap()
                })
                .await
        })
    };
    assert_eq!(rx.await.unwrap(), "shop: rollback by alice queued behind alice's push of (receiving)");
    // A restart in the middle of a push could stop the new release's first processes: it waits too.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let restart = {
        let platform = f.platform.clone();
        tokio::spawn(
            async move { platform.restart(&app("shop"), "bob", |line| tx.send(line).unwrap()).await },
        )
    };
    assert_eq!(rx.await.unwrap(), "shop: restart by bob queued behind alice's push of (receiving)");
    assert!(!restart.is_finished(), "the restart must not run while the push holds the app");
    drop(ticket);
    // Once the push is gone the rollback runs (and finds nothing to roll back to), then the restart (no
    // release to restart: nothing was deployed).
    let rolled = waiter.await.unwrap();
    assert!(rolled.is_err(), "{rolled:?}");
    let restarted = restart.await.unwrap();
    assert_eq!(restarted, Err(PlatformError::Refused("app shop has no live release to restart".into())));
    // No such app: refused before it waits for anything.
    let missing = f.platform.restart(&app("nope"), "bob", |l| panic!("queued: {l}")).await;
    assert_eq!(missing, Err(PlatformError::Refused("no app nope".into())));
}

#[tokio::test]
async fn the_gate_refuses_tags_other_branches_and_deletes_and_records_each() {
    let f = fixture();
    let alice = deployer("alice");
    let (ticket, _) = f.platform.begin_push(&app("shop"), &alice, never_waits).await.unwrap();
    let id = ticket.session.id.clone();
    let cases = [
        (update("refs/tags/v1", '0', 'a'), "tags are not deployed"),
        (update("refs/heads/dev", '0', 'a'), "catwalk deploys only branch main of shop"),
        (update("refs/heads/main", 'a', '0'), "deleting main, the deploy branch of shop, is refused"),
    ];
    for (update, expected) in cases {
        let (out, _rx) = Output::channel();
        let ctx = f
            .platform
            .push_context(&id, vec![update.clone()], Vec::new(), QuarantineEnv::default(), Progress::new(out))
            .unwrap();
        match push::pre_receive(&ctx).await {
            Verdict::Reject(reason) => assert!(reason.contains(expected), "{reason}"),
            Verdict::Accept => panic!("{update:?} was accepted"),
        }
        let last = f.platform.store.pushes(Some("shop"), 1).unwrap().remove(0);
        assert_eq!(last.refname, update.refname);
        assert!(
            last.verdict.starts_with("rejected: ") && last.verdict.contains(expected),
            "{}",
            last.verdict
        );
    }
    // A hook naming a push this daemon did not start gets nothing.
    let (out, _rx) = Output::channel();
    let unknown =
        f.platform.push_context("0123", Vec::new(), Vec::new(), QuarantineEnv::default(), Progress::new(out));
    assert!(unknown.is_none());
    drop(ticket);
    assert!(
        f.platform
            .push_context(
                &id,
                Vec::new(),
                Vec::new(),
                QuarantineEnv::default(),
                Progress::new(Output::channel().0)
            )
            .is_none()
    );
}

#[tokio::test]
async fn destroy_frees_the_name_and_a_new_owner_finds_nothing() {
    let f = fixture();
    let (alice, bob) = (deployer("alice"), deployer("bob"));
    let shop = app("shop");
    f.platform.create_app(&shop, &alice, never_waits).await.unwrap();
    std::fs::create_dir_all(f.platform.dir.app(&shop).join("home")).unwrap();
    std::fs::write(f.platform.dir.app(&shop).join("home/alice-notes"), "secret").unwrap();
    f.platform.destroy_app(&shop, "alice", never_waits).await.unwrap();
    assert!(f.platform.store.app("shop").unwrap().is_none());
    assert!(!f.platform.dir.app(&shop).exists());
    assert!(!f.platform.dir.repo(&shop).exists());
    let record = f.platform.create_app(&shop, &bob, never_waits).await.unwrap();
    assert_eq!(record.owners, vec!["bob".to_string()]);
    assert!(!f.platform.dir.app(&shop).join("home/alice-notes").exists());
}

#[tokio::test]
async fn a_first_push_clears_what_was_left_at_the_name() {
    let f = fixture();
    let shop = app("shop");
    // An operator's copy, or a crash mid-destroy, left files under the name of an app that is gone.
    std::fs::create_dir_all(f.platform.dir.app(&shop).join("home")).unwrap();
    std::fs::write(f.platform.dir.app(&shop).join("home/planted"), "x").unwrap();
    let (_ticket, repo) = f.platform.begin_push(&shop, &deployer("mallory"), never_waits).await.unwrap();
    assert!(repo.exists());
    assert!(!f.platform.dir.app(&shop).join("home/planted").exists());
}

#[tokio::test]
async fn a_deployer_cannot_create_more_apps_than_allowed() {
    let f = fixture();
    let alice = deployer("alice");
    let max = f.platform.config.deploy.max_apps_per_deployer;
    assert!(max > 0, "the default config limits apps per deployer");
    for i in 0..max {
        f.platform.create_app(&app(&format!("app{i}")), &alice, never_waits).await.unwrap();
    }
    let refused = f.platform.create_app(&app("onemore"), &alice, never_waits).await.unwrap_err();
    assert!(
        matches!(&refused, PlatformError::Refused(m) if m.contains("max_apps_per_deployer")),
        "{refused}"
    );
}

#[tokio::test]
async fn a_failure_inside_catwalk_is_not_worded_as_the_pushers_mistake() {
    let f = fixture();
    // The repositories' directory is not a directory: preparing the repository fails.
    let repos = f.platform.dir.repos();
    std::fs::remove_dir_all(&repos).unwrap();
    std::fs::write(&repos, "not a directory").unwrap();
    let failed = f.platform.begin_push(&app("shop"), &deployer("alice"), never_waits).await.err().unwrap();
    assert!(
        matches!(&failed, PlatformError::Internal(m) if m.contains("preparing the repository of shop")),
        "{failed:?}"
    );
    assert!(failed.to_string().starts_with("internal error: "), "{failed}");
    // Nothing was left behind: no push registered, the lock free for the next one.
    assert_eq!(f.platform.pushes.running(), 0);
    let _guard = f.platform.lock_app(&app("shop"), "bob", "push", never_waits).await;
}
