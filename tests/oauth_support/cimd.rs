//! A small HTTPS server that plays a client's host for Client ID Metadata Documents: it serves
//! `/client.json` (a valid document naming its own URL), `/big.json` (over the size limit),
//! `/wrong.json` (another client_id), `/redirect.json` (a 302 elsewhere), and counts requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct CimdServer {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CimdServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CimdServer {
    /// Serves on 127.0.0.1 with `cert_pem`/`key_pem` (a leaf for localhost and 127.0.0.1).
    pub async fn start(cert_pem: &str, key_pem: &str, redirect_uri: &str) -> CimdServer {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (counter, redirect_uri) = (hits.clone(), redirect_uri.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, counter, redirect_uri) =
                    (acceptor.clone(), counter.clone(), redirect_uri.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let me = format!("https://localhost:{port}{path}");
                    let doc = |client_id: &str, pad: usize| {
                        serde_json::json!({
                            "client_id": client_id, "client_name": "Metadata Client",
                            "redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none",
                            "grant_types": ["authorization_code", "refresh_token"], "padding": "x".repeat(pad),
                        })
                        .to_string()
                    };
                    let (status, extra, body) = match path.as_str() {
                        "/client.json" => ("200 OK", String::new(), doc(&me, 0)),
                        "/big.json" => ("200 OK", String::new(), doc(&me, 100_000)),
                        "/wrong.json" => ("200 OK", String::new(), doc("https://localhost/other.json", 0)),
                        "/redirect.json" => (
                            "302 Found",
                            format!("location: https://localhost:{port}/client.json\r\n"),
                            String::new(),
                        ),
                        _ => ("404 Not Found", String::new(), String::new()),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        CimdServer { port, hits, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
