//! The Fly.io Machines runtime: each catwalk app becomes one Fly app (`app_prefix` + name) whose
//! machines (one, or `[deploy] machines` of them) run the runner image (`catwalk runner`: install the
//! pinned package at boot, then the bridge), and the daemon's gateway proxies `/mcp/APP` to them over
//! 6PN or Flycast: a request of no session to the least busy machine, a 2025 session to the one that
//! holds it.
//!
//! - [`client`]: the Machines API client (auth, rate limits, retries, idempotent creates, `/wait` loop, leases);
//! - [`types`]: the API's serde types, checked against the OpenAPI spec;
//! - [`machine`]: the machine config built from a release (never holding a secret value);
//! - [`deploy`]: blue/green: stage the new machines, gate them, then retire the old ones ([`FlyRuntime::deploy`],
//!   [`FlyRuntime::commit`], [`FlyRuntime::abort`]);
//! - [`runner`]: `catwalk runner`, the image's entry point;
//! - [`source`]: one-time source downloads for releases built from their repository;
//! - [`wake`]: scale to zero over 6PN: each live machine's [`wake::FlyWake`] starts it when stopped before
//!   the gateway forwards a request to it, and stops it after `idle_timeout` with nothing in flight.
//!
//! Isolation: every Fly app gets its own 6PN network (named like the app), and every machine's bridge
//! requires a per-app credential that only the daemon holds (a Fly secret derived from the daemon's key),
//! so neither another tenant's machine nor anything else on Fly's network can call a tenant's server.

pub mod client;
pub mod deploy;
pub mod machine;
pub mod runner;
pub mod source;
pub mod types;
pub mod wake;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

pub use client::{FlyClient, FlyError, RetryPolicy};
pub use deploy::{ReleaseSource, Staged};

use crate::gateway::{AppRoute, Backend, HttpTarget};

/// Name of the Fly secret holding the bridge credential (and of the machine's env var).
pub const BRIDGE_TOKEN_SECRET: &str = "CATWALK_BRIDGE_TOKEN";
/// Machine env var holding the release plan (JSON; plans never contain secret values).
pub const PLAN_ENV: &str = "CATWALK_PLAN";
/// Name of the Fly secret holding a repository release's one-time source token (see [`source`]).
pub const SOURCE_TOKEN_SECRET: &str = "CATWALK_SOURCE_TOKEN";
/// Machine env var: the URL the source token is appended to (not a secret).
pub const SOURCE_URL_ENV: &str = "CATWALK_SOURCE_URL";
/// Machine env var naming the release's source (`APP-vN-COMMIT`): where the runner keeps its build.
pub const SOURCE_ID_ENV: &str = "CATWALK_SOURCE_ID";
/// Metadata keys on every machine catwalk creates.
pub const META_APP: &str = "catwalk_app";
pub const META_RELEASE: &str = "catwalk_release";
pub const META_LAUNCH: &str = "catwalk_launch";

/// How the daemon reaches machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Network {
    /// Directly over the private network: `http://<machine>.vm.<app>.internal:PORT/mcp`.
    /// Scale to zero is catwalk's job ([`FlyRuntime::scale_to_zero`] / [`FlyRuntime::ensure_started`]).
    #[serde(rename = "6pn")]
    SixPn,
    /// Through fly-proxy: `http://<app>.flycast/mcp`, sessions pinned with `fly-force-instance-id`;
    /// fly-proxy stops idle machines and starts them on the next request (autostop/autostart).
    #[serde(rename = "flycast")]
    Flycast,
}

/// Guest size of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// `shared` or `performance`.
    pub cpu_kind: String,
    pub cpus: u32,
    pub memory_mb: u32,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig { cpu_kind: "shared".into(), cpus: 1, memory_mb: 512 }
    }
}

/// `[runtime.fly]` of the daemon's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlyConfig {
    /// Machines API base URL (tests point it at the fake).
    pub api_url: String,
    /// File holding the Fly API token; when absent, `FLY_API_TOKEN` is read.
    pub token_file: Option<PathBuf>,
    /// Fly organization slug the apps are created in.
    pub org: String,
    pub region: String,
    /// Fly app name = prefix + catwalk app name (Fly app names are global: pick a distinctive prefix).
    pub app_prefix: String,
    /// The runner image (see the Dockerfile).
    pub image: String,
    pub network: Network,
    pub guest: GuestConfig,
    /// Port the bridge listens on inside the machine.
    pub internal_port: u16,
    /// Address of a machine over 6PN; `{machine_id}`, `{app}` (Fly app), `{private_ip}`, `{port}`, `{path}`.
    pub machine_url_template: String,
    /// Address of an app over Flycast; same placeholders.
    pub flycast_url_template: String,
    /// URL at which machines reach this daemon to download repository sources (default: the
    /// daemon's public URL; e.g. `http://catwalk.internal:8080` when the daemon runs on 6PN).
    pub daemon_url: Option<String>,
    /// Flycast only: let fly-proxy stop idle machines (and start them on demand).
    pub autostop: bool,
    /// 6PN only: stop the live machine after this long without a request or open stream (scale to
    /// zero); the next request starts it again. `"0s"` or `"off"` keeps machines running.
    #[serde(deserialize_with = "duration_or_off")]
    pub idle_timeout: Duration,
    /// How long a machine may take to reach `started`.
    #[serde(deserialize_with = "duration")]
    pub start_timeout: Duration,
    /// How long a started machine may take to install its package and answer HTTP.
    #[serde(deserialize_with = "duration")]
    pub boot_timeout: Duration,
    /// How long the MCP health gate may take once the bridge answers.
    #[serde(deserialize_with = "duration")]
    pub health_timeout: Duration,
    /// Seconds per `/wait` call (Fly caps it at 60 and answers 408).
    #[serde(deserialize_with = "duration")]
    pub wait_timeout: Duration,
    /// Client-side limit per action per machine (Fly allows about 1/s with small bursts).
    pub requests_per_second: u32,
    pub burst: u32,
    /// Retries of a failed API call (jittered exponential backoff from `retry_min_delay`).
    pub retries: usize,
    #[serde(deserialize_with = "duration")]
    pub retry_min_delay: Duration,
}

impl Default for FlyConfig {
    fn default() -> Self {
        FlyConfig {
            api_url: "https://api.machines.dev".into(),
            token_file: None,
            org: "personal".into(),
            region: "iad".into(),
            app_prefix: "cw-".into(),
            image: "registry.fly.io/catwalk-runner:0.1.0".into(),
            network: Network::SixPn,
            guest: GuestConfig::default(),
            internal_port: 8080,
            machine_url_template: "http://{machine_id}.vm.{app}.internal:{port}{path}".into(),
            flycast_url_template: "http://{app}.flycast{path}".into(),
            daemon_url: None,
            autostop: true,
            idle_timeout: Duration::from_secs(15 * 60),
            start_timeout: Duration::from_secs(180),
            boot_timeout: Duration::from_secs(600),
            health_timeout: Duration::from_secs(60),
            wait_timeout: Duration::from_secs(60),
            requests_per_second: 1,
            burst: 3,
            retries: 6,
            retry_min_delay: Duration::from_millis(500),
        }
    }
}

impl FlyConfig {
    /// Checks values that serde cannot (called by `Config::validate`).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.api_url.starts_with("http://") || self.api_url.starts_with("https://")) {
            return Err(format!("runtime.fly.api_url = {:?}: must start with https://", self.api_url));
        }
        if self.image.trim().is_empty() {
            return Err("runtime.fly.image is empty: build and push the runner image (see the README)".into());
        }
        let prefix_ok =
            self.app_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok || self.app_prefix.len() > 20 {
            return Err(format!(
                "runtime.fly.app_prefix = {:?}: use at most 20 lowercase letters, digits and dashes",
                self.app_prefix
            ));
        }
        for (key, t) in [
            ("machine_url_template", &self.machine_url_template),
            ("flycast_url_template", &self.flycast_url_template),
        ] {
            if !t.starts_with("http://") {
                return Err(format!("runtime.fly.{key} = {t:?}: must start with http://"));
            }
        }
        if let Some(url) = &self.daemon_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("runtime.fly.daemon_url = {url:?}: must start with https:// or http://"));
        }
        if self.requests_per_second == 0 || self.burst == 0 {
            return Err("runtime.fly.requests_per_second and burst must be at least 1".into());
        }
        Ok(())
    }

    /// The API token: `token_file` if set, else `FLY_API_TOKEN`.
    pub fn token(&self) -> Result<String, String> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("reading the Fly API token from {}: {e}", path.display()))?,
            None => std::env::var("FLY_API_TOKEN").map_err(|_| {
                "no Fly API token: set [runtime.fly] token_file or the FLY_API_TOKEN environment variable (fly tokens create org)".to_string()
            })?,
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err("the Fly API token is empty".into());
        }
        Ok(token)
    }
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"))
    })
}

/// Like [`duration`], plus `"off"` (= zero, disabled).
fn duration_or_off<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    if text.trim() == "off" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"15m\" (or \"off\"): {e}"))
    })
}

/// Where one catwalk app's release runs on Fly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMachines {
    pub fly_app: String,
    /// The release's machines, in the order of the route's targets (never empty).
    pub machine_ids: Vec<String>,
    pub release: u32,
}

/// One machine in `info APP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    pub id: String,
    pub state: String,
    pub region: String,
    pub release: Option<u32>,
    /// The last events, newest first.
    pub events: Vec<StatusEvent>,
}

/// One machine event in `info APP` / `logs APP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// Milliseconds since the Unix epoch (as Fly reports it).
    pub at_ms: i64,
    /// `"exit (stopped) exit code 3"`, `"start (started)"`.
    pub text: String,
}

/// The Fly runtime. Create once per daemon and share behind an `Arc`.
pub struct FlyRuntime {
    pub cfg: FlyConfig,
    pub client: FlyClient,
    bridge_key: [u8; 32],
    live: Mutex<HashMap<String, LiveMachines>>,
    /// One start at a time per machine (many requests may arrive for a stopped machine at once).
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The wakes of each app's live 6PN route, one per machine (held strongly by the route only; see
    /// [`wake`]).
    wakes: Mutex<HashMap<String, Vec<std::sync::Weak<wake::FlyWake>>>>,
    /// Outstanding source tokens; the daemon serves them at `/_catwalk/source/` (see [`source`]).
    pub sources: Arc<source::SourceArchives>,
}

impl FlyRuntime {
    /// `bridge_key` is a daemon-held secret (e.g. derived from its age identity) from which each app's
    /// bridge credential is derived, so it survives restarts without being stored.
    pub fn new(cfg: FlyConfig, bridge_key: [u8; 32]) -> Result<FlyRuntime, String> {
        cfg.validate()?;
        let token = cfg.token()?;
        let nz = |n: u32| NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        let client = FlyClient::new(
            &cfg.api_url,
            &token,
            RetryPolicy { max_times: cfg.retries, min_delay: cfg.retry_min_delay, ..RetryPolicy::default() },
            nz(cfg.requests_per_second),
            nz(cfg.burst),
            cfg.wait_timeout.as_secs(),
        )?;
        Ok(FlyRuntime {
            cfg,
            client,
            bridge_key,
            live: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            wakes: Mutex::new(HashMap::new()),
            sources: Arc::default(),
        })
    }

    /// The Fly app of a catwalk app.
    pub fn fly_app(&self, app: &str) -> String {
        format!("{}{app}", self.cfg.app_prefix)
    }

    /// The credential a machine's bridge requires (`Authorization: Bearer`), per app.
    pub fn bridge_token(&self, app: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.bridge_key).expect("HMAC takes any key length");
        mac.update(b"catwalk fly bridge v1\0");
        mac.update(self.fly_app(app).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The headers that carry the bridge credential of `app`'s machines.
    fn bridge_headers(&self, app: &str) -> Vec<(String, String)> {
        vec![("authorization".to_string(), format!("Bearer {}", self.bridge_token(app)))]
    }

    /// The URL the gateway uses for a machine (6PN or Flycast, as configured).
    pub fn machine_url(&self, fly_app: &str, machine_id: &str, private_ip: &str) -> String {
        let template = match self.cfg.network {
            Network::SixPn => &self.cfg.machine_url_template,
            Network::Flycast => &self.cfg.flycast_url_template,
        };
        self.fill(template, fly_app, machine_id, private_ip)
    }

    fn fill(&self, template: &str, fly_app: &str, machine_id: &str, private_ip: &str) -> String {
        let ip = if private_ip.contains(':') { format!("[{private_ip}]") } else { private_ip.to_string() };
        template
            .replace("{machine_id}", machine_id)
            .replace("{app}", fly_app)
            .replace("{private_ip}", &ip)
            .replace("{port}", &self.cfg.internal_port.to_string())
            .replace("{path}", "/mcp")
    }

    /// The gateway route to a release's machines: each one's URL plus the bridge credential (and, over
    /// Flycast, the `fly-force-instance-id` header that sends each request to the machine the gateway
    /// chose for it, so a session stays on the machine that holds it).
    pub fn route(&self, app: &str, machines: &[types::Machine]) -> AppRoute {
        let fly_app = self.fly_app(app);
        let credential = self.bridge_headers(app);
        let targets = machines
            .iter()
            .map(|machine| {
                let mut headers = credential.clone();
                if self.cfg.network == Network::Flycast {
                    headers.push(("fly-force-instance-id".to_string(), machine.id.clone()));
                }
                HttpTarget::new(self.machine_url(&fly_app, &machine.id, &machine.private_ip), headers, None)
            })
            .collect();
        AppRoute {
            backend: Backend::Http { targets },
            allowed_origins: Vec::new(),
            shared: false,
            rate_limit: None,
            auth: Default::default(),
            warm: 0,
        }
    }

    /// The machine's own 6PN address and credential, bypassing fly-proxy (health gate, boot wait).
    pub fn direct_route(&self, app: &str, machine: &types::Machine) -> AppRoute {
        let url =
            self.fill(&self.cfg.machine_url_template, &self.fly_app(app), &machine.id, &machine.private_ip);
        AppRoute {
            backend: Backend::http(url, self.bridge_headers(app), None),
            allowed_origins: Vec::new(),
            shared: false,
            rate_limit: None,
            auth: Default::default(),
            warm: 0,
        }
    }

    /// The live machines of `app`, from memory or (after a daemon restart) from Fly: the started or
    /// stopped machines of the newest release, in the order they were created.
    pub async fn live_machines(&self, app: &str) -> Result<Option<LiveMachines>, String> {
        if let Some(l) = self.live.lock().expect("live map").get(app).cloned() {
            return Ok(Some(l));
        }
        let fly_app = self.fly_app(app);
        let mut machines: Vec<_> = self
            .client
            .list_by_metadata(&fly_app, &[(META_APP, app)])
            .await?
            .into_iter()
            .filter(|m| !matches!(m.state.as_str(), "destroyed" | "destroying" | "failed"))
            .filter_map(|m| Some((m.meta(META_RELEASE)?.parse::<u32>().ok()?, m)))
            .collect();
        let Some(release) = machines.iter().map(|(v, _)| *v).max() else { return Ok(None) };
        machines.retain(|(v, _)| *v == release);
        // Names end in the machine's index (`…-v3-LAUNCH`, `…-v3-LAUNCH-1`, …): the route's order.
        machines.sort_by(|(_, a), (_, b)| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
        let l =
            LiveMachines { fly_app, machine_ids: machines.into_iter().map(|(_, m)| m.id).collect(), release };
        self.live.lock().expect("live map").insert(app.to_string(), l.clone());
        Ok(Some(l))
    }

    /// The route of `app`'s live machines after a daemon restart (`None`: nothing deployed on Fly),
    /// with their wakes over 6PN (a machine may have been stopped meanwhile: its first request checks).
    pub async fn restore_route(
        self: &Arc<Self>,
        app: &str,
        logs: &Arc<crate::gateway::AppLogs>,
    ) -> Result<Option<AppRoute>, String> {
        let Some(live) = self.live_machines(app).await? else { return Ok(None) };
        let mut machines = Vec::new();
        let mut awake = Vec::new();
        for id in &live.machine_ids {
            let m = self.client.get_machine(&live.fly_app, id).await?;
            let running = matches!(m.state.as_str(), "started" | "starting");
            awake.push((m.id.clone(), wake::Awake::Unchecked { running }));
            machines.push(m);
        }
        Ok(Some(self.live_route(app, self.route(app, &machines), &awake, logs)))
    }

    /// Makes sure `app`'s live machines run: a stopped (scaled to zero) or suspended machine is
    /// started and awaited. Concurrent callers share one start. Over Flycast fly-proxy does this itself.
    pub async fn ensure_started(&self, app: &str) -> Result<(), String> {
        let live = self.live_machines(app).await?.ok_or(format!("app {app} has no machine on Fly"))?;
        let starts = live.machine_ids.iter().map(|id| self.ensure_machine_started(app, id));
        for result in futures_util::future::join_all(starts).await {
            result?;
        }
        Ok(())
    }

    /// [`FlyRuntime::ensure_started`] for one machine of `app`. `Ok(true)` when it had to be started,
    /// `Ok(false)` when it was running already (one GET and a health probe).
    pub async fn ensure_machine_started(&self, app: &str, machine_id: &str) -> Result<bool, String> {
        let fly_app = self.fly_app(app);
        let gate =
            self.starting.lock().expect("start gates").entry(machine_id.to_string()).or_default().clone();
        let _one = gate.lock().await;
        let m = self.client.get_machine(&fly_app, machine_id).await?;
        let deadline = Instant::now() + self.cfg.start_timeout;
        let started = match m.state.as_str() {
            "started" => false,
            "stopped" | "suspended" | "created" => {
                if let Err(e) = self.client.start_machine(&fly_app, &m.id, None).await {
                    // Someone else may have started it meanwhile; the wait below decides.
                    tracing::debug!(app, "start: {e}");
                }
                true
            }
            "stopping" => {
                self.client.wait_state(&fly_app, &m.id, None, "stopped", deadline).await?;
                self.client.start_machine(&fly_app, &m.id, None).await?;
                true
            }
            "starting" | "replacing" => true,
            other => {
                return Err(format!(
                    "app {app}: machine {} is {other} and cannot be started; redeploy the app",
                    m.id
                ));
            }
        };
        if started {
            self.client.wait_state(&fly_app, &m.id, None, "started", deadline).await?;
        }
        self.wait_http(
            &self.direct_route(app, &m),
            &fly_app,
            &m.id,
            deadline.max(Instant::now() + self.cfg.boot_timeout),
        )
        .await?;
        Ok(started)
    }

    /// Scale to zero over 6PN: stops `app`'s live machines; the next request starts one again
    /// through its wake (or [`FlyRuntime::ensure_started`] starts them all).
    pub async fn scale_to_zero(&self, app: &str) -> Result<(), String> {
        let live = self.live_machines(app).await?.ok_or(format!("app {app} has no machine on Fly"))?;
        let stops = live.machine_ids.iter().map(|id| self.stop_machine(app, id));
        for result in futures_util::future::join_all(stops).await {
            result?;
        }
        Ok(())
    }

    /// Stops one machine of `app` (gracefully: SIGTERM, 10 s) and waits until it is `stopped`.
    pub async fn stop_machine(&self, app: &str, machine_id: &str) -> Result<(), String> {
        let fly_app = self.fly_app(app);
        self.client.stop_machine(&fly_app, machine_id, Some(Duration::from_secs(10)), None).await?;
        let deadline = Instant::now() + self.cfg.start_timeout;
        self.client.wait_state(&fly_app, machine_id, None, "stopped", deadline).await?;
        Ok(())
    }

    /// Machine states and their last `events` events for `info APP` / `logs APP`.
    pub async fn status(&self, app: &str, events: u32) -> Result<Vec<MachineStatus>, String> {
        let fly_app = self.fly_app(app);
        let mut out = Vec::new();
        for m in self.client.list_by_metadata(&fly_app, &[(META_APP, app)]).await? {
            let events = self
                .client
                .events(&fly_app, &m.id, events)
                .await
                .unwrap_or_default()
                .iter()
                .map(|e| StatusEvent {
                    at_ms: e.timestamp,
                    text: match e.exit_code() {
                        Some(code) => format!("{} ({}) exit code {code}", e.kind, e.status),
                        None => format!("{} ({})", e.kind, e.status),
                    },
                })
                .collect();
            out.push(MachineStatus {
                release: m.meta(META_RELEASE).and_then(|v| v.parse().ok()),
                id: m.id,
                state: m.state,
                region: m.region,
                events,
            });
        }
        Ok(out)
    }

    /// Waits until the machine's bridge answers HTTP (the runner installs the package first), or the
    /// machine stops/fails (then the error names its exit events).
    async fn wait_http(
        &self,
        route: &AppRoute,
        fly_app: &str,
        machine_id: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        let Some(HttpTarget { url, headers, .. }) = route.backend.http_target(0) else { return Ok(()) };
        let health = match url.rfind("/mcp") {
            Some(i) => format!("{}/healthz", &url[..i]),
            None => url.clone(),
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let mut polls = 0u32;
        loop {
            let mut req = http.get(&health);
            for (k, v) in headers.iter().filter(|(k, _)| k != "authorization") {
                req = req.header(k, v);
            }
            if let Ok(r) = req.send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            polls += 1;
            if polls.is_multiple_of(10) {
                let m = self.client.get_machine(fly_app, machine_id).await?;
                if matches!(m.state.as_str(), "stopped" | "failed" | "destroyed") {
                    return Err(format!(
                        "machine {machine_id} is {} before its server answered{}",
                        m.state,
                        self.exit_summary(fly_app, machine_id).await
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "machine {machine_id}'s server did not answer at {health} within {}s (installing the package at boot may need a larger [runtime.fly] boot_timeout){}",
                    self.cfg.boot_timeout.as_secs(),
                    self.exit_summary(fly_app, machine_id).await
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `"; it exited 2 times (last exit code 3)"` from the machine's events, or empty.
    async fn exit_summary(&self, fly_app: &str, machine_id: &str) -> String {
        let events = self.client.events(fly_app, machine_id, 20).await.unwrap_or_default();
        let exits: Vec<_> = events.iter().filter(|e| e.is_crash()).collect();
        match exits.first() {
            None => String::new(),
            Some(last) => format!(
                "; it exited {} time{}{}",
                exits.len(),
                if exits.len() == 1 { "" } else { "s" },
                last.exit_code().map(|c| format!(" (last exit code {c})")).unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_parses_durations_and_off() {
        let parse = |t: &str| toml::from_str::<FlyConfig>(t).map(|c| c.idle_timeout);
        assert_eq!(parse("").unwrap(), Duration::from_secs(15 * 60));
        assert_eq!(parse("idle_timeout = \"2s\"").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("idle_timeout = \"off\"").unwrap(), Duration::ZERO);
        assert_eq!(parse("idle_timeout = \"0s\"").unwrap(), Duration::ZERO);
        let err = parse("idle_timeout = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("\"off\""), "{err}");
    }
}
