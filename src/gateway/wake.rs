//! Waking HTTP backends that scale to zero, and telling their owners when they are in use.
//!
//! A local HTTP server stopped after its idle time and a Fly machine stopped over 6PN have the same
//! need: the gateway must start them before it forwards a request, and whoever stops them must know
//! whether a request or an open SSE stream is still using them. [`Wake`] is that contract. The
//! gateway marks a request in flight ([`Activity::begin`]) *before* asking whether the backend is
//! awake, and holds the [`InFlight`] guard until the response body ends; an idle timer that first
//! marks the backend asleep and then re-checks [`Activity::in_flight`] therefore never stops a
//! backend under a request it has let through (both sides use sequentially consistent atomics).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A backend that may need starting before it can answer.
pub trait Wake: Send + Sync {
    /// Cheap check on every request: `true` when requests can be forwarded right away.
    fn is_awake(&self) -> bool;
    /// Starts the backend (or waits for a start already under way) and returns once it accepts
    /// requests. The error says what failed and is shown to the client (503).
    fn wake(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
    /// The backend's request counter, read by its idle timer.
    fn activity(&self) -> &Arc<Activity>;
    /// `true` when the backend is known to be stopped (scaled to zero), as opposed to merely not yet
    /// checked: a request placed on it would wait for a start. (`upstream::place` prefers the others.)
    fn is_asleep(&self) -> bool {
        !self.is_awake()
    }
    /// `true` once the backend was replaced and has stopped: sessions pinned to it are over.
    fn is_retired(&self) -> bool {
        false
    }
}

/// A shared [`Wake`] in a route. Two handles are equal when they are the same backend.
#[derive(Clone)]
pub struct WakeHandle(pub Arc<dyn Wake>);

impl PartialEq for WakeHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for WakeHandle {}

impl fmt::Debug for WakeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WakeHandle")
    }
}

/// Requests in flight and the time of the last one, for idle timers.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the last request began or ended.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { epoch: Instant::now(), in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0) }
    }
}

impl Activity {
    /// Marks one request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Records use without a request (a backend that just started counts as fresh).
    pub fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    /// How long nothing has been in flight (`None` while a request or stream is open).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// One request in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_without_requests_in_flight() {
        let a = Arc::new(Activity::default());
        assert!(a.idle_for().is_some());
        let g1 = a.begin();
        let g2 = a.begin();
        assert_eq!(a.in_flight(), 2);
        assert_eq!(a.idle_for(), None);
        drop(g1);
        assert_eq!(a.idle_for(), None);
        drop(g2);
        assert_eq!(a.in_flight(), 0);
        assert!(a.idle_for().expect("idle") < Duration::from_secs(5));
    }
}
