//! `[http.tls]`: the configuration of the HTTPS endpoint.
//!
//! Two ways to get a certificate, exactly one of which must be chosen:
//! - `cert` + `key`: PEM files managed by the operator (certbot, an internal CA...), reloaded on change;
//! - `[http.tls.acme]`: certificates obtained and renewed automatically from an ACME CA
//!   (Let's Encrypt production by default).
//!
//! Relative paths are relative to the data directory, like every other path in `catwalk.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Let's Encrypt's production directory (the default CA).
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "staging"`): untrusted certificates, generous limits.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// `[http.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Exclusive with `[http.tls.acme]`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Automatic certificates from an ACME CA.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// A plain-HTTP listener that answers every request with a 301 to the HTTPS URL and serves ACME
    /// HTTP-01 challenges (`/.well-known/acme-challenge/`). Usually `0.0.0.0:80`.
    #[serde(default)]
    pub redirect_listen: Option<SocketAddr>,
    /// Send `Strict-Transport-Security` on every HTTPS response.
    #[serde(default = "default_true")]
    pub hsts: bool,
}

/// `[http.tls.acme]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// DNS names the certificate covers; each must resolve to this host.
    pub domains: Vec<String>,
    /// Contact for the CA account (`ops@example.com` or `mailto:ops@example.com`).
    #[serde(default)]
    pub contact: Option<String>,
    /// `"production"` (default), `"staging"`, or the URL of an ACME directory.
    #[serde(default)]
    pub directory: Option<String>,
    /// Where the account key and certificates are kept (default `DATA_DIR/acme`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// PEM file of the CA that signed the ACME server's own HTTPS certificate, for a private ACME
    /// directory (step-ca, Pebble). Not needed for Let's Encrypt.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Renew when this much validity is left (`"30d"`). Default: a third of the lifetime, at most 30 days.
    #[serde(default)]
    pub renew_before: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Where certificates come from, after validation and with paths resolved against the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    Acme(AcmeSettings),
}

/// `[http.tls.acme]` with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    /// Contact URIs (`mailto:...`).
    pub contact: Vec<String>,
    pub directory_url: String,
    pub cache_dir: PathBuf,
    pub ca_bundle: Option<PathBuf>,
    /// `None`: a third of the lifetime, at most 30 days (see `acme::renewal_time`).
    pub renew_before: Option<Duration>,
}

/// The validated TLS settings the runtime is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub source: CertSource,
    pub redirect_listen: Option<SocketAddr>,
    pub hsts: bool,
}

impl TlsConfig {
    /// Checks the section and resolves relative paths against `data_dir`. Errors name the key.
    pub fn resolve(&self, data_dir: &Path) -> Result<TlsSettings, String> {
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) };
        let source = match (&self.cert, &self.key, &self.acme) {
            (Some(cert), Some(key), None) => CertSource::Files { cert: abs(cert), key: abs(key) },
            (None, None, Some(acme)) => CertSource::Acme(acme.resolve(data_dir)?),
            (None, None, None) => {
                return Err(
                    "[http.tls]: set either `cert` and `key` (PEM files) or an [http.tls.acme] section"
                        .into(),
                );
            }
            (Some(_), None, _) => return Err("[http.tls]: `cert` is set but `key` is missing".into()),
            (None, Some(_), _) => return Err("[http.tls]: `key` is set but `cert` is missing".into()),
            (Some(_), Some(_), Some(_)) => {
                return Err("[http.tls]: `cert`/`key` and [http.tls.acme] are exclusive: choose one".into());
            }
        };
        Ok(TlsSettings { source, redirect_listen: self.redirect_listen, hsts: self.hsts })
    }
}

impl AcmeConfig {
    fn resolve(&self, data_dir: &Path) -> Result<AcmeSettings, String> {
        if self.domains.is_empty() {
            return Err("[http.tls.acme]: `domains` is empty: list the DNS names of this server".into());
        }
        for d in &self.domains {
            check_domain(d).map_err(|e| format!("[http.tls.acme] domains: {d:?} {e}"))?;
        }
        let directory_url = directory_url(self.directory.as_deref())?;
        let contact = match self.contact.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(c) if c.starts_with("mailto:") => vec![c.to_string()],
            Some(c) if c.contains('@') && !c.contains(':') => vec![format!("mailto:{c}")],
            Some(c) => {
                return Err(format!("[http.tls.acme] contact = {c:?}: expected an email address"));
            }
        };
        let renew_before = match self.renew_before.as_deref() {
            None => None,
            Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
                format!("[http.tls.acme] renew_before = {text:?} is not a duration like \"30d\": {e}")
            })?),
        };
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) };
        Ok(AcmeSettings {
            domains: self.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            contact,
            directory_url,
            cache_dir: self.cache_dir.as_deref().map(abs).unwrap_or_else(|| data_dir.join("acme")),
            ca_bundle: self.ca_bundle.as_deref().map(abs),
            renew_before,
        })
    }
}

/// `"production"`, `"staging"` or an `https://` URL (plain `http://` only on loopback, for tests).
pub fn directory_url(directory: Option<&str>) -> Result<String, String> {
    match directory.map(str::trim) {
        None | Some("") | Some("production") => Ok(LETS_ENCRYPT_PRODUCTION.into()),
        Some("staging") => Ok(LETS_ENCRYPT_STAGING.into()),
        Some(url) if url.starts_with("https://") => Ok(url.into()),
        Some(other) => Err(format!(
            "[http.tls.acme] directory = {other:?}: expected \"production\", \"staging\" or an https:// URL"
        )),
    }
}

/// A DNS name a public CA could issue for: letters, digits, hyphens, dots; no wildcard (TLS-ALPN-01
/// and HTTP-01 cannot validate wildcards).
pub fn check_domain(d: &str) -> Result<(), &'static str> {
    if d.starts_with("*.") {
        return Err("is a wildcard: wildcards need DNS-01, which catwalk does not do");
    }
    if d.is_empty() || d.len() > 253 {
        return Err("is not a DNS name");
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !d.split('.').all(ok_label) {
        return Err("is not a DNS name (letters, digits, hyphens and dots only)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TlsSettings, String> {
        let cfg: TlsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.resolve(Path::new("/data"))
    }

    #[test]
    fn files_mode_resolves_relative_paths() {
        let s = parse("cert = \"tls/cert.pem\"\nkey = \"/etc/key.pem\"\n").unwrap();
        assert_eq!(
            s.source,
            CertSource::Files { cert: "/data/tls/cert.pem".into(), key: "/etc/key.pem".into() }
        );
        assert!(s.hsts);
    }

    #[test]
    fn acme_defaults() {
        let s = parse("[acme]\ndomains = [\"Deploy.Example.com\"]\ncontact = \"ops@example.com\"\n").unwrap();
        let CertSource::Acme(a) = s.source else { panic!("not acme") };
        assert_eq!(a.directory_url, LETS_ENCRYPT_PRODUCTION);
        assert_eq!(a.cache_dir, PathBuf::from("/data/acme"));
        assert_eq!(a.contact, vec!["mailto:ops@example.com".to_string()]);
        assert_eq!(a.domains, vec!["deploy.example.com".to_string()]);
    }

    #[test]
    fn staging_and_custom_directories() {
        assert_eq!(directory_url(Some("staging")).unwrap(), LETS_ENCRYPT_STAGING);
        assert_eq!(directory_url(Some("https://ca.internal/dir")).unwrap(), "https://ca.internal/dir");
        assert!(directory_url(Some("http://ca.internal/dir")).unwrap_err().contains("https://"));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("").unwrap_err().contains("either `cert` and `key`"));
        assert!(parse("cert = \"a\"\n").unwrap_err().contains("`key` is missing"));
        assert!(
            parse("cert=\"a\"\nkey=\"b\"\n[acme]\ndomains=[\"a.b\"]\n").unwrap_err().contains("exclusive")
        );
        assert!(parse("[acme]\ndomains = []\n").unwrap_err().contains("empty"));
        assert!(parse("[acme]\ndomains = [\"*.x.com\"]\n").unwrap_err().contains("wildcard"));
        assert!(parse("cert=\"a\"\nkey=\"b\"\nhst = false\n").unwrap_err().contains("hst"));
        assert!(parse("[acme]\ndomains=[\"a.b\"]\ncontact=\"https://x\"\n").unwrap_err().contains("email"));
        assert!(
            parse("[acme]\ndomains=[\"a.b\"]\nrenew_before=\"soon\"\n")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
