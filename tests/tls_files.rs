//! HTTPS with certificate files: `catwalk bridge --tls-cert/--tls-key` in front of server-everything,
//! with certificates made by a test CA. An MCP SDK client works over HTTPS; HTTP/2 by ALPN; TLS 1.2+
//! only; HSTS; the plain redirect listener; hot reload without dropping connections; bad files refused.

use crate::deps;
use crate::tls_support;

use std::time::Duration;

use tls_support::{Bridge, RawConn, TestCa, client_config, install_leaf, serial_of, subject_of};

fn s(v: &str) -> String {
    v.to_string()
}

fn file_args(cert: &std::path::Path, key: &std::path::Path) -> Vec<String> {
    vec![
        s("--listen"),
        s("127.0.0.1:0"),
        s("--tls-cert"),
        cert.display().to_string(),
        s("--tls-key"),
        key.display().to_string(),
    ]
}

fn reqwest_client(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn python_sdk_client_calls_a_tool_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let (cert, key) = install_leaf(dir.path(), &ca.leaf("first", &[], -1, 30));
    let bridge = Bridge::start(&file_args(&cert, &key));
    let mut cmd = std::process::Command::new(deps::venv_python());
    cmd.arg(deps::py_client()).args(["--url", &bridge.url, "--scenario", "basic"]);
    cmd.env("SSL_CERT_FILE", &ca_file).env_remove("SSL_CERT_DIR");
    let (ok, out, err) = deps::run_with_timeout("py_client", &mut cmd, Duration::from_secs(120));
    assert!(ok, "the Python MCP client failed over HTTPS\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("\"basic\""), "unexpected client summary: {out}");

    // The same client refuses the server when it does not trust the CA: the test proves TLS is verified.
    let mut cmd = std::process::Command::new(deps::venv_python());
    cmd.arg(deps::py_client()).args(["--url", &bridge.url, "--scenario", "basic", "--timeout", "10"]);
    cmd.env("SSL_CERT_FILE", "/dev/null").env_remove("SSL_CERT_DIR");
    let (ok, out, err) = deps::run_with_timeout("py_client", &mut cmd, Duration::from_secs(120));
    assert!(!ok, "a client without the test CA must fail\nstdout:\n{out}\nstderr:\n{err}");

    // SIGTERM stops the HTTPS bridge cleanly (sessions ended, children stopped, exit status 0).
    let mut bridge = bridge;
    // SAFETY: kill(2) on the pid of the child this test started; no memory is touched.
    unsafe {
        libc::kill(bridge.guard.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = bridge.guard.child().try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the bridge did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[test]
fn typescript_sdk_client_calls_tools_over_https_with_sse() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let (cert, key) = install_leaf(dir.path(), &ca.leaf("first", &[], -1, 30));
    let bridge = Bridge::start(&file_args(&cert, &key));
    // `progress` streams notifications over SSE before the result: streaming works through TLS.
    let mut cmd = std::process::Command::new(deps::node22());
    cmd.arg(deps::ts_client()).args(["--url", &bridge.url, "--scenario", "basic,progress"]);
    cmd.env("NODE_EXTRA_CA_CERTS", &ca_file);
    let (ok, out, err) = deps::run_with_timeout("ts_client", &mut cmd, Duration::from_secs(120));
    assert!(ok, "the TypeScript MCP client failed over HTTPS\nstdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("\"progress\""), "unexpected client summary: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_hsts_and_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = install_leaf(dir.path(), &ca.leaf("first", &[], -1, 30));
    let redirect_port = deps::free_port();
    let mut args = file_args(&cert, &key);
    args.extend([s("--redirect-listen"), format!("127.0.0.1:{redirect_port}")]);
    let bridge = Bridge::start(&args);
    let client = reqwest_client(&ca);

    // ALPN picks HTTP/2; every response carries HSTS.
    let url = format!("https://{}/healthz", bridge.addr());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=63072000");
    let r = client.post(&bridge.url).body("{}").send().await.unwrap();
    assert!(r.headers().contains_key("strict-transport-security"), "HSTS on MCP errors too: {r:?}");

    // HTTP/1.1 is served to clients that do not offer h2.
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, reqwest::Version::HTTP_11));

    // The redirect listener: 301 to the same path on HTTPS.
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{redirect_port}/mcp?x=1"))
        .header("host", "deploy.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        format!("https://deploy.example.test:{}/mcp?x=1", bridge.addr().port()).as_str()
    );
    // An unknown ACME token is a 404, not a redirect.
    let r = plain
        .get(format!("http://127.0.0.1:{redirect_port}/.well-known/acme-challenge/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = install_leaf(dir.path(), &ca.leaf("first", &[], -1, 30));
    let bridge = Bridge::start(&file_args(&cert, &key));
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut c = RawConn::connect(bridge.addr(), client_config(ca.root_store(), &[v], &[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{v:?} handshake: {e}"));
        assert_eq!(c.stream.get_ref().1.protocol_version(), Some(v.version));
        assert!(c.get_healthz().await.starts_with("HTTP/1.1 200"));
    }
    // rustls cannot speak TLS 1.1; OpenSSL can (at security level 0). The server must refuse it.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &bridge.addr().to_string(),
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client (Debian package openssl)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "TLS 1.1 handshake succeeded:\n{text}");
    // The client really offered TLS 1.1, and the server answered with an alert instead of a certificate.
    assert!(text.contains("Protocol  : TLSv1.1"), "openssl did not offer TLS 1.1:\n{text}");
    assert!(text.contains("no peer certificate available") && text.contains("alert"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_are_served_to_new_handshakes_and_old_connections_live_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf("first", &[], -1, 30);
    let (cert, key) = install_leaf(dir.path(), &first);
    let bridge = Bridge::start(&file_args(&cert, &key));
    let cfg = || client_config(ca.root_store(), &[&rustls::version::TLS13], &[b"http/1.1"]);

    let mut old = RawConn::connect(bridge.addr(), cfg()).await.unwrap();
    assert_eq!(serial_of(&old.peer_leaf()), first.serial);
    assert!(old.get_healthz().await.starts_with("HTTP/1.1 200"));

    // A bad replacement (key of another certificate) is refused and the first certificate keeps serving.
    let other = ca.leaf("other", &[], -1, 30);
    std::fs::write(dir.path().join("key.pem.new"), &other.key_pem).unwrap();
    std::fs::rename(dir.path().join("key.pem.new"), &key).unwrap();
    bridge.wait_line("not reloaded", Duration::from_secs(30));
    let c = RawConn::connect(bridge.addr(), cfg()).await.unwrap();
    assert_eq!(serial_of(&c.peer_leaf()), first.serial);

    let second = ca.leaf("second", &[], -1, 60);
    install_leaf(dir.path(), &second);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = RawConn::connect(bridge.addr(), cfg()).await.unwrap();
        if serial_of(&c.peer_leaf()) == second.serial {
            assert_eq!(subject_of(&c.peer_leaf()), "CN=second");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the reload still works, on its original certificate.
    assert!(old.get_healthz().await.starts_with("HTTP/1.1 200"));
    assert_eq!(serial_of(&old.peer_leaf()), first.serial);
}

/// Starts the bridge with files that must be refused; returns its stderr.
fn refused(cert: &std::path::Path, key: &std::path::Path) -> String {
    let mut cmd = tls_support::bridge_command(&file_args(cert, key));
    let (ok, _, err) = deps::run_with_timeout("catwalk bridge", &mut cmd, Duration::from_secs(60));
    assert!(!ok, "the bridge started with a bad certificate:\n{err}");
    assert!(!err.contains("listening on"), "{err}");
    err
}

#[test]
fn bad_certificate_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = install_leaf(dir.path(), &ca.leaf("expired", &[], -30, -1));
    let err = refused(&cert, &key);
    assert!(err.contains(&format!("{}: the certificate (CN=expired) expired on", cert.display())), "{err}");

    install_leaf(dir.path(), &ca.leaf("future", &[], 2, 30));
    let err = refused(&cert, &key);
    assert!(err.contains("(CN=future) is not valid before"), "{err}");

    install_leaf(dir.path(), &ca.leaf("good", &[], -1, 30));
    std::fs::write(&key, ca.leaf("other", &[], -1, 30).key_pem).unwrap();
    let err = refused(&cert, &key);
    assert!(
        err.contains(&format!(
            "{}: this private key does not match the certificate in {}",
            key.display(),
            cert.display()
        )),
        "{err}"
    );

    let missing = dir.path().join("missing.pem");
    let err = refused(&missing, &key);
    assert!(err.contains(&format!("{}: cannot read the certificate file", missing.display())), "{err}");

    std::fs::write(&cert, "not a certificate").unwrap();
    let err = refused(&cert, &key);
    assert!(err.contains("contains no certificate"), "{err}");
}
