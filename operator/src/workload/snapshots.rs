//! The sidecars' snapshot Secret: one per application namespace, `weir-sidecar-snapshots`, one
//! key per workload ([`crate::inject::patch::snapshot_key`]) holding the snapshot the operator
//! pushes to that workload's sidecars. The injector mounts the pod's key (optional), so a
//! restarted sidecar boots from its last compile instead of its inbound-only boot snapshot.
//! Written by the Lease holder only; the whole data is replaced, so entries of pods that are
//! gone are dropped.

use crate::error::Error;
use crate::inject::patch::SNAPSHOT_SECRET;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_config::Snapshot;

/// The Secret's data: key -> the snapshot's JSON.
pub fn data(entries: &BTreeMap<String, Arc<Snapshot>>) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        // Serializing plain data types cannot fail.
        .map(|(k, s)| {
            (
                k.clone(),
                ByteString(serde_json::to_vec(&**s).unwrap_or_default()),
            )
        })
        .collect()
}

/// Makes the namespace's Secret hold exactly `data`: created if missing, replaced (with its
/// resourceVersion, so a concurrent writer's change is not lost silently) if different, left
/// alone if equal. Returns whether it wrote.
pub async fn write(
    client: &kube::Client,
    namespace: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<bool, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source| Error::SidecarSnapshots {
        namespace: namespace.into(),
        source,
    };
    let existing = api.get_opt(SNAPSHOT_SECRET).await.map_err(err)?;
    match existing {
        Some(s) if s.data.clone().unwrap_or_default() == data => Ok(false),
        Some(mut s) => {
            s.data = Some(data);
            s.string_data = None;
            api.replace(SNAPSHOT_SECRET, &PostParams::default(), &s)
                .await
                .map_err(err)?;
            Ok(true)
        }
        None => {
            let s = super::managed_secret(SNAPSHOT_SECRET, data);
            api.create(&PostParams::default(), &s).await.map_err(err)?;
            Ok(true)
        }
    }
}
