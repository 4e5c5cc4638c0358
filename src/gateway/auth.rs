//! Bearer-token extraction, the bridge's single-token authenticator, and per-token rate limits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use subtle::ConstantTimeEq;

use super::{Authenticator, RateLimit};

pub use crate::plan::AuthMode;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// Stable id (the rate-limit key).
    pub token_id: String,
    /// Human name, recorded in audit events.
    pub token_name: String,
}

/// Why a request was not authenticated. The message is shown to the client: never include the
/// token or anything derived from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint requires a token: send it as `Authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not valid for this app (wrong, revoked or expired)")]
    Invalid,
}

/// Accepts exactly one token (read once from an environment variable), compared in constant
/// time. Used by `catwalk bridge --token-env VAR` (e.g. inside a Fly machine).
pub struct EnvTokenAuthenticator {
    token: Vec<u8>,
}

impl TokenIdentity {
    /// Every caller of an `auth = "none"` endpoint: one rate-limit bucket and one audit name.
    pub fn public() -> TokenIdentity {
        TokenIdentity { token_id: "public".into(), token_name: "public".into() }
    }
}

impl EnvTokenAuthenticator {
    pub fn new(token: String) -> Self {
        EnvTokenAuthenticator { token: token.into_bytes() }
    }
}

impl Authenticator for EnvTokenAuthenticator {
    fn authenticate(&self, _app: &str, bearer: Option<&str>) -> Result<TokenIdentity, AuthError> {
        let bearer = bearer.ok_or(AuthError::Missing)?;
        // ct_eq on slices of different lengths is false without leaking where they differ.
        if bool::from(bearer.as_bytes().ct_eq(&self.token)) {
            Ok(TokenIdentity { token_id: "env".into(), token_name: "env".into() })
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// True when the query string carries a token (`access_token=` or `token=`), which is refused
/// even when valid: URLs end up in logs and browser history.
pub fn query_has_token(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            k.eq_ignore_ascii_case("access_token") || k.eq_ignore_ascii_case("token")
        })
    })
}

type Limiter = DefaultKeyedRateLimiter<String>;

/// One keyed (per token) limiter per app, rebuilt when the app's quota changes.
#[derive(Default)]
pub struct Limiters {
    by_app: Mutex<HashMap<String, (RateLimit, Arc<Limiter>)>>,
}

impl Limiters {
    /// `Err(retry_after)` when `token_id` exceeded `limit` for `app`.
    pub fn check(&self, app: &str, limit: RateLimit, token_id: &str) -> Result<(), Duration> {
        let limiter = {
            let Ok(mut map) = self.by_app.lock() else {
                return Ok(());
            };
            match map.get(app) {
                Some((l, lim)) if *l == limit => lim.clone(),
                _ => {
                    let quota = Quota::with_period(limit.period)
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                        .allow_burst(limit.burst);
                    let lim = Arc::new(Limiter::keyed(quota));
                    map.insert(app.to_string(), (limit, lim.clone()));
                    lim
                }
            }
        };
        limiter
            .check_key(&token_id.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_token() {
        let a = EnvTokenAuthenticator::new("s3cret".into());
        assert!(a.authenticate("x", Some("s3cret")).is_ok());
        assert_eq!(a.authenticate("x", Some("s3cre")), Err(AuthError::Invalid));
        assert_eq!(a.authenticate("x", None), Err(AuthError::Missing));
    }

    #[test]
    fn query_tokens() {
        assert!(query_has_token(Some("a=1&access_token=x")));
        assert!(query_has_token(Some("TOKEN=x")));
        assert!(!query_has_token(Some("tokens=1")));
        assert!(!query_has_token(None));
    }

    #[test]
    fn rate_limit() {
        let l = Limiters::default();
        let lim = RateLimit { period: Duration::from_secs(3600), burst: NonZeroU32::MIN };
        assert!(l.check("a", lim, "t").is_ok());
        assert!(l.check("a", lim, "t").is_err());
        assert!(l.check("a", lim, "u").is_ok());
    }
}
