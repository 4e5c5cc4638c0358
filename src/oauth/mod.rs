//! catwalk as an OAuth 2.1 authorization server and protected resource, so that clients that can only
//! do OAuth (Claude's connectors, ChatGPT) can use `/mcp/APP`. Consent is given with an SSH key
//! (`approve CODE`) or in a browser session opened by a one-time `login` link.
//!
//! One file per concern: [`metadata`] (RFC 9728 and RFC 8414 documents), [`registration`] (RFC 7591),
//! [`authorize`] (the consent page, RFC 9207 `iss`), [`token`] (code + PKCE, refresh rotation, RFC 7009
//! revocation), [`cimd`] (Client ID Metadata Documents), [`http`] (form/JSON plumbing). State lives in
//! `store/oauth.rs`, digests only. The protected-resource side (which bearer tokens `/mcp/APP` accepts,
//! the 401 challenge) is `access.rs`, which plugs into the gateway beside this module.
//!
//! The protocol endpoints are written here rather than with an OAuth server crate: the Rust crates that
//! exist (oxide-auth and similar) predate OAuth 2.1 and the MCP profile (RFC 8707 audiences, RFC 9207
//! `iss`, RFC 9728 metadata, metadata-document clients, approval over SSH instead of a login form), and
//! the endpoints are small; what is security-critical (single-use codes, refresh rotation with reuse
//! detection, digests) is in one transaction each in the store.

pub mod authorize;
pub mod cimd;
mod config;
mod http;
pub mod metadata;
pub mod registration;
pub mod token;

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use config::OAuthConfig;

use crate::gateway::{AppDirectory, AuthMode, GatewayBody, InternalRoutes};
use crate::store::{AuditRecord, Store, TokenLifetimes, now};

/// The authorization server's state; one per daemon.
pub struct OAuth {
    pub store: Store,
    pub cfg: OAuthConfig,
    /// The daemon's public URL (`Config::public_url`): the issuer, and the base of every resource.
    pub issuer: String,
    /// `ssh -p PORT git@HOST`, for the command the consent page shows.
    pub ssh_command: String,
    /// Derived from the age identity: approval codes and CSRF tokens are HMACs under it.
    key: [u8; 32],
    /// The live routes (the daemon's route table): each app's auth mode comes with its release.
    routes: Arc<dyn AppDirectory>,
    cimd: cimd::Fetcher,
}

impl OAuth {
    pub fn new(
        store: Store,
        cfg: OAuthConfig,
        issuer: String,
        ssh_command: String,
        key: [u8; 32],
        routes: Arc<dyn AppDirectory>,
    ) -> anyhow::Result<OAuth> {
        let cimd = cimd::Fetcher::new(&cfg)?;
        Ok(OAuth { store, cfg, issuer, ssh_command, key, routes, cimd })
    }

    /// The endpoint URL of `app`: the RFC 8707 resource its tokens are bound to.
    pub fn resource_url(&self, app: &str) -> String {
        format!("{}/mcp/{app}", self.issuer)
    }

    /// RFC 9728 metadata URL of `app`'s endpoint (path inserted after `/.well-known/...`).
    pub fn resource_metadata_url(&self, app: &str) -> String {
        format!("{}/.well-known/oauth-protected-resource/mcp/{app}", self.issuer)
    }

    /// The app a resource URL names (`{issuer}/mcp/APP`, a trailing `/` tolerated), if valid.
    pub fn app_of_resource(&self, resource: &str) -> Option<String> {
        let rest = resource.strip_prefix(&self.issuer)?.strip_prefix("/mcp/")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        crate::names::AppName::parse(rest).ok().map(|a| a.as_str().to_string())
    }

    /// The app's auth mode as served now (an app without a live release gets the default).
    pub fn mode(&self, app: &str) -> AuthMode {
        self.routes.resolve(app).map(|r| r.auth).unwrap_or_default()
    }

    fn lifetimes(&self) -> TokenLifetimes {
        TokenLifetimes {
            access: self.cfg.access_token_ttl.as_secs(),
            refresh: self.cfg.refresh_token_ttl.as_secs(),
        }
    }

    fn mac(&self, parts: &[&str]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(b"\0");
        }
        mac.finalize().into_bytes().into()
    }

    /// The human approval code of request `id`: `K7QX-M2PD` (40 bits, no look-alike letters). Derived,
    /// never stored: the store keeps its digest to find the request.
    pub fn approval_code(&self, request_id: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
        let mac = self.mac(&["approval code", request_id]);
        let chars: String =
            mac.iter().take(8).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
        format!("{}-{}", &chars[..4], &chars[4..])
    }

    /// An approval code as typed: case, spaces and dashes do not matter.
    pub fn normalize_code(typed: &str) -> String {
        let clean: String =
            typed.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
        if clean.len() == 8 { format!("{}-{}", &clean[..4], &clean[4..]) } else { clean }
    }

    /// Records an OAuth event in the app's audit log (`method` = `oauth/...`; never a secret).
    pub fn audit(&self, app: &str, actor: &str, method: &str, detail: Option<String>, status: u16) {
        let mut record = [AuditRecord {
            seq: 0,
            at: now(),
            app: app.to_string(),
            token: actor.to_string(),
            method: method.to_string(),
            tool: detail,
            status,
            error: status >= 400,
            duration_us: 0,
        }];
        if let Err(e) = self.store.record_audit(&mut record) {
            tracing::error!("writing an OAuth audit record failed: {e}");
        }
    }
}

impl InternalRoutes for OAuth {
    fn serve(
        &self,
        path: &str,
        req: ::http::Request<hyper::body::Incoming>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ::http::Response<GatewayBody>> + Send + '_>> {
        let path = path.to_string();
        Box::pin(async move { self.route(&path, req).await })
    }
}

impl OAuth {
    async fn route(
        &self,
        path: &str,
        req: ::http::Request<hyper::body::Incoming>,
    ) -> ::http::Response<GatewayBody> {
        use ::http::Method;
        let method = req.method().clone();
        if method == Method::OPTIONS {
            return http::preflight();
        }
        if let Some(rest) = path.strip_prefix("/.well-known/oauth-protected-resource") {
            return match (method, rest.strip_prefix("/mcp/")) {
                (Method::GET, Some(app)) => metadata::protected_resource(self, app),
                _ => http::not_found(path),
            };
        }
        match (method, path) {
            (Method::GET, "/.well-known/oauth-authorization-server") => metadata::authorization_server(self),
            (Method::POST, "/oauth/register") => registration::register(self, req).await,
            (Method::GET, "/oauth/authorize") => authorize::page(self, req).await,
            (Method::POST, "/oauth/authorize") => authorize::decision(self, req).await,
            (Method::POST, "/oauth/token") => token::token(self, req).await,
            (Method::POST, "/oauth/revoke") => token::revoke(self, req).await,
            (Method::GET, p) if p.starts_with("/oauth/login/") => {
                authorize::login(self, &p["/oauth/login/".len()..])
            }
            (m, p)
                if matches!(p, "/oauth/register" | "/oauth/authorize" | "/oauth/token" | "/oauth/revoke")
                    || p == "/.well-known/oauth-authorization-server" =>
            {
                http::method_not_allowed(&m)
            }
            _ => http::not_found(path),
        }
    }
}
