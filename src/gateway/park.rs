//! Parked exchanges and the `requestState` that resumes them (the 2026-07-28 input_required bridge).
//!
//! A legacy child that asked its client for input is kept waiting, its exchange parked here, while the
//! client gathers the answers and retries. The retry carries back the `requestState` the gateway handed out:
//! an opaque handle plus an HMAC-SHA256 over the handle, an expiry, the app, the authorization context and a
//! digest of the call. Why both a MAC and a table: the MAC rejects forged or altered state (and state of
//! another app, token or call) before anything is looked up; the table makes state single-use (a replay
//! finds nothing) and keeps the process that waits. State never reaches a child.
//!
//! Hand-written on `hmac`/`sha2` rather than a JWT crate: the token never leaves this process's own
//! round trip (it is not a bearer credential anyone else verifies), so a MAC over fixed fields is all
//! that is needed and there is no format to negotiate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::exchange::Exchange;

type HmacSha256 = Hmac<Sha256>;

/// Why a `requestState` was refused. Every case is the client's problem; none says more than needed.
#[derive(Debug, PartialEq, Eq)]
pub enum StateError {
    /// Not ours, altered, or for another app, token or call.
    Invalid,
    /// Ours, but past its expiry (the waiting process was recycled).
    Expired,
    /// Ours and valid, but already used (or its process went away).
    Spent,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateError::Invalid => {
                "requestState is not valid for this call: send the requestState of the input_required result \
                 byte for byte, with the same request and credential"
            }
            StateError::Expired => {
                "requestState has expired: the server stopped waiting for the input; call the tool again"
            }
            StateError::Spent => "requestState was already used: call the tool again",
        })
    }
}

struct Waiting {
    app: String,
    expires: SystemTime,
    exchange: Exchange,
}

/// The parked exchanges of one gateway and the key that seals their state.
pub struct Parking {
    key: [u8; 32],
    waiting: Mutex<HashMap<[u8; 16], Waiting>>,
}

impl Default for Parking {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Parking { key, waiting: Mutex::new(HashMap::new()) }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Parking {
    fn mac(
        &self,
        handle: &[u8; 16],
        expires: u64,
        app: &str,
        context: &str,
        digest: &[u8; 32],
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(handle);
        mac.update(&expires.to_be_bytes());
        mac.update(&Sha256::digest(app.as_bytes()));
        mac.update(&Sha256::digest(context.as_bytes()));
        mac.update(digest);
        mac
    }

    /// Parks `exchange` for `ttl` and returns the `requestState` that resumes it.
    pub fn park(&self, exchange: Exchange, app: &str, context: &str, ttl: Duration) -> String {
        let mut handle = [0u8; 16];
        rand::rng().fill_bytes(&mut handle);
        let expires_at = SystemTime::now() + ttl;
        let expires = unix(expires_at);
        let tag = self.mac(&handle, expires, app, context, &exchange.digest).finalize().into_bytes();
        let mut payload = handle.to_vec();
        payload.extend_from_slice(&expires.to_be_bytes());
        self.lock().insert(handle, Waiting { app: app.to_string(), expires: expires_at, exchange });
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The parked exchange `state` names, if the state is genuine, unexpired, unused, and presented for the
    /// same app, authorization context and call (`digest`). Taking it spends the state.
    pub fn resume(
        &self,
        state: &str,
        app: &str,
        context: &str,
        digest: &[u8; 32],
    ) -> Result<Exchange, StateError> {
        let (payload, tag) = state.split_once('.').ok_or(StateError::Invalid)?;
        let payload = B64.decode(payload).map_err(|_| StateError::Invalid)?;
        let tag = B64.decode(tag).map_err(|_| StateError::Invalid)?;
        if payload.len() != 24 {
            return Err(StateError::Invalid);
        }
        let handle: [u8; 16] = payload[..16].try_into().map_err(|_| StateError::Invalid)?;
        let expires = u64::from_be_bytes(payload[16..].try_into().map_err(|_| StateError::Invalid)?);
        // Constant-time comparison (`verify_slice`).
        self.mac(&handle, expires, app, context, digest)
            .verify_slice(&tag)
            .map_err(|_| StateError::Invalid)?;
        if unix(SystemTime::now()) >= expires {
            self.lock().remove(&handle);
            return Err(StateError::Expired);
        }
        self.lock().remove(&handle).map(|w| w.exchange).ok_or(StateError::Spent)
    }

    /// The reaper's pass: exchanges nobody came back for are dropped, which cancels their call and stops the
    /// waiting process. Returns how many.
    pub fn expire(&self) -> usize {
        let now = SystemTime::now();
        let expired: Vec<Waiting> = {
            let mut map = self.lock();
            let keys: Vec<[u8; 16]> = map.iter().filter(|(_, w)| w.expires <= now).map(|(k, _)| *k).collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        expired.len()
    }

    /// Drops the parked exchanges of `app` (redeploy, restart, destroy): their processes stop now.
    pub fn drop_app(&self, app: &str) {
        let gone: Vec<Waiting> = {
            let mut map = self.lock();
            let keys: Vec<[u8; 16]> = map.iter().filter(|(_, w)| w.app == app).map(|(k, _)| *k).collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        drop(gone);
    }

    /// Drops every parked exchange (shutdown).
    pub fn clear(&self) {
        let all: Vec<Waiting> = self.lock().drain().map(|(_, w)| w).collect();
        drop(all);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
