//! The machine config of a release: image, guest, `init.cmd` (the runner), restart policy, HTTP check,
//! metadata, Flycast services, and a plain environment.
//!
//! Secret values never enter a machine config (`config.env` and `files[].raw_value` are readable back
//! through the API): they are Fly secrets, set through the secrets API, and reach the machine because
//! it is created with `min_secrets_version`. The config names them only in `--pass-env` so the bridge
//! hands exactly them (and the plan's plain variables) to the server process.

use std::collections::BTreeMap;

use super::types::{Autostop, Check, Guest, Init, MachineConfig, Port, Restart, Rootfs, Service, StopConfig};
use super::{
    BRIDGE_TOKEN_SECRET, FlyConfig, META_APP, META_LAUNCH, META_RELEASE, Network, PLAN_ENV, SOURCE_ID_ENV,
    SOURCE_URL_ENV,
};
use crate::plan::Secrets;
use crate::plan::{Plan, Source};
use crate::store::ReleaseRecord;

/// Builds the config of a new machine for `release`. `launch` is this deploy's unique id;
/// `source_url` is where a release built from its repository downloads its source (the token is a
/// secret, see [`super::source`]).
pub fn machine_config(
    cfg: &FlyConfig,
    release: &ReleaseRecord,
    secrets: &Secrets,
    launch: &str,
    source_url: Option<&str>,
) -> Result<MachineConfig, String> {
    let plan = &release.plan;
    let plan_json = serde_json::to_string(plan).map_err(|e| format!("serialising the plan: {e}"))?;
    let mut env = BTreeMap::new();
    env.insert(PLAN_ENV.to_string(), plan_json);
    // The runner installs (or builds) on the machine's root file system. Persisting it means a
    // restart or a wake from scale to zero re-uses that install instead of installing again; a new
    // release always gets a new machine, so nothing stale survives a deploy.
    // (A repository's source is downloaded once, with a single-use token: it must survive too.)
    let rootfs = Some(Rootfs { persist: "always".into() });
    match (&plan.source, source_url) {
        (Source::Package { version: Some(_), .. }, _) => {}
        (Source::Repository, Some(url)) => {
            env.insert(SOURCE_URL_ENV.to_string(), url.to_string());
            let commit: String = release.commit.chars().take(12).collect();
            env.insert(SOURCE_ID_ENV.to_string(), format!("{}-v{}-{commit}", release.app, release.version));
        }
        _ => {
            return Err(format!(
                "the Fly runtime deploys pinned registry packages and repository sources; {} is neither",
                plan.describe()
            ));
        }
    };
    let mut pass: Vec<String> = Vec::new();
    for e in &plan.env {
        if let (Some(v), false) = (&e.value, e.secret) {
            env.insert(e.name.clone(), v.clone());
            pass.push(e.name.clone());
        }
    }
    for name in secrets.keys() {
        // A secret wins over a plain value of the same name, and its value stays out of the config.
        env.remove(name);
        if !pass.contains(name) {
            pass.push(name.clone());
        }
    }
    let port = cfg.internal_port;
    let mut cmd = vec![
        "catwalk".to_string(),
        "runner".into(),
        "--listen".into(),
        format!("0.0.0.0:{port}"),
        "--token-env".into(),
        BRIDGE_TOKEN_SECRET.into(),
    ];
    if plan.shared {
        cmd.push("--shared".into());
    }
    for name in &pass {
        cmd.push("--pass-env".into());
        cmd.push(name.clone());
    }
    let mut checks = BTreeMap::new();
    checks.insert(
        "bridge".to_string(),
        Check {
            kind: "http".into(),
            port,
            path: Some("/healthz".into()),
            method: Some("GET".into()),
            interval: "15s".into(),
            timeout: "5s".into(),
            // The runner installs the package before the bridge listens.
            grace_period: Some(format!("{}s", cfg.boot_timeout.as_secs().clamp(10, 600))),
        },
    );
    let services = match cfg.network {
        Network::SixPn => Vec::new(),
        Network::Flycast => vec![Service {
            protocol: "tcp".into(),
            internal_port: port,
            ports: vec![Port { port: 80, handlers: vec!["http".into()] }],
            autostop: Some(if cfg.autostop { Autostop::Stop } else { Autostop::Off }),
            autostart: Some(true),
            min_machines_running: Some(0),
        }],
    };
    let mut metadata = BTreeMap::new();
    metadata.insert(META_APP.to_string(), release.app.clone());
    metadata.insert(META_RELEASE.to_string(), release.version.to_string());
    metadata.insert(META_LAUNCH.to_string(), launch.to_string());
    metadata.insert("catwalk_commit".to_string(), release.commit.chars().take(12).collect());
    Ok(MachineConfig {
        image: cfg.image.clone(),
        guest: Some(Guest {
            cpu_kind: cfg.guest.cpu_kind.clone(),
            cpus: cfg.guest.cpus,
            memory_mb: cfg.guest.memory_mb,
        }),
        init: Some(Init { cmd, entrypoint: Vec::new() }),
        restart: Some(Restart { policy: "on-failure".into(), max_retries: Some(3) }),
        checks,
        metadata,
        services,
        env,
        files: Vec::new(),
        stop_config: Some(StopConfig { signal: "SIGTERM".into(), timeout: "10s".into() }),
        auto_destroy: false,
        rootfs,
    })
}

/// The plan a runner reads back from its environment.
pub fn plan_from_env(value: &str) -> Result<Plan, String> {
    serde_json::from_str(value).map_err(|e| format!("{PLAN_ENV} is not a catwalk plan: {e}"))
}

/// A new launch id: a ULID (48-bit millisecond time + 80 random bits, Crockford base32), so launches
/// sort by time and never collide.
pub fn new_launch_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        & ((1u128 << 48) - 1);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut n = (ms << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_ids_are_ulids() {
        let a = new_launch_id();
        let b = new_launch_id();
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    }
}
