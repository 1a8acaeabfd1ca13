//! Per-workload sidecar config (issue #21, part 2). The injector (`crate::inject`) gives each
//! pod a sidecar that boots from a snapshot of its own (the inbound listener to the app on
//! loopback, an empty outbound listener on `127.0.0.1:<outbound port>`); this module programs
//! each sidecar with what concerns its pod:
//!
//! - [`compile`]: the pure step, `pods + ProxyRoutes with spec.workloadSelector + Backends ->
//!   a snapshot per pod + an attachment outcome per route` (conflicts included);
//! - [`status`]: the pure `status.workloads` of a route;
//! - [`token`]: the namespace's admin token Secret (`weir-sidecar-token`);
//! - [`snapshots`]: the namespace's snapshot Secret (`weir-sidecar-snapshots`), what a
//!   restarted sidecar boots from;
//! - [`runtime`]: the Lease holder's task that watches injected pods, pushes and writes status.
//!
//! Attached routes are not part of the fleet snapshot: the controller loop leaves them out of
//! its compile and hands them to [`runtime::run`] instead.

pub mod compile;
pub mod runtime;
pub mod snapshots;
pub mod status;
pub mod targets;
pub mod token;

pub use compile::is_attached;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use std::time::Duration;

/// A Secret the workload controller creates in an application namespace (the token, the
/// snapshots), labelled so it is visibly the operator's.
fn managed_secret(name: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "weir-operator".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// `weir-operator run --sidecars ...`.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// Program sidecars at all (the chart turns it on with `injector.enabled`).
    pub enabled: bool,
    /// The sidecars' admin port (`injector.adminPort`).
    pub admin_port: u16,
    pub concurrency: usize,
    /// How often each sidecar's running version is checked (`GET /config`).
    pub verify_interval: Duration,
    pub request_timeout: Duration,
    pub debounce: Duration,
}

impl Default for WorkloadSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            admin_port: 15000,
            concurrency: 8,
            verify_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
        }
    }
}
