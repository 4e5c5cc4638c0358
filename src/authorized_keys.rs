//! Which public keys may log in: the store's keys, plus an optional OpenSSH `authorized_keys` file named
//! in the config (for operators who manage keys with configuration management), reloaded on change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use russh::keys::PublicKey;
use russh::keys::ssh_key::HashAlg;

use crate::identity::Identity;
use crate::names::is_valid_label;
use crate::store::{KeyRecord, Role, Store};

/// The key set consulted by authentication.
pub struct AuthorizedKeys {
    store: Store,
    file: Option<PathBuf>,
    file_role: Role,
    file_keys: RwLock<Vec<KeyRecord>>,
}

/// The one-line OpenSSH form of `key` without comment: what `KeyRecord::public_key` holds.
fn bare(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().unwrap_or_default().trim().to_string()
}

impl AuthorizedKeys {
    /// `file` is resolved against `root` when relative.
    pub fn new(store: Store, file: Option<&Path>, file_role: Role, root: &Path) -> AuthorizedKeys {
        let file = file.map(|f| if f.is_absolute() { f.to_path_buf() } else { root.join(f) });
        AuthorizedKeys { store, file, file_role, file_keys: RwLock::new(Vec::new()) }
    }

    /// The identity of `key`, if it may log in. Store keys win over file keys.
    pub fn lookup(&self, key: &PublicKey) -> Option<Identity> {
        let wanted = bare(key);
        let from_store = match self.store.keys() {
            Ok(keys) => keys.into_iter().find(|k| k.public_key == wanted),
            Err(e) => {
                tracing::error!("reading keys from the store: {e}");
                None
            }
        };
        let record = from_store.or_else(|| {
            self.file_keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|k| k.public_key == wanted)
                .cloned()
        })?;
        Some(Identity { name: record.name, role: record.role, fingerprint: Some(record.fingerprint) })
    }

    /// The keys currently loaded from the authorized_keys file.
    pub fn file_keys(&self) -> Vec<KeyRecord> {
        self.file_keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// (Re)reads the authorized_keys file. A missing file means no file keys; bad lines are skipped with
    /// a warning naming the line, so one typo does not lock every operator out.
    pub fn reload(&self) -> Result<usize> {
        let Some(path) = &self.file else { return Ok(0) };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match PublicKey::from_openssh(line) {
                Ok(key) => {
                    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                    let comment = key.comment().to_string();
                    let name = if is_valid_label(&comment) {
                        comment
                    } else {
                        format!("key-{}", fingerprint.trim_start_matches("SHA256:").get(..8).unwrap_or("x"))
                    };
                    let mut record = crate::init::key_record(&name, self.file_role, &key, "authorized_keys");
                    record.fingerprint = fingerprint;
                    keys.push(record);
                }
                Err(e) => tracing::warn!(
                    "{}:{}: skipped, not an OpenSSH public key (options before the key type are not supported): {e}",
                    path.display(),
                    n + 1
                ),
            }
        }
        let count = keys.len();
        *self.file_keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(count)
    }

    /// Loads the file and watches its directory (editors and config management replace files by
    /// renaming), reloading on any change. The watcher lives as long as the returned value.
    pub fn watch(self: &Arc<Self>) -> Result<Option<notify::RecommendedWatcher>> {
        let Some(path) = self.file.clone() else { return Ok(None) };
        let count = self.reload()?;
        tracing::info!("loaded {count} keys from {}", path.display());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let ring = Arc::downgrade(self);
        let file_name = path.file_name().map(|n| n.to_os_string());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if !event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == file_name) {
                return;
            }
            if let Some(ring) = ring.upgrade() {
                match ring.reload() {
                    Ok(n) => tracing::info!("authorized_keys changed: {n} keys loaded"),
                    Err(e) => tracing::warn!("authorized_keys changed but could not be read: {e:#}"),
                }
            }
        })
        .context("starting the authorized_keys watcher")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {} for authorized_keys changes", dir.display()))?;
        Ok(Some(watcher))
    }
}
