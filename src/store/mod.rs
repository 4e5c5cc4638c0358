//! The daemon's state: one embedded, transactional redb file (`DIR/state.redb`).
//!
//! redb commits are ACID and fsync'd before `commit()` returns, which is what a deploy tool needs: after a
//! crash the store opens and says exactly what was committed. (sled, named in the original plan, does not
//! guarantee durable flushes and is unmaintained beta.) This module is the only place that knows redb:
//! the rest of catwalk sees typed records and small methods, so the choice stays visible and replaceable.
//!
//! Values are JSON-encoded records (see [`records`]); keys are names or sequence numbers.

pub mod oauth;
mod records;
mod releases;
mod tokens;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use oauth::{
    AccessCheck, AuthRequest, ClientRecord, GrantError, GrantRecord, IssuedTokens, SessionRecord,
    TokenLifetimes, digest as oauth_digest, random_id as oauth_random_id, secret as oauth_secret,
};
pub use records::{AppRecord, AuditRecord, KeyRecord, PushRecord, Role, TokenRecord, now};
pub use releases::{Introspection, KeySource, RELEASE_RETENTION, ReleaseRecord, ReleaseStatus};
pub use tokens::{NewToken, TokenCheck};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const PUSHES: TableDefinition<u64, &[u8]> = TableDefinition::new("pushes");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");

/// Bumped when a record changes incompatibly; `open` refuses a newer store rather than misreading it.
/// 2: every app record has an incarnation id (older records get one on open; see `AppRecord`).
const SCHEMA_VERSION: u64 = 2;

/// How many push and audit records are kept (older ones are pruned on insert).
const PUSH_RETENTION: u64 = 10_000;
const AUDIT_RETENTION: u64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Db(String),
    #[error("state store: record {0:?} is corrupt: {1}")]
    Corrupt(String, serde_json::Error),
    #[error(
        "state store was written by a newer catwalk (schema {0}, this binary knows {SCHEMA_VERSION}); upgrade catwalk"
    )]
    TooNew(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle on the state store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Store> {
        Store::with_tables(Database::create(path)?)
    }

    fn with_tables(db: Database) -> Result<Store> {
        let store = Store { db: Arc::new(db) };
        store.init_tables()?;
        Ok(store)
    }

    /// [`Store::open`] for the daemon, which may start right after a previous one died: the file lock is
    /// free only once every process holding its descriptor has gone (a child caught between fork and exec
    /// holds a copy for a moment), so a locked store is retried for up to `wait` before the daemon gives up
    /// saying another catwalk uses it.
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Store> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Database::create(path) {
                Ok(db) => return Store::with_tables(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Db(format!(
                        "{} is locked by another catwalk on this data directory (still running, or still \
                         exiting after {} s); stop it first",
                        path.display(),
                        wait.as_secs()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn init_tables(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let version = match meta.get("schema_version")? {
                Some(v) => serde_json::from_slice::<u64>(v.value()).unwrap_or(0),
                None => 0,
            };
            if version > SCHEMA_VERSION {
                return Err(StoreError::TooNew(version));
            }
            if version < SCHEMA_VERSION {
                meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            }
            txn.open_table(KEYS)?;
            let mut apps = txn.open_table(APPS)?;
            if version < 2 {
                give_apps_incarnations(&mut apps)?;
            }
            drop(apps);
            txn.open_table(TOKENS)?;
            txn.open_table(PUSHES)?;
            txn.open_table(AUDIT)?;
            txn.open_table(CACHE)?;
            txn.open_table(releases::RELEASES)?;
            for table in
                [oauth::CLIENTS, oauth::REQUESTS, oauth::GRANTS, oauth::OAUTH_TOKENS, oauth::SESSIONS]
            {
                txn.open_table(table)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    // ---- keys ----------------------------------------------------------------------------------

    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.list(KEYS)
    }

    pub fn key(&self, name: &str) -> Result<Option<KeyRecord>> {
        self.get(KEYS, name)
    }

    /// Adds a key; refuses a name or a public key that is already registered.
    pub fn add_key(&self, key: &KeyRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(KEYS)?;
            if table.get(key.name.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!("a key named {:?} already exists", key.name)));
            }
            for entry in table.iter()? {
                let (_, v) = entry?;
                let existing: KeyRecord = decode("keys", v.value())?;
                if existing.public_key == key.public_key {
                    return Err(StoreError::Conflict(format!(
                        "this public key is already registered as {:?}",
                        existing.name
                    )));
                }
            }
            table.insert(key.name.as_str(), encode(key).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a key; refuses to remove the last admin (which would lock everybody out).
    pub fn remove_key(&self, name: &str) -> Result<KeyRecord> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(KEYS)?;
            let removed: KeyRecord = match table.remove(name)? {
                Some(v) => decode("keys", v.value())?,
                None => return Err(StoreError::NotFound(format!("no key named {name:?} (see `keys list`)"))),
            };
            if removed.role == Role::Admin {
                let mut admins = 0;
                for entry in table.iter()? {
                    let (_, v) = entry?;
                    if decode::<KeyRecord>("keys", v.value())?.role == Role::Admin {
                        admins += 1;
                    }
                }
                if admins == 0 {
                    return Err(StoreError::Conflict(format!(
                        "{name:?} is the last admin key; add another admin before removing it"
                    )));
                }
            }
            removed
        };
        txn.commit()?;
        Ok(removed)
    }

    // ---- apps ----------------------------------------------------------------------------------

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        self.list(APPS)
    }

    pub fn app(&self, name: &str) -> Result<Option<AppRecord>> {
        self.get(APPS, name)
    }

    /// Creates an app record; `Conflict` if it exists.
    pub fn create_app(&self, app: &AppRecord) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(APPS)?;
            if table.get(app.name.as_str())?.is_some() {
                return Err(StoreError::Conflict(format!("app {:?} already exists", app.name)));
            }
            table.insert(app.name.as_str(), encode(app).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Replaces an existing app record.
    pub fn update_app(&self, app: &AppRecord) -> Result<()> {
        self.put(APPS, &app.name, app)
    }

    /// Erases an app (`apps destroy`), in one transaction, so that a crash leaves either the whole app
    /// or nothing a re-creator of the name could read: its record, tokens, releases and push records are
    /// deleted. Its audit records are kept for the operator (the trail of what clients did must outlive
    /// a tenant who destroys the app to erase it) but detached from the name: relabelled
    /// [`destroyed_label`], which no app name can equal, so nothing that looks records up by app name
    /// shows them to whoever creates the name next. One audit record notes the destroy itself. Its OAuth
    /// grants (and their refresh and access tokens) are deleted in the same transaction.
    pub fn destroy_app(&self, name: &str, by: &str) -> Result<Erased> {
        let at = now();
        let label = destroyed_label(name, at);
        let txn = self.db.begin_write()?;
        let erased = {
            let mut apps = txn.open_table(APPS)?;
            let removed: AppRecord = match apps.remove(name)? {
                Some(v) => decode("apps", v.value())?,
                None => return Err(StoreError::NotFound(format!("no app named {name:?} (see `apps`)"))),
            };
            let mut erased = Erased {
                app: removed,
                tokens: 0,
                releases: 0,
                pushes: 0,
                audit_relabelled: 0,
                audit_label: label.clone(),
            };
            let mut tokens = txn.open_table(TOKENS)?;
            tokens.retain(|_, v| {
                let keep = serde_json::from_slice::<TokenRecord>(v).map(|t| t.app != name).unwrap_or(true);
                erased.tokens += usize::from(!keep);
                keep
            })?;
            let mut releases = txn.open_table(releases::RELEASES)?;
            let prefix = format!("{name}/");
            releases.retain(|k, _| {
                let keep = !k.starts_with(&prefix);
                erased.releases += usize::from(!keep);
                keep
            })?;
            let mut pushes = txn.open_table(PUSHES)?;
            pushes.retain(|_, v| {
                let keep = serde_json::from_slice::<PushRecord>(v).map(|p| p.app != name).unwrap_or(true);
                erased.pushes += usize::from(!keep);
                keep
            })?;
            let mut audit = txn.open_table(AUDIT)?;
            let mut relabelled = Vec::new();
            for entry in audit.iter()? {
                let (k, v) = entry?;
                let mut record: AuditRecord = decode("audit", v.value())?;
                if record.app == name {
                    record.app = label.clone();
                    relabelled.push((k.value(), record));
                }
            }
            erased.audit_relabelled = relabelled.len();
            for (seq, record) in relabelled {
                audit.insert(seq, encode(&record).as_slice())?;
            }
            let seq = audit.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            let note = AuditRecord {
                seq,
                at,
                app: label,
                token: format!("key:{by}"),
                method: "apps destroy".into(),
                tool: None,
                status: 0,
                error: false,
                duration_us: 0,
            };
            audit.insert(seq, encode(&note).as_slice())?;
            drop((tokens, releases, pushes, audit));
            oauth::delete_app_in(&txn, name)?;
            erased
        };
        txn.commit()?;
        Ok(erased)
    }

    // ---- pushes and audit ----------------------------------------------------------------------

    /// Appends a push record, assigning its sequence number.
    pub fn record_push(&self, mut push: PushRecord) -> Result<PushRecord> {
        push.seq = self.append(PUSHES, PUSH_RETENTION, |seq| {
            push.seq = seq;
            encode(&push)
        })?;
        Ok(push)
    }

    /// The most recent pushes of `app` (or of every app), newest first.
    pub fn pushes(&self, app: Option<&str>, limit: usize) -> Result<Vec<PushRecord>> {
        self.recent(PUSHES, limit, |p: &PushRecord| app.is_none_or(|a| p.app == a))
    }

    /// Appends a batch of audit records in one transaction (one fsync for many MCP calls). Records of an
    /// app that no longer exists (calls that were still queued when it was destroyed) are written under
    /// its [`destroyed_label`], like the records `destroy_app` relabelled.
    pub fn record_audit(&self, records: &mut [AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let apps = txn.open_table(APPS)?;
            let mut table = txn.open_table(AUDIT)?;
            let mut next = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            for record in records.iter_mut() {
                if apps.get(record.app.as_str())?.is_none() {
                    record.app = destroyed_label(&record.app, record.at);
                }
                record.seq = next;
                table.insert(next, encode(record).as_slice())?;
                next += 1;
            }
            if next > AUDIT_RETENTION {
                let cutoff = next - AUDIT_RETENTION;
                table.retain_in(..cutoff, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The most recent audit records of `app`, newest first.
    pub fn audit(&self, app: &str, limit: usize) -> Result<Vec<AuditRecord>> {
        self.recent(AUDIT, limit, |r: &AuditRecord| r.app == app)
    }

    // ---- cache -----------------------------------------------------------------------------------

    /// A cached value younger than `max_age`, for registry lookups.
    pub fn cache_get(&self, key: &str, max_age: std::time::Duration) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CACHE)?;
        let Some(v) = table.get(key)? else { return Ok(None) };
        let bytes = v.value();
        if bytes.len() < 8 {
            return Ok(None);
        }
        let at = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        Ok((now().saturating_sub(at) < max_age.as_secs()).then(|| bytes[8..].to_vec()))
    }

    pub fn cache_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut bytes = now().to_le_bytes().to_vec();
        bytes.extend_from_slice(value);
        let txn = self.db.begin_write()?;
        txn.open_table(CACHE)?.insert(key, bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    // ---- generic helpers -----------------------------------------------------------------------

    fn get<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        match table.get(key)? {
            Some(v) => Ok(Some(decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &T) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(table)?.insert(key, encode(value).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    fn list<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn append(
        &self,
        table: TableDefinition<u64, &[u8]>,
        retention: u64,
        value: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let seq = {
            let mut table = txn.open_table(table)?;
            let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            table.insert(seq, value(seq).as_slice())?;
            if seq > retention {
                table.retain_in(..seq - retention, |_, _| false)?;
            }
            seq
        };
        txn.commit()?;
        Ok(seq)
    }

    fn recent<T: DeserializeOwned>(
        &self,
        table: TableDefinition<u64, &[u8]>,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
            let (k, v) = entry?;
            let record: T = decode(&k.value().to_string(), v.value())?;
            if keep(&record) {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// What `destroy_app` erased (for the destroy's own report and the daemon log).
#[derive(Debug)]
pub struct Erased {
    pub app: AppRecord,
    pub tokens: usize,
    pub releases: usize,
    pub pushes: usize,
    /// Audit records kept for the operator under [`destroyed_label`]...
    pub audit_relabelled: usize,
    /// ... which is this.
    pub audit_label: String,
}

/// The app label audit records of a destroyed app are kept under: `NAME~destroyed@UNIXTIME`. `~` and `@`
/// are outside the app name grammar, so the label never equals the name of an app created later.
pub fn destroyed_label(name: &str, at: u64) -> String {
    format!("{name}~destroyed@{at}")
}

/// Schema 1 → 2: app records written before incarnation ids get one (in the same transaction as the
/// version bump, so a crash leaves either both or neither).
fn give_apps_incarnations(apps: &mut redb::Table<&str, &[u8]>) -> Result<()> {
    let mut updated = Vec::new();
    for entry in apps.iter()? {
        let (name, value) = entry?;
        let mut record: AppRecord = serde_json::from_slice(value.value())
            .map_err(|e| StoreError::Corrupt(name.value().to_string(), e))?;
        if record.incarnation.is_empty() {
            record.incarnation = records::new_incarnation();
            updated.push(record);
        }
    }
    for record in updated {
        apps.insert(record.name.as_str(), encode(&record).as_slice())?;
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise to JSON")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(key.to_string(), e))
}

#[cfg(test)]
mod tests;
