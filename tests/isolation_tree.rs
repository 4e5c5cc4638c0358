//! R7 (issue #12): nothing the daemon writes into a tree that a push or sandboxed code shaped ever
//! follows a link out of it.
//!
//! Hostile inputs, each through the real daemon (`catwalk serve`, real `git push` over ssh):
//! - crafted trees written byte by byte with git plumbing (`hash-object -t tree --literally`), which
//!   `git receive-pack` accepts without fsck and libgit2 parses: the symlink chain `0 -> .`,
//!   `z -> 0/0/…/../..` with an entry named `z/tmp/…/pwned`, `..` and `.git` entries, duplicate names, a
//!   link that leaves the tree used by a later entry of the same name, control characters in names;
//! - an npm package (served by a loopback registry written here) whose sandboxed `postinstall` plants
//!   a link where the daemon used to write its completion marker.
//! - a pushed server that plants links in its home, which the daemon (as root) hands to the app's uid
//!   before every later spawn: the links are chowned as links, their targets keep their owner.
//!
//! Each aims at a canary directory outside the data dir that the daemon's user could write (mode 0777),
//! so a write through a link would land there. Every refusal must name the entry, leave the canary
//! empty, keep the ref where it was and keep the previous release serving. Both daemon identities run:
//! root (servers under per-app uids) and an ordinary user (the systemd unit's setup).

use crate::daemon;
use crate::mcp;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use daemon::{Daemon, WorkTree, isolate_git, ok, stderr, stdout};
use mcp::Mcp;
use serde_json::json;

/// A raw tree entry: git mode (`100644`, `120000`, `40000`), name bytes, object id.
type Entry<'a> = (&'a str, &'a [u8], &'a str);

/// A directory outside the daemon's data dir that any uid may write: a link-following write lands here.
struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("catwalk-canary-").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        Canary { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    #[track_caller]
    fn assert_untouched(&self, what: &str) {
        let found: Vec<PathBuf> =
            std::fs::read_dir(self.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(found.is_empty(), "{what}: the daemon wrote outside its tree: {found:?}");
    }
}

/// Runs git in `wt` with binary `input`; returns trimmed stdout.
fn git_in(wt: &WorkTree, args: &[&str], input: &[u8]) -> String {
    let mut cmd = Command::new("git");
    cmd.current_dir(&wt.path).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    isolate_git(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    ok(&out).trim().to_string()
}

fn blob(wt: &WorkTree, content: &[u8]) -> String {
    git_in(wt, &["hash-object", "-w", "--stdin"], content)
}

/// A tree object with exactly these `(mode, name, object)` entries, written without any check (names
/// with `/`, `..`, duplicates ...), in git's order (a tree's name sorts as if it ended in `/`) so that
/// libgit2's lookups still find `catwalk.toml`.
fn tree(wt: &WorkTree, entries: &[(&str, &[u8], &str)]) -> String {
    let mut sorted: Vec<&(&str, &[u8], &str)> = entries.iter().collect();
    let key = |e: &(&str, &[u8], &str)| {
        let mut k = e.1.to_vec();
        if e.0 == "40000" {
            k.push(b'/');
        }
        k
    };
    sorted.sort_by_key(|e| key(e));
    let mut raw = Vec::new();
    for (mode, name, oid) in sorted {
        raw.extend_from_slice(mode.as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(name);
        raw.push(0);
        let bytes: Vec<u8> =
            (0..oid.len()).step_by(2).map(|i| u8::from_str_radix(&oid[i..i + 2], 16).unwrap()).collect();
        raw.extend_from_slice(&bytes);
    }
    git_in(wt, &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"], &raw)
}

/// A link target that climbs back to `/` through `0 -> .` however deep the export is, while looking
/// lexically as if it stayed inside the tree (every `..` is matched by a `0`).
fn chain_to_root() -> String {
    format!("{}{}", "0/".repeat(24), "../".repeat(24))
}

/// An app `tree` deployed from the fixture work tree, with a token; and what a crafted push builds on.
struct Victim {
    wt: WorkTree,
    live: String,
    token: String,
    /// The deployable entries of the live tree: catwalk.toml and server.py.
    base: Vec<(&'static str, Vec<u8>, String)>,
}

impl Victim {
    fn deploy(d: &Daemon) -> Victim {
        let wt = WorkTree::new(d.tmp.path(), "tree");
        wt.git(&["remote", "add", "catwalk", &d.remote_url("tree")]);
        let out = wt.push(d, &d.admin, &["catwalk", "main"]);
        assert!(out.status.success(), "the app did not deploy: {}", stderr(&out));
        let live = wt.git(&["rev-parse", "HEAD"]);
        let base = ["catwalk.toml", "server.py"]
            .iter()
            .map(|f| ("100644", f.as_bytes().to_vec(), wt.git(&["rev-parse", &format!("HEAD:{f}")])))
            .collect();
        Victim { token: d.token("tree"), wt, live, base }
    }

    /// Commits a root tree of the deployable entries plus `extra`, and pushes it to main.
    fn push_tree(&self, d: &Daemon, what: &str, extra: &[(&str, &[u8], &str)]) -> (bool, String) {
        let mut entries: Vec<(&str, &[u8], &str)> =
            self.base.iter().map(|(m, n, o)| (*m, n.as_slice(), o.as_str())).collect();
        entries.extend_from_slice(extra);
        let root = tree(&self.wt, &entries);
        let commit = self.wt.git(&["commit-tree", &root, "-p", &self.live, "-m", what]);
        let out = self.wt.push(d, &d.admin, &["catwalk", &format!("{commit}:refs/heads/main")]);
        (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
    }

    /// The refused push changed nothing: the ref, the live release, and its answers.
    async fn assert_unchanged(&self, d: &Daemon, what: &str) {
        assert_eq!(
            d.server_ref("tree", "main").as_deref(),
            Some(self.live.as_str()),
            "{what}: the ref moved"
        );
        let mut c = Mcp::new(&d.endpoint("tree"), Some(&self.token));
        let init = c.initialize().await;
        assert_eq!(init.status, 200, "{what}: the live release no longer answers: {}", init.body);
        assert_eq!(c.call_text("echo", json!({"text": what})).await, what, "{what}: echo");
        c.close().await;
    }
}

async fn crafted_trees_are_refused(d: &Daemon) {
    let canary = Canary::new();
    let v = Victim::deploy(d);
    let wt = &v.wt;
    let hostile = blob(wt, b"#!/bin/sh\necho pwned\n");
    let dot = blob(wt, b".");
    let to_root = blob(wt, chain_to_root().as_bytes());
    let canary_rel = canary.path().strip_prefix("/").unwrap().display().to_string();
    let to_canary = blob(wt, format!("{}{canary_rel}", chain_to_root()).as_bytes());
    let to_canary_absolute = blob(wt, canary.path().display().to_string().as_bytes());
    let pwned_tree = tree(wt, &[("100644", b"pwned", &hostile)]);
    let git_config = tree(wt, &[("100644", b"config", &blob(wt, b"[core]\n\tfsmonitor = touch /tmp/x\n"))]);
    // The chain: `z` resolves to `/` through `0 -> .`, and an entry named `z/<canary>/pwned`.
    let through_z = format!("z{}/pwned", canary.path().display());
    let through_lib = format!("lib/{}", "pwned");
    let duplicates = tree(wt, &[("100644", b"a", &hostile), ("100644", b"a", &hostile)]);

    // (what, extra root entries, fragment of the refusal the pusher must see)
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Entry>, String)> = vec![
        ("the symlink chain with a slash-named entry",
            vec![("120000", b"0", &dot), ("120000", b"z", &to_root), ("100644", through_z.as_bytes(), &hostile)],
            format!("tree entry \"{through_z}\" contains '/'")),
        ("a link out of the tree used by a later entry of the same name",
            vec![("120000", b"0", &dot), ("120000", b"lib", &to_canary), ("40000", b"lib", &pwned_tree)],
            "tree (root) lists the entry \"lib\" twice".into()),
        ("an absolute link used through a slash-named entry",
            vec![("120000", b"lib", &to_canary_absolute), ("100644", through_lib.as_bytes(), &hostile)],
            "tree entry \"lib/pwned\" contains '/'".into()),
        ("an absolute link on its own",
            vec![("120000", b"lib", &to_canary_absolute)],
            format!("symlink lib -> {} that points outside the repository", canary.path().display())),
        ("a .. entry", vec![("40000", b"..", &pwned_tree)], "tree entry \"..\" is a relative directory name".into()),
        ("a . entry", vec![("100644", b".", &hostile)], "tree entry \".\" is a relative directory name".into()),
        ("a .git directory", vec![("40000", b".git", &git_config)], "tree entry \".git\" is .git".into()),
        ("a .GIT directory", vec![("40000", b".GIT", &git_config)], "tree entry \".GIT\" is .git".into()),
        ("server.py twice", vec![("100644", b"server.py", &hostile)], "lists the entry \"server.py\" twice".into()),
        ("a duplicate in a subdirectory",
            vec![("40000", b"pkg", &duplicates)],
            "tree pkg lists the entry \"a\" twice".into()),
        ("escape sequences in a slash-named entry",
            vec![("100644", b"\x1b]0;owned\x07/x", &hostile)],
            "tree entry \"\\x1b]0;owned\\x07/x\" contains '/'".into()),
    ];
    for (what, extra, expected) in cases {
        let (pushed, output) = v.push_tree(d, what, &extra);
        assert!(!pushed, "{what}: the push was accepted:\n{output}");
        assert!(output.contains(&expected), "{what}: expected {expected:?} in:\n{output}");
        assert!(
            !output.contains('\x1b'),
            "{what}: an escape sequence reached the pusher's terminal:\n{output}"
        );
        canary.assert_untouched(what);
        v.assert_unchanged(d, what).await;
    }

    // A link chain alone is only a link: the release deploys, the link is recreated as a link (never
    // followed by the export), and nothing outside the tree changes.
    let (pushed, output) = v.push_tree(
        d,
        "a harmless link chain",
        &[("120000", b"0", &dot), ("120000", b"z", &to_root), ("120000", b"lib", &to_canary)],
    );
    assert!(pushed, "a tree whose links are only links must deploy:\n{output}");
    canary.assert_untouched("a harmless link chain");
    let releases: Vec<PathBuf> =
        std::fs::read_dir(d.dir.join("apps/tree/releases")).unwrap().map(|e| e.unwrap().path()).collect();
    let links: Vec<PathBuf> = releases.iter().map(|r| r.join("src/lib")).filter(|l| l.is_symlink()).collect();
    assert_eq!(links.len(), 1, "the deployed release keeps its link as a link: {releases:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_trees_are_refused_by_a_root_daemon() {
    crafted_trees_are_refused(&Daemon::start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_trees_are_refused_by_an_unprivileged_daemon() {
    crafted_trees_are_refused(&Daemon::start_unprivileged("")).await;
}

/// A minimal npm registry on loopback serving one package, `evil-mcp` 1.0.0: the stdio fixture as its
/// bin, and a `postinstall` script (run by npm inside the install sandbox) that plants links in the
/// install directory: where catwalk used to write `.catwalk-complete`, aimed at the canary.
struct FakeNpmRegistry {
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeNpmRegistry {
    fn start(canary: &Path) -> FakeNpmRegistry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script = format!(
            "ln -s {c}/marker ../../.catwalk-complete && ln -s {c} ../../planted-dir",
            c = canary.display()
        );
        let manifest = json!({
            "name": "evil-mcp", "version": "1.0.0", "bin": {"evil-mcp": "server.py"},
            "scripts": {"postinstall": script},
        });
        let fixture =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stdio_fixture.py"))
                .unwrap();
        let tarball = npm_tarball(&[
            ("package/package.json", manifest.to_string().into_bytes(), 0o644),
            ("package/server.py", fixture, 0o755),
        ]);
        let integrity = {
            use base64::Engine;
            use sha2::Digest;
            format!(
                "sha512-{}",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tarball))
            )
        };
        let mut version = manifest.clone();
        version["dist"] =
            json!({"tarball": format!("{url}/evil-mcp/-/evil-mcp-1.0.0.tgz"), "integrity": integrity});
        let packument = json!({
            "name": "evil-mcp", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version},
        })
        .to_string()
        .into_bytes();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request).lines().next().unwrap_or("").to_string();
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, kind, body) = match path {
                    "/evil-mcp" => ("200 OK", "application/json", packument.as_slice()),
                    "/evil-mcp/-/evil-mcp-1.0.0.tgz" => {
                        ("200 OK", "application/octet-stream", tarball.as_slice())
                    }
                    _ => ("404 Not Found", "application/json", &b"{\"error\":\"not found\"}"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
            }
        });
        FakeNpmRegistry { url, stop }
    }
}

impl Drop for FakeNpmRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// An npm package tarball (`.tgz`) of `(path, content, mode)` files.
fn npm_tarball(files: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        tar.append_data(&mut header, path, content.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

async fn an_install_cannot_aim_the_daemons_marker(d: &Daemon, registry: &FakeNpmRegistry, canary: &Canary) {
    let wt = WorkTree::new(d.tmp.path(), "evil");
    wt.commit("catwalk.toml", "[server]\npackage = \"npm:evil-mcp\"\n\n[deploy]\ninstall_scripts = true\n");
    wt.git(&["remote", "add", "catwalk", &d.remote_url("evil")]);
    let out = wt.push(d, &d.admin, &["catwalk", "main"]);
    let output = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "the package from {} did not deploy:\n{output}", registry.url);
    // The postinstall script ran (its links are in the install directory) ...
    let installs: Vec<PathBuf> = std::fs::read_dir(d.dir.join("installs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.join("node_modules/evil-mcp").exists())
        .collect();
    assert_eq!(installs.len(), 1, "{installs:?}");
    let planted = installs[0].join(".catwalk-complete");
    assert!(std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink(), "the script did not run");
    // ... and the daemon marked the install complete beside it, not through the planted link.
    canary.assert_untouched("an install that planted .catwalk-complete");
    let key = installs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(d.dir.join("installs").join(format!("{key}.complete")).is_file());
    // A second push re-uses the install (the marker is the daemon's) and still touches nothing outside.
    wt.commit("README", "again\n");
    let out = wt.push(d, &d.admin, &["catwalk", "main"]);
    let output = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success() && output.contains("re-used an identical install"), "{output}");
    canary.assert_untouched("re-using the install");
    let token = d.token("evil");
    let mut c = Mcp::new(&d.endpoint("evil"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert_eq!(c.call_text("echo", json!({"text": "still fine"})).await, "still fine");
    c.close().await;
}

fn registry_config(registry: &FakeNpmRegistry) -> String {
    format!("[deploy]\nnpm_registry = \"{}\"\n", registry.url)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_cannot_aim_a_root_daemons_marker() {
    let canary = Canary::new();
    let registry = FakeNpmRegistry::start(canary.path());
    let d = Daemon::start_with_config(&registry_config(&registry));
    an_install_cannot_aim_the_daemons_marker(&d, &registry, &canary).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_cannot_aim_an_unprivileged_daemons_marker() {
    let canary = Canary::new();
    let registry = FakeNpmRegistry::start(canary.path());
    let d = Daemon::start_unprivileged(&registry_config(&registry));
    an_install_cannot_aim_the_daemons_marker(&d, &registry, &canary).await;
}

/// A server that plants links in its own home (to a file and a directory outside it) and a nested
/// directory, then serves like the stdio fixture. Every later spawn of the app hands the home to the
/// app's uid (daemon as root): that walk must chown the links themselves, never what they point at.
#[tokio::test(flavor = "multi_thread")]
async fn handing_a_home_to_the_apps_uid_never_follows_its_links() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let canary = Canary::new();
    let target_file = canary.path().join("owned-by-root");
    std::fs::write(&target_file, "x").unwrap();
    let target_dir = canary.path().join("dir-owned-by-root");
    std::fs::create_dir(&target_dir).unwrap();
    let wt = WorkTree::new(d.tmp.path(), "planter");
    let prelude = format!(
        "import os\nhome = os.environ['HOME']\nos.makedirs(os.path.join(home, 'd/e'), exist_ok=True)\n\
         for name, target in (('file-link', {f:?}), ('d/e/dir-link', {t:?})):\n    \
         p = os.path.join(home, name)\n    try:\n        os.symlink(target, p)\n    except FileExistsError:\n        pass\n",
        f = target_file.display().to_string(),
        t = target_dir.display().to_string(),
    );
    let fixture = std::fs::read_to_string(wt.path.join("server.py")).unwrap();
    let (shebang, rest) = fixture.split_once('\n').unwrap();
    wt.commit("server.py", &format!("{shebang}\n{prelude}{rest}"));
    wt.git(&["remote", "add", "catwalk", &d.remote_url("planter")]);
    let out = wt.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let home = d.dir.join("apps/planter/home");
    assert!(home.join("file-link").is_symlink(), "the health check's server planted its links");
    // A new session spawns a new server: the daemon chowns the home first.
    let token = d.token("planter");
    let mut c = Mcp::new(&d.endpoint("planter"), Some(&token));
    assert_eq!(c.initialize().await.status, 200);
    assert_eq!(c.call_text("echo", json!({"text": "planted"})).await, "planted");
    c.close().await;
    let app_uid = std::fs::metadata(&home).unwrap().uid();
    assert_ne!(app_uid, 0, "the home belongs to the app's uid");
    for link in ["file-link", "d/e/dir-link"] {
        assert_eq!(std::fs::symlink_metadata(home.join(link)).unwrap().uid(), app_uid, "{link} was walked");
    }
    for outside in [&target_file, &target_dir] {
        assert_eq!(std::fs::metadata(outside).unwrap().uid(), 0, "{} changed owner", outside.display());
    }
}
