//! Loading and checking certificates: PEM files → a rustls [`CertifiedKey`] plus the facts operators
//! need (subject, serial, validity). Every problem is reported with the file it came from and what is
//! wrong with it, because a daemon that starts with a bad certificate only fails later, at a client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider of the binary (aws-lc-rs; russh and reqwest use it too).
pub fn provider() -> Arc<CryptoProvider> {
    match CryptoProvider::get_default() {
        Some(p) => p.clone(),
        None => Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    }
}

/// A certificate problem: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct CertError {
    pub path: PathBuf,
    pub problem: String,
}

fn err(path: &Path, problem: impl Into<String>) -> CertError {
    CertError { path: path.to_path_buf(), problem: problem.into() }
}

/// What is known about the serving certificate (for `info`, metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's subject, e.g. `CN=deploy.example.com`.
    pub subject: String,
    /// The leaf's serial number, lower-case hex with colons.
    pub serial: String,
    /// DNS names in the subjectAltName extension.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// `not_after` in seconds since the Unix epoch (the `catwalk_tls_cert_expiry_seconds` gauge).
    pub fn expiry_unix(&self) -> u64 {
        self.not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// A certificate chain with its key, ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Reads a PEM certificate chain and private key and checks that they can be served right now.
pub fn load_files(cert: &Path, key: &Path) -> Result<LoadedCert, CertError> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| err(cert, format!("cannot read the certificate file: {e}")))?;
    let key_pem =
        std::fs::read(key).map_err(|e| err(key, format!("cannot read the private key file: {e}")))?;
    from_pem(&cert_pem, cert, &key_pem, key, SystemTime::now())
}

/// Parses and checks PEM text; `cert_path`/`key_path` only label errors. `now` decides validity.
pub fn from_pem(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    now: SystemTime,
) -> Result<LoadedCert, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_path, format!("is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(err(cert_path, "contains no certificate (expected a -----BEGIN CERTIFICATE----- block)"));
    }
    let info = inspect(&chain[0]).map_err(|e| err(cert_path, e))?;
    check_validity(&info, now).map_err(|e| err(cert_path, e))?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => err(
            key_path,
            "contains no private key (expected a -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        ),
        e => err(key_path, format!("is not a valid PEM private key: {e}")),
    })?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => err(
            key_path,
            format!("this private key does not match the certificate in {}", cert_path.display()),
        ),
        e => err(key_path, format!("cannot use this private key: {e}")),
    })?;
    Ok(LoadedCert { key: Arc::new(certified), info })
}

/// Subject, serial, names and validity of a DER certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed as X.509: {e}"))?;
    let to_time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
        names,
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
    })
}

/// Refuses a certificate that clients would refuse: expired or not yet valid.
pub fn check_validity(info: &CertInfo, now: SystemTime) -> Result<(), String> {
    if now >= info.not_after {
        return Err(format!(
            "the certificate ({}) expired on {}: renew it and replace the file",
            info.subject,
            httpdate(info.not_after)
        ));
    }
    if now < info.not_before {
        return Err(format!(
            "the certificate ({}) is not valid before {}: check the clock of this host or the certificate",
            info.subject,
            httpdate(info.not_before)
        ));
    }
    Ok(())
}

/// `2026-11-21 03:09:11 UTC`.
pub fn httpdate(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => dt
            .format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"))
            .unwrap_or_else(|_| format!("{secs} (Unix time)")),
        Err(_) => format!("{secs} (Unix time)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn load(cert: &str, key: &str) -> Result<LoadedCert, CertError> {
        from_pem(cert.as_bytes(), Path::new("c.pem"), key.as_bytes(), Path::new("k.pem"), SystemTime::now())
    }

    #[test]
    fn good_pair_loads_with_facts() {
        let now = time::OffsetDateTime::now_utc();
        let (c, k) = self_signed(now - time::Duration::days(1), now + time::Duration::days(30));
        let l = load(&c, &k).unwrap();
        assert_eq!(l.info.names, vec!["a.example".to_string()]);
        assert!(l.info.not_after > SystemTime::now());
        assert!(!l.info.serial.is_empty());
    }

    #[test]
    fn expired_and_future_are_refused() {
        let now = time::OffsetDateTime::now_utc();
        let (c, k) = self_signed(now - time::Duration::days(30), now - time::Duration::days(1));
        let e = load(&c, &k).unwrap_err().to_string();
        assert!(e.starts_with("c.pem: ") && e.contains("expired on"), "{e}");
        let (c, k) = self_signed(now + time::Duration::days(1), now + time::Duration::days(30));
        let e = load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("not valid before"), "{e}");
    }

    #[test]
    fn mismatched_key_and_garbage_are_named() {
        let now = time::OffsetDateTime::now_utc();
        let (c, _) = self_signed(now - time::Duration::days(1), now + time::Duration::days(30));
        let (_, other_key) = self_signed(now - time::Duration::days(1), now + time::Duration::days(30));
        let e = load(&c, &other_key).unwrap_err().to_string();
        assert!(e.starts_with("k.pem: ") && e.contains("does not match the certificate in c.pem"), "{e}");
        let e = load("hello", &other_key).unwrap_err().to_string();
        assert!(e.contains("contains no certificate"), "{e}");
        let e = load(&c, "hello").unwrap_err().to_string();
        assert!(e.contains("contains no private key"), "{e}");
    }
}
