//! The decrypted secrets a release is started with: values that are never serialised nor printed.
//!
//! Decrypting them is the pipeline's business (`pipeline/secrets.rs`); starting a server with them is the
//! runtimes'; the type lives here so that both use it without the runtimes pointing up at the pipeline.

use std::collections::BTreeMap;
use std::fmt;

/// A secret value. Deliberately not `Serialize`, and redacted when formatted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: String) -> SecretValue {
        SecretValue(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Decrypted secrets by env name.
pub type Secrets = BTreeMap<String, SecretValue>;
