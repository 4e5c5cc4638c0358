//! Who is asking: the key that authenticated an SSH connection, or the local operator on the control
//! socket. Every permission check in catwalk takes an [`Identity`], decided once by the transport.

use crate::store::{AppRecord, Role};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Key name (`keys list`), or `local` for the control socket.
    pub name: String,
    pub role: Role,
    /// `SHA256:...` of the key; `None` for the local operator.
    pub fingerprint: Option<String>,
}

impl Identity {
    /// The operator on the daemon's host: whoever can open the 0600 control socket is its owner.
    pub fn local() -> Identity {
        Identity { name: "local".into(), role: Role::Admin, fingerprint: None }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admins manage every app; deployers the apps that list them as owner.
    pub fn can_manage(&self, app: &AppRecord) -> bool {
        self.is_admin() || app.owners.iter().any(|o| o == &self.name)
    }

    /// Refuses a deployer key that already owns `max` apps (`[deploy] max_apps_per_deployer`; admins are
    /// exempt, 0 means no limit): one key must not be able to fill the host with apps.
    pub fn may_create_app(&self, apps: &[AppRecord], max: usize) -> Result<(), String> {
        if self.is_admin() || max == 0 {
            return Ok(());
        }
        let owned = apps.iter().filter(|a| a.owners.iter().any(|o| o == &self.name)).count();
        if owned >= max {
            return Err(format!(
                "{} already owns {owned} apps, the most a deployer key may have ([deploy] \
                 max_apps_per_deployer = {max}): destroy one first (`apps destroy NAME --confirm NAME`) or ask \
                 an admin to raise the limit",
                self.name
            ));
        }
        Ok(())
    }

    /// `bob (deployer)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.role.as_str())
    }
}
