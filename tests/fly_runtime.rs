//! The Fly runtime against the local fake Machines API (`fly_fake/`), end to end: every machine is a
//! real `catwalk runner` process that installs a real (locally built) PyPI wheel of the stdio test
//! fixture with pip, then serves it with the bridge; MCP requests go through a real `Gateway` with the
//! route the runtime returns.

use crate::fly_fake;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catwalk::gateway::{AppDirectory, AppLogs, AppRoute, Gateway, GatewaySettings, Mount, NoAudit};
use catwalk::names::AppName;
use catwalk::pipeline::secrets::{Secrets, parse_dotenv};
use catwalk::plan::{Entry, EnvSpec, Language, Plan, Registry, Source, Transport};
use catwalk::runtime::Runtime;
use catwalk::runtime::fly::{FlyConfig, FlyRuntime, Network};
use catwalk::store::{ReleaseRecord, ReleaseStatus};
use fly_fake::{FakeFly, FakeImage};
use serde_json::{Value, json};

const TOKEN: &str = "fm2_test-token";
const SECRET_VALUE: &str = "s3cr3t-value-that-must-not-leak";

struct Env {
    fake: FakeFly,
    rt: Arc<FlyRuntime>,
    _tmp: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Env {
    fn out(&self) -> catwalk::output::Progress {
        let lines = self.lines.clone();
        catwalk::output::Progress::to_lines(move |l: String| lines.lock().unwrap().push(l))
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn machines(&self, app: &str) -> Vec<(String, String, String)> {
        self.fake.machines(&format!("cw-{app}"))
    }
}

/// A PyPI-style wheel of `tests/fixtures/stdio_fixture.py` as the module `catwalk_fixture`.
fn build_wheel(dir: &Path) {
    let script = r#"
import sys, zipfile, os
out, src = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
di = "catwalk_fixture-1.0.0.dist-info"
files = {
  "catwalk_fixture/__init__.py": "",
  "catwalk_fixture/__main__.py": open(src).read(),
  di + "/METADATA": "Metadata-Version: 2.1\nName: catwalk-fixture\nVersion: 1.0.0\n",
  di + "/WHEEL": "Wheel-Version: 1.0\nGenerator: catwalk-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[di + "/RECORD"] = "".join(k + ",,\n" for k in files) + di + "/RECORD,,\n"
with zipfile.ZipFile(os.path.join(out, "catwalk_fixture-1.0.0-py3-none-any.whl"), "w") as z:
    for k, v in files.items():
        z.writestr(k, v)
"#;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stdio_fixture.py");
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .arg(&fixture)
        .status()
        .expect("python3 is needed to build the fixture wheel");
    assert!(status.success(), "building the fixture wheel failed");
}

async fn setup(tune: impl FnOnce(&mut FlyConfig)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bin = root.join("image/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_catwalk"), bin.join("catwalk")).unwrap();
    build_wheel(&root.join("wheels"));
    for d in ["srv", "home", "empty-index"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut env = BTreeMap::new();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    env.insert("PATH".into(), format!("{}:/usr/local/bin:/usr/bin:/bin", s(&bin)));
    env.insert("HOME".into(), s(&root.join("home")));
    env.insert("LANG".into(), "C.UTF-8".into());
    env.insert("CATWALK_RUNNER_DIR".into(), s(&root.join("srv")));
    // The "registry" is a local wheel directory: installs at boot work offline.
    env.insert("PIP_INDEX_URL".into(), format!("file://{}", s(&root.join("empty-index"))));
    env.insert("PIP_FIND_LINKS".into(), s(&root.join("wheels")));
    let fake = FakeFly::start(TOKEN, &["personal"], FakeImage { bin_dir: bin, env }).await;
    let token_file = root.join("fly-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut cfg = FlyConfig {
        api_url: fake.url.clone(),
        token_file: Some(token_file),
        machine_url_template: format!("{}/6pn/{{machine_id}}{{path}}", fake.url),
        flycast_url_template: format!("{}/flycast/{{app}}{{path}}", fake.url),
        image: "registry.fly.io/catwalk-runner:test".into(),
        start_timeout: Duration::from_secs(60),
        boot_timeout: Duration::from_secs(120),
        health_timeout: Duration::from_secs(60),
        requests_per_second: 5,
        burst: 5,
        retry_min_delay: Duration::from_millis(50),
        ..FlyConfig::default()
    };
    tune(&mut cfg);
    let rt = Arc::new(FlyRuntime::new(cfg, [7u8; 32]).expect("runtime"));
    Env { fake, rt, _tmp: tmp, lines: Arc::default() }
}

fn release(app: &str, version: u32) -> ReleaseRecord {
    ReleaseRecord {
        app: app.into(),
        version,
        commit: format!("{version:040}"),
        plan: Plan {
            manifest: "catwalk.toml".into(),
            language: Language::Python,
            source: Source::Package {
                registry: Registry::Pypi,
                name: "catwalk-fixture".into(),
                version: Some("1.0.0".into()),
            },
            entry: Entry::PythonModule { module: "catwalk_fixture".into() },
            args: Vec::new(),
            transport: Transport::Stdio,
            env: vec![
                EnvSpec {
                    name: "GREETING".into(),
                    required: false,
                    secret: false,
                    description: None,
                    value: Some("hello".into()),
                    description_source: None,
                },
                EnvSpec {
                    name: "API_KEY".into(),
                    required: true,
                    secret: true,
                    description: None,
                    value: None,
                    description_source: None,
                },
            ],
            shared: false,
            install_scripts: false,
            runtime: Some(catwalk::plan::RuntimeKind::Fly),
            allowed_origins: Vec::new(),
            no_network: false,
            auth: Default::default(),
            warm: None,
            machines: None,
        },
        status: ReleaseStatus::Deploying,
        created_at: 0,
        pusher: "test".into(),
        secrets: BTreeMap::new(),
        runtime: catwalk::plan::RuntimeKind::Fly,
        timings: Vec::new(),
        introspection: None,
        error: None,
        rollback_of: None,
        install_dir: None,
        command: Vec::new(),
        secrets_key: Default::default(),
    }
}

fn secrets() -> Secrets {
    parse_dotenv(&format!("API_KEY={SECRET_VALUE}\n")).unwrap()
}

/// A real gateway in front of `route` (what the daemon does), on 127.0.0.1:0; returns its URL.
async fn gateway_for(route: AppRoute) -> (String, tokio_util::sync::CancellationToken) {
    struct One(Arc<AppRoute>);
    impl AppDirectory for One {
        fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
            (app == "t").then(|| self.0.clone())
        }
    }
    let cfg = GatewaySettings {
        mount: Mount::Single { path: "/mcp".into(), app: "t".into() },
        ..Default::default()
    };
    let gw = Gateway::new(
        cfg,
        Arc::new(One(Arc::new(route))),
        None,
        Arc::new(NoAudit),
        Arc::new(AppLogs::new(100)),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move { gw.serve(listener, s2).await });
    (url, stop)
}

/// initialize → notifications/initialized → tools/call over Streamable HTTP; returns the call's result.
async fn call_tool(url: &str, bearer: Option<&str>, tool: &str, args: Value) -> Result<Value, String> {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |body: Value, session: Option<&str>| {
        let mut r = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = session {
            r = r.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
        }
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r
    };
    let answer = |text: String| -> Result<Value, String> {
        let json_text =
            match text.lines().find_map(|l| l.strip_prefix("data: ").filter(|d| d.contains("\"id\""))) {
                Some(d) => d.to_string(),
                None => text,
            };
        serde_json::from_str(&json_text).map_err(|e| format!("not JSON: {e}: {json_text}"))
    };
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let r = post(init, None).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("initialize: HTTP {}", r.status()));
    }
    let session = r.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    answer(r.text().await.map_err(|e| e.to_string())?)?;
    post(json!({"jsonrpc":"2.0","method":"notifications/initialized"}), session.as_deref())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":tool,"arguments":args}});
    let r = post(call, session.as_deref()).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("tools/call: HTTP {}", r.status()));
    }
    let v = answer(r.text().await.map_err(|e| e.to_string())?)?;
    v.get("result").cloned().ok_or(format!("no result: {v}"))
}

fn text_of(result: &Value) -> String {
    result.pointer("/content/0/text").and_then(Value::as_str).unwrap_or_default().to_string()
}

async fn deploy_live(env: &Env, app: &str, version: u32, live: Option<u32>) -> catwalk::runtime::fly::Staged {
    let out = env.out();
    let staged = match env.rt.deploy(&release(app, version), &secrets(), live, &out).await {
        Ok(s) => s,
        Err(e) => {
            let stderr: Vec<String> = env
                .machines(app)
                .iter()
                .map(|(id, _, _)| env.fake.stderr(&format!("cw-{app}"), id))
                .collect();
            panic!(
                "deploy v{version} failed: {e}\noutput:\n{}\nmachine stderr:\n{}",
                env.output(),
                stderr.join("\n---\n")
            );
        }
    };
    env.rt.commit(&AppName::parse(app).unwrap(), &staged, &out).await.expect("commit");
    staged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deploy_serves_mcp_with_secrets_outside_machine_config() {
    let env = setup(|_| {}).await;
    let staged = deploy_live(&env, "time-tools", 1, None).await;
    let out = env.output();
    assert!(out.contains("-----> fly: app cw-time-tools, secrets version 1, machine "), "{out}");
    assert!(out.contains("MCP healthy in"), "{out}");
    assert!(staged.introspection.tools.contains(&"env".to_string()), "{:?}", staged.introspection);
    assert_eq!(env.machines("time-tools").len(), 1);

    // Through a real gateway with the returned route: the server sees the secret and the plain value.
    let (url, stop) = gateway_for(staged.route.clone()).await;
    let result = call_tool(&url, None, "env", json!({})).await.expect("MCP call through the gateway");
    let server_env: Value = serde_json::from_str(&text_of(&result)).expect("env tool answers JSON");
    assert_eq!(server_env["API_KEY"], SECRET_VALUE);
    assert_eq!(server_env["GREETING"], "hello");
    assert!(server_env.get("CATWALK_PLAN").is_none(), "only named variables reach the server");
    let echo = call_tool(&url, None, "echo", json!({"text": "hi fly"})).await.unwrap();
    assert_eq!(text_of(&echo), "hi fly");
    stop.cancel();

    // The machine's bridge refuses callers without the per-app credential.
    let catwalk::gateway::Backend::Http { targets } = &staged.route.backend else { panic!("http route") };
    let machine_url = &targets[0].url;
    let err = call_tool(machine_url, None, "echo", json!({"text": "x"})).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
    let err = call_tool(machine_url, Some("another-tenants-token"), "echo", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert!(err.contains("401"), "{err}");

    // Secrets only ever travel in the secrets call, never in a machine config.
    let requests = env.fake.requests();
    for r in &requests {
        if r.path.ends_with("/secrets") && r.method == "POST" {
            continue;
        }
        assert!(!r.body.contains(SECRET_VALUE), "secret value in {} {}", r.method, r.path);
        assert!(
            !r.body.contains(&env.rt.bridge_token("time-tools")),
            "bridge token in {} {}",
            r.method,
            r.path
        );
    }
    let create =
        requests.iter().find(|r| r.method == "POST" && r.path.ends_with("/machines")).expect("a create");
    let body: Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body["skip_service_registration"], true);
    assert_eq!(body["min_secrets_version"], 1);
    assert!(body["config"]["env"].get("API_KEY").is_none());
    assert_eq!(body["config"]["metadata"]["catwalk_app"], "time-tools");
    assert_eq!(body["config"]["metadata"]["catwalk_release"], "1");
    assert_eq!(body["config"]["metadata"]["catwalk_launch"].as_str().map(str::len), Some(26));
    assert_eq!(body["config"]["checks"]["bridge"]["interval"], "15s");
    assert_eq!(body["config"]["guest"]["cpu_kind"], "shared");
    // The install survives restarts and scale-to-zero stops (no reinstall at every wake).
    assert_eq!(body["config"]["rootfs"]["persist"], "always");
    let app_create =
        requests.iter().find(|r| r.method == "POST" && r.path == "/v1/apps").expect("app create");
    assert!(app_create.body.contains("\"org_slug\":\"personal\""), "{}", app_create.body);
    // /wait answered 408 at least once in the fake only if the boot took longer than its cap; either way
    // every wait went through the loop without failing the deploy.
    assert!(requests.iter().any(|r| r.path.contains("/wait")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_is_blue_green() {
    let env = setup(|_| {}).await;
    let v1 = deploy_live(&env, "bg", 1, None).await;
    let out = env.out();
    let v2 = env.rt.deploy(&release("bg", 2), &secrets(), Some(1), &out).await.expect("stage v2");
    // Staged and healthy, not yet committed: the old machine still runs and serves.
    let machines = env.machines("bg");
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert!(env.fake.process_alive("cw-bg", &v1.machines[0].id));
    let (url, stop) = gateway_for(v1.route.clone()).await;
    assert_eq!(text_of(&call_tool(&url, None, "echo", json!({"text": "old"})).await.unwrap()), "old");
    stop.cancel();
    assert_eq!(v2.old_machines, vec![v1.machines[0].id.clone()]);
    env.rt.commit(&AppName::parse("bg").unwrap(), &v2, &out).await.expect("commit v2");
    let machines = env.machines("bg");
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].0, v2.machines[0].id);
    assert_eq!(machines[0].2, "2");
    assert!(env.output().contains(&format!("old machine {} stopped and destroyed", &v1.machines[0].id[..8])));
    // The old machine was retired under a lease, with the nonce on the destroy.
    let requests = env.fake.requests();
    let destroy = requests
        .iter()
        .find(|r| {
            r.method == "DELETE"
                && r.path.starts_with(&format!("/v1/apps/cw-bg/machines/{}?", v1.machines[0].id))
        })
        .expect("destroy of the old machine");
    assert!(destroy.lease.is_some(), "destroy without lease nonce");
    let (url, stop) = gateway_for(v2.route.clone()).await;
    assert_eq!(text_of(&call_tool(&url, None, "echo", json!({"text": "new"})).await.unwrap()), "new");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_release_is_rejected_and_cleaned_up() {
    let env = setup(|_| {}).await;
    let v1 = deploy_live(&env, "crashy", 1, None).await;
    env.fake.faults(|f| f.crash_loop_next = true);
    let out = env.out();
    let err = env.rt.deploy(&release("crashy", 2), &secrets(), Some(1), &out).await.unwrap_err();
    assert!(err.contains("exit code 3") || err.contains("exited"), "{err}");
    let output = env.output();
    assert!(output.contains("destroyed (release failed)"), "{output}");
    // Only the old machine is left, and it still serves.
    let machines = env.machines("crashy");
    assert_eq!(machines, vec![(v1.machines[0].id.clone(), "started".to_string(), "1".to_string())]);
    let (url, stop) = gateway_for(v1.route.clone()).await;
    assert_eq!(text_of(&call_tool(&url, None, "echo", json!({"text": "still"})).await.unwrap()), "still");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_health_gate_destroys_the_new_machine() {
    // A server that never answers MCP: the health gate times out, however fast or loaded the machine.
    let env = setup(|c| c.health_timeout = Duration::from_secs(3)).await;
    let out = env.out();
    let mut sick = release("sick", 1);
    sick.plan.env.push(EnvSpec {
        name: "FIXTURE_SILENT".into(),
        required: false,
        secret: false,
        description: None,
        value: Some("1".into()),
        description_source: None,
    });
    let err = env.rt.deploy(&sick, &secrets(), None, &out).await.unwrap_err();
    assert!(err.contains("failed the MCP health check"), "{err}");
    assert!(env.machines("sick").is_empty(), "{:?}", env.machines("sick"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_deploy_is_cleaned_up_by_the_next() {
    let env = setup(|_| {}).await;
    let v1 = deploy_live(&env, "intr", 1, None).await;
    // A deploy of v2 was interrupted after creating its machine (daemon killed).
    let mut config = serde_json::to_value(&v1.machines[0].config).unwrap();
    config["metadata"]["catwalk_release"] = json!("2");
    config["metadata"]["catwalk_launch"] = json!("01INTERRUPTED0000000000000");
    let stray = env.fake.plant_machine("cw-intr", config);
    assert_eq!(env.machines("intr").len(), 2);
    let v3 = deploy_live(&env, "intr", 3, Some(1)).await;
    let output = env.output();
    assert!(
        output
            .contains(&format!("removed machine {} left by an interrupted deploy (release v2)", &stray[..8])),
        "{output}"
    );
    let machines = env.machines("intr");
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert_eq!(machines[0].0, v3.machines[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_survive_rate_limits_timeouts_and_held_leases() {
    let env = setup(|_| {}).await;
    // 429s on the first calls, a create whose answer is lost (408 after the machine was made).
    env.fake.faults(|f| {
        f.rate_limit_next = 3;
        f.timeout_after_create = 1;
    });
    let v1 = deploy_live(&env, "flaky", 1, None).await;
    let machines = env.machines("flaky");
    assert_eq!(machines.len(), 1, "the lost create answer must not make a second machine: {machines:?}");
    assert_eq!(machines[0].0, v1.machines[0].id);
    let requests = env.fake.requests();
    assert!(requests.iter().filter(|r| r.status == 429).count() >= 3);
    assert_eq!(
        requests.iter().filter(|r| r.method == "POST" && r.path == "/v1/apps/cw-flaky/machines").count(),
        1
    );

    // Retiring the old machine waits out a lease someone else holds (409).
    env.fake.faults(|f| f.foreign_lease = 2);
    let v2 = deploy_live(&env, "flaky", 2, Some(1)).await;
    assert_eq!(
        env.machines("flaky").iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
        vec![v2.machines[0].id.clone()]
    );
    assert!(
        env.fake.requests().iter().filter(|r| r.status == 409 && r.path.ends_with("/lease")).count() >= 2
    );

    // No capacity is a clear failure, not an endless retry, and leaves nothing behind.
    env.fake.faults(|f| f.capacity_failures = 1);
    let out = env.out();
    let err = env.rt.deploy(&release("flaky", 3), &secrets(), Some(2), &out).await.unwrap_err();
    assert!(err.contains("412") && err.contains("capacity") && err.contains("fly-request-id"), "{err}");
    assert_eq!(env.machines("flaky").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_then_wake_on_demand() {
    let env = setup(|_| {}).await;
    let v1 = deploy_live(&env, "sleepy", 1, None).await;
    env.rt.scale_to_zero("sleepy").await.expect("scale to zero");
    assert_eq!(env.machines("sleepy")[0].1, "stopped");
    assert!(!env.fake.process_alive("cw-sleepy", &v1.machines[0].id));
    let (url, stop) = gateway_for(v1.route.clone()).await;
    assert!(
        call_tool(&url, None, "echo", json!({"text": "zzz"})).await.is_err(),
        "a stopped machine cannot answer"
    );
    env.rt.ensure_started("sleepy").await.expect("wake");
    assert_eq!(env.machines("sleepy")[0].1, "started");
    assert_eq!(text_of(&call_tool(&url, None, "echo", json!({"text": "awake"})).await.unwrap()), "awake");
    // A second wake of a running machine is a no-op.
    env.rt.ensure_started("sleepy").await.expect("already started");
    stop.cancel();
    let status = env.rt.status("sleepy", 5).await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].release, Some(1));
    assert!(status[0].events.iter().any(|e| e.text.starts_with("start")), "{:?}", status[0].events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_deletes_the_fly_app() {
    let env = setup(|_| {}).await;
    let v1 = deploy_live(&env, "gone", 1, None).await;
    assert!(env.fake.app_exists("cw-gone"));
    env.rt.destroy(&AppName::parse("gone").unwrap()).await.expect("destroy");
    assert!(!env.fake.app_exists("cw-gone"));
    // Nothing answers at the old address any more.
    let (url, stop) = gateway_for(v1.route.clone()).await;
    assert!(call_tool(&url, None, "echo", json!({"text": "x"})).await.is_err());
    stop.cancel();
    assert!(env.rt.status("gone", 5).await.unwrap().is_empty());
    // Destroying again is fine (the app is already gone).
    env.rt.destroy(&AppName::parse("gone").unwrap()).await.expect("destroy twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_name_taken_and_bad_token_are_explained() {
    let env = setup(|_| {}).await;
    env.fake.add_foreign_app("cw-taken");
    let out = env.out();
    let err = env.rt.deploy(&release("taken", 1), &secrets(), None, &out).await.unwrap_err();
    assert!(err.contains("taken by another organization") && err.contains("app_prefix"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("t");
    std::fs::write(&token_file, "wrong-token").unwrap();
    let cfg = FlyConfig { token_file: Some(token_file), ..env.rt.cfg.clone() };
    let rt = FlyRuntime::new(cfg, [1u8; 32]).unwrap();
    let err = rt.deploy(&release("x", 1), &secrets(), None, &out).await.unwrap_err();
    assert!(err.contains("401") && err.contains("token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flycast_pins_the_instance_and_autostarts() {
    let env = setup(|c| c.network = Network::Flycast).await;
    let v1 = deploy_live(&env, "fc", 1, None).await;
    let catwalk::gateway::Backend::Http { targets } = &v1.route.backend else { panic!("http route") };
    let (url, headers) = (&targets[0].url, &targets[0].headers);
    assert!(url.ends_with("/flycast/cw-fc/mcp"), "{url}");
    assert!(
        headers.iter().any(|(k, v)| k == "fly-force-instance-id" && v == &v1.machines[0].id),
        "{headers:?}"
    );
    let create = env
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/machines"))
        .unwrap();
    let body: Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body["config"]["services"][0]["autostop"], "stop");
    assert_eq!(body["config"]["services"][0]["autostart"], true);
    assert!(env.fake.requests().iter().any(|r| r.path.ends_with(&format!("{}/uncordon", v1.machines[0].id))));
    let (gw, stop) = gateway_for(v1.route.clone()).await;
    assert_eq!(
        text_of(&call_tool(&gw, None, "echo", json!({"text": "via flycast"})).await.unwrap()),
        "via flycast"
    );
    // Scaled to zero, the next request starts the machine through fly-proxy (autostart).
    env.rt.scale_to_zero("fc").await.unwrap();
    assert_eq!(env.machines("fc")[0].1, "stopped");
    assert_eq!(text_of(&call_tool(&gw, None, "echo", json!({"text": "woke"})).await.unwrap()), "woke");
    stop.cancel();
    // Blue/green over Flycast: the old machine is cordoned before it is retired.
    let v2 = deploy_live(&env, "fc", 2, Some(1)).await;
    assert!(env.fake.requests().iter().any(|r| r.path.ends_with(&format!("{}/cordon", v1.machines[0].id))));
    assert_eq!(
        env.machines("fc").iter().map(|m| m.0.clone()).collect::<Vec<_>>(),
        vec![v2.machines[0].id.clone()]
    );
}
