//! OAuth state: registered clients, pending authorization requests (and the authorization codes
//! issued from them), grants, and the access and refresh tokens of each grant.
//!
//! Like `tokens.rs`, every secret (client secrets, authorization codes, access and refresh tokens,
//! browser sessions) is kept only as a SHA-256 digest and compared in constant time. A secret looks like
//! `<prefix><id><secret>`: `id` finds the record without a scan, the 256-bit secret makes it unguessable.
//!
//! The rules that matter for security live here, inside one write transaction each, so no interleaving
//! of requests can break them: an authorization code works once (a second use revokes its grant), a
//! refresh token works once (a second use revokes the whole grant, RFC 9700 §4.14.2), and every access
//! token dies with its grant.

use rand::RngCore;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Result, Store, StoreError, decode, encode, now};

pub(super) const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_clients");
pub(super) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_requests");
pub(super) const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_grants");
pub(super) const OAUTH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_tokens");
pub(super) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth_sessions");

pub const ACCESS_PREFIX: &str = "cwa_";
pub const REFRESH_PREFIX: &str = "cwr_";
pub const CODE_PREFIX: &str = "cwc_";
pub const LOGIN_PREFIX: &str = "cwl_";
pub const SESSION_PREFIX: &str = "cws_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 64;

/// Pending authorization requests and browser sessions kept at most (oldest dropped first).
const MAX_PENDING: usize = 10_000;

/// A registered client (RFC 7591), or a client known by its metadata document URL (CIMD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    /// `none` (public client, PKCE only), `client_secret_post` or `client_secret_basic`.
    pub auth_method: String,
    /// SHA-256 of the client secret, for confidential clients.
    #[serde(default)]
    pub secret_digest: Option<String>,
    pub created_at: u64,
    /// `true` when `client_id` is the URL of a Client ID Metadata Document (fetched, then cached).
    #[serde(default)]
    pub metadata_document: bool,
    #[serde(default)]
    pub client_uri: Option<String>,
}

/// An authorization request waiting for (or past) approval; it also carries the authorization code
/// issued after approval, by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    pub id: String,
    /// SHA-256 of the request's parameters: reloading the same authorization URL finds the same request.
    pub params_digest: String,
    /// SHA-256 of the human approval code (`approve CODE`).
    pub approval_digest: String,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub app: String,
    pub scope: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    pub approved_by: Option<String>,
    #[serde(default)]
    pub denied_by: Option<String>,
    #[serde(default)]
    pub grant_id: Option<String>,
    #[serde(default)]
    pub code_digest: Option<String>,
    #[serde(default)]
    pub code_expires_at: Option<u64>,
    #[serde(default)]
    pub code_used: bool,
}

impl AuthRequest {
    /// `true` once the client was sent its answer (a code, or an error): the request is finished.
    pub fn answered(&self) -> bool {
        self.code_digest.is_some() || self.denied_by.is_some()
    }
}

/// What an approval gave a client: access to one app's endpoint until revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    pub app: String,
    pub resource: String,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub scope: Option<String>,
    pub approved_by: String,
    pub created_at: u64,
    #[serde(default)]
    pub last_used_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokenRecord {
    pub id: String,
    pub kind: TokenKind,
    pub grant_id: String,
    pub digest: String,
    pub created_at: u64,
    pub expires_at: u64,
    /// Refresh tokens: when it was exchanged (a second exchange is a reuse).
    #[serde(default)]
    pub used_at: Option<u64>,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

/// A browser session opened with a one-time `login` link (or the link itself, before it is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub digest: String,
    /// The SSH key name (or `local`) the session acts as, and its role.
    pub key: String,
    pub role: super::Role,
    /// `true` for the one-time link (it becomes a session when opened), `false` for a session.
    pub link: bool,
    pub created_at: u64,
    pub expires_at: u64,
}

/// Lifetimes of what the token endpoint issues, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct TokenLifetimes {
    pub access: u64,
    pub refresh: u64,
}

/// A freshly issued token pair: the only copies of the plaintexts.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub grant: GrantRecord,
}

/// Why the token endpoint refuses a grant (each maps to one RFC 6749 error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantError {
    /// `invalid_grant`, with a description. `revoked` names a grant revoked because of this attempt.
    InvalidGrant { description: String, revoked: Option<Box<GrantRecord>> },
    /// `invalid_target` (RFC 8707): the resource does not match the grant.
    InvalidTarget(String),
}

fn invalid(description: impl Into<String>) -> GrantError {
    GrantError::InvalidGrant { description: description.into(), revoked: None }
}

/// The outcome of checking an access token for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCheck {
    Valid {
        grant: Box<GrantRecord>,
        token_id: String,
    },
    /// Malformed, unknown, expired, revoked, or issued for another resource.
    Invalid,
}

/// `prefix` + random id + random secret, and the id.
fn mint(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; ID_LEN / 2 + SECRET_LEN / 2];
    rand::rng().fill_bytes(&mut bytes);
    let hex = hex::encode(bytes);
    (hex[..ID_LEN].to_string(), format!("{prefix}{hex}"))
}

/// The id inside a presented secret of the expected shape.
fn id_of<'a>(presented: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = presented.strip_prefix(prefix)?;
    (rest.len() == ID_LEN + SECRET_LEN
        && rest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| &rest[..ID_LEN])
}

pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn same(presented: &str, stored_digest: &str) -> bool {
    digest(presented).as_bytes().ct_eq(stored_digest.as_bytes()).into()
}

/// A fresh secret with `prefix` (a client secret): random id and secret, one string.
pub fn secret(prefix: &str) -> String {
    mint(prefix).1
}

/// A random id with a prefix, for grants (`g_…`) and requests.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

impl Store {
    // ---- clients ------------------------------------------------------------------------------

    pub fn oauth_client(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        self.get(CLIENTS, client_id)
    }

    pub fn put_oauth_client(&self, client: &ClientRecord) -> Result<()> {
        self.put(CLIENTS, &client.client_id, client)
    }

    /// Removes clients older than `min_age` seconds that no grant names (registrations that never led to an
    /// approval). Returns how many were removed.
    pub fn prune_oauth_clients(&self, min_age: u64) -> Result<usize> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut used = std::collections::HashSet::new();
            for entry in txn.open_table(GRANTS)?.iter()? {
                let (k, v) = entry?;
                used.insert(decode::<GrantRecord>(k.value(), v.value())?.client_id);
            }
            let mut clients = txn.open_table(CLIENTS)?;
            let before = clients.len()?;
            let cutoff = now().saturating_sub(min_age);
            clients.retain(|id, v| {
                used.contains(id)
                    || serde_json::from_slice::<ClientRecord>(v)
                        .map(|c| c.created_at > cutoff)
                        .unwrap_or(false)
            })?;
            (before - clients.len()?) as usize
        };
        txn.commit()?;
        Ok(removed)
    }

    pub fn oauth_client_count(&self) -> Result<usize> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CLIENTS)?.len()? as usize)
    }

    // ---- authorization requests ---------------------------------------------------------------

    /// The unexpired request with these parameters, if any.
    pub fn auth_request_by_params(&self, params_digest: &str) -> Result<Option<AuthRequest>> {
        let at = now();
        let all: Vec<AuthRequest> = self.list(REQUESTS)?;
        Ok(all.into_iter().find(|r| r.params_digest == params_digest && r.expires_at > at))
    }

    pub fn auth_request(&self, id: &str) -> Result<Option<AuthRequest>> {
        self.get(REQUESTS, id)
    }

    /// Stores a new request, dropping expired ones (and the oldest beyond [`MAX_PENDING`]).
    pub fn put_auth_request(&self, request: &AuthRequest) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REQUESTS)?;
            let at = now();
            // A request is kept a while after it expires so a late code exchange still finds it (and a
            // reused code still revokes its grant); the code itself has its own, shorter, expiry.
            table.retain(|_, v| {
                serde_json::from_slice::<AuthRequest>(v).map(|r| r.expires_at + 3600 > at).unwrap_or(false)
            })?;
            if table.len()? as usize >= MAX_PENDING {
                let mut all = Vec::new();
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    let r: AuthRequest = decode(k.value(), v.value())?;
                    all.push((r.created_at, r.id));
                }
                all.sort();
                for (_, id) in all.iter().take(all.len() + 1 - MAX_PENDING) {
                    table.remove(id.as_str())?;
                }
            }
            table.insert(request.id.as_str(), encode(request).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The unexpired, unanswered request whose approval code has this digest.
    pub fn auth_request_by_approval(&self, approval_digest: &str) -> Result<Option<AuthRequest>> {
        let at = now();
        let all: Vec<AuthRequest> = self.list(REQUESTS)?;
        Ok(all.into_iter().find(|r| {
            bool::from(r.approval_digest.as_bytes().ct_eq(approval_digest.as_bytes()))
                && r.expires_at > at
                && !r.answered()
        }))
    }

    /// Approves request `id` as `who`: creates its grant. Refuses a request that is expired, answered,
    /// or already approved.
    pub fn approve_auth_request(&self, id: &str, who: &str) -> Result<(AuthRequest, GrantRecord)> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut requests = txn.open_table(REQUESTS)?;
            let mut request: AuthRequest = match requests.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Err(StoreError::NotFound("no such authorization request".into())),
            };
            if request.expires_at <= now() || request.answered() {
                return Err(StoreError::Conflict(
                    "this authorization request has expired or was already answered; start again from the client"
                        .into(),
                ));
            }
            if request.approved_by.is_some() {
                return Err(StoreError::Conflict("this authorization request is already approved".into()));
            }
            let grant = GrantRecord {
                id: random_id("g_", 8),
                app: request.app.clone(),
                resource: request.resource.clone(),
                client_id: request.client_id.clone(),
                client_name: request.client_name.clone(),
                redirect_uri: request.redirect_uri.clone(),
                scope: request.scope.clone(),
                approved_by: who.to_string(),
                created_at: now(),
                last_used_at: None,
                revoked_at: None,
                revoked_reason: None,
            };
            request.approved_by = Some(who.to_string());
            request.grant_id = Some(grant.id.clone());
            requests.insert(id, encode(&request).as_slice())?;
            txn.open_table(GRANTS)?.insert(grant.id.as_str(), encode(&grant).as_slice())?;
            (request, grant)
        };
        txn.commit()?;
        Ok(out)
    }

    /// Marks request `id` denied by `who` (the client gets `access_denied`).
    pub fn deny_auth_request(&self, id: &str, who: &str) -> Result<AuthRequest> {
        let txn = self.db.begin_write()?;
        let request = {
            let mut requests = txn.open_table(REQUESTS)?;
            let mut request: AuthRequest = match requests.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Err(StoreError::NotFound("no such authorization request".into())),
            };
            if request.answered() || request.approved_by.is_some() {
                return Err(StoreError::Conflict("this authorization request was already answered".into()));
            }
            request.denied_by = Some(who.to_string());
            requests.insert(id, encode(&request).as_slice())?;
            request
        };
        txn.commit()?;
        Ok(request)
    }

    /// Issues the authorization code of an approved request, once. Returns the code's plaintext, or
    /// `None` when the request is not approved or already has its code.
    pub fn issue_code(&self, id: &str, lifetime: u64) -> Result<Option<(String, AuthRequest)>> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut requests = txn.open_table(REQUESTS)?;
            let mut request: AuthRequest = match requests.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Ok(None),
            };
            if request.approved_by.is_none() || request.answered() {
                return Ok(None);
            }
            let (_, secret) = mint("");
            let code = format!("{CODE_PREFIX}{}{}", request.id, &secret[ID_LEN..]);
            request.code_digest = Some(digest(&code));
            request.code_expires_at = Some(now() + lifetime);
            requests.insert(id, encode(&request).as_slice())?;
            Some((code, request))
        };
        txn.commit()?;
        Ok(out)
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3 with PKCE, RFC 7636): the code must be this
    /// client's, unused, unexpired, for this redirect URI, and `verifier_ok` must accept the request's
    /// challenge. A second use of a code revokes the grant it created.
    pub fn exchange_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        resource: Option<&str>,
        verifier_ok: impl FnOnce(&str) -> bool,
        lifetimes: TokenLifetimes,
    ) -> Result<std::result::Result<IssuedTokens, GrantError>> {
        let Some(rest) = code.strip_prefix(CODE_PREFIX) else { return Ok(Err(invalid("unknown code"))) };
        let Some(id) = rest.get(..ID_LEN) else { return Ok(Err(invalid("unknown code"))) };
        let txn = self.db.begin_write()?;
        let result = {
            let mut requests = txn.open_table(REQUESTS)?;
            let mut request: AuthRequest = match requests.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Ok(Err(invalid("the authorization code is unknown"))),
            };
            let matches = request.code_digest.as_deref().is_some_and(|d| same(code, d));
            if !matches {
                return Ok(Err(invalid("the authorization code is unknown")));
            }
            let mut grants = txn.open_table(GRANTS)?;
            let grant_id = request.grant_id.clone().unwrap_or_default();
            let mut grant: GrantRecord = match grants.get(grant_id.as_str())? {
                Some(v) => decode(&grant_id, v.value())?,
                None => return Ok(Err(invalid("the grant of this code no longer exists"))),
            };
            if request.code_used {
                // RFC 6749 §4.1.2: a code used twice revokes what it issued.
                let revoked = revoke_grant_in(&mut grants, &mut grant, "authorization code reused")?;
                drop(grants);
                drop(requests);
                txn.commit()?;
                return Ok(Err(GrantError::InvalidGrant {
                    description: "the authorization code was already used; the grant it created is revoked"
                        .into(),
                    revoked: revoked.then(|| Box::new(grant)),
                }));
            }
            request.code_used = true;
            requests.insert(id, encode(&request).as_slice())?;
            if request.code_expires_at.is_none_or(|e| e <= now()) {
                Err(invalid("the authorization code has expired; start the authorization again"))
            } else if request.client_id != client_id {
                Err(invalid("the authorization code was issued to another client"))
            } else if redirect_uri != Some(request.redirect_uri.as_str()) {
                Err(invalid("redirect_uri does not match the one of the authorization request"))
            } else if grant.revoked_at.is_some() {
                Err(invalid("the grant was revoked"))
            } else if !verifier_ok(&request.code_challenge) {
                Err(invalid("code_verifier does not match the code_challenge (PKCE S256)"))
            } else if resource.is_some_and(|r| r != request.resource) {
                Err(GrantError::InvalidTarget(format!(
                    "resource must be {} (the resource this code was issued for)",
                    request.resource
                )))
            } else {
                grant.last_used_at = Some(now());
                grants.insert(grant.id.as_str(), encode(&grant).as_slice())?;
                let mut tokens = txn.open_table(OAUTH_TOKENS)?;
                Ok(issue_pair(&mut tokens, grant, lifetimes)?)
            }
        };
        txn.commit()?;
        Ok(result)
    }

    /// Exchanges a refresh token for a new pair (rotation). A refresh token presented a second time is a
    /// reuse: the whole grant is revoked (every access and refresh token of it).
    pub fn refresh(
        &self,
        presented: &str,
        client_id: &str,
        resource: Option<&str>,
        lifetimes: TokenLifetimes,
    ) -> Result<std::result::Result<IssuedTokens, GrantError>> {
        let Some(id) = id_of(presented, REFRESH_PREFIX) else {
            return Ok(Err(invalid("unknown refresh token")));
        };
        let txn = self.db.begin_write()?;
        let result = {
            let mut tokens = txn.open_table(OAUTH_TOKENS)?;
            let mut token: OAuthTokenRecord = match tokens.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Ok(Err(invalid("unknown refresh token"))),
            };
            if token.kind != TokenKind::Refresh || !same(presented, &token.digest) {
                return Ok(Err(invalid("unknown refresh token")));
            }
            let mut grants = txn.open_table(GRANTS)?;
            let mut grant: GrantRecord = match grants.get(token.grant_id.as_str())? {
                Some(v) => decode(&token.grant_id, v.value())?,
                None => return Ok(Err(invalid("the grant of this refresh token no longer exists"))),
            };
            if grant.client_id != client_id {
                return Ok(Err(invalid("the refresh token was issued to another client")));
            }
            if token.used_at.is_some() {
                let revoked = revoke_grant_in(&mut grants, &mut grant, "refresh token reused")?;
                drop(grants);
                drop(tokens);
                txn.commit()?;
                return Ok(Err(GrantError::InvalidGrant {
                    description:
                        "the refresh token was already used; the whole grant is revoked (sign in again)"
                            .into(),
                    revoked: revoked.then(|| Box::new(grant)),
                }));
            }
            if grant.revoked_at.is_some() || token.revoked_at.is_some() {
                return Ok(Err(invalid("the grant was revoked")));
            }
            if token.expires_at <= now() {
                return Ok(Err(invalid("the refresh token has expired; authorize again")));
            }
            if resource.is_some_and(|r| r != grant.resource) {
                return Ok(Err(GrantError::InvalidTarget(format!(
                    "resource must be {} (the resource of this grant)",
                    grant.resource
                ))));
            }
            token.used_at = Some(now());
            tokens.insert(id, encode(&token).as_slice())?;
            grant.last_used_at = Some(now());
            grants.insert(grant.id.as_str(), encode(&grant).as_slice())?;
            Ok(issue_pair(&mut tokens, grant, lifetimes)?)
        };
        txn.commit()?;
        Ok(result)
    }

    /// Checks an access token for the endpoint `resource` of `app`.
    pub fn check_access_token(&self, app: &str, resource: &str, presented: &str) -> Result<AccessCheck> {
        let Some(id) = id_of(presented, ACCESS_PREFIX) else { return Ok(AccessCheck::Invalid) };
        let txn = self.db.begin_read()?;
        let tokens = txn.open_table(OAUTH_TOKENS)?;
        let token: OAuthTokenRecord = match tokens.get(id)? {
            Some(v) => decode(id, v.value())?,
            None => return Ok(AccessCheck::Invalid),
        };
        if token.kind != TokenKind::Access
            || !same(presented, &token.digest)
            || token.revoked_at.is_some()
            || token.expires_at <= now()
        {
            return Ok(AccessCheck::Invalid);
        }
        let grants = txn.open_table(GRANTS)?;
        let grant: GrantRecord = match grants.get(token.grant_id.as_str())? {
            Some(v) => decode(&token.grant_id, v.value())?,
            None => return Ok(AccessCheck::Invalid),
        };
        if grant.revoked_at.is_some() || grant.app != app || grant.resource != resource {
            return Ok(AccessCheck::Invalid);
        }
        Ok(AccessCheck::Valid { grant: Box::new(grant), token_id: token.id })
    }

    /// RFC 7009: revokes a token presented by `client_id`. A refresh token revokes its whole grant, an
    /// access token only itself. Unknown tokens and other clients' tokens change nothing. Returns the
    /// grant touched, and whether the whole grant was revoked.
    pub fn revoke_oauth_token(
        &self,
        presented: &str,
        client_id: &str,
    ) -> Result<Option<(GrantRecord, bool)>> {
        let (id, kind) = match (id_of(presented, ACCESS_PREFIX), id_of(presented, REFRESH_PREFIX)) {
            (Some(id), _) => (id, TokenKind::Access),
            (_, Some(id)) => (id, TokenKind::Refresh),
            _ => return Ok(None),
        };
        let txn = self.db.begin_write()?;
        let out = {
            let mut tokens = txn.open_table(OAUTH_TOKENS)?;
            let mut token: OAuthTokenRecord = match tokens.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Ok(None),
            };
            if token.kind != kind || !same(presented, &token.digest) {
                return Ok(None);
            }
            let mut grants = txn.open_table(GRANTS)?;
            let mut grant: GrantRecord = match grants.get(token.grant_id.as_str())? {
                Some(v) => decode(&token.grant_id, v.value())?,
                None => return Ok(None),
            };
            if grant.client_id != client_id {
                return Ok(None);
            }
            if kind == TokenKind::Refresh {
                revoke_grant_in(&mut grants, &mut grant, "revoked by the client (RFC 7009)")?;
                Some((grant, true))
            } else {
                token.revoked_at = Some(now());
                tokens.insert(id, encode(&token).as_slice())?;
                Some((grant, false))
            }
        };
        txn.commit()?;
        Ok(out)
    }

    // ---- grants -------------------------------------------------------------------------------

    /// Grants of `app`, oldest first (revoked ones included).
    pub fn grants(&self, app: &str) -> Result<Vec<GrantRecord>> {
        let mut all: Vec<GrantRecord> = self.list(GRANTS)?;
        all.retain(|g| g.app == app);
        all.sort_by_key(|g| (g.created_at, g.id.clone()));
        Ok(all)
    }

    /// Revokes grant `id` of `app` (every token of it stops working at once).
    pub fn revoke_grant(&self, app: &str, id: &str, reason: &str) -> Result<GrantRecord> {
        let txn = self.db.begin_write()?;
        let grant = {
            let mut grants = txn.open_table(GRANTS)?;
            let mut grant: GrantRecord = match grants.get(id)? {
                Some(v) => decode(id, v.value())?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "no grant {id:?} for app {app} (see `grants list {app}`)"
                    )));
                }
            };
            if grant.app != app {
                return Err(StoreError::NotFound(format!(
                    "no grant {id:?} for app {app} (see `grants list {app}`)"
                )));
            }
            if !revoke_grant_in(&mut grants, &mut grant, reason)? {
                return Err(StoreError::Conflict(format!("grant {id} of {app} is already revoked")));
            }
            grant
        };
        txn.commit()?;
        Ok(grant)
    }

    // ---- browser sessions ---------------------------------------------------------------------

    /// Mints a one-time sign-in link secret for `key` (valid `lifetime` seconds).
    pub fn create_login_link(&self, key: &str, role: super::Role, lifetime: u64) -> Result<String> {
        let (id, secret) = mint(LOGIN_PREFIX);
        let record = SessionRecord {
            id: id.clone(),
            digest: digest(&secret),
            key: key.to_string(),
            role,
            link: true,
            created_at: now(),
            expires_at: now() + lifetime,
        };
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SESSIONS)?;
            let at = now();
            table.retain(|_, v| {
                serde_json::from_slice::<SessionRecord>(v).map(|s| s.expires_at > at).unwrap_or(false)
            })?;
            if table.len()? as usize >= MAX_PENDING {
                return Err(StoreError::Conflict(
                    "too many open sign-in links and sessions; try later".into(),
                ));
            }
            table.insert(id.as_str(), encode(&record).as_slice())?;
        }
        txn.commit()?;
        Ok(secret)
    }

    /// Spends a one-time link and opens a session (valid `lifetime` seconds) in its place.
    pub fn open_session(&self, link: &str, lifetime: u64) -> Result<Option<(String, SessionRecord)>> {
        let Some(id) = id_of(link, LOGIN_PREFIX) else { return Ok(None) };
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(SESSIONS)?;
            let record: SessionRecord = match table.remove(id)? {
                Some(v) => decode(id, v.value())?,
                None => return Ok(None),
            };
            if !record.link || !same(link, &record.digest) || record.expires_at <= now() {
                // A wrong secret for a real id spends nothing: put the link back.
                if record.link && !same(link, &record.digest) {
                    table.insert(id, encode(&record).as_slice())?;
                }
                drop(table);
                txn.commit()?;
                return Ok(None);
            }
            let (sid, secret) = mint(SESSION_PREFIX);
            let session = SessionRecord {
                id: sid.clone(),
                digest: digest(&secret),
                link: false,
                created_at: now(),
                expires_at: now() + lifetime,
                ..record
            };
            table.insert(sid.as_str(), encode(&session).as_slice())?;
            Some((secret, session))
        };
        txn.commit()?;
        Ok(out)
    }

    /// The live browser session with this secret.
    pub fn session(&self, presented: &str) -> Result<Option<SessionRecord>> {
        let Some(id) = id_of(presented, SESSION_PREFIX) else { return Ok(None) };
        let Some(record) = self.get::<SessionRecord>(SESSIONS, id)? else { return Ok(None) };
        Ok((!record.link && same(presented, &record.digest) && record.expires_at > now()).then_some(record))
    }
}

/// Marks `grant` revoked and revokes its tokens' use (access checks read the grant). `false` when it
/// was already revoked.
fn revoke_grant_in(
    grants: &mut redb::Table<&str, &[u8]>,
    grant: &mut GrantRecord,
    reason: &str,
) -> Result<bool> {
    if grant.revoked_at.is_some() {
        return Ok(false);
    }
    grant.revoked_at = Some(now());
    grant.revoked_reason = Some(reason.to_string());
    grants.insert(grant.id.as_str(), encode(&*grant).as_slice())?;
    Ok(true)
}

fn issue_pair(
    tokens: &mut redb::Table<&str, &[u8]>,
    grant: GrantRecord,
    lifetimes: TokenLifetimes,
) -> Result<IssuedTokens> {
    let at = now();
    // Spent refresh tokens and expired tokens of any grant are dropped as new ones are issued: a spent
    // refresh token is kept until it expires, so its reuse is still recognised.
    tokens.retain(|_, v| {
        serde_json::from_slice::<OAuthTokenRecord>(v).map(|t| t.expires_at > at).unwrap_or(false)
    })?;
    let mut issue = |prefix: &str, kind: TokenKind, lifetime: u64| -> Result<String> {
        let (id, secret) = loop {
            let (id, secret) = mint(prefix);
            if tokens.get(id.as_str())?.is_none() {
                break (id, secret);
            }
        };
        let record = OAuthTokenRecord {
            id: id.clone(),
            kind,
            grant_id: grant.id.clone(),
            digest: digest(&secret),
            created_at: at,
            expires_at: at + lifetime,
            used_at: None,
            revoked_at: None,
        };
        tokens.insert(id.as_str(), encode(&record).as_slice())?;
        Ok(secret)
    };
    let access_token = issue(ACCESS_PREFIX, TokenKind::Access, lifetimes.access)?;
    let refresh_token = issue(REFRESH_PREFIX, TokenKind::Refresh, lifetimes.refresh)?;
    Ok(IssuedTokens { access_token, refresh_token, expires_in: lifetimes.access, grant })
}

/// Removes every grant of `app`, their tokens and its pending authorization requests, inside the
/// `apps destroy` transaction (a re-created app of the same name inherits nothing).
pub(super) fn delete_app_in(txn: &redb::WriteTransaction, app: &str) -> Result<()> {
    let mut grants = txn.open_table(GRANTS)?;
    let mut ids = std::collections::HashSet::new();
    for entry in grants.iter()? {
        let (k, v) = entry?;
        let g: GrantRecord = decode(k.value(), v.value())?;
        if g.app == app {
            ids.insert(g.id);
        }
    }
    grants.retain(|k, _| !ids.contains(k))?;
    let mut tokens = txn.open_table(OAUTH_TOKENS)?;
    tokens.retain(|_, v| {
        serde_json::from_slice::<OAuthTokenRecord>(v).map(|t| !ids.contains(&t.grant_id)).unwrap_or(true)
    })?;
    let mut requests = txn.open_table(REQUESTS)?;
    requests.retain(|_, v| serde_json::from_slice::<AuthRequest>(v).map(|r| r.app != app).unwrap_or(true))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, created_at: u64) -> ClientRecord {
        ClientRecord {
            client_id: id.into(),
            client_name: id.into(),
            redirect_uris: vec!["http://127.0.0.1:9/cb".into()],
            auth_method: "none".into(),
            secret_digest: None,
            created_at,
            metadata_document: false,
            client_uri: None,
        }
    }

    #[test]
    fn pruning_keeps_clients_with_grants_and_young_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let old = now() - 10 * 24 * 3600;
        for c in [client("c_old_unused", old), client("c_old_granted", old), client("c_young", now())] {
            store.put_oauth_client(&c).unwrap();
        }
        let grant = GrantRecord {
            id: "g_1".into(),
            app: "a".into(),
            resource: "http://h/mcp/a".into(),
            client_id: "c_old_granted".into(),
            client_name: "x".into(),
            redirect_uri: "http://127.0.0.1:9/cb".into(),
            scope: None,
            approved_by: "admin".into(),
            created_at: old,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
        };
        store.put(GRANTS, &grant.id, &grant).unwrap();
        assert_eq!(store.prune_oauth_clients(24 * 3600).unwrap(), 1);
        assert!(store.oauth_client("c_old_unused").unwrap().is_none());
        assert!(store.oauth_client("c_old_granted").unwrap().is_some());
        assert!(store.oauth_client("c_young").unwrap().is_some());
    }
}
