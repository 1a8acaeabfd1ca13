//! Weir operator: CRD types, the pure compile step, push to dataplane pods, status write-back.
//!
//! - [`crd`]: `ProxyRoute`, `Backend`, `TelemetrySink` (`weir.dev/v1alpha1`) and `crdgen`.
//! - [`compile`]: the pure `(CRDs, Service endpoints, listeners) -> Snapshot` function.
//! - [`gateway`]: the Gateway API front end: types, its pure compile step into the same Snapshot.
//! - [`status`]: pure status computation and condition merging.
//! - [`push`]: `PUT /config` to every ready dataplane pod, tracking acknowledged versions.
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`controller`]: watches, the debounced compile loop, ConfigMap and status writes.
//! - [`error`]: the operator's typed error, one `weir_operator_errors_total` kind per variant.
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz`, and the status page of [`ui`].
//! - [`inject`]: the sidecar injector (mutating admission webhook) and its audit.
//! - [`workload`]: per-workload sidecar config: attached routes, per-pod snapshots and tokens.
//! - [`ui`]: the operator's status page (`/ui`): pods, resources and their conditions, push errors.

pub mod compile;
pub mod controller;
pub mod crd;
pub mod error;
pub mod gateway;
pub mod inject;
pub mod lease;
pub mod metrics;
pub mod push;
pub mod status;
pub mod ui;
pub mod workload;
