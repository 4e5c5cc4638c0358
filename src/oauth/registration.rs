//! RFC 7591 dynamic client registration (`POST /oauth/register`), and the redirect URI rules shared with
//! metadata-document clients.
//!
//! Registration is open (that is the point of it: Claude registers itself), so a registration grants
//! nothing: it only names a client and pins its redirect URIs. Access needs an approval by a key that
//! manages the app.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::OAuth;
use super::http::{Resp, body, json, oauth_error};
use crate::store::{ClientRecord, now};

/// Most redirect URIs one client may register, and the longest one accepted.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_LEN: usize = 2000;
/// Longest client name kept (longer ones are cut).
const MAX_NAME: usize = 100;

#[derive(Deserialize)]
struct Registration {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    client_uri: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
}

fn refuse(code: &str, description: &str) -> Resp {
    oauth_error(StatusCode::BAD_REQUEST, code, description)
}

/// Checks one redirect URI (RFC 6749 §3.1.2, OAuth 2.1 §2.3.1, RFC 8252 §7): absolute, no fragment;
/// `https`, or `http` on a loopback host (native apps listening locally), or a private-use scheme in
/// reverse-domain form (`com.example.app:/cb`, native apps such as editors).
pub fn check_redirect_uri(uri: &str) -> Result<url::Url, String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("a redirect URI is longer than {MAX_URI_LEN} characters"));
    }
    let url =
        url::Url::parse(uri).map_err(|e| format!("redirect URI {uri:?} is not an absolute URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect URI {uri:?} must not contain a fragment (#...)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("redirect URI {uri:?} must not contain credentials"));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(url),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(url),
            Some(url::Host::Domain("localhost")) => Ok(url),
            _ => Err(format!(
                "redirect URI {uri:?}: http is only allowed on a loopback host (127.0.0.1, [::1], localhost); use https"
            )),
        },
        scheme if scheme.contains('.') => Ok(url),
        scheme => Err(format!(
            "redirect URI {uri:?}: scheme {scheme:?} is not allowed (use https, http on loopback, or a reverse-domain private-use scheme)"
        )),
    }
}

/// A client name for display: control characters removed, cut at [`MAX_NAME`] characters.
pub fn clean_name(name: Option<&str>) -> String {
    let name: String = name.unwrap_or("").chars().filter(|c| !c.is_control()).take(MAX_NAME).collect();
    let name = name.trim();
    if name.is_empty() { "an unnamed client".to_string() } else { name.to_string() }
}

/// `POST /oauth/register`.
pub async fn register(oauth: &OAuth, req: Request<Incoming>) -> Resp {
    let is_json =
        req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return refuse("invalid_client_metadata", "send the client metadata as application/json (RFC 7591)");
    }
    let bytes = match body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let reg: Registration = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refuse("invalid_client_metadata", &format!("the client metadata is not valid: {e}"));
        }
    };
    if reg.redirect_uris.is_empty() {
        return refuse(
            "invalid_redirect_uri",
            "redirect_uris is required (the authorization code flow needs one)",
        );
    }
    if reg.redirect_uris.len() > MAX_REDIRECT_URIS {
        return refuse("invalid_redirect_uri", &format!("at most {MAX_REDIRECT_URIS} redirect URIs"));
    }
    for uri in &reg.redirect_uris {
        if let Err(e) = check_redirect_uri(uri) {
            return refuse("invalid_redirect_uri", &e);
        }
    }
    // RFC 7591 §2: the default is client_secret_basic; MCP clients usually ask for "none" (public + PKCE).
    let method = reg.token_endpoint_auth_method.as_deref().unwrap_or("client_secret_basic");
    if !matches!(method, "none" | "client_secret_post" | "client_secret_basic") {
        return refuse(
            "invalid_client_metadata",
            &format!(
                "token_endpoint_auth_method {method:?} is not supported (none, client_secret_post, client_secret_basic)"
            ),
        );
    }
    let grant_types = reg.grant_types.unwrap_or_else(|| vec!["authorization_code".into()]);
    if let Some(g) =
        grant_types.iter().find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return refuse(
            "invalid_client_metadata",
            &format!("grant type {g:?} is not supported (authorization_code, refresh_token)"),
        );
    }
    let response_types = reg.response_types.unwrap_or_else(|| vec!["code".into()]);
    if response_types.iter().any(|r| r != "code") {
        return refuse("invalid_client_metadata", "only the response type \"code\" is supported");
    }
    // At the limit, registrations older than a day that never led to a grant make room first.
    let count = match oauth.store.oauth_client_count() {
        Ok(n) if n >= oauth.cfg.max_clients => {
            oauth.store.prune_oauth_clients(24 * 3600).and_then(|_| oauth.store.oauth_client_count())
        }
        other => other,
    };
    match count {
        Ok(n) if n >= oauth.cfg.max_clients => {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "this server has registered as many clients as it keeps; ask its operator",
            );
        }
        Ok(_) => {}
        Err(e) => return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    }
    let secret = (method != "none").then(|| crate::store::oauth_secret("cwsec_"));
    let client = ClientRecord {
        client_id: crate::store::oauth_random_id("c_", 12),
        client_name: clean_name(reg.client_name.as_deref()),
        redirect_uris: reg.redirect_uris.clone(),
        auth_method: method.to_string(),
        secret_digest: secret.as_deref().map(crate::store::oauth_digest),
        created_at: now(),
        metadata_document: false,
        client_uri: reg.client_uri.filter(|u| u.starts_with("https://") && u.len() <= MAX_URI_LEN),
    };
    if let Err(e) = oauth.store.put_oauth_client(&client) {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string());
    }
    tracing::info!(client_id = %client.client_id, name = %client.client_name, "OAuth client registered");
    let mut answer = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at,
        "client_name": client.client_name,
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": client.auth_method,
        "grant_types": grant_types,
        "response_types": response_types,
    });
    if let Some(secret) = secret {
        answer["client_secret"] = json!(secret);
        answer["client_secret_expires_at"] = json!(0);
    }
    if let Some(scope) = reg.scope {
        answer["scope"] = json!(scope);
    }
    json(StatusCode::CREATED, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "http://127.0.0.1:33418/callback",
            "http://localhost:6274/oauth/callback",
            "http://[::1]:8080/cb",
            "cursor.anysphere://oauth/cb",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/cb",
            "http://10.0.0.1/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "https://claude.ai/cb#frag",
            "https://user:pw@claude.ai/cb",
            "/relative",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name(Some("Claude\n\u{1b}[31m")), "Claude[31m");
        assert_eq!(clean_name(None), "an unnamed client");
        assert_eq!(clean_name(Some(&"x".repeat(500))).len(), MAX_NAME);
    }
}
