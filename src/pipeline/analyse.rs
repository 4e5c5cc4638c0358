//! Analysis: turn the pushed tree into a [`Plan`] by reading manifests, never by running anything.
//!
//! Precedence: `catwalk.toml` (the documented format) → `server.json` (the MCP registry's manifest) →
//! `package.json` of an MCP server → `pyproject.toml` of an MCP server. Every name, version, argument and
//! env name found is checked by [`validate`] before the plan is returned.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::validate;
use crate::plan::{AuthMode, Entry, EnvSpec, Language, Plan, Registry, RuntimeKind, Source, Transport};

/// Read-only access to the files of the pushed commit (a git tree in production, a map in tests).
pub trait Tree {
    /// The file's bytes, or `None` when absent (or not a regular file).
    fn read(&self, path: &str) -> Option<Vec<u8>>;
}

impl Tree for BTreeMap<String, Vec<u8>> {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.get(path).cloned()
    }
}

/// Manifests larger than this are refused rather than parsed.
const MAX_MANIFEST: usize = 256 * 1024;

/// The message for a repository catwalk cannot deploy: what it looked for and the smallest fix.
pub const NOT_DEPLOYABLE: &str = "no catwalk.toml, server.json, package.json (of an MCP server) or pyproject.toml (of an MCP server) found.
       The smallest catwalk.toml names a package:
           [server]
           package = \"npm:@modelcontextprotocol/server-everything\"   # or \"pypi:mcp-server-time\"
       or runs the repository's own code:
           [server]
           language = \"python\"
           command = [\"python\", \"server.py\"]";

/// Analyses `tree` and returns the plan, or a message for the pusher.
pub fn analyse(tree: &dyn Tree) -> Result<Plan, String> {
    let plan = if let Some(text) = read_text(tree, "catwalk.toml")? {
        from_catwalk_toml(&text, tree)?
    } else if let Some(text) = read_text(tree, "server.json")? {
        from_server_json(&text)?
    } else if let Some(plan) = match read_text(tree, "package.json")? {
        Some(text) => from_package_json(&text, tree)?,
        None => None,
    } {
        plan
    } else if let Some(plan) = match read_text(tree, "pyproject.toml")? {
        Some(text) => from_pyproject(&text)?,
        None => None,
    } {
        plan
    } else {
        return Err(NOT_DEPLOYABLE.to_string());
    };
    check(&plan)?;
    Ok(plan)
}

fn read_text(tree: &dyn Tree, path: &str) -> Result<Option<String>, String> {
    let Some(bytes) = tree.read(path) else { return Ok(None) };
    if bytes.len() > MAX_MANIFEST {
        return Err(format!("{path} is larger than {} KiB", MAX_MANIFEST / 1024));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| format!("{path} is not UTF-8 text"))
}

// ---- catwalk.toml ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatwalkToml {
    server: ServerSection,
    #[serde(default)]
    env: BTreeMap<String, EnvSection>,
    #[serde(default)]
    deploy: DeploySection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    /// `npm:NAME[@VERSION]` or `pypi:NAME[==VERSION]`.
    package: Option<String>,
    /// `node` or `python`, for servers built from the repository.
    language: Option<Language>,
    /// argv for servers built from the repository.
    command: Option<Vec<String>>,
    /// Which executable of the package to run (when it has several).
    bin: Option<String>,
    /// Python module to run with `python -m` instead of a console script.
    module: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default = "default_transport")]
    transport: String,
    port: Option<u16>,
    path: Option<String>,
    #[serde(default)]
    shared: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EnvSection {
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    description: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeploySection {
    runtime: Option<String>,
    #[serde(default)]
    install_scripts: bool,
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// `"default"` (the host's network) or `"none"`.
    network: Option<String>,
    /// `"oauth+token"` (default), `"token"` or `"none"` (a public endpoint).
    auth: Option<String>,
    /// Warm spares (0 to 8) instead of the daemon's default.
    warm: Option<u32>,
    /// Machines on Fly (1 to 10).
    machines: Option<u32>,
}

fn default_transport() -> String {
    "stdio".into()
}

fn from_catwalk_toml(text: &str, tree: &dyn Tree) -> Result<Plan, String> {
    let manifest: CatwalkToml =
        toml::from_str(text).map_err(|e| format!("catwalk.toml: {}", e.to_string().trim()))?;
    let s = manifest.server;
    let transport =
        transport(&s.transport, s.port, s.path.as_deref()).map_err(|e| format!("catwalk.toml: {e}"))?;
    let (language, source, entry) = match (&s.package, &s.command) {
        (Some(_), Some(_)) => {
            return Err("catwalk.toml: [server] has both `package` and `command`; choose one".into());
        }
        (None, None) => {
            return Err("catwalk.toml: [server] needs `package = \"npm:NAME\"` (or \"pypi:NAME\") or `command = [...]`".into());
        }
        (Some(spec), None) => {
            let (registry, name, version) =
                parse_package_spec(spec).map_err(|e| format!("catwalk.toml: {e}"))?;
            let entry = match (&s.module, &s.bin) {
                (Some(_), Some(_)) => return Err("catwalk.toml: `bin` and `module` are exclusive".into()),
                (Some(module), None) if registry == Registry::Pypi => {
                    Entry::PythonModule { module: module.clone() }
                }
                (Some(_), None) => return Err("catwalk.toml: `module` only applies to PyPI packages".into()),
                (None, bin) => Entry::PackageBin { bin: bin.clone() },
            };
            (registry.language(), Source::Package { registry, name, version }, entry)
        }
        (None, Some(argv)) => {
            let language = match s.language {
                Some(l) => l,
                None if tree.read("package.json").is_some() => Language::Node,
                None if tree.read("pyproject.toml").is_some() || tree.read("requirements.txt").is_some() => {
                    Language::Python
                }
                None => {
                    return Err(
                        "catwalk.toml: set `language = \"node\"` or `\"python\"` next to `command`".into()
                    );
                }
            };
            if argv.is_empty() {
                return Err("catwalk.toml: `command` must not be empty".into());
            }
            (language, Source::Repository, Entry::Command { argv: argv.clone() })
        }
    };
    let env = manifest
        .env
        .into_iter()
        .map(|(name, e)| EnvSpec {
            name,
            required: e.required,
            secret: e.secret,
            description: e.description,
            value: e.value,
            description_source: None,
        })
        .collect();
    let no_network = match manifest.deploy.network.as_deref() {
        None | Some("default") => false,
        Some("none") => true,
        Some(other) => {
            return Err(format!("catwalk.toml: deploy.network {other:?}: use \"default\" or \"none\""));
        }
    };
    let runtime = match manifest.deploy.runtime.as_deref() {
        None => None,
        Some(text) => Some(
            RuntimeKind::parse(text)
                .ok_or_else(|| format!("catwalk.toml: deploy.runtime {text:?}: use \"local\" or \"fly\""))?,
        ),
    };
    let auth = match manifest.deploy.auth.as_deref() {
        None => AuthMode::default(),
        Some(text) => AuthMode::parse(text).ok_or_else(|| {
            format!(
                "catwalk.toml: deploy.auth {text:?}: use \"oauth+token\" (default), \"token\" or \"none\" (public)"
            )
        })?,
    };
    Ok(Plan {
        manifest: "catwalk.toml".into(),
        language,
        source,
        entry,
        args: s.args,
        transport,
        env,
        shared: s.shared,
        install_scripts: manifest.deploy.install_scripts,
        runtime,
        allowed_origins: manifest.deploy.allowed_origins,
        no_network,
        auth,
        warm: match manifest.deploy.warm {
            Some(n) if n > MAX_WARM => {
                return Err(format!(
                    "catwalk.toml: deploy.warm = {n}: at most {MAX_WARM} warm spares per app (each is a running process)"
                ));
            }
            other => other,
        },
        machines: match manifest.deploy.machines {
            Some(n) if n == 0 || n > MAX_MACHINES => {
                return Err(format!(
                    "catwalk.toml: deploy.machines = {n}: use 1 to {MAX_MACHINES} (machines scale to zero on their own when idle)"
                ));
            }
            other => other,
        },
    })
}

/// Most warm spares an app may ask for: each is a running process that counts against its limits.
const MAX_WARM: u32 = 8;

/// Most Fly machines an app may ask for (each is billed while it runs).
const MAX_MACHINES: u32 = 10;

/// Parses `npm:NAME[@VERSION]` / `pypi:NAME[==VERSION]` (a bare scoped name `@x/y` means npm).
pub fn parse_package_spec(spec: &str) -> Result<(Registry, String, Option<String>), String> {
    let (registry, rest) = if let Some(rest) = spec.strip_prefix("npm:") {
        (Registry::Npm, rest)
    } else if let Some(rest) = spec.strip_prefix("pypi:") {
        (Registry::Pypi, rest)
    } else if spec.starts_with('@') {
        (Registry::Npm, spec)
    } else {
        return Err(format!(
            "package {spec:?}: prefix it with its registry, e.g. \"npm:{spec}\" or \"pypi:{spec}\""
        ));
    };
    let (name, version) = match registry {
        Registry::Npm => match rest.rfind('@').filter(|&i| i > 0) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        },
        Registry::Pypi => match rest.split_once("==") {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        },
    };
    match registry {
        Registry::Npm => validate::npm_name(name)?,
        Registry::Pypi => validate::pypi_name(name)?,
    }
    if let Some(v) = version {
        validate::exact_version(v)?;
    }
    Ok((registry, name.to_string(), version.map(str::to_string)))
}

fn transport(kind: &str, port: Option<u16>, path: Option<&str>) -> Result<Transport, String> {
    match kind {
        "stdio" => Ok(Transport::Stdio),
        "http" | "streamable-http" => {
            if port == Some(0) {
                return Err("port 0 is not a port; leave `port` out to let catwalk pick one".into());
            }
            let path = path.unwrap_or("/mcp").to_string();
            validate::url_path(&path)?;
            Ok(Transport::Http { port, path })
        }
        other => Err(format!("transport {other:?} is not supported: use \"stdio\" or \"http\"")),
    }
}

// ---- server.json (MCP registry) ----------------------------------------------------------------

#[derive(Deserialize)]
struct ServerJson {
    #[serde(default)]
    packages: Vec<RegistryPackage>,
}

#[derive(Deserialize)]
struct RegistryPackage {
    #[serde(alias = "registry_type", alias = "registry_name", alias = "registryName")]
    #[serde(rename = "registryType")]
    registry_type: String,
    #[serde(alias = "name")]
    identifier: String,
    version: Option<String>,
    #[serde(default)]
    transport: Option<RegistryTransport>,
    #[serde(default, alias = "package_arguments")]
    #[serde(rename = "packageArguments")]
    package_arguments: Vec<RegistryArgument>,
    #[serde(default, alias = "environment_variables")]
    #[serde(rename = "environmentVariables")]
    environment_variables: Vec<RegistryEnv>,
}

#[derive(Deserialize)]
struct RegistryTransport {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
}

#[derive(Deserialize)]
struct RegistryArgument {
    #[serde(rename = "type", default)]
    kind: String,
    name: Option<String>,
    value: Option<String>,
    default: Option<String>,
}

#[derive(Deserialize)]
struct RegistryEnv {
    name: String,
    description: Option<String>,
    #[serde(default, alias = "is_required", rename = "isRequired")]
    is_required: bool,
    #[serde(default, alias = "is_secret", rename = "isSecret")]
    is_secret: bool,
    default: Option<String>,
}

fn from_server_json(text: &str) -> Result<Plan, String> {
    let manifest: ServerJson = serde_json::from_str(text).map_err(|e| format!("server.json: {e}"))?;
    let package = manifest
        .packages
        .iter()
        .find(|p| matches!(p.registry_type.as_str(), "npm" | "pypi"))
        .ok_or("server.json: no package with registryType \"npm\" or \"pypi\" (catwalk deploys those)")?;
    let registry = if package.registry_type == "npm" { Registry::Npm } else { Registry::Pypi };
    let transport = match &package.transport {
        None => Transport::Stdio,
        Some(t) if t.kind == "stdio" => Transport::Stdio,
        Some(t) if t.kind == "streamable-http" => {
            // `http://localhost:{port}/mcp` (a variable) lets catwalk choose; a number is fixed.
            let port = t.url.as_deref().and_then(port_of_url);
            let path = t.url.as_deref().and_then(path_of_url).unwrap_or_else(|| "/mcp".into());
            Transport::Http { port, path }
        }
        Some(t) => {
            return Err(format!(
                "server.json: transport {:?} is not supported (use stdio or streamable-http)",
                t.kind
            ));
        }
    };
    let mut args = Vec::new();
    for a in &package.package_arguments {
        let value = a.value.clone().or_else(|| a.default.clone());
        match (a.kind.as_str(), &a.name, value) {
            ("named", Some(name), Some(v)) => {
                args.push(name.clone());
                args.push(v);
            }
            ("named", Some(name), None) => args.push(name.clone()),
            (_, _, Some(v)) => args.push(v),
            _ => {}
        }
    }
    let env = package
        .environment_variables
        .iter()
        .map(|e| EnvSpec {
            name: e.name.clone(),
            required: e.is_required,
            secret: e.is_secret,
            description: e.description.clone(),
            value: if e.is_secret { None } else { e.default.clone() },
            description_source: None,
        })
        .collect();
    Ok(Plan {
        manifest: "server.json".into(),
        language: registry.language(),
        source: Source::Package {
            registry,
            name: package.identifier.clone(),
            version: package.version.clone(),
        },
        entry: Entry::PackageBin { bin: None },
        args,
        transport,
        env,
        shared: false,
        install_scripts: false,
        runtime: None,
        allowed_origins: Vec::new(),
        no_network: false,
        auth: Default::default(),
        warm: None,
        machines: None,
    })
}

fn port_of_url(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

fn path_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    rest.find('/').map(|i| rest[i..].to_string())
}

// ---- package.json / pyproject.toml (repository sources) ----------------------------------------

fn from_package_json(text: &str, tree: &dyn Tree) -> Result<Option<Plan>, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("package.json: {e}"))?;
    let has_sdk = ["dependencies", "devDependencies"].iter().any(|section| {
        json.get(section)
            .and_then(|d| d.as_object())
            .is_some_and(|d| d.keys().any(|k| k == "@modelcontextprotocol/sdk" || k == "fastmcp"))
    });
    if !has_sdk {
        return Ok(None);
    }
    let bin = match json.get("bin") {
        Some(serde_json::Value::String(path)) => Some(path.clone()),
        Some(serde_json::Value::Object(map)) => map.values().find_map(|v| v.as_str().map(str::to_string)),
        _ => None,
    };
    let argv = match bin {
        Some(path) => vec!["node".to_string(), path.trim_start_matches("./").to_string()],
        None => match json.pointer("/scripts/start").and_then(|s| s.as_str()) {
            Some(start) => simple_node_command(start).ok_or(format!(
                "package.json: scripts.start {start:?} is not a plain `node FILE` command; add a catwalk.toml with `command = [\"node\", \"FILE\"]`"
            ))?,
            None => match json.get("main").and_then(|m| m.as_str()) {
                Some(main) => vec!["node".to_string(), main.trim_start_matches("./").to_string()],
                None => return Err("package.json: an MCP server needs `bin`, `main` or scripts.start to know what to run".into()),
            },
        },
    };
    let _ = tree;
    Ok(Some(repository_plan("package.json", Language::Node, Entry::Command { argv })))
}

/// A plan for a repository source found through its own package manifest (no catwalk.toml).
fn repository_plan(manifest: &str, language: Language, entry: Entry) -> Plan {
    Plan {
        manifest: manifest.into(),
        language,
        source: Source::Repository,
        entry,
        args: Vec::new(),
        transport: Transport::Stdio,
        env: Vec::new(),
        shared: false,
        install_scripts: false,
        runtime: None,
        allowed_origins: Vec::new(),
        no_network: false,
        auth: Default::default(),
        warm: None,
        machines: None,
    }
}

/// `node dist/index.js --flag` → argv, for start scripts that need no shell.
fn simple_node_command(script: &str) -> Option<Vec<String>> {
    let words = shell_words::split(script).ok()?;
    (words.first().map(String::as_str) == Some("node") && words.len() >= 2).then_some(words)
}

fn from_pyproject(text: &str) -> Result<Option<Plan>, String> {
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| format!("pyproject.toml: {}", e.to_string().trim()))?;
    let project = doc.get("project").and_then(|p| p.as_table());
    let deps: Vec<String> = project
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let is_mcp = deps.iter().any(|d| {
        let name: String =
            d.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
        matches!(crate::names::pypi_normalise(&name).as_str(), "mcp" | "fastmcp")
    });
    if !is_mcp {
        return Ok(None);
    }
    let script = project
        .and_then(|p| p.get("scripts"))
        .and_then(|s| s.as_table())
        .and_then(|s| s.keys().next().cloned())
        .ok_or("pyproject.toml: an MCP server needs a [project.scripts] entry (or add a catwalk.toml with `command`)")?;
    Ok(Some(repository_plan("pyproject.toml", Language::Python, Entry::PackageBin { bin: Some(script) })))
}

// ---- final checks ------------------------------------------------------------------------------

/// Validates every value of a plan that will reach argv, env names or paths.
fn check(plan: &Plan) -> Result<(), String> {
    let m = &plan.manifest;
    if let Source::Package { registry, name, version } = &plan.source {
        match registry {
            Registry::Npm => validate::npm_name(name),
            Registry::Pypi => validate::pypi_name(name),
        }
        .map_err(|e| format!("{m}: {e}"))?;
        if let Some(v) = version {
            validate::exact_version(v).map_err(|e| format!("{m}: {e}"))?;
        }
    }
    match &plan.entry {
        Entry::PackageBin { bin: Some(bin) } => {
            validate::argument(bin).map_err(|e| format!("{m}: bin: {e}"))?
        }
        Entry::PythonModule { module } => {
            if module.is_empty()
                || !module
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            {
                return Err(format!("{m}: module {module:?} is not a Python module name"));
            }
        }
        Entry::Command { argv } => {
            for (i, a) in argv.iter().enumerate() {
                validate::argument(a).map_err(|e| format!("{m}: command: {e}"))?;
                if i == 0 && !matches!(a.as_str(), "node" | "python" | "python3") {
                    validate::repo_path(a).map_err(|e| format!("{m}: command[0]: {e}"))?;
                }
            }
        }
        Entry::PackageBin { bin: None } => {}
    }
    for a in &plan.args {
        validate::argument(a).map_err(|e| format!("{m}: args: {e}"))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for e in &plan.env {
        validate::env_name(&e.name).map_err(|err| format!("{m}: {err}"))?;
        if !seen.insert(e.name.as_str()) {
            return Err(format!("{m}: env {} is declared twice", e.name));
        }
        if e.secret && e.value.is_some() {
            return Err(format!(
                "{m}: env {} is secret, so its value belongs in .catwalk/secrets.age, not in the manifest",
                e.name
            ));
        }
        if let Some(v) = &e.value
            && (v.len() > 8192 || v.contains('\0'))
        {
            return Err(format!("{m}: env {}: value too long or contains NUL", e.name));
        }
    }
    // Every manifest's HTTP transport (server.json's URL too) is held to the rules catwalk.toml's is.
    if let Transport::Http { port, path } = &plan.transport {
        if *port == Some(0) {
            return Err(format!("{m}: port 0 is not a port; leave the port out to let catwalk pick one"));
        }
        validate::url_path(path).map_err(|e| format!("{m}: {e}"))?;
    }
    for origin in &plan.allowed_origins {
        if !(origin.starts_with("https://") || origin.starts_with("http://"))
            || origin.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "{m}: allowed_origins: {origin:?} is not an origin like https://example.com"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
