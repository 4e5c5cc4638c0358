//! HTTPS for the gateway: certificates from operator-managed PEM files (hot-reloaded) or from an ACME
//! CA (obtained and renewed automatically), served with rustls (aws-lc-rs, the binary's one crypto
//! provider), TLS 1.2+ only, HTTP/2 and HTTP/1.1 by ALPN, HSTS, and an optional plain-HTTP listener that
//! only redirects (and answers ACME HTTP-01 challenges).
//!
//! Use from a server (the daemon or `catwalk bridge`):
//! ```ignore
//! let tls = TlsRuntime::new(tls_config.resolve(data_dir).map_err(anyhow::Error::msg)?)?; // checks files / ACME cache
//! let https = TcpListener::bind(addr).await?;                       // bind before start():
//! let redirect = match tls.redirect_listen() { ... bind ... };      //   the CA may connect right away
//! tls.start(shutdown.clone())?;                                     // file watcher or ACME task
//! tokio::spawn(serve_redirect(redirect, tls.clone(), https_port, shutdown.clone()));
//! serve_https(https, tls, make_service /* see bridge.rs */, limits, shutdown).await?;
//! ```

mod acme;
mod certs;
pub mod config;
mod reload;
mod resolver;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

pub use acme::{Challenge, renewal_time};
pub use certs::{CertError, CertInfo, httpdate, load_files};
pub use config::{AcmeConfig, AcmeSettings, CertSource, TlsConfig, TlsSettings};
pub use resolver::{ACME_TLS_ALPN, CertStore, EXPIRY_GAUGE};
pub use serve::{Limits, serve_https, serve_redirect};

/// The TLS side of a running server: the certificate store, the rustls configuration and the
/// settings. Cheap to clone.
#[derive(Clone)]
pub struct TlsRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    settings: TlsSettings,
    store: Arc<CertStore>,
    server_config: Arc<ServerConfig>,
}

impl TlsRuntime {
    /// Checks the certificate files (expired, not yet valid, unreadable, key not matching → an error
    /// naming the file and the problem) or loads the ACME cache, and builds the rustls configuration.
    /// Starts nothing: call [`TlsRuntime::start`] once the listeners are bound.
    pub fn new(settings: TlsSettings) -> anyhow::Result<TlsRuntime> {
        let store = Arc::new(CertStore::default());
        let mut alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        match &settings.source {
            CertSource::Files { cert, key } => {
                let loaded = certs::load_files(cert, key).context("invalid TLS certificate")?;
                tracing::info!(
                    "TLS certificate from {}: {} serial {} valid until {}",
                    cert.display(),
                    loaded.info.subject,
                    loaded.info.serial,
                    httpdate(loaded.info.not_after)
                );
                store.set(loaded);
            }
            CertSource::Acme(acme) => {
                if let Some(ca) = &acme.ca_bundle {
                    std::fs::metadata(ca).with_context(|| {
                        format!("[http.tls.acme] ca_bundle {}: cannot read it", ca.display())
                    })?;
                }
                // An unwritable cache would only show up after the CA issued a certificate: fail now.
                acme::create_private_dir(&acme.cache_dir)?;
                if let Some(cached) = acme::load_cached(acme) {
                    tracing::info!(
                        "ACME: serving the cached certificate for {} (serial {}, valid until {})",
                        cached.info.names.join(", "),
                        cached.info.serial,
                        httpdate(cached.info.not_after)
                    );
                    store.set(cached);
                }
                alpn.push(ACME_TLS_ALPN.to_vec());
            }
        }
        let mut server_config = ServerConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("configuring TLS 1.2 and 1.3")?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server_config.alpn_protocols = alpn;
        Ok(TlsRuntime { inner: Arc::new(Inner { settings, store, server_config: Arc::new(server_config) }) })
    }

    /// Start the background work until `shutdown`: the file watcher (files) or the ACME task.
    /// Bind the HTTPS listener (and the redirect listener for HTTP-01) first: the CA validates as soon
    /// as the order is placed.
    pub fn start(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let store = self.inner.store.clone();
        // `new` may have run before the metrics recorder was installed.
        store.publish();
        match &self.inner.settings.source {
            CertSource::Files { cert, key } => reload::spawn(cert.clone(), key.clone(), store, shutdown),
            CertSource::Acme(acme) => {
                acme::spawn(acme.clone(), self.challenge().unwrap_or(Challenge::TlsAlpn01), store, shutdown);
                Ok(())
            }
        }
    }

    /// The ACME challenge in use: HTTP-01 when the redirect listener is configured, else TLS-ALPN-01
    /// (`None` for certificate files).
    pub fn challenge(&self) -> Option<Challenge> {
        match &self.inner.settings.source {
            CertSource::Files { .. } => None,
            CertSource::Acme(_) if self.inner.settings.redirect_listen.is_some() => Some(Challenge::Http01),
            CertSource::Acme(_) => Some(Challenge::TlsAlpn01),
        }
    }

    /// The rustls configuration (TLS 1.2+, ALPN `h2`, `http/1.1`, plus `acme-tls/1` with ACME).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server_config.clone()
    }

    /// Subject, serial and validity of the certificate being served; `None` while ACME has not
    /// obtained one yet. For `info`; the `catwalk_tls_cert_expiry_seconds` gauge carries `not_after`.
    pub fn cert_info(&self) -> Option<CertInfo> {
        self.inner.store.info()
    }

    /// Whether `Strict-Transport-Security` is sent.
    pub fn hsts(&self) -> bool {
        self.inner.settings.hsts
    }

    /// The configured plain-HTTP redirect listener address.
    pub fn redirect_listen(&self) -> Option<SocketAddr> {
        self.inner.settings.redirect_listen
    }

    /// The certificate store (challenge responses for the redirect listener).
    pub fn store(&self) -> &CertStore {
        &self.inner.store
    }
}
