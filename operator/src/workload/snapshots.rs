//! The sidecars' snapshot Secret: one per application namespace, `weir-sidecar-snapshots`, one
//! key per workload ([`crate::inject::patch::snapshot_key`]) holding the snapshot the operator
//! pushes to that workload's sidecars. The injector mounts the pod's key (optional), so a
//! restarted sidecar boots from its last compile instead of its inbound-only boot snapshot.
//! Written by the Lease holder only; the whole data is replaced, so entries of pods that are
//! gone are dropped.
//!
//! **Size.** The API server refuses a Secret whose data exceeds 1 MiB, and a refused write
//! would leave *every* workload of the namespace with a stale entry. So [`fit`] keeps what
//! fits, smallest entries first (the most workloads keep a current entry), and leaves the rest
//! out; their pods are still programmed by push, and their routes report
//! `Persisted=False`, reason `SnapshotTooLarge`.

use super::compile::SidecarPod;
use crate::compile::ObjKey;
use crate::error::Error;
use crate::inject::patch::SNAPSHOT_SECRET;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_config::Snapshot;

/// The most a Secret's data may hold (`MaxSecretSize` of the API server's validation, which
/// counts the values; the keys are counted here too, to stay on the safe side).
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// The Secret's data ([`fit`] within `limit` bytes), and the entries left out: key -> size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fitted {
    pub data: BTreeMap<String, ByteString>,
    pub left_out: BTreeMap<String, usize>,
    /// Bytes `data` holds.
    pub size: usize,
}

/// The Secret's data: key -> the snapshot's JSON, at most `limit` bytes of keys and values.
/// When everything does not fit, the smallest entries go in first (ties by key, so the choice
/// is stable from one round to the next).
pub fn fit(entries: &BTreeMap<String, Arc<Snapshot>>, limit: usize) -> Fitted {
    let mut sized: Vec<(usize, &String, Vec<u8>)> = entries
        .iter()
        // Serializing plain data types cannot fail.
        .map(|(k, s)| {
            let v = serde_json::to_vec(&**s).unwrap_or_default();
            (k.len() + v.len(), k, v)
        })
        .collect();
    sized.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut out = Fitted::default();
    for (n, k, v) in sized {
        if out.size + n <= limit {
            out.size += n;
            out.data.insert(k.clone(), ByteString(v));
        } else {
            out.left_out.insert(k.clone(), n);
        }
    }
    out
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

/// The pods of namespace `ns` whose workload's entry [`fit`] left out: pod -> why (their
/// routes report `Persisted=False`, reason `SnapshotTooLarge`).
pub fn left_out_pods(ns: &str, fitted: &Fitted, pods: &[SidecarPod]) -> BTreeMap<ObjKey, String> {
    let mut out = BTreeMap::new();
    for (key, size) in &fitted.left_out {
        let why = format!(
            "workload key {key}: its snapshot takes {size} bytes; {} of the {MAX_SECRET_BYTES} bytes of Secret {ns}/{SNAPSHOT_SECRET} hold {} smaller workload(s)",
            fitted.size,
            fitted.data.len()
        );
        for p in pods
            .iter()
            .filter(|p| p.namespace == ns && p.snapshot_key.as_ref() == Some(key))
        {
            out.insert(p.key(), why.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of about `kib` KiB (a Backend with a long list of endpoints).
    fn big(version: &str, kib: usize) -> Arc<Snapshot> {
        let endpoints: Vec<String> = (0..kib * 1024 / 20)
            .map(|i| format!("10.{}.{}.{}:8080", i / 65536 % 256, i / 256 % 256, i % 256))
            .collect();
        let json = serde_json::json!({
            "version": version,
            "backends": {"b": {"endpoints": endpoints}},
        });
        Arc::new(weir_config::parse_json(json.to_string().as_bytes()).expect("valid snapshot"))
    }

    #[test]
    fn fits_what_fits_smallest_first_and_names_the_rest() {
        // Five workloads of about 300 KiB and one of over 1 MiB.
        let mut e: BTreeMap<String, Arc<Snapshot>> = BTreeMap::new();
        for k in ["a", "b", "c", "d", "e"] {
            e.insert(format!("w-{k}"), big(k, 300));
        }
        e.insert("w-huge".into(), big("huge", 1200));
        let f = fit(&e, MAX_SECRET_BYTES);
        let total: usize = f.data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        assert_eq!(total, f.size);
        assert!(f.size <= MAX_SECRET_BYTES, "{}", f.size);
        // The five of equal size: as many as fit in 1 MiB, and not all of them.
        let each = "w-a".len() + serde_json::to_vec(&*e["w-a"]).expect("json").len();
        let n = MAX_SECRET_BYTES / each;
        assert!((1..5).contains(&n), "{each} bytes each");
        assert_eq!(f.data.len(), n, "{:?}", f.data.keys());
        assert_eq!(f.data.len() + f.left_out.len(), e.len());
        assert!(f.left_out.contains_key("w-huge"));
        assert!(f.left_out["w-huge"] > MAX_SECRET_BYTES);
        // What is kept is the snapshot itself, byte for byte.
        for (k, v) in &f.data {
            assert_eq!(v.0, serde_json::to_vec(&*e[k]).expect("json"));
        }
        // Stable: the same input keeps the same entries.
        assert_eq!(fit(&e, MAX_SECRET_BYTES), f);
        // Under the limit nothing is left out.
        e.retain(|k, _| k == "w-a" || k == "w-b");
        let f = fit(&e, MAX_SECRET_BYTES);
        assert!(f.left_out.is_empty());
        assert_eq!(f.data.len(), 2);
    }
}
