//! Release commands: `releases APP`, `rollback APP [vN]`, `restart APP`, `logs APP [-f] [-n N]`
//! (the app log, merged with its Fly machines' events when it runs on Fly).

use serde_json::json;

use super::render::{table, time};
use super::{CmdResult, Ctx, Failure};
use crate::gateway::{LogKind, LogLine};
use crate::names::AppName;
use crate::store::ReleaseRecord;
use crate::terminal_text::visible;

fn app_name(ctx: &Ctx<'_>, name: &str, what: &str) -> Result<AppName, Failure> {
    let record = ctx.managed_app(name, what)?;
    AppName::parse(&record.name).map_err(|e| Failure::Error(e.to_string()))
}

/// The JSON form of a release (never secret values: names and digests only).
pub fn release_json(r: &ReleaseRecord) -> serde_json::Value {
    json!({
        "version": r.version,
        "commit": r.commit,
        "status": r.status,
        "created_at": r.created_at,
        "pusher": r.pusher,
        "source": r.plan.describe(),
        "plan": r.plan,
        "secrets": r.secrets.keys().collect::<Vec<_>>(),
        "runtime": r.runtime,
        "timings_ms": r.timings.iter().map(|(k, v)| json!({"step": k, "ms": v})).collect::<Vec<_>>(),
        "introspection": r.introspection,
        "error": r.error,
        "rollback_of": r.rollback_of,
    })
}

pub fn releases(ctx: &Ctx<'_>, name: &str, json: bool) -> CmdResult {
    let app = app_name(ctx, name, "releases")?;
    let releases = ctx.platform.store.releases(app.as_str())?;
    if json {
        ctx.json(&json!(releases.iter().map(release_json).collect::<Vec<_>>()));
        return Ok(());
    }
    if releases.is_empty() {
        ctx.out.line(format!("{app} has no releases yet: git push to deploy"));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            let status = match r.status {
                crate::store::ReleaseStatus::Live => "live",
                crate::store::ReleaseStatus::Deploying => "deploying",
                crate::store::ReleaseStatus::Failed => "failed",
                crate::store::ReleaseStatus::Superseded => "superseded",
            };
            let note = match (&r.error, r.rollback_of, &r.introspection) {
                (Some(e), _, _) => e.lines().next().unwrap_or_default().chars().take(60).collect(),
                (None, Some(v), _) => format!("rollback to v{v}"),
                (None, None, Some(i)) => format!("{} tools", i.tools.len()),
                _ => String::new(),
            };
            // The note quotes the server's stderr for a failed release: one visible line per cell.
            [
                format!("v{}", r.version),
                status.to_string(),
                r.commit[..r.commit.len().min(7)].to_string(),
                time(r.created_at),
                r.pusher.clone(),
                r.plan.describe(),
                note,
            ]
            .iter()
            .map(|cell| visible(cell).into_owned())
            .collect()
        })
        .collect();
    ctx.out.out(table(&["release", "status", "commit", "created", "by", "source", "note"], &rows));
    Ok(())
}

/// `v3` or `3`.
fn parse_version(v: &str) -> Result<u32, Failure> {
    v.strip_prefix('v')
        .unwrap_or(v)
        .parse()
        .map_err(|_| Failure::Error(format!("{v:?} is not a release (use vN, e.g. v2; see `releases APP`)")))
}

pub async fn rollback(ctx: &Ctx<'_>, name: &str, version: Option<&str>) -> CmdResult {
    let app = app_name(ctx, name, "rollback")?;
    let version = version.map(parse_version).transpose()?;
    let progress = crate::output::Progress::new(ctx.out.clone());
    let version = ctx
        .platform
        .rollback(&app, version, &ctx.who.name, &progress, |queued| ctx.out.eline(queued))
        .await?;
    progress.step(format!("{app} v{version} is live"));
    Ok(())
}

pub async fn restart(ctx: &Ctx<'_>, name: &str) -> CmdResult {
    let app = app_name(ctx, name, "restart")?;
    let done = ctx.platform.restart(&app, &ctx.who.name, |queued| ctx.out.eline(queued)).await?;
    ctx.out.line(done);
    Ok(())
}

/// One log entry as text: `TIME KIND TEXT`. The text is the server's own (stderr) or carries it (an exit
/// event quotes the last stderr lines), so its control characters are made visible, and an entry of
/// several lines gets the prefix on every line: a server cannot print a line that passes for the
/// daemon's or another entry's.
fn log_line(line: &LogLine) -> String {
    let at = line.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let kind = match line.kind {
        LogKind::Stderr => "stderr",
        LogKind::Event => "event ",
    };
    let at = time(at);
    line.text.split('\n').map(|part| format!("{at} {kind} {}", visible(part))).collect::<Vec<_>>().join("\n")
}

/// The app log's `backlog` merged in time order with its Fly machines' events; the last `n` lines.
async fn backlog_lines(ctx: &Ctx<'_>, app: &str, backlog: &[LogLine], n: usize) -> Vec<String> {
    let machines = super::machines::read(ctx, app, 10).await;
    let mut lines: Vec<(std::time::SystemTime, String)> =
        backlog.iter().map(|l| (l.at, log_line(l))).collect();
    lines.extend(machines.log_lines());
    // Stable: lines of the same second keep their own order.
    lines.sort_by_key(|(at, _)| *at);
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).map(|(_, l)| l).collect()
}

/// Most bytes of `logs -f` output waiting for a slow reader before lines are skipped.
const MAX_FOLLOW_QUEUE: usize = 1 << 20;

pub async fn logs(ctx: &Ctx<'_>, name: &str, follow: bool, lines: usize) -> CmdResult {
    let app = app_name(ctx, name, "logs")?;
    let logs = ctx.platform.gateway.logs();
    if !follow {
        let backlog = logs.tail(app.as_str(), lines);
        for line in backlog_lines(ctx, app.as_str(), &backlog, lines).await {
            ctx.out.line(line);
        }
        return Ok(());
    }
    let (backlog, mut rx) = logs.subscribe(app.as_str(), lines);
    for line in backlog_lines(ctx, app.as_str(), &backlog, lines).await {
        ctx.out.line(line);
    }
    // A follower that stops reading: its lines are skipped (and counted) while more than
    // MAX_FOLLOW_QUEUE bytes wait for it, instead of piling up in the daemon.
    let mut skipped = 0usize;
    loop {
        tokio::select! {
            _ = ctx.platform.shutdown.cancelled() => return Ok(()),
            _ = ctx.out.closed() => return Ok(()),
            next = rx.recv() => match next {
                Ok(_) if ctx.out.queued_bytes() > MAX_FOLLOW_QUEUE => skipped += 1,
                Ok(line) => {
                    if skipped > 0 {
                        ctx.out.line(format!("... {skipped} lines skipped (the reader was too slow)"));
                        skipped = 0;
                    }
                    ctx.out.line(log_line(&line))
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    ctx.out.line(format!("... {n} lines skipped (the reader was too slow)"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
