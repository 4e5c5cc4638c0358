//! The daemon's side of the gateway's access traits: tokens checked against the store, and audit
//! records batch-written to it.
//!
//! Tokens are verified on every request, so verification is a single redb read plus a SHA-256 and a
//! constant-time compare. Audit records never block a request: they go through a bounded channel to a
//! writer task that commits them in batches (one fsync for many calls).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::{AuditEvent, AuditSink, AuthError, AuthMode, Authenticator, TokenIdentity};
use crate::store::{AuditRecord, Store, now};

/// Bearer tokens from the store, scoped to one app each: `tokens create` tokens and OAuth access tokens
/// (audience-checked against `{public_url}/mcp/APP`; see `oauth::resource`).
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
        crate::oauth::resource::check(&self.store, &self.public_url, app, bearer, mode)
    }

    fn challenge(&self, app: &str, mode: AuthMode, error: &AuthError) -> String {
        crate::oauth::resource::challenge(&self.public_url, app, mode, error)
    }
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
