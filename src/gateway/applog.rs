//! A bounded in-memory log per app: child stderr lines and lifecycle events (spawned, exited,
//! killed). The `logs APP [-f]` command reads it through [`AppLogs::tail`] and
//! [`AppLogs::subscribe`]. Bounded so a chatty server cannot grow the daemon's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A line the server wrote to stderr.
    Stderr,
    /// Something the gateway did or saw (spawn, exit with status, kill).
    Event,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: SystemTime,
    pub kind: LogKind,
    pub text: String,
}

struct AppLog {
    lines: VecDeque<LogLine>,
    tx: broadcast::Sender<LogLine>,
}

/// All apps' logs. Each app keeps at most `capacity` lines (oldest dropped first).
pub struct AppLogs {
    capacity: usize,
    apps: Mutex<HashMap<String, AppLog>>,
}

/// Longest stored line; longer stderr lines are cut (a server printing a megabyte on one
/// line must not pin a megabyte per entry).
const MAX_LINE: usize = 4096;

impl AppLogs {
    pub fn new(capacity: usize) -> Self {
        AppLogs { capacity: capacity.max(1), apps: Mutex::new(HashMap::new()) }
    }

    /// Append a line (and wake followers).
    pub fn push(&self, app: &str, kind: LogKind, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [line truncated]");
        }
        let line = LogLine { at: SystemTime::now(), kind, text };
        let Ok(mut apps) = self.apps.lock() else {
            return;
        };
        let log = apps
            .entry(app.to_string())
            .or_insert_with(|| AppLog { lines: VecDeque::new(), tx: broadcast::channel(256).0 });
        if log.lines.len() >= self.capacity {
            log.lines.pop_front();
        }
        log.lines.push_back(line.clone());
        let _ = log.tx.send(line);
    }

    /// The last `n` lines of `app`.
    pub fn tail(&self, app: &str, n: usize) -> Vec<LogLine> {
        let Ok(apps) = self.apps.lock() else {
            return Vec::new();
        };
        apps.get(app)
            .map(|l| l.lines.iter().skip(l.lines.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// The last `n` lines and a receiver for every later line (`logs -f`). Taken under one
    /// lock, so no line is missed or duplicated between the two.
    pub fn subscribe(&self, app: &str, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let Ok(mut apps) = self.apps.lock() else {
            return (Vec::new(), broadcast::channel(1).1);
        };
        let log = apps
            .entry(app.to_string())
            .or_insert_with(|| AppLog { lines: VecDeque::new(), tx: broadcast::channel(256).0 });
        let tail = log.lines.iter().skip(log.lines.len().saturating_sub(n)).cloned().collect();
        (tail, log.tx.subscribe())
    }

    /// Forgets everything logged under `app` (`apps destroy`, and again when the name is created, which
    /// also drops lines a destroyed app's dying processes wrote after the destroy). Its followers
    /// (`logs -f`) see the end of the log: the sender they listen to is dropped with it.
    pub fn erase(&self, app: &str) {
        if let Ok(mut apps) = self.apps.lock() {
            apps.remove(app);
        }
    }

    /// The last `n` stderr lines joined, for exit messages.
    pub fn stderr_tail(&self, app: &str, n: usize) -> String {
        let Ok(apps) = self.apps.lock() else {
            return String::new();
        };
        let Some(log) = apps.get(app) else {
            return String::new();
        };
        let lines: Vec<&str> = log
            .lines
            .iter()
            .rev()
            .filter(|l| l.kind == LogKind::Stderr)
            .take(n)
            .map(|l| l.text.as_str())
            .collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_followable() {
        let logs = AppLogs::new(3);
        let (_, mut rx) = logs.subscribe("a", 10);
        for i in 0..5 {
            logs.push("a", LogKind::Stderr, &format!("line {i}\n"));
        }
        let tail = logs.tail("a", 10);
        assert_eq!(tail.len(), 3);
        assert_eq!(tail[0].text, "line 2");
        assert_eq!(rx.try_recv().map(|l| l.text).ok().as_deref(), Some("line 0"));
        assert_eq!(logs.stderr_tail("a", 2), "line 3\nline 4");
        assert!(logs.tail("b", 3).is_empty());
    }

    #[test]
    fn erase_forgets_the_app_and_ends_its_followers() {
        let logs = AppLogs::new(10);
        logs.push("a", LogKind::Stderr, "old tenant's secret");
        logs.push("b", LogKind::Stderr, "another app");
        let (_, mut rx) = logs.subscribe("a", 10);
        logs.erase("a");
        assert!(logs.tail("a", 10).is_empty());
        assert_eq!(logs.stderr_tail("a", 10), "");
        assert_eq!(logs.tail("b", 10).len(), 1, "other apps keep their logs");
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Closed)));
    }
}
