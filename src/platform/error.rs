//! Why an operation of the platform did not happen, typed so that each transport words it right.
//!
//! A refusal is the caller's to fix (a name taken, a branch that is not deployed, a limit reached) and is
//! shown as it is. An internal failure (the store, the disk, git) is not the caller's mistake: it is
//! logged for the operator, and the caller is told that much instead of seeing it as a refusal.

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The request is not allowed or not possible as asked; the message says what to do instead.
    #[error("{0}")]
    Refused(String),
    /// Something inside catwalk failed; the message says what.
    #[error(
        "internal error: {0} (nothing was changed; try again, or ask the operator to read the daemon's log)"
    )]
    Internal(String),
}

impl PlatformError {
    /// An internal failure, logged for the operator where it happens.
    pub fn internal(what: impl std::fmt::Display) -> PlatformError {
        let message = what.to_string();
        tracing::error!("internal error: {message}");
        PlatformError::Internal(message)
    }
}

/// Refusals are written as plain messages by the policy checks (`may_push`, `may_create_app`).
impl From<String> for PlatformError {
    fn from(message: String) -> Self {
        PlatformError::Refused(message)
    }
}

impl From<StoreError> for PlatformError {
    fn from(e: StoreError) -> Self {
        PlatformError::internal(format!("the state store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_are_not_worded_as_refusals() {
        let refused = PlatformError::from("the app name shop is taken".to_string());
        assert_eq!(refused.to_string(), "the app name shop is taken");
        let internal = PlatformError::from(StoreError::Conflict("x".into()));
        assert!(internal.to_string().starts_with("internal error: the state store: "), "{internal}");
        assert!(internal.to_string().contains("the daemon's log"), "{internal}");
    }
}
