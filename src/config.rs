//! The daemon's configuration file (`DIR/catwalk.toml`).
//!
//! Every key is documented in `config/catwalk.example.toml`. Unknown keys are an error that names the key:
//! a typo such as `idle_timout` must not silently fall back to a default on a production host.
//! Durations are humantime strings (`"30s"`, `"10m"`); sizes are plain byte counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::plan::RuntimeKind;
use crate::store::Role;

/// The whole configuration file. Every section is optional and defaults to values fit for a laptop.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ssh: SshConfig,
    pub http: HttpConfig,
    pub git: GitConfig,
    pub gateway: GatewayConfig,
    pub daemon: DaemonConfig,
    pub deploy: DeployConfig,
    /// Where releases run: `local` (default) or `fly` (`[runtime.fly]`).
    pub runtime: RuntimeConfig,
    /// Isolation of deployed servers and their installs (`[sandbox]`; see `runtime::sandbox`).
    pub sandbox: crate::runtime::sandbox::SandboxPolicy,
    /// The OAuth authorization server in front of every `/mcp/APP` (`[oauth]`; see `oauth`).
    pub oauth: crate::oauth::OAuthConfig,
    /// Statically declared apps served by the gateway, for servers the operator runs by hand
    /// (the way `mcp-proxy` names servers). Pushed apps live in the store instead.
    pub apps: std::collections::BTreeMap<String, StaticApp>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address the SSH server listens on.
    pub listen: SocketAddr,
    /// Optional OpenSSH `authorized_keys` file whose keys may also log in (reloaded on change).
    pub authorized_keys_file: Option<PathBuf>,
    /// Role given to keys from `authorized_keys_file` (`admin` or `deployer`).
    #[serde(deserialize_with = "role")]
    pub authorized_keys_role: Role,
    /// Hostname shown in the `git remote add` hints (defaults to the listen address).
    pub public_host: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the MCP gateway listens on.
    pub listen: SocketAddr,
    /// The URL clients use to reach this daemon (printed after deploys, allowed as `Origin`).
    pub public_url: Option<String>,
    /// `[http.tls]`: serve HTTPS (certificate files or ACME) instead of plain HTTP.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Time a client has to start its request (the first bytes, then the headers), and the longest an
    /// idle keep-alive HTTP/1.1 connection stays open. Bounds slow clients (slowloris).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Most open connections in total (0: no cap); more are closed at once.
    pub max_connections: usize,
    /// Most open connections from one client address (0: no cap). Behind a reverse proxy on the same
    /// host every client has the proxy's address: set 0 there and cap at the proxy.
    pub max_connections_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Branch whose pushes deploy; pushes to other branches are refused.
    pub deploy_branch: String,
    /// Path of the system `git` binary used for receive-pack/upload-pack.
    pub git_binary: PathBuf,
    /// Largest accepted push, in bytes (passed to `receive.maxInputSize`).
    pub max_push_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Largest accepted request body, in bytes (413 above it).
    pub body_limit: usize,
    /// A session with no request for this long is closed and its child stopped.
    #[serde(deserialize_with = "duration")]
    pub session_idle_timeout: Duration,
    /// A session whose client went away (no open stream) is reaped after this long.
    #[serde(deserialize_with = "duration")]
    pub disconnect_grace: Duration,
    /// Requests per minute allowed per token (0 disables the limit).
    pub rate_limit_per_minute: u32,
    /// Extra `Origin` values allowed for every app (the public URL's origin is always allowed).
    pub allowed_origins: Vec<String>,
    /// Most open MCP sessions per app; with one server process each (plus the app's warm spares), this
    /// bounds the processes one token can start. `initialize` answers 503 above it.
    pub max_sessions_per_app: usize,
    /// MCP 2026-07-28 requests to a handshake-era stdio server are served by a pool of initialized
    /// processes, one token (or OAuth grant) each: a pooled process idle this long is stopped.
    #[serde(deserialize_with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Most pooled processes per app and token (concurrent 2026-07-28 requests of one client); more
    /// requests at once wait for one of them (30 s at most, then 503).
    pub pool_max_per_token: usize,
    /// How long a server that asked a 2026-07-28 client for input waits for the client's retry.
    #[serde(deserialize_with = "duration")]
    pub input_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Log filter (`info`, `debug`, `catwalk=debug,russh=warn`, ...).
    pub log: String,
    /// How long a SIGTERM waits for running pushes to finish before exiting anyway.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// npm registry used to pin and install packages (a mirror may be set here).
    pub npm_registry: String,
    /// PyPI index used to pin packages (JSON API root).
    pub pypi_registry: String,
    /// How long registry answers are cached in the store.
    #[serde(deserialize_with = "duration")]
    pub registry_cache_ttl: Duration,
    /// How long a new release may take to answer `initialize` and `tools/list`.
    #[serde(deserialize_with = "duration")]
    pub health_timeout: Duration,
    /// How long an install (`npm install`, `pip install`, a source build) may take.
    #[serde(deserialize_with = "duration")]
    pub install_timeout: Duration,
    /// A `transport = "http"` server with no request for this long is stopped (scale to zero);
    /// the next request starts it again. `"0s"` keeps it running.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A replaced HTTP server keeps serving its sessions until they are quiet this long.
    #[serde(deserialize_with = "duration")]
    pub drain_grace: Duration,
    /// Most apps a deployer key may own (admins are exempt; 0: no limit).
    pub max_apps_per_deployer: usize,
    /// Warm spares per stdio app (server processes started ahead of need, so a new session answers
    /// without a start-up); an app's `[deploy] warm` overrides it. Released after `idle_timeout`
    /// without a new session. `0` turns them off.
    pub warm: usize,
    /// `[deploy.enrich]`: an OpenAI-compatible chat API that writes descriptions for env vars the
    /// manifests leave undescribed. Absent (the default): off, nothing is sent anywhere.
    pub enrich: Option<EnrichConfig>,
}

/// `[deploy.enrich]` (see `pipeline::enrich`). Only env var names and existing descriptions are sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// API root; `/chat/completions` is appended (`https://api.openai.com/v1`, `http://127.0.0.1:11434/v1`).
    pub base_url: String,
    /// Model name passed as `model`.
    pub model: String,
    /// File holding the API key (relative paths are under the data dir). Without it the key comes from
    /// `CATWALK_ENRICH_API_KEY`; without either, no `Authorization` header is sent (local servers).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// How long one enrichment call may take; after it the push goes on without descriptions.
    #[serde(default = "default_enrich_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_enrich_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            npm_registry: "https://registry.npmjs.org".into(),
            pypi_registry: "https://pypi.org".into(),
            registry_cache_ttl: Duration::from_secs(300),
            health_timeout: Duration::from_secs(60),
            install_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(15 * 60),
            drain_grace: Duration::from_secs(30),
            warm: 1,
            max_apps_per_deployer: 10,
            enrich: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Runtime of apps that do not choose one: `local` or `fly`.
    pub default: RuntimeKind,
    /// Let an app's own `catwalk.toml` choose its runtime (`runtime = "fly"` / `"local"`).
    pub allow_app_choice: bool,
    /// Fly.io Machines settings; required when any app may run on `fly`.
    pub fly: Option<crate::runtime::fly::FlyConfig>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { default: RuntimeKind::Local, allow_app_choice: true, fly: None }
    }
}

/// An app the operator declares in the config instead of pushing it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticApp {
    /// argv of a stdio MCP server (exclusive with `url`).
    #[serde(default)]
    pub command: Vec<String>,
    /// URL of a Streamable HTTP MCP server (exclusive with `command`).
    pub url: Option<String>,
    /// Environment of the stdio server (nothing else is inherited).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory of the stdio server.
    pub cwd: Option<PathBuf>,
    /// One child shared by all sessions instead of one per session.
    #[serde(default)]
    pub shared: bool,
    /// Extra `Origin` values allowed for this app.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: "127.0.0.1:2222".parse().expect("static address"),
            authorized_keys_file: None,
            authorized_keys_role: Role::Deployer,
            public_host: None,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            public_url: None,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig { deploy_branch: "main".into(), git_binary: PathBuf::from("git"), max_push_bytes: 1 << 30 }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            body_limit: 4 << 20,
            session_idle_timeout: Duration::from_secs(30 * 60),
            disconnect_grace: Duration::from_secs(60),
            rate_limit_per_minute: 600,
            allowed_origins: Vec::new(),
            max_sessions_per_app: 64,
            pool_idle_timeout: Duration::from_secs(5 * 60),
            pool_max_per_token: 8,
            input_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig { log: "info".into(), shutdown_grace: Duration::from_secs(30) }
    }
}

/// A configuration problem, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Parses configuration text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
        Ok(config)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, path)
    }

    fn validate(&self) -> Result<(), String> {
        if !crate::names::is_valid_branch(&self.git.deploy_branch) {
            return Err(format!(
                "git.deploy_branch = {:?} is not a valid branch name",
                self.git.deploy_branch
            ));
        }
        for (key, url) in [
            ("deploy.npm_registry", &self.deploy.npm_registry),
            ("deploy.pypi_registry", &self.deploy.pypi_registry),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{key} = {url:?}: must be an http(s) URL"));
            }
        }
        if let Some(enrich) = &self.deploy.enrich {
            if !(enrich.base_url.starts_with("https://") || enrich.base_url.starts_with("http://")) {
                return Err(format!(
                    "deploy.enrich.base_url = {:?}: must be an http(s) URL",
                    enrich.base_url
                ));
            }
            if enrich.model.trim().is_empty() {
                return Err("deploy.enrich.model must name a model (e.g. \"gpt-4o-mini\")".into());
            }
            if enrich.timeout.is_zero() {
                return Err("deploy.enrich.timeout must be more than 0s".into());
            }
        }
        if self.runtime.default == RuntimeKind::Fly && self.runtime.fly.is_none() {
            return Err("runtime.default = \"fly\" needs a [runtime.fly] section".into());
        }
        if let Some(fly) = &self.runtime.fly {
            fly.validate()?;
        }
        // Both end up in the hints and URLs printed after every push and `tokens create`.
        if let Some(url) = &self.http.public_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            if !rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.starts_with('/')
                    && !r.contains(|c: char| c.is_whitespace() || c.is_control())
            }) {
                return Err(format!(
                    "http.public_url = {url:?}: must start with http:// or https:// and name a host, e.g. \"https://deploy.example.com\""
                ));
            }
        }
        if let Some(host) = &self.ssh.public_host
            && (host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b)))
        {
            return Err(format!(
                "ssh.public_host = {host:?}: expected a host name or address, e.g. \"deploy.example.com\""
            ));
        }
        self.sandbox.validate()?;
        if let Some(tls) = &self.http.tls {
            // Paths are resolved against the data dir when the daemon starts; here only the shape counts.
            tls.resolve(Path::new("/"))?;
        }
        for (name, app) in &self.apps {
            crate::names::AppName::parse(name).map_err(|e| format!("[apps.{name}]: {e}"))?;
            match (app.command.is_empty(), &app.url) {
                (true, None) => return Err(format!("[apps.{name}]: set either `command` or `url`")),
                (false, Some(_)) => return Err(format!("[apps.{name}]: `command` and `url` are exclusive")),
                _ => {}
            }
        }
        Ok(())
    }

    /// The URL clients reach the gateway at: `http.public_url`, or derived from the configuration:
    /// `https://FIRST_ACME_DOMAIN[:PORT]` with ACME, `https://LISTEN` with certificate files,
    /// `http://LISTEN` without TLS.
    pub fn public_url(&self) -> String {
        if let Some(url) = &self.http.public_url {
            return url.trim_end_matches('/').to_string();
        }
        match &self.http.tls {
            Some(tls) => match tls.acme.as_ref().and_then(|a| a.domains.first()) {
                Some(domain) if self.http.listen.port() == 443 => format!("https://{domain}"),
                Some(domain) => format!("https://{domain}:{}", self.http.listen.port()),
                None => format!("https://{}", self.http.listen),
            },
            None => format!("http://{}", self.http.listen),
        }
    }

    /// The `[sandbox]` policy with the daemon's own ports (unreachable from servers in strict mode) and
    /// every secret-bearing file the config names outside the data dir ([`Config::named_secret_files`]),
    /// masked in every sandbox when it lives under a visible directory such as `/etc`.
    /// Call [`crate::runtime::sandbox::SandboxPolicy::activate`] on it once at start-up.
    pub fn sandbox_policy(&self) -> crate::runtime::sandbox::SandboxPolicy {
        self.sandbox
            .clone()
            .with_protected_ports(&[self.ssh.listen.port(), self.http.listen.port()])
            .with_hidden(&self.named_secret_files())
    }

    /// The files and directories the config names that a server or install must never read: the
    /// `authorized_keys_file`, the TLS private key's directory (and, for certbot's symlinks, the real
    /// one), the ACME cache (account key, certificates), the Fly API token file and the enrichment API
    /// key file. Each is given as written and, when it resolves elsewhere (a symlink, a relative path),
    /// also as its real path, since the sandbox masks paths, not inodes. In user-namespace mode the
    /// sandbox's uid maps to the daemon's own user, so file modes alone would not keep these out.
    pub fn named_secret_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.ssh.authorized_keys_file.iter().cloned().collect();
        let mut dirs_of: Vec<PathBuf> = Vec::new();
        if let Some(tls) = &self.http.tls {
            dirs_of.extend(tls.key.iter().cloned());
            files.extend(tls.acme.iter().filter_map(|a| a.cache_dir.clone()));
        }
        if let Some(fly) = &self.runtime.fly {
            files.extend(fly.token_file.iter().cloned());
        }
        if let Some(enrich) = &self.deploy.enrich {
            files.extend(enrich.api_key_file.iter().cloned());
        }
        let mut hidden: Vec<PathBuf> = Vec::new();
        let mut add = |p: PathBuf| {
            if p.is_absolute() && !hidden.contains(&p) {
                hidden.push(p);
            }
        };
        for file in files {
            if let Ok(real) = std::fs::canonicalize(&file) {
                add(real);
            }
            add(file);
        }
        for key in dirs_of {
            if let Ok(real) = std::fs::canonicalize(&key) {
                real.parent().map(Path::to_path_buf).into_iter().for_each(&mut add);
            }
            key.parent().map(Path::to_path_buf).into_iter().for_each(&mut add);
        }
        hidden
    }

    /// `host` and `port` for `ssh://git@HOST:PORT/APP` hints.
    pub fn ssh_host_port(&self) -> (String, u16) {
        let host = self.ssh.public_host.clone().unwrap_or_else(|| match self.ssh.listen.ip() {
            ip if ip.is_unspecified() => "localhost".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        (host, self.ssh.listen.port())
    }
}

fn role<'de, D: Deserializer<'de>>(de: D) -> Result<Role, D::Error> {
    let text = String::deserialize(de)?;
    Role::parse(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?}: expected \"admin\" or \"deployer\"")))
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_parsed_once_at_load() {
        let c = Config::parse("[ssh]\nauthorized_keys_role = \"admin\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.ssh.authorized_keys_role, Role::Admin);
        let e = Config::parse("[ssh]\nauthorized_keys_role = \"root\"\n", Path::new("x.toml")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("authorized_keys_role") && text.contains("expected \"admin\" or \"deployer\""),
            "{text}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.git.deploy_branch, "main");
        assert_eq!(c.ssh.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[ssh]\nidle_timout = \"5s\"\n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("idle_timout"), "{msg}");
        assert!(msg.contains("x.toml"), "{msg}");
    }

    #[test]
    fn unknown_section_is_named() {
        let err = Config::parse("[sssh]\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("sssh"), "{err}");
    }

    #[test]
    fn public_host_and_url_must_name_a_host() {
        for (text, expected) in [
            ("[ssh]\npublic_host = \"\"\n", "ssh.public_host"),
            ("[ssh]\npublic_host = \"a b\"\n", "ssh.public_host"),
            ("[ssh]\npublic_host = \"x\\nremote: y\"\n", "ssh.public_host"),
            ("[http]\npublic_url = \"http://\"\n", "http.public_url"),
            ("[http]\npublic_url = \"https:///mcp\"\n", "http.public_url"),
            ("[http]\npublic_url = \"ftp://x\"\n", "http.public_url"),
            ("[http]\npublic_url = \"https://x y\"\n", "http.public_url"),
        ] {
            let err = Config::parse(text, Path::new("x.toml")).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("e.g."), "{text}: {err}");
        }
        let c = Config::parse(
            "[ssh]\npublic_host = \"[::1]\"\n[http]\npublic_url = \"https://deploy.example.com:8443/\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.ssh_host_port().0, "[::1]");
        assert_eq!(c.public_url(), "https://deploy.example.com:8443");
    }

    #[test]
    fn bad_duration_is_explained() {
        let err = Config::parse("[ssh]\nidle_timeout = \"soon\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }

    #[test]
    fn static_app_needs_command_or_url() {
        let err = Config::parse("[apps.hello]\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("either `command` or `url`"), "{err}");
        let err = Config::parse("[apps.\"../x\"]\ncommand=[\"a\"]\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("not a valid app name"), "{err}");
    }

    #[test]
    fn sandbox_section_is_checked() {
        let c = Config::parse(
            "[sandbox]\nmode = \"strict\"\nmemory_max = \"512M\"\nnetwork = \"none\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.sandbox.memory_max, 512 << 20);
        assert_eq!(c.sandbox_policy().runtime.protected_ports, vec![2222, 8080]);
        let c = Config::parse(
            "[ssh]\nauthorized_keys_file = \"/etc/catwalk/keys\"\n[http.tls]\ncert = \"/etc/tls/c.pem\"\nkey = \"/etc/tls/private/k.pem\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let hidden = c.sandbox_policy().runtime.hidden_paths;
        assert!(hidden.contains(&PathBuf::from("/etc/catwalk/keys")), "{hidden:?}");
        assert!(hidden.contains(&PathBuf::from("/etc/tls/private")), "{hidden:?}");
        let c = Config::parse(
            "[runtime.fly]\ntoken_file = \"/etc/catwalk/fly-token\"\n[deploy.enrich]\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\napi_key_file = \"/etc/catwalk/enrich-key\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let hidden = c.sandbox_policy().runtime.hidden_paths;
        assert!(hidden.contains(&PathBuf::from("/etc/catwalk/fly-token")), "{hidden:?}");
        assert!(hidden.contains(&PathBuf::from("/etc/catwalk/enrich-key")), "{hidden:?}");
        let err = Config::parse("[sandbox]\nmemory = 5\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = Config::parse("[sandbox]\nmode = \"paranoid\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("paranoid"), "{err}");
        let err = Config::parse("[sandbox]\ncpu_weight = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("cpu_weight"), "{err}");
    }

    #[test]
    fn tls_section_is_checked_and_sets_the_public_url() {
        let c = Config::parse(
            // The README's three-line config for a public server.
            "[http]\nlisten = \"0.0.0.0:443\"\ntls.acme.domains = [\"deploy.example.com\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.public_url(), "https://deploy.example.com");
        let err = Config::parse("[http.tls]\ncert = \"c.pem\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("`key` is missing"), "{err}");
        let err = Config::parse("[http.tls]\ncert = \"c\"\nkey = \"k\"\nhst = true\n", Path::new("x.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("hst"), "{err}");
    }

    #[test]
    fn runtime_fly_section() {
        let c = Config::parse(
            "[runtime]\ndefault = \"fly\"\n[runtime.fly]\norg = \"acme\"\nnetwork = \"flycast\"\nstart_timeout = \"90s\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let fly = c.runtime.fly.unwrap();
        assert_eq!(fly.org, "acme");
        assert_eq!(fly.network, crate::runtime::fly::Network::Flycast);
        assert_eq!(fly.start_timeout, Duration::from_secs(90));
        let err = Config::parse("[runtime]\ndefault = \"fly\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("[runtime.fly]"), "{err}");
        let err = Config::parse("[runtime.fly]\nnetwrk = \"6pn\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("netwrk"), "{err}");
    }

    #[test]
    fn deploy_enrich_section() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert!(c.deploy.enrich.is_none(), "enrichment is off unless configured");
        let c = Config::parse(
            "[deploy.enrich]\nbase_url = \"http://127.0.0.1:11434/v1\"\nmodel = \"llama3\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let e = c.deploy.enrich.unwrap();
        assert_eq!((e.model.as_str(), e.timeout, e.api_key_file), ("llama3", Duration::from_secs(10), None));
        let err = Config::parse(
            "[deploy.enrich]\nbase_url = \"http://x/v1\"\nmodel = \"m\"\napi_key = \"sk\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
        let err =
            Config::parse("[deploy.enrich]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n", Path::new("x.toml"))
                .unwrap_err();
        assert!(err.to_string().contains("deploy.enrich.base_url"), "{err}");
        let err =
            Config::parse("[deploy.enrich]\nbase_url = \"http://x\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("model"), "{err}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/catwalk.example.toml");
        Config::parse(text, Path::new("catwalk.example.toml")).unwrap();
    }
}
