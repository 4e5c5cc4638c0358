//! Warm spares: server processes started ahead of need, so a new session's `initialize` goes to a
//! process that is already running instead of paying the server's start-up (hundreds of milliseconds
//! for Python and Node servers, more in a fresh sandbox).
//!
//! For each stdio app whose route asks for it (`AppRoute::warm`, from the manifest's `[deploy] warm`),
//! the gateway keeps that many processes spawned with the route's exact argv, environment and working
//! directory — sandboxed like any session's process, never initialized. [`Spares::take`] hands one to a
//! new session (it is never shared: once taken it belongs to that session alone) and the caller asks
//! for a replacement in the background ([`Spares::fill`]).
//!
//! Invariants, each kept in one place here:
//! - **A spare never outlives its release.** Spares remember the backend they were started for; a take
//!   or fill that finds the route's backend changed (a push, a rollback, a restore) stops them all first,
//!   and [`Spares::drop_app`] stops them when the app is drained (restart, destroy) or the gateway stops.
//! - **A dead spare is never handed out.** `take` skips (and forgets) spares whose process exited; the
//!   reaper's [`Spares::tick`] replaces them.
//! - **Scale to zero keeps its meaning.** An app without a new session for `idle` releases its spares;
//!   the next session pays one start-up (counted in `catwalk_mcp_cold_starts_total`), then spares come
//!   back.
//! - **Spares count against the app's limits**: a fill never takes the app past `max_sessions_per_app`
//!   processes (open sessions plus spares).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::applog::{AppLogs, LogKind};
use super::metrics;
use super::stdio::{self, ChildProc, OwnEvents};
use super::{AppRoute, Backend};

/// A started, not yet initialized server process and the event sink its output will reach once a
/// session owns it.
pub struct Spare {
    pub proc: Arc<ChildProc>,
    pub events: Arc<OwnEvents>,
}

/// The spares of one app, all started for `backend`.
struct AppSpares {
    backend: Backend,
    ready: VecDeque<Spare>,
    /// Last time a session started (or the route changed): the idle clock of scale to zero.
    last_used: Instant,
    /// Released for idleness: no fills until the next session starts.
    asleep: bool,
}

/// Spares of every app (one per gateway).
pub struct Spares {
    apps: Mutex<HashMap<String, AppSpares>>,
    /// The gateway's children, which every spare joins.
    groups: Arc<stdio::LiveGroups>,
    logs: Arc<AppLogs>,
    kill_grace: Duration,
}

impl Spares {
    /// Spares joining `groups`, announced in `logs`, stopped with `kill_grace` like any child.
    pub fn new(groups: Arc<stdio::LiveGroups>, logs: Arc<AppLogs>, kill_grace: Duration) -> Spares {
        Spares { apps: Mutex::default(), groups, logs, kill_grace }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stop_all(ready: &mut VecDeque<Spare>) {
    for spare in ready.drain(..) {
        spare.proc.stop();
    }
}

impl Spares {
    /// Hands a running spare of `route` to a new session, if one is ready. `None` means the caller
    /// starts a process itself (a cold start) and should call [`Spares::fill`] afterwards either way.
    pub fn take(&self, app: &str, route: &AppRoute) -> Option<Spare> {
        let mut apps = lock(&self.apps);
        let entry = apps.get_mut(app)?;
        entry.last_used = Instant::now();
        entry.asleep = false;
        if entry.backend != route.backend {
            stop_all(&mut entry.ready);
            entry.backend = route.backend.clone();
        }
        while let Some(spare) = entry.ready.pop_front() {
            if !spare.proc.is_exited() {
                ::metrics::counter!(metrics::SPARES_TAKEN, "app" => app.to_string()).increment(1);
                set_ready_gauge(app, entry.ready.len());
                return Some(spare);
            }
        }
        set_ready_gauge(app, 0);
        None
    }

    /// Counts a session that started without a spare (the app was asleep, warming was off, or every
    /// spare was taken), and wakes the app's spares.
    pub fn cold_start(&self, app: &str, route: &AppRoute) {
        ::metrics::counter!(metrics::COLD_STARTS, "app" => app.to_string()).increment(1);
        let mut apps = lock(&self.apps);
        if let Some(entry) = apps.get_mut(app) {
            entry.asleep = false;
            entry.last_used = Instant::now();
        } else if route.warm > 0 {
            apps.insert(app.to_string(), fresh(&route.backend));
        }
    }

    /// Starts spares of `route` until `route.warm` are ready (fewer when `sessions` open sessions
    /// plus the spares would exceed `max_processes`). Stops spares of an older backend first.
    /// Each started process is announced in the app's log as `process N {what}`.
    pub fn fill(&self, app: &str, route: &AppRoute, sessions: usize, max_processes: usize, what: &str) {
        let (logs, kill_grace) = (&self.logs, self.kill_grace);
        let Backend::Stdio { argv, env, cwd } = &route.backend else {
            return self.drop_app(app);
        };
        if route.shared || route.warm == 0 {
            return self.drop_app(app);
        }
        let mut apps = lock(&self.apps);
        let entry = apps.entry(app.to_string()).or_insert_with(|| fresh(&route.backend));
        if entry.backend != route.backend {
            stop_all(&mut entry.ready);
            entry.backend = route.backend.clone();
            entry.asleep = false;
            entry.last_used = Instant::now();
        }
        if entry.asleep {
            return;
        }
        entry.ready.retain(|s| !s.proc.is_exited());
        let room = max_processes.saturating_sub(sessions);
        let want = route.warm.min(room);
        while entry.ready.len() < want {
            let events = Arc::new(OwnEvents::default());
            let cmd = stdio::Command { groups: &self.groups, app, argv, env, cwd };
            match stdio::spawn(cmd, events.clone(), logs.clone(), kill_grace) {
                Ok(proc) => {
                    logs.push(app, LogKind::Event, &format!("process {} {what}", proc.pid));
                    entry.ready.push_back(Spare { proc, events });
                }
                Err(e) => {
                    // The next session will try (and report the error to its client).
                    logs.push(app, LogKind::Event, &format!("could not start a warm spare: {e}"));
                    break;
                }
            }
        }
        set_ready_gauge(app, entry.ready.len());
    }

    /// Stops and forgets the spares of `app` (restart, destroy, a route that no longer wants any).
    pub fn drop_app(&self, app: &str) {
        if let Some(mut entry) = lock(&self.apps).remove(app) {
            stop_all(&mut entry.ready);
            set_ready_gauge(app, 0);
        }
    }

    /// Stops every spare (gateway shutdown).
    pub fn drop_all(&self) {
        for (app, mut entry) in lock(&self.apps).drain() {
            stop_all(&mut entry.ready);
            set_ready_gauge(&app, 0);
        }
    }

    /// The reaper's periodic pass: releases the spares of apps idle for `idle` (scale to zero) and
    /// returns the apps whose spares should be topped up (dead spares replaced).
    pub fn tick(&self, idle: Option<Duration>) -> Vec<String> {
        let logs = &self.logs;
        let mut apps = lock(&self.apps);
        let mut awake = Vec::new();
        for (app, entry) in apps.iter_mut() {
            if entry.asleep {
                continue;
            }
            if let Some(idle) = idle
                && entry.last_used.elapsed() >= idle
            {
                entry.asleep = true;
                if !entry.ready.is_empty() {
                    logs.push(
                        app,
                        LogKind::Event,
                        "warm spares released: no new session for the idle timeout",
                    );
                }
                stop_all(&mut entry.ready);
                set_ready_gauge(app, 0);
                continue;
            }
            awake.push(app.clone());
        }
        awake
    }

    /// Spares ready for `app` (for `info` and tests).
    pub fn ready(&self, app: &str) -> usize {
        lock(&self.apps).get(app).map(|e| e.ready.len()).unwrap_or(0)
    }
}

fn fresh(backend: &Backend) -> AppSpares {
    AppSpares { backend: backend.clone(), ready: VecDeque::new(), last_used: Instant::now(), asleep: false }
}

fn set_ready_gauge(app: &str, n: usize) {
    ::metrics::gauge!(metrics::SPARES_READY, "app" => app.to_string()).set(n as f64);
}
