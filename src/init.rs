//! `catwalk init`: create a data directory with its config, keys and state store.
//!
//! Idempotent and conservative: an existing key or config is never overwritten (losing the age identity
//! would make every pushed secret undecryptable), so running `init` twice, or `up` on an existing
//! directory, only fills in what is missing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use russh::keys::ssh_key::{self, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::datadir::DataDir;
use crate::store::{KeyRecord, Role, Store, now};

/// What `init` did, for the caller to print.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
    pub admin: Option<String>,
}

/// Creates (or completes) the data directory. `admin_key` is an OpenSSH public key file.
pub fn init(dir: &DataDir, admin_key: Option<&Path>) -> Result<InitReport> {
    let mut report = InitReport::default();
    fs::create_dir_all(dir.root()).with_context(|| format!("creating {}", dir.root().display()))?;
    fs::set_permissions(dir.root(), fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.root().display()))?;
    for sub in [dir.repos(), dir.apps()] {
        fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
    }

    let config = dir.config();
    if config.exists() {
        report.kept.push(config.display().to_string());
    } else {
        write_new(&config, DEFAULT_CONFIG.as_bytes(), 0o644)?;
        report.created.push(config.display().to_string());
    }

    let host_key = dir.host_key();
    if host_key.exists() {
        report.kept.push(host_key.display().to_string());
    } else {
        let seed: [u8; 32] = rand::random();
        let key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed));
        let pem = key.to_openssh(LineEnding::LF).context("encoding the SSH host key")?;
        write_new(&host_key, pem.as_bytes(), 0o600)?;
        report.created.push(host_key.display().to_string());
    }

    let identity = dir.age_identity();
    if identity.exists() {
        report.kept.push(identity.display().to_string());
    } else {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let text = format!(
            "# created: by catwalk init\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        );
        write_new(&identity, text.as_bytes(), 0o600)?;
        report.created.push(identity.display().to_string());
    }

    let store = Store::open(&dir.store()).context("opening the state store")?;
    if let Some(path) = admin_key {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading admin key {}", path.display()))?;
        let key = parse_public_key(&text)
            .with_context(|| format!("{} is not an OpenSSH public key", path.display()))?;
        let record = key_record("admin", Role::Admin, &key, "init");
        match store.keys()?.into_iter().find(|k| k.public_key == record.public_key) {
            Some(existing) => report.admin = Some(format!("{} (already registered)", existing.name)),
            None => {
                let name = unique_name(&store, "admin")?;
                store.add_key(&KeyRecord { name: name.clone(), ..record })?;
                report.admin = Some(name);
            }
        }
    }
    Ok(report)
}

/// Parses one OpenSSH public key line (`ssh-ed25519 AAAA... comment`), ignoring blank and `#` lines.
pub fn parse_public_key(text: &str) -> Result<PublicKey> {
    let line =
        text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).context("no key found")?;
    PublicKey::from_openssh(line).map_err(|e| anyhow::anyhow!("cannot parse the key: {e}"))
}

/// A store record for `key`, without its comment (comments are not identity).
pub fn key_record(name: &str, role: Role, key: &PublicKey, added_by: &str) -> KeyRecord {
    let mut bare = key.clone();
    bare.set_comment("");
    KeyRecord {
        name: name.to_string(),
        role,
        public_key: bare.to_openssh().unwrap_or_default().trim().to_string(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        added_at: now(),
        added_by: added_by.to_string(),
    }
}

fn unique_name(store: &Store, base: &str) -> Result<String> {
    for i in 1..1000 {
        let name = if i == 1 { base.to_string() } else { format!("{base}{i}") };
        if store.key(&name)?.is_none() {
            return Ok(name);
        }
    }
    bail!("too many keys named {base}*")
}

/// Writes a new file with `mode`, failing if it exists (never overwrite keys).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// The config written by `init`: every key commented out at its default (see config/catwalk.example.toml).
const DEFAULT_CONFIG: &str = include_str!("../config/catwalk.example.toml");
