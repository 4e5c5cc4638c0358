//! Streamable HTTP header rules (Accept, Content-Type, MCP-Protocol-Version, Origin, Host), the
//! response body type, and error responses (always a JSON-RPC error object with a human message).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};

use super::jsonrpc;
use super::sse::SseBody;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// Assumed when a request has no `MCP-Protocol-Version` header and no session says otherwise.
pub const DEFAULT_VERSION: &str = "2025-03-26";
/// Versions accepted in `MCP-Protocol-Version`.
pub const KNOWN_VERSIONS: &[&str] = &["2024-10-07", "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Batches exist up to 2025-03-26; 2025-06-18 removed them.
pub fn batches_allowed(version: &str) -> bool {
    version <= "2025-03-26"
}

/// Every response body the gateway produces.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
    /// A proxied body, with the backend's in-flight mark held until it ends.
    Proxy(hyper::body::Incoming, Option<super::InFlight>),
}

impl GatewayBody {
    pub fn empty() -> Self {
        GatewayBody::Full(None)
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Sse(s) => s.poll_frame_inner(cx),
            GatewayBody::Proxy(i, _) => Pin::new(i).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_none(),
            GatewayBody::Sse(_) => false,
            GatewayBody::Proxy(i, _) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Sse(_) => SizeHint::default(),
            GatewayBody::Proxy(i, _) => i.size_hint(),
        }
    }
}

pub type Resp = Response<GatewayBody>;

/// A refusal from a header check (boxed: responses are large and refusals are rare).
pub type Refused = Box<Resp>;

fn refuse(status: StatusCode, code: i64, message: &str) -> Refused {
    Box::new(error(status, code, message))
}

/// A response with a JSON body.
pub fn json(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(GatewayBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An HTTP error whose body is a JSON-RPC error object (`id` null unless known).
pub fn error(status: StatusCode, code: i64, message: &str) -> Resp {
    json(status, jsonrpc::error_body(None, code, message))
}

pub fn status_only(status: StatusCode) -> Resp {
    let mut r = Response::new(GatewayBody::empty());
    *r.status_mut() = status;
    r
}

/// Headers every SSE response carries (no caching, no proxy buffering).
pub fn sse_response(body: SseBody) -> Resp {
    let mut r = Response::new(GatewayBody::Sse(Box::new(body)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Media types listed in `Accept` (parameters and q-values ignored; `*/*` and `type/*` match).
fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    let (wt, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|item| {
            let mt = item.split(';').next().unwrap_or("").trim();
            mt.eq_ignore_ascii_case(wanted)
                || mt == "*/*"
                || mt.strip_suffix("/*").is_some_and(|t| t.eq_ignore_ascii_case(wt))
        })
    })
}

/// POST must accept both JSON and SSE.
pub fn check_post_accept(headers: &HeaderMap) -> Result<(), Refused> {
    if accepts(headers, "application/json") && accepts(headers, "text/event-stream") {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::NOT_ACCEPTABLE,
            -32600,
            "Not Acceptable: the Accept header must list both application/json and text/event-stream",
        ))
    }
}

/// GET must accept SSE.
pub fn check_get_accept(headers: &HeaderMap) -> Result<(), Refused> {
    if accepts(headers, "text/event-stream") {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::NOT_ACCEPTABLE,
            -32600,
            "Not Acceptable: the Accept header must list text/event-stream to open a stream",
        ))
    }
}

pub fn check_content_type(headers: &HeaderMap) -> Result<(), Refused> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            -32600,
            "Unsupported Media Type: send the JSON-RPC message with Content-Type: application/json",
        ))
    }
}

/// The `MCP-Protocol-Version` header: `Ok(None)` when absent, 400 when not a version this
/// gateway (or the session's negotiated version) supports.
pub fn header_version<'a>(
    headers: &'a HeaderMap,
    negotiated: Option<&str>,
) -> Result<Option<&'a str>, Refused> {
    let Some(v) = headers.get(VERSION_HEADER) else {
        return Ok(None);
    };
    let v = v.to_str().unwrap_or("").trim();
    if KNOWN_VERSIONS.contains(&v) || negotiated == Some(v) {
        Ok(Some(v))
    } else {
        Err(refuse(
            StatusCode::BAD_REQUEST,
            -32600,
            &format!(
                "Bad Request: unsupported MCP-Protocol-Version {v:?}; supported: {}",
                KNOWN_VERSIONS.join(", ")
            ),
        ))
    }
}

/// Host part (no port) of a `Host` header value or an origin's authority, lowercased.
fn host_only(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default()
    } else {
        a.split(':').next().unwrap_or("").to_string()
    };
    host.to_ascii_lowercase()
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// DNS-rebinding protection for loopback listeners: the `Host` header and the request's authority
/// (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target, which hyper puts in the URI) must both
/// name the loopback when present.
pub fn check_host(headers: &HeaderMap, authority: Option<&str>, loopback: bool) -> Result<(), Refused> {
    if !loopback {
        return Ok(());
    }
    let host = headers.get(header::HOST).map(|v| v.to_str().map(host_only).unwrap_or_default());
    let named = host.iter().cloned().chain(authority.map(host_only));
    let mut foreign = named.filter(|h| !is_loopback_host(h));
    match foreign.next() {
        None => Ok(()),
        Some(_) => Err(refuse(
            StatusCode::FORBIDDEN,
            -32600,
            "Forbidden: this server listens on loopback and only accepts Host localhost, \
             127.0.0.1 or [::1] (DNS rebinding protection)",
        )),
    }
}

/// Normalise an origin for comparison: lowercase, no trailing slash.
fn norm_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `Origin` rules: absent is fine (non-browser clients); otherwise it must be the public
/// origin, in the app's list, or (on a loopback listener) a loopback origin.
pub fn check_origin(
    headers: &HeaderMap,
    allowed: &[String],
    public_origin: Option<&str>,
    loopback: bool,
) -> Result<(), Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = norm_origin(origin.to_str().unwrap_or("invalid"));
    let listed = allowed.iter().any(|a| norm_origin(a) == origin)
        || public_origin.is_some_and(|p| norm_origin(p) == origin);
    let local = loopback
        && ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme).is_some_and(|auth| is_loopback_host(&host_only(auth))));
    if listed || local {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::FORBIDDEN,
            -32600,
            &format!(
                "Forbidden: Origin {origin:?} is not allowed for this endpoint; add it to the \
                 app's allowed origins"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn accept_rules() {
        assert!(check_post_accept(&h(&[("accept", "application/json, text/event-stream")])).is_ok());
        assert!(check_post_accept(&h(&[("accept", "application/json")])).is_err());
        assert!(check_post_accept(&h(&[("accept", "*/*")])).is_ok());
        assert!(check_get_accept(&h(&[("accept", "text/event-stream;q=1")])).is_ok());
        assert!(check_get_accept(&h(&[])).is_err());
    }

    #[test]
    fn origin_and_host() {
        let none: &[String] = &[];
        assert!(check_origin(&h(&[]), none, None, true).is_ok());
        assert!(check_origin(&h(&[("origin", "http://localhost:3000")]), none, None, true).is_ok());
        assert!(check_origin(&h(&[("origin", "http://localhost:3000")]), none, None, false).is_err());
        assert!(check_origin(&h(&[("origin", "https://evil.example")]), none, None, true).is_err());
        let list = vec!["https://ok.example".to_string()];
        assert!(check_origin(&h(&[("origin", "https://OK.example/")]), &list, None, false).is_ok());
        assert!(
            check_origin(
                &h(&[("origin", "https://deploy.example")]),
                none,
                Some("https://deploy.example"),
                false
            )
            .is_ok()
        );
        assert!(check_host(&h(&[("host", "127.0.0.1:8080")]), None, true).is_ok());
        assert!(check_host(&h(&[("host", "[::1]:80")]), None, true).is_ok());
        assert!(check_host(&h(&[("host", "evil.example:8080")]), None, true).is_err());
        assert!(check_host(&h(&[("host", "evil.example")]), None, false).is_ok());
        // HTTP/2: no Host header, the authority is checked instead.
        assert!(check_host(&h(&[]), Some("localhost:8080"), true).is_ok());
        assert!(check_host(&h(&[]), Some("evil.example:8080"), true).is_err());
        assert!(check_host(&h(&[("host", "localhost")]), Some("evil.example"), true).is_err());
    }

    #[test]
    fn versions() {
        assert!(header_version(&h(&[("mcp-protocol-version", "2025-06-18")]), None).is_ok());
        assert!(header_version(&h(&[("mcp-protocol-version", "1999-01-01")]), None).is_err());
        assert!(header_version(&h(&[("mcp-protocol-version", "2026-01-01")]), Some("2026-01-01")).is_ok());
        assert!(batches_allowed("2025-03-26"));
        assert!(!batches_allowed("2025-06-18"));
    }
}
