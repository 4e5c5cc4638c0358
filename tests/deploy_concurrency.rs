//! QUALITY.md R3: 20 pushes at once across 5 apps. Pushes to one app queue behind each other (the deploy
//! lock), pushes to different apps run in parallel; none is lost or half-applied: each push either landed
//! (and its release is live or superseded) or was refused cleanly, and every server ref names the live release.

use crate::daemon;

use daemon::{Daemon, WorkTree, ok, stderr, stdout};

#[test]
fn twenty_pushes_across_five_apps() {
    let d = std::sync::Arc::new(Daemon::start());
    // Per app: a base commit pushed first, then four clones each adding their own commit on top of it.
    let mut trees = Vec::new();
    for a in 0..5 {
        let app = format!("app{a}");
        let base = WorkTree::new(d.tmp.path(), &format!("{app}-base"));
        base.git(&["remote", "add", "catwalk", &d.remote_url(&app)]);
        let out = base.push(&d, &d.admin, &["catwalk", "main"]);
        assert!(out.status.success(), "{}", stderr(&out));
        for p in 0..4 {
            let wt = WorkTree { path: d.tmp.path().join(format!("{app}-p{p}")) };
            let clone = std::process::Command::new("git")
                .args(["clone", "-q"])
                .arg(&base.path)
                .arg(&wt.path)
                .output()
                .unwrap();
            assert!(clone.status.success());
            wt.git(&["remote", "add", "catwalk", &d.remote_url(&app)]);
            wt.git(&[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                &format!("p{p}"),
            ]);
            trees.push((app.clone(), wt));
        }
    }
    let handles: Vec<_> = trees
        .into_iter()
        .map(|(app, wt)| {
            let d = d.clone();
            std::thread::spawn(move || {
                let head = wt.git(&["rev-parse", "HEAD"]);
                let out = wt.push(&d, &d.admin, &["catwalk", "main"]);
                let text = format!("{}{}", stdout(&out), stderr(&out));
                (app, head, out.status.success(), text)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for a in 0..5 {
        let app = format!("app{a}");
        let mine: Vec<_> = results.iter().filter(|r| r.0 == app).collect();
        let landed: Vec<_> = mine.iter().filter(|r| r.2).collect();
        assert!(!landed.is_empty(), "{app}: no push landed: {:#?}", mine);
        for r in mine.iter().filter(|r| !r.2) {
            // Refused cleanly by git (the ref moved under it) — never a half-applied deploy.
            assert!(
                r.3.contains("fetch first") || r.3.contains("non-fast-forward") || r.3.contains("rejected"),
                "{app}: a push failed for another reason:\n{}",
                r.3
            );
        }
        let server = d.server_ref(&app, "main").expect("ref");
        assert!(landed.iter().any(|r| r.1 == server), "{app}: the ref names none of the landed pushes");
        let rel: serde_json::Value =
            serde_json::from_str(&ok(&d.ssh(&d.admin, &format!("releases {app} --json"), ""))).unwrap();
        let live: Vec<_> = rel.as_array().unwrap().iter().filter(|r| r["status"] == "live").collect();
        assert_eq!(live.len(), 1, "{app}: exactly one live release");
        assert_eq!(live[0]["commit"], server, "{app}: the ref equals the live release");
        assert!(
            rel.as_array().unwrap().iter().all(|r| r["status"] != "deploying"),
            "{app}: nothing left deploying"
        );
    }
}
