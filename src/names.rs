//! Validated names that end up in paths, URLs and git refs.
//!
//! An app name becomes a directory under the data dir, a URL segment and a git remote path, so it is
//! checked once, here, against `^[a-z][a-z0-9-]{0,62}$` before anything touches the disk. Everything
//! downstream takes an [`AppName`], never a raw string, so an unchecked name cannot reach the filesystem.

use std::fmt;

/// An app name that matched `^[a-z][a-z0-9-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppName(String);

/// Why a name was refused, phrased for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid app name: use 1-63 characters, lower-case letters, digits and '-', starting with a letter (e.g. \"github-tools\")"
)]
pub struct InvalidAppName(pub String);

impl AppName {
    pub fn parse(name: &str) -> Result<AppName, InvalidAppName> {
        let bytes = name.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok { Ok(AppName(name.to_string())) } else { Err(InvalidAppName(name.to_string())) }
    }

    /// Parses the path of a git remote: `APP`, `APP.git`, `/APP`, `/APP.git`, `'/APP.git'`.
    pub fn from_repo_path(path: &str) -> Result<AppName, InvalidAppName> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
        AppName::parse(trimmed).map_err(|_| InvalidAppName(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AppName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Key and token names: short, printable, no whitespace or shell/JSON-hostile characters.
pub fn is_valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        && !name.starts_with('-')
}

/// A conservative subset of git's branch-name rules (`git check-ref-format --branch`).
pub fn is_valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// PEP 503 normalised form (`Mcp_Server.Time` → `mcp-server-time`), used for registry URLs and caching.
pub fn pypi_normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last_sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !last_sep {
                out.push('-');
            }
            last_sep = true;
        } else {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for n in ["a", "hello", "github-tools", "a1-b2", &"a".repeat(63)] {
            assert!(AppName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        for n in [
            "",
            "../x",
            "a/b",
            "Hello",
            "1abc",
            "-a",
            "a_b",
            "a.b",
            "'a'",
            "a b",
            "a;rm",
            "é",
            &"a".repeat(64),
        ] {
            assert!(AppName::parse(n).is_err(), "{n:?}");
        }
    }

    #[test]
    fn repo_paths() {
        for p in ["hello", "hello.git", "/hello", "/hello.git"] {
            assert_eq!(AppName::from_repo_path(p).unwrap().as_str(), "hello");
        }
        for p in ["../hello", "/a/b.git", "hello.git.git", "//hello", "hello/"] {
            assert!(AppName::from_repo_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn labels_and_branches() {
        assert!(is_valid_label("laptop"));
        assert!(is_valid_label("bob@work"));
        assert!(!is_valid_label("a b"));
        assert!(!is_valid_label("-rf"));
        assert!(is_valid_branch("main"));
        assert!(is_valid_branch("release/v1"));
        assert!(!is_valid_branch("a..b"));
        assert!(!is_valid_branch("-x"));
    }
}
