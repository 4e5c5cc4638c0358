//! One child serving every session of an app (`shared = true`): client ids are rewritten to a gateway-wide
//! counter and mapped back, progress tokens likewise, and the first session's `initialize` result is
//! answered to later sessions without asking the server again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::applog::AppLogs;
use super::jsonrpc::{self, Classified, IdKey, Kind};
use super::session::{Session, SharedLink};
use super::stdio::{ChildEvents, ChildProc, Command, lock, spawn};

struct SharedPending {
    session: Weak<Session>,
    session_id: Arc<str>,
    /// The client's id as JSON text, spliced back into the response.
    orig: Box<str>,
    key: IdKey,
    /// The client's progress token (raw JSON) and the unique one the child sees instead.
    progress: Option<(Box<str>, Box<str>)>,
    initialize: bool,
}

/// One child serving every session of an app. Ids are rewritten to a gateway-wide counter so
/// concurrent sessions never see each other's responses.
pub struct SharedChild {
    app: Arc<str>,
    proc: OnceLock<Arc<ChildProc>>,
    next_id: AtomicU64,
    pending: Mutex<BTreeMap<u64, SharedPending>>,
    sessions: Mutex<HashMap<Arc<str>, Weak<Session>>>,
    init_result: Mutex<Option<Bytes>>,
    initialized_sent: AtomicBool,
    dead: AtomicBool,
}

impl SharedChild {
    pub fn start(
        cmd: Command<'_>,
        logs: Arc<AppLogs>,
        kill_grace: Duration,
    ) -> Result<Arc<SharedChild>, String> {
        let hub = Arc::new(SharedChild {
            app: cmd.app.into(),
            proc: OnceLock::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            init_result: Mutex::new(None),
            initialized_sent: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        });
        let proc = spawn(cmd, hub.clone(), logs, kill_grace)?;
        let _ = hub.proc.set(proc);
        Ok(hub)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || self.proc.get().is_none_or(|p| p.is_exited())
    }

    pub fn attach(&self, session: &Arc<Session>) {
        lock(&self.sessions).insert(session.id.clone(), Arc::downgrade(session));
    }

    /// The first session's initialize result, answered to later sessions without asking again.
    pub fn cached_init(&self) -> Option<Bytes> {
        lock(&self.init_result).clone()
    }

    pub fn stop(&self) {
        self.dead.store(true, Ordering::Release);
        if let Some(p) = self.proc.get() {
            p.stop();
        }
    }
}

impl SharedLink for SharedChild {
    fn detach(&self, session_id: &str) {
        lock(&self.sessions).remove(session_id);
        lock(&self.pending).retain(|_, p| &*p.session_id != session_id);
    }

    fn send(&self, session: &Arc<Session>, c: &Classified, body: &[u8]) -> bool {
        let Some(proc) = self.proc.get() else {
            return false;
        };
        let line = match (c.kind, &c.id, &c.id_span) {
            (Kind::Request, Some(key), Some(span)) => {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                // Progress tokens are client-chosen (often equal to the request id), so two
                // sessions may use the same one: the child sees a unique token instead.
                let progress: Option<(Box<str>, Box<str>)> = match (&c.progress_token, &c.progress_span) {
                    (Some(t), Some(_)) => Some((t.clone(), format!("\"cw-progress-{n}\"").into())),
                    _ => None,
                };
                let mut edits = vec![(span.clone(), n.to_string().into_bytes())];
                if let (Some((_, unique)), Some(pspan)) = (&progress, &c.progress_span) {
                    edits.push((pspan.clone(), unique.as_bytes().to_vec()));
                }
                lock(&self.pending).insert(
                    n,
                    SharedPending {
                        session: Arc::downgrade(session),
                        session_id: session.id.clone(),
                        orig: String::from_utf8_lossy(&body[span.clone()]).into(),
                        key: key.clone(),
                        progress,
                        initialize: c.method.as_deref() == Some("initialize"),
                    },
                );
                jsonrpc::splice_many(body, edits)
            }
            (Kind::Notification, _, _) => match c.method.as_deref() {
                // The child was initialized once; later sessions' `initialized` are absorbed.
                Some("notifications/initialized") if self.initialized_sent.swap(true, Ordering::AcqRel) => {
                    return true;
                }
                Some("notifications/cancelled") => match &c.request_id {
                    Some((key, span)) => {
                        let mut pending = lock(&self.pending);
                        let found = pending
                            .iter()
                            .find(|(_, p)| p.session_id == session.id && &p.key == key)
                            .map(|(n, _)| *n);
                        // A cancelled request gets no response; forget it now.
                        if let Some(n) = found {
                            pending.remove(&n);
                        }
                        drop(pending);
                        match found {
                            Some(n) => jsonrpc::splice(body, span.clone(), n.to_string().as_bytes()),
                            None => return true,
                        }
                    }
                    None => Bytes::copy_from_slice(body),
                },
                _ => Bytes::copy_from_slice(body),
            },
            _ => Bytes::copy_from_slice(body),
        };
        proc.send(jsonrpc::to_line(&line))
    }
}

impl ChildEvents for SharedChild {
    fn message(&self, line: Bytes, c: Classified) {
        if c.kind == Kind::Response {
            let n = match &c.id {
                Some(IdKey::Num(n)) => n.parse::<u64>().ok(),
                _ => None,
            };
            let Some(p) = n.and_then(|n| lock(&self.pending).remove(&n)) else {
                tracing::debug!(app = %self.app, "shared child answered an unknown id");
                return;
            };
            let Some(span) = c.id_span.clone() else {
                return;
            };
            let line = jsonrpc::splice(&line, span, p.orig.as_bytes());
            if p.initialize
                && !c.is_error
                && let Some(result) = jsonrpc::raw_result(&line)
            {
                lock(&self.init_result).get_or_insert(result);
            }
            if let Some(s) = p.session.upgrade() {
                s.deliver_response(&p.key, line, c.is_error);
            }
            return;
        }
        // A server-initiated message goes to the session that caused it: the one whose request
        // carries the same progress token, else the one with the oldest request in flight.
        let (owner, line, token) = {
            let pending = lock(&self.pending);
            let by_token = c.progress_token.as_deref().and_then(|t| {
                pending.values().find_map(|p| match &p.progress {
                    Some((orig, unique)) if &**unique == t => Some((p.session.clone(), orig.clone())),
                    _ => None,
                })
            });
            match (by_token, &c.progress_span) {
                (Some((session, orig)), Some(span)) => {
                    let line = jsonrpc::splice(&line, span.clone(), orig.as_bytes());
                    (Some(session), line, Some(orig))
                }
                _ => (pending.values().next().map(|p| p.session.clone()), line, None),
            }
        };
        if let Some(s) = owner.and_then(|w| w.upgrade()) {
            s.deliver_server_message(token.as_deref(), line);
            return;
        }
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().filter_map(Weak::upgrade).collect();
        if c.kind == Kind::Request {
            // Nobody asked: the first session may answer it.
            if let Some(s) = sessions.first() {
                s.deliver_server_message(None, line);
            }
        } else {
            // Unrelated notifications (list_changed, ...) concern every session on this child.
            for s in sessions {
                s.deliver_server_message(None, line.clone());
            }
        }
    }

    fn exited(&self, why: &str) {
        self.dead.store(true, Ordering::Release);
        let sessions: Vec<Arc<Session>> =
            lock(&self.sessions).drain().filter_map(|(_, w)| w.upgrade()).collect();
        for s in sessions {
            s.terminate(why);
        }
    }
}
