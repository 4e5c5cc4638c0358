//! The token endpoint (`POST /oauth/token`: `authorization_code` with PKCE S256, `refresh_token` with
//! rotation) and RFC 7009 revocation (`POST /oauth/revoke`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::OAuth;
use super::http::{Params, Resp, form, json, oauth_error};
use crate::store::{ClientRecord, GrantError, IssuedTokens, oauth_digest};

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// `BASE64URL(SHA256(verifier)) == challenge`, in constant time.
fn s256_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

fn invalid_client(description: &str, basic: bool) -> Resp {
    let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
    if basic {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"catwalk\""));
    }
    r
}

/// Client authentication at the token and revocation endpoints (RFC 6749 §2.3): HTTP Basic, or
/// `client_id` (+ `client_secret`) in the form. A public client (`none`) identifies itself only.
async fn authenticate_client(
    oauth: &OAuth,
    headers: &http::HeaderMap,
    params: &Params,
) -> Result<ClientRecord, Resp> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, creds)| creds.trim().to_string());
    let (id, secret, used_basic) = match basic {
        Some(creds) => {
            let decoded = STANDARD
                .decode(creds)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| invalid_client("the Basic credentials are not valid base64", true))?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| invalid_client("the Basic credentials need id:secret", true))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let dec = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.to_string())
            };
            (dec(id).unwrap_or_default(), dec(secret), true)
        }
        None => (
            params.get("client_id").unwrap_or_default().to_string(),
            params.get("client_secret").map(str::to_string),
            false,
        ),
    };
    if id.is_empty() {
        return Err(invalid_client(
            "client_id is missing (send it in the form, or use HTTP Basic)",
            used_basic,
        ));
    }
    let client = match id.starts_with("https://") {
        true => oauth.store.oauth_client(&id).ok().flatten().filter(|c| c.metadata_document),
        false => oauth.store.oauth_client(&id).ok().flatten().filter(|c| !c.metadata_document),
    };
    let Some(client) = client else {
        return Err(invalid_client("unknown client (register it first, RFC 7591)", used_basic));
    };
    match (&client.secret_digest, secret) {
        (None, None) => Ok(client),
        (None, Some(_)) => {
            Err(invalid_client("this is a public client: it has no client_secret", used_basic))
        }
        (Some(_), None) => {
            Err(invalid_client("client authentication is required (client_secret)", used_basic))
        }
        (Some(d), Some(s)) => {
            if bool::from(oauth_digest(&s).as_bytes().ct_eq(d.as_bytes())) {
                Ok(client)
            } else {
                Err(invalid_client("the client secret is wrong", used_basic))
            }
        }
    }
}

fn issued(t: &IssuedTokens) -> Resp {
    let mut body = json!({
        "access_token": t.access_token,
        "token_type": "Bearer",
        "expires_in": t.expires_in,
        "refresh_token": t.refresh_token,
    });
    if let Some(scope) = &t.grant.scope {
        body["scope"] = json!(scope);
    }
    json(StatusCode::OK, &body)
}

/// The token endpoint's answer to an exchange: the tokens (audited as `event`), or the grant error.
fn answer(
    oauth: &OAuth,
    outcome: crate::store::Result<Result<IssuedTokens, GrantError>>,
    client: &ClientRecord,
    event: &str,
) -> Resp {
    match outcome {
        Ok(Ok(t)) => {
            oauth.audit(&t.grant.app, &t.grant.id, event, Some(client.client_name.clone()), 200);
            issued(&t)
        }
        Ok(Err(e)) => grant_error(oauth, e, client),
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    }
}

fn grant_error(oauth: &OAuth, e: GrantError, client: &ClientRecord) -> Resp {
    match e {
        GrantError::InvalidGrant { description, revoked } => {
            if let Some(g) = revoked {
                tracing::warn!(grant = %g.id, app = %g.app, "OAuth grant revoked: {description}");
                oauth.audit(
                    &g.app,
                    &g.id,
                    "oauth/revoke",
                    Some(format!("{}: {description}", client.client_name)),
                    400,
                );
            }
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &description)
        }
        GrantError::InvalidTarget(d) => oauth_error(StatusCode::BAD_REQUEST, "invalid_target", &d),
    }
}

/// `resource` of a token request: at most one, and an endpoint of this server (RFC 8707 §2).
fn resource_param<'a>(oauth: &OAuth, params: &'a Params) -> Result<Option<&'a str>, Box<Resp>> {
    match params.get("resource") {
        None => Ok(None),
        Some(r) if oauth.app_of_resource(r).is_some() => Ok(Some(r.strip_suffix('/').unwrap_or(r))),
        Some(r) => Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            &format!("resource {r:?} is not an MCP endpoint of this server"),
        ))),
    }
}

/// `POST /oauth/token`.
pub async fn token(oauth: &OAuth, req: Request<Incoming>) -> Resp {
    let (headers, params) = match form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let client = match authenticate_client(oauth, &headers, &params).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let resource = match resource_param(oauth, &params) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let lifetimes = oauth.lifetimes();
    match params.get("grant_type") {
        Some("authorization_code") => {
            let Some(code) = params.get("code") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "code is missing");
            };
            let Some(verifier) = params.get("code_verifier") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code_verifier is missing (PKCE is required)",
                );
            };
            if !valid_verifier(verifier) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636)",
                );
            }
            let outcome = oauth.store.exchange_code(
                code,
                &client.client_id,
                params.get("redirect_uri"),
                resource,
                |challenge| s256_matches(verifier, challenge),
                lifetimes,
            );
            answer(oauth, outcome, &client, "oauth/token")
        }
        Some("refresh_token") => {
            let Some(refresh) = params.get("refresh_token") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is missing");
            };
            let outcome = oauth.store.refresh(refresh, &client.client_id, resource, lifetimes);
            answer(oauth, outcome, &client, "oauth/refresh")
        }
        Some(other) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant_type {other:?} is not supported (authorization_code, refresh_token)"),
        ),
        None => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing"),
    }
}

/// `POST /oauth/revoke` (RFC 7009): 200 whether or not the token was valid (§2.2), so it tells nothing.
pub async fn revoke(oauth: &OAuth, req: Request<Incoming>) -> Resp {
    let (headers, params) = match form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let client = match authenticate_client(oauth, &headers, &params).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = params.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is missing");
    };
    match oauth.store.revoke_oauth_token(token, &client.client_id) {
        Ok(Some((grant, whole))) => {
            let what =
                if whole { "grant revoked by the client" } else { "access token revoked by the client" };
            oauth.audit(
                &grant.app,
                &grant.id,
                "oauth/revoke",
                Some(format!("{}: {what}", client.client_name)),
                200,
            );
        }
        Ok(None) => {}
        Err(e) => {
            return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &e.to_string());
        }
    }
    let mut r = json(StatusCode::OK, &json!({}));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(valid_verifier(verifier));
        assert!(s256_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!s256_matches(verifier, verifier));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
    }
}
