//! Grammar checks for everything a pushed repository can name: packages, versions, env vars, arguments.
//!
//! These run before any network call or install. Values that pass become argv elements (never shell
//! strings), but they are still held to strict grammars: a package named `foo;rm -rf /` is a sign of an
//! attack or a mistake, and either way the pusher gets a precise message instead of a deploy.

/// Characters that mean something to a shell. None of them is legal in a package name or version, and
/// arguments containing them are refused too: no MCP server needs `$(...)` in its argv, and a refusal is
/// cheaper than proving that no layer anywhere ever re-parses an argument.
const SHELL_META: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '{', '}', '\\', '"', '\'', '\n', '\r', '\0', '*', '?', '!',
];

/// Env names that change how a runtime loads code, finds binaries or resolves packages. A pushed
/// manifest may not set them (the platform catwalk replaces let `NODE_OPTIONS=--require=/tmp/x.js` through).
const DENIED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "NODE_REPL_EXTERNAL_MODULE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "PYTHONBREAKPOINT",
    "PYTHONWARNINGS",
    "VIRTUAL_ENV",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "UV_INDEX_URL",
    "BASH_ENV",
    "ENV",
    "SHELL",
    "IFS",
    "PERL5OPT",
    "RUBYOPT",
    "JAVA_TOOL_OPTIONS",
    "GIT_DIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Prefixes of denied env names (`npm_config_registry`, `CATWALK_*`, ...), compared case-insensitively.
const DENIED_ENV_PREFIXES: &[&str] =
    &["NPM_CONFIG_", "YARN_", "PIP_", "UV_", "LD_", "DYLD_", "CATWALK_", "GIT_"];

/// Checks an npm package name against npm's rules (validate-npm-package-name, new-package rules).
pub fn npm_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("package {name:?} is not a valid npm name: {why}"));
    if name.is_empty() || name.len() > 214 {
        return bad("it must be 1-214 characters long");
    }
    if let Some(c) = name.chars().find(|c| SHELL_META.contains(c) || c.is_whitespace()) {
        return bad(&format!("{c:?} is not allowed"));
    }
    let (scope, base) = match name.strip_prefix('@') {
        Some(rest) => match rest.split_once('/') {
            Some((scope, base)) => (Some(scope), base),
            None => return bad("a scoped name looks like @scope/name"),
        },
        None => (None, name),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with(['.', '_'])
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_' | b'~')
            })
    };
    if let Some(scope) = scope
        && !part_ok(scope)
    {
        return bad(
            "the scope may use lower-case letters, digits, '-', '.', '_' and '~', not starting with '.' or '_'",
        );
    }
    if !part_ok(base) || base == "node_modules" || base == "favicon.ico" {
        return bad("use lower-case letters, digits, '-', '.', '_' and '~', not starting with '.' or '_'");
    }
    Ok(())
}

/// Checks a PyPI project name (PEP 508 / PEP 426: letters, digits, `.`, `_`, `-`, alphanumeric at both ends).
pub fn pypi_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "package {name:?} is not a valid PyPI name: use letters, digits, '.', '_' and '-', starting and ending with a letter or digit"
        ))
    }
}

/// An exact version as registries publish them (semver for npm, PEP 440 for PyPI): no ranges, no tags.
pub fn exact_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.as_bytes()[0].is_ascii_alphanumeric()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_' | b'!'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {version:?} is not an exact version (e.g. \"1.2.3\"); ranges and tags are not allowed"
        ))
    }
}

/// Env var names: `^[A-Z_][A-Z0-9_]*$` and not on the denylist.
pub fn env_name(name: &str) -> Result<(), String> {
    let grammar = !name.is_empty()
        && name.len() <= 128
        && (name.as_bytes()[0].is_ascii_uppercase() || name.as_bytes()[0] == b'_')
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !grammar {
        return Err(format!(
            "env name {name:?} is invalid: use upper-case letters, digits and '_' (e.g. API_TOKEN)"
        ));
    }
    let upper = name.to_ascii_uppercase();
    if DENIED_ENV.contains(&upper.as_str()) || DENIED_ENV_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        return Err(format!(
            "env name {name:?} is not allowed: it changes how the server's runtime loads code or reaches the network"
        ));
    }
    Ok(())
}

/// An argument for the server's argv: printable, no shell metacharacters, bounded.
pub fn argument(arg: &str) -> Result<(), String> {
    if arg.len() > 4096 {
        return Err("an argument is longer than 4096 bytes".to_string());
    }
    // `{port}` is the one placeholder catwalk fills in (the port of an HTTP server).
    let unplaced = arg.replace(crate::plan::PORT_PLACEHOLDER, "");
    if let Some(c) = unplaced.chars().find(|c| SHELL_META.contains(c) || c.is_control()) {
        return Err(format!("argument {arg:?} contains {c:?}, which is not allowed in server arguments"));
    }
    Ok(())
}

/// A path inside the repository (entry points, working dirs): relative, no `..`, no metacharacters.
pub fn repo_path(path: &str) -> Result<(), String> {
    argument(path)?;
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(format!("path {path:?} must be relative to the repository and must not contain '..'"));
    }
    Ok(())
}

/// The URL path an HTTP server serves MCP at (`/mcp`): it ends up in the health probe's and the proxy's
/// upstream URL and in the push output, so it is printable ASCII without spaces, starts with `/` and
/// does not climb with `..`.
pub fn url_path(path: &str) -> Result<(), String> {
    let ok = path.starts_with('/')
        && path.len() <= 1024
        && !path.contains("..")
        && path.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "path {path:?} is not a URL path like \"/mcp\": start with '/', use printable ASCII without spaces, '#' or '..'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_names() {
        for ok in ["express", "@modelcontextprotocol/server-everything", "a.b-c_d~e", "x1"] {
            npm_name(ok).unwrap();
        }
        for bad in
            ["", "foo; rm -rf /", "../x", "@scope", "@/x", "Upper", ".hidden", "_x", "a b", "$(id)", "a`b`"]
        {
            assert!(npm_name(bad).is_err(), "{bad:?}");
        }
        assert!(npm_name("foo;rm").unwrap_err().contains("not a valid npm name"));
    }

    #[test]
    fn pypi_names() {
        for ok in ["mcp-server-time", "mcp_server.time", "A1"] {
            pypi_name(ok).unwrap();
        }
        for bad in ["", "-x", "x-", "a b", "x;y", "../x", "x==1"] {
            assert!(pypi_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(crate::names::pypi_normalise("Mcp_Server..Time"), "mcp-server-time");
    }

    #[test]
    fn versions() {
        for ok in ["1.2.3", "2025.4.8", "1.0.0-beta.1", "1.0.0+build", "1!2.0", "0.6.0rc1"] {
            exact_version(ok).unwrap();
        }
        for bad in ["", "^1.2", "~1", ">=1", "latest tag", "1.0;rm", "*", "1 || 2"] {
            assert!(exact_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["GITHUB_TOKEN", "_X", "A1"] {
            env_name(ok).unwrap();
        }
        for bad in [
            "NODE_OPTIONS",
            "npm_config_registry",
            "NPM_CONFIG_REGISTRY",
            "LD_PRELOAD",
            "PYTHONPATH",
            "PATH",
            "lower",
            "1A",
            "A-B",
            "",
            "CATWALK_DIR",
            "A B",
            "PYTHONSTARTUP",
            "LD_LIBRARY_PATH",
        ] {
            assert!(env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arguments_and_paths() {
        argument("--local-timezone").unwrap();
        argument("UTC").unwrap();
        argument("/srv/data").unwrap();
        for bad in ["$(id)", "a;b", "`x`", "a\nb", "a|b", "x > y"] {
            assert!(argument(bad).is_err(), "{bad:?}");
        }
        url_path("/mcp").unwrap();
        url_path("/api/v1/mcp?x=1").unwrap();
        for bad in ["mcp", "/../x", "/mcp\nremote: forged", "/a b", "/\u{1b}[31m", "/x#y", ""] {
            assert!(url_path(bad).is_err(), "{bad:?}");
        }
        repo_path("server.py").unwrap();
        repo_path("src/main.py").unwrap();
        for bad in ["/etc/passwd", "../x", "a/../../b", ""] {
            assert!(repo_path(bad).is_err(), "{bad:?}");
        }
    }
}
