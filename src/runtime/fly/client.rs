//! A small client of the Fly Machines API (`https://api.machines.dev/v1`).
//!
//! What it takes care of, so the deploy code can read like the happy path:
//! - auth: `FlyV1 <macaroon>` for macaroon tokens (`fm1r_`, `fm2_`, or already prefixed), `Bearer` otherwise;
//! - rate limits: Fly allows about 1 request/s per action per machine (bursts of a few) and answers 429
//!   above; a keyed client-side limiter keeps catwalk under that, and 429s that still happen are retried
//!   after `Retry-After` (or a jittered backoff);
//! - retries with jittered exponential backoff (backon) on 408/429/502/503 and on connection errors
//!   (nothing was sent), but only for requests that are safe to repeat. A machine create is never
//!   retried blindly: [`FlyClient::create_machine_idempotent`] first looks the machine up by its
//!   unique name and launch metadata, because a 408/5xx can arrive after Fly already created it;
//! - `/wait` answers 408 after its timeout (at most 60 s): [`FlyClient::wait_state`] loops until the
//!   caller's deadline;
//! - leases: mutations of a leased machine need the `fly-machine-lease-nonce` header; a held lease is
//!   409 and is retried for a while;
//! - errors carry the action, HTTP status, Fly's `error` message and the `fly-request-id` to quote to
//!   Fly support. Request bodies are never part of an error or a log line.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::types::{
    App, AppSecrets, CreateAppRequest, CreateLeaseRequest, Lease, Machine, MachineEvent, MachineRequest,
    SecretsUpdate, SecretsUpdateResponse, StopRequest, WaitResponse,
};

/// Header carrying a lease nonce.
pub const LEASE_HEADER: &str = "fly-machine-lease-nonce";
/// Header carrying Fly's request id (quote it to Fly support).
pub const REQUEST_ID_HEADER: &str = "fly-request-id";

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// Fly answered with this HTTP status.
    Status(u16),
    /// The connection could not be made: nothing reached Fly, so any request may be repeated.
    Connect,
    /// The request may or may not have reached Fly (timeout, reset mid-way).
    Network,
    /// Fly answered 2xx with a body catwalk cannot read.
    Decode,
}

/// A failed Machines API call, with everything needed to act on it.
#[derive(Debug, Clone)]
pub struct FlyError {
    pub action: String,
    pub kind: FailureKind,
    /// Fly's `error` message (or the transport error).
    pub message: String,
    pub request_id: Option<String>,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for FlyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fly API: {} failed: ", self.action)?;
        match &self.kind {
            FailureKind::Status(s) => write!(f, "HTTP {s}: {}", self.message)?,
            FailureKind::Connect => write!(f, "could not connect: {}", self.message)?,
            FailureKind::Network => write!(f, "network error: {}", self.message)?,
            FailureKind::Decode => write!(f, "unreadable answer: {}", self.message)?,
        }
        if let Some(id) = &self.request_id {
            write!(f, " (fly-request-id {id})")?;
        }
        if let FailureKind::Status(401 | 403) = self.kind {
            write!(f, "; check the Fly API token ([runtime.fly] token_file or FLY_API_TOKEN) and its org")?;
        }
        Ok(())
    }
}

impl std::error::Error for FlyError {}

impl From<FlyError> for String {
    fn from(e: FlyError) -> String {
        e.to_string()
    }
}

impl FlyError {
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            FailureKind::Status(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Fly did not apply the request and asks to try again (or nothing reached Fly at all).
    fn not_applied(&self) -> bool {
        matches!(self.kind, FailureKind::Connect | FailureKind::Status(429))
    }

    /// Safe to repeat for an idempotent request (reads, start/stop/destroy, secrets set, updates).
    fn retryable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Connect | FailureKind::Network | FailureKind::Status(408 | 429 | 502 | 503)
        )
    }

    /// The answer leaves open whether Fly applied a non-idempotent request.
    pub fn ambiguous(&self) -> bool {
        matches!(self.kind, FailureKind::Network | FailureKind::Status(408 | 500 | 502 | 503 | 504))
    }
}

/// Retry tuning (production defaults; tests shorten the delays).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_times: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_times: 6,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_times)
    }
}

/// The `Authorization` header value for a Fly token.
pub fn auth_header(token: &str) -> String {
    let token = token.trim();
    if token.starts_with("FlyV1 ") || token.starts_with("Bearer ") {
        token.to_string()
    } else if token.starts_with("fm1r_") || token.starts_with("fm1a_") || token.starts_with("fm2_") {
        format!("FlyV1 {token}")
    } else {
        format!("Bearer {token}")
    }
}

/// Percent-encodes a query value (the values catwalk sends are states, numbers and ids).
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One request to send (built per attempt).
struct Call<'a> {
    action: &'a str,
    method: Method,
    path: String,
    query: Vec<(&'a str, String)>,
    body: Option<Value>,
    lease: Option<&'a str>,
    /// Rate-limit key: `action:machine` (or `action:app`).
    limit_key: String,
    idempotent: bool,
}

/// The Machines API client. Cheap to share behind an `Arc`.
pub struct FlyClient {
    http: reqwest::Client,
    base: String,
    auth: String,
    limiter: DefaultKeyedRateLimiter<String>,
    retry: RetryPolicy,
    /// Seconds each `/wait` call asks for (Fly caps it at 60 and answers 408 when it runs out).
    wait_secs: u64,
}

impl FlyClient {
    /// `api_url` is e.g. `https://api.machines.dev` (without `/v1`). `per_second`/`burst` is the
    /// client-side limit per action per machine.
    pub fn new(
        api_url: &str,
        token: &str,
        retry: RetryPolicy,
        per_second: NonZeroU32,
        burst: NonZeroU32,
        wait_secs: u64,
    ) -> Result<FlyClient, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("catwalk/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // /wait holds the request open for up to 60 s.
            .timeout(Duration::from_secs(wait_secs.clamp(1, 60) + 30))
            .build()
            .map_err(|e| format!("building the Fly API client: {e}"))?;
        Ok(FlyClient {
            http,
            base: format!("{}/v1", api_url.trim_end_matches('/')),
            auth: auth_header(token),
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            retry,
            wait_secs: wait_secs.clamp(1, 60),
        })
    }

    async fn send_once(&self, call: &Call<'_>) -> Result<(reqwest::StatusCode, String), FlyError> {
        self.limiter.until_key_ready(&call.limit_key).await;
        let mut url = format!("{}{}", self.base, call.path);
        for (i, (k, v)) in call.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&encode_query_value(v));
        }
        let mut req = self.http.request(call.method.clone(), url).header("authorization", &self.auth);
        if let Some(nonce) = call.lease {
            req = req.header(LEASE_HEADER, nonce);
        }
        if let Some(body) = &call.body {
            req = req.json(body);
        }
        let fail = |kind, message: String| FlyError {
            action: call.action.to_string(),
            kind,
            message,
            request_id: None,
            retry_after: None,
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                fail(FailureKind::Connect, e.to_string())
            } else {
                fail(FailureKind::Network, e.to_string())
            }
        })?;
        let status = resp.status();
        let request_id =
            resp.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.map_err(|e| FlyError {
            request_id: request_id.clone(),
            ..fail(FailureKind::Network, format!("reading the answer: {e}"))
        })?;
        if status.is_success() {
            return Ok((status, text));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect::<String>().trim().to_string());
        Err(FlyError {
            action: call.action.to_string(),
            kind: FailureKind::Status(status.as_u16()),
            message: if message.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                message
            },
            request_id,
            retry_after,
        })
    }

    /// Sends with retries (see the module docs) and returns the body text.
    async fn send(&self, call: Call<'_>) -> Result<String, FlyError> {
        let idempotent = call.idempotent;
        let max = self.retry.max_delay;
        let call = &call;
        let op = || async move { self.send_once(call).await.map(|(_, t)| t) };
        op.retry(self.retry.backoff())
            .when(|e: &FlyError| if idempotent { e.retryable() } else { e.not_applied() })
            .adjust(|e: &FlyError, dur| match (e.retry_after, dur) {
                (Some(after), Some(_)) => Some(after.min(max)),
                (_, dur) => dur,
            })
            .notify(|e: &FlyError, after| tracing::debug!("{e}; retrying in {after:?}"))
            .await
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, FlyError> {
        let action = call.action.to_string();
        let text = self.send(call).await?;
        serde_json::from_str(&text).map_err(|e| FlyError {
            action,
            kind: FailureKind::Decode,
            message: e.to_string(),
            request_id: None,
            retry_after: None,
        })
    }

    fn call<'a>(&self, action: &'a str, method: Method, path: String, key: &str) -> Call<'a> {
        let idempotent = method != Method::POST;
        Call {
            action,
            method,
            path,
            query: Vec::new(),
            body: None,
            lease: None,
            limit_key: format!("{action}:{key}"),
            idempotent,
        }
    }

    fn body<T: Serialize>(value: &T) -> Value {
        serde_json::to_value(value).unwrap_or(Value::Null)
    }

    // ---- apps ----

    /// `GET /apps/{app}`; `Ok(None)` when it does not exist.
    pub async fn get_app(&self, app: &str) -> Result<Option<App>, FlyError> {
        match self.json(self.call("get app", Method::GET, format!("/apps/{app}"), app)).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /apps` in `org`, with its own 6PN `network` (tenant isolation).
    pub async fn create_app(&self, app: &str, org: &str, network: Option<&str>) -> Result<(), FlyError> {
        let mut call = self.call("create app", Method::POST, "/apps".into(), app);
        call.body = Some(Self::body(&CreateAppRequest {
            name: app.into(),
            org_slug: org.into(),
            network: network.map(str::to_string),
        }));
        self.send(call).await.map(drop)
    }

    /// `DELETE /apps/{app}` (destroys its machines and secrets too). A missing app is not an error.
    pub async fn delete_app(&self, app: &str) -> Result<(), FlyError> {
        match self.send(self.call("delete app", Method::DELETE, format!("/apps/{app}"), app)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ---- secrets ----

    /// `POST /apps/{app}/secrets`: sets (`Some`) and unsets (`None`) in one call; returns the new
    /// secrets version to pass as `min_secrets_version`.
    pub async fn set_secrets(&self, app: &str, update: &SecretsUpdate) -> Result<u64, FlyError> {
        let mut call = self.call("set secrets", Method::POST, format!("/apps/{app}/secrets"), app);
        call.body = Some(Self::body(update));
        // Setting the same values twice is harmless: retries are safe.
        call.idempotent = true;
        let resp: SecretsUpdateResponse = self.json(call).await?;
        Ok(resp.version.max(resp.version_deprecated))
    }

    /// Names of the app's secrets (values are never requested).
    pub async fn secret_names(&self, app: &str) -> Result<Vec<String>, FlyError> {
        let resp: AppSecrets =
            self.json(self.call("list secrets", Method::GET, format!("/apps/{app}/secrets"), app)).await?;
        Ok(resp.secrets.into_iter().map(|s| s.name).collect())
    }

    // ---- machines ----

    /// `GET /apps/{app}/machines` (all states but destroyed).
    pub async fn list_machines(&self, app: &str) -> Result<Vec<Machine>, FlyError> {
        match self.json(self.call("list machines", Method::GET, format!("/apps/{app}/machines"), app)).await {
            Ok(list) => Ok(list),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Machines whose metadata has every `(key, value)` of `filter`.
    pub async fn list_by_metadata(
        &self,
        app: &str,
        filter: &[(&str, &str)],
    ) -> Result<Vec<Machine>, FlyError> {
        Ok(self
            .list_machines(app)
            .await?
            .into_iter()
            .filter(|m| m.state != "destroyed" && filter.iter().all(|(k, v)| m.meta(k) == Some(*v)))
            .collect())
    }

    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine, FlyError> {
        self.json(self.call("get machine", Method::GET, format!("/apps/{app}/machines/{id}"), id)).await
    }

    /// One `POST /apps/{app}/machines`, retried only when Fly certainly did not apply it.
    pub async fn create_machine(&self, app: &str, req: &MachineRequest) -> Result<Machine, FlyError> {
        let mut call = self.call("create machine", Method::POST, format!("/apps/{app}/machines"), app);
        call.body = Some(Self::body(req));
        self.json(call).await
    }

    /// Creates a machine at most once. `req.name` must be unique to this launch and
    /// `req.config.metadata[id_key]` must hold the launch id: after an ambiguous failure (408 or 5xx
    /// after Fly may have created it, or "name taken" on a repeated create) the machine is looked up
    /// by them before anything is sent again.
    pub async fn create_machine_idempotent(
        &self,
        app: &str,
        req: &MachineRequest,
        id_key: &str,
    ) -> Result<Machine, FlyError> {
        let name = req.name.clone().unwrap_or_default();
        let launch = req.config.metadata.get(id_key).cloned().unwrap_or_default();
        let mut backoff = self.retry.backoff().build();
        loop {
            let err = match self.create_machine(app, req).await {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            let name_taken = matches!(err.status(), Some(409 | 422)) && err.message.contains("already");
            if !(err.ambiguous() || name_taken) {
                return Err(err);
            }
            // Did the create land? Look it up by its unique name and launch id.
            let found = self.list_machines(app).await?.into_iter().find(|m| {
                m.name == name && m.meta(id_key) == Some(launch.as_str()) && m.state != "destroyed"
            });
            if let Some(m) = found {
                tracing::info!(machine = %m.id, "create answered {err} but the machine exists; using it");
                return Ok(m);
            }
            match backoff.next() {
                Some(delay) if !name_taken => tokio::time::sleep(delay).await,
                _ => return Err(err),
            }
        }
    }

    /// `POST /apps/{app}/machines/{id}`: replaces the whole config (secrets re-read at `min_secrets_version`).
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: &MachineRequest,
        lease: Option<&str>,
    ) -> Result<Machine, FlyError> {
        let mut call = self.call("update machine", Method::POST, format!("/apps/{app}/machines/{id}"), id);
        call.body = Some(Self::body(req));
        call.lease = lease;
        call.idempotent = true;
        self.json(call).await
    }

    pub async fn start_machine(&self, app: &str, id: &str, lease: Option<&str>) -> Result<(), FlyError> {
        let mut call =
            self.call("start machine", Method::POST, format!("/apps/{app}/machines/{id}/start"), id);
        call.lease = lease;
        call.idempotent = true;
        self.send(call).await.map(drop)
    }

    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        timeout: Option<Duration>,
        lease: Option<&str>,
    ) -> Result<(), FlyError> {
        let mut call = self.call("stop machine", Method::POST, format!("/apps/{app}/machines/{id}/stop"), id);
        call.body = Some(Self::body(&StopRequest {
            signal: Some("SIGTERM".into()),
            timeout: timeout.map(|t| format!("{}s", t.as_secs().max(1))),
        }));
        call.lease = lease;
        call.idempotent = true;
        self.send(call).await.map(drop)
    }

    /// `DELETE /apps/{app}/machines/{id}?force=true`; an already destroyed machine is fine.
    pub async fn destroy_machine(&self, app: &str, id: &str, lease: Option<&str>) -> Result<(), FlyError> {
        let mut call = self.call("destroy machine", Method::DELETE, format!("/apps/{app}/machines/{id}"), id);
        call.query.push(("force", "true".into()));
        call.lease = lease;
        match self.send(call).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn cordon(&self, app: &str, id: &str) -> Result<(), FlyError> {
        let mut call =
            self.call("cordon machine", Method::POST, format!("/apps/{app}/machines/{id}/cordon"), id);
        call.idempotent = true;
        self.send(call).await.map(drop)
    }

    pub async fn uncordon(&self, app: &str, id: &str) -> Result<(), FlyError> {
        let mut call =
            self.call("uncordon machine", Method::POST, format!("/apps/{app}/machines/{id}/uncordon"), id);
        call.idempotent = true;
        self.send(call).await.map(drop)
    }

    pub async fn events(&self, app: &str, id: &str, limit: u32) -> Result<Vec<MachineEvent>, FlyError> {
        let mut call = self.call("list events", Method::GET, format!("/apps/{app}/machines/{id}/events"), id);
        call.query.push(("limit", limit.min(50).to_string()));
        self.json(call).await
    }

    /// Waits until the machine reaches `state` (`started`, `stopped`, `destroyed`, ...), looping
    /// over `/wait`'s 408 until `deadline`. A machine that lands in `failed` ends the wait early.
    pub async fn wait_state(
        &self,
        app: &str,
        id: &str,
        instance_id: Option<&str>,
        state: &str,
        deadline: Instant,
    ) -> Result<(), FlyError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let now =
                    self.get_machine(app, id).await.map(|m| m.state).unwrap_or_else(|_| "unknown".into());
                return Err(FlyError {
                    action: format!("wait for machine {id} to be {state}"),
                    kind: FailureKind::Status(408),
                    message: format!("still {now} at the deadline"),
                    request_id: None,
                    retry_after: None,
                });
            }
            let secs = left.as_secs().clamp(1, self.wait_secs);
            let mut call =
                self.call("wait machine", Method::GET, format!("/apps/{app}/machines/{id}/wait"), id);
            call.query.push(("state", state.into()));
            call.query.push(("timeout", secs.to_string()));
            if let Some(v) = instance_id.filter(|v| !v.is_empty()) {
                call.query.push(("version", v.into()));
            }
            // One attempt per loop turn: a 408 here is the normal "not yet", not a fault.
            match self.send_once(&call).await {
                Ok((_, text)) => {
                    let w: WaitResponse = serde_json::from_str(&text).unwrap_or_default();
                    if w.state.is_empty() || w.state == state || w.ok {
                        return Ok(());
                    }
                }
                Err(e) if e.status() == Some(408) => {}
                Err(e) if e.retryable() => {
                    let delay = e.retry_after.unwrap_or(self.retry.min_delay);
                    tokio::time::sleep(delay.min(left)).await;
                }
                Err(e) => {
                    // A failed machine never reaches `started`; say so instead of "bad request".
                    if let Ok(m) = self.get_machine(app, id).await
                        && m.state == "failed"
                    {
                        return Err(FlyError { message: format!("the machine failed ({})", e.message), ..e });
                    }
                    return Err(e);
                }
            }
        }
    }

    // ---- leases ----

    /// Acquires the machine's lease for `ttl`, retrying while another holder has it (409).
    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Duration,
        why: &str,
    ) -> Result<String, FlyError> {
        let op = || async move {
            let mut call =
                self.call("acquire lease", Method::POST, format!("/apps/{app}/machines/{id}/lease"), id);
            call.body = Some(Self::body(&CreateLeaseRequest {
                ttl: ttl.as_secs().max(1),
                description: Some(why.into()),
            }));
            let text = self.send_once(&call).await?.1;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            // Fly wraps the lease as {"status": "success", "data": {...}}; the spec shows it bare.
            let lease = v.get("data").cloned().unwrap_or(v);
            serde_json::from_value::<Lease>(lease).map(|l| l.nonce).map_err(|e| FlyError {
                action: "acquire lease".into(),
                kind: FailureKind::Decode,
                message: e.to_string(),
                request_id: None,
                retry_after: None,
            })
        };
        op.retry(self.retry.backoff()).when(|e: &FlyError| e.status() == Some(409) || e.retryable()).await
    }

    /// Releases a lease (best effort: it also expires on its own).
    pub async fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<(), FlyError> {
        let mut call =
            self.call("release lease", Method::DELETE, format!("/apps/{app}/machines/{id}/lease"), id);
        call.lease = Some(nonce);
        match self.send(call).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_header_by_token_kind() {
        assert_eq!(auth_header("fm2_abc,fm2_def"), "FlyV1 fm2_abc,fm2_def");
        assert_eq!(auth_header("FlyV1 fm2_abc"), "FlyV1 fm2_abc");
        assert_eq!(auth_header("  oldtoken\n"), "Bearer oldtoken");
    }

    #[test]
    fn error_message_names_action_status_and_request_id() {
        let e = FlyError {
            action: "create machine".into(),
            kind: FailureKind::Status(412),
            message: "insufficient resources".into(),
            request_id: Some("01ABC-iad".into()),
            retry_after: None,
        };
        let s = e.to_string();
        assert!(s.contains("create machine") && s.contains("412") && s.contains("01ABC-iad"), "{s}");
        assert!(!e.ambiguous() && !e.retryable());
    }
}
