//! HTTP plumbing of the OAuth endpoints: form and query parameters (each at most once, RFC 6749 §3.1),
//! JSON and HTML answers with the headers they need, OAuth error bodies, cookies, HTML escaping.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::gateway::GatewayBody;

pub type Resp = Response<GatewayBody>;

/// Largest form or JSON body the OAuth endpoints read (registrations are small).
const MAX_BODY: usize = 64 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Request parameters by name; a repeated name is refused when parsed.
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` text; `Err(name)` for a repeated parameter.
    pub fn parse(text: &str) -> Result<Params, String> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(text.as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(k.to_string());
            }
        }
        Ok(Params(map))
    }

    /// A parameter; an empty value counts as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Reads a request body (bounded in size and time).
pub async fn body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "the request body is too large",
        ));
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(_)) => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read (or is larger than 64 KiB)",
        )),
        Err(_) => Err(oauth_error(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request",
            "the request body did not arrive in time",
        )),
    }
}

/// Reads an `application/x-www-form-urlencoded` body (RFC 6749 §3.2: the token endpoint takes forms).
pub async fn form(req: Request<Incoming>) -> Result<(http::HeaderMap, Params), Resp> {
    let headers = req.headers().clone();
    let is_form = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !is_form {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        ));
    }
    let bytes = body(req).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the body is not UTF-8"))?;
    let params = Params::parse(text).map_err(|name| {
        oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &format!("parameter {name:?} is repeated"))
    })?;
    Ok((headers, params))
}

fn with_body(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(GatewayBody::Full(Some(body.into())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Nothing an OAuth endpoint answers may be cached (RFC 6749 §5.1).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// A JSON answer that browsers on other origins may read (metadata, registration, token, revocation
/// are called from web clients such as the MCP Inspector; none of them uses cookies).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = with_body(status, "application/json", serde_json::to_vec(value).expect("JSON serialises"));
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

/// An OAuth error body (RFC 6749 §5.2): `{"error": CODE, "error_description": TEXT}`.
pub fn oauth_error(status: StatusCode, code: &str, description: &str) -> Resp {
    json(status, &serde_json::json!({ "error": code, "error_description": description }))
}

/// The CORS preflight answer for the JSON endpoints.
pub fn preflight() -> Resp {
    let mut r = with_body(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}

pub fn not_found(path: &str) -> Resp {
    oauth_error(StatusCode::NOT_FOUND, "not_found", &format!("nothing at {path}"))
}

pub fn method_not_allowed(method: &Method) -> Resp {
    oauth_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("method {method} is not allowed here"),
    )
}

/// An HTML page: no external assets, not frameable, nothing loaded but its own inline style.
/// `form_action` are the origins its forms may submit to (besides itself).
pub fn html(status: StatusCode, body: String, form_action: &[String]) -> Resp {
    let mut r = with_body(status, "text/html; charset=utf-8", body);
    let mut csp = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        .to_string();
    for origin in form_action {
        csp.push(' ');
        csp.push_str(origin);
    }
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Nothing of the page's URL leaves for other sites; same-origin requests keep their `Origin` (with
    // `no-referrer` browsers send `Origin: null` even for the page's own form, which the decision refuses).
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    r
}

/// A redirect (`302 Found`, or `303 See Other` after a form POST) to `location`.
pub fn redirect(status: StatusCode, location: &str) -> Resp {
    let mut r = with_body(status, "text/plain", Bytes::new());
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Text for an HTML text node or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `scheme://host[:port]` of a URL, as a CSP source; `scheme:` for URLs without a host (a native app's
/// private-use scheme, whose origin would serialise as the useless `null`).
pub fn origin_of(url: &url::Url) -> String {
    match url.origin() {
        o @ url::Origin::Tuple(..) => o.ascii_serialization(),
        url::Origin::Opaque(_) => format!("{}:", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_refuse_repeats_and_treat_empty_as_absent() {
        let p = Params::parse("a=1&b=&c=x%20y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert_eq!(Params::parse("a=1&a=2").err().as_deref(), Some("a"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>\n"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt; "
        );
    }

    #[test]
    fn origins_as_csp_sources() {
        let o = |u: &str| origin_of(&url::Url::parse(u).unwrap());
        assert_eq!(o("http://127.0.0.1:9/callback?x=1"), "http://127.0.0.1:9");
        assert_eq!(o("https://claude.ai/api/mcp/auth_callback"), "https://claude.ai");
        assert_eq!(o("cursor.anysphere:/oauth/cb"), "cursor.anysphere:");
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; cw_session=abc"));
        assert_eq!(cookie(&h, "cw_session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
