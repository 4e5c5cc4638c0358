//! The gateway as the daemon uses it: many apps under `/mcp/<app>`, an authenticator, per-token
//! rate limits, audit records, the public origin, and draining an app on redeploy. Runs the
//! library's `Gateway` in-process with test implementations of its three traits.

use crate::gateway_support;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catwalk::gateway::{
    AppDirectory, AppLogs, AppRoute, AuditEvent, AuditSink, AuthError, Authenticator, Backend, Gateway,
    GatewaySettings, Mount, RateLimit, TokenIdentity,
};
use gateway_support::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Apps(HashMap<String, Arc<AppRoute>>);
impl AppDirectory for Apps {
    fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
        self.0.get(app).cloned()
    }
}

/// token → (app, id, name)
struct Tokens(HashMap<&'static str, (&'static str, &'static str, &'static str)>);
impl Authenticator for Tokens {
    fn authenticate(&self, app: &str, bearer: Option<&str>) -> Result<TokenIdentity, AuthError> {
        let bearer = bearer.ok_or(AuthError::Missing)?;
        match self.0.get(bearer) {
            Some((a, id, name)) if *a == app => {
                Ok(TokenIdentity { token_id: id.to_string(), token_name: name.to_string() })
            }
            _ => Err(AuthError::Invalid),
        }
    }
}

#[derive(Default)]
struct Audit(Mutex<Vec<AuditEvent>>);
impl AuditSink for Audit {
    fn record(&self, event: AuditEvent) {
        self.0.lock().unwrap().push(event);
    }
}

fn stdio_route(marker: &std::path::Path, limit: Option<RateLimit>) -> Arc<AppRoute> {
    // The command touches a marker file first, so tests can prove no child was started.
    let script =
        format!("open({:?}, 'a').close(); exec(open({:?}).read())", marker.display().to_string(), fixture());
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), std::env::var("PATH").unwrap_or_default());
    Arc::new(AppRoute {
        warm: 0,
        backend: Backend::Stdio {
            argv: vec!["python3".into(), "-u".into(), "-c".into(), script],
            env,
            cwd: std::env::temp_dir(),
        },
        allowed_origins: vec!["https://extra.example".into()],
        shared: false,
        rate_limit: limit,
        auth: Default::default(),
    })
}

struct Running {
    gw: Arc<Gateway>,
    audit: Arc<Audit>,
    stop: CancellationToken,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        self.gw.stop_all();
    }
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut apps = HashMap::new();
    apps.insert("alpha".to_string(), stdio_route(&dir.path().join("alpha"), None));
    apps.insert(
        "limited".to_string(),
        stdio_route(
            &dir.path().join("limited"),
            Some(RateLimit { period: Duration::from_secs(3600), burst: NonZeroU32::new(3).unwrap() }),
        ),
    );
    let tokens = Tokens(HashMap::from([
        ("tok-alpha", ("alpha", "t1", "laptop")),
        ("tok-limited", ("limited", "t2", "ci")),
    ]));
    let audit = Arc::new(Audit::default());
    let cfg = GatewaySettings {
        mount: Mount::Prefix("/mcp/".into()),
        public_origin: Some("https://deploy.example".into()),
        ..GatewaySettings::default()
    };
    let gw = Gateway::new(
        cfg,
        Arc::new(Apps(apps)),
        Some(Arc::new(tokens)),
        audit.clone(),
        Arc::new(AppLogs::new(100)),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let serving = gw.clone();
    let s = stop.clone();
    tokio::spawn(async move { serving.serve(listener, s).await });
    Running { gw, audit, stop, base, dir }
}

fn req(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> reqwest::RequestBuilder {
    let mut r = c
        .post(url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_any_backend_is_touched() {
    let rt = start().await;
    let c = client();
    let url = format!("{}/mcp/alpha", rt.base);
    for (token, status) in [(None, 401), (Some("wrong"), 401), (Some("tok-limited"), 401)] {
        let r = req(&c, &url, token, init_msg(1, "2025-06-18")).send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("Unauthorized"));
    }
    // A valid token in the query string is refused too.
    let r = req(&c, &format!("{url}?token=tok-alpha"), None, init_msg(1, "2025-06-18")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A foreign Origin is refused even with a valid token.
    let r = req(&c, &url, Some("tok-alpha"), init_msg(1, "2025-06-18"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!rt.dir.path().join("alpha").exists(), "a refused request started the server");
    // Unknown apps are indistinguishable from bad tokens.
    let r = req(&c, &format!("{}/mcp/ghost", rt.base), Some("tok-alpha"), init_msg(1, "2025-06-18"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rate_limit_origin_and_drain() {
    let rt = start().await;
    let c = client();
    let url = format!("{}/mcp/alpha", rt.base);
    let r = req(&c, &url, Some("tok-alpha"), init_msg(1, "2025-06-18"))
        .header("origin", "https://deploy.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let r = req(&c, &url, Some("tok-alpha"), tool_msg(2, "echo", json!({"text": "secret-argument"})))
        .header("mcp-session-id", &sid)
        .header("origin", "https://extra.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = rt.audit.0.lock().unwrap().clone();
    let call = events.iter().find(|e| e.method == "tools/call").expect("no audit record for tools/call");
    assert_eq!(call.app, "alpha");
    assert_eq!(call.token_name.as_deref(), Some("laptop"));
    assert_eq!(call.tool_name.as_deref(), Some("echo"));
    assert_eq!(call.status, 200);
    assert!(!call.error);
    assert!(!format!("{events:?}").contains("secret-argument"), "arguments leaked into audit");

    // A session id of app alpha is unknown to app limited, even with limited's valid token.
    let r = req(
        &c,
        &format!("{}/mcp/limited", rt.base),
        Some("tok-limited"),
        json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
    )
    .header("mcp-session-id", &sid)
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    // Draining the app (new release) ends its sessions.
    assert_eq!(rt.gw.session_count(), 1);
    rt.gw.drain_app("alpha");
    let r = req(&c, &url, Some("tok-alpha"), json!({"jsonrpc":"2.0","id":3,"method":"ping"}))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut stopped = false;
    for _ in 0..400 {
        if rt.gw.logs().tail("alpha", 10).iter().any(|l| l.text.contains("stopped")) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped, "the drained child was not stopped");

    // Per-token rate limit: burst of 3, then 429 with Retry-After and a JSON-RPC body.
    let lurl = format!("{}/mcp/limited", rt.base);
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = req(&c, &lurl, Some("tok-limited"), init_msg(i, "2025-06-18")).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["jsonrpc"], "2.0");
        }
    }
    // The cross-app probe above used one of the three.
    assert_eq!(statuses, vec![200, 200, 429]);
}
