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

    /// `bob (deployer)`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.role.as_str())
    }
}
