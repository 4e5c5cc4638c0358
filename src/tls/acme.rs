//! Automatic certificates from an ACME CA (Let's Encrypt by default) with instant-acme.
//!
//! One background task per daemon: it serves the cached certificate at once (a restart never waits for
//! the CA), orders a new one when there is none, when it does not cover the configured domains, or when
//! its renewal time has come, and retries failures with exponential backoff. Validation uses
//! TLS-ALPN-01 on the HTTPS port, or HTTP-01 when the plain redirect listener is configured (the
//! challenge responses live in the [`CertStore`], which both listeners consult).
//!
//! Cache layout (`cache_dir`, 0700): one directory per ACME directory URL (so staging and production
//! never mix), holding `account.json` (the account key, 0600), `cert.pem` and `key.pem` (0600).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use backon::BackoffBuilder;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::certs::{self, LoadedCert};
use super::config::AcmeSettings;
use super::resolver::CertStore;

/// When to renew: `renew_before` the expiry if configured and shorter than the lifetime; otherwise when a
/// third of the lifetime remains, and at the latest 30 days before expiry (Let's Encrypt's advice for
/// 90-day certificates; short-lived certificates renew proportionally). A `renew_before` at least as long
/// as the lifetime is ignored: it would renew in a loop.
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let margin = match renew_before {
        Some(rb) if rb < lifetime => rb,
        _ => (lifetime / 3).min(Duration::from_secs(30 * 24 * 3600)),
    };
    not_after.checked_sub(margin).unwrap_or(not_before)
}

/// How the CA is asked to validate control of the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// TLS-ALPN-01: the CA connects to port 443 with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// HTTP-01: the CA fetches `http://DOMAIN/.well-known/acme-challenge/TOKEN` on port 80.
    Http01,
}

/// The per-directory cache folder.
fn cache_dir(settings: &AcmeSettings) -> PathBuf {
    let digest = sha2::Sha256::digest(settings.directory_url.as_bytes());
    let host = settings
        .directory_url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', ':']).next())
        .unwrap_or("acme")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-', "_");
    settings.cache_dir.join(format!("{host}-{}", hex::encode(&digest[..6])))
}

/// The cached certificate, if it is still usable and covers every configured domain.
pub fn load_cached(settings: &AcmeSettings) -> Option<LoadedCert> {
    let dir = cache_dir(settings);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        return None;
    }
    match certs::load_files(&cert, &key) {
        Ok(l) if covers(&l, &settings.domains) => Some(l),
        Ok(l) => {
            tracing::info!(
                "ACME: the cached certificate covers {:?}, not {:?}: ordering a new one",
                l.info.names,
                settings.domains
            );
            None
        }
        Err(e) => {
            tracing::warn!("ACME: ignoring the cached certificate: {e}");
            None
        }
    }
}

fn covers(cert: &LoadedCert, domains: &[String]) -> bool {
    names_cover(&cert.info.names, domains)
}

fn names_cover(names: &[String], domains: &[String]) -> bool {
    domains.iter().all(|d| names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

/// Keep a certificate for `settings.domains` in `store` until `shutdown`.
pub fn spawn(
    settings: AcmeSettings,
    challenge: Challenge,
    store: Arc<CertStore>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut account: Option<Account> = None;
        let mut backoff = retry_backoff();
        loop {
            let wait = match store.info() {
                Some(info) if names_cover(&info.names, &settings.domains) => {
                    let at = renewal_time(info.not_before, info.not_after, settings.renew_before);
                    at.duration_since(SystemTime::now()).unwrap_or_default()
                }
                _ => Duration::ZERO,
            };
            if !wait.is_zero() {
                tracing::info!(
                    "ACME: certificate for {} is valid; renewal scheduled in {}",
                    settings.domains.join(", "),
                    humantime::format_duration(Duration::from_secs(wait.as_secs()))
                );
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep_long(wait) => {}
            }
            tracing::info!(
                "ACME: ordering a certificate for {} from {} ({})",
                settings.domains.join(", "),
                settings.directory_url,
                match challenge {
                    Challenge::TlsAlpn01 => "TLS-ALPN-01 on the HTTPS port",
                    Challenge::Http01 => "HTTP-01 on the redirect listener",
                }
            );
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = issue(&settings, challenge, &store, &mut account) => r,
            };
            store.clear_challenges();
            match result {
                Ok(loaded) => {
                    tracing::info!(
                        "ACME: certificate issued for {}: serial {}, valid until {}, renewal after {}",
                        loaded.info.names.join(", "),
                        loaded.info.serial,
                        certs::httpdate(loaded.info.not_after),
                        certs::httpdate(renewal_time(
                            loaded.info.not_before,
                            loaded.info.not_after,
                            settings.renew_before
                        ))
                    );
                    let lifetime =
                        loaded.info.not_after.duration_since(loaded.info.not_before).unwrap_or_default();
                    if let Some(rb) = settings.renew_before.filter(|rb| *rb >= lifetime) {
                        tracing::warn!(
                            "ACME: renew_before ({}) is not shorter than the certificate lifetime ({}); using the default",
                            humantime::format_duration(rb),
                            humantime::format_duration(lifetime)
                        );
                    }
                    store.set(loaded);
                    backoff = retry_backoff();
                }
                Err(e) => {
                    let delay =
                        Duration::from_secs(backoff.next().unwrap_or(Duration::from_secs(3600)).as_secs());
                    let serving = match store.info() {
                        Some(i) => format!(
                            "the current certificate (valid until {}) keeps serving",
                            certs::httpdate(i.not_after)
                        ),
                        None => "HTTPS handshakes fail until a certificate is obtained".to_string(),
                    };
                    tracing::error!(
                        "ACME: obtaining a certificate for {} failed: {e:#}; {serving}; retrying in {}",
                        settings.domains.join(", "),
                        humantime::format_duration(delay)
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    });
}

/// Retries after 10 s, 20 s, 40 s ... up to 6 h between attempts (CAs rate-limit failed validations).
fn retry_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(10))
        .with_max_delay(Duration::from_secs(6 * 3600))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// `tokio::time::sleep` panics on durations that overflow `Instant`; sleep in bounded steps.
async fn sleep_long(d: Duration) {
    let until = SystemTime::now() + d;
    loop {
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        if left.is_zero() {
            return;
        }
        // Re-checking the wall clock every hour also copes with suspend/resume.
        tokio::time::sleep(left.min(Duration::from_secs(3600))).await;
    }
}

async fn account(settings: &AcmeSettings) -> anyhow::Result<Account> {
    let dir = cache_dir(settings);
    create_private_dir(&dir)?;
    let builder = || -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(match &settings.ca_bundle {
            Some(ca) => Account::builder_with_root(ca)
                .with_context(|| format!("loading the ACME CA bundle {}", ca.display()))?,
            None => Account::builder().context("setting up the ACME HTTP client")?,
        })
    };
    let path = dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<AccountCredentials>(&text) {
            Ok(creds) => {
                return builder()?
                    .from_credentials(creds)
                    .await
                    .with_context(|| format!("restoring the ACME account from {}", path.display()));
            }
            Err(e) => tracing::warn!("ACME: {} is unreadable ({e}); creating a new account", path.display()),
        }
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false },
            settings.directory_url.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", settings.directory_url))?;
    write_private(&path, serde_json::to_string_pretty(&creds)?.as_bytes())?;
    tracing::info!("ACME: account {} created at {}", account.id(), settings.directory_url);
    Ok(account)
}

/// One order: authorizations → challenges → finalize → certificate, stored in the cache.
async fn issue(
    settings: &AcmeSettings,
    challenge: Challenge,
    store: &CertStore,
    cached_account: &mut Option<Account>,
) -> anyhow::Result<LoadedCert> {
    let account = match cached_account {
        Some(a) => a.clone(),
        None => {
            let a = account(settings).await?;
            *cached_account = Some(a.clone());
            a
        }
    };
    let identifiers: Vec<Identifier> = settings.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.context("creating the order")?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("fetching an authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization for {} is {other:?}", authz.identifier()),
        }
        let kind = match challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let domain = authz.identifier().to_string();
        let mut ch = authz
            .challenge(kind.clone())
            .ok_or_else(|| anyhow!("the CA offers no {kind:?} challenge for {domain}"))?;
        let key_auth = ch.key_authorization();
        match challenge {
            Challenge::TlsAlpn01 => {
                store.set_alpn_challenge(&domain, alpn_certificate(&domain, key_auth.digest().as_ref())?)
            }
            Challenge::Http01 => store.set_http_challenge(&ch.token, key_auth.as_str()),
        }
        ch.set_ready()
            .await
            .with_context(|| format!("telling the CA the challenge for {domain} is ready"))?;
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .backoff(1.5)
        .timeout(Duration::from_secs(120));
    let status = order.poll_ready(&polling).await.context("waiting for the CA to validate the domains")?;
    if status != OrderStatus::Ready {
        bail!("the CA did not validate the domains ({status:?}): {}", validation_errors(&mut order).await);
    }
    let key_pem = order.finalize().await.context("finalizing the order")?;
    let chain_pem = order.poll_certificate(&polling).await.context("downloading the certificate")?;
    let dir = cache_dir(settings);
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let loaded =
        certs::from_pem(chain_pem.as_bytes(), &cert_path, key_pem.as_bytes(), &key_path, SystemTime::now())
            .map_err(|e| anyhow!("the CA returned an unusable certificate: {e}"))?;
    // Key first: a crash between the two writes leaves a mismatched pair, which is ignored at start.
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, chain_pem.as_bytes())?;
    Ok(loaded)
}

/// The CA's reasons for failed challenges, e.g. "connection refused" from its validation server.
async fn validation_errors(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        let domain = authz.identifier().to_string();
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                out.push(format!("{domain}: {p}"));
            }
        }
    }
    if out.is_empty() { "no reason given".into() } else { out.join("; ") }
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation (RFC 8737 section 3).
fn alpn_certificate(domain: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = rcgen::KeyPair::generate().context("generating the TLS-ALPN-01 key")?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
        .with_context(|| format!("{domain} is not a valid certificate name"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).context("signing the TLS-ALPN-01 certificate")?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension. The key was generated right here for this certificate.
    let signing_key = certs::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("loading the TLS-ALPN-01 key")?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)))
}

pub(super) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the ACME cache directory {}", dir.display()))
}

/// Write atomically (temporary file + rename) with mode 0600.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + days * DAY)
    }

    #[test]
    fn ninety_day_certificates_renew_thirty_days_before_expiry() {
        assert_eq!(renewal_time(at(0), at(90), None), at(60));
    }

    #[test]
    fn short_lived_certificates_renew_with_a_third_left() {
        assert_eq!(renewal_time(at(0), at(6), None), at(4));
    }

    #[test]
    fn long_certificates_renew_at_most_thirty_days_early() {
        // Pebble issues five-year certificates.
        assert_eq!(renewal_time(at(0), at(5 * 365), None), at(5 * 365 - 30));
    }

    #[test]
    fn broken_validity_renews_at_once() {
        assert_eq!(renewal_time(at(10), at(5), None), at(5));
    }

    #[test]
    fn configured_margin_applies_when_shorter_than_the_lifetime() {
        assert_eq!(renewal_time(at(0), at(90), Some(Duration::from_secs(10 * DAY))), at(80));
        // As long as the lifetime: ignored (it would renew in a loop), the default applies.
        assert_eq!(renewal_time(at(0), at(90), Some(Duration::from_secs(90 * DAY))), at(60));
    }

    #[test]
    fn cache_dirs_differ_per_directory() {
        let s = |url: &str| AcmeSettings {
            domains: vec!["a.example".into()],
            contact: vec![],
            directory_url: url.into(),
            cache_dir: "/c".into(),
            ca_bundle: None,
            renew_before: None,
        };
        let prod = cache_dir(&s(super::super::config::LETS_ENCRYPT_PRODUCTION));
        let staging = cache_dir(&s(super::super::config::LETS_ENCRYPT_STAGING));
        assert_ne!(prod, staging);
        assert!(prod.to_string_lossy().starts_with("/c/acme-v02.api.letsencrypt.org-"), "{}", prod.display());
    }

    #[test]
    fn alpn_certificate_carries_the_acme_identifier() {
        let k = alpn_certificate("a.example", &[7u8; 32]).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(k.cert[0].as_ref()).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }
}
