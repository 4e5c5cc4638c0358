//! Releases: the immutable record of each deploy (`v1`, `v2`, ...), and which one is live.
//!
//! Keys are `APP/000042` so one range scan lists an app's releases in order. A release is written when
//! its deploy starts (status `deploying`), updated as steps finish, and ends `live`, `failed` or
//! `superseded`. After a crash, [`Store::recover_releases`] marks every `deploying` release failed: the
//! live release is always the last one that was marked live.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, decode, encode};
use crate::plan::{Plan, RuntimeKind};

pub(super) const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");

/// Releases kept per app (older, non-live ones are pruned).
pub const RELEASE_RETENTION: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    Deploying,
    Live,
    Failed,
    Superseded,
}

/// What the health gate learned by asking the server itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Introspection {
    pub server_name: Option<String>,
    pub server_version: Option<String>,
    pub protocol_version: Option<String>,
    pub tools: Vec<String>,
    pub resources: usize,
    pub prompts: usize,
    /// Whether the stdio server speaks 2026-07-28 itself (modern requests are passed to it as they are)
    /// or only the handshake era (catwalk translates); unknown for HTTP servers and older records. Kept so
    /// that a daemon restart needs no probe to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaks_2026_07_28: Option<bool>,
}

impl Introspection {
    /// `2 tools (get_current_time, convert_time), 0 resources, 0 prompts`.
    pub fn describe(&self) -> String {
        let i = self;
        let names = if i.tools.is_empty() {
            String::new()
        } else if i.tools.len() <= 8 {
            format!(" ({})", i.tools.join(", "))
        } else {
            format!(" ({}, ...)", i.tools[..8].join(", "))
        };
        format!(
            "{} tool{}{names}, {} resource{}, {} prompt{}",
            i.tools.len(),
            if i.tools.len() == 1 { "" } else { "s" },
            i.resources,
            if i.resources == 1 { "" } else { "s" },
            i.prompts,
            if i.prompts == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub app: String,
    pub version: u32,
    pub commit: String,
    pub plan: Plan,
    pub status: ReleaseStatus,
    pub created_at: u64,
    pub pusher: String,
    /// Secret names and keyed digests (never values).
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// (step, milliseconds) in order.
    #[serde(default)]
    pub timings: Vec<(String, u64)>,
    #[serde(default)]
    pub introspection: Option<Introspection>,
    #[serde(default)]
    pub error: Option<String>,
    /// The release this one re-uses the plan of (rollbacks).
    #[serde(default)]
    pub rollback_of: Option<u32>,
    /// The install directory (re-used by rollbacks).
    #[serde(default)]
    pub install_dir: Option<String>,
    /// The argv that starts the server (built from validated, pinned values; no secrets).
    #[serde(default)]
    pub command: Vec<String>,
    /// Which age identity opened the release's secrets file (restore and rollback open it the same way).
    #[serde(default)]
    pub secrets_key: KeySource,
}

/// Which identity opened a release's secrets file; recorded with the release so that a restart or a
/// rollback opens it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// The daemon-wide identity of catwalk before per-app keys. The default, because releases recorded
    /// before per-app keys carry no value; accepted only for those releases, never for a new push.
    #[default]
    DaemonWide,
    /// The app's own identity (every push since per-app keys).
    App,
}

fn key(app: &str, version: u32) -> String {
    format!("{app}/{version:06}")
}

impl Store {
    /// The next release number of `app` (one more than the highest ever written).
    pub fn next_release_version(&self, app: &str) -> Result<u32> {
        Ok(self.releases(app)?.first().map(|r| r.version + 1).unwrap_or(1))
    }

    /// Writes (inserts or replaces) a release.
    pub fn put_release(&self, release: &ReleaseRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(RELEASES)?
            .insert(key(&release.app, release.version).as_str(), encode(release).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Marks `version` live and the previous live release superseded, in one transaction; prunes old ones.
    pub fn promote_release(&self, app: &str, version: u32) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RELEASES)?;
            let prefix = format!("{app}/");
            let mut all: Vec<ReleaseRecord> = Vec::new();
            for entry in table.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                all.push(decode(k.value(), v.value())?);
            }
            if !all.iter().any(|r| r.version == version) {
                return Err(StoreError::NotFound(format!("app {app} has no release v{version}")));
            }
            for r in all.iter_mut() {
                let status = if r.version == version {
                    ReleaseStatus::Live
                } else if r.status == ReleaseStatus::Live {
                    ReleaseStatus::Superseded
                } else {
                    r.status
                };
                if status != r.status {
                    r.status = status;
                    table.insert(key(app, r.version).as_str(), encode(r).as_slice())?;
                }
            }
            if all.len() > RELEASE_RETENTION {
                let cut = all.len() - RELEASE_RETENTION;
                for r in all.iter().take(cut) {
                    if r.status != ReleaseStatus::Live {
                        table.remove(key(app, r.version).as_str())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Releases of `app`, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<ReleaseRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RELEASES)?;
        let prefix = format!("{app}/");
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode::<ReleaseRecord>(k.value(), v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    pub fn release(&self, app: &str, version: u32) -> Result<Option<ReleaseRecord>> {
        self.get(RELEASES, &key(app, version))
    }

    /// The live release of `app`, if any.
    pub fn live_release(&self, app: &str) -> Result<Option<ReleaseRecord>> {
        Ok(self.releases(app)?.into_iter().find(|r| r.status == ReleaseStatus::Live))
    }

    /// After a crash: every release still `deploying` failed. Returns how many were marked.
    pub fn recover_releases(&self) -> Result<usize> {
        let txn = self.db.begin_write()?;
        let mut fixed = 0;
        {
            let mut table = txn.open_table(RELEASES)?;
            let mut stale = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let r: ReleaseRecord = decode(k.value(), v.value())?;
                if r.status == ReleaseStatus::Deploying {
                    stale.push(r);
                }
            }
            for mut r in stale {
                r.status = ReleaseStatus::Failed;
                r.error = Some("interrupted: the daemon stopped during this deploy".into());
                table.insert(key(&r.app, r.version).as_str(), encode(&r).as_slice())?;
                fixed += 1;
            }
        }
        txn.commit()?;
        Ok(fixed)
    }

    /// Removes every release of `app` (used by `apps destroy`).
    pub fn delete_releases(&self, app: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RELEASES)?;
            let prefix = format!("{app}/");
            table.retain(|k, _| !k.starts_with(&prefix))?;
        }
        txn.commit()?;
        Ok(())
    }
}
