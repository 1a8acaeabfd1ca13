//! The sidecars' snapshot Secret: one per application namespace, `weir-sidecar-snapshots`, one
//! key per workload ([`crate::inject::patch::snapshot_key`]) holding the snapshot the operator
//! pushes to that workload's sidecars. The injector mounts the pod's key (optional), so a
//! restarted sidecar boots from its last compile instead of its inbound-only boot snapshot.
//! Written by the Lease holder only; the whole data is replaced, so entries of pods that are
//! gone are dropped.
//!
//! **Size.** The API server refuses a Secret whose data exceeds 1 MiB, and a refused write
//! would leave *every* workload of the namespace with a stale entry. When the entries' JSON
//! does not fit, [`fit`] stores every entry compressed with gzip (the sidecar's
//! `--config-preferred` reads it by its magic bytes, `weir_config::unpack`), as the
//! operator's own last-known-good Secret does; then it keeps what fits, smallest entries first
//! (the most workloads keep a current entry), and leaves the rest out; their pods are still
//! programmed by push, and their routes report `Persisted=False`, reason `SnapshotTooLarge`.

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
/// When the JSON does not all fit, every entry is gzip'd JSON instead (plain JSON stays
/// readable with `kubectl` whenever it fits; gzip's output carries no timestamp, so the same
/// snapshots give the same bytes and an unchanged Secret is not rewritten). When even that
/// does not fit, the smallest entries go in first (ties by key, so the choice is stable from
/// one round to the next).
pub fn fit(entries: &BTreeMap<String, Arc<Snapshot>>, limit: usize) -> Fitted {
    let mut sized: Vec<(usize, &String, Vec<u8>)> = entries
        .iter()
        // Serializing plain data types cannot fail.
        .map(|(k, s)| {
            let v = serde_json::to_vec(&**s).unwrap_or_default();
            (k.len() + v.len(), k, v)
        })
        .collect();
    if sized.iter().map(|e| e.0).sum::<usize>() > limit {
        for (n, k, v) in &mut sized {
            *v = weir_config::pack_gzip(v);
            *n = k.len() + v.len();
        }
    }
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

    /// A snapshot of about `kib` KiB of JSON (a Backend with a long list of endpoints): host
    /// names from a xorshift sequence when `random` (gzip cannot shrink them much), sequential
    /// addresses otherwise (gzip shrinks them ~10×).
    fn big(version: &str, kib: usize, random: bool) -> Arc<Snapshot> {
        let mut x = version.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |x, b| {
            x.rotate_left(8) ^ u64::from(b)
        });
        let endpoints: Vec<String> = (0..kib * 1024 / 32)
            .map(|i| {
                if random {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("h{x:016x}.e:8080")
                } else {
                    format!("10.{}.{}.{}:8080", i / 65536 % 256, i / 256 % 256, i % 256)
                }
            })
            .collect();
        let json = serde_json::json!({
            "version": version,
            "backends": {"b": {"endpoints": endpoints}},
        });
        Arc::new(weir_config::parse_json(json.to_string().as_bytes()).expect("valid snapshot"))
    }

    fn entries(kib: &[(&str, usize)], random: bool) -> BTreeMap<String, Arc<Snapshot>> {
        kib.iter()
            .map(|(k, n)| (format!("w-{k}"), big(k, *n, random)))
            .collect()
    }

    /// What an entry holds, as the sidecar reads it (`--config-preferred`).
    fn read(v: &ByteString) -> Snapshot {
        weir_config::parse_json_or_yaml(&v.0).expect("an entry the dataplane reads")
    }

    #[test]
    fn plain_json_when_it_fits() {
        let e = entries(&[("a", 200), ("b", 300)], false);
        let f = fit(&e, MAX_SECRET_BYTES);
        assert!(f.left_out.is_empty());
        assert_eq!(f.data.len(), 2);
        for (k, v) in &f.data {
            // Byte for byte the snapshot's JSON, readable with kubectl.
            assert_eq!(v.0, serde_json::to_vec(&*e[k]).expect("json"));
        }
        assert_eq!(fit(&e, MAX_SECRET_BYTES), f);
    }

    #[test]
    fn compressed_when_the_json_does_not_fit() {
        // Five workloads of about 300 KiB and one of 1.2 MiB: 2.7 MiB of JSON, which gzip
        // shrinks to well under 1 MiB.
        let e = entries(
            &[
                ("a", 300),
                ("b", 300),
                ("c", 300),
                ("d", 300),
                ("e", 300),
                ("huge", 1200),
            ],
            false,
        );
        let json: usize = e
            .values()
            .map(|s| serde_json::to_vec(&**s).expect("json").len())
            .sum();
        assert!(json > MAX_SECRET_BYTES, "{json}");
        let f = fit(&e, MAX_SECRET_BYTES);
        assert!(f.left_out.is_empty(), "{:?}", f.left_out);
        assert_eq!(f.data.len(), 6);
        assert!(f.size <= MAX_SECRET_BYTES, "{}", f.size);
        for (k, v) in &f.data {
            assert!(weir_config::is_gzip(&v.0), "{k}");
            assert_eq!(read(v), *e[k], "{k}");
        }
        // The same snapshots give the same bytes: an unchanged Secret is not rewritten.
        assert_eq!(fit(&e, MAX_SECRET_BYTES), f);
    }

    #[test]
    fn fits_what_fits_smallest_first_and_names_the_rest() {
        // Entries gzip shrinks only ~6×, against a 16 KiB limit: five of about 40 KiB of JSON
        // (~7 KB compressed) and one of 160 KiB.
        let limit = 16 * 1024;
        let e = entries(
            &[
                ("a", 40),
                ("b", 40),
                ("c", 40),
                ("d", 40),
                ("e", 40),
                ("huge", 160),
            ],
            true,
        );
        let f = fit(&e, limit);
        let total: usize = f.data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
        assert_eq!(total, f.size);
        assert!(f.size <= limit, "{}", f.size);
        assert_eq!(f.data.len() + f.left_out.len(), e.len());
        assert!(
            !f.data.is_empty() && f.data.len() < 5,
            "{:?}",
            f.data.keys()
        );
        assert!(f.left_out.contains_key("w-huge"));
        assert!(f.left_out["w-huge"] > limit);
        // Smallest first: every entry kept is no larger than any left out, and the smallest
        // left out would not have fitted.
        let kept_max = f.data.iter().map(|(k, v)| k.len() + v.0.len()).max();
        let out_min = f.left_out.values().copied().min().expect("some left out");
        assert!(kept_max <= Some(out_min));
        assert!(f.size + out_min > limit);
        // What is kept is the snapshot itself.
        for (k, v) in &f.data {
            assert_eq!(read(v), *e[k], "{k}");
        }
        // Stable: the same input keeps the same entries.
        assert_eq!(fit(&e, limit), f);
    }
}
