//! Scale to zero over 6PN: the daemon stops an idle machine and starts it again for the next request.
//!
//! Over Flycast fly-proxy does this itself (autostop/autostart). Over 6PN nothing stands between the
//! gateway and the machine, so the live route carries a [`FlyWake`] (the gateway's [`Wake`] contract):
//! - the gateway marks each request in flight, then asks [`Wake::is_awake`]; when the machine may be
//!   stopped it calls [`Wake::wake`], which starts it ([`FlyRuntime::ensure_machine_started`]) and
//!   returns once its bridge answers, so the request waits instead of failing;
//! - an idle task stops the machine after `[runtime.fly] idle_timeout` with nothing in flight. It first
//!   marks the machine asleep, then re-checks the in-flight count (both sequentially consistent): a
//!   request either is seen in flight (the stop is skipped) or sees "asleep" and waits in `wake`.
//!   Stopping and starting hold the same mutex, so a request that arrives during a stop waits for it
//!   and then starts the machine again.
//!
//! One wake per machine of the live route (an app of several machines scales each one on its own: the
//! gateway sends requests of no session to machines that are awake, so under little load the others
//! fall idle and stop). They end when the route is replaced (the next deploy calls
//! [`FlyRuntime::live_route`], which retires the previous wakes), when the app is destroyed, or when
//! nothing holds the route any more (the idle task only keeps a `Weak`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{FlyRuntime, Network};
use crate::gateway::{Activity, AppLogs, AppRoute, Backend, HttpTarget, LogKind, Wake, WakeHandle};

/// What the daemon knows about a machine when it makes its route live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awake {
    /// Just started and health-gated (a deploy).
    Started,
    /// Not checked (a daemon restart): the first request asks Fly. `running` is the state Fly last
    /// reported, so that a machine left running is still stopped when idle.
    Unchecked { running: bool },
}

/// The wake of one app's live machine over 6PN (see the module docs).
pub struct FlyWake {
    runtime: Weak<FlyRuntime>,
    app: String,
    machine_id: String,
    /// Requests may be forwarded without asking Fly.
    awake: AtomicBool,
    /// The machine may be running, so the idle task has something to stop.
    running: AtomicBool,
    retired: AtomicBool,
    activity: Arc<Activity>,
    /// Held while stopping and while starting: the two never overlap.
    gate: tokio::sync::Mutex<()>,
    /// Cancelled when the wake is retired: ends the idle task.
    stop: CancellationToken,
    logs: Arc<AppLogs>,
}

impl Wake for FlyWake {
    fn is_awake(&self) -> bool {
        self.awake.load(SeqCst)
    }

    fn wake(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.start())
    }

    /// Stopped by its idle timer (or by Fly's last word before a daemon restart); a machine not yet
    /// checked since a restart but reported running is not asleep.
    fn is_asleep(&self) -> bool {
        !self.awake.load(SeqCst) && !self.running.load(SeqCst)
    }

    fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn is_retired(&self) -> bool {
        self.retired.load(SeqCst)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

impl FlyWake {
    /// Starts the machine unless it is awake (or waits for a stop under way, then starts it).
    async fn start(&self) -> Result<(), String> {
        let _one = self.gate.lock().await;
        if self.awake.load(SeqCst) {
            return Ok(());
        }
        if self.retired.load(SeqCst) {
            return Err("the app's release was just replaced; retry the request".into());
        }
        let runtime = self.runtime.upgrade().ok_or("the daemon is shutting down")?;
        let began = Instant::now();
        let started = match runtime.ensure_machine_started(&self.app, &self.machine_id).await {
            Ok(started) => started,
            Err(e) => {
                self.event(&format!("fly: machine {} could not be started on demand: {e}", self.machine_id));
                return Err(e);
            }
        };
        // Counts as fresh use: the idle timer starts over from the start.
        self.activity.touch();
        self.running.store(true, SeqCst);
        self.awake.store(true, SeqCst);
        if started {
            self.event(&format!(
                "fly: machine {} started on demand in {:.1}s",
                self.machine_id,
                began.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    }

    /// One turn of the idle timer: stops the machine when nothing was in flight for `timeout`.
    async fn stop_if_idle(&self, timeout: Duration) {
        let idle_enough = |a: &Activity| a.idle_for().is_some_and(|d| d >= timeout);
        if !self.running.load(SeqCst) || !idle_enough(&self.activity) {
            return;
        }
        let _one = self.gate.lock().await;
        if self.stop.is_cancelled() || !self.running.load(SeqCst) {
            return;
        }
        // Asleep first, then re-check: a request that began before this swap is seen in flight; one
        // that begins after it sees "asleep" and waits for the gate in `start`.
        let was_awake = self.awake.swap(false, SeqCst);
        let Some(idle) = self.activity.idle_for().filter(|d| *d >= timeout) else {
            if was_awake {
                self.awake.store(true, SeqCst);
            }
            return;
        };
        let Some(runtime) = self.runtime.upgrade() else { return };
        match runtime.stop_machine(&self.app, &self.machine_id).await {
            Ok(()) => {
                self.running.store(false, SeqCst);
                let idle = humantime::format_duration(Duration::from_secs(idle.as_secs()));
                self.event(&format!(
                    "fly: machine {} stopped after {idle} idle (scale to zero)",
                    self.machine_id
                ));
            }
            Err(e) => {
                // Not known to be running or stopped: the next request asks Fly (awake stays false),
                // and the next attempt waits another idle period instead of retrying every tick.
                self.activity.touch();
                self.event(&format!(
                    "fly: stopping idle machine {} failed ({e}); the next request checks it",
                    short(&self.machine_id)
                ));
            }
        }
    }

    fn retire(&self) {
        self.retired.store(true, SeqCst);
        self.stop.cancel();
    }

    fn event(&self, text: &str) {
        tracing::info!(app = %self.app, "{text}");
        self.logs.push(&self.app, LogKind::Event, text);
    }
}

/// Runs [`FlyWake::stop_if_idle`] every quarter of `timeout` until the wake is retired or dropped.
async fn idle_task(wake: Weak<FlyWake>, stop: CancellationToken, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(wake) = wake.upgrade() else { return };
        wake.stop_if_idle(timeout).await;
    }
}

impl FlyRuntime {
    /// Makes `route` (of `app`'s machines `machines`, in the order of its targets, with what is known
    /// about each) the one the daemon serves: over 6PN each machine gets a [`FlyWake`], and an idle task
    /// when `idle_timeout` is set. The previous live route's wakes are retired (their idle tasks end;
    /// sessions pinned to them move on). Must run inside the tokio runtime.
    pub fn live_route(
        self: &Arc<Self>,
        app: &str,
        route: AppRoute,
        machines: &[(String, Awake)],
        logs: &Arc<AppLogs>,
    ) -> AppRoute {
        self.retire_wake(app);
        if self.cfg.network != Network::SixPn {
            return route;
        }
        let targets = match &route.backend {
            Backend::Http { targets } => targets,
            Backend::Stdio { .. } => return route,
        };
        let mut wakes = Vec::new();
        let targets = targets
            .iter()
            .zip(machines)
            .map(|(target, (machine_id, awake))| {
                let (is_awake, running) = match *awake {
                    Awake::Started => (true, true),
                    Awake::Unchecked { running } => (false, running),
                };
                let wake = Arc::new(FlyWake {
                    runtime: Arc::downgrade(self),
                    app: app.to_string(),
                    machine_id: machine_id.clone(),
                    awake: AtomicBool::new(is_awake),
                    running: AtomicBool::new(running),
                    retired: AtomicBool::new(false),
                    activity: Arc::new(Activity::default()),
                    gate: tokio::sync::Mutex::new(()),
                    stop: CancellationToken::new(),
                    logs: logs.clone(),
                });
                wakes.push(Arc::downgrade(&wake));
                if !self.cfg.idle_timeout.is_zero() {
                    tokio::spawn(idle_task(Arc::downgrade(&wake), wake.stop.clone(), self.cfg.idle_timeout));
                }
                HttpTarget::new(target.url.clone(), target.headers.clone(), Some(WakeHandle(wake)))
            })
            .collect();
        self.wakes.lock().expect("wakes").insert(app.to_string(), wakes);
        AppRoute { backend: Backend::Http { targets }, ..route }
    }

    /// Ends the wakes of `app`'s live route (replaced or destroyed).
    pub(super) fn retire_wake(&self, app: &str) {
        let old = self.wakes.lock().expect("wakes").remove(app).unwrap_or_default();
        for w in old.iter().filter_map(|w| w.upgrade()) {
            w.retire();
        }
    }
}
