//! The Fly side of `info APP` and `logs APP`: each machine's state and its recent events, read from the
//! Machines API when the app runs (or ran) on Fly. Fly being unreachable never hides the rest of the
//! command's output: it becomes one line, `fly: could not read machines (...)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Ctx;
use super::render::time;
use crate::runtime::fly::MachineStatus;

/// How long `info`/`logs` wait for the Machines API (its client retries) before going on without it.
const FLY_TIMEOUT: Duration = Duration::from_secs(15);

/// Events shown per machine in `info`.
const INFO_EVENTS: usize = 3;

/// What the Machines API said about an app.
pub enum Machines {
    /// No release of the app ever ran on Fly: nothing to show.
    NotOnFly,
    Listed {
        fly_app: String,
        machines: Vec<MachineStatus>,
    },
    Failed {
        fly_app: String,
        error: String,
    },
}

/// Reads `app`'s machines with their last `events` events each.
pub async fn read(ctx: &Ctx<'_>, app: &str, events: u32) -> Machines {
    let on_fly = ctx
        .platform
        .store
        .releases(app)
        .map(|rs| rs.iter().any(|r| r.runtime == crate::plan::RuntimeKind::Fly))
        .unwrap_or(false);
    if !on_fly {
        return Machines::NotOnFly;
    }
    let Some(fly) = &ctx.platform.deployer.fly else {
        return Machines::Failed {
            fly_app: String::new(),
            error: "this daemon has no [runtime.fly] configuration".into(),
        };
    };
    let fly_app = fly.fly_app(app);
    match tokio::time::timeout(FLY_TIMEOUT, fly.status(app, events)).await {
        Ok(Ok(machines)) => Machines::Listed { fly_app, machines },
        Ok(Err(error)) => Machines::Failed { fly_app, error },
        Err(_) => Machines::Failed {
            fly_app,
            error: format!("the Machines API did not answer within {}s", FLY_TIMEOUT.as_secs()),
        },
    }
}

fn failure_line(error: &str) -> String {
    format!("fly: could not read machines ({error})")
}

fn secs(at_ms: i64) -> u64 {
    (at_ms.max(0) / 1000) as u64
}

impl Machines {
    /// `info --json`: `{"app": ..., "machines": [...]}` or `{"app": ..., "error": ...}`; `null` off Fly.
    pub fn json(&self) -> Value {
        match self {
            Machines::NotOnFly => Value::Null,
            Machines::Failed { fly_app, error } => json!({"app": fly_app, "error": error}),
            Machines::Listed { fly_app, machines } => json!({
                "app": fly_app,
                "machines": machines.iter().map(|m| json!({
                    "id": m.id,
                    "state": m.state,
                    "region": m.region,
                    "release": m.release,
                    "events": m.events.iter().map(|e| json!({"at_ms": e.at_ms, "event": e.text})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        }
    }

    /// `info` lines: the Fly app, then one line per machine (id, state, region, release, last events).
    pub fn info_lines(&self) -> Vec<String> {
        match self {
            Machines::NotOnFly => Vec::new(),
            Machines::Failed { error, .. } => vec![failure_line(error)],
            Machines::Listed { fly_app, machines } => {
                let mut lines = vec![format!("fly app:    {fly_app}")];
                if machines.is_empty() {
                    lines.push("machines:   none".into());
                }
                for m in machines {
                    let release = m.release.map(|v| format!("release v{v}")).unwrap_or("no release".into());
                    let events: Vec<String> = m
                        .events
                        .iter()
                        .take(INFO_EVENTS)
                        .map(|e| format!("{} at {}", e.text, time(secs(e.at_ms))))
                        .collect();
                    let events = if events.is_empty() {
                        String::new()
                    } else {
                        format!("; last: {}", events.join(", "))
                    };
                    lines.push(format!("machine:    {} {} ({}) {release}{events}", m.id, m.state, m.region));
                }
                lines
            }
        }
    }

    /// `logs` lines with their times: one per machine event (or the failure, dated now).
    pub fn log_lines(&self) -> Vec<(SystemTime, String)> {
        match self {
            Machines::NotOnFly => Vec::new(),
            Machines::Failed { error, .. } => vec![(SystemTime::now(), failure_line(error))],
            Machines::Listed { machines, .. } => machines
                .iter()
                .flat_map(|m| {
                    m.events.iter().map(move |e| {
                        let at = UNIX_EPOCH + Duration::from_millis(e.at_ms.max(0) as u64);
                        let text = crate::terminal_text::visible(&e.text);
                        (at, format!("{} fly    machine {}: {text}", time(secs(e.at_ms)), m.id))
                    })
                })
                .collect(),
        }
    }
}
