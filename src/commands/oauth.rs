//! OAuth commands: `approve CODE`, `login`, `grants list|revoke APP [ID]` and `connect APP` (what to
//! paste into Claude, Claude Code, Cursor and VS Code).

use base64::Engine;
use clap::Subcommand;
use serde_json::json;

use super::render::{table, time};
use super::{CmdResult, Ctx, Failure};
use crate::gateway::AuthMode;
use crate::store::GrantRecord;

#[derive(Subcommand, Debug)]
pub enum GrantsCmd {
    /// List the OAuth grants of APP (which clients may use it, approved by whom).
    List {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke grant ID of APP: every access and refresh token of it stops working at once.
    Revoke { app: String, id: String },
}

fn status(g: &GrantRecord) -> &'static str {
    if g.revoked_at.is_some() { "revoked" } else { "active" }
}

pub fn grant_json(g: &GrantRecord) -> serde_json::Value {
    json!({
        "id": g.id, "app": g.app, "client_id": g.client_id, "client_name": g.client_name,
        "redirect_uri": g.redirect_uri, "resource": g.resource, "scope": g.scope,
        "approved_by": g.approved_by, "created_at": g.created_at, "last_used_at": g.last_used_at,
        "revoked_at": g.revoked_at, "revoked_reason": g.revoked_reason, "status": status(g),
    })
}

fn redirect_host(uri: &str) -> String {
    url::Url::parse(uri)
        .map(|u| crate::oauth::authorize::redirect_host(&u))
        .unwrap_or_else(|_| uri.to_string())
}

pub fn approve(ctx: &Ctx<'_>, code: &str, json: bool) -> CmdResult {
    let oauth = &ctx.platform.oauth;
    let (request, grant) = crate::oauth::authorize::approve(oauth, ctx.who, code).map_err(Failure::Error)?;
    if json {
        ctx.json(&grant_json(&grant));
    } else {
        ctx.out.line(format!(
            "✓ {} may now use {} (grant {}, until you revoke it)",
            grant.client_name, grant.app, grant.id
        ));
        ctx.out.line(format!(
            "  it returns to {}; revoke with: grants revoke {} {}",
            redirect_host(&request.redirect_uri),
            grant.app,
            grant.id
        ));
    }
    Ok(())
}

pub fn login(ctx: &Ctx<'_>, json: bool) -> CmdResult {
    let oauth = &ctx.platform.oauth;
    let ttl = oauth.cfg.login_link_ttl;
    let secret = ctx.platform.store.create_login_link(&ctx.who.name, ctx.who.role, ttl.as_secs())?;
    let link = format!("{}/oauth/login/{secret}", oauth.issuer);
    if json {
        ctx.json(&json!({ "url": link, "expires_in": ttl.as_secs(), "key": ctx.who.name }));
    } else {
        ctx.out.line(format!(
            "Open this link once, within {}, to sign this browser in as {}:",
            humantime::format_duration(ttl),
            ctx.who.describe()
        ));
        ctx.out.line(&link);
        ctx.out.line("The authorization page then offers Allow / Deny for the apps this key manages.");
    }
    Ok(())
}

pub fn grants(ctx: &Ctx<'_>, action: GrantsCmd) -> CmdResult {
    let store = &ctx.platform.store;
    match action {
        GrantsCmd::List { app, json } => {
            let record = ctx.managed_app(&app, "grants list")?;
            let grants = store.grants(&record.name)?;
            if json {
                ctx.json(&json!(grants.iter().map(grant_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = grants
                    .iter()
                    .map(|g| {
                        vec![
                            g.id.clone(),
                            g.client_name.clone(),
                            redirect_host(&g.redirect_uri),
                            g.approved_by.clone(),
                            status(g).to_string(),
                            time(g.created_at),
                            g.last_used_at.map(time).unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                ctx.out.out(table(
                    &["ID", "CLIENT", "RETURNS TO", "APPROVED BY", "STATUS", "CREATED", "LAST USED"],
                    &rows,
                ));
            }
            Ok(())
        }
        GrantsCmd::Revoke { app, id } => {
            let record = ctx.managed_app(&app, "grants revoke")?;
            let reason = format!("revoked by {}", ctx.who.name);
            let grant = store.revoke_grant(&record.name, &id, &reason)?;
            ctx.platform.oauth.audit(
                &grant.app,
                &grant.id,
                "oauth/revoke",
                Some(format!("{}: {reason}", grant.client_name)),
                200,
            );
            ctx.out.line(format!(
                "revoked grant {} ({}) of {}: its tokens stop working now",
                grant.id, grant.client_name, record.name
            ));
            Ok(())
        }
    }
}

/// The active grants of `app`, for `info APP`.
pub fn info_lines(ctx: &Ctx<'_>, app: &str) -> (serde_json::Value, Vec<String>) {
    let grants = ctx.platform.store.grants(app).unwrap_or_default();
    let active: Vec<&GrantRecord> = grants.iter().filter(|g| g.revoked_at.is_none()).collect();
    let lines = active
        .iter()
        .map(|g| {
            format!(
                "grant:      {} {} (returns to {}), approved by {} {}",
                g.id,
                g.client_name,
                redirect_host(&g.redirect_uri),
                g.approved_by,
                time(g.created_at)
            )
        })
        .collect();
    (json!(active.iter().map(|g| grant_json(g)).collect::<Vec<_>>()), lines)
}

pub fn connect(ctx: &Ctx<'_>, app: &str, json: bool) -> CmdResult {
    let record = ctx.managed_app(app, "connect")?;
    let platform = ctx.platform;
    let name = &record.name;
    let url = platform.oauth.resource_url(name);
    let mode = platform.oauth.mode(name);
    let ssh = &platform.oauth.ssh_command;
    let header = match mode {
        AuthMode::Token => Some("Authorization: Bearer <token from `tokens create`>"),
        _ => None,
    };
    let cursor_config = match mode {
        AuthMode::Token => json!({ "url": url, "headers": { "Authorization": "Bearer <token>" } }),
        _ => json!({ "url": url }),
    };
    let cursor_link = format!(
        "cursor://anysphere.cursor-deeplink/mcp/install?name={name}&config={}",
        base64::engine::general_purpose::STANDARD.encode(cursor_config.to_string())
    );
    let vscode = json!({ "name": name, "type": "http", "url": url });
    let claude_code = match mode {
        AuthMode::Token => {
            format!("claude mcp add --transport http {name} {url} --header \"Authorization: Bearer <token>\"")
        }
        _ => format!("claude mcp add --transport http {name} {url}"),
    };
    if json {
        ctx.json(&json!({
            "app": name, "url": url, "auth": mode.as_str(),
            "claude": { "connector_url": url },
            "claude_code": claude_code,
            "cursor": { "mcp_json": { "mcpServers": { name.as_str(): cursor_config } }, "deeplink": cursor_link },
            "vscode": { "mcp_json": { "servers": { name.as_str(): { "type": "http", "url": url } } },
                        "command": format!("code --add-mcp '{vscode}'") },
        }));
        return Ok(());
    }
    let out = ctx.out;
    out.line(format!("{name}: {url}   (auth: {})", mode.as_str()));
    out.line("");
    match mode {
        AuthMode::OAuthAndToken => {
            out.line(
                "Claude (claude.ai, Desktop, mobile): Settings → Connectors → Add custom connector, URL:",
            );
            out.line(format!("  {url}"));
            out.line(format!(
                "  Claude opens an authorization page showing `{ssh} approve CODE`: run it (or `{ssh} login` to click Allow)."
            ));
        }
        AuthMode::Token => {
            out.line("Claude (claude.ai, Desktop): connectors need OAuth, which this app turned off (auth = \"token\").");
            out.line(format!(
                "  Token clients: {ssh} tokens create {name}, then send {}",
                header.unwrap_or_default()
            ));
        }
        AuthMode::Public => {
            out.line(
                "Claude (claude.ai, Desktop, mobile): Settings → Connectors → Add custom connector, URL:",
            );
            out.line(format!("  {url}   (PUBLIC endpoint: auth = \"none\", no sign-in)"));
        }
    }
    out.line("");
    out.line("Claude Code:");
    out.line(format!("  {claude_code}"));
    out.line("");
    out.line("Cursor (~/.cursor/mcp.json), or open the install link:");
    out.line(format!("  {}", json!({ "mcpServers": { name.as_str(): cursor_config } })));
    out.line(format!("  {cursor_link}"));
    out.line("");
    out.line("VS Code (.vscode/mcp.json, or the command):");
    out.line(format!("  {}", json!({ "servers": { name.as_str(): { "type": "http", "url": url } } })));
    out.line(format!("  code --add-mcp '{vscode}'"));
    Ok(())
}
