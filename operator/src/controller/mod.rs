//! The controller: watches (reflector stores fed by watchers), a debounced compile loop, the
//! pusher, the last-known-good ConfigMap and status write-back, gated by the Lease.
//!
//! Shape (after Linkerd's policy controller): every watch only updates its store and pokes one
//! `Notify`; one loop reads all stores, compiles (a pure function), hands the snapshot to the
//! pusher through a `watch` channel and, when leading, writes the last-known-good Secret. The
//! statuses that really changed are written by their own task (`status_loop`), fed the latest
//! compile outcome and pod progress through another `watch` channel: a thousand status writes
//! (and their echoes) never hold the next compile and push back.
//!
//! Layout: `watch` (reflector stores, the per-Secret watches, the EndpointSlice and pod views
//! compile reads), `status_writer` (the status task and its writes), `snapshot_secret` (the
//! last-known-good Secret) and `run` (the loop that ties them together).

mod changed;
mod run;
mod snapshot_secret;
mod status_writer;
mod watch;

pub use run::run;
pub use watch::{endpoint_slice_resource, ready_pods, service_index_of};
pub(crate) use watch::{spawn_reflector, spawn_reflector_with};

use crate::lease::LeaseConfig;
use crate::push::PusherConfig;
use std::time::Duration;

/// The field manager for every write.
pub const FIELD_MANAGER: &str = "weir-operator";
/// The Secret key holding the snapshot (JSON, loadable by `weir-dataplane --config`).
pub const SNAPSHOT_KEY: &str = "snapshot.json";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone)]
pub struct Settings {
    /// Namespace to watch ProxyRoutes/Backends/TelemetrySinks/Services in; `None` = all.
    pub watch_namespace: Option<String>,
    /// Namespace of the dataplane pods, the Lease and the ConfigMap.
    pub dataplane_namespace: String,
    /// Label selector of the dataplane pods.
    pub dataplane_selector: String,
    pub listeners: Vec<weir_config::Listener>,
    /// The Secret (in `dataplane_namespace`) holding the last-known-good snapshot.
    pub snapshot_secret: String,
    /// At most one TelemetrySink counter refresh per this interval.
    pub sink_status_interval: Duration,
    pub debounce: Duration,
    pub lease: LeaseConfig,
    pub pusher: PusherConfig,
    /// The Gateway API input (watched once its CRDs are installed).
    pub gateway: crate::gateway::GatewaySettings,
    /// Sidecars: routes attached to workloads, pushed per pod (`crate::workload`).
    pub workloads: crate::workload::WorkloadSettings,
}

/// RFC 3339, whole seconds (what `metav1.Time` stores).
pub fn now_rfc3339() -> String {
    format!("{:.0}", k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod test_support {
    //! A mocked API server shared by the write-pattern tests of the submodules.
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use kube::Client;
    use std::sync::{Arc, Mutex};

    pub(super) type Log = Arc<Mutex<Vec<(String, String, String, serde_json::Value)>>>;

    pub(super) fn route_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute",
            "metadata": {"name": "r", "namespace": "ns", "generation": 1},
            "spec": {"rules": [{"backendRefs": [{"name": "be"}]}]},
        })
    }

    /// A client whose API server records every request (method, URI, content type, JSON
    /// body) and answers it with `answer(method)`: a status code and a JSON body.
    pub(super) fn recording_client(
        answer: fn(&http::Method) -> (u16, serde_json::Value),
    ) -> (Client, Log) {
        let log: Log = Default::default();
        let l = log.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let l = l.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let ct = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                l.lock()
                    .unwrap()
                    .push((parts.method.to_string(), parts.uri.to_string(), ct, v));
                let (status, body) = answer(&parts.method);
                let mut resp =
                    http::Response::new(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        (Client::new(svc, "default"), log)
    }

    /// A client whose API server records every request and answers with the route.
    pub(super) fn mock() -> (Client, Log) {
        recording_client(|_| (200, route_json()))
    }
}
