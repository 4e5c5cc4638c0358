//! `catwalk up`: the one command a newcomer runs. Initialises the data dir if needed, makes the user's
//! own SSH key the first admin when no key is registered yet, then serves and prints how to push.

use std::path::PathBuf;

use anyhow::Result;

use crate::datadir::DataDir;
use crate::store::Store;

/// The user's default public keys, in the order OpenSSH tries them.
fn default_public_keys() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else { return Vec::new() };
    let ssh = PathBuf::from(home).join(".ssh");
    ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"].iter().map(|f| ssh.join(f)).collect()
}

/// Prepares `dir` and returns lines to print before serving.
pub fn prepare(dir: &DataDir) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let fresh = !dir.config().exists();
    let report = crate::init::init(dir, None)?;
    if fresh {
        notes.push(format!("initialised {}", dir.root().display()));
    }
    for path in &report.created {
        if !fresh {
            notes.push(format!("created {path}"));
        }
    }
    let store = Store::open(&dir.store())?;
    if store.keys()?.is_empty() {
        match default_public_keys().into_iter().find(|p| p.exists()) {
            Some(key) => {
                drop(store);
                let report = crate::init::init(dir, Some(&key))?;
                notes.push(format!(
                    "registered {} as admin key {}",
                    key.display(),
                    report.admin.unwrap_or_default()
                ));
            }
            None => notes.push(format!(
                "no SSH key is registered and none was found in ~/.ssh; add one with:\n  catwalk --dir {} keys add me --role admin < ~/.ssh/id_ed25519.pub",
                dir.root().display()
            )),
        }
    }
    Ok(notes)
}

/// The lines `up` prints once the daemon listens.
pub fn hints(platform: &crate::platform::Platform) -> Vec<String> {
    let (host, port) = platform.config.ssh_host_port();
    vec![
        format!(
            "catwalk is up: ssh on {}, http on {}",
            platform.config.ssh.listen, platform.config.http.listen
        ),
        "deploy an app:".to_string(),
        format!("  git remote add catwalk ssh://git@{host}:{port}/APP"),
        format!("  git push catwalk {}", platform.config.git.deploy_branch),
        "commands:".to_string(),
        format!("  ssh -p {port} git@{host} help"),
        format!("  catwalk --dir {} help", platform.dir.root().display()),
    ]
}
