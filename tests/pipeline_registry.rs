//! Pinning against the real npm and PyPI registries (reachable from CI, like the installs themselves).

use catwalk::pipeline::registry::{Registries, pin};
use catwalk::plan::Registry;

fn client() -> reqwest::Client {
    reqwest::Client::builder().user_agent("catwalk-tests").build().unwrap()
}

#[tokio::test]
async fn pins_latest_and_exact_versions() {
    let (c, r) = (client(), Registries::default());
    let time = pin(&c, &r, None, Registry::Pypi, "mcp-server-time", None).await.unwrap();
    assert!(time.version.chars().next().unwrap().is_ascii_digit(), "{time:?}");
    let exact = pin(&c, &r, None, Registry::Pypi, "mcp_server_time", Some(&time.version)).await.unwrap();
    assert_eq!(exact.version, time.version, "PEP 503 normalised names resolve to the same project");
    let everything =
        pin(&c, &r, None, Registry::Npm, "@modelcontextprotocol/server-everything", None).await.unwrap();
    assert!(!everything.bins.is_empty(), "npm bins are reported: {everything:?}");
}

#[tokio::test]
async fn refuses_missing_packages_and_versions_clearly() {
    let (c, r) = (client(), Registries::default());
    let err = pin(&c, &r, None, Registry::Npm, "catwalk-no-such-package-3f2a1c0e", None).await.unwrap_err();
    assert!(err.contains("was not found"), "{err}");
    let err = pin(&c, &r, None, Registry::Pypi, "mcp-server-time", Some("0.0.0-nope")).await.unwrap_err();
    assert!(err.contains("not found") || err.contains("no version"), "{err}");
    let err = pin(&c, &r, None, Registry::Npm, "foo; rm -rf /", None).await.unwrap_err();
    assert!(err.contains("not a valid npm name"), "{err}");
}
