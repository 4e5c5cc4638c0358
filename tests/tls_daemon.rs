//! `catwalk serve` with `[http.tls]` certificate files: the MCP endpoint, its token check and the public URL
//! all work over HTTPS, and the Python SDK client calls a tool trusting only the test CA.

use crate::daemon;
use crate::deps;
use crate::tls_support;

use std::process::Command;
use std::time::Duration;

use tls_support::{TestCa, install_leaf};

#[test]
fn the_daemon_serves_mcp_over_https_with_certificate_files() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(certs.path());
    let (cert, key) = install_leaf(certs.path(), &ca.leaf("catwalk daemon", &[], -1, 30));
    let config = format!(
        "[http.tls]\ncert = {:?}\nkey = {:?}\n[apps.secure]\ncommand = [{:?}, {:?}]\nenv = {{ CATWALK_TEST_DEPS = {:?} }}\n",
        cert.display().to_string(),
        key.display().to_string(),
        deps::node22().display().to_string(),
        deps::conformance_fixture().display().to_string(),
        deps::deps_dir().display().to_string(),
    );
    let d = daemon::Daemon::start_with_config(&config);
    d.wait_log("MCP endpoints at https://");
    let token: serde_json::Value =
        serde_json::from_str(&daemon::ok(&d.ssh(&d.admin, "tokens create secure --json", ""))).unwrap();
    let token = token["token"].as_str().unwrap();
    let url = format!("https://{}/mcp/secure", d.http_addr);
    let run = |ca: Option<&std::path::Path>| {
        let mut cmd = Command::new(deps::venv_python());
        cmd.arg(deps::py_client()).args(["--url", &url, "--token", token, "--scenario", "basic"]);
        cmd.env_remove("SSL_CERT_FILE").env_remove("REQUESTS_CA_BUNDLE").env_remove("SSL_CERT_DIR");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        deps::run_with_timeout("py_client", &mut cmd, Duration::from_secs(120))
    };
    let (ok, out, err) = run(Some(&ca_file));
    assert!(ok, "the Python SDK client failed over HTTPS:\n{out}\n{err}");
    let (ok, out, _) = run(None);
    assert!(!ok, "a client that does not trust the test CA must fail:\n{out}");
}
