//! The two discovery documents: RFC 9728 protected-resource metadata for each `/mcp/APP`, and RFC 8414
//! authorization-server metadata for the daemon (the issuer is the daemon's public URL).

use http::StatusCode;
use serde_json::json;

use super::OAuth;
use super::http::{Resp, json, oauth_error};
use crate::gateway::AuthMode;

/// `GET /.well-known/oauth-protected-resource/mcp/APP`. Answered alike for every valid app name except
/// apps that do not take OAuth (`auth = "token"` or `"none"`), so it does not tell which apps exist.
pub fn protected_resource(oauth: &OAuth, app: &str) -> Resp {
    let Ok(name) = crate::names::AppName::parse(app) else {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "not an app name");
    };
    let app = name.as_str();
    match oauth.mode(app) {
        AuthMode::OAuthAndToken => {}
        mode => {
            return oauth_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("this endpoint does not use OAuth (auth = {:?})", mode.as_str()),
            );
        }
    }
    json(
        StatusCode::OK,
        &json!({
            "resource": oauth.resource_url(app),
            "authorization_servers": [oauth.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": format!("{app} (catwalk)"),
        }),
    )
}

/// `GET /.well-known/oauth-authorization-server`.
pub fn authorization_server(oauth: &OAuth) -> Resp {
    let base = &oauth.issuer;
    json(
        StatusCode::OK,
        &json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "registration_endpoint": format!("{base}/oauth/register"),
            "revocation_endpoint": format!("{base}/oauth/revoke"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "authorization_response_iss_parameter_supported": true,
            "client_id_metadata_document_supported": true,
        }),
    )
}
