//! The authorization endpoint (`GET /oauth/authorize`): validates the request, shows the consent page
//! with the `ssh ... approve CODE` line, and, once the request is approved, answers the client's
//! redirect with `code`, `state` and `iss` (RFC 9207). Also the browser path: `GET /oauth/login/<link>`
//! opens a session (cookie), with which the page offers Allow / Deny (`POST /oauth/authorize`).
//!
//! The page polls by reloading itself (`<meta http-equiv="refresh">`: no script, so the page needs no
//! `script-src` at all). Reloading finds the same pending request by the digest of its parameters; the
//! code is issued on the first load after approval, once. A copy of the URL in someone else's hands is
//! no use to them: the code only works with the PKCE verifier, which never leaves the client.

use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::OAuth;
use super::http::{Params, Resp, cookie, escape, html, origin_of, redirect};
use crate::gateway::AuthMode;
use crate::identity::Identity;
use crate::store::{AuthRequest, ClientRecord, GrantRecord, SessionRecord, now, oauth_digest};

const SESSION_COOKIE: &str = "cw_session";

/// What a valid authorization request asks for.
struct Asked {
    client: ClientRecord,
    redirect_uri: url::Url,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    app: String,
    scope: Option<String>,
}

/// An error page for requests that cannot be sent back to the client (unknown client, bad redirect
/// URI: RFC 6749 §4.1.2.1 forbids redirecting those).
fn error_page(status: StatusCode, error: &str, description: &str) -> Resp {
    let body = page_html(
        "This authorization request cannot be used",
        &format!(
            "<h1>This authorization request cannot be used</h1>\n<p class=\"err\"><b>{}</b>: {}</p>\n\
             <p>Start again from the application that sent you here. If it keeps happening, its OAuth \
             settings do not match this server.</p>",
            escape(error),
            escape(description)
        ),
        None,
    );
    html(status, body, &[])
}

fn page_html(title: &str, main: &str, refresh_seconds: Option<u32>) -> String {
    let refresh = refresh_seconds
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">\n"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n{refresh}\
         <title>{} · catwalk</title>\n<style>\n\
         body{{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#1d1d1b}}\n\
         main{{max-width:40rem;margin:3rem auto;padding:2rem;background:#fff;border:1px solid #ddd;border-radius:8px}}\n\
         h1{{font-size:1.35rem;margin-top:0}}\n\
         pre{{background:#1d1d1b;color:#f6f6f4;padding:1rem;border-radius:6px;overflow-x:auto;font-size:1rem}}\n\
         .err{{color:#a10000}} .muted{{color:#666;font-size:.9rem}}\n\
         button{{font-size:1rem;padding:.5rem 1.25rem;margin-right:.75rem;border-radius:6px;border:1px solid #888;cursor:pointer}}\n\
         button.allow{{background:#1d6b2f;color:#fff;border-color:#1d6b2f}}\n\
         </style>\n</head>\n<body>\n<main>\n{main}\n</main>\n</body>\n</html>\n",
        escape(title)
    )
}

/// What the user sees as the client's destination: `host[:port]` (or the private-use scheme).
pub fn redirect_host(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => format!("{}:", url.scheme()),
    }
}

/// The client's redirect URI with `params` added, plus `iss` (RFC 9207) and `state` when present.
fn client_redirect(uri: &str, issuer: &str, state: Option<&str>, params: &[(&str, &str)]) -> String {
    let Ok(mut url) = url::Url::parse(uri) else { return uri.to_string() };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", issuer);
    }
    url.to_string()
}

fn error_redirect(
    oauth: &OAuth,
    asked_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Resp {
    redirect(
        StatusCode::FOUND,
        &client_redirect(
            asked_uri,
            &oauth.issuer,
            state,
            &[("error", error), ("error_description", description)],
        ),
    )
}

/// The client named by `client_id`: registered (RFC 7591) or a metadata document URL (fetched, cached).
pub async fn resolve_client(oauth: &OAuth, client_id: Option<&str>) -> Result<ClientRecord, String> {
    let Some(id) = client_id else { return Err("client_id is missing".into()) };
    if id.starts_with("https://") {
        return oauth.cimd.client(&oauth.store, id, &oauth.cfg).await;
    }
    match oauth.store.oauth_client(id) {
        Ok(Some(c)) if !c.metadata_document => Ok(c),
        Ok(_) => {
            Err(format!("client_id {id:?} is not registered with this server (register it first, RFC 7591)"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Checks the request; `Err` is the full answer (an error page, or an error redirect to the client).
async fn check(oauth: &OAuth, params: &Params) -> Result<Asked, Resp> {
    let client = resolve_client(oauth, params.get("client_id"))
        .await
        .map_err(|e| error_page(StatusCode::BAD_REQUEST, "invalid_client", &e))?;
    let redirect_uri = match params.get("redirect_uri") {
        Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => uri.to_string(),
        Some(uri) => {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "redirect_uri {uri:?} is not one of the redirect URIs registered for this client (exact match required)"
                ),
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is required when a client registered several",
            ));
        }
    };
    let redirect_url = url::Url::parse(&redirect_uri)
        .map_err(|e| error_page(StatusCode::BAD_REQUEST, "invalid_request", &format!("redirect_uri: {e}")))?;
    let state = params.get("state").map(str::to_string);
    let back = |error: &str, description: &str| {
        Box::new(error_redirect(oauth, &redirect_uri, state.as_deref(), error, description))
    };
    match params.get("response_type") {
        Some("code") => {}
        Some(other) => {
            return Err(*back(
                "unsupported_response_type",
                &format!("response_type {other:?} is not supported; use \"code\""),
            ));
        }
        None => return Err(*back("invalid_request", "response_type is missing; use \"code\"")),
    }
    let Some(challenge) = params.get("code_challenge") else {
        return Err(*back("invalid_request", "code_challenge is required (PKCE with S256)"));
    };
    match params.get("code_challenge_method") {
        Some("S256") => {}
        Some(other) => {
            return Err(*back(
                "invalid_request",
                &format!(
                    "code_challenge_method {other:?} is not supported: transform algorithm not supported, use S256"
                ),
            ));
        }
        None => {
            return Err(*back(
                "invalid_request",
                "code_challenge_method is required and must be S256 (plain is not accepted)",
            ));
        }
    }
    if challenge.len() != 43
        || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(*back("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)"));
    }
    let Some(resource) = params.get("resource") else {
        return Err(*back(
            "invalid_target",
            &format!(
                "resource is required (RFC 8707): the MCP endpoint URL, e.g. {}",
                oauth.resource_url("APP")
            ),
        ));
    };
    let Some(app) = oauth.app_of_resource(resource) else {
        return Err(*back(
            "invalid_target",
            &format!(
                "resource {resource:?} is not an MCP endpoint of this server ({}/mcp/APP)",
                oauth.issuer
            ),
        ));
    };
    if oauth.mode(&app) != AuthMode::OAuthAndToken {
        return Err(*back("invalid_target", &format!("the endpoint of {app} does not accept OAuth")));
    }
    let scope = params.get("scope").map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect());
    Ok(Asked {
        client,
        redirect_uri: redirect_url,
        state,
        code_challenge: challenge.to_string(),
        resource: oauth.resource_url(&app),
        app,
        scope,
    })
}

fn params_digest(a: &Asked) -> String {
    let mut h = Sha256::new();
    for part in [
        a.client.client_id.as_str(),
        a.redirect_uri.as_str(),
        a.state.as_deref().unwrap_or(""),
        &a.code_challenge,
        &a.resource,
        a.scope.as_deref().unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())
}

/// The browser session of this request, if its cookie is valid.
fn session_of(oauth: &OAuth, headers: &http::HeaderMap) -> Option<SessionRecord> {
    let secret = cookie(headers, SESSION_COOKIE)?;
    oauth.store.session(secret).ok().flatten()
}

fn csrf_token(oauth: &OAuth, session: &SessionRecord, request_id: &str) -> String {
    hex::encode(oauth.mac(&["csrf", &session.id, request_id]))
}

fn session_identity(session: &SessionRecord) -> Identity {
    Identity { name: session.key.clone(), role: session.role, fingerprint: None }
}

/// `GET /oauth/authorize`.
pub async fn page(oauth: &OAuth, req: Request<Incoming>) -> Resp {
    let params = match Params::parse(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(name) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("parameter {name:?} is repeated"),
            );
        }
    };
    let asked = match check(oauth, &params).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let digest = params_digest(&asked);
    let request = match oauth.store.auth_request_by_params(&digest) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let id = crate::store::oauth_random_id("", 6);
            let request = AuthRequest {
                approval_digest: oauth_digest(&oauth.approval_code(&id)),
                id,
                params_digest: digest,
                client_id: asked.client.client_id.clone(),
                client_name: asked.client.client_name.clone(),
                redirect_uri: asked.redirect_uri.to_string(),
                state: asked.state.clone(),
                code_challenge: asked.code_challenge.clone(),
                resource: asked.resource.clone(),
                app: asked.app.clone(),
                scope: asked.scope.clone(),
                created_at: now(),
                expires_at: now() + oauth.cfg.approval_ttl.as_secs(),
                approved_by: None,
                denied_by: None,
                grant_id: None,
                code_digest: None,
                code_expires_at: None,
                code_used: false,
            };
            if let Err(e) = oauth.store.put_auth_request(&request) {
                return error_page(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string());
            }
            request
        }
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
    };
    // The client stored `redirect_uri` exactly as sent; answer on that very string.
    let uri = request.redirect_uri.clone();
    if request.denied_by.is_some() {
        return error_redirect(
            oauth,
            &uri,
            request.state.as_deref(),
            "access_denied",
            "the request was denied",
        );
    }
    if request.approved_by.is_some() {
        match oauth.store.issue_code(&request.id, oauth.cfg.code_ttl.as_secs()) {
            Ok(Some((code, request))) => return code_redirect(oauth, &request, &code),
            Ok(None) => return finished_page(&request),
            Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
        }
    }
    if request.answered() {
        return finished_page(&request);
    }
    let session = session_of(oauth, req.headers());
    consent_page(oauth, &request, &asked.redirect_uri, session.as_ref())
}

fn code_redirect(oauth: &OAuth, request: &AuthRequest, code: &str) -> Resp {
    oauth.audit(
        &request.app,
        request.grant_id.as_deref().unwrap_or("-"),
        "oauth/code",
        Some(request.client_name.clone()),
        302,
    );
    redirect(
        StatusCode::FOUND,
        &client_redirect(&request.redirect_uri, &oauth.issuer, request.state.as_deref(), &[("code", code)]),
    )
}

fn finished_page(request: &AuthRequest) -> Resp {
    let body = page_html(
        "Authorization finished",
        &format!(
            "<h1>This authorization is finished</h1>\n<p>{} was already sent back to its application for \
             <b>{}</b>. If the application is still waiting, start the connection again from it.</p>",
            escape(&request.client_name),
            escape(&request.app)
        ),
        None,
    );
    html(StatusCode::OK, body, &[])
}

fn consent_page(
    oauth: &OAuth,
    request: &AuthRequest,
    redirect_url: &url::Url,
    session: Option<&SessionRecord>,
) -> Resp {
    let code = oauth.approval_code(&request.id);
    let command = format!("{} approve {code}", oauth.ssh_command);
    let expires = time::OffsetDateTime::from_unix_timestamp(request.expires_at as i64)
        .ok()
        .and_then(|t| t.format(&time::macros::format_description!("[hour]:[minute] UTC")).ok())
        .unwrap_or_default();
    let client = escape(&request.client_name);
    let app = escape(&request.app);
    let mut main = format!(
        "<h1>{client} asks to use {app}</h1>\n\
         <p>Client: <b>{client}</b> <span class=\"muted\">(client_id {})</span><br>\n\
         After approval you are sent back to: <b>{}</b></p>\n\
         <p>Approving lets this client call the tools, resources and prompts of <b>{app}</b> \
         (<code>{}</code>) on your behalf until the grant is revoked. It gives no access to other apps, \
         to deploys, to logs or to secrets.</p>\n\
         <p>Approve it from a terminal, with a key that manages {app}:</p>\n<pre id=\"command\">{}</pre>\n\
         <p class=\"muted\">This page moves on by itself once the request is approved. The code works once \
         and expires at {expires}.</p>\n",
        escape(&request.client_id),
        escape(&redirect_host(redirect_url)),
        escape(&request.resource),
        escape(&command),
    );
    match session {
        Some(s) => {
            let csrf = csrf_token(oauth, s, &request.id);
            main.push_str(&format!(
                "<form method=\"post\" action=\"/oauth/authorize\">\n\
                 <p>Signed in as <b>{}</b> ({}) in this browser.</p>\n\
                 <input type=\"hidden\" name=\"request\" value=\"{}\">\n\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
                 <button class=\"allow\" type=\"submit\" name=\"decision\" value=\"allow\" id=\"allow\">Allow</button>\
                 <button type=\"submit\" name=\"decision\" value=\"deny\" id=\"deny\">Deny</button>\n</form>\n",
                escape(&s.key),
                s.role.as_str(),
                escape(&request.id),
            ));
        }
        None => main.push_str(&format!(
            "<p class=\"muted\">Prefer clicking? <code>{} login</code> prints a one-time sign-in link; open it \
             in this browser and this page offers Allow and Deny.</p>\n",
            escape(&oauth.ssh_command)
        )),
    }
    let title = format!("Approve {} for {}", request.client_name, request.app);
    // With a session the user is reading and clicking: reload less often.
    let refresh = if session.is_some() { 15 } else { 3 };
    html(StatusCode::OK, page_html(&title, &main, Some(refresh)), &[origin_of(redirect_url)])
}

/// `POST /oauth/authorize`: Allow or Deny from a signed-in browser.
pub async fn decision(oauth: &OAuth, req: Request<Incoming>) -> Resp {
    let forbidden = |why: &str| error_page(StatusCode::FORBIDDEN, "access_denied", why);
    // A form posted from another site is refused before anything else (the cookie is SameSite=Strict too).
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ours = url::Url::parse(&oauth.issuer).map(|u| origin_of(&u)).unwrap_or_default();
        if origin.to_str().ok() != Some(ours.as_str()) {
            return forbidden("this form may only be sent from this server's own page");
        }
    }
    let (headers, params) = match super::http::form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(session) = session_of(oauth, &headers) else {
        return forbidden("you are not signed in (or the session expired): run `login` again over ssh");
    };
    let (Some(id), Some(csrf)) = (params.get("request"), params.get("csrf")) else {
        return forbidden("the form is incomplete");
    };
    let expected = csrf_token(oauth, &session, id);
    if !bool::from(expected.as_bytes().ct_eq(csrf.as_bytes())) {
        return forbidden("the form's CSRF token is not valid; reload the authorization page");
    }
    let request = match oauth.store.auth_request(id) {
        Ok(Some(r)) => r,
        _ => return forbidden("this authorization request does not exist (any more)"),
    };
    let who = session_identity(&session);
    if let Err(e) = may_approve(oauth, &who, &request.app) {
        return forbidden(&e);
    }
    match params.get("decision") {
        Some("allow") => match approve_request(oauth, &who, &request) {
            Ok(_) => match oauth.store.issue_code(&request.id, oauth.cfg.code_ttl.as_secs()) {
                Ok(Some((code, request))) => {
                    let mut r = code_redirect(oauth, &request, &code);
                    *r.status_mut() = StatusCode::SEE_OTHER;
                    r
                }
                Ok(None) => finished_page(&request),
                Err(e) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e.to_string()),
            },
            Err(e) => forbidden(&e),
        },
        Some("deny") => match oauth.store.deny_auth_request(&request.id, &who.name) {
            Ok(request) => {
                oauth.audit(&request.app, &who.name, "oauth/deny", Some(request.client_name.clone()), 200);
                let mut r = error_redirect(
                    oauth,
                    &request.redirect_uri,
                    request.state.as_deref(),
                    "access_denied",
                    "the request was denied",
                );
                *r.status_mut() = StatusCode::SEE_OTHER;
                r
            }
            Err(e) => forbidden(&e.to_string()),
        },
        _ => forbidden("decision must be allow or deny"),
    }
}

/// Whether `who` may approve access to `app`: admins, and the app's owners. Unknown and foreign apps
/// get the same answer.
pub fn may_approve(oauth: &OAuth, who: &Identity, app: &str) -> Result<(), String> {
    match oauth.store.app(app) {
        Ok(Some(record)) if who.can_manage(&record) => Ok(()),
        Ok(None) if who.is_admin() => Err(format!("no app named {app} (see `apps`)")),
        Ok(_) => Err(format!(
            "approving access to {app} needs the admin role or ownership of {app} (you are {})",
            who.describe()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn approve_request(oauth: &OAuth, who: &Identity, request: &AuthRequest) -> Result<GrantRecord, String> {
    if oauth.mode(&request.app) != AuthMode::OAuthAndToken {
        return Err(format!(
            "the endpoint of {} does not accept OAuth (its auth setting changed)",
            request.app
        ));
    }
    let (_, grant) = oauth.store.approve_auth_request(&request.id, &who.name).map_err(|e| e.to_string())?;
    oauth.audit(
        &grant.app,
        &grant.id,
        "oauth/approve",
        Some(format!("{} by {}", grant.client_name, who.name)),
        200,
    );
    Ok(grant)
}

/// `approve CODE` (SSH or the local CLI): the request with this approval code, approved by `who`.
pub fn approve(oauth: &OAuth, who: &Identity, typed: &str) -> Result<(AuthRequest, GrantRecord), String> {
    let code = OAuth::normalize_code(typed);
    let not_found = || {
        format!(
            "no pending authorization request has the code {code:?} (codes expire after {}; reload the \
             authorization page for the current one)",
            humantime::format_duration(oauth.cfg.approval_ttl)
        )
    };
    let request = match oauth.store.auth_request_by_approval(&oauth_digest(&code)) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(not_found()),
        Err(e) => return Err(e.to_string()),
    };
    may_approve(oauth, who, &request.app)?;
    let grant = approve_request(oauth, who, &request)?;
    Ok((request, grant))
}

/// `GET /oauth/login/<link>`: spends a one-time link and sets the session cookie.
pub fn login(oauth: &OAuth, link: &str) -> Resp {
    let opened = oauth.store.open_session(link, oauth.cfg.session_ttl.as_secs());
    let Ok(Some((secret, session))) = opened else {
        let body = page_html(
            "Sign-in link not valid",
            &format!(
                "<h1>This sign-in link is not valid</h1>\n<p class=\"err\">It was already used, has expired, or \
                 was mistyped.</p>\n<p>Run <code>{} login</code> again for a new one.</p>",
                escape(&oauth.ssh_command)
            ),
            None,
        );
        return html(StatusCode::NOT_FOUND, body, &[]);
    };
    oauth.audit("-", &session.key, "oauth/login", None, 200);
    let body = page_html(
        "Signed in",
        &format!(
            "<h1>Signed in as {} ({})</h1>\n<p>This browser may now allow or deny authorization requests for \
             the apps this key manages, for {}. Go back to the authorization page (it reloads by itself).</p>",
            escape(&session.key),
            session.role.as_str(),
            humantime::format_duration(oauth.cfg.session_ttl)
        ),
        None,
    );
    let mut r = html(StatusCode::OK, body, &[]);
    let secure = if oauth.issuer.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/oauth; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        oauth.cfg.session_ttl.as_secs()
    );
    if let Ok(v) = http::HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
