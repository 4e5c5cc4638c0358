//! The daemon's side of the gateway's access traits: tokens checked against the store, and audit
//! records batch-written to it.
//!
//! Tokens are verified on every request, so verification is a single redb read plus a SHA-256 and a
//! constant-time compare. Audit records never block a request: they go through a bounded channel to a
//! writer task that commits them in batches (one fsync for many calls).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::gateway::{AuditEvent, AuditSink, AuthError, Authenticator, TokenIdentity};
use crate::store::{AuditRecord, Store, TokenCheck, now};

/// Bearer tokens from the store, scoped to one app each.
pub struct StoreAuthenticator {
    pub store: Store,
}

impl Authenticator for StoreAuthenticator {
    fn authenticate(&self, app: &str, bearer: Option<&str>) -> Result<TokenIdentity, AuthError> {
        let bearer = bearer.ok_or(AuthError::Missing)?;
        match self.store.check_token(app, bearer) {
            Ok(TokenCheck::Valid(t)) => Ok(TokenIdentity { token_id: t.id, token_name: t.name }),
            Ok(_) => Err(AuthError::Invalid),
            Err(e) => {
                tracing::error!("token check failed: {e}");
                Err(AuthError::Invalid)
            }
        }
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
