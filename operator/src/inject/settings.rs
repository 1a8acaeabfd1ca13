//! The injector's chart settings (`--injector-settings`, a JSON or YAML file the chart renders
//! from `injector.*` values). Per-pod annotations override some of them (see [`super::patch`]).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What an inbound listener of the sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundProtocol {
    /// Plain HTTP/1.1 and h2c on the app's port name: existing plaintext clients keep working.
    Http,
    /// TLS (ALPN h2, http/1.1) on TCP and HTTP/3 on UDP, same port number.
    Https,
}

impl InboundProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The dataplane image, e.g. `ghcr.io/weir-dev/weir-dataplane:0.1.0`.
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The injected container's name; a pod that has a container by this name is left alone.
    #[serde(default = "default_container_name")]
    pub container_name: String,
    /// The first port of the sidecar's inbound listeners (TCP, and UDP for HTTP/3): each app
    /// port it takes over gets the next one from here up that the pod does not declare and
    /// that is not the admin or outbound port.
    #[serde(default = "default_inbound_port")]
    pub inbound_port: u16,
    /// The sidecar's admin port (probes; the rest needs the per-pod token).
    #[serde(default = "default_admin_port")]
    pub admin_port: u16,
    /// Port of the sidecar's outbound listener on `127.0.0.1`: the application calls it for
    /// the ProxyRoutes attached to its workload (`spec.workloadSelector`).
    #[serde(default = "default_outbound_port")]
    pub outbound_port: u16,
    #[serde(default = "default_protocol")]
    pub inbound_protocol: InboundProtocol,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// `--drain-timeout` of the sidecar: in-flight requests get this long after SIGTERM.
    #[serde(default = "default_drain")]
    pub drain_timeout: weir_config::Duration,
    /// The container's `resources` (a Kubernetes ResourceRequirements object).
    #[serde(default = "default_resources")]
    pub resources: serde_json::Value,
    #[serde(default = "default_uid")]
    pub run_as_user: i64,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// >= 1.29): started before and stopped after the application's containers.
    #[serde(default)]
    pub native_sidecar: bool,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_container_name() -> String {
    "weir-sidecar".into()
}
fn default_inbound_port() -> u16 {
    15080
}
fn default_admin_port() -> u16 {
    15000
}
fn default_outbound_port() -> u16 {
    15001
}
fn default_protocol() -> InboundProtocol {
    InboundProtocol::Http
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "json".into()
}
fn default_drain() -> weir_config::Duration {
    weir_config::Duration(std::time::Duration::from_secs(30))
}
fn default_resources() -> serde_json::Value {
    serde_json::json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
}
fn default_uid() -> i64 {
    65532
}

/// Why the settings file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read injector settings {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("injector settings {path}: {source}")]
    Parse {
        path: String,
        source: yaml_serde::Error,
    },
    #[error("injector settings {path}: {field}: {message}")]
    Invalid {
        path: String,
        field: &'static str,
        message: String,
    },
}

impl Settings {
    /// Reads and checks the settings; every error names the file and the field.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: p.clone(),
            source,
        })?;
        // YAML is a superset of JSON: one parser takes both.
        let s: Settings = yaml_serde::from_str(&text).map_err(|source| SettingsError::Parse {
            path: p.clone(),
            source,
        })?;
        s.check()
            .map_err(|(field, message)| SettingsError::Invalid {
                path: p,
                field,
                message,
            })?;
        Ok(s)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.image.trim().is_empty() {
            return Err(("image", "must not be empty".into()));
        }
        if self.inbound_port == 0 || self.admin_port == 0 || self.inbound_port == self.admin_port {
            return Err((
                "inboundPort",
                format!(
                    "inboundPort ({}) and adminPort ({}) must be distinct and non-zero",
                    self.inbound_port, self.admin_port
                ),
            ));
        }
        if self.outbound_port == 0
            || self.outbound_port == self.inbound_port
            || self.outbound_port == self.admin_port
        {
            return Err((
                "outboundPort",
                format!(
                    "outboundPort ({}) must be non-zero and differ from inboundPort and adminPort",
                    self.outbound_port
                ),
            ));
        }
        if self.container_name.trim().is_empty() {
            return Err(("containerName", "must not be empty".into()));
        }
        Ok(())
    }
}
