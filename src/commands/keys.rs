//! `keys list|add|remove` (admins only).

use clap::Subcommand;
use serde_json::json;

use super::render::{table, time};
use super::{CmdResult, Ctx, Failure};
use crate::names::is_valid_label;
use crate::output::Input;
use crate::store::Role;

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// List the keys allowed in (store keys and the authorized_keys file's).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a key, read as one OpenSSH public key line from standard input.
    Add {
        name: String,
        /// `admin` (everything) or `deployer` (push to and manage own apps).
        #[arg(long, value_parser = ["admin", "deployer"])]
        role: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (the last admin cannot be removed).
    Remove { name: String },
}

pub async fn run(ctx: &Ctx<'_>, action: KeysCmd, input: &mut Input) -> CmdResult {
    let what = match &action {
        KeysCmd::List { .. } => "keys list",
        KeysCmd::Add { .. } => "keys add",
        KeysCmd::Remove { .. } => "keys remove",
    };
    ctx.require_admin(what)?;
    let store = &ctx.platform.store;
    match action {
        KeysCmd::List { json } => {
            let mut keys: Vec<(String, String, String, String)> = store
                .keys()?
                .into_iter()
                .map(|k| {
                    (
                        k.name,
                        k.role.as_str().to_string(),
                        k.fingerprint,
                        format!("store, {}", time(k.added_at)),
                    )
                })
                .collect();
            for k in ctx.platform.authorized_keys.file_keys() {
                keys.push((
                    k.name,
                    k.role.as_str().to_string(),
                    k.fingerprint,
                    "authorized_keys file".into(),
                ));
            }
            if json {
                ctx.json(&json!(
                    keys.iter()
                        .map(|(n, r, f, s)| json!({"name": n, "role": r, "fingerprint": f, "source": s}))
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = keys.into_iter().map(|(n, r, f, s)| vec![n, r, f, s]).collect();
                ctx.out.out(table(&["NAME", "ROLE", "FINGERPRINT", "SOURCE"], &rows));
            }
            Ok(())
        }
        KeysCmd::Add { name, role, json } => {
            if !is_valid_label(&name) {
                return Err(Failure::Error(format!(
                    "{name:?} is not a valid key name: use letters, digits, '-', '_', '.', '@' (e.g. bob-laptop)"
                )));
            }
            let role = Role::parse(&role).ok_or_else(|| Failure::Error(format!("unknown role {role:?}")))?;
            let text = input.read_all(16 * 1024).await.map_err(Failure::Error)?;
            let text = String::from_utf8_lossy(&text);
            let key = crate::init::parse_public_key(&text).map_err(|e| {
                Failure::Error(format!(
                    "expected one OpenSSH public key on standard input ({e:#}); e.g. `keys add {name} --role deployer < id_ed25519.pub`"
                ))
            })?;
            let record = crate::init::key_record(&name, role, &key, &ctx.who.name);
            store.add_key(&record)?;
            if json {
                ctx.json(
                    &json!({"name": record.name, "role": role.as_str(), "fingerprint": record.fingerprint}),
                );
            } else {
                ctx.out.line(format!("added key {} ({}) {}", record.name, role.as_str(), record.fingerprint));
            }
            Ok(())
        }
        KeysCmd::Remove { name } => {
            let removed = store.remove_key(&name)?;
            ctx.out.line(format!("removed key {} ({})", removed.name, removed.fingerprint));
            Ok(())
        }
    }
}
