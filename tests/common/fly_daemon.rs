//! Shared set-up of the daemon tests on Fly (`fly_push`, `fly_scale`): a fake Machines API whose
//! "image" is the real `catwalk` binary, the daemon config pointing at it, and a pushed app.
//! Include after `mod daemon;` and `mod fly_fake;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, WorkTree, stderr, stdout};
use crate::fly_fake::{FakeFly, FakeImage};

/// The fake's only accepted API token.
pub const TOKEN: &str = "fly-test-token";

/// The fake (its machines run `catwalk runner`, installing from the real registries at boot) and
/// the files the daemon config names.
pub struct FlyEnv {
    pub fake: FakeFly,
    pub root: tempfile::TempDir,
    token_file: PathBuf,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl FlyEnv {
    pub async fn start() -> FlyEnv {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let bin = root.join("image/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_catwalk"), bin.join("catwalk")).unwrap();
        for d in ["srv", "home"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default()));
        env.insert("HOME".into(), s(&root.join("home")));
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("CATWALK_RUNNER_DIR".into(), s(&root.join("srv")));
        // The host's CA, proxy and mirror settings, as a real image would bake in.
        for key in catwalk::runtime::install::HOST_NETWORK_ENV {
            if let Ok(v) = std::env::var(key) {
                env.insert(key.to_string(), v);
            }
        }
        let fake = FakeFly::start(TOKEN, &["personal"], FakeImage { bin_dir: bin, env }).await;
        let token_file = root.join("fly-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        FlyEnv { fake, root: tmp, token_file }
    }

    /// A daemon config running every app on the fake; `extra` adds `[runtime.fly]` keys.
    pub fn daemon_config(&self, extra: &str) -> String {
        format!(
            "[runtime]\ndefault = \"fly\"\n[runtime.fly]\napi_url = {:?}\ntoken_file = {:?}\nmachine_url_template = {:?}\nflycast_url_template = {:?}\nimage = \"registry.fly.io/catwalk-runner:test\"\nboot_timeout = \"5m\"\nrequests_per_second = 5\nburst = 5\n{extra}",
            self.fake.url,
            s(&self.token_file),
            format!("{}/6pn/{{machine_id}}{{path}}", self.fake.url),
            format!("{}/flycast/{{app}}{{path}}", self.fake.url),
        )
    }

    /// Waits (generously) until `fly_app`'s only machine is in `state`; returns its id.
    pub async fn wait_machine_state(&self, fly_app: &str, state: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let machines = self.fake.machines(fly_app);
            if let [(id, s, _)] = machines.as_slice()
                && s == state
            {
                return id.clone();
            }
            assert!(Instant::now() < deadline, "{fly_app}'s machine never became {state}: {machines:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A work tree of `app` whose catwalk.toml names `package` (and `extra` manifest lines), with the
/// daemon as its `catwalk` remote. Blocking (git).
pub fn package_worktree(d: &Daemon, app: &str, package: &str, extra: &str) -> WorkTree {
    let wt = WorkTree::new(d.tmp.path(), app);
    std::fs::write(wt.path.join("catwalk.toml"), format!("[server]\npackage = {package:?}\n{extra}"))
        .unwrap();
    wt.git(&["rm", "-q", "server.py"]);
    wt.git(&["add", "-A"]);
    wt.git(&["commit", "-q", "-m", "on fly"]);
    wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
    wt
}

/// `git push catwalk main` as the admin: (accepted, output). Blocking.
pub fn push(d: &Daemon, wt: &WorkTree) -> (bool, String) {
    let out = d.git(&d.admin, &wt.path).args(["push", "catwalk", "main"]).output().unwrap();
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

/// A new access token of `app` (over SSH). Blocking.
pub fn token(d: &Daemon, app: &str) -> String {
    d.token(app)
}

/// The stdio fixture of [`WorkTree`] pushed as `app` to a daemon whose default runtime is the fake Fly:
/// the fake, the daemon, a token of the app and its endpoint (the release is live on a machine).
pub async fn fixture_on_fly(app: &str) -> (FlyEnv, Daemon, String, String) {
    use tokio::task::block_in_place as blocking;
    let env = FlyEnv::start().await;
    let d = blocking(|| Daemon::start_with_config(&env.daemon_config("")));
    let wt = blocking(|| {
        let wt = WorkTree::new(d.tmp.path(), app);
        wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
        wt
    });
    let (pushed, output) = blocking(|| push(&d, &wt));
    assert!(pushed && output.contains("fly:"), "{output}");
    let token = blocking(|| token(&d, app));
    let url = format!("http://{}/mcp/{app}", d.http_addr);
    (env, d, token, url)
}
