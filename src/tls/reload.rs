//! Hot reload of operator-managed certificate files.
//!
//! The parent directories are watched (not the files): certbot, cert-manager and `mv` replace files
//! by renaming, which an inode watch on the old file would miss. After a burst of events settles, both
//! files are loaded and checked again; a bad or half-written pair is logged and the current
//! certificate keeps serving until a good pair appears.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::certs;
use super::resolver::CertStore;

/// Quiet time after the last file event before reloading (a cert and key are rarely written at once).
const SETTLE: Duration = Duration::from_millis(300);

/// Watch `cert` and `key` until `shutdown`; each settled change reloads them into `store`.
pub fn spawn(
    cert: PathBuf,
    key: PathBuf,
    store: Arc<CertStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watched = [cert.clone(), key.clone()];
    let names: Vec<PathBuf> =
        watched.iter().map(|p| p.file_name().map(PathBuf::from).unwrap_or_default()).collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        {
            let _ = tx.send(());
        }
    })?;
    let mut dirs: Vec<&Path> = watched.iter().map(|p| p.parent().unwrap_or(Path::new("."))).collect();
    dirs.dedup();
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch {} for certificate changes: {e}", dir.display()))?;
    }
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and the watch removed) when this task ends
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = rx.recv() => {
                    if ev.is_none() {
                        return;
                    }
                }
            }
            // Let the burst settle: wait until no event arrives for SETTLE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SETTLE) => break,
                    _ = rx.recv() => {}
                }
            }
            let (c, k) = (cert.clone(), key.clone());
            match tokio::task::spawn_blocking(move || certs::load_files(&c, &k)).await {
                Ok(Ok(loaded)) => {
                    let same = store.info().is_some_and(|i| i == loaded.info);
                    if !same {
                        tracing::info!(
                            "TLS certificate reloaded from {}: {} serial {} valid until {}",
                            cert.display(),
                            loaded.info.subject,
                            loaded.info.serial,
                            certs::httpdate(loaded.info.not_after)
                        );
                        store.set(loaded);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!("TLS certificate not reloaded, the current one keeps serving: {e}")
                }
                Err(e) => tracing::warn!("TLS certificate reload failed: {e}"),
            }
        }
    });
    Ok(())
}
