//! `tokens create|list|revoke` (admins and the app's owners). A token's plaintext is printed once, to
//! the caller only, and never logged; the store keeps its digest.

use clap::Subcommand;
use serde_json::json;

use super::render::{table, time};
use super::{CmdResult, Ctx, Failure};
use crate::names::is_valid_label;
use crate::store::{TokenRecord, now};

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Mint a bearer token for APP's MCP endpoint (printed once).
    Create {
        app: String,
        /// A label to recognise the token by (e.g. the client's machine).
        #[arg(long, default_value = "default")]
        name: String,
        /// Lifetime, e.g. 30d, 12h (default: never expires).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List APP's tokens (never their values).
    List {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token of APP by id or name.
    Revoke { app: String, id: String },
}

fn status(t: &TokenRecord) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| e <= now()) {
        "expired"
    } else {
        "active"
    }
}

fn token_json(t: &TokenRecord) -> serde_json::Value {
    json!({
        "id": t.id, "app": t.app, "name": t.name, "created_at": t.created_at, "created_by": t.created_by,
        "expires_at": t.expires_at, "revoked_at": t.revoked_at, "status": status(t),
    })
}

pub fn run(ctx: &Ctx<'_>, action: TokensCmd) -> CmdResult {
    let store = &ctx.platform.store;
    match action {
        TokensCmd::Create { app, name, expires, json } => {
            let record = ctx.managed_app(&app, "tokens create")?;
            if !is_valid_label(&name) {
                return Err(Failure::Error(format!(
                    "{name:?} is not a valid token name: use letters, digits, '-', '_', '.', '@'"
                )));
            }
            let expires_in = match expires.as_deref() {
                None | Some("never") => None,
                Some(text) => Some(
                    humantime::parse_duration(text)
                        .map_err(|e| Failure::Error(format!("--expires {text:?}: {e} (use e.g. 30d, 12h)")))?
                        .as_secs(),
                ),
            };
            let new = store.create_token(&record.name, &name, expires_in, &ctx.who.name)?;
            let endpoint = format!("{}/mcp/{}", ctx.platform.config.public_url(), record.name);
            if json {
                let mut value = token_json(&new.record);
                value["token"] = json!(new.token);
                value["endpoint"] = json!(endpoint);
                ctx.json(&value);
            } else {
                let out = ctx.out;
                out.line(format!(
                    "token {} ({}) for {}, expires {}:",
                    new.record.id,
                    new.record.name,
                    record.name,
                    new.record.expires_at.map(time).unwrap_or_else(|| "never".into())
                ));
                out.line(&new.token);
                out.line("shown once: catwalk keeps only a digest. Use it as");
                out.line(format!("  Authorization: Bearer <token>   on {endpoint}"));
            }
            Ok(())
        }
        TokensCmd::List { app, json } => {
            let record = ctx.managed_app(&app, "tokens list")?;
            let tokens = store.tokens(&record.name)?;
            if json {
                ctx.json(&json!(tokens.iter().map(token_json).collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            status(t).to_string(),
                            time(t.created_at),
                            t.expires_at.map(time).unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                ctx.out.out(table(&["ID", "NAME", "STATUS", "CREATED", "EXPIRES"], &rows));
            }
            Ok(())
        }
        TokensCmd::Revoke { app, id } => {
            let record = ctx.managed_app(&app, "tokens revoke")?;
            let revoked = store.revoke_token(&record.name, &id)?;
            ctx.out.line(format!("revoked token {} ({}) of {}", revoked.id, revoked.name, record.name));
            Ok(())
        }
    }
}
