//! Push to deploy, end to end: real git over SSH into the real daemon, real registries, real MCP clients.
//! Every rejection checks that the server's ref did not move and that the previous release still answers.

use crate::daemon;
use crate::deps;
use crate::mcp;

use std::process::Command;
use std::time::{Duration, Instant};

use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use mcp::Mcp;
use serde_json::{Value, json};

fn push(wt: &WorkTree, d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = wt.push(d, &d.admin, args);
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

fn releases(d: &Daemon, app: &str) -> Vec<Value> {
    serde_json::from_str(&ok(&d.ssh(&d.admin, &format!("releases {app} --json"), ""))).unwrap()
}

/// The fixture app answers: initialize with a token, then `echo`.
async fn assert_serves(d: &Daemon, app: &str, token: &str, text: &str) {
    let mut c = Mcp::new(&d.endpoint(app), Some(token));
    let init = c.initialize().await;
    assert_eq!(init.status, 200, "initialize: {}", init.body);
    assert_eq!(c.call_text("echo", json!({"text": text})).await, text);
    c.close().await;
}

fn write(wt: &WorkTree, file: &str, content: &str) {
    let path = wt.path.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Commits everything in the work tree; returns HEAD.
fn commit_all(wt: &WorkTree, msg: &str) -> String {
    wt.git(&["add", "-A"]);
    wt.git(&["commit", "-q", "--allow-empty", "-m", msg]);
    wt.git(&["rev-parse", "HEAD"])
}

fn age_encrypt(recipient: &str, plaintext: &str) -> Vec<u8> {
    let mut child = Command::new(deps::age())
        .args(["-r", recipient])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(plaintext.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

const FIXTURE_TOML: &str = "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn user_story_time_tools_from_pypi() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "time-tools");
    write(
        &wt,
        "catwalk.toml",
        "[server]\npackage = \"pypi:mcp-server-time\"\nargs = [\"--local-timezone\", \"UTC\"]\n",
    );
    wt.git(&["rm", "-q", "server.py"]);
    commit_all(&wt, "time tools");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("time-tools")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    for expected in [
        "analysing",
        "catwalk.toml → PyPI package mcp-server-time",
        "installing ... done in",
        "healthy in",
        "get_current_time",
        &format!("live at http://{}/mcp/time-tools", d.http_addr),
    ] {
        assert!(output.contains(expected), "missing {expected:?} in:\n{output}");
    }
    let token = d.token("time-tools");
    let (ok_run, out, err) = deps::run_with_timeout(
        "py_client",
        Command::new(deps::venv_python()).arg(deps::py_client()).args([
            "--url",
            &d.endpoint("time-tools"),
            "--token",
            &token,
            "--scenario",
            "time",
        ]),
        Duration::from_secs(120),
    );
    assert!(ok_run, "the Python SDK client failed:\n{out}\n{err}");
    assert!(out.contains("\"timezone\": \"UTC\""), "{out}");
    // No token, a wrong token and a query-string token are refused before any backend is touched.
    let mut anon = Mcp::new(&d.endpoint("time-tools"), None);
    assert_eq!(anon.initialize().await.status, 401);
    let mut wrong = Mcp::new(&d.endpoint("time-tools"), Some("cw_0000"));
    assert_eq!(wrong.initialize().await.status, 401);
    let rel = releases(&d, "time-tools");
    assert_eq!(rel[0]["status"], "live");
    assert!(rel[0]["introspection"]["tools"].as_array().unwrap().iter().any(|t| t == "get_current_time"));
    let info = ok(&d.ssh(&d.admin, "info time-tools", ""));
    assert!(info.contains("live:       v1"), "{info}");
    // Whichever release PyPI serves, `info` says how 2026-07-28 clients reach it once the era is learnt.
    assert!(
        eventually_in_info(&d, "time-tools", "2026-07-28: passed as they are")
            || eventually_in_info(&d, "time-tools", "2026-07-28: translated by catwalk"),
        "{}",
        ok(&d.ssh(&d.admin, "info time-tools", ""))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_package_pinned_in_the_manifest() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "everything");
    let version = std::fs::read_to_string(
        deps::node_modules().join("@modelcontextprotocol/server-everything/package.json"),
    )
    .map(|t| serde_json::from_str::<Value>(&t).unwrap()["version"].as_str().unwrap().to_string())
    .unwrap();
    write(
        &wt,
        "catwalk.toml",
        &format!(
            "[server]\npackage = \"npm:@modelcontextprotocol/server-everything@{version}\"\nargs = [\"stdio\"]\n"
        ),
    );
    commit_all(&wt, "everything");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("everything")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert!(
        output.contains(&format!("npm package @modelcontextprotocol/server-everything {version}")),
        "{output}"
    );
    assert!(output.contains("pinned by the manifest"), "{output}");
    let token = d.token("everything");
    let mut c = Mcp::new(&d.endpoint("everything"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert!(c.call_text("echo", json!({"message": "hi"})).await.contains("hi"));
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_source_fastmcp_server() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "fast");
    write(&wt, "requirements.txt", "mcp==1.30.0\n");
    write(&wt, "server.py", include_str!("fixtures/fastmcp_server.py"));
    commit_all(&wt, "fastmcp");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("fast")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert!(output.contains("Python server built from the repository"), "{output}");
    assert!(output.contains("1 tool (shout)"), "{output}");
    let token = d.token("fast");
    let mut c = Mcp::new(&d.endpoint("fast"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert_eq!(c.call_text("shout", json!({"text": "hi"})).await, "HI");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_pushes_change_nothing() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "app");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("app")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    let live = wt.git(&["rev-parse", "HEAD"]);
    let token = d.token("app");
    assert_serves(&d, "app", &token, "v1").await;

    let other = age::x25519::Identity::generate().to_public().to_string();
    type Change = Box<dyn Fn(&WorkTree)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "shell metacharacters in a package name",
            Box::new(|wt| write(wt, "catwalk.toml", "[server]\npackage = \"npm:foo; rm -rf /\"\n")),
            "is not a valid npm name",
        ),
        (
            "path traversal in a package name",
            Box::new(|wt| write(wt, "catwalk.toml", "[server]\npackage = \"npm:../x\"\n")),
            "is not a valid npm name",
        ),
        (
            "a package that does not exist",
            Box::new(|wt| {
                write(wt, "catwalk.toml", "[server]\npackage = \"npm:catwalk-no-such-package-3f2a1c0e\"\n")
            }),
            "was not found",
        ),
        (
            "a denied env name",
            Box::new(|wt| {
                write(
                    wt,
                    "catwalk.toml",
                    &format!("{FIXTURE_TOML}[env.NODE_OPTIONS]\nvalue = \"--require /tmp/x.js\"\n"),
                )
            }),
            "NODE_OPTIONS",
        ),
        (
            "a missing required secret",
            Box::new(|wt| {
                write(
                    wt,
                    "catwalk.toml",
                    &format!("{FIXTURE_TOML}[env.API_TOKEN]\nrequired = true\nsecret = true\n"),
                )
            }),
            "API_TOKEN",
        ),
        (
            "secrets encrypted to another recipient",
            Box::new(move |wt| {
                std::fs::create_dir_all(wt.path.join(".catwalk")).unwrap();
                std::fs::write(wt.path.join(".catwalk/secrets.age"), age_encrypt(&other, "API_TOKEN=x\n"))
                    .unwrap();
            }),
            "is not encrypted to app app",
        ),
        (
            "a server that exits at start",
            Box::new(|wt| {
                write(
                    wt,
                    "boom.py",
                    "import sys\nsys.stderr.write('boom: missing config\\n')\nsys.exit(3)\n",
                );
                write(
                    wt,
                    "catwalk.toml",
                    "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"boom.py\"]\n",
                );
            }),
            "failed its health check",
        ),
        (
            "a repository catwalk cannot deploy",
            Box::new(|wt| {
                std::fs::remove_file(wt.path.join("catwalk.toml")).unwrap();
            }),
            "smallest catwalk.toml",
        ),
    ];
    for (what, change, expected) in cases {
        wt.git(&["reset", "-q", "--hard", &live]);
        change(&wt);
        commit_all(&wt, what);
        let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
        assert!(!pushed, "{what}: the push was accepted:\n{output}");
        assert!(output.contains(expected), "{what}: expected {expected:?} in:\n{output}");
        assert_eq!(d.server_ref("app", "main").as_deref(), Some(live.as_str()), "{what}: the ref moved");
        assert_serves(&d, "app", &token, what).await;
    }
    // The failing server's stderr was shown to the pusher.
    let rel = releases(&d, "app");
    assert_eq!(rel.iter().filter(|r| r["status"] == "live").count(), 1);
    assert_eq!(rel.iter().find(|r| r["status"] == "live").unwrap()["commit"], live);

    // A dry run validates and changes nothing.
    wt.git(&["reset", "-q", "--hard", &live]);
    write(&wt, "note.txt", "dry\n");
    commit_all(&wt, "dry run");
    let (pushed, output) = push(&wt, &d, &["-o", "dry-run", "catwalk", "main"]);
    assert!(!pushed && output.contains("dry run"), "{output}");
    assert_eq!(d.server_ref("app", "main").as_deref(), Some(live.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_gate_failure_prints_the_servers_stderr() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "boom");
    write(
        &wt,
        "boom.py",
        "import sys\nsys.stderr.write('boom: missing config file /etc/boom.conf\\n')\nsys.exit(3)\n",
    );
    write(&wt, "catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"boom.py\"]\n");
    commit_all(&wt, "boom");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("boom")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(!pushed);
    assert!(output.contains("boom: missing config file /etc/boom.conf"), "{output}");
    assert_eq!(d.server_ref("boom", "main"), None, "a first push that fails creates no branch");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_server_and_nowhere_else() {
    let d = Daemon::start();
    let canary = format!("catwalk-canary-{}", std::process::id() as u64 * 7919 + 1234567);
    ok(&d.ssh(&d.admin, "apps create secret", ""));
    let recipient = ok(&d.ssh(&d.admin, "secrets pubkey secret", "")).trim().to_string();
    let wt = WorkTree::new(d.tmp.path(), "secret");
    std::fs::create_dir_all(wt.path.join(".catwalk")).unwrap();
    std::fs::write(
        wt.path.join(".catwalk/secrets.age"),
        age_encrypt(&recipient, &format!("API_TOKEN={canary}\nOTHER='two words'\n")),
    )
    .unwrap();
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.API_TOKEN]\nrequired = true\nsecret = true\n"));
    commit_all(&wt, "secrets");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("secret")]);
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert!(output.contains("secrets: API_TOKEN, OTHER"), "{output}");
    let token = d.token("secret");
    let mut c = Mcp::new(&d.endpoint("secret"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    let env = c.call_text("env", json!({})).await;
    assert!(env.contains(&canary), "the server gets its secret");
    // Nowhere else: push output, daemon log, every file of the data dir, process command lines.
    assert!(!output.contains(&canary), "push output leaks the secret");
    assert!(!d.log_text().contains(&canary), "the daemon log leaks the secret");
    for entry in walk(&d.dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{} contains the secret",
            entry.display()
        );
    }
    let ps = String::from_utf8(Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout).unwrap();
    assert!(!ps.contains(&canary), "a command line contains the secret");
    let rel = ok(&d.ssh(&d.admin, "releases secret --json", ""));
    assert!(!rel.contains(&canary) && rel.contains("API_TOKEN"), "{rel}");
    // Changing one secret is reported as changed, the other as unchanged.
    std::fs::write(
        wt.path.join(".catwalk/secrets.age"),
        age_encrypt(&recipient, &format!("API_TOKEN={canary}-2\nOTHER='two words'\n")),
    )
    .unwrap();
    commit_all(&wt, "rotate");
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert!(output.contains("API_TOKEN (changed)") && output.contains("OTHER (unchanged)"), "{output}");
}

async fn flavour(d: &Daemon, token: &str) -> String {
    let mut c = Mcp::new(&d.endpoint("roll"), Some(token));
    assert_eq!(c.initialize().await.status, 200);
    let env: Value = serde_json::from_str(&c.call_text("env", json!({})).await).unwrap();
    c.close().await;
    env["FLAVOUR"].as_str().unwrap().to_string()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_symlink() {
                continue;
            }
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_none_or(|x| x != "sock") {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restart_and_async_pushes() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "roll");
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.FLAVOUR]\nvalue = \"one\"\n"));
    let v1 = commit_all(&wt, "one");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("roll")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.FLAVOUR]\nvalue = \"two\"\n"));
    let v2 = commit_all(&wt, "two");
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    let token = d.token("roll");
    assert_eq!(flavour(&d, &token).await, "two");
    let out = ok(&d.ssh(&d.admin, "rollback roll", ""));
    assert!(out.contains("rolling back roll to v1") && out.contains("v3 is live"), "{out}");
    assert_eq!(flavour(&d, &token).await, "one");
    assert_eq!(
        d.server_ref("roll", "main").as_deref(),
        Some(v1.as_str()),
        "the ref follows the live release"
    );
    let rel = releases(&d, "roll");
    assert_eq!(rel[0]["version"], 3);
    assert_eq!(rel[0]["rollback_of"], 1);
    // Roll forward again by number, through the local CLI this time.
    let out = d.local(&["rollback", "roll", "v2"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(flavour(&d, &token).await, "two");
    assert_eq!(d.server_ref("roll", "main").as_deref(), Some(v2.as_str()));
    let bad = d.ssh(&d.admin, "rollback roll v99", "");
    assert!(!bad.status.success() && stderr(&bad).contains("no release v99"));
    assert!(ok(&d.ssh(&d.admin, "restart roll", "")).contains("sessions ended"));
    assert_eq!(flavour(&d, &token).await, "two");

    // -o async returns once validated; the release goes live in the background.
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.FLAVOUR]\nvalue = \"three\"\n"));
    commit_all(&wt, "three");
    let (pushed, output) = push(&wt, &d, &["-o", "async", "catwalk", "main"]);
    assert!(pushed && output.contains("async"), "{output}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while flavour(&d, &token).await != "three" {
        assert!(Instant::now() < deadline, "the async release never went live");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = ok(&d.ssh(&d.admin, "logs roll -n 50", ""));
    assert!(logs.contains("is live"), "{logs}");
}

/// An `-o async` deploy keeps the app's lock until it ends (one lock map): a rollback issued meanwhile
/// waits, says whom it waits for, and runs once the release is live. The new release's server is held
/// at its health gate until the test opens it (a file in the app's home, which the sandbox shows it).
#[tokio::test(flavor = "multi_thread")]
async fn an_async_deploy_holds_the_app_until_it_is_live() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "held");
    write(&wt, "catwalk.toml", FIXTURE_TOML);
    let v1 = commit_all(&wt, "one");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("held")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    write(
        &wt,
        "gated.py",
        "import os, time\nwhile not os.path.exists(os.path.join(os.environ['HOME'], 'open')):\n    time.sleep(0.05)\nos.execvp('python', ['python', 'server.py'])\n",
    );
    write(&wt, "catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"gated.py\"]\n");
    commit_all(&wt, "gated");
    let (pushed, output) = push(&wt, &d, &["-o", "async", "catwalk", "main"]);
    assert!(pushed && output.contains("async"), "{output}");
    // The deploy runs on, waiting at its health gate; a rollback now queues behind it.
    let rollback = Command::new("ssh")
        .args(d.ssh_args(&d.admin))
        .arg("git@127.0.0.1")
        .arg("rollback held")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rollback = daemon::ChildGuard(Some(rollback));
    d.wait_log("held: rollback by admin queued behind admin's push of");
    std::fs::write(d.dir.join("apps/held/home/open"), "").unwrap();
    let out = rollback.wait();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("held: rollback by admin queued behind admin's push of"), "{text}");
    // The async release (v2) went live first, so the rollback went back to v1 as v3.
    assert!(text.contains("rolling back held to v1") && text.contains("v3 is live"), "{text}");
    let rel = releases(&d, "held");
    assert_eq!((rel[0]["version"].clone(), rel[0]["status"].clone()), (json!(3), json!("live")), "{rel:?}");
    assert_eq!(rel[1]["status"], "superseded", "v2 was live before the rollback: {rel:?}");
    assert_eq!(d.server_ref("held", "main").as_deref(), Some(v1.as_str()));
}

/// Pids of the app's warm spares, in the order the app log announced them.
fn spare_pids(d: &Daemon, app: &str) -> Vec<String> {
    let logs = ok(&d.ssh(&d.admin, &format!("logs {app} -n 500"), ""));
    logs.lines()
        .filter_map(|l| Some(l.split("process ").nth(1)?.strip_suffix(" is a warm spare")?.to_string()))
        .collect()
}

/// Warm spares follow the live release (issue #16): the push starts one for its release and stops the
/// previous release's; a new session then runs the new release's code on the spare started for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_replaces_the_warm_spares() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "roll");
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.FLAVOUR]\nvalue = \"one\"\n"));
    commit_all(&wt, "one");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("roll")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    let first = spare_pids(&d, "roll");
    assert_eq!(first.len(), 1, "the push leaves one warm spare: {first:?}");
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[env.FLAVOUR]\nvalue = \"two\"\n"));
    commit_all(&wt, "two");
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    let both = spare_pids(&d, "roll");
    assert_eq!(both.len(), 2, "{both:?}");
    let logs = ok(&d.ssh(&d.admin, "logs roll -n 500", ""));
    let stopped = format!("process {} stopped", first[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok(&d.ssh(&d.admin, "logs roll -n 500", "")).contains(&stopped) {
        assert!(Instant::now() < deadline, "v1's spare was not stopped:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(flavour(&d, &d.token("roll")).await, "two");
    // `[deploy] warm = 0` in the manifest turns them off: the next push stops v2's and starts none.
    write(
        &wt,
        "catwalk.toml",
        &format!("{FIXTURE_TOML}[deploy]\nwarm = 0\n[env.FLAVOUR]\nvalue = \"three\"\n"),
    );
    commit_all(&wt, "three");
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    assert_eq!(flavour(&d, &d.token("roll")).await, "three");
    // Every spare ever started is stopped by now or soon (taken ones with their sessions).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = ok(&d.ssh(&d.admin, "logs roll -n 500", ""));
        let pids = spare_pids(&d, "roll");
        if pids.iter().all(|p| logs.contains(&format!("process {p} stopped"))) {
            break;
        }
        assert!(Instant::now() < deadline, "warm = 0 left a spare running:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let too_many = format!("{FIXTURE_TOML}[deploy]\nwarm = 9\n");
    write(&wt, "catwalk.toml", &too_many);
    commit_all(&wt, "too warm");
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(!pushed && output.contains("deploy.warm = 9: at most 8 warm spares"), "{output}");
}

/// `[deploy] machines` is a Fly matter: refused out of range, and noted (then ignored) by a push that runs
/// on this host.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_machines_is_checked_and_noted_on_this_host() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "many");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("many")]);
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[deploy]\nmachines = 0\n"));
    commit_all(&wt, "no machines");
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(!pushed && output.contains("deploy.machines = 0: use 1 to 10"), "{output}");
    write(&wt, "catwalk.toml", &format!("{FIXTURE_TOML}[deploy]\nmachines = 3\n"));
    commit_all(&wt, "three machines");
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed && output.contains("note: deploy.machines = 3 applies on Fly"), "{output}");
    let mut c = Mcp::new(&d.endpoint("many"), Some(&d.token("many")));
    assert_eq!(c.initialize().await.status, 200);
    assert_eq!(c.call_text("echo", json!({"text": "one host"})).await, "one host");
}

/// A push proves its release on a private gateway beside the daemon's (the health gate); ending that
/// gateway stops its own probe process and nothing else: another app's open session keeps its process
/// (it used to be SIGKILLed with every other child of the daemon once the private gateway's grace ran out).
#[tokio::test(flavor = "multi_thread")]
async fn a_push_never_touches_another_apps_processes() {
    let d = Daemon::start();
    let alpha = WorkTree::new(d.tmp.path(), "alpha");
    commit_all(&alpha, "alpha");
    alpha.git(&["remote", "add", "catwalk", &d.remote_url("alpha")]);
    assert!(push(&alpha, &d, &["catwalk", "main"]).0);
    let mut session = Mcp::new(&d.endpoint("alpha"), Some(&d.token("alpha")));
    assert_eq!(session.initialize().await.status, 200);
    let before = session.call_text("pid", json!({})).await;
    let beta = WorkTree::new(d.tmp.path(), "beta");
    commit_all(&beta, "beta");
    beta.git(&["remote", "add", "catwalk", &d.remote_url("beta")]);
    assert!(push(&beta, &d, &["catwalk", "main"]).0);
    assert_eq!(session.call_text("pid", json!({})).await, before, "alpha's session kept its process");
    let logs = ok(&d.ssh(&d.admin, "logs alpha -n 500", ""));
    assert!(!logs.contains("exited on its own"), "beta's push killed alpha's processes:\n{logs}");
    session.close().await;
    // `info` says how 2026-07-28 clients reach the app, once the era was learnt (in the background: the
    // release has a warm spare).
    let translated = "2026-07-28: translated by catwalk (the server speaks only the handshake era)";
    assert!(eventually_in_info(&d, "alpha", translated), "{}", ok(&d.ssh(&d.admin, "info alpha", "")));
}

/// Polls `info APP` until it shows `needle` (at most 30 s).
fn eventually_in_info(d: &Daemon, app: &str, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ok(&d.ssh(&d.admin, &format!("info {app}"), "")).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Processes (other than this test) whose command line names `dir`: a sandbox's bwrap binds the app's
/// directories under the daemon's data dir, so a sandbox left running shows here.
fn processes_naming(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{pid}: {}", cmdline.chars().take(200).collect::<String>()));
        }
    }
    found
}

/// A daemon killed with SIGKILL (a crash, an OOM kill) takes its servers along, including one that
/// ignores the end of its input and would live on: each sandbox's supervisor dies with the daemon, and
/// bwrap (hence the server) with its supervisor. Run as root (a uid per app) and as an ordinary user
/// (user namespaces).
async fn a_killed_daemon_leaves_no_server_behind(unprivileged: bool) {
    let mut d = if unprivileged { Daemon::start_unprivileged("") } else { Daemon::start() };
    let wt = WorkTree::new(d.tmp.path(), "holder");
    // The fixture, but a process that outlives its session: once stdin ends it holds on.
    write(
        &wt,
        "holds.py",
        "import runpy, time\ntry:\n    runpy.run_path('server.py', run_name='__main__')\nfinally:\n    time.sleep(600)\n",
    );
    write(&wt, "catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"holds.py\"]\n");
    commit_all(&wt, "holds on");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("holder")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    // A session's process and a warm spare run in their sandboxes.
    let mut session = Mcp::new(&d.endpoint("holder"), Some(&d.token("holder")));
    assert_eq!(session.initialize().await.status, 200);
    assert_eq!(session.call_text("echo", json!({"text": "here"})).await, "here");
    let daemon = format!("{}: ", d.pid());
    let sandboxes: Vec<String> =
        processes_naming(d.tmp.path()).into_iter().filter(|p| !p.starts_with(&daemon)).collect();
    assert!(sandboxes.iter().any(|p| p.contains("bwrap")), "no sandbox found to begin with: {sandboxes:?}");
    d.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_naming(d.tmp.path());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sandboxes outlived the killed daemon:\n{}", left.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_root_daemon_leaves_no_server_behind() {
    a_killed_daemon_leaves_no_server_behind(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_unprivileged_daemon_leaves_no_server_behind() {
    a_killed_daemon_leaves_no_server_behind(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_deploy_then_restart() {
    let mut d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "crash");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("crash")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    let live = wt.git(&["rev-parse", "HEAD"]);
    let token = d.token("crash");
    // The next release's server takes forever to start: the daemon is killed during its health gate.
    write(&wt, "slow.py", "import time\ntime.sleep(600)\n");
    write(&wt, "catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"slow.py\"]\n");
    commit_all(&wt, "slow");
    let mut pusher = d.git(&d.admin, &wt.path).args(["push", "catwalk", "main"]).spawn().unwrap();
    // Wait until v2 is installed and in its health gate, then kill the daemon.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rel = releases(&d, "crash");
        if rel[0]["version"] == 2
            && rel[0]["timings_ms"].as_array().unwrap().iter().any(|t| t["step"] == "install")
        {
            break;
        }
        assert!(Instant::now() < deadline, "v2 never reached its health gate: {rel:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9_and_restart();
    let _ = pusher.wait();
    assert_eq!(
        d.server_ref("crash", "main").as_deref(),
        Some(live.as_str()),
        "the ref still names the live release"
    );
    let rel = releases(&d, "crash");
    assert_eq!(rel[0]["status"], "failed", "{rel:?}");
    assert!(rel[0]["error"].as_str().unwrap().contains("interrupted"));
    assert_eq!(rel[1]["status"], "live");
    assert_serves(&d, "crash", &token, "after the crash").await;
}

/// The systemd unit's setup: the daemon is an ordinary user, so servers are sandboxed in a user namespace.
/// A push deploys and the release answers through the gateway just as with a root daemon.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_daemon_deploys_and_serves() {
    let d = Daemon::start_unprivileged("");
    let wt = WorkTree::new(d.tmp.path(), "plain");
    let head = wt.git(&["rev-parse", "HEAD"]);
    let (pushed, output) = push(&wt, &d, &[&d.remote_url("plain"), "main"]);
    assert!(pushed, "{output}");
    assert!(output.contains("healthy in"), "{output}");
    assert!(!output.contains("WARNING: servers run without a sandbox"), "{output}");
    assert_eq!(d.server_ref("plain", "main").as_deref(), Some(head.as_str()));
    let token = d.token("plain");
    assert_serves(&d, "plain", &token, "as an ordinary user").await;
}

/// Stopping a sandboxed server asks it first: SIGTERM reaches the server itself (the sandbox's supervisor
/// ignores it only for itself), so it may exit cleanly and a stop does not wait out the grace period for a
/// SIGKILL. (An ignored signal stays ignored across exec: once every sandboxed server inherited it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_server_hears_sigterm_not_only_sigkill() {
    let d = Daemon::start();
    let wt = WorkTree::new(d.tmp.path(), "term");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("term")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    // A session's process and a warm spare, both stopped by a restart.
    let mut session = Mcp::new(&d.endpoint("term"), Some(&d.token("term")));
    assert_eq!(session.initialize().await.status, 200);
    ok(&d.ssh(&d.admin, "restart term", ""));
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let logs = ok(&d.ssh(&d.admin, "logs term -n 500", ""));
        let stopped: Vec<String> =
            logs.lines().filter(|l| l.contains(" stopped (")).map(str::to_string).collect();
        if stopped.len() >= 2 {
            break stopped;
        }
        assert!(Instant::now() < deadline, "the restart's processes never stopped:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in &stopped {
        assert!(!line.contains("SIGKILL"), "a server needed SIGKILL to stop: {line}\n{stopped:?}");
    }
}

/// The other side of the same boundary: a hostile server that ignores SIGTERM (now that it hears it) still
/// ends. Sandboxed, the sandbox ends it with itself (bwrap exits on SIGTERM and takes the server along,
/// `--die-with-parent`); unsandboxed (an app of the daemon's config), the gateway SIGKILLs its process group
/// once the grace period is over.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_sigterm_still_ends() {
    // Ignored signals survive exec: the fixture runs with SIGTERM ignored.
    let stubborn = "import os, signal, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nos.execv(sys.executable, [sys.executable] + sys.argv[1:])\n";
    // An app of the config gets no PATH to find its interpreter by: the wrapper runs the one it is given.
    let python = deps::run_with_timeout(
        "python3",
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]),
        Duration::from_secs(30),
    )
    .1;
    let exec_given = "import os, signal, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nos.execv(sys.argv[1], sys.argv[1:])\n";
    let fixture = format!("{}/tests/fixtures/stdio_fixture.py", env!("CARGO_MANIFEST_DIR"));
    let d = Daemon::start_with_config(&format!(
        "[apps.plain]\ncommand = [\"python3\", \"-c\", {exec_given:?}, {:?}, {fixture:?}]\n",
        python.trim()
    ));
    let wt = WorkTree::new(d.tmp.path(), "stubborn");
    write(&wt, "stubborn.py", stubborn);
    write(
        &wt,
        "catwalk.toml",
        "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"stubborn.py\", \"server.py\"]\n",
    );
    commit_all(&wt, "stubborn");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("stubborn")]);
    assert!(push(&wt, &d, &["catwalk", "main"]).0);
    let mut session_pid = String::new();
    for app in ["stubborn", "plain"] {
        let mut session = Mcp::new(&d.endpoint(app), Some(&d.token(app)));
        assert_eq!(session.initialize().await.status, 200, "{app}");
        // The session's process has answered, so it ignores SIGTERM by now. (The spare started to replace the
        // one the session took may still be starting up and die of SIGTERM before it got to ignore it.)
        session_pid = session.call_text("pid", json!({})).await;
        ok(&d.ssh(&d.admin, &format!("restart {app}"), ""));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (app, how) in [("stubborn", "exit status: 143"), ("plain", "SIGKILL")] {
        loop {
            let logs = ok(&d.ssh(&d.admin, &format!("logs {app} -n 500"), ""));
            let stopped: Vec<&str> = logs.lines().filter(|l| l.contains(" stopped (")).collect();
            if app == "plain" {
                // Unsandboxed, the logged pid is the server's own: its stop needed the SIGKILL.
                let own = format!("process {session_pid} stopped");
                if let Some(line) = stopped.iter().find(|l| l.contains(&own)) {
                    assert!(line.contains(how), "{app}: {line}\n{stopped:?}");
                    break;
                }
            } else if stopped.len() >= 2 {
                assert!(stopped.iter().all(|l| l.contains(how)), "{app}: {stopped:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{app}: a server that ignores SIGTERM was never stopped:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
