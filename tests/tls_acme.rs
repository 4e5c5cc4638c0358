//! ACME end to end against Pebble (Let's Encrypt's test CA, Debian package `pebble`), started by the
//! test on loopback. The challenge is really validated (no PEBBLE_VA_ALWAYS_VALID): Pebble's validation
//! authority resolves the test domain through pebble-challtestsrv's DNS (every name → 127.0.0.1) and
//! connects to the bridge's HTTPS port (TLS-ALPN-01) or its redirect port (HTTP-01).

use crate::deps;
use crate::tls_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deps::ChildGuard;
use tls_support::{Bridge, TestCa};

const DOMAIN: &str = "catwalk-acme.test";

fn require_bin(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "run ./scripts/test-deps first: {path} is missing (Debian package pebble)");
    p
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for the fake DNS server).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_tcp(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble + challtestsrv, and the test CA that signed Pebble's own HTTPS certificate.
struct Pebble {
    _dns: ChildGuard,
    _pebble: ChildGuard,
    ca_file: PathBuf,
    ca: TestCa,
    directory: String,
    management: SocketAddr,
}

impl Pebble {
    /// Pebble validating TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port` of 127.0.0.1.
    fn start(dir: &Path, tls_port: u16, http_port: u16) -> Pebble {
        let pebble_bin = require_bin("/usr/bin/pebble");
        let dns_bin = require_bin("/usr/bin/pebble-challtestsrv");
        let ca = TestCa::new();
        let ca_file = ca.write(dir);
        let leaf = ca.leaf("pebble", &[], -1, 30);
        std::fs::write(dir.join("pebble.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("pebble.key"), &leaf.key_pem).unwrap();

        // A port free for UDP may be taken for TCP (the DNS server needs both), or be grabbed by a
        // concurrent test before the server binds it: try a few fresh ports before giving up.
        let mut started = None;
        for _attempt in 0..5 {
            let dns_port = free_udp_port();
            let dns_mgmt = deps::free_port();
            let mut cmd = Command::new(&dns_bin);
            cmd.args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            let mut dns = ChildGuard::spawn("pebble-challtestsrv", &mut cmd);
            let addr: SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let listening = loop {
                if std::net::TcpStream::connect(addr).is_ok() {
                    break true;
                }
                if Instant::now() > deadline || matches!(dns.child().try_wait(), Ok(Some(_))) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if listening {
                started = Some((dns, dns_port));
                break;
            }
        }
        let (dns, dns_port) = started.expect("pebble-challtestsrv did not start on any of 5 fresh ports");

        let (listen, mgmt) = (deps::free_port(), deps::free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("pebble.crt"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let mut cmd = Command::new(pebble_bin);
        cmd.arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")]);
        // Validate at once instead of after a random 0-15 s; never reject nonces at random.
        cmd.env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID");
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let pebble = ChildGuard::spawn("pebble", &mut cmd);
        let management: SocketAddr = format!("127.0.0.1:{mgmt}").parse().unwrap();
        wait_tcp(format!("127.0.0.1:{listen}").parse().unwrap(), "pebble");
        wait_tcp(management, "pebble management");
        Pebble {
            _dns: dns,
            _pebble: pebble,
            ca_file,
            ca,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
        }
    }

    /// The root that signs Pebble's issued certificates (regenerated at each Pebble start).
    async fn issuing_root(&self) -> String {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap()])
            .build()
            .unwrap();
        let r = client.get(format!("https://{}/roots/0", self.management)).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET /roots/0 from Pebble's management interface");
        r.text().await.unwrap()
    }
}

fn acme_args(p: &Pebble, port: u16, cache: &Path) -> Vec<String> {
    [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--acme-domain",
        DOMAIN,
        "--acme-directory",
        &p.directory,
        "--acme-contact",
        "ops@catwalk-acme.test",
        "--acme-cache",
        &cache.display().to_string(),
        "--acme-ca-bundle",
        &p.ca_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `GET https://DOMAIN:PORT/healthz` trusting only Pebble's root; returns the served leaf (DER).
async fn healthz_trusting(root_pem: &str, port: u16) -> Vec<u8> {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap()])
        .resolve(DOMAIN, format!("127.0.0.1:{port}").parse().unwrap())
        .tls_info(true)
        .build()
        .unwrap();
    let r = client.get(format!("https://{DOMAIN}:{port}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info").clone();
    info.peer_certificate().expect("peer certificate").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_certificate_that_validates_and_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let https_port = deps::free_port();
    // HTTP-01 would go to a closed port: only TLS-ALPN-01 on the HTTPS port can succeed.
    let pebble = Pebble::start(dir.path(), https_port, deps::free_port());
    let cache = dir.path().join("acme-cache");
    let bridge = Bridge::start(&acme_args(&pebble, https_port, &cache));
    let issued = bridge.wait_line("ACME: certificate issued", Duration::from_secs(120));
    assert!(issued.contains(DOMAIN), "{issued}");
    assert!(bridge.lines.lock().unwrap().iter().any(|l| l.contains("TLS-ALPN-01")));

    let root = pebble.issuing_root().await;
    let leaf = healthz_trusting(&root, https_port).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(names.iter().any(|n| n.contains(DOMAIN)), "{names:?}");

    // A restart serves the cached certificate at once and orders nothing.
    drop(bridge);
    let bridge = Bridge::start(&acme_args(&pebble, https_port, &cache));
    bridge.wait_line("serving the cached certificate", Duration::from_secs(30));
    let again = healthz_trusting(&root, https_port).await;
    assert_eq!(again, leaf, "the restarted bridge must serve the cached certificate");
    bridge.wait_line("renewal scheduled in", Duration::from_secs(30));
    assert!(!bridge.lines.lock().unwrap().iter().any(|l| l.contains("ordering a certificate")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_redirect_listener_issues_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (https_port, http_port) = (deps::free_port(), deps::free_port());
    // TLS-ALPN-01 would go to a closed port: only HTTP-01 on the redirect listener can succeed.
    let pebble = Pebble::start(dir.path(), deps::free_port(), http_port);
    let mut args = acme_args(&pebble, https_port, &dir.path().join("acme-cache"));
    args.extend(["--redirect-listen".to_string(), format!("127.0.0.1:{http_port}")]);
    let bridge = Bridge::start(&args);
    bridge.wait_line("ACME: certificate issued", Duration::from_secs(120));
    assert!(bridge.lines.lock().unwrap().iter().any(|l| l.contains("HTTP-01")));
    let root = pebble.issuing_root().await;
    healthz_trusting(&root, https_port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_is_logged_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let https_port = deps::free_port();
    // Pebble validates on ports where nothing listens: the order must fail with the CA's reason.
    let pebble = Pebble::start(dir.path(), deps::free_port(), deps::free_port());
    let bridge = Bridge::start(&acme_args(&pebble, https_port, &dir.path().join("acme-cache")));
    let failed = bridge.wait_line("ACME: obtaining a certificate for", Duration::from_secs(120));
    assert!(failed.contains("failed") && failed.contains("retrying in"), "{failed}");
    assert!(failed.contains("HTTPS handshakes fail until a certificate is obtained"), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_renewed_and_the_renewal_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let https_port = deps::free_port();
    let pebble = Pebble::start(dir.path(), https_port, deps::free_port());
    // Pebble issues certificates valid for five calendar years (`time.AddDate(5, 0, 0)`): renewing that
    // lifetime minus 3 s before expiry renews 3 s after each issuance.
    let now = time::OffsetDateTime::now_utc();
    let lifetime = now.replace_year(now.year() + 5).unwrap_or(now + time::Duration::days(1826)) - now;
    let renew_before = format!("{}s", lifetime.whole_seconds() - 3);
    let mut args = acme_args(&pebble, https_port, &dir.path().join("acme-cache"));
    args.extend(["--acme-renew-before".to_string(), renew_before]);
    let bridge = Bridge::start(&args);
    let root = pebble.issuing_root().await;

    let first = bridge.wait_line("ACME: certificate issued", Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(120);
    let second = loop {
        let issued: Vec<String> = bridge
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("ACME: certificate issued"))
            .cloned()
            .collect();
        if issued.len() >= 2 {
            break issued[1].clone();
        }
        assert!(Instant::now() < deadline, "no renewal within 120 s after: {first}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let serial = |line: &str| line.split("serial ").nth(1).unwrap().split(',').next().unwrap().to_string();
    assert_ne!(serial(&first), serial(&second), "a renewal is a new certificate");
    // New handshakes get a certificate issued after the first one (renewals keep coming every ~3 s, so
    // compare against the first, not against one particular renewal).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaf = healthz_trusting(&root, https_port).await;
        if tls_support::serial_of(&leaf) != serial(&first) {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauge_is_on_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let https_port = deps::free_port();
    let pebble = Pebble::start(dir.path(), https_port, deps::free_port());
    let bridge = Bridge::start(&acme_args(&pebble, https_port, &dir.path().join("acme-cache")));
    bridge.wait_line("ACME: certificate issued", Duration::from_secs(120));
    let root = pebble.issuing_root().await;
    let leaf = healthz_trusting(&root, https_port).await;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let expected = cert.validity().not_after.timestamp();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(DOMAIN, format!("127.0.0.1:{https_port}").parse().unwrap())
        .build()
        .unwrap();
    let text = client
        .get(format!("https://{DOMAIN}:{https_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("catwalk_tls_cert_expiry_seconds "))
        .unwrap_or_else(|| panic!("no catwalk_tls_cert_expiry_seconds in /metrics:\n{text}"));
    let value: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(value as i64, expected, "{line}");
}
