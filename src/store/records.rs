//! The records kept in the store. They are serialised as JSON so that adding a field (with
//! `#[serde(default)]`) never needs a migration; removing or renaming one does (see `SCHEMA_VERSION`).

use serde::{Deserialize, Serialize};

/// What an SSH key may do. Admins manage keys and every app; deployers push to and manage the apps they own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Deployer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "deployer" => Some(Role::Deployer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
        }
    }
}

/// An SSH public key allowed to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub role: Role,
    /// OpenSSH one-line form without comment: `ssh-ed25519 AAAA...`.
    pub public_key: String,
    /// `SHA256:...` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub added_at: u64,
    pub added_by: String,
}

/// An app: a git repository plus whatever is deployed from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    pub created_at: u64,
    pub created_by: String,
    /// Key names (besides admins) allowed to push to and manage this app.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Overrides the daemon's deploy branch for this app.
    #[serde(default)]
    pub deploy_branch: Option<String>,
    /// Extra `Origin` values allowed on this app's MCP endpoint.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// A random id fixed when the record is created. It tells this app from an earlier one of the same
    /// name (destroyed, then created again by anyone): the app's age identity is derived from it, so a
    /// secrets file made for the previous tenant never decrypts for the next (`pipeline/secrets.rs`).
    /// Records from before it existed get one when the store is opened (schema 2).
    #[serde(default)]
    pub incarnation: String,
}

impl AppRecord {
    /// A new app record created now by `created_by`, with a fresh incarnation id.
    pub fn new(name: &str, created_by: &str, owners: Vec<String>) -> AppRecord {
        AppRecord {
            name: name.to_string(),
            created_at: now(),
            created_by: created_by.to_string(),
            owners,
            deploy_branch: None,
            allowed_origins: Vec::new(),
            incarnation: new_incarnation(),
        }
    }
}

/// A fresh incarnation id (`i_` + 16 random bytes in hex).
pub fn new_incarnation() -> String {
    super::oauth::random_id("i_", 16)
}

/// An access token for one app's MCP endpoint. Only a digest of the token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    /// Hex SHA-256 of the whole token string.
    pub digest: String,
    pub created_at: u64,
    pub created_by: String,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

/// One `git push` as the pre-receive hook saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    pub seq: u64,
    pub app: String,
    pub refname: String,
    pub old: String,
    pub new: String,
    pub key: String,
    pub at: u64,
    #[serde(default)]
    pub options: Vec<String>,
    /// `accepted`, or `rejected: <reason>`.
    pub verdict: String,
}

/// One MCP call through the gateway. Never arguments or results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: u64,
    pub app: String,
    pub token: String,
    pub method: String,
    #[serde(default)]
    pub tool: Option<String>,
    pub status: u16,
    /// The final JSON-RPC message was an error object.
    #[serde(default)]
    pub error: bool,
    pub duration_us: u64,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
