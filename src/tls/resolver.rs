//! The certificate the HTTPS listener presents, swapped atomically on reload or renewal.
//!
//! rustls asks [`CertStore`] for a certificate on every handshake, so replacing the current one affects
//! new handshakes only: established connections keep the session they negotiated and are never dropped.
//! The store also answers ACME TLS-ALPN-01 validation handshakes (ALPN `acme-tls/1`) with the
//! per-domain challenge certificate, and keeps the HTTP-01 key authorizations for the redirect listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::{CertInfo, LoadedCert};

/// The ALPN protocol of ACME TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Gauge: Unix time (seconds) at which the certificate being served expires.
pub const EXPIRY_GAUGE: &str = "catwalk_tls_cert_expiry_seconds";

/// The current certificate plus pending ACME challenge responses.
#[derive(Debug, Default)]
pub struct CertStore {
    current: ArcSwapOption<LoadedCert>,
    /// domain → self-signed certificate carrying the acmeIdentifier extension (TLS-ALPN-01).
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// token → key authorization (HTTP-01).
    http_challenges: Mutex<HashMap<String, String>>,
}

impl CertStore {
    /// Serve `cert` from the next handshake on, and publish its expiry.
    pub fn set(&self, cert: LoadedCert) {
        ::metrics::gauge!(EXPIRY_GAUGE).set(cert.info.expiry_unix() as f64);
        self.current.store(Some(Arc::new(cert)));
    }

    /// Publish the expiry gauge again (after a metrics recorder was installed).
    pub fn publish(&self) {
        if let Some(c) = self.current.load().as_ref() {
            ::metrics::gauge!(EXPIRY_GAUGE).set(c.info.expiry_unix() as f64);
        }
    }

    /// Facts about the certificate being served (`None` while ACME has not obtained one yet).
    pub fn info(&self) -> Option<CertInfo> {
        self.current.load().as_ref().map(|c| c.info.clone())
    }

    pub fn set_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut m) = self.alpn_challenges.lock() {
            m.insert(domain.to_ascii_lowercase(), key);
        }
    }

    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        if let Ok(mut m) = self.http_challenges.lock() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
    }

    /// The key authorization for an HTTP-01 token, if a validation is pending.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.lock().ok().and_then(|m| m.get(token).cloned())
    }

    /// Forget every challenge response (after an order finished, successfully or not).
    pub fn clear_challenges(&self) {
        if let Ok(mut m) = self.alpn_challenges.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.http_challenges.lock() {
            m.clear();
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello.alpn().is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // Only a validation server asks for acme-tls/1; it gets the challenge certificate or nothing.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.alpn_challenges.lock().ok()?.get(&name).cloned();
        }
        match self.current.load_full() {
            Some(c) => Some(c.key.clone()),
            None => {
                tracing::warn!(
                    "TLS handshake refused: no certificate yet (ACME has not obtained one; see the log lines above)"
                );
                None
            }
        }
    }
}
