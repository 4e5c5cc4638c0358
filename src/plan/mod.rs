//! The typed result of analysing a push: what to install, what to run, how to talk to it, which env it needs.
//!
//! A plan is data only. It holds no secret values (only their names), so it can be stored with the
//! release, shown to the pusher, and re-used by `rollback`.

//!
//! It lives below the pipeline, the runtimes and the store (all three use it; none points back up), with
//! the other values a release is made of: the app's [`AuthMode`], the [`RuntimeKind`] it runs on and the
//! type of its decrypted [`Secrets`].

pub mod secret;

use serde::{Deserialize, Serialize};

pub use secret::{SecretValue, Secrets};

/// Replaced by the release's port in the args of `transport = "http"` servers.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// Where a release runs. Parsed once (config, manifest, stored release) so no code compares strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Sandboxed processes on the daemon's host (the default).
    #[default]
    Local,
    /// Fly.io Machines (`[runtime.fly]`).
    Fly,
}

impl RuntimeKind {
    /// The spelling of the config, the manifest and `--json`: `local` or `fly`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Local => "local",
            RuntimeKind::Fly => "fly",
        }
    }

    pub fn parse(text: &str) -> Option<RuntimeKind> {
        match text {
            "local" => Some(RuntimeKind::Local),
            "fly" => Some(RuntimeKind::Fly),
            _ => None,
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an app's MCP endpoint is protected (the app's `[deploy] auth` in its `catwalk.toml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthMode {
    /// OAuth access tokens issued for this endpoint, and `tokens create` bearer tokens (the default).
    #[default]
    #[serde(rename = "oauth+token")]
    OAuthAndToken,
    /// Only `tokens create` bearer tokens; no OAuth metadata is offered.
    #[serde(rename = "token")]
    Token,
    /// A public endpoint: no credential at all (still rate-limited and audited, as one caller "public").
    #[serde(rename = "none")]
    Public,
}

impl AuthMode {
    /// The manifest spelling: `oauth+token`, `token` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::OAuthAndToken => "oauth+token",
            AuthMode::Token => "token",
            AuthMode::Public => "none",
        }
    }

    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "oauth+token" => Some(AuthMode::OAuthAndToken),
            "token" => Some(AuthMode::Token),
            "none" => Some(AuthMode::Public),
            _ => None,
        }
    }
}

/// The language runtime a server needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Node,
    Python,
}

/// A package registry catwalk can pin against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    Npm,
    Pypi,
}

impl Registry {
    pub fn language(self) -> Language {
        match self {
            Registry::Npm => Language::Node,
            Registry::Pypi => Language::Python,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Registry::Npm => "npm",
            Registry::Pypi => "PyPI",
        }
    }
}

/// Where the server's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A published package. `version` is `None` until pinned against the registry.
    Package { registry: Registry, name: String, version: Option<String> },
    /// The pushed repository itself, installed from its lockfile / requirements.
    Repository,
}

/// How the server speaks MCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Transport {
    Stdio,
    /// Streamable HTTP: the server listens on a loopback port and serves MCP at `path`.
    /// `port: None` (the usual case) lets catwalk give each release a free port (`$PORT`, `{port}`
    /// in args), so releases overlap for blue/green; `Some` is a port the server always uses.
    Http {
        #[serde(default)]
        port: Option<u16>,
        path: String,
    },
}

/// What to execute once installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// The package's (named, or only) executable: an npm `bin` or a Python console script.
    PackageBin { bin: Option<String> },
    /// A Python module run with `python -m`.
    PythonModule { module: String },
    /// An explicit argv relative to the repository (first element `node`, `python` or a repo path).
    Command { argv: Vec<String> },
}

/// One environment variable the server reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSpec {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// A plain (non-secret) value from the manifest. Secret values never live in a plan.
    #[serde(default)]
    pub value: Option<String>,
    /// Who wrote `description` when it is not from the manifest: `llm:MODEL` for the optional
    /// enrichment step (`pipeline::enrich`). `None`: the manifest's own words (or no description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_source: Option<String>,
}

impl EnvSpec {
    /// One line for dry runs and `info APP`: `GITHUB_TOKEN: secret (required) — token with repo scope`.
    /// Secret values are never in a plan, so none can be printed here.
    pub fn summary(&self) -> String {
        let kind = match (self.secret, &self.value) {
            (true, _) => "secret".to_string(),
            (false, Some(v)) => format!("= {}", one_line(v)),
            (false, None) => "unset".to_string(),
        };
        let mut line = format!("{}: {kind}{}", self.name, if self.required { " (required)" } else { "" });
        if let Some(d) = &self.description {
            line.push_str(" — ");
            line.push_str(&one_line(d));
            if let Some(source) = &self.description_source {
                line.push_str(&format!(" (written by {})", one_line(source)));
            }
        }
        line
    }
}

/// Manifest text on one output line: control characters (newlines included) become spaces, so a
/// description cannot forge extra `remote:` lines.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The release plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The file the plan was read from (`catwalk.toml`, `server.json`, `package.json`, `pyproject.toml`).
    pub manifest: String,
    pub language: Language,
    pub source: Source,
    pub entry: Entry,
    #[serde(default)]
    pub args: Vec<String>,
    pub transport: Transport,
    #[serde(default)]
    pub env: Vec<EnvSpec>,
    /// One server process shared by all sessions instead of one per session.
    #[serde(default)]
    pub shared: bool,
    /// Run npm lifecycle scripts during install (off unless the manifest opts in).
    #[serde(default)]
    pub install_scripts: bool,
    /// Runtime the app asks for (`local`, `fly`), subject to the operator's policy.
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
    /// Extra `Origin` values the app allows.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `network = "none"`: the server gets no network at all (only a private loopback).
    #[serde(default)]
    pub no_network: bool,
    /// `[deploy] auth`: which credentials the endpoint accepts (default `oauth+token`).
    #[serde(default)]
    pub auth: AuthMode,
    /// `[deploy] warm`: warm spares for this app (`None`: the daemon's `[deploy] warm`).
    #[serde(default)]
    pub warm: Option<u32>,
    /// `[deploy] machines`: how many machines run the release on Fly (`None`: one). Requests of no
    /// session are spread across them; each 2025 session stays on the machine that holds it.
    #[serde(default)]
    pub machines: Option<u32>,
}

impl Plan {
    /// One line for the push output: `PyPI package mcp-server-time 2026.10.19 (stdio)`.
    pub fn describe(&self) -> String {
        let transport = match &self.transport {
            Transport::Stdio => "stdio".to_string(),
            Transport::Http { port: Some(port), path } => format!("http :{port}{path}"),
            Transport::Http { port: None, path } => format!("http {path}"),
        };
        match &self.source {
            Source::Package { registry, name, version } => format!(
                "{} package {name} {} ({transport})",
                registry.label(),
                version.as_deref().unwrap_or("(unpinned)")
            ),
            Source::Repository => {
                let lang = match self.language {
                    Language::Node => "Node",
                    Language::Python => "Python",
                };
                format!("{lang} server built from the repository ({transport})")
            }
        }
    }
}
