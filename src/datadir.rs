//! The layout of a catwalk data directory, in one place.
//!
//! ```text
//! DIR/catwalk.toml            daemon configuration
//! DIR/ssh_host_ed25519_key    SSH host key (0600)
//! DIR/age_identity.txt        age identity that decrypts pushed secrets (0600)
//! DIR/state.redb              the state store
//! DIR/control.sock            Unix control socket (hooks and the local CLI)
//! DIR/repos/APP.git           bare git repositories
//! DIR/apps/APP/               per-app runtime data (releases, logs)
//! ```

use std::path::{Path, PathBuf};

use crate::names::AppName;

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps `root`, made absolute so that paths handed to git hooks and children stay valid.
    pub fn new(root: &Path) -> DataDir {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        DataDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("catwalk.toml")
    }
    pub fn host_key(&self) -> PathBuf {
        self.root.join("ssh_host_ed25519_key")
    }
    pub fn age_identity(&self) -> PathBuf {
        self.root.join("age_identity.txt")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("state.redb")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    pub fn repo(&self, app: &AppName) -> PathBuf {
        self.repos().join(format!("{app}.git"))
    }
    pub fn apps(&self) -> PathBuf {
        self.root.join("apps")
    }
    pub fn app(&self, app: &AppName) -> PathBuf {
        self.apps().join(app.as_str())
    }
}
