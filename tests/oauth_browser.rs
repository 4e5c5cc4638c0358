//! The consent page in a real browser: Debian's headless Chromium driven by chromedriver over the W3C
//! WebDriver HTTP protocol (plain reqwest). The browser opens the authorization page (it must render
//! the `approve` line and nothing from outside), opens a one-time `login` link, comes back to the page,
//! clicks Allow, and lands on the client's redirect URI with a code that the test exchanges for a token.

use crate::daemon;
use crate::deps;
use crate::mcp;
use crate::oauth_support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, ok};
use deps::ChildGuard;
use oauth_support::{Flow, Pkce, query_param};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A WebDriver session on a chromedriver we started.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "run ./scripts/test-deps first: {bin} is missing (Debian packages chromium, chromium-driver)"
            );
        }
        let port = deps::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        let driver = ChildGuard::spawn("chromedriver", &mut cmd);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + daemon::WAIT;
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.json::<Value>().await.is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Browser { http, base, session, _driver: driver, _profile: profile }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn current_url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_string()
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_string()
    }

    /// The page source once it contains `needle` (up to 10 s): on a loaded machine the first read can still
    /// see the page being replaced. Panics with the last source otherwise.
    async fn source_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let source = self.source().await;
            if source.contains(needle) {
                return source;
            }
            assert!(std::time::Instant::now() < deadline, "the page never showed {needle:?}:\n{source}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The element matching `css`, if the page has one.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        // W3C WebDriver: a found element is `{"element-6066-11e4-a52e-4f735466cecf": ID}`; a miss is an error object.
        v.get("element-6066-11e4-a52e-4f735466cecf")?.as_str().map(str::to_string)
    }

    async fn text(&self, element: &str) -> String {
        let v = self.cmd(reqwest::Method::GET, &format!("/element/{element}/text"), None).await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn click(&self, element: &str) {
        self.cmd(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, png).unwrap();
    }

    async fn quit(&self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
    }
}

/// The client's redirect target: answers every request with a short page (so the browser lands
/// somewhere real); stops with the test.
fn callback_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "<p>client callback</p>";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_the_page_signs_in_and_clicks_allow() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stdio_fixture.py");
    let d = Daemon::start_with_config(&format!(
        "[apps.a]\ncommand = [\"python3\", {:?}]\n",
        fixture.display().to_string()
    ));
    let f = Flow::new(&d);
    let redirect = format!("http://127.0.0.1:{}/callback", callback_server());
    let client = f.register("Browser Test Client", &redirect).await;
    let pkce = Pkce::new();
    let url = f.authorize_url(&client, &redirect, "browser-state", &pkce.challenge, &d.endpoint("a"));

    let browser = Browser::start().await;
    // 1. The page renders: title, heading, the approve line as plain text, no Allow button yet.
    browser.goto(&url).await;
    let command = browser.find("#command").await.expect("the approve command is on the page");
    let text = browser.text(&command).await;
    assert!(text.starts_with(&format!("ssh -p {} git@127.0.0.1 approve ", d.ssh_port)), "{text}");
    let heading = browser.find("h1").await.unwrap();
    assert_eq!(browser.text(&heading).await, "Browser Test Client asks to use a");
    assert!(browser.find("#allow").await.is_none(), "no Allow button without a signed-in session");
    let shots = tempfile::tempdir().unwrap();
    browser.screenshot(&shots.path().join("consent.png")).await;

    // 2. `login` prints a one-time link; opening it signs this browser in (HttpOnly, SameSite=Strict).
    let login: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "login --json", ""))).unwrap();
    let link = login["url"].as_str().unwrap();
    browser.goto(link).await;
    browser.source_with("Signed in as admin").await;
    let cookies = browser.cmd(reqwest::Method::GET, "/cookie", None).await;
    let session =
        cookies.as_array().unwrap().iter().find(|c| c["name"] == "cw_session").expect("the session cookie");
    assert_eq!((session["httpOnly"].clone(), session["sameSite"].clone()), (json!(true), json!("Strict")));
    // The link is single use.
    let reused = f.get(link).await;
    assert_eq!(reused.status, 404);

    // 3. Back on the page: Allow / Deny; clicking Allow lands on the client's redirect URI with a code.
    browser.goto(&url).await;
    let allow = browser.find("#allow").await.expect("an Allow button once signed in");
    assert!(browser.find("#deny").await.is_some());
    browser.screenshot(&shots.path().join("signed-in.png")).await;
    browser.click(&allow).await;
    let deadline = Instant::now() + daemon::WAIT;
    let landed = loop {
        let current = browser.current_url().await;
        if current.starts_with(&redirect) {
            break current;
        }
        assert!(Instant::now() < deadline, "the browser never reached the client: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser.quit().await;
    assert_eq!(query_param(&landed, "state").as_deref(), Some("browser-state"));
    assert_eq!(query_param(&landed, "iss"), Some(format!("http://{}", d.http_addr)));
    let code = query_param(&landed, "code").expect("a code");
    let t = f.exchange(&client, &code, &redirect, &pkce.verifier, Some(&d.endpoint("a"))).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let mut m = mcp::Mcp::new(&d.endpoint("a"), t.json()["access_token"].as_str());
    assert_eq!(m.initialize().await.status, 200);
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    assert_eq!(grants[0]["approved_by"], "admin", "{grants}");
}
