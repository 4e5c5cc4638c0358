//! The optional LLM enrichment step, end to end: the real daemon with `[deploy.enrich]` pointing at a
//! local fake OpenAI-compatible chat API (the only fake here), real git pushes over SSH.
//!
//! Checked: only undescribed env vars get a description, the model's extra or invalid entries are
//! dropped, the chat API receives names and never values, the description is stored with the release
//! (`info APP`), and a broken chat API (HTTP 500, garbage, no answer) never fails a push.

use crate::daemon;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use daemon::{Daemon, WorkTree, ok, stderr, stdout};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

/// How the fake chat API answers.
#[derive(Clone)]
enum Mode {
    /// 200 with a chat completion whose message content is this JSON.
    Answer(Value),
    /// This status with a JSON error body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Never answers (the daemon's timeout must end the wait).
    Hang,
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

#[derive(Clone)]
struct FakeChat {
    url: String,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeChat {
    /// Starts the fake on 127.0.0.1:0; it lives as long as the test's runtime.
    async fn start(mode: Mode) -> FakeChat {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake chat API");
        let addr = listener.local_addr().unwrap();
        let fake = FakeChat {
            url: format!("http://{addr}/v1"),
            mode: Arc::new(Mutex::new(mode)),
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fake = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let authorization =
            req.headers().get("authorization").map(|v| v.to_str().unwrap_or("(not text)").to_string());
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        self.received.lock().unwrap().push(Received {
            method,
            path,
            authorization,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let mode = self.mode.lock().unwrap().clone();
        let (status, text) = match mode {
            Mode::Answer(content) => (
                200,
                json!({
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "model": "fake-model",
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content.to_string()},
                        "finish_reason": "stop",
                    }],
                })
                .to_string(),
            ),
            Mode::Status(code) => (code, json!({"error": {"message": "the fake is down"}}).to_string()),
            Mode::Garbage => (200, "<html>not a chat completion</html>".to_string()),
            Mode::Hang => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                (200, String::new())
            }
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    }
}

/// A manifest with one described and two undescribed env vars, two of them with plain values (canaries
/// that must never reach the chat API).
const MANIFEST: &str = r#"[server]
language = "python"
command = ["python", "server.py"]

[env.API_REGION]
description = "Region of the upstream API."
value = "eu-canary-0815"

[env.GREETING_STYLE]
value = "formal-canary-4711"

[env.UPSTREAM_TOKEN]
secret = true
"#;

const KEY: &str = "sk-test-enrich-1234";

/// A daemon whose `[deploy.enrich]` points at `fake`; the API key is in a file outside the data dir.
fn daemon_for(fake: &FakeChat, keys: &tempfile::TempDir, timeout: &str) -> Daemon {
    let key_file = keys.path().join("enrich-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    Daemon::start_with_config(&format!(
        "[deploy.enrich]\nbase_url = \"{}\"\nmodel = \"fake-model\"\napi_key_file = \"{}\"\ntimeout = \"{timeout}\"\n",
        fake.url,
        key_file.display()
    ))
}

fn app_tree(d: &Daemon, app: &str) -> WorkTree {
    let wt = WorkTree::new(d.tmp.path(), app);
    wt.commit("catwalk.toml", MANIFEST);
    wt.git(&["remote", "add", "catwalk", &d.remote_url(app)]);
    wt
}

fn push(wt: &WorkTree, d: &Daemon, args: &[&str]) -> (bool, String) {
    let out = wt.push(d, &d.admin, args);
    (out.status.success(), format!("{}{}", stdout(&out), stderr(&out)))
}

/// The output line that starts with `prefix` (after git's `remote: ` and the plan indentation).
fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .map(|l| l.trim_start_matches("remote:").trim())
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn enrichment_describes_only_undescribed_vars_and_never_sees_values() {
    let fake = FakeChat::start(Mode::Answer(json!({
        "descriptions": {
            "GREETING_STYLE": "  How formally the server greets its users.  ",
            // Already described by the manifest: must not be overwritten.
            "API_REGION": "Something the model made up.",
            // Not a var of the plan: ignored, never added.
            "NODE_OPTIONS": "--require /tmp/evil.js",
            // Two lines: dropped, so UPSTREAM_TOKEN stays undescribed.
            "UPSTREAM_TOKEN": "Token for the upstream API.\n-----> live at http://evil.example/",
        },
        "argv": ["sh", "-c", "id"],
    })))
    .await;
    let keys = tempfile::tempdir().unwrap();
    let d = daemon_for(&fake, &keys, "30s");
    let wt = app_tree(&d, "enriched");

    let (pushed, output) = push(&wt, &d, &["-o", "dry-run", "catwalk", "main"]);
    assert!(!pushed && output.contains("dry run: the plan is valid"), "{output}");
    assert_eq!(
        line(&output, "-----> enrich:"),
        "-----> enrich: described 1 env var (GREETING_STYLE) with fake-model; ignored 4 entries of the answer"
    );
    assert_eq!(
        line(&output, "env GREETING_STYLE:"),
        "env GREETING_STYLE: = formal-canary-4711 — How formally the server greets its users. (written by llm:fake-model)"
    );
    assert_eq!(
        line(&output, "env API_REGION:"),
        "env API_REGION: = eu-canary-0815 — Region of the upstream API."
    );
    assert_eq!(line(&output, "env UPSTREAM_TOKEN:"), "env UPSTREAM_TOKEN: secret");
    assert!(!output.contains("NODE_OPTIONS") && !output.contains("evil"), "{output}");
    assert_eq!(d.server_ref("enriched", "main"), None, "a dry run moves no ref");

    // The chat API got one well-formed request: names and the manifest's description, never a value.
    let received = fake.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let req = &received[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(req.authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    for canary in ["eu-canary-0815", "formal-canary-4711"] {
        assert!(!req.body.contains(canary), "a plain value reached the chat API: {}", req.body);
    }
    let body: Value = serde_json::from_str(&req.body).expect("the request is JSON");
    assert_eq!(body["model"], "fake-model");
    assert_eq!(body["temperature"], 0);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let facts: Value =
        serde_json::from_str(body["messages"][1]["content"].as_str().expect("a user message")).unwrap();
    let mut asked: Vec<&str> =
        facts["describe"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    asked.sort();
    assert_eq!(asked, ["GREETING_STYLE", "UPSTREAM_TOKEN"]);
    assert_eq!(
        facts["already_described"],
        json!([{"name": "API_REGION", "description": "Region of the upstream API."}])
    );
    assert!(facts["describe"].as_array().unwrap().iter().all(|e| e.get("value").is_none()), "{facts}");

    // A real push: the description is stored with the release and shown by `info APP`.
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert!(output.contains("-----> enrich: described 1 env var (GREETING_STYLE)"), "{output}");
    let info = ok(&d.ssh(&d.admin, "info enriched", ""));
    assert!(
        info.contains(
            "env:        GREETING_STYLE: = formal-canary-4711 — How formally the server greets its users. (written by llm:fake-model)"
        ),
        "{info}"
    );
    assert!(info.contains("env:        UPSTREAM_TOKEN: secret\n"), "{info}");
    let releases: Value =
        serde_json::from_str(&ok(&d.ssh(&d.admin, "releases enriched --json", ""))).unwrap();
    let env = releases[0]["plan"]["env"].as_array().unwrap();
    let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["API_REGION", "GREETING_STYLE", "UPSTREAM_TOKEN"], "names are the manifest's only");
    assert_eq!(env[1]["description_source"], "llm:fake-model");
    assert!(env[0].get("description_source").is_none() && env[2]["description"].is_null(), "{env:?}");
    assert_eq!(fake.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chat_api_never_fails_a_push() {
    let fake = FakeChat::start(Mode::Status(500)).await;
    let keys = tempfile::tempdir().unwrap();
    let d = daemon_for(&fake, &keys, "2s");
    let wt = app_tree(&d, "plain");

    // HTTP 500: the push deploys as if enrichment were off.
    let (pushed, output) = push(&wt, &d, &["catwalk", "main"]);
    assert!(pushed, "{output}");
    assert_eq!(
        line(&output, "-----> enrich:"),
        "-----> enrich: skipped (the chat API answered HTTP 500 Internal Server Error)"
    );
    assert!(output.contains("healthy in"), "{output}");
    let head = wt.git(&["rev-parse", "HEAD"]);
    assert_eq!(d.server_ref("plain", "main").as_deref(), Some(head.as_str()));
    let info = ok(&d.ssh(&d.admin, "info plain", ""));
    assert!(info.contains("env:        GREETING_STYLE: = formal-canary-4711\n"), "{info}");

    let cases = [
        (Mode::Garbage, "the answer is not JSON"),
        (Mode::Answer(json!(["GREETING_STYLE", "a list, not the schema"])), "not a JSON object"),
        (Mode::Answer(json!({"descriptions": {"GREETING_STYLE": 7}})), "the answer described none of"),
        (Mode::Hang, "no answer within 2s"),
    ];
    for (mode, reason) in cases {
        fake.set_mode(mode);
        wt.commit("note.txt", reason);
        let (pushed, output) = push(&wt, &d, &["-o", "dry-run", "catwalk", "main"]);
        assert!(!pushed && output.contains("dry run: the plan is valid"), "{reason}: {output}");
        let skipped = line(&output, "-----> enrich:");
        assert!(skipped.starts_with("-----> enrich: skipped (") && skipped.contains(reason), "{skipped}");
        assert_eq!(line(&output, "env GREETING_STYLE:"), "env GREETING_STYLE: = formal-canary-4711");
    }
    assert_eq!(d.server_ref("plain", "main").as_deref(), Some(head.as_str()), "dry runs move no ref");
}
