//! What git's hooks tell the daemon about a push: the ref updates and where the pushed objects wait.
//!
//! `git receive-pack` runs the `pre-receive` hook after the pushed objects are in the quarantine directory
//! and before any ref moves; `catwalk hook` sends these over the control socket and the push gate
//! (`platform::push`) decides.

use serde::{Deserialize, Serialize};

/// One line of the hook's stdin: `old new refname`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    #[serde(rename = "ref")]
    pub refname: String,
}

impl RefUpdate {
    /// Parses `old new refname`.
    pub fn parse(line: &str) -> Option<RefUpdate> {
        let mut parts = line.split_whitespace();
        let (old, new, refname) = (parts.next()?, parts.next()?, parts.next()?);
        let is_sha = |s: &str| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !is_sha(old) || !is_sha(new) {
            return None;
        }
        Some(RefUpdate { old: old.into(), new: new.into(), refname: refname.into() })
    }

    pub fn is_delete(&self) -> bool {
        self.new.bytes().all(|b| b == b'0')
    }

    pub fn is_create(&self) -> bool {
        self.old.bytes().all(|b| b == b'0')
    }
}

/// The environment git gives the pre-receive hook to read the not-yet-accepted objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEnv {
    /// `GIT_QUARANTINE_PATH`: the directory holding the pushed objects.
    pub quarantine_path: Option<String>,
    /// `GIT_OBJECT_DIRECTORY`.
    pub object_directory: Option<String>,
    /// `GIT_ALTERNATE_OBJECT_DIRECTORIES` (the repository's own objects).
    pub alternate_object_directories: Option<String>,
}

impl QuarantineEnv {
    /// The directories holding the pushed objects: the quarantine object directory (and the
    /// repository's own, which the bare repository already reads).
    pub fn object_dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs: Vec<std::path::PathBuf> = Vec::new();
        if let Some(dir) = &self.object_directory {
            dirs.push(dir.into());
        } else if let Some(dir) = &self.quarantine_path {
            dirs.push(dir.into());
        }
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The all-zero sha git uses for "no object" (creation or deletion).
    const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn parses_update_lines() {
        let old = "a".repeat(40);
        let u = RefUpdate::parse(&format!("{old} {ZERO_SHA} refs/heads/main")).unwrap();
        assert!(u.is_delete() && !u.is_create());
        assert!(RefUpdate::parse("x y refs/heads/main").is_none());
        assert!(RefUpdate::parse(&format!("{old} {old}")).is_none());
        assert!(RefUpdate::parse(&format!("{old} {old} refs/heads/main extra")).is_none());
    }
}
