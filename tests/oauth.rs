//! OAuth 2.1 on `/mcp/APP` through the real daemon (QUALITY.md R8): discovery, registration, the consent
//! page, approval over real `ssh`, code + PKCE exchange, refresh rotation with reuse detection,
//! revocation, audiences, and every refusal with the error code its RFC names.
//!
//! The test drives the HTTP side itself with reqwest (redirects not followed, so each 302 is seen), the
//! way a client and a browser would. Lifetimes are set to zero in the config where expiry is tested,
//! so nothing waits on a clock.

use crate::daemon;
use crate::deps;
use crate::mcp;
use crate::oauth_support;
use crate::tls_support;

use daemon::{Daemon, Key, WorkTree, ok, stderr, stdout};
use mcp::Mcp;
use oauth_support::{Flow, Pkce, query_param};
use serde_json::{Value, json};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn fixture_argv() -> String {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stdio_fixture.py");
    format!("[\"python3\", {:?}]", fixture.display().to_string())
}

/// A daemon serving the stdio fixture as static apps `a` and `b`, with `extra` config appended.
fn daemon_with(extra: &str) -> Daemon {
    let argv = fixture_argv();
    Daemon::start_with_config(&format!("[apps.a]\ncommand = {argv}\n[apps.b]\ncommand = {argv}\n{extra}"))
}

async fn mcp_works(url: &str, token: &str) -> bool {
    let mut m = Mcp::new(url, Some(token));
    let answer = m.initialize().await;
    if answer.status != 200 {
        return false;
    }
    let text = m.call_text("echo", json!({"text": "through oauth"})).await;
    m.close().await;
    text == "through oauth"
}

async fn status_of(url: &str, token: &str) -> u16 {
    Mcp::new(url, Some(token)).initialize().await.status
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_flow_over_http_and_ssh() {
    let d = daemon_with("");
    let f = Flow::new(&d);
    let issuer = format!("http://{}", d.http_addr);
    let endpoint_a = d.endpoint("a");

    // 1. A client that only knows the URL gets a challenge naming the resource metadata.
    let resp =
        f.http.post(&endpoint_a).json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"})).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
    let metadata_url = format!("{issuer}/.well-known/oauth-protected-resource/mcp/a");
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{metadata_url}\""));

    // 2. RFC 9728 and RFC 8414 documents.
    let prm: Value = f.http.get(&metadata_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(prm["resource"], json!(endpoint_a));
    assert_eq!(prm["authorization_servers"], json!([issuer]));
    let asm: Value = f
        .http
        .get(format!("{issuer}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], json!(issuer));
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(asm["authorization_endpoint"], json!(format!("{issuer}/oauth/authorize")));
    assert_eq!(asm["token_endpoint"], json!(format!("{issuer}/oauth/token")));
    assert_eq!(asm["registration_endpoint"], json!(format!("{issuer}/oauth/register")));
    assert_eq!(asm["revocation_endpoint"], json!(format!("{issuer}/oauth/revoke")));
    assert_eq!(asm["authorization_response_iss_parameter_supported"], json!(true));

    // 3. Registration (RFC 7591), then the consent page.
    let client = f.register("Claude (test)", REDIRECT).await;
    let pkce = Pkce::new();
    let url = f.authorize_url(&client, REDIRECT, "st-1", &pkce.challenge, &endpoint_a);
    let page = f.get(&url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csp = page.header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert!(page.body.contains("Claude (test) asks to use a"), "{}", page.body);
    assert!(page.body.contains("<b>127.0.0.1:9</b>"), "the redirect host is shown: {}", page.body);
    assert!(
        !page.body.contains("<script") && !page.body.contains("src=\"http"),
        "no script, no external asset"
    );
    assert!(page.body.contains("http-equiv=\"refresh\""), "the page polls by reloading itself");
    let code = oauth_support::approval_code(&page.body, d.ssh_port);
    // Reloading before approval shows the same code.
    assert_eq!(oauth_support::approval_code(&f.get(&url).await.body, d.ssh_port), code);

    // 4. Approval over SSH, then the reload answers the client's redirect with code, state and iss.
    let approved = ok(&d.ssh(&d.admin, &format!("approve {code}"), ""));
    assert!(approved.contains("✓ Claude (test) may now use a (grant g_"), "{approved}");
    let back = f.get(&url).await;
    assert_eq!(back.status, 302, "{}", back.body);
    let location = back.header("location");
    assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
    assert_eq!(query_param(&location, "iss").as_deref(), Some(issuer.as_str()));
    let auth_code = query_param(&location, "code").expect("a code");
    // The request is finished: another reload does not issue a second code.
    let again = f.get(&url).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains("finished"), "{}", again.body);
    // The approval code is spent too.
    let spent = d.ssh(&d.admin, &format!("approve {code}"), "");
    assert!(
        !spent.status.success() && stderr(&spent).contains("no pending authorization request"),
        "{}",
        stderr(&spent)
    );

    // 5. The token endpoint: code + PKCE verifier + resource.
    let tokens = f.exchange(&client, &auth_code, REDIRECT, &pkce.verifier, Some(&endpoint_a)).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    assert_eq!(tokens.header("cache-control"), "no-store");
    let t = tokens.json();
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].as_u64().unwrap() > 0);

    // 6. The access token works on /mcp/a, and only there.
    assert!(mcp_works(&endpoint_a, &access).await);
    let other = f
        .http
        .post(d.endpoint("b"))
        .bearer_auth(&access)
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401, "a token for /mcp/a must not work on /mcp/b");
    let challenge = other.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\"") && challenge.contains("/mcp/b\""), "{challenge}");

    // 7. Refresh rotates; the old refresh token used again revokes the whole grant.
    let r1 = f.refresh(&client, &refresh, Some(&endpoint_a)).await;
    assert_eq!(r1.status, 200, "{}", r1.body);
    let (access2, refresh2) = (
        r1.json()["access_token"].as_str().unwrap().to_string(),
        r1.json()["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_ne!(access2, access);
    assert_ne!(refresh2, refresh);
    assert!(mcp_works(&endpoint_a, &access2).await);
    let reused = f.refresh(&client, &refresh, None).await;
    assert_eq!(reused.status, 400);
    assert_eq!(reused.json()["error"], "invalid_grant");
    assert!(reused.json()["error_description"].as_str().unwrap().contains("revoked"));
    assert_eq!(status_of(&endpoint_a, &access2).await, 401, "reuse revoked the grant: its access tokens die");
    assert_eq!(status_of(&endpoint_a, &access).await, 401);
    let after = f.refresh(&client, &refresh2, None).await;
    assert_eq!(after.json()["error"], "invalid_grant", "the rotated refresh token dies with the grant");
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    assert_eq!(grants[0]["status"], "revoked");
    assert_eq!(grants[0]["revoked_reason"], "refresh token reused");

    // 8. A second connection; RFC 7009 revocation of its refresh token ends it.
    let (access3, refresh3) = f.connect(&d, &client, REDIRECT, &endpoint_a).await;
    assert!(mcp_works(&endpoint_a, &access3).await);
    let revoked = f.revoke(&client, &refresh3).await;
    assert_eq!(revoked.status, 200);
    assert_eq!(status_of(&endpoint_a, &access3).await, 401);
    // Revoking garbage is also 200 (RFC 7009 §2.2), and changes nothing.
    assert_eq!(f.revoke(&client, "cwr_nonsense").await.status, 200);

    // 9. A third connection, revoked by its owner over SSH; `info` lists active grants.
    let (access4, _) = f.connect(&d, &client, REDIRECT, &endpoint_a).await;
    let info = ok(&d.ssh(&d.admin, "info a", ""));
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    let active: Vec<&Value> = grants.as_array().unwrap().iter().filter(|g| g["status"] == "active").collect();
    assert_eq!(active.len(), 1, "{grants}");
    let id = active[0]["id"].as_str().unwrap();
    assert!(info.contains(&format!("grant:      {id} Claude (test) (returns to 127.0.0.1:9)")), "{info}");
    let text = ok(&d.ssh(&d.admin, &format!("grants revoke a {id}"), ""));
    assert!(text.contains(&format!("revoked grant {id}")), "{text}");
    assert_eq!(status_of(&endpoint_a, &access4).await, 401);

    // 10. `tokens create` tokens keep working beside OAuth.
    let token = d.token("a");
    assert!(mcp_works(&endpoint_a, &token).await);

    // 11. `connect` prints what to paste.
    let connect = ok(&d.ssh(&d.admin, "connect a", ""));
    assert!(connect.contains(&format!("claude mcp add --transport http a {endpoint_a}")), "{connect}");
    assert!(connect.contains("cursor://anysphere.cursor-deeplink/mcp/install?name=a&config="), "{connect}");
    assert!(connect.contains("code --add-mcp"), "{connect}");
    let connect: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "connect a --json", ""))).unwrap();
    assert_eq!(connect["claude"]["connector_url"], json!(endpoint_a));

    // 12. Every issuance, refresh and revocation is in the audit log (read after a clean stop).
    d.sigterm();
    let mut d = d;
    assert!(d.wait_exit().success());
    let store = catwalk::store::Store::open(&d.dir.join("state.redb")).unwrap();
    let methods: Vec<String> = store.audit("a", 1000).unwrap().into_iter().map(|r| r.method).collect();
    for m in ["oauth/approve", "oauth/code", "oauth/token", "oauth/refresh", "oauth/revoke"] {
        assert!(methods.iter().any(|x| x == m), "{m} missing from the audit log: {methods:?}");
    }
    assert!(methods.iter().filter(|m| *m == "oauth/revoke").count() >= 3, "{methods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_has_its_rfc_error() {
    let d = daemon_with("");
    let f = Flow::new(&d);
    let endpoint_a = d.endpoint("a");
    let client = f.register("refusals", REDIRECT).await;
    let pkce = Pkce::new();

    // Unknown client and a redirect URI that was not registered: an error page, never a redirect.
    for (what, url, needle) in [
        (
            "unknown client",
            f.authorize_url("c_unknown", REDIRECT, "s", &pkce.challenge, &endpoint_a),
            "invalid_client",
        ),
        (
            "redirect mismatch",
            f.authorize_url(&client, "http://127.0.0.1:9/other", "s", &pkce.challenge, &endpoint_a),
            "exact match required",
        ),
        (
            "redirect prefix",
            f.authorize_url(&client, &format!("{REDIRECT}/../x"), "s", &pkce.challenge, &endpoint_a),
            "exact match required",
        ),
    ] {
        let page = f.get(&url).await;
        assert_eq!(page.status, 400, "{what}: {}", page.body);
        assert!(page.headers.get("location").is_none(), "{what}: must not redirect");
        assert!(page.body.contains(needle), "{what}: {}", page.body);
    }

    // Errors the client can be told about come back on its redirect URI with state and iss.
    let base = |extra: &str| {
        format!(
            "http://{}/oauth/authorize?response_type=code&client_id={client}&redirect_uri={}&state=s{extra}",
            d.http_addr,
            oauth_support::enc(REDIRECT)
        )
    };
    let resource = format!("&resource={}", oauth_support::enc(&endpoint_a));
    let challenge = format!("&code_challenge={}", pkce.challenge);
    for (what, url, error) in [
        ("no PKCE", base(&resource), "invalid_request"),
        (
            "PKCE plain",
            base(&format!("{resource}{challenge}&code_challenge_method=plain")),
            "invalid_request",
        ),
        (
            "PKCE method missing (plain by default)",
            base(&format!("{resource}{challenge}")),
            "invalid_request",
        ),
        ("no resource", base(&format!("{challenge}&code_challenge_method=S256")), "invalid_target"),
        (
            "resource of another server",
            base(&format!(
                "{challenge}&code_challenge_method=S256&resource={}",
                oauth_support::enc("https://evil.example/mcp/a")
            )),
            "invalid_target",
        ),
        (
            "response_type token",
            base(&format!("{resource}{challenge}&code_challenge_method=S256"))
                .replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
    ] {
        let r = f.get(&url).await;
        assert_eq!(r.status, 302, "{what}: {}", r.body);
        let location = r.header("location");
        assert!(location.starts_with(REDIRECT), "{what}: {location}");
        assert_eq!(query_param(&location, "error").as_deref(), Some(error), "{what}: {location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("s"), "{what}");
        assert!(query_param(&location, "iss").is_some(), "{what}");
    }

    // Registration: redirect URIs must be https or loopback http.
    for bad in ["http://example.com/cb", "javascript:alert(1)", "https://x.example/cb#frag"] {
        let r = f
            .register_raw(
                json!({"client_name": "x", "redirect_uris": [bad], "token_endpoint_auth_method": "none"}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"], "invalid_redirect_uri", "{bad}");
    }
    let r = f
        .register_raw(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}))
        .await;
    assert_eq!(r.json()["error"], "invalid_client_metadata");

    // Token endpoint refusals.
    let unknown = f.exchange("c_unknown", "cwc_x", REDIRECT, &pkce.verifier, None).await;
    assert_eq!((unknown.status, unknown.json()["error"].clone()), (401, json!("invalid_client")));
    let password = f.form(&[("grant_type", "password"), ("client_id", &client), ("username", "u")]).await;
    assert_eq!(password.json()["error"], "unsupported_grant_type");

    // A wrong PKCE verifier, a missing verifier, a wrong redirect URI: invalid_grant / invalid_request.
    let code = f.code(&d, &client, REDIRECT, &pkce, &endpoint_a).await;
    let missing = f
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &client),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(missing.json()["error"], "invalid_request", "{}", missing.body);
    let wrong = f.exchange(&client, &code, REDIRECT, &Pkce::new().verifier, None).await;
    assert_eq!(wrong.json()["error"], "invalid_grant", "{}", wrong.body);
    // That attempt spent the code.
    let spent = f.exchange(&client, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(spent.json()["error"], "invalid_grant");

    let code = f.code(&d, &client, REDIRECT, &pkce, &endpoint_a).await;
    let wrong_redirect = f.exchange(&client, &code, "http://127.0.0.1:9/other", &pkce.verifier, None).await;
    assert_eq!(wrong_redirect.json()["error"], "invalid_grant");

    // A token asked for another app's endpoint than the one approved: invalid_target.
    let code = f.code(&d, &client, REDIRECT, &pkce, &endpoint_a).await;
    let target = f.exchange(&client, &code, REDIRECT, &pkce.verifier, Some(&d.endpoint("b"))).await;
    assert_eq!(target.json()["error"], "invalid_target", "{}", target.body);

    // Another client cannot use this client's code.
    let thief = f.register("thief", REDIRECT).await;
    let code = f.code(&d, &client, REDIRECT, &pkce, &endpoint_a).await;
    let stolen = f.exchange(&thief, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(stolen.json()["error"], "invalid_grant");

    // Code reuse: the second exchange fails, and the tokens the first one issued are revoked.
    let code = f.code(&d, &client, REDIRECT, &pkce, &endpoint_a).await;
    let first = f.exchange(&client, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let access = first.json()["access_token"].as_str().unwrap().to_string();
    assert!(mcp_works(&endpoint_a, &access).await);
    let second = f.exchange(&client, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(second.json()["error"], "invalid_grant");
    assert_eq!(status_of(&endpoint_a, &access).await, 401, "a reused code revokes its grant");

    // Forged and malformed bearer tokens.
    for bad in [format!("cwa_{}", "0".repeat(76)), "cwa_short".to_string(), access.replace("cwa_", "cw_")] {
        assert_eq!(status_of(&endpoint_a, &bad).await, 401, "{bad}");
    }

    // A deployer key cannot approve access to an app it does not manage; it can for its own app.
    let bob = Key::generate(d.tmp.path(), "bob");
    ok(&d.ssh(&d.admin, "keys add bob --role deployer", &bob.public_text()));
    ok(&d.ssh(&bob, "apps create bobs", ""));
    let url = f.authorize_url(&client, REDIRECT, "s", &Pkce::new().challenge, &endpoint_a);
    let code = oauth_support::approval_code(&f.get(&url).await.body, d.ssh_port);
    let refused = d.ssh(&bob, &format!("approve {code}"), "");
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("needs the admin role or ownership of a"), "{}", stderr(&refused));
    assert_eq!(f.get(&url).await.status, 200, "still pending after the refused approval");
    let own = f.authorize_url(&client, REDIRECT, "s", &Pkce::new().challenge, &d.endpoint("bobs"));
    let code = oauth_support::approval_code(&f.get(&own).await.body, d.ssh_port);
    let approved = ok(&d.ssh(&bob, &format!("approve {}", code.to_lowercase().replace('-', "")), ""));
    assert!(approved.contains("may now use bobs"), "{approved}");
    // The local CLI (the operator on the host) approves too.
    let url = f.authorize_url(&client, REDIRECT, "local", &Pkce::new().challenge, &endpoint_a);
    let code = oauth_support::approval_code(&f.get(&url).await.body, d.ssh_port);
    let local: Value = serde_json::from_str(&ok(&d.local(&["approve", &code, "--json"], ""))).unwrap();
    assert_eq!((local["app"].clone(), local["approved_by"].clone()), (json!("a"), json!("local")));
    assert_eq!(f.get(&url).await.status, 302);
    // Bob cannot list or revoke a's grants either: to him, a does not exist.
    let denied = d.ssh(&bob, "grants list a", "");
    assert!(!denied.status.success() && stderr(&denied).contains("no app named a "), "{}", stderr(&denied));
    // `apps destroy` removes the app's grants with it.
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&d.ssh(&bob, "grants list bobs --json", "")))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(&d.ssh(&bob, "apps destroy bobs --confirm bobs", ""));
    ok(&d.ssh(&bob, "apps create bobs", ""));
    assert_eq!(ok(&d.ssh(&bob, "grants list bobs --json", "")).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_codes_and_tokens_are_refused() {
    // Zero lifetimes: every code is already expired when it is exchanged; every access token at once.
    let codes = daemon_with("[oauth]\ncode_ttl = \"0s\"\nmax_clients = 2\n");
    let f = Flow::new(&codes);
    let client = f.register("expiry", REDIRECT).await;
    let pkce = Pkce::new();
    let code = f.code(&codes, &client, REDIRECT, &pkce, &codes.endpoint("a")).await;
    let r = f.exchange(&client, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(r.json()["error_description"].as_str().unwrap().contains("expired"), "{}", r.body);
    // Registration is open but bounded (`max_clients`; here 2): past it, 503 temporarily_unavailable.
    f.register("second", REDIRECT).await;
    let third =
        f.register_raw(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})).await;
    assert_eq!(
        (third.status, third.json()["error"].clone()),
        (503, json!("temporarily_unavailable")),
        "{}",
        third.body
    );

    let tokens = daemon_with("[oauth]\naccess_token_ttl = \"0s\"\n");
    let f = Flow::new(&tokens);
    let client = f.register("expiry", REDIRECT).await;
    let (access, refresh) = f.connect(&tokens, &client, REDIRECT, &tokens.endpoint("a")).await;
    assert_eq!(status_of(&tokens.endpoint("a"), &access).await, 401, "an expired access token is refused");
    let r = f.refresh(&client, &refresh, None).await;
    assert_eq!(r.status, 200, "the refresh token still works: {}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_modes_token_only_and_public() {
    let d = Daemon::start_with_config("[gateway]\nrate_limit_per_minute = 3\n");
    let f = Flow::new(&d);

    // auth = "none": public, printed loudly on the push, still rate-limited.
    let public = WorkTree::new(d.tmp.path(), "open");
    public.commit(
        "catwalk.toml",
        "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n[deploy]\nauth = \"none\"\n",
    );
    public.git(&["remote", "add", "catwalk", &d.remote_url("open")]);
    let out = public.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WARNING: auth = \"none\"") && stderr(&out).contains("is PUBLIC"),
        "{}",
        stderr(&out)
    );
    let mut m = Mcp::new(&d.endpoint("open"), None);
    assert_eq!(m.initialize().await.status, 200, "no token needed");
    let mut limited = false;
    for _ in 0..6 {
        if m.request("tools/list", json!({})).await.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "a public endpoint is still rate-limited");
    let meta = f
        .http
        .get(format!("http://{}/.well-known/oauth-protected-resource/mcp/open", d.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(meta.status(), 404);

    // auth = "token": tokens only; no OAuth metadata, no resource_metadata in the challenge, and the
    // authorization endpoint refuses the resource. The app starts with the default (its push says how to
    // connect Claude) and an OAuth token; switching the release to "token" ends that token's use.
    let tok = WorkTree::new(d.tmp.path(), "tok");
    tok.git(&["remote", "add", "catwalk", &d.remote_url("tok")]);
    let out = tok.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hint = format!(
        "connect Claude, Claude Code, Cursor or VS Code: ssh -p {} git@127.0.0.1 connect tok",
        d.ssh_port
    );
    assert!(stderr(&out).contains(&hint), "{}", stderr(&out));
    let client = f.register("token-only", REDIRECT).await;
    let (access, _) = f.connect(&d, &client, REDIRECT, &d.endpoint("tok")).await;
    assert_eq!(Mcp::new(&d.endpoint("tok"), Some(&access)).initialize().await.status, 200);
    tok.commit("catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n[deploy]\nauth = \"token\"\n");
    let out = tok.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("connect Claude"), "{}", stderr(&out));
    assert_eq!(status_of(&d.endpoint("tok"), &access).await, 401, "OAuth tokens stop with auth = \"token\"");
    let resp = f
        .http
        .post(d.endpoint("tok"))
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let meta = f
        .http
        .get(format!("http://{}/.well-known/oauth-protected-resource/mcp/tok", d.http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(meta.status(), 404);
    let r = f.get(&f.authorize_url(&client, REDIRECT, "s", &Pkce::new().challenge, &d.endpoint("tok"))).await;
    assert_eq!(query_param(&r.header("location"), "error").as_deref(), Some("invalid_target"));
    let token = d.token("tok");
    assert_eq!(Mcp::new(&d.endpoint("tok"), Some(&token)).initialize().await.status, 200);
    let info = ok(&d.ssh(&d.admin, "info tok", ""));
    assert!(info.contains("auth:       token"), "{info}");

    // A bad auth value is refused with the accepted ones named, and the live release stays.
    tok.commit("catwalk.toml", "[server]\nlanguage = \"python\"\ncommand = [\"python\", \"server.py\"]\n[deploy]\nauth = \"oauth\"\n");
    let out = tok.push(&d, &d.admin, &["catwalk", "main"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("deploy.auth \"oauth\": use \"oauth+token\" (default), \"token\" or \"none\""),
        "{}",
        stderr(&out)
    );
    let _ = stdout(&out);

    // The public endpoint's calls are audited under the caller name "public".
    d.sigterm();
    let mut d = d;
    assert!(d.wait_exit().success());
    let store = catwalk::store::Store::open(&d.dir.join("state.redb")).unwrap();
    let audit = store.audit("open", 100).unwrap();
    assert!(audit.iter().any(|r| r.token == "public" && r.method == "tools/list"), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_id_metadata_documents() {
    let ca = tls_support::TestCa::new();
    let leaf = ca.leaf("cimd", &[], -1, 30);
    let callback = "http://127.0.0.1:9/cimd-callback";
    let server = oauth_support::cimd::CimdServer::start(&leaf.cert_pem, &leaf.key_pem, callback).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write(tmp.path());
    // The test-only escape: loopback fetches allowed, the test CA trusted, a small size limit.
    let d = daemon_with(&format!(
        "[oauth]\ncimd_allow_loopback_for_tests = true\ncimd_test_ca = {:?}\ncimd_max_bytes = 4096\n",
        ca_file.display().to_string()
    ));
    let f = Flow::new(&d);
    let endpoint = d.endpoint("a");

    // A metadata-document client: no registration, the URL is the client_id.
    let client = server.url("/client.json");
    let pkce = Pkce::new();
    let url = f.authorize_url(&client, callback, "m1", &pkce.challenge, &endpoint);
    let page = f.get(&url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Metadata Client asks to use a"), "{}", page.body);
    let fetched = server.hits();
    assert_eq!(fetched, 1);
    let code = oauth_support::approval_code(&page.body, d.ssh_port);
    ok(&d.ssh(&d.admin, &format!("approve {code}"), ""));
    let back = f.get(&url).await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert!(back.header("location").starts_with(callback));
    let auth_code = query_param(&back.header("location"), "code").unwrap();
    assert_eq!(server.hits(), fetched, "the document is cached, not fetched on every reload");
    let t = f.exchange(&client, &auth_code, callback, &pkce.verifier, Some(&endpoint)).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert!(mcp_works(&endpoint, t.json()["access_token"].as_str().unwrap()).await);
    // A redirect URI the document does not list is refused like for registered clients.
    let page = f.get(&f.authorize_url(&client, REDIRECT, "m2", &pkce.challenge, &endpoint)).await;
    assert_eq!(page.status, 400);

    // Documents that must be refused: too large, naming another client, redirecting.
    for (path, needle) in [
        ("/big.json", "larger than 4096 bytes"),
        ("/wrong.json", "is not the URL it was fetched from"),
        ("/redirect.json", "redirects are not followed"),
    ] {
        let page =
            f.get(&f.authorize_url(&server.url(path), callback, "m", &pkce.challenge, &endpoint)).await;
        assert_eq!(page.status, 400, "{path}: {}", page.body);
        assert!(page.body.contains(needle), "{path}: {}", page.body);
    }
    // Private addresses are refused before any connection, even with the test escape on; so is http.
    for (id, needle) in [
        ("https://10.0.0.1/client.json", "non-public address"),
        ("https://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://localhost/client.json", "not registered"),
    ] {
        let page = f.get(&f.authorize_url(id, callback, "m", &pkce.challenge, &endpoint)).await;
        assert_eq!(page.status, 400, "{id}: {}", page.body);
        assert!(page.body.contains(needle), "{id}: {}", page.body);
    }

    // Without the escape (production settings) loopback is refused: nothing is fetched.
    let strict = daemon_with("");
    let f = Flow::new(&strict);
    let before = server.hits();
    for id in [server.url("/client.json"), format!("https://127.0.0.1:{}/client.json", server.port)] {
        let page = f.get(&f.authorize_url(&id, callback, "m", &pkce.challenge, &strict.endpoint("a"))).await;
        assert_eq!(page.status, 400, "{id}: {}", page.body);
        assert!(page.body.contains("non-public address"), "{id}: {}", page.body);
    }
    assert_eq!(server.hits(), before, "no request reached the loopback server");
}

/// Runs the official TS SDK 2.x client's own OAuth implementation against `url` (see the script).
fn sdk_client(d: &Daemon, url: &str, cimd: Option<&str>) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ts_oauth_client.mjs");
    let mut approve: Vec<String> = vec!["ssh".into()];
    approve.extend(d.ssh_args(&d.admin));
    approve.push("git@127.0.0.1".into());
    let mut cmd = std::process::Command::new(deps::node22());
    cmd.arg(script).args(["--url", url, "--approve-cmd", &serde_json::to_string(&approve).unwrap()]);
    if let Some(c) = cimd {
        cmd.args(["--cimd", c]);
    }
    // The client's own fetch must not go through a proxy, and must trust only the system CAs.
    cmd.env_remove("HTTP_PROXY").env_remove("HTTPS_PROXY").env_remove("http_proxy").env_remove("https_proxy");
    let (success, out, err) =
        deps::run_with_timeout("ts_oauth_client", &mut cmd, std::time::Duration::from_secs(120));
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(success, "the SDK client failed: {summary:#}\nstderr:\n{err}");
    summary
}

#[tokio::test(flavor = "multi_thread")]
async fn official_ts_sdk_client_completes_the_flow() {
    let d = daemon_with("");
    let summary = tokio::task::block_in_place(|| sdk_client(&d, &d.endpoint("a"), None));
    assert_eq!(summary["ok"], true, "{summary:#}");
    let steps = summary["steps"].to_string();
    for s in ["authorization_url", "approved", "called", "refreshed", "revoked"] {
        assert!(steps.contains(s), "{s} missing: {summary:#}");
    }
    // The SDK registered itself (RFC 7591), and its grant is revoked now.
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    assert!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["client_name"] == "SDK 2.x test client" && g["status"] == "revoked"),
        "{grants}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn official_ts_sdk_client_with_a_client_id_metadata_document() {
    let ca = tls_support::TestCa::new();
    let leaf = ca.leaf("cimd", &[], -1, 30);
    let server = oauth_support::cimd::CimdServer::start(
        &leaf.cert_pem,
        &leaf.key_pem,
        "http://127.0.0.1:9/sdk-callback",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write(tmp.path());
    let d = daemon_with(&format!(
        "[oauth]\ncimd_allow_loopback_for_tests = true\ncimd_test_ca = {:?}\n",
        ca_file.display().to_string()
    ));
    let cimd = server.url("/client.json");
    let summary = tokio::task::block_in_place(|| sdk_client(&d, &d.endpoint("a"), Some(&cimd)));
    assert_eq!(summary["steps"][0]["authorization_url"]["client_id"], json!(cimd), "{summary:#}");
    assert!(server.hits() >= 1);
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    assert_eq!(grants[0]["client_id"], json!(cimd), "{grants}");
    assert_eq!(grants[0]["client_name"], "Metadata Client");
}

#[tokio::test(flavor = "multi_thread")]
async fn official_python_sdk_2_client_completes_the_flow() {
    let python = deps::deps_dir().join("venv-mcp2/bin/python");
    assert!(python.exists(), "run ./scripts/test-deps first: {} (mcp 2.x venv) is missing", python.display());
    let d = daemon_with("");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/py_oauth_client.py");
    let mut approve: Vec<String> = vec!["ssh".into()];
    approve.extend(d.ssh_args(&d.admin));
    approve.push("git@127.0.0.1".into());
    let url = d.endpoint("a");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script).args(["--url", &url, "--approve-cmd", &serde_json::to_string(&approve).unwrap()]);
    let (success, out, err) = tokio::task::block_in_place(|| {
        deps::run_with_timeout("py_oauth_client", &mut cmd, std::time::Duration::from_secs(120))
    });
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\nstdout:\n{out}\nstderr:\n{err}"));
    assert!(success && summary["ok"] == true, "the Python SDK client failed: {summary:#}\nstderr:\n{err}");
    let steps = summary["steps"].to_string();
    for s in ["authorization_url", "approved", "called", "refreshed"] {
        assert!(steps.contains(s), "{s} missing: {summary:#}");
    }
    let grants: Value = serde_json::from_str(&ok(&d.ssh(&d.admin, "grants list a --json", ""))).unwrap();
    assert!(
        grants.as_array().unwrap().iter().any(|g| g["client_name"] == "Python SDK 2.x test client"),
        "{grants}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consent_form_refuses_forgeries() {
    let d = daemon_with("");
    let f = Flow::new(&d);
    // A client name is text, never markup.
    let client = f.register("<script>alert(1)</script> & co", REDIRECT).await;
    let pkce = Pkce::new();
    let url = f.authorize_url(&client, REDIRECT, "csrf", &pkce.challenge, &d.endpoint("a"));
    let page = f.get(&url).await;
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co asks to use a"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>"));
    assert!(!page.body.contains("<form"), "no form without a session");

    // A browser session from a one-time `login` link (the cookie is HttpOnly and SameSite=Strict).
    let sign_in = |key: &daemon::Key| {
        let v: Value = serde_json::from_str(&ok(&d.ssh(key, "login --json", ""))).unwrap();
        v["url"].as_str().unwrap().to_string()
    };
    let opened = f.get(&sign_in(&d.admin)).await;
    assert_eq!(opened.status, 200, "{}", opened.body);
    let set_cookie = opened.header("set-cookie");
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("Path=/oauth"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let with_session = f.http.get(&url).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let field = |name: &str| {
        let at = with_session
            .find(&format!("name=\"{name}\" value=\""))
            .unwrap_or_else(|| panic!("no {name}: {with_session}"));
        let rest = &with_session[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_string()
    };
    let (request, csrf) = (field("request"), field("csrf"));
    let origin = f.base.clone();
    let post = |cookie: Option<String>, origin: Option<String>, body: String| {
        let mut req = f
            .http
            .post(format!("{}/oauth/authorize", f.base))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move {
            let r = req.body(body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers().get("location").map(|v| v.to_str().unwrap().to_string()),
                r.text().await.unwrap(),
            )
        }
    };
    let form = |csrf: &str, decision: &str| format!("request={request}&csrf={csrf}&decision={decision}");
    for (what, cookie, origin, body) in [
        ("no session cookie", None, Some(origin.clone()), form(&csrf, "allow")),
        (
            "a forged session cookie",
            Some(format!("cw_session=cws_{}", "0".repeat(76))),
            Some(origin.clone()),
            form(&csrf, "allow"),
        ),
        ("a wrong CSRF token", Some(cookie.clone()), Some(origin.clone()), form(&"0".repeat(64), "allow")),
        (
            "no CSRF token",
            Some(cookie.clone()),
            Some(origin.clone()),
            format!("request={request}&decision=allow"),
        ),
        (
            "another site's form",
            Some(cookie.clone()),
            Some("https://evil.example".into()),
            form(&csrf, "allow"),
        ),
    ] {
        let (status, location, body) = post(cookie, origin, body).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert!(location.is_none(), "{what}");
    }
    assert_eq!(f.get(&url).await.status, 200, "still pending after every forgery");

    // A deployer's browser session cannot allow access to an app it does not manage.
    let bob = daemon::Key::generate(d.tmp.path(), "bob");
    ok(&d.ssh(&d.admin, "keys add bob --role deployer", &bob.public_text()));
    let bob_cookie = f.get(&sign_in(&bob)).await.header("set-cookie").split(';').next().unwrap().to_string();
    let bob_page = f.http.get(&url).header("cookie", &bob_cookie).send().await.unwrap().text().await.unwrap();
    let at = bob_page.find("name=\"csrf\" value=\"").unwrap();
    let bob_csrf = bob_page[at + 19..at + 19 + 64].to_string();
    let (status, _, body) = post(Some(bob_cookie), Some(origin.clone()), form(&bob_csrf, "allow")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs the admin role or ownership of a"), "{body}");

    // The admin's Deny sends the client access_denied; the request is over.
    let (status, location, _) = post(Some(cookie.clone()), Some(origin.clone()), form(&csrf, "deny")).await;
    assert_eq!(status, 303);
    let location = location.unwrap();
    assert_eq!(query_param(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&location, "state").as_deref(), Some("csrf"));
    assert!(query_param(&location, "code").is_none());
    let (status, _, _) = post(Some(cookie.clone()), Some(origin.clone()), form(&csrf, "allow")).await;
    assert_eq!(status, 403, "a denied request cannot be allowed afterwards");

    // Allow on a fresh request: 303 to the client with a code that works.
    let pkce = Pkce::new();
    let url = f.authorize_url(&client, REDIRECT, "csrf2", &pkce.challenge, &d.endpoint("a"));
    let page = f.http.get(&url).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let at = page.find("name=\"request\" value=\"").unwrap();
    let request = page[at + 22..at + 22 + 12].to_string();
    let at = page.find("name=\"csrf\" value=\"").unwrap();
    let csrf = page[at + 19..at + 19 + 64].to_string();
    let (status, location, _) =
        post(Some(cookie.clone()), Some(origin), format!("request={request}&csrf={csrf}&decision=allow"))
            .await;
    assert_eq!(status, 303);
    let code = query_param(&location.unwrap(), "code").unwrap();
    let t = f.exchange(&client, &code, REDIRECT, &pkce.verifier, None).await;
    assert_eq!(t.status, 200, "{}", t.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn confidential_clients_authenticate_at_the_token_endpoint() {
    use base64::Engine;
    let d = daemon_with("");
    let f = Flow::new(&d);
    // RFC 7591's default method is client_secret_basic: the answer carries a secret.
    let r = f.register_raw(json!({"client_name": "confidential", "redirect_uris": [REDIRECT]})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let reg = r.json();
    assert_eq!(reg["token_endpoint_auth_method"], "client_secret_basic");
    let (id, secret) =
        (reg["client_id"].as_str().unwrap().to_string(), reg["client_secret"].as_str().unwrap().to_string());
    let pkce = Pkce::new();
    let code = f.code(&d, &id, REDIRECT, &pkce, &d.endpoint("a")).await;
    let token = |auth: Option<String>, extra: Vec<(&'static str, String)>| {
        let mut fields: Vec<(&str, String)> = vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.into()),
            ("code_verifier", pkce.verifier.clone()),
        ];
        fields.extend(extra);
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut req = f
            .http
            .post(format!("{}/oauth/token", f.base))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move {
            let r = req.body(body).send().await.unwrap();
            let www = r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), www, r.json::<Value>().await.unwrap())
        }
    };
    let basic =
        |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{s}")));
    let (status, www, body) = token(Some(basic("wrong")), vec![]).await;
    assert_eq!((status, body["error"].clone()), (401, json!("invalid_client")));
    assert!(www.unwrap_or_default().starts_with("Basic"), "a Basic failure answers a Basic challenge");
    let (status, _, body) = token(None, vec![("client_id", id.clone())]).await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_client")),
        "a confidential client must authenticate"
    );
    let (status, _, body) = token(Some(basic(&secret)), vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].as_str().unwrap().starts_with("cwa_"));
    // The secret is kept as a digest only: it is nowhere in the store file.
    d.sigterm();
    let mut d = d;
    assert!(d.wait_exit().success());
    let raw = std::fs::read(d.dir.join("state.redb")).unwrap();
    for secret in [
        secret.as_str(),
        body["access_token"].as_str().unwrap(),
        body["refresh_token"].as_str().unwrap(),
        &code,
    ] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a plaintext secret is in state.redb"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_tokens_never_reach_the_server() {
    // An HTTP MCP upstream that records every request it gets, and answers a JSON-RPC result.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let upstream = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            record.lock().unwrap().push(text.clone());
                            let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
                            let _ = s
                                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}", answer.len()).as_bytes())
                                .await;
                            buf.clear();
                        }
                    }
                }
            });
        }
    });
    let d = daemon_with(&format!("[apps.up]\nurl = \"http://127.0.0.1:{port}/mcp\"\n"));
    let f = Flow::new(&d);
    let client = f.register("forwarding", REDIRECT).await;
    let (access, _) = f.connect(&d, &client, REDIRECT, &d.endpoint("up")).await;
    let resp = f
        .http
        .post(d.endpoint("up"))
        .bearer_auth(&access)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].contains("tools/list"), "{}", requests[0]);
    assert!(!requests[0].to_ascii_lowercase().contains("authorization"), "forwarded: {}", requests[0]);
    assert!(!requests[0].contains(&access), "the access token reached the server");
    upstream.abort();
}
