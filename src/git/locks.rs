//! Per-app deploy locks that queue, and the registry of running pushes.
//!
//! A push takes its app's lock *before* `git receive-pack` starts, so the second of two concurrent pushes
//! is advertised the refs the first one wrote and cannot race it. The lock is a fair (FIFO) tokio mutex:
//! waiting pushes land in arrival order. The guard lives as long as the receive-pack process, so a push
//! whose client died releases the lock when its process exits, never earlier, never later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedMutexGuard, watch};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::names::AppName;

/// Who holds an app's lock, for the `queued behind ...` message.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pusher: String,
    /// The sha being deployed, once the pre-receive hook has named it.
    pub sha: Option<String>,
}

impl Holder {
    /// `alice's push of 1a2b3c4` or `alice's push of (receiving)`.
    pub fn describe(&self) -> String {
        let sha = self.sha.as_deref().map(short_sha).unwrap_or("(receiving)");
        format!("{}'s push of {sha}", self.pusher)
    }
}

/// The first 12 characters of a sha (or the whole string if shorter).
pub fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[derive(Default)]
struct AppLock {
    mutex: Arc<tokio::sync::Mutex<()>>,
    holder: Mutex<Option<Holder>>,
}

/// The deploy locks of every app (created on first use).
#[derive(Default)]
pub struct DeployLocks {
    apps: Mutex<HashMap<AppName, Arc<AppLock>>>,
}

/// Holding this means holding the app's deploy lock.
pub struct DeployGuard {
    lock: Arc<AppLock>,
    _guard: OwnedMutexGuard<()>,
}

impl DeployGuard {
    /// Records the sha being deployed, so that queued pushes can say what they wait for.
    pub fn set_sha(&self, sha: &str) {
        if let Some(holder) = self.lock.holder.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            holder.sha = Some(sha.to_string());
        }
    }
}

impl Drop for DeployGuard {
    fn drop(&mut self) {
        *self.lock.holder.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl DeployLocks {
    fn lock_of(&self, app: &AppName) -> Arc<AppLock> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).entry(app.clone()).or_default().clone()
    }

    /// Takes `app`'s lock, waiting in line if it is held; `on_wait` is told who holds it first.
    pub async fn acquire(&self, app: &AppName, pusher: &str, on_wait: impl FnOnce(&Holder)) -> DeployGuard {
        let lock = self.lock_of(app);
        let guard = match lock.mutex.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => {
                let holder = lock.holder.lock().unwrap_or_else(|e| e.into_inner()).clone();
                on_wait(&holder.unwrap_or(Holder { pusher: "another".into(), sha: None }));
                lock.mutex.clone().lock_owned().await
            }
        };
        *lock.holder.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Holder { pusher: pusher.to_string(), sha: None });
        DeployGuard { lock, _guard: guard }
    }
}

/// A push in progress: what the hooks' control-socket requests are matched against.
pub struct PushSession {
    pub id: String,
    pub app: AppName,
    pub pusher: Identity,
    pub started: Instant,
    /// The app's lock, held until the push's ticket is dropped, or handed to a detached deploy
    /// ([`PushSession::take_guard`]) that outlives the push.
    guard: Mutex<Option<DeployGuard>>,
}

impl PushSession {
    /// Records the sha being deployed, so that queued pushes can say what they wait for.
    pub fn set_sha(&self, sha: &str) {
        if let Some(guard) = self.guard.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            guard.set_sha(sha);
        }
    }

    /// Takes the app's lock out of the push, for work that goes on after `git receive-pack` exits (a
    /// `-o async` deploy): whoever comes next waits for that work, not only for the push.
    pub fn take_guard(&self) -> Option<DeployGuard> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Running pushes by id. Also what a graceful shutdown waits on.
pub struct PushRegistry {
    pushes: Mutex<HashMap<String, Arc<PushSession>>>,
    count: watch::Sender<usize>,
    /// Cancelled when the shutdown grace period ran out: running pushes kill their `git`.
    pub abort: CancellationToken,
}

impl Default for PushRegistry {
    fn default() -> Self {
        PushRegistry {
            pushes: Mutex::default(),
            count: watch::Sender::new(0),
            abort: CancellationToken::new(),
        }
    }
}

/// Removes its push from the registry when dropped (and so releases the deploy lock).
pub struct PushTicket<'a> {
    registry: &'a PushRegistry,
    pub session: Arc<PushSession>,
}

impl Drop for PushTicket<'_> {
    fn drop(&mut self) {
        let mut pushes = self.registry.pushes.lock().unwrap_or_else(|e| e.into_inner());
        pushes.remove(&self.session.id);
        self.registry.count.send_replace(pushes.len());
    }
}

impl PushRegistry {
    /// Registers a push holding `guard`; the id is random so a hook cannot guess another push's id.
    pub fn register(&self, app: AppName, pusher: Identity, guard: DeployGuard) -> PushTicket<'_> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let session = Arc::new(PushSession {
            id: id.clone(),
            app,
            pusher,
            started: Instant::now(),
            guard: Mutex::new(Some(guard)),
        });
        let mut pushes = self.pushes.lock().unwrap_or_else(|e| e.into_inner());
        pushes.insert(id, session.clone());
        self.count.send_replace(pushes.len());
        PushTicket { registry: self, session }
    }

    pub fn get(&self, id: &str) -> Option<Arc<PushSession>> {
        self.pushes.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    pub fn running(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves when no push is running.
    pub async fn wait_idle(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_acquirer_queues_and_sees_the_holder() {
        let locks = Arc::new(DeployLocks::default());
        let app = AppName::parse("hello").unwrap();
        let first = locks.acquire(&app, "alice", |_| panic!("must not wait")).await;
        first.set_sha("0123456789abcdef");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let locks = locks.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let _g = locks.acquire(&app, "bob", |h| tx.send(h.describe()).unwrap()).await;
            })
        };
        assert_eq!(rx.await.unwrap(), "alice's push of 0123456789ab");
        drop(first);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn registry_counts_and_drains() {
        let locks = DeployLocks::default();
        let registry = PushRegistry::default();
        let app = AppName::parse("hello").unwrap();
        let guard = locks.acquire(&app, "alice", |_| {}).await;
        let ticket = registry.register(app, Identity::local(), guard);
        assert_eq!(registry.running(), 1);
        assert!(registry.get(&ticket.session.id).is_some());
        drop(ticket);
        registry.wait_idle().await;
        assert_eq!(registry.running(), 0);
    }
}
