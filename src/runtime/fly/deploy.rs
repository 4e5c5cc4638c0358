//! Blue/green deploys on Fly Machines.
//!
//! [`FlyRuntime::deploy`] stages a release without touching what serves now:
//! 1. ensure the Fly app (`app_prefix` + name, in the configured org, on its own 6PN network);
//! 2. clean up machines an interrupted deploy left behind (found by metadata: not the live release);
//! 3. set the app's secrets (the release's plus the bridge credential, and for a repository release its
//!    one-time source token; removed ones unset) → version N;
//! 4. create the new machines (`[deploy] machines`, default one) with `min_secrets_version = N` and
//!    `skip_service_registration` (fly-proxy does not route to them yet), idempotently (launch ULID +
//!    a unique name per machine, `…-vN-LAUNCH`, `…-vN-LAUNCH-1`, …);
//! 5. for each machine, at the same time: wait for `started` (the `/wait` 408 loop), wait for the
//!    bridge to answer, check it is not restart-looping (exit events), and run the MCP health gate
//!    through the URL and credential the proxy will use;
//! 6. over Flycast, uncordon the new machines so fly-proxy routes to them (flyctl's blue/green does the
//!    same).
//!
//! Any failure destroys every new machine and leaves the old ones serving: a release runs on all its
//! machines or on none. On success the caller switches its route to [`Staged::route`], then calls
//! [`FlyRuntime::commit`] (cordon, stop and destroy the old machines) — or [`FlyRuntime::abort`] if it
//! could not switch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::machine::{machine_config, new_launch_id};
use super::source::SOURCE_PATH;
use super::types::{Machine, MachineRequest, SecretsUpdate};
use super::wake::Awake;
use super::{
    BRIDGE_TOKEN_SECRET, FlyRuntime, LiveMachines, META_APP, META_LAUNCH, META_RELEASE, Network,
    SOURCE_TOKEN_SECRET,
};
use crate::gateway::AppRoute;
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::{Secrets, Source};
use crate::runtime::{Runtime, StageRequest, health};
use crate::store::{Introspection, ReleaseRecord};

/// The exported source of a release built from its repository, for its machine to download.
#[derive(Debug, Clone)]
pub struct ReleaseSource {
    /// `releases/vN/src` of the app.
    pub dir: std::path::PathBuf,
    /// The daemon's URL as machines reach it, unless `[runtime.fly] daemon_url` says otherwise.
    pub daemon_url: String,
}

/// A release running on new machines that passed their health gates, not yet serving.
#[derive(Debug, Clone)]
pub struct Staged {
    pub app: String,
    pub fly_app: String,
    pub release: u32,
    pub launch: String,
    /// The release's machines, in the order of the route's targets (never empty).
    pub machines: Vec<Machine>,
    /// The route the gateway should switch to.
    pub route: AppRoute,
    pub introspection: Introspection,
    /// Machines of the previous release, retired by [`FlyRuntime::commit`].
    pub old_machines: Vec<String>,
    pub secrets_version: u64,
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// `" (2 of 3)"` for the machine at `index` of `count`, or empty for a release of one machine.
fn of_count(index: usize, count: usize) -> String {
    if count > 1 { format!(" ({} of {count})", index + 1) } else { String::new() }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl FlyRuntime {
    /// Stages `release` on a new machine (see the module docs). `live_release` is the version that
    /// serves now (its machines are kept until [`FlyRuntime::commit`]); machines of any other release
    /// are leftovers of interrupted deploys and are destroyed first.
    pub async fn deploy(
        &self,
        release: &ReleaseRecord,
        secrets: &Secrets,
        live_release: Option<u32>,
        progress: &Progress,
    ) -> Result<Staged, String> {
        self.deploy_with_source(release, secrets, live_release, None, progress).await
    }

    /// [`FlyRuntime::deploy`] for any release: `source` is required for one built from its repository.
    /// Its machine gets a one-time source token (a Fly secret), revoked once the deploy ends.
    pub async fn deploy_with_source(
        &self,
        release: &ReleaseRecord,
        secrets: &Secrets,
        live_release: Option<u32>,
        source: Option<&ReleaseSource>,
        progress: &Progress,
    ) -> Result<Staged, String> {
        let grant = source.map(|s| {
            let base = self.cfg.daemon_url.as_deref().unwrap_or(&s.daemon_url).trim_end_matches('/');
            let machines = release.plan.machines.unwrap_or(1);
            let token = self.sources.grant(&release.app, release.version, &s.dir, machines);
            (format!("{base}{SOURCE_PATH}"), token)
        });
        let result = self.stage_machine(release, secrets, live_release, grant.as_ref(), progress).await;
        if grant.is_some() {
            self.sources.revoke(&release.app, release.version);
        }
        result
    }

    async fn stage_machine(
        &self,
        release: &ReleaseRecord,
        secrets: &Secrets,
        live_release: Option<u32>,
        source: Option<&(String, String)>,
        progress: &Progress,
    ) -> Result<Staged, String> {
        for reserved in [BRIDGE_TOKEN_SECRET, SOURCE_TOKEN_SECRET] {
            if secrets.contains_key(reserved) {
                return Err(format!("{reserved} is reserved by catwalk; rename that secret"));
            }
        }
        let app = release.app.as_str();
        let fly_app = self.fly_app(app);
        self.ensure_app(&fly_app).await?;

        // Leftovers of interrupted deploys (daemon killed mid-deploy, failed cleanup).
        let machines = self.client.list_by_metadata(&fly_app, &[(META_APP, app)]).await?;
        let live = live_release.map(|v| v.to_string());
        let (old, leftovers): (Vec<_>, Vec<_>) =
            machines.into_iter().partition(|m| live.is_some() && m.meta(META_RELEASE) == live.as_deref());
        for m in &leftovers {
            self.retire(&fly_app, &m.id).await?;
            progress.step(format!(
                "fly: removed machine {} left by an interrupted deploy (release v{})",
                short(&m.id),
                m.meta(META_RELEASE).unwrap_or("?")
            ));
        }

        // Secrets: the release's values plus the bridge credential; names no longer used are unset.
        let mut update = SecretsUpdate::default();
        for (k, v) in secrets {
            update.values.insert(k.clone(), Some(v.expose().to_string()));
        }
        update.values.insert(BRIDGE_TOKEN_SECRET.into(), Some(self.bridge_token(app)));
        if let Some((_, token)) = source {
            update.values.insert(SOURCE_TOKEN_SECRET.into(), Some(token.clone()));
        }
        for name in self.client.secret_names(&fly_app).await? {
            update.values.entry(name).or_insert(None);
        }
        let secrets_version = self.client.set_secrets(&fly_app, &update).await?;

        let launch = new_launch_id();
        let config =
            machine_config(&self.cfg, release, secrets, &launch, source.map(|(url, _)| url.as_str()))?;
        let count = release.plan.machines.unwrap_or(1).max(1) as usize;
        let started = Instant::now();
        let mut created: Vec<Machine> = Vec::new();
        let mut failure = None;
        let base = format!("{fly_app}-v{}-{}", release.version, launch.to_ascii_lowercase());
        for index in 0..count {
            let req = MachineRequest {
                config: config.clone(),
                name: Some(if index == 0 { base.clone() } else { format!("{base}-{index}") }),
                region: Some(self.cfg.region.clone()),
                min_secrets_version: Some(secrets_version),
                skip_service_registration: true,
                ..Default::default()
            };
            match self.client.create_machine_idempotent(&fly_app, &req, META_LAUNCH).await {
                Ok(machine) => {
                    progress.step(format!(
                        "fly: app {fly_app}, secrets version {secrets_version}, machine {} ({}) created{}",
                        machine.id,
                        machine.region,
                        of_count(index, count)
                    ));
                    created.push(machine);
                }
                Err(e) => {
                    let mut msg = e.to_string();
                    if matches!(e.status(), Some(412 | 500)) && e.message.contains("capacity") {
                        msg.push_str(&format!(
                            "; region {} has no capacity for this guest size right now: retry, or change [runtime.fly] region/guest",
                            self.cfg.region
                        ));
                    }
                    failure = Some(msg);
                    break;
                }
            }
        }
        let gated = match failure {
            Some(e) => Err(e),
            None => self.gate_all(app, &fly_app, &created, progress, started).await,
        };
        match gated {
            Ok((machines, introspection)) => Ok(Staged {
                app: app.to_string(),
                fly_app,
                release: release.version,
                launch,
                route: self.route(app, &machines),
                machines,
                introspection,
                old_machines: old.into_iter().map(|m| m.id).collect(),
                secrets_version,
            }),
            Err(e) => {
                for machine in &created {
                    match self.retire(&fly_app, &machine.id).await {
                        Ok(()) => progress
                            .step(format!("fly: machine {} destroyed (release failed)", short(&machine.id))),
                        Err(c) => progress.step(format!(
                            "fly: could not destroy machine {} ({c}); the next deploy removes it",
                            short(&machine.id)
                        )),
                    }
                }
                Err(e)
            }
        }
    }

    /// Gates every new machine at once (see [`FlyRuntime::gate`]); over Flycast each joins fly-proxy once
    /// healthy, before the route switches (requests are pinned with fly-force-instance-id, so nothing
    /// reaches it before the switch). The first failure fails the release.
    async fn gate_all(
        &self,
        app: &str,
        fly_app: &str,
        machines: &[Machine],
        progress: &Progress,
        started: Instant,
    ) -> Result<(Vec<Machine>, Introspection), String> {
        let count = machines.len();
        let gates = machines.iter().enumerate().map(|(index, machine)| async move {
            let (machine, intro) =
                self.gate(app, fly_app, machine, progress, started, of_count(index, count)).await?;
            if self.cfg.network == Network::Flycast {
                self.client.uncordon(fly_app, &machine.id).await?;
            }
            Ok::<_, String>((machine, intro))
        });
        let mut gated = Vec::new();
        let mut introspection = None;
        for result in futures_util::future::join_all(gates).await {
            let (machine, intro) = result?;
            introspection.get_or_insert(intro);
            gated.push(machine);
        }
        let introspection = introspection.ok_or("a release needs at least one machine")?;
        Ok((gated, introspection))
    }

    /// Started → answering → not looping → MCP healthy. `which` names the machine among several in
    /// the progress line (`" (2 of 3)"`), or is empty.
    async fn gate(
        &self,
        app: &str,
        fly_app: &str,
        machine: &Machine,
        progress: &Progress,
        started: Instant,
        which: String,
    ) -> Result<(Machine, Introspection), String> {
        self.wait_started(fly_app, machine).await?;
        let machine = self.client.get_machine(fly_app, &machine.id).await?;
        // Until commit the machine is not registered with fly-proxy (skip_service_registration), so
        // the gate always goes over 6PN, straight to the machine's bridge, with the proxy's credential.
        let direct = self.direct_route(app, &machine);
        self.wait_http(&direct, fly_app, &machine.id, Instant::now() + self.cfg.boot_timeout).await?;
        let boot = started.elapsed();
        self.smoke(fly_app, &machine.id).await?;
        let Backend { url, token } = backend_of(&direct);
        let t = Instant::now();
        let intro = health::probe(&url, Some(&token), self.cfg.health_timeout, health::Style::Session)
            .await
            .map_err(|e| format!("machine {} failed the MCP health check: {e}", short(&machine.id)))?;
        // A server that answered once and then crashed is restart-looping: check again.
        self.smoke(fly_app, &machine.id).await?;
        progress.step(format!(
            "fly: machine{which} started in {}, MCP healthy in {}: {} tool{}",
            secs(boot),
            secs(t.elapsed()),
            intro.tools.len(),
            if intro.tools.len() == 1 { "" } else { "s" }
        ));
        Ok((machine, intro))
    }

    /// Waits until a new machine is `started`, in turns of a few seconds: a machine whose process
    /// crashed until its restart policy gave up is `stopped` and would never get there (it can be, by the
    /// time its turn comes, when several machines are created one after the other).
    async fn wait_started(&self, fly_app: &str, machine: &Machine) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            let turn = (Instant::now() + Duration::from_secs(5)).min(deadline);
            let id = &machine.id;
            match self.client.wait_state(fly_app, id, Some(&machine.instance_id), "started", turn).await {
                Ok(()) => return Ok(()),
                Err(e) if e.status() == Some(408) && Instant::now() < deadline => {
                    let m = self.client.get_machine(fly_app, id).await?;
                    if matches!(m.state.as_str(), "stopped" | "failed" | "destroyed") {
                        return Err(format!(
                            "machine {} is {} instead of starting{}",
                            short(id),
                            m.state,
                            self.exit_summary(fly_app, id).await
                        ));
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Fails when the machine is not `started` or its events show its process exiting.
    async fn smoke(&self, fly_app: &str, id: &str) -> Result<(), String> {
        let m = self.client.get_machine(fly_app, id).await?;
        let events = self.client.events(fly_app, id, 20).await?;
        let exits = events.iter().filter(|e| e.is_crash()).count();
        if m.state != "started" || exits > 0 {
            return Err(format!(
                "machine {} is not running steadily (state {}){}",
                short(id),
                m.state,
                self.exit_summary(fly_app, id).await
            ));
        }
        Ok(())
    }

    /// Stops (gracefully, under a lease) and destroys one machine. A machine already gone is fine.
    async fn retire(&self, fly_app: &str, id: &str) -> Result<(), String> {
        let lease =
            match self.client.acquire_lease(fly_app, id, Duration::from_secs(60), "catwalk: retire").await {
                Ok(l) => Some(l),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
        let nonce = lease.as_deref();
        if self.client.stop_machine(fly_app, id, Some(Duration::from_secs(10)), nonce).await.is_ok() {
            let deadline = Instant::now() + Duration::from_secs(30);
            let _ = self.client.wait_state(fly_app, id, None, "stopped", deadline).await;
        }
        let result = self.client.destroy_machine(fly_app, id, nonce).await;
        if result.is_err()
            && let Some(n) = nonce
        {
            let _ = self.client.release_lease(fly_app, id, n).await;
        }
        result.map_err(String::from)
    }

    /// Creates the Fly app on its own network unless it exists.
    async fn ensure_app(&self, fly_app: &str) -> Result<(), String> {
        if self.client.get_app(fly_app).await?.is_some() {
            return Ok(());
        }
        match self.client.create_app(fly_app, &self.cfg.org, Some(fly_app)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.status(), Some(409 | 422)) => {
                // Created meanwhile by us (a retried request), or the name belongs to someone else.
                match self.client.get_app(fly_app).await {
                    Ok(Some(_)) => Ok(()),
                    _ => Err(format!(
                        "the Fly app name {fly_app} is taken by another organization ({e}); choose another [runtime.fly] app_prefix"
                    )),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

struct Backend {
    url: String,
    token: String,
}

/// URL and bridge token of a route built by [`FlyRuntime::route`].
fn backend_of(route: &AppRoute) -> Backend {
    match route.backend.http_target(0) {
        Some(target) => Backend {
            url: target.url.clone(),
            token: target
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .and_then(|(_, v)| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_string(),
        },
        None => Backend { url: String::new(), token: String::new() },
    }
}

/// The Fly runtime through the seam the deployer uses for every runtime (see [`Runtime`]).
impl Runtime for FlyRuntime {
    type Staged = Staged;

    /// Stages the release on a new machine (its source, for a repository release, downloaded once with
    /// a one-time token), and makes its route: over 6PN with the machine's wake (scale to zero).
    async fn stage(self: &Arc<Self>, req: StageRequest<'_>) -> Result<(AppRoute, Staged), String> {
        let StageRequest { app, release, secrets, source_dir, live, public_url, logs, progress, .. } = req;
        let started = Instant::now();
        let source = match release.plan.source {
            Source::Package { .. } => None,
            Source::Repository => {
                let of = release.rollback_of.unwrap_or(release.version);
                let dir = source_dir.filter(|dir| dir.is_dir()).ok_or_else(|| {
                    format!(
                        "the source of release v{of} is no longer kept on the daemon; push the commit again"
                    )
                })?;
                Some(ReleaseSource { dir, daemon_url: public_url.to_string() })
            }
        };
        let staged = self.deploy_with_source(release, secrets, live, source.as_ref(), progress).await?;
        let machines: Vec<_> = staged.machines.iter().map(|m| (m.id.clone(), Awake::Started)).collect();
        let route = self.live_route(app.as_str(), staged.route.clone(), &machines, logs);
        release.timings.push(("fly".into(), started.elapsed().as_millis() as u64));
        release.introspection = Some(staged.introspection.clone());
        Ok((route, staged))
    }

    /// Makes the staged release the live one: stops and destroys the old machines (cordoned first over
    /// Flycast). Call after switching the route.
    async fn commit(&self, _app: &AppName, staged: &Staged, progress: &Progress) -> Result<(), String> {
        self.live.lock().expect("live map").insert(
            staged.app.clone(),
            LiveMachines {
                fly_app: staged.fly_app.clone(),
                machine_ids: staged.machines.iter().map(|m| m.id.clone()).collect(),
                release: staged.release,
            },
        );
        let mut problems = Vec::new();
        for id in &staged.old_machines {
            if self.cfg.network == Network::Flycast {
                // fly-proxy stops sending new connections to it; pinned sessions moved with the route.
                let _ = self.client.cordon(&staged.fly_app, id).await;
            }
            match self.retire(&staged.fly_app, id).await {
                Ok(()) => progress.step(format!("fly: old machine {} stopped and destroyed", short(id))),
                Err(e) => problems.push(format!("machine {}: {e}", short(id))),
            }
        }
        // Machines of this launch other than the staged ones (a create retried after a lost answer).
        let strays =
            self.client.list_by_metadata(&staged.fly_app, &[(META_LAUNCH, staged.launch.as_str())]).await?;
        for m in strays.into_iter().filter(|m| staged.machines.iter().all(|s| s.id != m.id)) {
            if let Err(e) = self.retire(&staged.fly_app, &m.id).await {
                problems.push(format!("machine {}: {e}", short(&m.id)));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the new release serves, but retiring old machines failed (the next deploy retries): {}",
                problems.join("; ")
            ))
        }
    }

    /// Gives up a staged release (the caller could not switch to it): destroys its machines.
    async fn abort(&self, _app: &AppName, staged: &Staged, progress: &Progress) -> Result<(), String> {
        let mut problems = Vec::new();
        for machine in &staged.machines {
            match self.retire(&staged.fly_app, &machine.id).await {
                Ok(()) => progress
                    .step(format!("fly: machine {} destroyed (release not switched)", short(&machine.id))),
                Err(e) => problems.push(format!("machine {}: {e}", short(&machine.id))),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The machines are stopped and started again (their bridges and servers start fresh).
    async fn restart(&self, app: &AppName, live: Option<&ReleaseRecord>) -> Result<String, String> {
        self.scale_to_zero(app.as_str()).await?;
        self.ensure_started(app.as_str()).await?;
        let release = live.map(|l| format!("release v{}'s ", l.version)).unwrap_or_default();
        let count = self.live_machines(app.as_str()).await?.map_or(1, |l| l.machine_ids.len());
        let what =
            if count == 1 { "Fly machine was".to_string() } else { format!("{count} Fly machines were") };
        Ok(format!("restarted: {release}{what} stopped and started again"))
    }

    /// `apps destroy`: deletes the Fly app (its machines, secrets and network go with it).
    async fn destroy(&self, app: &AppName) -> Result<(), String> {
        self.live.lock().expect("live map").remove(app.as_str());
        self.retire_wake(app.as_str());
        self.client.delete_app(&self.fly_app(app.as_str())).await.map_err(String::from)
    }
}
