//! The daemon's side of the gateway's access traits: tokens checked against the store (`tokens create`
//! tokens and OAuth access tokens), the 401 challenge that points OAuth clients at the RFC 9728 metadata,
//! and audit records batch-written to the store.
//!
//! An OAuth access token is accepted only on the endpoint it was issued for (its grant's RFC 8707
//! resource is exactly `{public_url}/mcp/APP`), only while it is unexpired and neither it nor its grant is
//! revoked, and only while the app's auth mode is `oauth+token`. The gateway never forwards it (or any
//! `Authorization`) to the app's server.
//!
//! Tokens are verified on every request, so verification is a single redb read plus a SHA-256 and a
//! constant-time compare. Audit records never block a request: they go through a bounded channel to a
//! writer task that commits them in batches (one fsync for many calls).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::{AuditEvent, AuditSink, AuthError, AuthMode, Authenticator, TokenIdentity};
use crate::store::{AccessCheck, AuditRecord, Store, TokenCheck, now, oauth};

/// Bearer tokens from the store, scoped to one app each: `tokens create` tokens and OAuth access tokens
/// (audience-checked against `{public_url}/mcp/APP`).
pub struct StoreAuthenticator {
    pub store: Store,
    /// The daemon's public URL: the OAuth issuer and the base of every endpoint's resource URL.
    pub public_url: String,
}

impl Authenticator for StoreAuthenticator {
    fn authenticate(&self, app: &str, bearer: Option<&str>) -> Result<TokenIdentity, AuthError> {
        self.authenticate_in(app, bearer, AuthMode::default())
    }

    fn authenticate_in(
        &self,
        app: &str,
        bearer: Option<&str>,
        mode: AuthMode,
    ) -> Result<TokenIdentity, AuthError> {
        check(&self.store, &self.public_url, app, bearer, mode)
    }

    fn challenge(&self, app: &str, mode: AuthMode, error: &AuthError) -> String {
        challenge(&self.public_url, app, mode, error)
    }
}

/// Checks `bearer` for `app` under `mode`: `tokens create` tokens always, OAuth access tokens only with
/// `oauth+token`. Errors never say more than "missing" or "invalid".
pub fn check(
    store: &Store,
    issuer: &str,
    app: &str,
    bearer: Option<&str>,
    mode: AuthMode,
) -> Result<TokenIdentity, AuthError> {
    let bearer = bearer.ok_or(AuthError::Missing)?;
    if bearer.starts_with(oauth::ACCESS_PREFIX) {
        if mode != AuthMode::OAuthAndToken {
            return Err(AuthError::Invalid);
        }
        let resource = format!("{issuer}/mcp/{app}");
        return match store.check_access_token(app, &resource, bearer) {
            Ok(AccessCheck::Valid { grant, token_id }) => Ok(TokenIdentity {
                token_id: format!("oauth:{}", grant.id),
                token_name: format!("oauth:{}:{}", grant.id, token_id),
            }),
            Ok(AccessCheck::Invalid) => Err(AuthError::Invalid),
            Err(e) => {
                tracing::error!("access token check failed: {e}");
                Err(AuthError::Invalid)
            }
        };
    }
    match store.check_token(app, bearer) {
        Ok(TokenCheck::Valid(t)) => Ok(TokenIdentity { token_id: t.id, token_name: t.name }),
        Ok(_) => Err(AuthError::Invalid),
        Err(e) => {
            tracing::error!("token check failed: {e}");
            Err(AuthError::Invalid)
        }
    }
}

/// The `WWW-Authenticate` value of a 401 (RFC 6750 §3, RFC 9728 §5.1): with `oauth+token` it names the
/// endpoint's resource metadata, so a client that only knows the URL can discover how to sign in.
pub fn challenge(issuer: &str, app: &str, mode: AuthMode, error: &AuthError) -> String {
    let mut value = "Bearer".to_string();
    let mut params = Vec::new();
    if mode == AuthMode::OAuthAndToken {
        params.push(format!("resource_metadata=\"{issuer}/.well-known/oauth-protected-resource/mcp/{app}\""));
    }
    if *error == AuthError::Invalid {
        params.push("error=\"invalid_token\"".to_string());
        params.push(
            "error_description=\"the token is not valid for this endpoint (wrong, revoked or expired)\""
                .into(),
        );
    }
    if !params.is_empty() {
        value.push(' ');
        value.push_str(&params.join(", "));
    }
    value
}

/// Queues audit events for the batch writer; drops (and counts) them if the queue is full.
pub struct StoreAudit {
    tx: mpsc::Sender<AuditEvent>,
}

const QUEUE: usize = 16_384;
const BATCH: usize = 1024;

impl StoreAudit {
    /// Starts the writer task. It drains the queue every `interval` or every `BATCH` events.
    pub fn start(store: Store, interval: Duration) -> StoreAudit {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                let n = rx.recv_many(&mut buf, BATCH).await;
                if n == 0 {
                    break;
                }
                let mut records: Vec<AuditRecord> = buf.drain(..).map(record).collect();
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.record_audit(&mut records)).await;
                if let Ok(Err(e)) = result {
                    tracing::error!("writing audit records failed: {e}");
                }
                tokio::time::sleep(interval).await;
            }
        });
        StoreAudit { tx }
    }
}

fn record(e: AuditEvent) -> AuditRecord {
    AuditRecord {
        seq: 0,
        at: now(),
        app: e.app,
        token: e.token_name.unwrap_or_default(),
        method: e.method,
        tool: e.tool_name,
        status: e.status,
        error: e.error,
        duration_us: e.duration.as_micros().min(u64::MAX as u128) as u64,
    }
}

impl AuditSink for StoreAudit {
    fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            ::metrics::counter!("catwalk_audit_dropped_total").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            challenge("https://h", "a", AuthMode::OAuthAndToken, &AuthError::Missing),
            "Bearer resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp/a\""
        );
        assert!(
            challenge("https://h", "a", AuthMode::Token, &AuthError::Invalid)
                .starts_with("Bearer error=\"invalid_token\"")
        );
        assert_eq!(challenge("https://h", "a", AuthMode::Token, &AuthError::Missing), "Bearer");
    }
}
