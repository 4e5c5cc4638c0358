//! Streaming reverse proxy to apps that speak Streamable HTTP themselves (and to Fly machines).
//!
//! Request and response bodies (including SSE) are passed through frame by frame, never
//! buffered. Only MCP-relevant headers go upstream; the client's `Authorization` never does
//! (the route's own upstream headers carry the upstream credential).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body::Body;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::protocol::{self as p, GatewayBody, Resp};

/// Request headers copied to the upstream.
const FORWARD_REQUEST: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "user-agent",
];

/// Response headers never copied back (hop-by-hop).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

/// A pooled HTTP/1.1 client shared by all HTTP apps.
pub struct Proxy {
    client: Client<HttpConnector, Limited<Incoming>>,
}

impl Proxy {
    pub fn new() -> Proxy {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(conn);
        Proxy { client }
    }

    /// Forward `req` to `url` and stream the answer back.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        url: &str,
        extra: &[(String, String)],
        max_body: usize,
    ) -> Resp {
        let bad_gateway = |m: String| p::error(StatusCode::BAD_GATEWAY, -32603, &format!("Bad Gateway: {m}"));
        let uri: Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => {
                return bad_gateway(format!("the app's upstream URL {url:?} is invalid: {e}"));
            }
        };
        if uri.scheme_str() != Some("http") {
            return bad_gateway(format!(
                "the app's upstream URL {url:?} must start with http:// (https upstreams are not supported)"
            ));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return p::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("Payload Too Large: request bodies are limited to {max_body} bytes"),
            );
        }
        let (parts, body) = req.into_parts();
        let mut out = Request::new(Limited::new(body, max_body));
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        for name in FORWARD_REQUEST {
            for v in parts.headers.get_all(*name) {
                out.headers_mut().append(*name, v.clone());
            }
        }
        for (k, v) in extra {
            match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
                (Ok(k), Ok(v)) => {
                    out.headers_mut().insert(k, v);
                }
                _ => {
                    return bad_gateway(format!(
                        "the app's upstream header {k:?} is not a valid HTTP header"
                    ));
                }
            }
        }
        let resp = match self.client.request(out).await {
            Ok(r) => r,
            Err(e) => {
                let mut msg = format!("could not reach the app's upstream server at {url}: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                return bad_gateway(msg);
            }
        };
        let (parts, body) = resp.into_parts();
        if parts.status.is_server_error() && body.is_end_stream() {
            return bad_gateway(format!(
                "the app's upstream server answered {} without a body",
                parts.status
            ));
        }
        let mut r = http::Response::new(GatewayBody::Proxy(body));
        *r.status_mut() = parts.status;
        for (k, v) in parts.headers.iter() {
            if !HOP_BY_HOP.contains(&k.as_str()) {
                r.headers_mut().append(k.clone(), v.clone());
            }
        }
        let is_sse = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        r
    }
}
