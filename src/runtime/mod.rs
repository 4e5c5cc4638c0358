//! Runtimes run releases. The local runtime (the embedded default) installs packages into the data dir and
//! runs servers as child processes behind the gateway; the Fly runtime (`fly/`) runs each app on Fly.io
//! Machines and the gateway proxies to them over HTTP.

pub mod fly;
pub mod health;
pub mod http_server;
pub mod install;
pub mod local;
pub mod routes;
pub mod sandbox;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::gateway::{AppLogs, AppRoute, Primed};
use crate::names::AppName;
use crate::output::Progress;
use crate::plan::Secrets;
use crate::store::ReleaseRecord;

pub use local::LocalRuntime;

/// A release to stage, as the deployer hands it to a runtime.
pub struct StageRequest<'a> {
    pub app: &'a AppName,
    /// The release being deployed (status `deploying`); the runtime records its timings, install and
    /// introspection in it.
    pub release: &'a mut ReleaseRecord,
    pub secrets: &'a Secrets,
    /// The exported source of a release built from its repository (`releases/vN/src`).
    pub source_dir: Option<PathBuf>,
    /// The version serving now when it runs on this runtime (what a commit retires).
    pub live: Option<u32>,
    /// The daemon's `http(s)://HOST:PORT`, for machines that download their source from it.
    pub public_url: &'a str,
    /// The app's log (server stderr, lifecycle events).
    pub logs: &'a Arc<AppLogs>,
    pub progress: &'a Progress,
    /// Records the release as it is now (e.g. once installed), so `releases` shows a deploy in
    /// progress and a crash mid-gate leaves its install on record.
    pub checkpoint: &'a (dyn Fn(&ReleaseRecord) + Send + Sync),
}

/// The shape both runtimes have, so the deployer reads the same for each: stage the new release beside
/// the live one and prove it answers MCP, switch the route, then commit (retire what served before) —
/// or abort (drop the staged release, the live one never stopped serving).
///
/// Restoring live releases after a restart stays on each runtime (`LocalRuntime::restore`,
/// `FlyRuntime::restore_route`): the local one needs the secrets decrypted again, the Fly one only finds
/// its machine.
pub trait Runtime {
    /// What a staged release holds until it is committed or aborted.
    type Staged: Send + Sync;

    /// Installs and starts the release without touching what serves now, and health-gates it. Returns
    /// its route (without the daemon-wide origins, rate limit and auth, which the deployer adds) and the
    /// staged handle. On error nothing of the release is left running.
    fn stage(
        self: &Arc<Self>,
        req: StageRequest<'_>,
    ) -> impl Future<Output = Result<(AppRoute, Self::Staged), String>> + Send;

    /// The route now points at the staged release: retire what served before. An error leaves the new
    /// release serving (the message says what is left over).
    fn commit(
        &self,
        app: &AppName,
        staged: &Self::Staged,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// What the staged release's health gate learnt and proved, for the daemon's gateway to adopt when
    /// the release goes live (`gateway::Primed`); taken once. Only stdio releases of the local runtime
    /// have one.
    fn take_primed(&self, _staged: &Self::Staged) -> Option<Primed> {
        None
    }

    /// The staged release will not serve: stop it and remove what it created.
    fn abort(
        &self,
        app: &AppName,
        staged: &Self::Staged,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// `restart`: the live release's processes or machine stop and start fresh (`live` is `None` for an
    /// app of the daemon's config, which has no releases). Returns what was done.
    fn restart(
        &self,
        app: &AppName,
        live: Option<&ReleaseRecord>,
    ) -> impl Future<Output = Result<String, String>> + Send;

    /// `apps destroy`: stops everything of the app on this runtime for good.
    fn destroy(&self, app: &AppName) -> impl Future<Output = Result<(), String>> + Send;
}
