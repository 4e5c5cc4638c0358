//! Installing a release's code into a directory, once per distinct input.
//!
//! Registry packages install into `DIR/installs/<key>/` where `key` digests everything that determines
//! the result (registry, name, exact version, lifecycle-script policy, runtime binary). A second release
//! of the same pinned package re-uses the finished install instead of reinstalling: that is what makes a
//! re-push or a rollback take milliseconds instead of a registry round trip (QUALITY.md P5).
//! Installs run with a clean environment and argv vectors built only from validated, pinned values.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::BufReader;
use tokio::process::Command;

use crate::output::Progress;
use crate::plan::{Entry, Language, Plan, Registry, Source};
use crate::runtime::sandbox::{self, AppSandbox, SandboxPolicy};

/// The language toolchains, resolved to absolute paths once at start-up.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub node: PathBuf,
    pub npm: PathBuf,
    pub python: PathBuf,
    /// Shared download caches so that per-app installs do not refetch the same tarballs.
    pub cache_dir: PathBuf,
    pub install_timeout: Duration,
    /// Registry mirrors for installs (`npm_config_registry`, `PIP_INDEX_URL`), set from `[deploy]`
    /// when it names a non-default registry.
    pub registry_env: Vec<(String, String)>,
    /// How servers and install commands are isolated (activated; see `runtime::sandbox`).
    pub sandbox: std::sync::Arc<SandboxPolicy>,
}

impl Toolchain {
    /// Finds `node`, `npm` and the real `python3` (through pyenv-style shims) on PATH.
    pub fn detect(cache_dir: PathBuf) -> Toolchain {
        let which = |name: &str| {
            std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
                .unwrap_or_else(|| PathBuf::from(name))
        };
        let python_shim = which("python3");
        let python = std::process::Command::new(&python_shim)
            .args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_absolute())
            .unwrap_or(python_shim);
        let mut tools = Toolchain {
            node: which("node"),
            npm: which("npm"),
            python,
            cache_dir,
            install_timeout: Duration::from_secs(600),
            registry_env: Vec::new(),
            sandbox: Default::default(),
        };
        // The default policy never refuses (standard mode); the daemon replaces it with the configured
        // one through `set_sandbox`.
        let _ = tools.set_sandbox(SandboxPolicy::default());
        tools
    }

    /// Probes (runs one trial sandbox, tens of milliseconds, blocking) and installs `policy` plus this
    /// toolchain's directories. `Err` only in strict mode when the sandbox is unavailable: the daemon must
    /// refuse to start with that message.
    pub fn set_sandbox(&mut self, policy: SandboxPolicy) -> Result<(), String> {
        let policy = policy.with_toolchain(&[self.node.as_path(), self.npm.as_path(), self.python.as_path()]);
        self.sandbox = std::sync::Arc::new(policy.activate()?);
        Ok(())
    }

    /// The minimal PATH children get: the toolchains' directories and the system's.
    pub fn path_env(&self) -> String {
        let mut dirs: Vec<String> = Vec::new();
        for bin in [&self.node, &self.python] {
            if let Some(dir) = bin.parent().and_then(|d| d.to_str())
                && !dir.is_empty()
                && !dirs.iter().any(|d| d == dir)
            {
                dirs.push(dir.to_string());
            }
        }
        for sys in ["/usr/local/bin", "/usr/bin", "/bin"] {
            if !dirs.iter().any(|d| d == sys) {
                dirs.push(sys.to_string());
            }
        }
        dirs.join(":")
    }
}

/// Proxy, CA and mirror settings of the host. They are the operator's (a pushed manifest can never set
/// them: see `validate::env_name`), and installs and servers need them to reach registries and APIs
/// through the host's network.
pub const HOST_NETWORK_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "PIP_CERT",
    "PIP_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_DEFAULT_TIMEOUT",
    "npm_config_registry",
    "npm_config_cafile",
];

/// The host's values of [`HOST_NETWORK_ENV`].
pub fn host_network_env() -> Vec<(&'static str, std::ffi::OsString)> {
    HOST_NETWORK_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (*k, v))).collect()
}

/// A finished install: where it is and the argv that starts the server (before the plan's args).
#[derive(Debug, Clone)]
pub struct Installed {
    pub dir: PathBuf,
    pub command: Vec<String>,
    /// True when an earlier identical install was re-used.
    pub reused: bool,
}

/// Keeps the last 20 lines `reader` writes in `tail`. A step's output is untrusted: one endless line must
/// not grow the daemon's memory, so a line is kept up to [`MAX_OUTPUT_LINE`] bytes and a longer one is
/// replaced by a notice.
async fn collect_tail(
    reader: impl tokio::io::AsyncRead + Unpin,
    tail: &std::sync::Mutex<std::collections::VecDeque<String>>,
) {
    use crate::gateway::BoundedLine;
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line = match crate::gateway::read_line_bounded(&mut reader, &mut buf, MAX_OUTPUT_LINE).await {
            BoundedLine::Eof => break,
            BoundedLine::TooLong => format!("(a line longer than {MAX_OUTPUT_LINE} bytes was dropped)"),
            BoundedLine::Complete => String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string(),
        };
        let mut t = tail.lock().expect("tail lock");
        if t.len() == 20 {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// Longest line of an install step's output that is kept (the last 20 lines are shown to the pusher).
const MAX_OUTPUT_LINE: usize = 4096;

/// Ports of registry mirrors on the host's loopback (`http://127.0.0.1:4873`): an install runs in a
/// network namespace of its own, where the host's loopback is out of reach except for exactly these.
fn loopback_registry_ports(registry_env: &[(String, String)]) -> Vec<u16> {
    let mut ports: Vec<u16> = registry_env
        .iter()
        .filter_map(|(_, url)| reqwest::Url::parse(url).ok())
        .filter(|u| matches!(u.host_str(), Some("127.0.0.1" | "localhost")))
        .filter_map(|u| u.port_or_known_default())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Installs a registry package plan (version already pinned) under `installs_dir`.
pub async fn install_package(
    tools: &Toolchain,
    installs_dir: &Path,
    plan: &Plan,
    progress: &Progress,
) -> Result<Installed, String> {
    let Source::Package { registry, name, version: Some(version) } = &plan.source else {
        return Err("internal: install_package needs a pinned registry package".into());
    };
    let mut key = Sha256::new();
    for part in [registry.label(), name, version, if plan.install_scripts { "scripts" } else { "no-scripts" }]
    {
        key.update(part.as_bytes());
        key.update([0]);
    }
    key.update(tools.python.to_string_lossy().as_bytes());
    let key = &hex::encode(key.finalize())[..24];
    let dir = installs_dir.join(key);
    let marker = completion_marker(installs_dir, key);
    let reused = marker.exists();
    if !reused {
        fresh_install_dir(installs_dir, key).await?;
        match registry {
            Registry::Npm => npm_install(tools, &dir, name, version, plan.install_scripts, progress).await?,
            Registry::Pypi => pip_install(tools, &dir, &format!("{name}=={version}"), progress).await?,
        }
    }
    let command = match (registry, &plan.entry) {
        (Registry::Npm, Entry::PackageBin { bin }) => vec![npm_bin(&dir, name, bin.as_deref())?],
        (Registry::Pypi, Entry::PackageBin { bin }) => vec![python_script(&dir, name, bin.as_deref())?],
        (Registry::Pypi, Entry::PythonModule { module }) => {
            vec![dir.join("venv/bin/python").to_string_lossy().into_owned(), "-m".into(), module.clone()]
        }
        (_, entry) => return Err(format!("internal: entry {entry:?} does not apply to a registry package")),
    };
    if !reused {
        // `installs/` itself is the daemon's: no sandbox ever sees it, so this path is not shaped by
        // the install that just ran (see [`completion_marker`]).
        tokio::fs::write(&marker, b"").await.map_err(|e| format!("marking the install complete: {e}"))?;
    }
    Ok(Installed { dir, command, reused })
}

/// Where the "this install finished" marker of install `key` lives: `installs/<key>.complete`, a
/// sibling of the install directory `installs/<key>/`.
///
/// Not inside it: the install directory is the sandboxed install's home, so anything at a path in it
/// may be a link the package planted (`.catwalk-complete -> /etc/shadow` would have the daemon
/// truncate that file as root). The sandbox is given `installs/<key>/` alone, never `installs/`.
/// Markers of older catwalk versions inside install directories are ignored: such an install is
/// redone once.
fn completion_marker(installs_dir: &Path, key: &str) -> PathBuf {
    installs_dir.join(format!("{key}.complete"))
}

/// Makes `installs/<key>/` a new, empty directory made by the daemon.
///
/// A half-finished directory from an interrupted install is discarded, never trusted; if it cannot be
/// removed completely the install fails instead of re-using what a package left there. std's
/// `remove_dir_all` walks with `openat`/`O_NOFOLLOW`, so links the package planted are removed, not
/// followed. `create_dir` (not `create_dir_all`) fails if anything is still at that name.
async fn fresh_install_dir(installs_dir: &Path, key: &str) -> Result<(), String> {
    let dir = installs_dir.join(key);
    tokio::fs::create_dir_all(installs_dir)
        .await
        .map_err(|e| format!("creating {}: {e}", installs_dir.display()))?;
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the unfinished install {}: {e}", dir.display())),
    }
    tokio::fs::create_dir(&dir).await.map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// The install directory `dir` as a capability: reads through it resolve only beneath it, so a link a
/// package planted (`node_modules/x/package.json -> /etc/shadow`) cannot make the daemon read a host
/// file.
fn open_confined(dir: &Path) -> Result<cap_std::fs::Dir, String> {
    cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
        .map_err(|e| format!("opening {}: {e}", dir.display()))
}

/// The largest manifest the daemon reads from an install directory.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Reads the regular file `rel` beneath `dir` without following a link out of it, without blocking on
/// a FIFO or device node, and at most [`MAX_MANIFEST_BYTES`].
fn read_confined(dir: &cap_std::fs::Dir, rel: &Path) -> std::io::Result<Vec<u8>> {
    use cap_fs_ext::OpenOptionsSyncExt;
    use std::io::Read;
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).nonblock(true);
    let file = dir.open_with(rel, &options)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::other(format!("larger than {} KiB", MAX_MANIFEST_BYTES >> 10)));
    }
    Ok(bytes)
}

/// Installs a repository source checked out at `src` (its own lockfile / requirements).
pub async fn install_repository(
    tools: &Toolchain,
    src: &Path,
    plan: &Plan,
    progress: &Progress,
) -> Result<Installed, String> {
    // The pushed tree (and, after the first step, what the sandboxed build wrote) is the pusher's:
    // the daemon looks at it only through a handle confined to `src`.
    let tree = open_confined(src)?;
    match plan.language {
        Language::Node => {
            if tree.exists("package.json") {
                let mut args: Vec<String> = vec![
                    if tree.exists("package-lock.json") { "ci" } else { "install" }.into(),
                    "--no-audit".into(),
                    "--no-fund".into(),
                ];
                if !plan.install_scripts {
                    args.push("--ignore-scripts".into());
                }
                run(tools, src, &tools.npm, &args, progress).await?;
            }
        }
        // A script with no requirements runs on the host's Python: no venv to build.
        Language::Python if !tree.exists("requirements.txt") && !tree.exists("pyproject.toml") => {}
        Language::Python => {
            run(tools, src, &tools.python, &["-m".into(), "venv".into(), "venv".into()], progress).await?;
            let pip = src.join("venv/bin/pip");
            let base: Vec<String> =
                vec!["install".into(), "--no-input".into(), "--disable-pip-version-check".into()];
            if tree.exists("requirements.txt") {
                let mut args = base.clone();
                args.extend(["-r".into(), "requirements.txt".into()]);
                run(tools, src, &pip, &args, progress).await?;
            }
            if tree.exists("pyproject.toml") {
                let mut args = base;
                args.push(".".into());
                run(tools, src, &pip, &args, progress).await?;
            }
        }
    }
    let command = match &plan.entry {
        Entry::Command { argv } => {
            let mut argv = argv.clone();
            match argv[0].as_str() {
                "node" => argv[0] = tools.node.to_string_lossy().into_owned(),
                "python" | "python3" => {
                    let venv = src.join("venv/bin/python");
                    // A venv's python is a link to the host interpreter (valid inside the sandbox):
                    // whether the name exists is all the daemon asks, the link is never followed.
                    let has_venv = tree.symlink_metadata("venv/bin/python").is_ok();
                    argv[0] =
                        if has_venv { venv } else { tools.python.clone() }.to_string_lossy().into_owned();
                }
                rel => argv[0] = src.join(rel).to_string_lossy().into_owned(),
            }
            argv
        }
        Entry::PackageBin { bin: Some(bin) } if plan.language == Language::Python => {
            vec![src.join("venv/bin").join(bin).to_string_lossy().into_owned()]
        }
        other => {
            return Err(format!("a repository source cannot run {other:?}; set `command` in catwalk.toml"));
        }
    };
    Ok(Installed { dir: src.to_path_buf(), command, reused: false })
}

async fn npm_install(
    tools: &Toolchain,
    dir: &Path,
    name: &str,
    version: &str,
    scripts: bool,
    progress: &Progress,
) -> Result<(), String> {
    // A package.json of our own makes `--prefix DIR` install into DIR, not into a parent project.
    // `dir` was just created empty by the daemon; `create_new` still refuses any name already there.
    let manifest = dir.join("package.json");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&manifest)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"private\":true}\n"))
        .map_err(|e| format!("writing {}: {e}", manifest.display()))?;
    let mut args: Vec<String> = vec![
        "install".into(),
        "--prefix".into(),
        dir.to_string_lossy().into_owned(),
        "--no-audit".into(),
        "--no-fund".into(),
        "--omit=dev".into(),
        "--save-exact".into(),
    ];
    if !scripts {
        args.push("--ignore-scripts".into());
    }
    args.push(format!("{name}@{version}"));
    run(tools, dir, &tools.npm, &args, progress).await
}

async fn pip_install(
    tools: &Toolchain,
    dir: &Path,
    requirement: &str,
    progress: &Progress,
) -> Result<(), String> {
    run(tools, dir, &tools.python, &["-m".into(), "venv".into(), "venv".into()], progress).await?;
    let args: Vec<String> = vec![
        "install".into(),
        "--no-input".into(),
        "--disable-pip-version-check".into(),
        "--only-binary=:all:".into(),
        requirement.into(),
    ];
    // Wheels only: building an sdist would run the package's setup.py inside the daemon's install step.
    let result = run(tools, dir, &dir.join("venv/bin/pip"), &args, progress).await;
    if result.is_err() {
        // Some packages ship only sdists; retry allowing them (isolated build, still no shell).
        let mut args = args;
        args.retain(|a| a != "--only-binary=:all:");
        return run(tools, dir, &dir.join("venv/bin/pip"), &args, progress).await;
    }
    result
}

/// The executable of an installed npm package: the named bin, the only bin, or the one named like the package.
fn npm_bin(dir: &Path, name: &str, bin: Option<&str>) -> Result<String, String> {
    // The installed tree is the package's: read it only through a handle confined to `dir`.
    let rel = Path::new("node_modules").join(name).join("package.json");
    let pkg_json = dir.join(&rel);
    let bytes = read_confined(&open_confined(dir)?, &rel)
        .map_err(|e| format!("reading {}: {e}", pkg_json.display()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", pkg_json.display()))?;
    let short = name.rsplit('/').next().unwrap_or(name);
    let bins: Vec<(String, String)> = match json.get("bin") {
        Some(serde_json::Value::String(p)) => vec![(short.to_string(), p.clone())],
        Some(serde_json::Value::Object(m)) => {
            m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
        }
        _ => Vec::new(),
    };
    let chosen = match bin {
        Some(b) => bins.iter().find(|(k, _)| k == b).ok_or(format!(
            "npm package {name} has no executable {b:?} (it has: {})",
            bins.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
        ))?,
        None if bins.len() == 1 => &bins[0],
        None => bins.iter().find(|(k, _)| k == short).ok_or(if bins.is_empty() {
            format!("npm package {name} has no executable (no \"bin\" in its package.json)")
        } else {
            format!(
                "npm package {name} has several executables ({}); choose one with `bin = \"...\"` in catwalk.toml",
                bins.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?,
    };
    let path = dir.join("node_modules").join(name).join(&chosen.1);
    Ok(path.to_string_lossy().into_owned())
}

/// The console script of an installed Python package.
fn python_script(dir: &Path, name: &str, bin: Option<&str>) -> Result<String, String> {
    let bin_dir = dir.join("venv/bin");
    let confined = open_confined(dir)?;
    let normal = crate::names::pypi_normalise(name);
    let candidates: Vec<String> = match bin {
        Some(b) => vec![b.to_string()],
        None => vec![normal.clone(), name.to_string(), normal.replace('-', "_")],
    };
    candidates
        .iter()
        .find(|c| confined.is_file(Path::new("venv/bin").join(c)))
        .map(|c| bin_dir.join(c).to_string_lossy().into_owned())
        .ok_or(format!(
            "PyPI package {name} installed no console script named {}; set `bin` or `module` in catwalk.toml",
            candidates.join(" or ")
        ))
}

/// Runs one install command with a clean environment, streaming its last lines as progress.
async fn run(
    tools: &Toolchain,
    cwd: &Path,
    program: &Path,
    args: &[String],
    progress: &Progress,
) -> Result<(), String> {
    // Installs run sandboxed too (npm/pip run package code: install scripts, sdist builds): network on,
    // writable: only the install directory and the download cache.
    let mut argv = vec![program.to_string_lossy().into_owned()];
    argv.extend(args.iter().cloned());
    // The operator's CA bundles and local wheel/mirror directories named in the host's env stay visible.
    let readonly = host_network_env()
        .into_iter()
        .map(|(_, v)| PathBuf::from(v))
        .filter(|p| p.is_absolute() && p.exists())
        .collect();
    let sb = AppSandbox {
        identity: "install".into(),
        home: cwd.to_path_buf(),
        writable: vec![tools.cache_dir.clone()],
        readonly,
        cwd: cwd.to_path_buf(),
        reach: loopback_registry_ports(&tools.registry_env),
        ..Default::default()
    };
    let argv = sandbox::wrap(&tools.sandbox, &sb, &argv)?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", tools.path_env())
        .env("HOME", cwd)
        .env("LANG", "C.UTF-8")
        .env("npm_config_cache", tools.cache_dir.join("npm"))
        .env("npm_config_update_notifier", "false")
        .env("PIP_CACHE_DIR", tools.cache_dir.join("pip"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::process_group::own_session(&mut cmd);
    for (key, value) in host_network_env() {
        cmd.env(key, value);
    }
    for (key, value) in &tools.registry_env {
        cmd.env(key, value);
    }
    let label = format!(
        "{} {}",
        program.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        args.first().map(String::as_str).unwrap_or("")
    );
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let tail = std::sync::Mutex::new(std::collections::VecDeque::<String>::new());
    let collect = |reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>| collect_tail(reader, &tail);
    let wait = async {
        let (_, _, status) = tokio::join!(collect(Box::new(stdout)), collect(Box::new(stderr)), child.wait());
        status
    };
    let status = match tokio::time::timeout(tools.install_timeout, wait).await {
        Ok(status) => status.map_err(|e| format!("{label}: {e}"))?,
        Err(_) => {
            return Err(format!("{label} did not finish within {}s", tools.install_timeout.as_secs()));
        }
    };
    let tail: Vec<String> = tail.into_inner().expect("tail lock").into_iter().collect();
    if !status.success() {
        return Err(format!("{label} failed ({status}):\n{}", tail.join("\n")));
    }
    if let Some(last) = tail.iter().rev().find(|l| !l.trim().is_empty()) {
        progress.detail(format!("{label}: {}", last.trim()));
    }
    Ok(())
}

#[cfg(test)]
mod output_tests {
    use super::*;

    /// An install step that prints one 8 MiB line: only the notice is kept, the lines around it are.
    #[tokio::test]
    async fn an_endless_line_is_dropped_with_a_notice() {
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(b"before\n").await.unwrap();
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..8 {
                w.write_all(&chunk).await.unwrap();
            }
            w.write_all(b"\nafter\n").await.unwrap();
        });
        let tail = std::sync::Mutex::new(std::collections::VecDeque::new());
        collect_tail(r, &tail).await;
        writer.await.unwrap();
        let lines: Vec<String> = tail.into_inner().unwrap().into_iter().collect();
        assert_eq!(lines, ["before", "(a line longer than 4096 bytes was dropped)", "after"]);
    }
}
