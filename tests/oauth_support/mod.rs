//! An OAuth client driven by hand for the tests: registration, the authorization URL, the consent page
//! (read like a browser would, without following redirects), approval over `ssh`, and the token and
//! revocation endpoints. Every response is kept whole so tests can check status, headers and body.
#![allow(dead_code)]

pub mod cimd;

use base64::Engine;
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::daemon::{Daemon, ok};

/// A PKCE pair (RFC 7636): a random verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce { verifier, challenge }
    }
}

/// A whole HTTP answer.
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A query parameter of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string())
}

/// The approval code in the `ssh -p PORT git@127.0.0.1 approve CODE` line of a consent page.
pub fn approval_code(page: &str, ssh_port: u16) -> String {
    let prefix = format!("ssh -p {ssh_port} git@127.0.0.1 approve ");
    let at = page.find(&prefix).unwrap_or_else(|| panic!("no `{prefix}CODE` line on the page:\n{page}"));
    let code = &page[at + prefix.len()..at + prefix.len() + 9];
    assert!(
        code.chars().nth(4) == Some('-') && code.chars().all(|c| c == '-' || c.is_ascii_alphanumeric()),
        "{code}"
    );
    code.to_string()
}

pub struct Flow {
    pub http: reqwest::Client,
    pub base: String,
}

impl Flow {
    pub fn new(d: &Daemon) -> Flow {
        Flow {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            base: format!("http://{}", d.http_addr),
        }
    }

    async fn page(resp: reqwest::Response) -> Page {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Page { status, headers, body }
    }

    pub async fn get(&self, url: &str) -> Page {
        Self::page(self.http.get(url).send().await.unwrap()).await
    }

    pub async fn register_raw(&self, metadata: Value) -> Page {
        Self::page(
            self.http.post(format!("{}/oauth/register", self.base)).json(&metadata).send().await.unwrap(),
        )
        .await
    }

    /// Registers a public client (PKCE only) and returns its client_id.
    pub async fn register(&self, name: &str, redirect: &str) -> String {
        let r = self
            .register_raw(serde_json::json!({
                "client_name": name, "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            }))
            .await;
        assert_eq!(r.status, 201, "registration: {}", r.body);
        r.json()["client_id"].as_str().unwrap().to_string()
    }

    pub fn authorize_url(
        &self,
        client: &str,
        redirect: &str,
        state: &str,
        challenge: &str,
        resource: &str,
    ) -> String {
        format!(
            "{}/oauth/authorize?response_type=code&client_id={}&redirect_uri={}&state={}&code_challenge={challenge}&code_challenge_method=S256&resource={}",
            self.base,
            enc(client),
            enc(redirect),
            enc(state),
            enc(resource)
        )
    }

    /// The whole browser side: the page, `ssh approve CODE` as the admin, the reload; returns the code.
    pub async fn code(
        &self,
        d: &Daemon,
        client: &str,
        redirect: &str,
        pkce: &Pkce,
        resource: &str,
    ) -> String {
        let state = Pkce::new().verifier;
        let url = self.authorize_url(client, redirect, &state, &pkce.challenge, resource);
        let page = self.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let code = approval_code(&page.body, d.ssh_port);
        ok(&d.ssh(&d.admin, &format!("approve {code}"), ""));
        let back = self.get(&url).await;
        assert_eq!(back.status, 302, "{}", back.body);
        let location = back.header("location");
        assert_eq!(query_param(&location, "state").as_deref(), Some(state.as_str()));
        query_param(&location, "code").expect("a code on the redirect")
    }

    /// POSTs `fields` as a form to `path` (the token and revocation endpoints).
    async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        Self::page(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A token request with `fields`.
    pub async fn form(&self, fields: &[(&str, &str)]) -> Page {
        self.post_form("/oauth/token", fields).await
    }

    pub async fn exchange(
        &self,
        client: &str,
        code: &str,
        redirect: &str,
        verifier: &str,
        resource: Option<&str>,
    ) -> Page {
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("client_id", client),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ];
        if let Some(r) = resource {
            fields.push(("resource", r));
        }
        self.form(&fields).await
    }

    pub async fn refresh(&self, client: &str, refresh: &str, resource: Option<&str>) -> Page {
        let mut fields =
            vec![("grant_type", "refresh_token"), ("client_id", client), ("refresh_token", refresh)];
        if let Some(r) = resource {
            fields.push(("resource", r));
        }
        self.form(&fields).await
    }

    pub async fn revoke(&self, client: &str, token: &str) -> Page {
        self.post_form("/oauth/revoke", &[("client_id", client), ("token", token)]).await
    }

    /// A whole connection: code, exchange; returns (access token, refresh token).
    pub async fn connect(
        &self,
        d: &Daemon,
        client: &str,
        redirect: &str,
        resource: &str,
    ) -> (String, String) {
        let pkce = Pkce::new();
        let code = self.code(d, client, redirect, &pkce, resource).await;
        let t = self.exchange(client, &code, redirect, &pkce.verifier, Some(resource)).await;
        assert_eq!(t.status, 200, "{}", t.body);
        let v = t.json();
        (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
    }
}
