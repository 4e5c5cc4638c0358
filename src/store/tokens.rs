//! MCP access tokens: minted here, shown once, kept only as a SHA-256 digest.
//!
//! A token looks like `cw_<id><secret>`: `id` (8 hex chars) finds the record without scanning, the
//! 256-bit `secret` makes it unguessable. The digest of the whole string is compared in constant time,
//! so neither the id lookup nor the comparison leaks how much of a guess was right.

use rand::RngCore;
use redb::ReadableTable;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Result, Store, StoreError, TOKENS, TokenRecord, decode, encode, now};

const PREFIX: &str = "cw_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 64;

/// A freshly minted token: `token` is the only copy of the plaintext that will ever exist.
#[derive(Debug)]
pub struct NewToken {
    pub token: String,
    pub record: TokenRecord,
}

/// The outcome of checking a presented token against one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(TokenRecord),
    /// Malformed, unknown, or not matching the digest.
    Unknown,
    /// Real, but for another app.
    WrongApp,
    Revoked,
    Expired,
}

impl Store {
    /// Mints a token for `app`. `expires_in` is in seconds from now.
    pub fn create_token(
        &self,
        app: &str,
        name: &str,
        expires_in: Option<u64>,
        created_by: &str,
    ) -> Result<NewToken> {
        let mut rng = rand::rng();
        let txn = self.db.begin_write()?;
        let new = {
            let mut table = txn.open_table(TOKENS)?;
            // Ids are random so they reveal nothing about how many tokens exist; retry on the rare clash.
            let (id, token) = loop {
                let mut bytes = [0u8; ID_LEN / 2 + SECRET_LEN / 2];
                rng.fill_bytes(&mut bytes);
                let hex = hex::encode(bytes);
                let id = hex[..ID_LEN].to_string();
                if table.get(id.as_str())?.is_none() {
                    break (id, format!("{PREFIX}{hex}"));
                }
            };
            let at = now();
            let record = TokenRecord {
                id: id.clone(),
                app: app.to_string(),
                name: name.to_string(),
                digest: digest(&token),
                created_at: at,
                created_by: created_by.to_string(),
                expires_at: expires_in.map(|s| at.saturating_add(s)),
                revoked_at: None,
            };
            table.insert(id.as_str(), encode(&record).as_slice())?;
            NewToken { token, record }
        };
        txn.commit()?;
        Ok(new)
    }

    /// Tokens of one app (revoked ones included, marked), oldest first.
    pub fn tokens(&self, app: &str) -> Result<Vec<TokenRecord>> {
        let mut all: Vec<TokenRecord> = self.list(TOKENS)?;
        all.retain(|t| t.app == app);
        all.sort_by_key(|t| (t.created_at, t.id.clone()));
        Ok(all)
    }

    /// Revokes token `id` (or the token named `id`) of `app`.
    pub fn revoke_token(&self, app: &str, id_or_name: &str) -> Result<TokenRecord> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(TOKENS)?;
            let mut found: Option<TokenRecord> = None;
            for entry in table.iter()? {
                let (_, v) = entry?;
                let t: TokenRecord = decode("tokens", v.value())?;
                if t.app == app && t.revoked_at.is_none() && (t.id == id_or_name || t.name == id_or_name) {
                    if found.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "several tokens of {app} are named {id_or_name:?}; revoke by id (see `tokens list {app}`)"
                        )));
                    }
                    found = Some(t);
                }
            }
            let Some(mut t) = found else {
                return Err(StoreError::NotFound(format!(
                    "no active token {id_or_name:?} for app {app} (see `tokens list {app}`)"
                )));
            };
            t.revoked_at = Some(now());
            table.insert(t.id.as_str(), encode(&t).as_slice())?;
            t
        };
        txn.commit()?;
        Ok(record)
    }

    /// Checks a presented bearer token for `app`.
    pub fn check_token(&self, app: &str, presented: &str) -> Result<TokenCheck> {
        let Some(rest) = presented.strip_prefix(PREFIX) else { return Ok(TokenCheck::Unknown) };
        if rest.len() != ID_LEN + SECRET_LEN || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(TokenCheck::Unknown);
        }
        let Some(record) = self.get::<TokenRecord>(TOKENS, &rest[..ID_LEN])? else {
            return Ok(TokenCheck::Unknown);
        };
        let matches: bool = digest(presented).as_bytes().ct_eq(record.digest.as_bytes()).into();
        Ok(if !matches {
            TokenCheck::Unknown
        } else if record.app != app {
            TokenCheck::WrongApp
        } else if record.revoked_at.is_some() {
            TokenCheck::Revoked
        } else if record.expires_at.is_some_and(|e| e <= now()) {
            TokenCheck::Expired
        } else {
            TokenCheck::Valid(record)
        })
    }
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
