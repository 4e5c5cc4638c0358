use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

fn key(name: &str, role: Role, pk: &str) -> KeyRecord {
    KeyRecord {
        name: name.into(),
        role,
        public_key: pk.into(),
        fingerprint: format!("SHA256:{name}"),
        added_at: 1,
        added_by: "init".into(),
    }
}

fn app(name: &str) -> AppRecord {
    AppRecord {
        name: name.into(),
        created_at: 1,
        created_by: "alice".into(),
        owners: vec![],
        deploy_branch: None,
        allowed_origins: vec![],
        incarnation: format!("i_{name}"),
    }
}

#[test]
fn keys_are_unique_and_last_admin_stays() {
    let (_d, s) = store();
    s.add_key(&key("alice", Role::Admin, "ssh-ed25519 AAAA1")).unwrap();
    assert!(matches!(
        s.add_key(&key("alice", Role::Deployer, "ssh-ed25519 X")),
        Err(StoreError::Conflict(_))
    ));
    let err = s.add_key(&key("bob", Role::Deployer, "ssh-ed25519 AAAA1")).unwrap_err();
    assert!(err.to_string().contains("already registered as \"alice\""), "{err}");
    s.add_key(&key("bob", Role::Deployer, "ssh-ed25519 AAAA2")).unwrap();
    let err = s.remove_key("alice").unwrap_err();
    assert!(err.to_string().contains("last admin"), "{err}");
    assert_eq!(s.keys().unwrap().len(), 2, "a refused removal changes nothing");
    s.remove_key("bob").unwrap();
    assert!(matches!(s.remove_key("bob"), Err(StoreError::NotFound(_))));
}

#[test]
fn store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let s = Store::open(&path).unwrap();
        s.create_app(&app("hello")).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.app("hello").unwrap().unwrap().name, "hello");
}

#[test]
fn tokens_are_scoped_digested_and_revocable() {
    let (_d, s) = store();
    s.create_app(&app("a")).unwrap();
    s.create_app(&app("b")).unwrap();
    let t = s.create_token("a", "laptop", None, "alice").unwrap();
    assert!(t.token.starts_with("cw_") && t.token.len() == 3 + 72);
    assert_ne!(t.record.digest, t.token, "only the digest is stored");
    assert!(matches!(s.check_token("a", &t.token).unwrap(), TokenCheck::Valid(_)));
    assert_eq!(s.check_token("b", &t.token).unwrap(), TokenCheck::WrongApp);
    let mut forged = t.token.clone();
    forged.pop();
    forged.push(if t.token.ends_with('0') { '1' } else { '0' });
    assert_eq!(s.check_token("a", &forged).unwrap(), TokenCheck::Unknown);
    assert_eq!(s.check_token("a", "garbage").unwrap(), TokenCheck::Unknown);
    assert_eq!(s.check_token("a", "cw_zz").unwrap(), TokenCheck::Unknown);
    s.revoke_token("a", "laptop").unwrap();
    assert_eq!(s.check_token("a", &t.token).unwrap(), TokenCheck::Revoked);
    assert!(matches!(s.revoke_token("a", "laptop"), Err(StoreError::NotFound(_))));
}

#[test]
fn expired_tokens_are_refused() {
    let (_d, s) = store();
    let t = s.create_token("a", "ci", Some(0), "alice").unwrap();
    assert_eq!(s.check_token("a", &t.token).unwrap(), TokenCheck::Expired);
}

fn push(app: &str) -> PushRecord {
    PushRecord {
        seq: 0,
        app: app.into(),
        refname: "refs/heads/main".into(),
        old: "0".into(),
        new: "1".into(),
        key: "alice".into(),
        at: 1,
        options: vec!["note=\x1b[2J".into()],
        verdict: "accepted".into(),
    }
}

fn call(app: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: 1,
        app: app.into(),
        token: "laptop".into(),
        method: "tools/call".into(),
        tool: Some("echo".into()),
        status: 200,
        error: false,
        duration_us: 10,
    }
}

#[test]
fn destroying_an_app_leaves_nothing_under_its_name() {
    let (_d, s) = store();
    for name in ["a", "ab"] {
        s.create_app(&app(name)).unwrap();
        s.put_release(&release(name, 1, ReleaseStatus::Live)).unwrap();
        s.record_push(push(name)).unwrap();
        s.record_audit(&mut [call(name)]).unwrap();
    }
    let t = s.create_token("a", "x", None, "alice").unwrap();
    let kept = s.create_token("ab", "x", None, "alice").unwrap();
    let erased = s.destroy_app("a", "alice").unwrap();
    assert_eq!((erased.tokens, erased.releases, erased.pushes, erased.audit_relabelled), (1, 1, 1, 1));
    assert_eq!(s.check_token("a", &t.token).unwrap(), TokenCheck::Unknown);
    assert!(s.tokens("a").unwrap().is_empty());
    assert!(s.releases("a").unwrap().is_empty());
    assert!(s.pushes(Some("a"), 10).unwrap().is_empty());
    assert!(s.audit("a", 10).unwrap().is_empty(), "audit rows are detached from the name");
    assert_eq!(s.next_release_version("a").unwrap(), 1);
    // Kept for the operator, under a label no app can be named: the calls and the destroy itself.
    let label = &erased.audit_label;
    assert!(crate::names::AppName::parse(label).is_err());
    let trail = s.audit(label, 10).unwrap();
    assert_eq!(trail.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["apps destroy", "tools/call"]);
    assert_eq!(trail[0].token, "key:alice");
    // A call still queued when the app went is not written under its name either.
    s.record_audit(&mut [call("a")]).unwrap();
    assert!(s.audit("a", 10).unwrap().is_empty());
    // The app whose name shares the prefix keeps everything.
    assert_eq!(s.releases("ab").unwrap().len(), 1);
    assert_eq!(s.pushes(Some("ab"), 10).unwrap().len(), 1);
    assert_eq!(s.audit("ab", 10).unwrap().len(), 1);
    assert!(matches!(s.check_token("ab", &kept.token).unwrap(), TokenCheck::Valid(_)));
    // Re-created, the name starts empty.
    s.create_app(&app("a")).unwrap();
    assert!(s.tokens("a").unwrap().is_empty() && s.pushes(Some("a"), 10).unwrap().is_empty());
    assert!(matches!(s.destroy_app("nosuch", "alice"), Err(StoreError::NotFound(_))));
}

#[test]
fn pushes_and_audit_append_in_order() {
    let (_d, s) = store();
    for i in 0..3 {
        let p = s
            .record_push(PushRecord {
                seq: 0,
                app: if i == 1 { "b".into() } else { "a".into() },
                refname: "refs/heads/main".into(),
                old: "0".into(),
                new: format!("{i}"),
                key: "alice".into(),
                at: 1,
                options: vec![],
                verdict: "accepted".into(),
            })
            .unwrap();
        assert_eq!(p.seq, i + 1);
    }
    let a = s.pushes(Some("a"), 10).unwrap();
    assert_eq!(a.iter().map(|p| p.new.as_str()).collect::<Vec<_>>(), ["2", "0"]);
    s.create_app(&app("a")).unwrap();
    s.record_audit(&mut [call("a")]).unwrap();
    assert_eq!(s.audit("a", 5).unwrap().len(), 1);
}

fn release(app: &str, version: u32, status: ReleaseStatus) -> ReleaseRecord {
    use crate::plan::{Entry, Language, Plan, Registry, Source, Transport};
    let plan = Plan {
        manifest: "catwalk.toml".into(),
        language: Language::Node,
        source: Source::Package { registry: Registry::Npm, name: "x".into(), version: Some("1.0.0".into()) },
        entry: Entry::PackageBin { bin: None },
        args: vec![],
        transport: Transport::Stdio,
        env: vec![],
        shared: false,
        install_scripts: false,
        runtime: None,
        allowed_origins: vec![],
        no_network: false,
        auth: Default::default(),
        warm: None,
        machines: None,
    };
    ReleaseRecord {
        app: app.into(),
        version,
        commit: format!("{version:040}"),
        plan,
        status,
        created_at: 1,
        pusher: "alice".into(),
        secrets: Default::default(),
        runtime: crate::plan::RuntimeKind::Local,
        timings: vec![],
        introspection: None,
        error: None,
        rollback_of: None,
        install_dir: None,
        command: vec![],
        secrets_key: Default::default(),
    }
}

#[test]
fn releases_promote_recover_and_prune() {
    let (_d, s) = store();
    assert_eq!(s.next_release_version("a").unwrap(), 1);
    s.put_release(&release("a", 1, ReleaseStatus::Deploying)).unwrap();
    s.promote_release("a", 1).unwrap();
    s.put_release(&release("a", 2, ReleaseStatus::Deploying)).unwrap();
    s.put_release(&release("ab", 1, ReleaseStatus::Deploying)).unwrap();
    assert_eq!(s.live_release("a").unwrap().unwrap().version, 1);
    assert_eq!(s.releases("a").unwrap().len(), 2, "prefix scans do not mix app a with app ab");
    assert_eq!(s.recover_releases().unwrap(), 2);
    assert_eq!(s.release("a", 2).unwrap().unwrap().status, ReleaseStatus::Failed);
    assert_eq!(s.live_release("a").unwrap().unwrap().version, 1, "a crash never changes the live release");
    for v in 3..=30 {
        s.put_release(&release("a", v, ReleaseStatus::Deploying)).unwrap();
        s.promote_release("a", v).unwrap();
    }
    let all = s.releases("a").unwrap();
    assert_eq!(all.len(), RELEASE_RETENTION);
    assert_eq!(all[0].status, ReleaseStatus::Live);
    assert_eq!(all.iter().filter(|r| r.status == ReleaseStatus::Live).count(), 1);
    assert_eq!(s.next_release_version("a").unwrap(), 31);
}

/// Opening a schema-1 store gives every app record an incarnation id (the app's secrets key depends on
/// it), once: reopening keeps the ids it gave.
#[test]
fn schema_1_apps_get_incarnations_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let s = Store::open(&path).unwrap();
        let txn = s.db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", b"1".as_slice()).unwrap();
            let mut apps = txn.open_table(APPS).unwrap();
            let old = br#"{"name":"old","created_at":1,"created_by":"alice","owners":["alice"]}"#;
            apps.insert("old", old.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = Store::open(&path).unwrap();
    let given = s.app("old").unwrap().unwrap().incarnation;
    assert!(given.starts_with("i_") && given.len() == 34, "{given}");
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.app("old").unwrap().unwrap().incarnation, given);
    assert_ne!(AppRecord::new("a", "x", vec![]).incarnation, AppRecord::new("a", "x", vec![]).incarnation);
}

#[test]
fn a_locked_store_is_waited_for_then_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let first = Store::open(&path).unwrap();
    let err = Store::open_waiting(&path, std::time::Duration::from_millis(200)).err().expect("locked");
    assert!(err.to_string().contains("locked by another catwalk"), "{err}");
    // The holder goes away (a previous daemon's last process exiting): the wait ends with the store open.
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let store =
        Store::open_waiting(&path, std::time::Duration::from_secs(10)).expect("opened after the wait");
    holder.join().unwrap();
    assert!(store.apps().is_ok());
}
