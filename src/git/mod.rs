//! Bare repositories under `DIR/repos/APP.git`, their hooks, and the system `git` processes that serve
//! pushes and clones (neither libgit2 nor gitoxide implements receive-pack/upload-pack; git2 is used
//! only to create repositories and read refs).

pub mod hook;
pub mod locks;
pub mod relay;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::datadir::DataDir;
use crate::names::AppName;

/// The hook scripts, embedded so an installed binary can (re)write them into every repository.
const PRE_RECEIVE: &str = include_str!("../../hooks/pre-receive");
const POST_RECEIVE: &str = include_str!("../../hooks/post-receive");

/// The two services a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    ReceivePack,
    UploadPack,
}

impl Service {
    /// Recognises `git-receive-pack`, `git receive-pack` (as argv), and the upload-pack forms.
    /// Returns the service and the remaining arguments.
    pub fn from_argv(argv: &[String]) -> Option<(Service, &[String])> {
        let (name, rest) = match argv {
            [git, name, rest @ ..] if git == "git" => (name.as_str(), rest),
            [name, rest @ ..] => (name.strip_prefix("git-")?, rest),
            [] => return None,
        };
        match name {
            "receive-pack" => Some((Service::ReceivePack, rest)),
            "upload-pack" => Some((Service::UploadPack, rest)),
            _ => None,
        }
    }

    pub fn git_subcommand(self) -> &'static str {
        match self {
            Service::ReceivePack => "receive-pack",
            Service::UploadPack => "upload-pack",
        }
    }
}

/// Creates the bare repository of `app` if missing and (re)installs its hooks and settings.
///
/// A new repository is built under a temporary name and renamed into place, so a crash never leaves a
/// half-initialised repository behind.
pub fn ensure_repo(dir: &DataDir, config: &Config, app: &AppName, deploy_branch: &str) -> Result<PathBuf> {
    let path = dir.repo(app);
    if !path.exists() {
        fs::create_dir_all(dir.repos()).with_context(|| format!("creating {}", dir.repos().display()))?;
        let tmp = dir.repos().join(format!(".new-{app}-{}", hex::encode(rand::random::<[u8; 4]>())));
        let mut opts = git2::RepositoryInitOptions::new();
        opts.bare(true).initial_head(deploy_branch).no_reinit(true);
        git2::Repository::init_opts(&tmp, &opts)
            .with_context(|| format!("creating the bare repository {}", tmp.display()))?;
        configure(&tmp, config)?;
        install_hooks(&tmp)?;
        fs::rename(&tmp, &path).with_context(|| format!("moving {} to {}", tmp.display(), path.display()))?;
    } else {
        configure(&path, config)?;
        install_hooks(&path)?;
    }
    Ok(path)
}

fn configure(repo: &Path, config: &Config) -> Result<()> {
    let repo = git2::Repository::open_bare(repo).with_context(|| format!("opening {}", repo.display()))?;
    let mut cfg = repo.config().context("reading the repository config")?;
    let max = i64::try_from(config.git.max_push_bytes).unwrap_or(i64::MAX);
    let current = cfg.get_i64("receive.maxInputSize").ok();
    if current != Some(max) {
        cfg.set_i64("receive.maxInputSize", max).context("setting receive.maxInputSize")?;
    }
    if cfg.get_bool("receive.advertisePushOptions").ok() != Some(true) {
        cfg.set_bool("receive.advertisePushOptions", true).context("setting receive.advertisePushOptions")?;
    }
    Ok(())
}

/// Writes the embedded hooks into `repo/hooks` (only when they differ, atomically).
fn install_hooks(repo: &Path) -> Result<()> {
    let hooks = repo.join("hooks");
    fs::create_dir_all(&hooks).with_context(|| format!("creating {}", hooks.display()))?;
    for (name, text) in [("pre-receive", PRE_RECEIVE), ("post-receive", POST_RECEIVE)] {
        let path = hooks.join(name);
        if fs::read_to_string(&path).is_ok_and(|t| t == text) {
            continue;
        }
        let tmp = hooks.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    }
    Ok(())
}

/// The sha `refs/heads/BRANCH` points at, if the repository and the branch exist.
pub fn branch_head(repo: &Path, branch: &str) -> Option<String> {
    let repo = git2::Repository::open_bare(repo).ok()?;
    let reference = repo.find_reference(&format!("refs/heads/{branch}")).ok()?;
    reference.target().map(|oid| oid.to_string())
}

/// What a `git receive-pack`/`upload-pack` child gets: a clean environment, never the daemon's.
pub struct GitEnv {
    pub push_id: Option<String>,
    /// `GIT_PROTOCOL` from the client's `env` request (protocol v2 for fetches).
    pub git_protocol: Option<String>,
}

/// Builds the `git <service> <repo>` command with a clean environment: PATH and HOME of the daemon, the
/// variables the hooks need to reach the daemon, and `GIT_PROTOCOL`.
pub fn command(
    config: &Config,
    dir: &DataDir,
    service: Service,
    repo: &Path,
    env: &GitEnv,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&config.git.git_binary);
    cmd.arg(service.git_subcommand()).arg(repo);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin")),
    );
    cmd.env("HOME", std::env::var_os("HOME").unwrap_or_else(|| dir.root().as_os_str().to_owned()));
    cmd.env("CATWALK_DIR", dir.root());
    cmd.env("CATWALK_SOCKET", dir.control_socket());
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("CATWALK_BIN", exe);
    }
    if let Some(id) = &env.push_id {
        cmd.env("CATWALK_PUSH_ID", id);
    }
    if let Some(protocol) = &env.git_protocol {
        cmd.env("GIT_PROTOCOL", protocol);
    }
    cmd
}

/// `GIT_PROTOCOL` values look like `version=2` or `version=2:key=value`; anything else is dropped.
pub fn is_valid_git_protocol(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        shell_words::split(s).unwrap()
    }

    #[test]
    fn services() {
        let a = argv("git-receive-pack 'hello.git'");
        assert_eq!(Service::from_argv(&a).unwrap(), (Service::ReceivePack, &a[1..]));
        let a = argv("git upload-pack '/hello'");
        assert_eq!(Service::from_argv(&a).unwrap(), (Service::UploadPack, &a[2..]));
        assert!(Service::from_argv(&argv("apps")).is_none());
        assert!(Service::from_argv(&argv("git-shell")).is_none());
        assert!(Service::from_argv(&argv("git log")).is_none());
    }

    #[test]
    fn git_protocol_values() {
        assert!(is_valid_git_protocol("version=2"));
        assert!(!is_valid_git_protocol("version=2; rm -rf /"));
        assert!(!is_valid_git_protocol(""));
    }
}
