//! `[oauth]` in the daemon's config: lifetimes and the limits of Client ID Metadata Document fetches.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `"30s"`, `"10m"` (humantime), as everywhere in the config. (The config module's own helper sits on a
/// higher layer than this one: see scripts/check-layers.)
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"))
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Lifetime of an access token (short: a leaked one dies soon; clients refresh).
    #[serde(deserialize_with = "duration")]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (each use rotates it and starts a new lifetime).
    #[serde(deserialize_with = "duration")]
    pub refresh_token_ttl: Duration,
    /// How long an authorization request waits for `approve CODE` (the page and the code).
    #[serde(deserialize_with = "duration")]
    pub approval_ttl: Duration,
    /// Lifetime of an authorization code once issued (RFC 6749 recommends at most 10 minutes).
    #[serde(deserialize_with = "duration")]
    pub code_ttl: Duration,
    /// How long a `login` link can be opened.
    #[serde(deserialize_with = "duration")]
    pub login_link_ttl: Duration,
    /// How long the browser session opened by a `login` link lasts.
    #[serde(deserialize_with = "duration")]
    pub session_ttl: Duration,
    /// Most registered clients kept (RFC 7591 registration is open to anyone).
    pub max_clients: usize,
    /// Largest Client ID Metadata Document accepted, in bytes.
    pub cimd_max_bytes: usize,
    /// Time allowed to fetch a Client ID Metadata Document.
    #[serde(deserialize_with = "duration")]
    pub cimd_timeout: Duration,
    /// How long a fetched Client ID Metadata Document is re-used before it is fetched again.
    #[serde(deserialize_with = "duration")]
    pub cimd_cache_ttl: Duration,
    /// TESTS ONLY: let `client_id` URLs resolve to loopback addresses (the test suite serves metadata
    /// documents on 127.0.0.1) and trust `cimd_test_ca` for them. Never set this on a real server: it
    /// lets anyone make the daemon fetch URLs on its own host.
    pub cimd_allow_loopback_for_tests: bool,
    /// TESTS ONLY: a PEM CA certificate trusted for metadata document fetches (with the option above).
    pub cimd_test_ca: Option<std::path::PathBuf>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            approval_ttl: Duration::from_secs(600),
            code_ttl: Duration::from_secs(60),
            login_link_ttl: Duration::from_secs(300),
            session_ttl: Duration::from_secs(1800),
            max_clients: 10_000,
            cimd_max_bytes: 5120,
            cimd_timeout: Duration::from_secs(5),
            cimd_cache_ttl: Duration::from_secs(3600),
            cimd_allow_loopback_for_tests: false,
            cimd_test_ca: None,
        }
    }
}
