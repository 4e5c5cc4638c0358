//! `apps`, `apps create`, `apps destroy`, `info`.

use clap::Subcommand;
use serde_json::json;

use super::render::{table, time};
use super::{CmdResult, Ctx, Failure};
use crate::gateway::Processes;
use crate::git;
use crate::names::AppName;
use crate::store::AppRecord;
use crate::terminal_text::visible;

#[derive(Subcommand, Debug)]
pub enum AppsCmd {
    /// List apps.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create an empty app you own (a first `git push` does this too).
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete an app and everything of it: repository, files, releases, tokens, OAuth grants, push
    /// records, log. Needs `--confirm NAME`.
    Destroy {
        name: String,
        /// The app's name again, to confirm.
        #[arg(long, required = true)]
        confirm: String,
    },
}

pub async fn run(ctx: &Ctx<'_>, action: Option<AppsCmd>, json: bool) -> CmdResult {
    match action {
        None => list(ctx, json),
        Some(AppsCmd::List { json: j }) => list(ctx, json || j),
        Some(AppsCmd::Create { name, json: j }) => create(ctx, &name, json || j).await,
        Some(AppsCmd::Destroy { name, confirm }) => destroy(ctx, &name, &confirm).await,
    }
}

fn app_json(ctx: &Ctx<'_>, app: &AppRecord) -> serde_json::Value {
    let platform = ctx.platform;
    let branch = platform.deploy_branch(Some(app));
    let head = AppName::parse(&app.name).ok().and_then(|n| git::branch_head(&platform.dir.repo(&n), &branch));
    let live = platform.store.live_release(&app.name).ok().flatten();
    json!({
        "name": app.name,
        "live_release": live.as_ref().map(super::releases::release_json),
        "owners": app.owners,
        "created_at": app.created_at,
        "created_by": app.created_by,
        "deploy_branch": branch,
        "head": head,
        "endpoint": format!("{}/mcp/{}", platform.config.public_url(), app.name),
    })
}

fn list(ctx: &Ctx<'_>, json: bool) -> CmdResult {
    let apps: Vec<AppRecord> =
        ctx.platform.store.apps()?.into_iter().filter(|a| ctx.who.can_manage(a)).collect();
    if json {
        ctx.json(&json!(apps.iter().map(|a| app_json(ctx, a)).collect::<Vec<_>>()));
        return Ok(());
    }
    if apps.is_empty() {
        ctx.out.line(
            "no apps yet; push one: git remote add catwalk ssh://git@HOST:PORT/NAME && git push catwalk main",
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let v = app_json(ctx, a);
            vec![
                a.name.clone(),
                v["head"].as_str().map(|h| h[..h.len().min(12)].to_string()).unwrap_or_else(|| "-".into()),
                a.owners.join(","),
                v["endpoint"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    ctx.out.out(table(&["NAME", "HEAD", "OWNERS", "ENDPOINT"], &rows));
    Ok(())
}

async fn create(ctx: &Ctx<'_>, name: &str, json: bool) -> CmdResult {
    let app = AppName::parse(name).map_err(|e| Failure::Error(e.to_string()))?;
    let platform = ctx.platform;
    let record = platform.create_app(&app, ctx.who, |queued| ctx.out.eline(queued)).await?;
    if json {
        ctx.json(&app_json(ctx, &record));
    } else {
        let (host, port) = platform.config.ssh_host_port();
        ctx.out.line(format!("created app {app}"));
        ctx.out.line(format!("  git remote add catwalk ssh://git@{host}:{port}/{app}"));
        ctx.out.line(format!("  git push catwalk {}", platform.config.git.deploy_branch));
    }
    Ok(())
}

async fn destroy(ctx: &Ctx<'_>, name: &str, confirm: &str) -> CmdResult {
    let record = ctx.managed_app(name, "apps destroy")?;
    if confirm != record.name {
        return Err(Failure::Error(format!(
            "--confirm {confirm:?} does not match; to destroy {0} run: apps destroy {0} --confirm {0}",
            record.name
        )));
    }
    let app = AppName::parse(&record.name).map_err(|e| Failure::Error(e.to_string()))?;
    let erased = ctx.platform.destroy_app(&app, &ctx.who.name, |queued| ctx.out.eline(queued)).await?;
    ctx.out.line(format!(
        "destroyed app {app}: its repository, files, releases ({}), tokens ({}), OAuth grants, push records ({}) and log",
        erased.releases, erased.tokens, erased.pushes
    ));
    Ok(())
}

pub async fn info(ctx: &Ctx<'_>, name: &str, json: bool) -> CmdResult {
    let record = ctx.managed_app(name, "info")?;
    let mut value = app_json(ctx, &record);
    let app = AppName::parse(&record.name).map_err(|e| Failure::Error(e.to_string()))?;
    let repo = ctx.platform.dir.repo(&app);
    let last = ctx.platform.store.pushes(Some(&record.name), 1)?.into_iter().next();
    value["repository"] = json!(repo.display().to_string());
    value["last_push"] = match &last {
        Some(p) => json!({
            "key": p.key, "at": p.at, "ref": p.refname, "old": p.old, "new": p.new,
            "options": p.options, "verdict": p.verdict,
        }),
        None => serde_json::Value::Null,
    };
    let machines = super::machines::read(ctx, &record.name, 10).await;
    value["fly"] = machines.json();
    let server = ctx.platform.deployer.local.server_status(&record.name);
    value["server"] = server.clone().unwrap_or(serde_json::Value::Null);
    let modern = ctx.platform.gateway.modern_path(&record.name);
    value["mcp_2026_07_28"] = json!(modern);
    let processes = ctx.platform.gateway.processes(&record.name);
    value["processes"] = json!(processes);
    let sessions = ctx.platform.gateway.session_translation(&record.name);
    value["mcp_2025_sessions"] = json!(sessions);
    let (grants, grant_lines) = super::oauth::info_lines(ctx, &record.name);
    value["grants"] = grants;
    if json {
        ctx.json(&value);
        return Ok(());
    }
    // Each field is one line; tool names, env descriptions and push options come from the tenant's
    // server or repository, so a newline or escape sequence in them is shown, never obeyed.
    let line = |text: String| ctx.out.line(visible(&text));
    line(format!("app:        {}", record.name));
    line(format!("owners:     {}", record.owners.join(", ")));
    line(format!("created:    {} by {}", time(record.created_at), record.created_by));
    line(format!("repository: {}", repo.display()));
    line(format!(
        "head:       {} ({})",
        value["head"].as_str().unwrap_or("(nothing pushed yet)"),
        value["deploy_branch"].as_str().unwrap_or_default()
    ));
    match last {
        Some(p) => {
            let opts =
                if p.options.is_empty() { String::new() } else { format!(" -o {}", p.options.join(" -o ")) };
            line(format!(
                "last push:  {} by {} at {}: {}{opts}",
                &p.new[..p.new.len().min(12)],
                p.key,
                time(p.at),
                p.verdict
            ));
        }
        None => line("last push:  none".into()),
    }
    match ctx.platform.store.live_release(&record.name)? {
        Some(r) => {
            line(format!(
                "live:       v{} ({}) {}",
                r.version,
                &r.commit[..r.commit.len().min(7)],
                r.plan.describe()
            ));
            if let Some(i) = &r.introspection {
                line(format!("serves:     {}", i.describe()));
            }
            for e in &r.plan.env {
                line(format!("env:        {}", e.summary()));
            }
        }
        None => line("live:       no release is live".into()),
    }
    if let Some(s) = server {
        line(format!(
            "server:     http on 127.0.0.1:{} (release v{}): {}",
            s["port"],
            s["release"],
            s["state"].as_str().unwrap_or_default()
        ));
    }
    for text in machines.info_lines() {
        line(text);
    }
    line(format!("endpoint:   {}", value["endpoint"].as_str().unwrap_or_default()));
    line(format!("auth:       {}", ctx.platform.oauth.mode(&record.name).as_str()));
    if value["live_release"].is_object() {
        line(format!(
            "2026-07-28: {}",
            modern.unwrap_or("not known yet (learnt at the first 2026-07-28 request)")
        ));
    }
    if let Some(how) = sessions {
        line(format!("2025:       sessions {how}"));
    }
    if value["live_release"].is_object() || processes != Processes::default() {
        line(format!("processes:  {}", processes.describe()));
    }
    // Grant lines name OAuth clients, whose names the clients registered themselves.
    for text in grant_lines {
        line(text);
    }
    Ok(())
}
