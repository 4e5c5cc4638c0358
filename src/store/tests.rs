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

#[test]
fn destroying_an_app_drops_its_tokens() {
    let (_d, s) = store();
    s.create_app(&app("a")).unwrap();
    let t = s.create_token("a", "x", None, "alice").unwrap();
    s.destroy_app("a").unwrap();
    assert_eq!(s.check_token("a", &t.token).unwrap(), TokenCheck::Unknown);
    assert!(s.tokens("a").unwrap().is_empty());
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
    let mut audit = vec![AuditRecord {
        seq: 0,
        at: 1,
        app: "a".into(),
        token: "laptop".into(),
        method: "tools/call".into(),
        tool: Some("echo".into()),
        status: 200,
        error: false,
        duration_us: 10,
    }];
    s.record_audit(&mut audit).unwrap();
    assert_eq!(s.audit("a", 5).unwrap().len(), 1);
}

fn release(app: &str, version: u32, status: ReleaseStatus) -> ReleaseRecord {
    let tree: std::collections::BTreeMap<String, Vec<u8>> =
        [("catwalk.toml".to_string(), b"[server]\npackage = \"npm:x\"\n".to_vec())].into();
    ReleaseRecord {
        app: app.into(),
        version,
        commit: format!("{version:040}"),
        plan: crate::pipeline::analyse::analyse(&tree).unwrap(),
        status,
        created_at: 1,
        pusher: "alice".into(),
        secrets: Default::default(),
        runtime: "local".into(),
        timings: vec![],
        introspection: None,
        error: None,
        rollback_of: None,
        install_dir: None,
        command: vec![],
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
