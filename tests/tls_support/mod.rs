//! Helpers of the HTTPS tests: a test CA (rcgen), `catwalk bridge` over HTTPS in front of
//! server-everything, TLS clients that trust the test CA and report what they were served.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deps::{self, ChildGuard};

/// A certificate authority made for one test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial as x509-parser prints it (`01:02:...`), to compare with what a client was served.
    pub serial: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "catwalk test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `127.0.0.1` and `localhost` (plus `names`), valid from `from` to `to` (days from now).
    pub fn leaf(&self, cn: &str, names: &[&str], from_days: i64, to_days: i64) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut sans: Vec<String> = vec!["localhost".into()];
        sans.extend(names.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let serial = serial_of(cert.der());
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial }
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.cert_pem).expect("write ca.pem");
        p
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        roots_from_pem(&self.cert_pem)
    }
}

pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.expect("PEM certificate")).expect("add root");
    }
    roots
}

pub fn serial_of(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    c.raw_serial_as_string()
}

pub fn subject_of(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    c.subject().to_string()
}

/// Writes `leaf` as `cert.pem`/`key.pem` in `dir` by renaming over the old files (as certbot does).
pub fn install_leaf(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(dir.join("key.pem.new"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("cert.pem.new"), &leaf.cert_pem).unwrap();
    std::fs::rename(dir.join("key.pem.new"), &key).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), &cert).unwrap();
    (cert, key)
}

/// `catwalk bridge ARGS -- node22 server-everything stdio`, with stderr echoed by a thread.
pub fn bridge_command(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catwalk"));
    cmd.arg("bridge").args(args).arg("--").arg(deps::node22()).arg(deps::server_everything()).arg("stdio");
    cmd.env("RUST_LOG", "catwalk=debug,info").stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// A running bridge and the lines it printed on stderr.
pub struct Bridge {
    pub guard: ChildGuard,
    pub url: String,
    pub lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Bridge {
    /// Starts the bridge and waits for `listening on https://...`.
    pub fn start(args: &[String]) -> Bridge {
        let mut guard = ChildGuard::spawn("catwalk bridge", &mut bridge_command(args));
        let stderr = guard.take_stderr();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[bridge] {line}");
                if !sent && let Some(i) = line.find("listening on https://") {
                    let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                    sent = true;
                }
                keep.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => panic!(
                "the bridge did not print `listening on https://...` within 60 s (exit: {:?})",
                guard.child().try_wait().ok().flatten()
            ),
        };
        Bridge { guard, url, lines }
    }

    /// `127.0.0.1:PORT` of the HTTPS listener.
    pub fn addr(&self) -> std::net::SocketAddr {
        let rest = self.url.trim_start_matches("https://");
        rest[..rest.find('/').unwrap_or(rest.len())].parse().expect("bridge address")
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the bridge never logged {needle:?} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A rustls client config trusting `roots`, with the given versions and ALPN protocols.
pub fn client_config(
    roots: rustls::RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// One kept-alive TLS connection speaking raw HTTP/1.1.
pub struct RawConn {
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl RawConn {
    pub async fn connect(
        addr: std::net::SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<RawConn> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
        Ok(RawConn { stream })
    }

    /// The leaf certificate the server presented on this connection (DER).
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream.get_ref().1.peer_certificates().expect("peer certificates")[0].to_vec()
    }

    /// `GET /healthz` on this connection; returns (status line, headers+body text).
    pub async fn get_healthz(&mut self) -> String {
        self.stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .expect("response within 30 s")
                .expect("read response");
            assert!(n > 0, "connection closed before a full response: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    }
}
