//! The HTTPS listener (HTTP/1.1 and HTTP/2 chosen by ALPN, HSTS on every response) and the plain-HTTP
//! listener that only redirects to HTTPS and answers ACME HTTP-01 challenges.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::TlsRuntime;
use super::resolver::ACME_TLS_ALPN;
use crate::listener::{ConnLimits, first_bytes};

/// Two years, with subdomains left alone (other services may live on sibling names without HTTPS).
const HSTS: &str = "max-age=63072000";
/// A client that does not finish the TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send request headers on the redirect listener (also bounds idle keep-alive connections).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS listener's connection caps and first-bytes deadline (`[http]`; see `crate::listener`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}
/// How long graceful shutdown waits for open connections (SSE streams end with their sessions).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve HTTPS on `listener` until `shutdown` is cancelled.
///
/// `make_service(local_addr)` builds the request handler for a connection accepted on `local_addr`
/// (see `bridge.rs`: a `service_fn` calling `Gateway::handle(req, local)` on an owned `Arc<Gateway>`).
/// HTTP/2 or HTTP/1.1 is chosen by ALPN; TLS 1.2
/// and 1.3 only; `Strict-Transport-Security` is added to every response when `hsts` is on.
/// ACME TLS-ALPN-01 validation connections are answered during the handshake and closed.
/// On shutdown, open connections get [`DRAIN_TIMEOUT`] to finish.
pub async fn serve_https<F, S, B>(
    listener: TcpListener,
    tls: TlsRuntime,
    make_service: F,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let local = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls.server_config());
    let hsts = tls.hsts();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let caps = ConnLimits::new(limits.max_connections, limits.max_connections_per_ip);
    let deadline = limits.header_read_timeout;
    loop {
        let Some(stream) = next_connection(&listener, &shutdown, "HTTPS").await else { break };
        let Some(permit) = stream.peer_addr().ok().and_then(|peer| caps.admit(peer.ip()).ok()) else {
            tracing::debug!("HTTPS connection refused: [http] connection cap reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let svc = make_service(local);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let stop = shutdown.clone();
        // The handshake runs in the connection's own task so a slow client never blocks the accept loop.
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let tls_stream = tokio::select! {
                _ = stop.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                },
            };
            if tls_stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // RFC 8737: the validation server only checks the certificate; close right away.
                return;
            }
            let svc = service_fn(move |req: Request<Incoming>| {
                let fut = svc.call(req);
                async move {
                    let mut resp = fut.await?;
                    if hsts {
                        resp.headers_mut()
                            .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
                    }
                    Ok::<_, S::Error>(resp)
                }
            });
            // Protocol detection gets a deadline too (see crate::listener).
            let Ok(io) = first_bytes(tls_stream, deadline).await else { return };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// Serve the plain-HTTP redirect listener until `shutdown`: `301` to `https://HOST[:https_port]/PATH`
/// for every request, except `GET /.well-known/acme-challenge/TOKEN`, which answers pending HTTP-01
/// validations. `https_port` is the port clients should use (443 is left out of the URL).
pub async fn serve_redirect(
    listener: TcpListener,
    tls: TlsRuntime,
    https_port: u16,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let Some(stream) = next_connection(&listener, &shutdown, "HTTP (redirect)").await else { break };
        let tls = tls.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let resp = redirect_response(&tls, &req, https_port);
            async move { Ok::<_, Infallible>(resp) }
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Ok(io) = first_bytes(stream, HEADER_READ_TIMEOUT).await else { return };
            let _ = watcher.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned()).await;
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

fn redirect_response(tls: &TlsRuntime, req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match tls.store().http_challenge(token) {
            Some(key_auth) => plain(StatusCode::OK, key_auth),
            None => plain(StatusCode::NOT_FOUND, "no pending ACME challenge with this token\n".into()),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(strip_port)
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)));
    let Some(host) = host else {
        return plain(StatusCode::BAD_REQUEST, "Bad Request: a Host header is required\n".into());
    };
    let authority = if https_port == 443 { host.to_string() } else { format!("{host}:{https_port}") };
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = format!("https://{authority}{pq}");
    let mut resp = plain(StatusCode::MOVED_PERMANENTLY, format!("Moved Permanently: {location}\n"));
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "Bad Request: the URL cannot be redirected\n".into()),
    }
}

/// `example.com:80` → `example.com`, `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') && (host.starts_with('[') || host.matches(':').count() == 1) => {
            &host[..i]
        }
        _ => host,
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The next accepted connection, or `None` once `shutdown` is cancelled. Accept errors (EMFILE and
/// friends) are logged and retried after a short pause instead of spinning.
async fn next_connection(
    listener: &tokio::net::TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
