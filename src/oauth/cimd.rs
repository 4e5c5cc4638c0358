//! Client ID Metadata Documents: a `client_id` that is an `https://` URL names a JSON document, served
//! by the client's owner, that describes the client (MCP authorization 2025-11-25; IETF draft
//! `oauth-client-id-metadata-document`). The daemon fetches it, which makes the fetch an SSRF surface:
//!
//! - `https` only, a path, no fragment, no credentials, no `.`/`..` segments;
//! - the host is resolved once and every address must be public (no loopback, private, link-local,
//!   CGNAT, unique-local, multicast or unspecified addresses); the connection goes to the vetted
//!   address (pinned, so a second DNS answer cannot rebind it); no redirects, no proxy;
//! - a time limit and a size limit (read incrementally; larger documents are refused);
//! - the document's `client_id` must equal the URL; it must be a public client (`none`);
//! - the result is cached in the store (`cimd_cache_ttl`), so a page reload does not fetch again.
//!
//! `cimd_allow_loopback_for_tests` lets the test suite serve documents on 127.0.0.1 (with its own CA
//! in `cimd_test_ca`); it is for tests only and documented as such.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::OAuthConfig;
use super::registration::{check_redirect_uri, clean_name};
use crate::store::{ClientRecord, Store, now};

pub struct Fetcher {
    test_ca: Option<reqwest::Certificate>,
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    client_name: Option<String>,
    client_uri: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
    client_secret: Option<serde_json::Value>,
}

/// Addresses a metadata document may never be fetched from.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 (would reach IPv4 addresses)
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        }
    }
}

/// Checks the shape of a `client_id` URL (before anything is resolved).
pub fn check_url(client_id: &str) -> Result<url::Url, String> {
    if client_id.len() > 2000 {
        return Err("client_id URL is too long".into());
    }
    let url = url::Url::parse(client_id).map_err(|e| format!("client_id {client_id:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("a client_id URL must use https".into());
    }
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("a client_id URL must not contain a fragment or credentials".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client_id URL must contain a path".into());
    }
    // `Url` normalises dot segments away: compare with the text as sent.
    if url.as_str() != client_id || client_id.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(
            "a client_id URL must be in normal form (no dot segments, no default port, lowercase host)"
                .into(),
        );
    }
    Ok(url)
}

impl Fetcher {
    pub fn new(cfg: &OAuthConfig) -> anyhow::Result<Fetcher> {
        let test_ca = match (&cfg.cimd_test_ca, cfg.cimd_allow_loopback_for_tests) {
            (Some(path), true) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("[oauth] cimd_test_ca {}: {e}", path.display()))?;
                Some(reqwest::Certificate::from_pem(&pem)?)
            }
            (Some(_), false) => {
                anyhow::bail!("[oauth] cimd_test_ca needs cimd_allow_loopback_for_tests = true (tests only)")
            }
            (None, _) => None,
        };
        if cfg.cimd_allow_loopback_for_tests {
            tracing::warn!(
                "[oauth] cimd_allow_loopback_for_tests is on: client metadata documents may be fetched from loopback addresses (TESTS ONLY)"
            );
        }
        Ok(Fetcher { test_ca })
    }

    /// The client whose metadata document is at `client_id`: cached, or fetched now.
    pub async fn client(
        &self,
        store: &Store,
        client_id: &str,
        cfg: &OAuthConfig,
    ) -> Result<ClientRecord, String> {
        let url = check_url(client_id)?;
        if let Ok(Some(c)) = store.oauth_client(client_id)
            && c.metadata_document
            && now().saturating_sub(c.created_at) < cfg.cimd_cache_ttl.as_secs()
        {
            return Ok(c);
        }
        let client =
            self.fetch(&url, cfg).await.map_err(|e| format!("client metadata document {client_id}: {e}"))?;
        store.put_oauth_client(&client).map_err(|e| e.to_string())?;
        Ok(client)
    }

    async fn fetch(&self, url: &url::Url, cfg: &OAuthConfig) -> Result<ClientRecord, String> {
        let host = url.host_str().ok_or("the URL has no host")?.to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(cfg.cimd_timeout, tokio::net::lookup_host((lookup_host.as_str(), port)))
                .await
                .map_err(|_| "resolving its host timed out".to_string())?
                .map_err(|e| format!("resolving {host}: {e}"))?
                .collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address"));
        }
        for a in &addrs {
            let allowed_for_tests = cfg.cimd_allow_loopback_for_tests && a.ip().is_loopback();
            if is_forbidden(a.ip()) && !allowed_for_tests {
                return Err(format!(
                    "{host} resolves to {}, a private, loopback or otherwise non-public address; metadata documents are only fetched from public addresses",
                    a.ip()
                ));
            }
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(true)
            .timeout(cfg.cimd_timeout)
            .connect_timeout(cfg.cimd_timeout)
            .user_agent(concat!("catwalk/", env!("CARGO_PKG_VERSION")));
        if url.domain().is_some() {
            builder = builder.resolve_to_addrs(&host, &addrs);
        }
        if let Some(ca) = &self.test_ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let mut resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching it failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("fetching it answered HTTP {} (redirects are not followed)", resp.status()));
        }
        let max = cfg.cimd_max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!("the document is larger than {max} bytes"));
        }
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(cfg.cimd_timeout, resp.chunk()).await {
                Err(_) => return Err("reading it timed out".into()),
                Ok(Err(e)) => return Err(format!("reading it failed: {e}")),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > max {
                        return Err(format!("the document is larger than {max} bytes"));
                    }
                }
            }
        }
        let doc: Document = serde_json::from_slice(&body)
            .map_err(|e| format!("it is not a valid client metadata document: {e}"))?;
        if doc.client_id != url.as_str() {
            return Err(format!("its client_id {:?} is not the URL it was fetched from", doc.client_id));
        }
        if doc.client_secret.is_some() {
            return Err("it must not contain a client_secret".into());
        }
        match doc.token_endpoint_auth_method.as_deref() {
            None | Some("none") => {}
            Some(m) => {
                return Err(format!(
                    "token_endpoint_auth_method {m:?} is not supported for metadata documents (use none)"
                ));
            }
        }
        if doc.redirect_uris.is_empty() {
            return Err("it lists no redirect_uris".into());
        }
        for uri in &doc.redirect_uris {
            check_redirect_uri(uri)?;
        }
        Ok(ClientRecord {
            client_id: doc.client_id,
            client_name: clean_name(doc.client_name.as_deref().or(Some(&host))),
            redirect_uris: doc.redirect_uris,
            auth_method: "none".into(),
            secret_digest: None,
            created_at: now(),
            metadata_document: true,
            client_uri: doc.client_uri.filter(|u| u.starts_with("https://")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!is_forbidden(ok.parse().unwrap()), "{ok}");
        }
    }

    #[test]
    fn client_id_urls() {
        assert!(check_url("https://app.example/oauth/client.json").is_ok());
        for bad in [
            "http://app.example/client.json",
            "https://app.example/",
            "https://app.example",
            "https://app.example/a/../client.json",
            "https://u:p@app.example/c.json",
            "https://app.example/c.json#x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
