//! Installing real packages from npm and PyPI, and re-using an identical install.

use catwalk::pipeline::analyse::{analyse, parse_package_spec};
use catwalk::pipeline::registry::{Registries, pin};
use catwalk::plan::Source;
use catwalk::runtime::install::{Toolchain, install_package};
use std::collections::BTreeMap;

async fn pinned_plan(manifest: &str) -> catwalk::plan::Plan {
    let tree: BTreeMap<String, Vec<u8>> = [("catwalk.toml".to_string(), manifest.as_bytes().to_vec())].into();
    let mut plan = analyse(&tree).unwrap();
    if let Source::Package { registry, name, version } = &mut plan.source {
        let client = reqwest::Client::new();
        let p =
            pin(&client, &Registries::default(), None, *registry, name, version.as_deref()).await.unwrap();
        *version = Some(p.version);
    }
    plan
}

#[tokio::test]
async fn installs_a_pypi_package_once_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Toolchain::detect(dir.path().join("cache"));
    let plan = pinned_plan("[server]\npackage = \"pypi:mcp-server-time\"\n").await;
    let progress = catwalk::output::Progress::to_lines(|_| {});
    let first = install_package(&tools, &dir.path().join("installs"), &plan, &progress).await.unwrap();
    assert!(!first.reused);
    assert!(std::path::Path::new(&first.command[0]).is_file(), "{:?}", first.command);
    let again = install_package(&tools, &dir.path().join("installs"), &plan, &progress).await.unwrap();
    assert!(again.reused, "an identical pinned install is re-used");
    assert_eq!(again.command, first.command);
}

#[tokio::test]
async fn installs_an_npm_package_without_lifecycle_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Toolchain::detect(dir.path().join("cache"));
    let plan = pinned_plan("[server]\npackage = \"npm:@modelcontextprotocol/server-everything\"\n").await;
    let progress = catwalk::output::Progress::to_lines(|_| {});
    let installed = install_package(&tools, &dir.path().join("installs"), &plan, &progress).await.unwrap();
    assert!(installed.command[0].contains("server-everything"), "{:?}", installed.command);
    assert!(std::path::Path::new(&installed.command[0]).is_file());
}

#[test]
fn spec_parsing_is_checked_before_installing() {
    assert!(parse_package_spec("npm:foo; rm -rf /").is_err());
}
