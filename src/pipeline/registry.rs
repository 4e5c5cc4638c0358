//! Pinning: resolve a package to an exact version against its registry (npm or PyPI).
//!
//! The platform catwalk replaces ran `npx -y pkg` at every boot, so "latest" changed under a running app.
//! catwalk resolves the version once, at push time, records it in the release, and installs exactly that.
//! Responses are cached in the store for a short TTL so re-pushes and rollbacks do not hammer registries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate;
use crate::plan::Registry;
use crate::store::Store;

/// Registry endpoints (configurable for mirrors).
#[derive(Debug, Clone)]
pub struct Registries {
    pub npm: String,
    pub pypi: String,
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

impl Default for Registries {
    fn default() -> Self {
        Registries {
            npm: "https://registry.npmjs.org".into(),
            pypi: "https://pypi.org".into(),
            cache_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(20),
        }
    }
}

/// What pinning learned about a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    pub version: String,
    /// npm: the package's executables (`bin` names) at that version.
    #[serde(default)]
    pub bins: Vec<String>,
}

/// Resolves `name` (optionally at `version`) to an exact, existing version.
pub async fn pin(
    client: &reqwest::Client,
    registries: &Registries,
    store: Option<&Store>,
    registry: Registry,
    name: &str,
    version: Option<&str>,
) -> Result<Pinned, String> {
    // Grammar first: nothing malformed ever reaches a URL.
    match registry {
        Registry::Npm => validate::npm_name(name)?,
        Registry::Pypi => validate::pypi_name(name)?,
    }
    if let Some(v) = version {
        validate::exact_version(v)?;
    }
    let cache_key = format!("{}:{}@{}", registry.label(), name, version.unwrap_or("latest"));
    if let Some(store) = store
        && let Ok(Some(bytes)) = store.cache_get(&cache_key, registries.cache_ttl)
        && let Ok(pinned) = serde_json::from_slice::<Pinned>(&bytes)
    {
        return Ok(pinned);
    }
    let pinned = match registry {
        Registry::Npm => pin_npm(client, registries, name, version).await?,
        Registry::Pypi => pin_pypi(client, registries, name, version).await?,
    };
    validate::exact_version(&pinned.version).map_err(|e| format!("the registry answered oddly: {e}"))?;
    if let Some(store) = store {
        let _ = store.cache_put(&cache_key, &serde_json::to_vec(&pinned).unwrap_or_default());
    }
    Ok(pinned)
}

async fn get_json(
    client: &reqwest::Client,
    registries: &Registries,
    url: &str,
    what: &str,
) -> Result<serde_json::Value, String> {
    let response = client
        .get(url)
        .header("accept", "application/json")
        .timeout(registries.timeout)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the registry for {what} ({url}): {e}; try again, or set a mirror in the config"
            )
        })?;
    match response.status() {
        s if s.is_success() => response.json().await.map_err(|e| format!("{url} did not return JSON: {e}")),
        reqwest::StatusCode::NOT_FOUND => {
            Err(format!("{what} was not found ({url} → 404); check the name and version"))
        }
        s => Err(format!("the registry answered {s} for {what} ({url}); try again later")),
    }
}

async fn pin_npm(
    client: &reqwest::Client,
    r: &Registries,
    name: &str,
    version: Option<&str>,
) -> Result<Pinned, String> {
    let url = format!("{}/{}", r.npm.trim_end_matches('/'), name.replacen('/', "%2F", 1));
    let doc = get_json(client, r, &url, &format!("npm package {name:?}")).await?;
    let version = match version {
        Some(v) => v.to_string(),
        None => doc
            .pointer("/dist-tags/latest")
            .and_then(|v| v.as_str())
            .ok_or(format!("npm package {name:?} has no \"latest\" version"))?
            .to_string(),
    };
    let Some(meta) = doc.get("versions").and_then(|v| v.get(&version)) else {
        return Err(format!("npm package {name:?} has no version {version:?}"));
    };
    if meta.get("deprecated").is_some_and(|d| d.as_str().is_some_and(|s| !s.is_empty())) {
        tracing::warn!(package = name, version, "npm package version is deprecated");
    }
    let bins = match meta.get("bin") {
        Some(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        Some(serde_json::Value::String(_)) => vec![name.rsplit('/').next().unwrap_or(name).to_string()],
        _ => Vec::new(),
    };
    Ok(Pinned { version, bins })
}

async fn pin_pypi(
    client: &reqwest::Client,
    r: &Registries,
    name: &str,
    version: Option<&str>,
) -> Result<Pinned, String> {
    // One document answers both "latest" and "does this version exist": the per-version endpoint is not
    // served by every mirror.
    let url = format!("{}/pypi/{}/json", r.pypi.trim_end_matches('/'), crate::names::pypi_normalise(name));
    let what = format!("PyPI package {name:?}");
    let doc = get_json(client, r, &url, &what).await?;
    let version = match version {
        Some(v) => v.to_string(),
        None => doc
            .pointer("/info/version")
            .and_then(|v| v.as_str())
            .ok_or(format!("{what}: the registry returned no version"))?
            .to_string(),
    };
    let files = doc.pointer("/releases").and_then(|r| r.get(&version)).and_then(|f| f.as_array());
    match files {
        None => Err(format!("{what} has no version {version:?}")),
        Some(files) if files.is_empty() => Err(format!("{what} {version} has no files to install")),
        Some(files) if files.iter().all(|f| f.get("yanked").and_then(|y| y.as_bool()) == Some(true)) => {
            Err(format!("{what} {version} was yanked; pin another version"))
        }
        Some(_) => Ok(Pinned { version, bins: Vec::new() }),
    }
}
