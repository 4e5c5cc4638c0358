//! The protected-resource side: which bearer tokens `/mcp/APP` accepts, and the 401 challenge that
//! points OAuth clients at the RFC 9728 metadata.
//!
//! An access token is accepted only on the endpoint it was issued for (its grant's RFC 8707 resource is
//! exactly `{issuer}/mcp/APP`), only while it is unexpired and neither it nor its grant is revoked. The
//! gateway never forwards it (or any `Authorization`) to the app's server.

use crate::gateway::{AuthError, AuthMode, TokenIdentity};
use crate::store::{AccessCheck, Store, TokenCheck, oauth};

/// Checks `bearer` for `app` under `mode`: `tokens create` tokens always, OAuth access tokens only with
/// `oauth+token`. Errors never say more than "missing" or "invalid".
pub fn check(
    store: &Store,
    issuer: &str,
    app: &str,
    bearer: Option<&str>,
    mode: AuthMode,
) -> Result<TokenIdentity, AuthError> {
    let bearer = bearer.ok_or(AuthError::Missing)?;
    if bearer.starts_with(oauth::ACCESS_PREFIX) {
        if mode != AuthMode::OAuthAndToken {
            return Err(AuthError::Invalid);
        }
        let resource = format!("{issuer}/mcp/{app}");
        return match store.check_access_token(app, &resource, bearer) {
            Ok(AccessCheck::Valid { grant, token_id }) => Ok(TokenIdentity {
                token_id: format!("oauth:{}", grant.id),
                token_name: format!("oauth:{}:{}", grant.id, token_id),
            }),
            Ok(AccessCheck::Invalid) => Err(AuthError::Invalid),
            Err(e) => {
                tracing::error!("access token check failed: {e}");
                Err(AuthError::Invalid)
            }
        };
    }
    match store.check_token(app, bearer) {
        Ok(TokenCheck::Valid(t)) => Ok(TokenIdentity { token_id: t.id, token_name: t.name }),
        Ok(_) => Err(AuthError::Invalid),
        Err(e) => {
            tracing::error!("token check failed: {e}");
            Err(AuthError::Invalid)
        }
    }
}

/// The `WWW-Authenticate` value of a 401 (RFC 6750 §3, RFC 9728 §5.1): with `oauth+token` it names the
/// endpoint's resource metadata, so a client that only knows the URL can discover how to sign in.
pub fn challenge(issuer: &str, app: &str, mode: AuthMode, error: &AuthError) -> String {
    let mut value = "Bearer".to_string();
    let mut params = Vec::new();
    if mode == AuthMode::OAuthAndToken {
        params.push(format!("resource_metadata=\"{issuer}/.well-known/oauth-protected-resource/mcp/{app}\""));
    }
    if *error == AuthError::Invalid {
        params.push("error=\"invalid_token\"".to_string());
        params.push(
            "error_description=\"the token is not valid for this endpoint (wrong, revoked or expired)\""
                .into(),
        );
    }
    if !params.is_empty() {
        value.push(' ');
        value.push_str(&params.join(", "));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            challenge("https://h", "a", AuthMode::OAuthAndToken, &AuthError::Missing),
            "Bearer resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp/a\""
        );
        assert!(
            challenge("https://h", "a", AuthMode::Token, &AuthError::Invalid)
                .starts_with("Bearer error=\"invalid_token\"")
        );
        assert_eq!(challenge("https://h", "a", AuthMode::Token, &AuthError::Missing), "Bearer");
    }
}
