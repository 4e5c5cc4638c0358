//! git over SSH against the real binary with the real `git` and `ssh`: push, re-push, force-push, clone,
//! the deploy-branch policy, bad names, permissions, push options, and the queueing deploy lock.

use crate::daemon;

use daemon::{ChildGuard, Daemon, Key, WorkTree, ok, stderr};

#[test]
fn push_repush_force_push_and_clone() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "hello");
    let first = wt.commit("a.txt", "one\n");
    let url = d.remote_url("hello");

    let out = wt.push(&d, &d.admin, &[&url, "main"]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("remote: -----> hello: received"), "{err}");
    assert!(err.contains("/mcp/hello"), "post-receive summary missing: {err}");
    assert!(err.contains("tokens create hello"), "{err}");
    assert_eq!(d.server_ref("hello", "main").as_deref(), Some(first.as_str()));

    let second = wt.commit("a.txt", "two\n");
    ok(&wt.push(&d, &d.admin, &[&url, "main"]));
    assert_eq!(d.server_ref("hello", "main").as_deref(), Some(second.as_str()));

    // Rewrite history and force-push.
    wt.git(&["reset", "-q", "--hard", &first]);
    let forced = wt.commit("b.txt", "other\n");
    let out = wt.push(&d, &d.admin, &[&url, "main"]);
    assert!(!out.status.success(), "a non-fast-forward push without --force must be refused by git");
    ok(&wt.push(&d, &d.admin, &["--force", &url, "main"]));
    assert_eq!(d.server_ref("hello", "main").as_deref(), Some(forced.as_str()));

    // Clone (also with the .git suffix and a leading slash path).
    for (i, url) in [url.clone(), format!("{url}.git")].iter().enumerate() {
        let target = d.tmp.path().join(format!("clone{i}"));
        ok(&d.git(&d.admin, d.tmp.path()).args(["clone", "-q", url]).arg(&target).output().unwrap());
        assert_eq!(std::fs::read_to_string(target.join("b.txt")).unwrap(), "other\n");
        let head = WorkTree { path: target }.git(&["rev-parse", "HEAD"]);
        assert_eq!(head, forced);
    }

    // The push was recorded and shows in `info`.
    let info: serde_json::Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "info hello --json", ""))).unwrap();
    assert_eq!(info["head"], forced.as_str());
    assert_eq!(info["last_push"]["new"], forced.as_str());
    assert_eq!(info["last_push"]["verdict"], "accepted");
    assert_eq!(info["owners"], serde_json::json!(["admin"]));
}

#[test]
fn non_deploy_branches_tags_and_deletion_are_refused() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "app");
    let first = wt.commit("a", "1\n");
    let url = d.remote_url("app");
    ok(&wt.push(&d, &d.admin, &[&url, "main"]));

    wt.commit("a", "2\n");
    let out = wt.push(&d, &d.admin, &[&url, "main:dev"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("deploys only branch main"), "{err}");
    assert!(err.contains("git push catwalk HEAD:main"), "hint missing: {err}");
    assert_eq!(d.server_ref("app", "dev"), None);
    assert_eq!(d.server_ref("app", "main").as_deref(), Some(first.as_str()));

    wt.git(&["tag", "v1"]);
    let out = wt.push(&d, &d.admin, &[&url, "v1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tags are not deployed"), "{}", stderr(&out));

    let out = wt.push(&d, &d.admin, &[&url, ":main"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("deleting main"), "{}", stderr(&out));
    assert_eq!(d.server_ref("app", "main").as_deref(), Some(first.as_str()));

    // Rejections are recorded too.
    let info: serde_json::Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "info app --json", ""))).unwrap();
    assert!(info["last_push"]["verdict"].as_str().unwrap().starts_with("rejected"), "{info}");
}

#[test]
fn push_options_are_recorded() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "opts");
    let sha = wt.commit("a", "1\n");
    ok(&wt.push(&d, &d.admin, &["-o", "foo=bar", "-o", "mode=async", &d.remote_url("opts"), "main"]));
    let info: serde_json::Value =
        serde_json::from_str(&ok(&d.local(&["info", "opts", "--json"], ""))).unwrap();
    assert_eq!(info["last_push"]["new"], sha.as_str());
    assert_eq!(info["last_push"]["options"], serde_json::json!(["foo=bar", "mode=async"]));
}

#[test]
fn bad_names_are_refused_and_nothing_is_created() {
    let d = Daemon::start();
    let before = list_tree(&d.dir);
    for path in ["../x", "a/b", "Hello", "'quoted'", "x;rm", "/../../etc", "..", "a.git.git"] {
        // Quoted the way git quotes paths, so the daemon sees exactly `path` after word splitting.
        let quoted = shell_words::quote(path);
        let out = d.ssh(&d.admin, &format!("git-receive-pack {quoted}"), "");
        assert!(!out.status.success(), "{path} accepted");
        assert!(stderr(&out).contains("not a valid app name"), "{path}: {}", stderr(&out));
        let out = d.ssh(&d.admin, &format!("git-upload-pack {quoted}"), "");
        assert!(!out.status.success(), "{path} accepted for upload");
    }
    // Through git itself.
    let wt = WorkTree::new(d.tmp.path(), "w");
    wt.commit("a", "1\n");
    let out = wt.push(&d, &d.admin, &[&format!("ssh://git@127.0.0.1:{}/../evil", d.ssh_port), "main"]);
    assert!(!out.status.success());
    assert_eq!(list_tree(&d.dir), before, "something was created on disk");
    assert!(!d.tmp.path().join("evil.git").exists());
}

#[test]
fn deployers_push_to_their_own_apps_only() {
    let d = Daemon::start();
    let alice = Key::generate(d.tmp.path(), "alice");
    let bob = Key::generate(d.tmp.path(), "bob");
    ok(&d.ssh(&d.admin, "keys add alice --role deployer", &alice.public_text()));
    ok(&d.ssh(&d.admin, "keys add bob --role deployer", &bob.public_text()));

    let wt = WorkTree::new(d.tmp.path(), "w");
    let sha = wt.commit("a", "1\n");
    ok(&wt.push(&d, &alice, &[&d.remote_url("alices"), "main"]));
    let out = wt.push(&d, &bob, &[&d.remote_url("alices"), "main"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the app name alices is taken"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("alice,") && !stderr(&out).contains("belongs"), "{}", stderr(&out));
    // Bob can neither clone it nor see it.
    let out =
        d.git(&bob, d.tmp.path()).args(["clone", "-q", &d.remote_url("alices"), "stolen"]).output().unwrap();
    assert!(!out.status.success());
    let apps: serde_json::Value = serde_json::from_str(&ok(&d.ssh(&bob, "apps --json", ""))).unwrap();
    assert_eq!(apps, serde_json::json!([]));
    // Bob's own app works; the admin may push anywhere.
    ok(&wt.push(&d, &bob, &[&d.remote_url("bobs"), "main"]));
    wt.commit("a", "2\n");
    ok(&wt.push(&d, &d.admin, &[&d.remote_url("alices"), "main"]));
    assert_ne!(d.server_ref("alices", "main").as_deref(), Some(sha.as_str()));
    // Deployers cannot manage keys.
    let out = d.ssh(&bob, "keys add eve --role admin", &bob.public_text());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs the admin role"), "{}", stderr(&out));
    let out = d.ssh(&bob, "keys list", "");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn concurrent_pushes_to_one_app_queue_and_land_in_order() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "q");
    let url = d.remote_url("queue");
    wt.commit("a", "base\n");
    ok(&wt.push(&d, &d.admin, &[&url, "main"]));
    let first = wt.commit("a", "first\n");
    let gate = d.tmp.path().join("gate-1");
    let held = ChildGuard(Some(wt.push_held(&d, &d.admin, &gate, &[&url, "main"])));
    d.wait_log("push to queue by admin: started");

    // The second push (on top of the first) waits for the first one's lock...
    let wt2 = WorkTree { path: d.tmp.path().join("q2") };
    ok(&d.git(&d.admin, d.tmp.path()).args(["clone", "-q", &url]).arg(&wt2.path).output().unwrap());
    wt2.git(&["fetch", "-q", wt.path.to_str().unwrap(), "main"]);
    wt2.git(&["reset", "-q", "--hard", &first]);
    let second = wt2.commit("b", "second\n");
    let mut cmd = d.git(&d.admin, &wt2.path);
    cmd.args(["push", &url, "main"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let queued = ChildGuard(Some(cmd.spawn().unwrap()));
    d.wait_log("queue: push by admin queued behind admin's push of (receiving)");

    // ...and both land, in order, once the first is released.
    std::fs::write(&gate, "").unwrap();
    ok(&held.wait());
    let out = queued.wait();
    ok(&out);
    assert!(stderr(&out).contains("queued behind admin's push of"), "{}", stderr(&out));
    assert_eq!(d.server_ref("queue", "main").as_deref(), Some(second.as_str()));
}

#[test]
fn pushes_to_two_apps_overlap() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "two");
    let sha = wt.commit("a", "1\n");
    let gate = d.tmp.path().join("gate-2");
    let held = ChildGuard(Some(wt.push_held(&d, &d.admin, &gate, &[&d.remote_url("one"), "main"])));
    d.wait_log("push to one by admin: started");
    // While `one` is held mid-push, a push to `two` completes.
    ok(&wt.push(&d, &d.admin, &[&d.remote_url("two"), "main"]));
    assert_eq!(d.server_ref("two", "main").as_deref(), Some(sha.as_str()));
    assert_eq!(d.server_ref("one", "main"), None);
    std::fs::write(&gate, "").unwrap();
    ok(&held.wait());
    assert_eq!(d.server_ref("one", "main").as_deref(), Some(sha.as_str()));
}

/// Everything under `dir` except the store (which changes on every read transaction).
fn list_tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out.retain(|p| p != "state.redb");
    out
}
