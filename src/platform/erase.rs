//! Erasing an app, so that whoever creates its name next finds nothing of the previous tenant.
//!
//! What an app leaves behind: its bare repository (`DIR/repos/APP.git`), its runtime directory
//! (`DIR/apps/APP`: release trees and the server's writable home), its store rows (record, tokens,
//! releases, push records; audit records are detached from the name, see `Store::destroy_app`), its
//! in-memory log, and, in the runtime, its routes, sessions, servers and Fly app.
//!
//! The order makes a crash at any point safe: the files are moved out of the name's paths (a `rename`
//! each, atomic) *before* the store transaction that frees the name, so while the name can be taken
//! again nothing remains under it; a crash before that transaction leaves the app, still owned by its
//! owner, to destroy again. Moved files wait as `.destroyed-*` entries (never an app name) and are
//! deleted right after, or by the next destroy when a crash came first.
//!
//! As a second line, creating a name (`apps create`, or the first push, both under the app's deploy
//! lock) clears whatever a crash, an operator or an older catwalk left at its paths, and its log.

use std::path::{Path, PathBuf};

use super::Platform;
use crate::names::AppName;
use crate::store::Erased;

/// Prefix of the entries a destroy moves files to, in `DIR/repos` and `DIR/apps`. App names start with
/// a letter, so no app's path ever starts with it.
const DESTROYED: &str = ".destroyed-";

/// The paths an app's files live at.
fn app_paths(platform: &Platform, app: &AppName) -> [PathBuf; 2] {
    [platform.dir.repo(app), platform.dir.app(app)]
}

/// Moves the app's repository and runtime directory out of its name's paths (renames in the same
/// directories, so each is atomic). Returns where they went.
fn move_aside(platform: &Platform, app: &AppName) -> Result<Vec<PathBuf>, String> {
    let tag = hex::encode(rand::random::<[u8; 6]>());
    let mut moved = Vec::new();
    for path in app_paths(platform, app) {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let parent = path.parent().unwrap_or(Path::new("."));
        let aside = parent.join(format!("{DESTROYED}{app}-{tag}"));
        std::fs::rename(&path, &aside)
            .map_err(|e| format!("moving {} aside to erase it: {e}", path.display()))?;
        moved.push(aside);
    }
    Ok(moved)
}

/// Deletes what destroys moved aside (this one's and any a crash left), logging what it cannot delete.
fn sweep(platform: &Platform) {
    for parent in [platform.dir.repos(), platform.dir.apps()] {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(DESTROYED) {
                remove(&entry.path());
            }
        }
    }
}

fn remove(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!("erasing {}: {e} (the next `apps destroy` tries again)", path.display());
    }
}

/// Erases `app` for good (`apps destroy`; the caller holds its deploy lock and checked the rights).
pub async fn destroy(platform: &Platform, app: &AppName, by: &str) -> Result<Erased, String> {
    // Stop serving it: Fly app, routes, sessions, servers.
    platform.deployer.destroy(app).await?;
    move_aside(platform, app)?;
    // The one step that frees the name: every store row of the app, in one transaction.
    let erased = platform.store.destroy_app(app.as_str(), by).map_err(|e| e.to_string())?;
    platform.gateway.logs().erase(app.as_str());
    sweep(platform);
    tracing::info!(
        "apps destroy: {app} destroyed by {by}: erased its repository, files, log, {} tokens, {} releases \
         and {} push records; {} audit records kept for the operator as {}",
        erased.tokens,
        erased.releases,
        erased.pushes,
        erased.audit_relabelled,
        erased.audit_label
    );
    Ok(erased)
}

/// Before `app` is created (the caller holds its deploy lock and found no record): removes anything
/// left at its paths and in its log, so a new owner starts from nothing.
pub fn clear_before_create(platform: &Platform, app: &AppName) -> Result<(), String> {
    let leftovers = move_aside(platform, app)?;
    if !leftovers.is_empty() {
        tracing::warn!("{app}: removed files left by an earlier app of this name before creating it again");
    }
    for path in leftovers {
        remove(&path);
    }
    platform.gateway.logs().erase(app.as_str());
    Ok(())
}
