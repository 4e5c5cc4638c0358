//! A local fake of the Fly Machines API for tests, faithful where catwalk depends on it.
//!
//! Modelled: apps in orgs (422 name taken, 404 for apps of other orgs, 403 for foreign orgs, 401 for a
//! bad token), secrets with versions, machines with their states (created → starting → started →
//! stopping → stopped → destroyed, failed) and events, `/wait` answering 408 after its (short, in
//! tests) timeout, leases (409 while held by another nonce, nonce header checks on mutations), 429
//! per action per target above a rate, and injectable faults: 408 after a successful create, 412
//! insufficient capacity, 429 bursts, foreign-held leases, and a crash-looping machine.
//!
//! Each started machine is a real local process running its `init.cmd` from a fake "image" (a bin dir
//! with the real `catwalk` binary and an environment), in its own process group, with the app's secrets
//! in its environment. Its `--listen 0.0.0.0:PORT` becomes `127.0.0.1:0`; the fake reads the bound
//! address from the bridge's "listening on" line. The same server is the machines' network:
//! `/6pn/<machine_id>/...` forwards to that machine (502 when it is not running), and
//! `/flycast/<app>/...` forwards to the machine named by `fly-force-instance-id`, starting a stopped
//! machine whose service has autostart. Every API request is recorded for assertions.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

mod network;
use network::network;

pub(crate) type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The "image" every machine runs: `catwalk` on PATH plus an environment (like a Dockerfile's ENV).
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub bin_dir: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// Faults to inject; counters are consumed one per matching request.
#[derive(Default, Debug)]
pub struct Faults {
    /// The next N machine creates create the machine, then answer 408.
    pub timeout_after_create: u32,
    /// The next N machine creates answer 412 insufficient capacity.
    pub capacity_failures: u32,
    /// The next N API requests (any) answer 429.
    pub rate_limit_next: u32,
    /// The next N lease acquisitions answer 409 (held by someone else).
    pub foreign_lease: u32,
    /// The next created machine's process exits with status 3 at once (and is restarted by policy).
    pub crash_loop_next: bool,
    /// Every API request answers 500 (Fly is down) until cleared.
    pub outage: bool,
}

/// One recorded API request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
    pub lease: Option<String>,
    pub status: u16,
}

struct FakeMachine {
    id: String,
    name: String,
    region: String,
    state: String,
    instance_id: String,
    private_ip: String,
    config: Value,
    skip_service_registration: bool,
    events: Vec<Value>,
    lease: Option<(String, Instant)>,
    cordoned: bool,
    crash: bool,
    restarts: u32,
    /// Incremented per launch; a process exit of an older launch is ignored.
    generation: u64,
    pid: Option<i32>,
    addr: Option<SocketAddr>,
    stderr: Vec<String>,
}

struct FakeApp {
    org: String,
    network: String,
    secrets: BTreeMap<String, String>,
    secrets_version: u64,
    machines: BTreeMap<String, FakeMachine>,
}

pub(crate) struct State {
    apps: BTreeMap<String, FakeApp>,
    /// App names owned by other organizations.
    foreign_apps: HashSet<String>,
    orgs: HashSet<String>,
    faults: Faults,
    requests: Vec<Recorded>,
    rate: HashMap<String, Vec<Instant>>,
    next_id: u64,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    image: FakeImage,
    token: String,
    /// Longest a `/wait` holds before 408 (Fly: 60 s; tests: short).
    wait_cap: Duration,
    /// Requests allowed per action per target per second before 429.
    rate_limit: usize,
    http: reqwest::Client,
}

/// The running fake. Dropping it kills every machine process.
pub struct FakeFly {
    pub url: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl FakeFly {
    /// Starts the fake on 127.0.0.1 (port 0). `token` is the only accepted API token; `orgs` are the
    /// organizations it may use.
    pub async fn start(token: &str, orgs: &[&str], image: FakeImage) -> FakeFly {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Fly API");
        let addr = listener.local_addr().expect("fake address");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                apps: BTreeMap::new(),
                foreign_apps: HashSet::new(),
                orgs: orgs.iter().map(|s| s.to_string()).collect(),
                faults: Faults::default(),
                requests: Vec::new(),
                rate: HashMap::new(),
                next_id: 1,
            }),
            image,
            token: token.to_string(),
            wait_cap: Duration::from_millis(700),
            rate_limit: 8,
            http: reqwest::Client::builder().no_proxy().build().expect("proxy client"),
        });
        let stop = CancellationToken::new();
        let (i2, s2) = (inner.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = s2.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let inner = i2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(inner, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeFly { url: format!("http://{addr}"), addr, inner, stop }
    }

    /// Mutates the fault plan.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.inner.state.lock().unwrap().faults);
    }

    /// Marks an app name as owned by another organization.
    pub fn add_foreign_app(&self, name: &str) {
        self.inner.state.lock().unwrap().foreign_apps.insert(name.to_string());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    pub fn app_exists(&self, app: &str) -> bool {
        self.inner.state.lock().unwrap().apps.contains_key(app)
    }

    /// `(id, state, catwalk_release)` of the app's machines that are not destroyed.
    pub fn machines(&self, app: &str) -> Vec<(String, String, String)> {
        let st = self.inner.state.lock().unwrap();
        st.apps
            .get(app)
            .map(|a| {
                a.machines
                    .values()
                    .filter(|m| m.state != "destroyed")
                    .map(|m| {
                        let rel = m.config.pointer("/metadata/catwalk_release").and_then(Value::as_str);
                        (m.id.clone(), m.state.clone(), rel.unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the machine's process is alive (signal 0).
    pub fn process_alive(&self, app: &str, id: &str) -> bool {
        let st = self.inner.state.lock().unwrap();
        let pid = st.apps.get(app).and_then(|a| a.machines.get(id)).and_then(|m| m.pid);
        pid.is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
    }

    /// The machine's process stderr (for failure messages).
    pub fn stderr(&self, app: &str, id: &str) -> String {
        let st = self.inner.state.lock().unwrap();
        st.apps.get(app).and_then(|a| a.machines.get(id)).map(|m| m.stderr.join("\n")).unwrap_or_default()
    }

    /// Creates a machine directly (as an earlier, interrupted catwalk deploy would have).
    pub fn plant_machine(&self, app: &str, config: Value) -> String {
        let mut st = self.inner.state.lock().unwrap();
        let id = new_id(&mut st);
        let m = new_machine(&id, "planted", "iad", config, false);
        st.apps.get_mut(app).expect("plant into an existing app").machines.insert(id.clone(), m);
        launch(&self.inner, &mut st, app, &id);
        id
    }
}

impl Drop for FakeFly {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(st) = self.inner.state.lock() {
            for app in st.apps.values() {
                for m in app.machines.values() {
                    if let Some(pid) = m.pid {
                        kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

fn kill_group(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
}

fn new_id(st: &mut State) -> String {
    st.next_id += 1;
    format!("{:014x}", 0x148e_0000_0000u64 + st.next_id * 7919)
}

fn ulid_like(n: u64) -> String {
    format!("01FAKE{n:020}")
}

fn new_machine(id: &str, name: &str, region: &str, config: Value, skip: bool) -> FakeMachine {
    FakeMachine {
        id: id.to_string(),
        name: name.to_string(),
        region: region.to_string(),
        state: "created".into(),
        instance_id: ulid_like(1),
        private_ip: format!("fdaa:0:1:a7b:{}::2", &id[id.len() - 4..]),
        config,
        skip_service_registration: skip,
        events: Vec::new(),
        lease: None,
        cordoned: false,
        crash: false,
        restarts: 0,
        generation: 0,
        pid: None,
        addr: None,
        stderr: Vec::new(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn event(m: &mut FakeMachine, kind: &str, status: &str, request: Value) {
    let id = ulid_like(m.events.len() as u64 + 1);
    m.events.insert(
        0,
        json!({"id": id, "type": kind, "status": status, "source": "flyd", "timestamp": now_ms(), "request": request}),
    );
}

/// created/stopped → starting → started: spawns the machine's process.
pub(crate) fn launch(inner: &Arc<Inner>, st: &mut State, app: &str, id: &str) {
    let Some(a) = st.apps.get_mut(app) else { return };
    let secrets = a.secrets.clone();
    let Some(m) = a.machines.get_mut(id) else { return };
    m.state = "starting".into();
    event(m, "launch", "created", json!({}));
    m.generation += 1;
    m.addr = None;
    let cmd: Vec<String> = m
        .config
        .pointer("/init/cmd")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let argv: Vec<String> = if m.crash {
        vec!["/bin/sh".into(), "-c".into(), "echo 'Error: boom' >&2; exit 3".into()]
    } else {
        cmd.iter()
            .map(|a| if a.starts_with("0.0.0.0:") { "127.0.0.1:0".to_string() } else { a.clone() })
            .collect()
    };
    let Some(program) = argv.first() else {
        m.state = "failed".into();
        event(m, "exit", "failed", json!({"exit_event": {"exit_code": 127, "error": "no init.cmd"}}));
        return;
    };
    let program =
        if program.contains('/') { PathBuf::from(program) } else { inner.image.bin_dir.join(program) };
    let mut c = tokio::process::Command::new(&program);
    c.args(&argv[1..]).env_clear().envs(&inner.image.env);
    // Each machine has a root file system of its own (kept across its restarts): the runner's directory.
    if let Some(dir) = inner.image.env.get("CATWALK_RUNNER_DIR") {
        c.env("CATWALK_RUNNER_DIR", PathBuf::from(dir).join(id));
    }
    if let Some(env) = m.config.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            c.env(k, v.as_str().unwrap_or_default());
        }
    }
    c.envs(&secrets).env("FLY_MACHINE_ID", id).env("FLY_APP_NAME", app);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c.process_group(0).kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            m.state = "failed".into();
            event(m, "exit", "failed", json!({"exit_event": {"exit_code": 127, "error": e.to_string()}}));
            return;
        }
    };
    m.pid = child.id().map(|p| p as i32);
    m.state = "started".into();
    event(m, "start", "started", json!({}));
    let generation = m.generation;
    let stderr = child.stderr.take();
    let (inner, app, id) = (inner.clone(), app.to_string(), id.to_string());
    tokio::spawn(async move {
        if let Some(stderr) = stderr {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let (inner, app, id) = (inner.clone(), app.clone(), id.clone());
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut st = inner.state.lock().unwrap();
                    let Some(m) = st.apps.get_mut(&app).and_then(|a| a.machines.get_mut(&id)) else { return };
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        let addr = rest.split('/').next().unwrap_or_default();
                        m.addr = addr.parse().ok();
                    }
                    if m.stderr.len() < 400 {
                        m.stderr.push(line);
                    }
                }
            });
        }
        let status = child.wait().await;
        let code = status.ok().and_then(|s| s.code()).unwrap_or(-1);
        let mut st = inner.state.lock().unwrap();
        let Some(m) = st.apps.get_mut(&app).and_then(|a| a.machines.get_mut(&id)) else { return };
        if m.generation != generation || m.state != "started" {
            return; // stopped or relaunched on request
        }
        event(m, "exit", "stopped", json!({"exit_event": {"exit_code": code, "requested_stop": false}}));
        m.pid = None;
        m.addr = None;
        let policy =
            m.config.pointer("/restart/policy").and_then(Value::as_str).unwrap_or("on-failure").to_string();
        let max = m.config.pointer("/restart/max_retries").and_then(Value::as_u64).unwrap_or(10) as u32;
        if (policy == "always" || (policy == "on-failure" && code != 0)) && m.restarts < max {
            m.restarts += 1;
            event(m, "restart", "starting", json!({}));
            launch(&inner, &mut st, &app, &id);
        } else {
            m.state = "stopped".into();
        }
    });
}

/// started → stopping → stopped: SIGTERM to the process group, SIGKILL after 3 s.
fn stop(m: &mut FakeMachine) {
    m.generation += 1;
    if let Some(pid) = m.pid.take() {
        kill_group(pid, nix::sys::signal::Signal::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        });
    }
    if m.state == "started" || m.state == "starting" {
        event(m, "exit", "stopped", json!({"exit_event": {"exit_code": 0, "requested_stop": true}}));
    }
    m.addr = None;
    m.state = "stopped".into();
}

fn machine_json(m: &FakeMachine) -> Value {
    json!({
        "id": m.id, "name": m.name, "state": m.state, "region": m.region, "instance_id": m.instance_id,
        "private_ip": m.private_ip, "config": m.config, "events": m.events.iter().take(10).collect::<Vec<_>>(),
        "image_ref": {"registry": "registry.fly.io", "repository": "catwalk-runner", "tag": "test"},
        "host_status": "ok", "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    })
}

fn reply(status: u16, body: Value, request_id: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("fly-request-id", request_id.parse().unwrap());
    r
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s)).map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn err(status: u16, msg: &str, rid: &str) -> Response<Body> {
    reply(status, json!({"error": msg}), rid)
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/6pn/") {
        return network(inner, req, rest, false).await;
    }
    if let Some(rest) = path.strip_prefix("/flycast/") {
        return network(inner, req, rest, true).await;
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let auth = header("authorization");
    let lease = header("fly-machine-lease-nonce");
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body = String::from_utf8_lossy(&body).to_string();
    let rid = {
        let mut st = inner.state.lock().unwrap();
        st.next_id += 1;
        format!("01FAKEREQ{:010}-iad", st.next_id)
    };
    let resp = api(&inner, &method, &path, &query, auth.as_deref(), lease.as_deref(), &body, &rid).await;
    inner.state.lock().unwrap().requests.push(Recorded {
        method,
        path: if query.is_empty() { path } else { format!("{path}?{query}") },
        body,
        lease,
        status: resp.status().as_u16(),
    });
    resp
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
}

#[allow(clippy::too_many_arguments)]
async fn api(
    inner: &Arc<Inner>,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    lease: Option<&str>,
    body: &str,
    rid: &str,
) -> Response<Body> {
    let ok_auth =
        auth.is_some_and(|a| a == format!("Bearer {}", inner.token) || a == format!("FlyV1 {}", inner.token));
    if !ok_auth {
        return err(401, "Authenticate: token validation error", rid);
    }
    let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').filter(|s| !s.is_empty()).collect();
    let action = format!(
        "{method} {}",
        segs.iter().enumerate().map(|(i, s)| if i % 2 == 1 { "*" } else { s }).collect::<Vec<_>>().join("/")
    );
    let target = segs.get(3).or(segs.get(1)).copied().unwrap_or("").to_string();
    {
        let mut st = inner.state.lock().unwrap();
        if st.faults.outage {
            return err(500, "injected outage", rid);
        }
        if st.faults.rate_limit_next > 0 {
            st.faults.rate_limit_next -= 1;
            return err(429, "rate limit exceeded", rid);
        }
        // /wait holds requests open; it is rate limited like the rest.
        let key = format!("{action} {target}");
        let now = Instant::now();
        let hits = st.rate.entry(key).or_default();
        hits.retain(|t| now.duration_since(*t) < Duration::from_secs(1));
        if hits.len() >= inner.rate_limit {
            let mut r = err(429, "rate limit exceeded: too many requests for this action", rid);
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return r;
        }
        hits.push(now);
    }
    let json_body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match (method, segs.as_slice()) {
        ("POST", ["apps"]) => {
            let name =
                json_body.get("name").or(json_body.get("app_name")).and_then(Value::as_str).unwrap_or("");
            let org = json_body.get("org_slug").and_then(Value::as_str).unwrap_or("");
            let mut st = inner.state.lock().unwrap();
            if !st.orgs.contains(org) {
                return err(403, &format!("not authorized to access organization {org}"), rid);
            }
            if name.is_empty() {
                return err(400, "app name is required", rid);
            }
            if st.foreign_apps.contains(name) || st.apps.contains_key(name) {
                return err(422, "Name has already been taken", rid);
            }
            let network = json_body.get("network").and_then(Value::as_str).unwrap_or("default").to_string();
            st.apps.insert(
                name.to_string(),
                FakeApp {
                    org: org.into(),
                    network,
                    secrets: BTreeMap::new(),
                    secrets_version: 0,
                    machines: BTreeMap::new(),
                },
            );
            reply(201, json!({"id": name, "created_at": now_ms()}), rid)
        }
        (_, ["apps", app, rest @ ..]) => {
            app_api(inner, method, app, rest, query, lease, &json_body, rid).await
        }
        _ => err(404, &format!("no route {method} {path}"), rid),
    }
}

#[allow(clippy::too_many_arguments)]
async fn app_api(
    inner: &Arc<Inner>,
    method: &str,
    app: &str,
    rest: &[&str],
    query: &str,
    lease: Option<&str>,
    body: &Value,
    rid: &str,
) -> Response<Body> {
    if let ("GET", ["machines", id, "wait"]) = (method, rest) {
        return wait(inner, app, id, query, rid).await;
    }
    let mut guard = inner.state.lock().unwrap();
    let st: &mut State = &mut guard;
    if st.foreign_apps.contains(app) {
        return err(404, &format!("app {app} not found"), rid);
    }
    let Some(a) = st.apps.get_mut(app) else {
        return err(404, &format!("app {app} not found"), rid);
    };
    match (method, rest) {
        ("GET", []) => reply(
            200,
            json!({"id": app, "name": app, "status": "deployed", "network": a.network, "organization": {"slug": a.org},
                   "machine_count": a.machines.values().filter(|m| m.state != "destroyed").count()}),
            rid,
        ),
        ("DELETE", []) => {
            let mut a = st.apps.remove(app).expect("app present");
            for m in a.machines.values_mut() {
                stop(m);
            }
            reply(202, json!({}), rid)
        }
        ("POST", ["secrets"]) => {
            let Some(values) = body.get("values").and_then(Value::as_object) else {
                return err(400, "values is required", rid);
            };
            for (k, v) in values {
                match v.as_str() {
                    Some(v) => {
                        a.secrets.insert(k.clone(), v.to_string());
                    }
                    None => {
                        a.secrets.remove(k);
                    }
                }
            }
            a.secrets_version += 1;
            let names: Vec<Value> = a.secrets.keys().map(|k| json!({"name": k, "digest": "d"})).collect();
            reply(
                200,
                json!({"secrets": names, "version": a.secrets_version, "Version": a.secrets_version}),
                rid,
            )
        }
        ("GET", ["secrets"]) => {
            let names: Vec<Value> = a.secrets.keys().map(|k| json!({"name": k, "digest": "d"})).collect();
            reply(200, json!({"secrets": names}), rid)
        }
        ("GET", ["machines"]) => {
            let all = query_param(query, "include_deleted").as_deref() == Some("true");
            let list: Vec<Value> =
                a.machines.values().filter(|m| all || m.state != "destroyed").map(machine_json).collect();
            reply(200, Value::Array(list), rid)
        }
        ("POST", ["machines"]) => {
            let Some(config) = body.get("config").cloned() else {
                return err(400, "config is required", rid);
            };
            let name = body.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            if !name.is_empty() && a.machines.values().any(|m| m.name == name && m.state != "destroyed") {
                return err(409, &format!("a machine named {name} already exists"), rid);
            }
            if let Some(v) = body.get("min_secrets_version").and_then(Value::as_u64)
                && v > a.secrets_version
            {
                return err(
                    400,
                    &format!(
                        "min_secrets_version {v} is newer than the app's secrets ({})",
                        a.secrets_version
                    ),
                    rid,
                );
            }
            let skip = body.get("skip_service_registration").and_then(Value::as_bool).unwrap_or(false);
            let skip_launch = body.get("skip_launch").and_then(Value::as_bool).unwrap_or(false);
            let region = body.get("region").and_then(Value::as_str).unwrap_or("iad").to_string();
            if st.faults.capacity_failures > 0 {
                st.faults.capacity_failures -= 1;
                return err(412, "insufficient capacity in region to create a machine of this size", rid);
            }
            let crash = std::mem::take(&mut st.faults.crash_loop_next);
            let id = new_id(st);
            let mut m = new_machine(&id, if name.is_empty() { &id } else { &name }, &region, config, skip);
            m.crash = crash;
            st.apps.get_mut(app).expect("app").machines.insert(id.clone(), m);
            if !skip_launch {
                launch(inner, st, app, &id);
            }
            let timeout = st.faults.timeout_after_create > 0;
            if timeout {
                st.faults.timeout_after_create -= 1;
                return err(408, "request timed out", rid);
            }
            let m = &st.apps[app].machines[&id];
            reply(200, machine_json(m), rid)
        }
        (_, ["machines", id, rest @ ..]) => {
            let Some(m) = a.machines.get_mut(*id) else {
                return err(404, &format!("machine {id} not found"), rid);
            };
            if m.state == "destroyed" && !(method == "GET" && rest.is_empty()) {
                return err(404, &format!("machine {id} not found"), rid);
            }
            if let Some((nonce, until)) = &m.lease
                && *until < Instant::now()
            {
                let _ = nonce;
                m.lease = None;
            }
            let held = m.lease.as_ref().map(|(n, _)| n.clone());
            let mutation = method != "GET" && rest != ["lease"];
            if mutation && held.is_some() && held.as_deref() != lease {
                return err(409, "machine is leased by another holder: send fly-machine-lease-nonce", rid);
            }
            match (method, rest) {
                ("GET", []) => reply(200, machine_json(m), rid),
                ("GET", ["events"]) => {
                    let limit = query_param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(20usize);
                    reply(200, Value::Array(m.events.iter().take(limit).cloned().collect()), rid)
                }
                ("POST", ["lease"]) => {
                    if st.faults.foreign_lease > 0 {
                        st.faults.foreign_lease -= 1;
                        return err(409, "lease currently held by another user", rid);
                    }
                    let m = st.apps.get_mut(app).and_then(|a| a.machines.get_mut(*id)).expect("machine");
                    if held.is_some() && held.as_deref() != lease {
                        return err(409, "lease currently held by another user", rid);
                    }
                    let ttl = body.get("ttl").and_then(Value::as_u64).unwrap_or(30);
                    let nonce = format!("nonce-{}-{}", m.id, m.events.len());
                    m.lease = Some((nonce.clone(), Instant::now() + Duration::from_secs(ttl)));
                    reply(
                        201,
                        json!({"status": "success", "data": {"nonce": nonce, "expires_at": now_ms() / 1000 + ttl as i64,
                               "owner": "catwalk@test", "description": body.get("description"), "version": m.instance_id}}),
                        rid,
                    )
                }
                ("DELETE", ["lease"]) => {
                    if held.is_none() || held.as_deref() != lease {
                        return err(409, "lease nonce does not match", rid);
                    }
                    m.lease = None;
                    reply(200, json!({}), rid)
                }
                ("POST", ["start"]) => match m.state.clone().as_str() {
                    "stopped" | "created" | "suspended" => {
                        launch(inner, st, app, id);
                        reply(200, json!({"previous_state": "stopped"}), rid)
                    }
                    other => err(412, &format!("unable to start machine from current state: '{other}'"), rid),
                },
                ("POST", ["stop"]) => {
                    stop(m);
                    reply(200, json!({"ok": true}), rid)
                }
                ("POST", []) => {
                    let Some(config) = body.get("config").cloned() else {
                        return err(400, "config is required", rid);
                    };
                    stop(m);
                    m.config = config;
                    m.skip_service_registration =
                        body.get("skip_service_registration").and_then(Value::as_bool).unwrap_or(false);
                    m.instance_id = ulid_like(m.generation + 100);
                    event(m, "update", "replacing", json!({}));
                    launch(inner, st, app, id);
                    reply(200, machine_json(&st.apps[app].machines[*id]), rid)
                }
                ("DELETE", []) => {
                    let force = query_param(query, "force").as_deref() == Some("true");
                    if m.state == "started" && !force {
                        return err(412, "unable to destroy machine, not currently stopped", rid);
                    }
                    stop(m);
                    m.state = "destroyed".into();
                    m.lease = None;
                    event(m, "destroy", "destroyed", json!({}));
                    reply(200, json!({"ok": true}), rid)
                }
                ("POST", ["cordon"]) => {
                    m.cordoned = true;
                    m.skip_service_registration = true;
                    reply(200, json!({"ok": true}), rid)
                }
                ("POST", ["uncordon"]) => {
                    // Registers the machine's services with fly-proxy (flyctl's blue/green step).
                    m.cordoned = false;
                    m.skip_service_registration = false;
                    reply(200, json!({"ok": true}), rid)
                }
                _ => err(404, "no such machine route", rid),
            }
        }
        _ => err(404, "no such app route", rid),
    }
}

/// `/wait`: 200 once the state is reached, 408 after min(timeout, cap).
async fn wait(inner: &Arc<Inner>, app: &str, id: &str, query: &str, rid: &str) -> Response<Body> {
    let want: Vec<String> = query_param(query, "state")
        .unwrap_or_else(|| "started".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let secs = query_param(query, "timeout").and_then(|t| t.parse::<u64>().ok()).unwrap_or(60).min(60);
    let until = Instant::now() + Duration::from_secs(secs).min(inner.wait_cap);
    loop {
        let state = {
            let st = inner.state.lock().unwrap();
            match st.apps.get(app).and_then(|a| a.machines.get(id)) {
                Some(m) => m.state.clone(),
                None => return err(404, &format!("machine {id} not found"), rid),
            }
        };
        if want.contains(&state) {
            return reply(200, json!({"ok": true, "state": state}), rid);
        }
        if state == "destroyed" || (state == "failed" && !want.contains(&"failed".to_string())) {
            return err(400, &format!("machine reached state {state}"), rid);
        }
        if Instant::now() >= until {
            return err(408, "deadline_exceeded: Timeout waiting for machine to reach state", rid);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
