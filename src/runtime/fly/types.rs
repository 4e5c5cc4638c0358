//! Serde types of the Fly Machines API, checked against its OpenAPI spec
//! (docs.machines.dev/spec/openapi3.json: `fly.MachineConfig`, `CreateMachineRequest`, `Machine`, ...).
//!
//! Only the fields catwalk sets or reads are modelled; unknown fields in answers are ignored so a
//! newer API does not break deploys. Quirks the spec states and that the types absorb:
//! - durations are Go duration strings (`"15s"`), never numbers;
//! - `services[].autostop` accepts a string (`"off" | "stop" | "suspend"`) or, in the old format, a
//!   boolean; answers may carry either, so [`Autostop`] reads both and always writes the string form;
//! - `config.env` and `files[].raw_value` are readable back by anyone with read access to the app:
//!   secrets never go there (they go through the secrets API and `min_secrets_version`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `POST /apps` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateAppRequest {
    /// `name` in the current spec (older docs said `app_name`; the fake accepts both).
    pub name: String,
    pub org_slug: String,
    /// Custom 6PN network name: each catwalk app gets its own so tenants cannot reach each other.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network: Option<String>,
}

/// `GET /apps/{app}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct App {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub machine_count: u64,
}

/// `fly.MachineGuest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Guest {
    pub cpu_kind: String,
    pub cpus: u32,
    pub memory_mb: u32,
}

/// `fly.MachineInit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Init {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
}

/// `fly.MachineRestart`: `policy` is `no | always | on-failure | spot-price`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Restart {
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// `fly.MachineCheck` (a named top-level check).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Go duration string, e.g. `"15s"`.
    pub interval: String,
    pub timeout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// `services[].autostop`: a string in the current API, a boolean in the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

impl Serialize for Autostop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Autostop::Off => "off",
            Autostop::Stop => "stop",
            Autostop::Suspend => "suspend",
        })
    }
}

impl<'de> Deserialize<'de> for Autostop {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Bool(true) => Ok(Autostop::Stop),
            Raw::Bool(false) => Ok(Autostop::Off),
            Raw::Text(t) => match t.as_str() {
                "off" | "false" => Ok(Autostop::Off),
                "stop" | "true" => Ok(Autostop::Stop),
                "suspend" => Ok(Autostop::Suspend),
                other => Err(serde::de::Error::custom(format!(
                    "autostop {other:?}: expected off, stop, suspend or a boolean"
                ))),
            },
        }
    }
}

/// `fly.MachinePort`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
}

/// `fly.MachineService` (used for Flycast: fly-proxy routes `<app>.flycast` to it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Service {
    pub protocol: String,
    pub internal_port: u16,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
}

/// `fly.File`. catwalk writes none (a `raw_value` is readable back); kept so answers round-trip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct File {
    pub guest_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// `fly.StopConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopConfig {
    pub signal: String,
    /// Go duration string.
    pub timeout: String,
}

/// `fly.MachineConfig`: the whole desired state of a machine (an update replaces it entirely).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MachineConfig {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Plain, non-secret environment only: readable back through the API.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_destroy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<Rootfs>,
}

/// `fly.MachineRootfs`: whether the root file system survives restarts (`never`, `restart`, `always`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rootfs {
    pub persist: String,
}

/// `CreateMachineRequest` / `UpdateMachineRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MachineRequest {
    pub config: MachineConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The machine boots only once the app's secrets reached this version (set by the secrets API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_secrets_version: Option<u64>,
    /// Keep fly-proxy from routing to the machine until catwalk has checked it (blue/green).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_service_registration: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_launch: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
}

/// `MachineEvent`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MachineEvent {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub request: Option<serde_json::Value>,
}

impl MachineEvent {
    /// `request.exit_event.exit_code` of an `exit` event.
    pub fn exit_code(&self) -> Option<i64> {
        self.request.as_ref()?.pointer("/exit_event/exit_code")?.as_i64()
    }

    /// An `exit` event caused by the process itself (not by a requested stop).
    pub fn is_crash(&self) -> bool {
        self.kind == "exit"
            && !self
                .request
                .as_ref()
                .and_then(|r| r.pointer("/exit_event/requested_stop"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
    }
}

/// `CheckStatus`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CheckStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub output: String,
}

/// `Machine`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Machine {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// `created | starting | started | stopping | stopped | suspended | replacing | destroying |
    /// destroyed | failed`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub region: String,
    /// The machine version; `/wait` takes it as `version`.
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub private_ip: String,
    #[serde(default)]
    pub config: MachineConfig,
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Machine {
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.config.metadata.get(key).map(String::as_str)
    }
}

/// `WaitMachineResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WaitResponse {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub state: String,
}

/// `CreateLeaseRequest`: `ttl` in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateLeaseRequest {
    pub ttl: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `Lease`. Fly wraps it as `{"status": "success", "data": {...}}`; both shapes are read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Lease {
    pub nonce: String,
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
}

/// `StopRequest`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StopRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Go duration string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `AppSecretsUpdateRequest`: a value sets a secret, `null` unsets it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SecretsUpdate {
    pub values: BTreeMap<String, Option<String>>,
}

/// `AppSecretsUpdateResp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SecretsUpdateResponse {
    #[serde(default)]
    pub version: u64,
    /// Deprecated spelling still sent by older API versions.
    #[serde(rename = "Version", default)]
    pub version_deprecated: u64,
}

/// `AppSecret` (names and digests; values only with `show_secrets`, which catwalk never asks for).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AppSecret {
    pub name: String,
    #[serde(default)]
    pub digest: String,
}

/// `AppSecrets`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AppSecrets {
    #[serde(default)]
    pub secrets: Vec<AppSecret>,
}

/// `ErrorResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ErrorResponse {
    #[serde(default)]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autostop_reads_bool_and_string_and_writes_string() {
        let s: Service = serde_json::from_str(
            r#"{"protocol":"tcp","internal_port":8080,"ports":[],"autostop":true,"autostart":true}"#,
        )
        .unwrap();
        assert_eq!(s.autostop, Some(Autostop::Stop));
        let s: Service =
            serde_json::from_str(r#"{"protocol":"tcp","internal_port":8080,"autostop":"suspend"}"#).unwrap();
        assert_eq!(s.autostop, Some(Autostop::Suspend));
        let s: Service =
            serde_json::from_str(r#"{"protocol":"tcp","internal_port":8080,"autostop":false}"#).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap()["autostop"], "off");
        assert!(
            serde_json::from_str::<Service>(r#"{"protocol":"tcp","internal_port":1,"autostop":"maybe"}"#)
                .is_err()
        );
    }

    #[test]
    fn machine_answer_with_unknown_fields_parses() {
        let m: Machine = serde_json::from_str(
            r#"{"id":"148e","name":"x","state":"started","region":"iad","instance_id":"01H","private_ip":"fdaa::2",
                "config":{"image":"img","init":{"cmd":["a"],"exec":null},"guest":{"cpu_kind":"shared","cpus":1,"memory_mb":256},
                          "restart":{"policy":"on-failure"},"checks":{"mcp":{"type":"http","port":8080,"path":"/healthz","interval":"15s","timeout":"5s"}},
                          "metadata":{"catwalk_app":"t"}},
                "image_ref":{"registry":"r"},"host_status":"ok","events":[{"id":"e","type":"exit","status":"stopped","source":"flyd","timestamp":1,
                "request":{"exit_event":{"exit_code":3}}}]}"#,
        )
        .unwrap();
        assert_eq!(m.meta("catwalk_app"), Some("t"));
        assert_eq!(m.events[0].exit_code(), Some(3));
        assert_eq!(m.config.checks["mcp"].interval, "15s");
    }
}
