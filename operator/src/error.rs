//! The operator's error type: one variant per way an operator path fails, each with a stable
//! `kind` label on `weir_operator_errors_total` (see docs/metrics.md, section Operator).
//!
//! The messages are the ones the operator logged and showed (`/ui` `lastError`) before the
//! type existed, so logs, the status page and the chart's dry run (which looks for
//! "status write failed … forbidden") read the same.

use crate::metrics::METRICS;
use std::path::PathBuf;
use std::time::Duration;
use weir_config::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Startup: the process exits with these.
    #[error("cannot read {}: {source}", path.display())]
    ListenersRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    ListenersParse {
        path: PathBuf,
        source: yaml_serde::Error,
    },
    #[error("default listeners: {0}")]
    DefaultListeners(#[source] yaml_serde::Error),
    #[error("cannot listen on {addr}: {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot reach the Kubernetes API: {0}")]
    KubeClient(#[source] kube::Error),
    #[error("cannot discover EndpointSlices: {0}")]
    Discovery(#[source] kube::Error),
    /// The sidecar injector could not start (settings, certificate, listen address).
    #[error(transparent)]
    Injector(#[from] crate::inject::InjectError),

    // Watches: the watcher retries with its backoff.
    #[error("{watch} watch: {source}")]
    Watch {
        watch: &'static str,
        source: kube::runtime::watcher::Error,
    },
    /// Names the Secret, never its data.
    #[error("Secret {secret} watch: {source}")]
    SecretWatch {
        secret: String,
        source: kube::runtime::watcher::Error,
    },

    // Writes to the API server.
    #[error("status write of {object} failed: {source}")]
    StatusWrite { object: String, source: kube::Error },
    #[error("cannot publish event {reason}: {source}")]
    EventPublish {
        reason: &'static str,
        source: kube::Error,
    },
    /// The API error describes the request, not the Secret's data.
    #[error("cannot read the snapshot Secret: {0}")]
    SnapshotSecretRead(#[source] kube::Error),
    #[error("cannot write the snapshot Secret: {0}")]
    SnapshotSecretWrite(#[source] kube::Error),
    #[error("cannot encode the snapshot: {0}")]
    SnapshotEncode(#[source] serde_json::Error),
    #[error("the snapshot ({bytes} bytes of gzip-compressed JSON) exceeds a Secret's {limit} bytes of data; the last-known-good Secret keeps its previous content")]
    SnapshotTooLarge { bytes: usize, limit: usize },
    #[error("lease: {0}")]
    Lease(#[source] kube::Error),

    // Compile.
    #[error("operator settings are invalid: {}", join(.0))]
    InvalidSettings(Vec<FieldError>),

    // The admin token the pusher sends.
    #[error("cannot read token file {}: {source}", path.display())]
    AdminTokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read Secret {name}: {source}")]
    AdminTokenSecret { name: String, source: kube::Error },
    #[error("Secret {name} has no key {key}")]
    AdminTokenKey { name: String, key: String },

    // Talking to a dataplane pod's admin API.
    #[error("{0}")]
    PodRequest(#[source] http::Error),
    /// Debug-formatted: hyper-util's Display says only "client error (Connect)"; the cause
    /// chain (refused, no route, ...) is what an operator needs on the status page.
    #[error("{0:?}")]
    PodUnreachable(#[source] hyper_util::client::legacy::Error),
    #[error("{0}")]
    PodBody(#[source] hyper::Error),
    #[error("no answer within {0:?}")]
    PodTimeout(Duration),
    #[error("{what}: {status} {body}")]
    PodStatus {
        what: &'static str,
        status: http::StatusCode,
        body: serde_json::Value,
    },
    #[error("{0} answered without a version")]
    PodNoVersion(&'static str),
    #[error("GET /backends: unexpected document")]
    PodBadReport,
    #[error("401 unauthorized: check the admin token")]
    PodUnauthorized,

    // Sidecars (per-workload config, `workload/`).
    /// Names the namespace's token Secret, never its data.
    #[error("sidecar token Secret {namespace}/weir-sidecar-token: {source}")]
    SidecarToken {
        namespace: String,
        source: kube::Error,
    },
    #[error("sidecar token Secret {namespace}/weir-sidecar-token has no usable key `token`")]
    SidecarTokenKey { namespace: String },
    #[error("cannot draw a random sidecar token: {0}")]
    SidecarTokenRandom(getrandom::Error),
    #[error("sidecar {pod} rejected its snapshot: {}", join(.errors))]
    SidecarRejected {
        pod: String,
        errors: Vec<FieldError>,
    },
    /// Names the namespace's snapshot Secret, never its data.
    #[error("sidecar snapshot Secret {namespace}/weir-sidecar-snapshots: {source}")]
    SidecarSnapshots {
        namespace: String,
        source: kube::Error,
    },
}

fn join(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Every `kind` label, exported at 0 from the start so `rate()` sees each series.
    pub const KINDS: &'static [&'static str] = &[
        "listeners_read",
        "listeners_parse",
        "default_listeners",
        "metrics_listen",
        "kube_client",
        "discovery",
        "injector_start",
        "watch",
        "secret_watch",
        "status_write",
        "event_publish",
        "snapshot_secret_read",
        "snapshot_secret_write",
        "snapshot_encode",
        "snapshot_too_large",
        "lease",
        "invalid_settings",
        "admin_token_file",
        "admin_token_secret",
        "admin_token_key",
        "pod_request",
        "pod_unreachable",
        "pod_body",
        "pod_timeout",
        "pod_status",
        "pod_no_version",
        "pod_bad_report",
        "pod_unauthorized",
        "sidecar_token",
        "sidecar_token_key",
        "sidecar_token_random",
        "sidecar_rejected",
        "sidecar_snapshots",
    ];

    /// The `kind` label of `weir_operator_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ListenersRead { .. } => "listeners_read",
            Error::ListenersParse { .. } => "listeners_parse",
            Error::DefaultListeners(_) => "default_listeners",
            Error::MetricsListen { .. } => "metrics_listen",
            Error::KubeClient(_) => "kube_client",
            Error::Discovery(_) => "discovery",
            Error::Injector(_) => "injector_start",
            Error::Watch { .. } => "watch",
            Error::SecretWatch { .. } => "secret_watch",
            Error::StatusWrite { .. } => "status_write",
            Error::EventPublish { .. } => "event_publish",
            Error::SnapshotSecretRead(_) => "snapshot_secret_read",
            Error::SnapshotSecretWrite(_) => "snapshot_secret_write",
            Error::SnapshotEncode(_) => "snapshot_encode",
            Error::SnapshotTooLarge { .. } => "snapshot_too_large",
            Error::Lease(_) => "lease",
            Error::InvalidSettings(_) => "invalid_settings",
            Error::AdminTokenFile { .. } => "admin_token_file",
            Error::AdminTokenSecret { .. } => "admin_token_secret",
            Error::AdminTokenKey { .. } => "admin_token_key",
            Error::PodRequest(_) => "pod_request",
            Error::PodUnreachable(_) => "pod_unreachable",
            Error::PodBody(_) => "pod_body",
            Error::PodTimeout(_) => "pod_timeout",
            Error::PodStatus { .. } => "pod_status",
            Error::PodNoVersion(_) => "pod_no_version",
            Error::PodBadReport => "pod_bad_report",
            Error::PodUnauthorized => "pod_unauthorized",
            Error::SidecarToken { .. } => "sidecar_token",
            Error::SidecarTokenKey { .. } => "sidecar_token_key",
            Error::SidecarTokenRandom(_) => "sidecar_token_random",
            Error::SidecarRejected { .. } => "sidecar_rejected",
            Error::SidecarSnapshots { .. } => "sidecar_snapshots",
        }
    }

    /// Counts the error on `weir_operator_errors_total{kind}`; returns it for logging.
    pub fn counted(self) -> Self {
        METRICS.errors.with_label_values(&[self.kind()]).inc();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds are the documented label values, each once, and the variants that can be
    /// built without a failing peer map into that list.
    #[test]
    fn kinds_are_unique_and_documented() {
        let doc = include_str!("../../docs/metrics.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `weir_operator_errors_total`"))
            .expect("weir_operator_errors_total is documented");
        let mut seen = std::collections::BTreeSet::new();
        for k in Error::KINDS {
            assert!(seen.insert(*k), "{k} twice");
            assert!(
                row.contains(&format!("`{k}`")),
                "kind {k} not in docs/metrics.md"
            );
        }
        let io = || std::io::Error::other("x");
        let yaml = || yaml_serde::from_str::<u8>("[").unwrap_err();
        for e in [
            Error::ListenersRead {
                path: "l".into(),
                source: io(),
            },
            Error::ListenersParse {
                path: "l".into(),
                source: yaml(),
            },
            Error::DefaultListeners(yaml()),
            Error::MetricsListen {
                addr: ([127, 0, 0, 1], 1).into(),
                source: io(),
            },
            Error::SnapshotEncode(serde_json::from_str::<u8>("x").unwrap_err()),
            Error::SnapshotTooLarge { bytes: 2, limit: 1 },
            Error::InvalidSettings(vec![FieldError::new("listeners", "bad")]),
            Error::AdminTokenFile {
                path: "t".into(),
                source: io(),
            },
            Error::AdminTokenKey {
                name: "s".into(),
                key: "token".into(),
            },
            Error::PodTimeout(Duration::from_secs(5)),
            Error::PodStatus {
                what: "PUT /config",
                status: http::StatusCode::BAD_GATEWAY,
                body: serde_json::Value::Null,
            },
            Error::PodNoVersion("GET /config"),
            Error::PodBadReport,
            Error::PodUnauthorized,
            Error::SidecarTokenKey {
                namespace: "shop".into(),
            },
            Error::SidecarRejected {
                pod: "shop/a".into(),
                errors: vec![],
            },
        ] {
            assert!(Error::KINDS.contains(&e.kind()), "{e:?}");
        }
    }

    /// The messages the status page and logs showed before the type existed.
    #[test]
    fn messages_are_unchanged() {
        assert_eq!(
            Error::PodUnauthorized.to_string(),
            "401 unauthorized: check the admin token"
        );
        assert_eq!(
            Error::PodTimeout(Duration::from_secs(5)).to_string(),
            "no answer within 5s"
        );
        assert_eq!(
            Error::PodNoVersion("PUT /config").to_string(),
            "PUT /config answered without a version"
        );
        assert_eq!(
            Error::PodStatus {
                what: "GET /config",
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                body: serde_json::json!({"error": "x"}),
            }
            .to_string(),
            "GET /config: 500 Internal Server Error {\"error\":\"x\"}"
        );
        assert_eq!(
            Error::AdminTokenKey {
                name: "weir-admin".into(),
                key: "token".into()
            }
            .to_string(),
            "Secret weir-admin has no key token"
        );
    }

    #[test]
    fn counted_bumps_its_kind() {
        let before = METRICS.errors.with_label_values(&["pod_bad_report"]).get();
        let e = Error::PodBadReport.counted();
        assert_eq!(e.kind(), "pod_bad_report");
        assert_eq!(
            METRICS.errors.with_label_values(&["pod_bad_report"]).get(),
            before + 1
        );
    }
}
