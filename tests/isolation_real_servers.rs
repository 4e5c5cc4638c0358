//! Real MCP servers from npm and PyPI still install, start and answer inside the sandbox.

use crate::deps;
use crate::isolation_support as support;

use std::path::PathBuf;

use catwalk::runtime::sandbox::{AppSandbox, Identity};
use serde_json::json;
use support::*;

fn sandbox(data: &FakeData, app: &str, readonly: Vec<PathBuf>) -> AppSandbox {
    AppSandbox {
        identity: app.into(),
        home: data.home(app),
        readonly,
        cwd: data.home(app),
        hidden: vec![data.root()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_server_everything_answers_inside_the_sandbox() {
    let data = FakeData::new();
    let node = deps::node22();
    let entry = deps::server_everything();
    let policy = policy(Identity::current(), |_| {}, &[&node]);
    let readonly = vec![deps::deps_dir().join("node"), deps::deps_dir().join("node22")];
    let argv = [node.to_string_lossy().into_owned(), entry.to_string_lossy().into_owned(), "stdio".into()];
    let bridge = sandboxed_bridge(&policy, &sandbox(&data, "everything", readonly), &argv);
    let mut s = Session::open(&bridge.url).await;
    let tools = s.list_tools().await;
    assert!(tools.iter().any(|t| t == "echo"), "server-everything tools: {tools:?}");
    let (is_error, text) = s.call("echo", json!({"message": "from the sandbox"})).await;
    assert!(!is_error && text.contains("from the sandbox"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pypi_mcp_server_time_answers_inside_the_sandbox() {
    let data = FakeData::new();
    let python = deps::venv_python();
    let policy = policy(Identity::current(), |_| {}, &[&python]);
    let venv = deps::deps_dir().join("venv");
    let argv: Vec<String> =
        [python.to_string_lossy().as_ref(), "-m", "mcp_server_time", "--local-timezone", "UTC"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let bridge = sandboxed_bridge(&policy, &sandbox(&data, "time", vec![venv]), &argv);
    let mut s = Session::open(&bridge.url).await;
    let tools = s.list_tools().await;
    assert!(tools.iter().any(|t| t == "get_current_time"), "mcp-server-time tools: {tools:?}");
    let (is_error, text) = s.call("get_current_time", json!({"timezone": "UTC"})).await;
    assert!(!is_error && text.contains("UTC"), "{text}");
}

/// The local runtime's install path for `package` (`npm:NAME` / `pypi:NAME`): a sandboxed toolchain
/// (asserted active), the plan analysed from a one-line catwalk.toml, pinned against the registry, and
/// `install_package` run inside the sandbox.
async fn sandboxed_install(
    data: &FakeData,
    package: &str,
) -> (catwalk::runtime::install::Toolchain, catwalk::runtime::install::Installed) {
    use catwalk::pipeline::analyse::analyse;
    use catwalk::pipeline::registry::{Registries, pin};
    use catwalk::plan::Source;
    use catwalk::runtime::install::{Toolchain, install_package};
    use std::collections::BTreeMap;

    let mut tools = Toolchain::detect(data.root().join("cache"));
    let configured = catwalk::runtime::sandbox::SandboxPolicy::default()
        .with_catwalk_exe(PathBuf::from(env!("CARGO_BIN_EXE_catwalk")));
    tools.set_sandbox(configured).expect("set_sandbox");
    assert!(tools.sandbox.is_active(), "sandbox not active: {:?}", tools.sandbox.warning());
    let manifest = format!("[server]\npackage = \"{package}\"\n");
    let tree: BTreeMap<String, Vec<u8>> = [("catwalk.toml".to_string(), manifest.into_bytes())].into();
    let mut plan = analyse(&tree).unwrap();
    if let Source::Package { registry, name, version } = &mut plan.source {
        let p =
            pin(&reqwest::Client::new(), &Registries::default(), None, *registry, name, version.as_deref())
                .await
                .unwrap_or_else(|e| panic!("pinning {package}: {e}"));
        *version = Some(p.version);
    }
    let progress = catwalk::output::Progress::to_lines(|_| {});
    let installed = install_package(&tools, &data.root().join("installs"), &plan, &progress)
        .await
        .unwrap_or_else(|e| panic!("sandboxed install of {package}: {e}"));
    (tools, installed)
}

/// The local runtime's own path: `install_package` runs pip inside the sandbox (network on, writable:
/// the install dir and the cache only), then the installed server runs sandboxed read-only.
#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_pip_install_then_sandboxed_start() {
    let data = FakeData::new();
    let (tools, installed) = sandboxed_install(&data, "pypi:mcp-server-time").await;
    let mut argv = installed.command.clone();
    argv.extend(["--local-timezone".to_string(), "UTC".to_string()]);
    let bridge =
        sandboxed_bridge(&tools.sandbox, &sandbox(&data, "time", vec![installed.dir.clone()]), &argv);
    let mut s = Session::open(&bridge.url).await;
    let (is_error, text) = s.call("get_current_time", json!({"timezone": "UTC"})).await;
    assert!(!is_error && text.contains("UTC"), "{text}");
}

/// `npm install --prefix DIR PKG@VERSION` runs inside the sandbox too (as the shared install uid when the
/// daemon is root: the files it wrote belong to that uid, not to root).
#[tokio::test(flavor = "multi_thread")]
async fn sandboxed_npm_install() {
    use std::os::unix::fs::MetadataExt;

    let data = FakeData::new();
    let (tools, installed) = sandboxed_install(&data, "npm:@modelcontextprotocol/server-everything").await;
    let entry = PathBuf::from(&installed.command[0]);
    assert!(entry.is_file(), "{entry:?}");
    if Identity::current() == Identity::DropToUid {
        let owner = std::fs::metadata(&entry).unwrap().uid();
        assert_eq!(owner, tools.sandbox.uid_for("install"), "npm did not run as the sandbox's install uid");
    }
}
