//! The last-known-good snapshot, kept in a Secret the dataplane can start from.

use super::{FIELD_MANAGER, SNAPSHOT_KEY};
use crate::error::Error;
use crate::metrics::METRICS;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};

/// Writes the last-known-good snapshot to the Secret `name` (server-side apply, only when it
/// changed). The snapshot holds resolved credentials, API keys and TLS keys, so it lives in a
/// Secret; logs name only its version.
/// Returns whether the Secret now holds `snapshot`, or cannot ever hold it.
#[tracing::instrument(level = "debug", skip_all, fields(version = %snapshot.version))]
pub(super) async fn write_snapshot_secret(
    api: &Api<Secret>,
    name: &str,
    snapshot: &weir_config::Snapshot,
    written: &mut Option<Vec<u8>>,
) -> SecretWrite {
    let data = match secret_data(snapshot) {
        Ok(data) => data,
        Err(SecretData::Encode(e)) => {
            let e = Error::SnapshotEncode(e).counted();
            tracing::warn!(error = %e, "cannot write the snapshot Secret");
            return SecretWrite::Failed;
        }
        // The API server refuses it (422) whatever we do: not sent, and not retried for this
        // version. Found at 10,000 routes before compression: every compile round serialized
        // it and sent it to be refused, two ~5 MB applies per change.
        Err(SecretData::TooLarge { bytes }) => {
            let e = Error::SnapshotTooLarge {
                bytes,
                limit: SECRET_DATA_LIMIT,
            }
            .counted();
            tracing::error!(error = %e, "cannot write the snapshot Secret");
            return SecretWrite::TooLarge;
        }
    };
    if written.is_none() {
        match api.get_opt(name).await {
            Ok(sec) => {
                *written = Some(
                    sec.and_then(|c| c.data)
                        .and_then(|d| d.get(SNAPSHOT_KEY).cloned())
                        .map(|b| b.0)
                        .unwrap_or_default(),
                )
            }
            Err(e) => {
                let e = Error::SnapshotSecretRead(e).counted();
                tracing::warn!(error = %e, "cannot read the snapshot Secret");
                return SecretWrite::Failed;
            }
        }
    }
    if written.as_deref() == Some(data.as_slice()) {
        return SecretWrite::Holds;
    }
    // No `app.kubernetes.io/managed-by` label: the chart installs this Secret with
    // `managed-by: Helm`, and a forced apply of another value takes that field from Helm, so
    // every later `helm upgrade` (server-side apply in Helm 4) fails with a conflict. Found by
    // the pod runner's rolling-update scenario (scripts/cluster.py).
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "annotations": { "weir.dev/snapshot-version": snapshot.version },
        },
        "data": { SNAPSHOT_KEY: k8s_openapi::ByteString(data.clone()) },
    });
    match api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            METRICS.configmap_writes.inc();
            tracing::info!(secret = name, version = %snapshot.version, "wrote last-known-good snapshot");
            *written = Some(data);
            SecretWrite::Holds
        }
        // The API error describes the request, not the Secret's data.
        Err(e) => {
            let e = Error::SnapshotSecretWrite(e).counted();
            tracing::warn!(error = %e, "cannot write the snapshot Secret");
            SecretWrite::Failed
        }
    }
}

/// What [`write_snapshot_secret`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SecretWrite {
    /// The Secret holds the snapshot.
    Holds,
    /// Not written; the next round tries again.
    Failed,
    /// Larger than a Secret may be: not sent, and pointless to retry for this version.
    TooLarge,
}

/// Why a snapshot has no Secret form.
enum SecretData {
    Encode(serde_json::Error),
    /// Over [`SECRET_DATA_LIMIT`] even compressed (`bytes` compressed).
    TooLarge {
        bytes: usize,
    },
}

/// The Secret's `snapshot.json`: pretty JSON when it fits a Secret, so `kubectl` shows it;
/// else compact JSON compressed with gzip, which `weir-dataplane --config` recognises by its
/// magic bytes (`weir_config::unpack`). 10,000 routes of the benchmark's shape are 5.2 MB
/// pretty and fit compressed (test `a_10000_route_snapshot_fits_compressed`). gzip's output
/// carries no timestamp here, so one snapshot always gives the same bytes and an unchanged
/// version is never written again.
fn secret_data(snapshot: &weir_config::Snapshot) -> Result<Vec<u8>, SecretData> {
    // Compact first: pretty JSON is never shorter, so when the compact text is over the limit
    // the pretty one is too and is not made. At 10,000 routes that was 5.2 MB of pretty JSON
    // serialized per change only to be found too large.
    let compact = serde_json::to_vec(snapshot).map_err(SecretData::Encode)?;
    if compact.len() < SECRET_DATA_LIMIT {
        let mut text = serde_json::to_vec_pretty(snapshot).map_err(SecretData::Encode)?;
        text.push(b'\n');
        if text.len() <= SECRET_DATA_LIMIT {
            return Ok(text);
        }
    }
    let packed = weir_config::pack_gzip(&compact);
    if packed.len() > SECRET_DATA_LIMIT {
        return Err(SecretData::TooLarge {
            bytes: packed.len(),
        });
    }
    Ok(packed)
}

/// The most data a Secret may hold (the API server's `MaxSecretSize`, 1 MiB).
pub(super) const SECRET_DATA_LIMIT: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::super::test_support::{recording_client, Log};
    use super::*;
    use kube::Client;

    /// A client whose API server records every request and answers GETs with 404 and writes
    /// with an empty Secret.
    fn secret_mock() -> (Client, Log) {
        recording_client(|method| {
            if method == http::Method::GET {
                (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "reason": "NotFound", "code": 404, "message": "not found"}),
                )
            } else {
                (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "weir-snapshot", "namespace": "ns"}}),
                )
            }
        })
    }

    #[tokio::test]
    async fn snapshot_secret_is_applied_once_per_content() {
        let (client, log) = secret_mock();
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let mut snap: weir_config::Snapshot = yaml_serde::from_str(
            "backends: {b: {endpoints: ['a:1'], credential: {header: authorization, value: 'Bearer s3cret'}}}",
        )
        .unwrap();
        snap.version = snap.content_hash();
        let mut written = None;
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        // Same content again: nothing sent at all (not even a read).
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        let reqs = log.lock().unwrap().clone();
        let methods: Vec<&str> = reqs.iter().map(|(m, _, _, _)| m.as_str()).collect();
        assert_eq!(methods, vec!["GET", "PATCH"], "{reqs:?}");
        let (_, url, _, body) = &reqs[1];
        assert!(
            url.starts_with("/api/v1/namespaces/ns/secrets/weir-snapshot?")
                && url.contains("fieldManager=weir-operator"),
            "{url}"
        );
        assert_eq!(body["kind"], "Secret");
        assert_eq!(body["type"], "Opaque");
        assert_eq!(
            body["metadata"]["annotations"]["weir.dev/snapshot-version"],
            snap.version.as_str()
        );
        // No labels: the chart's Helm labels on this Secret stay Helm's (see write_snapshot_secret).
        assert!(body["metadata"].get("labels").is_none(), "{body}");
        // The snapshot is in `data` (base64), complete with the credential, and nowhere else.
        let b64 = body["data"][SNAPSHOT_KEY].as_str().unwrap();
        let text = String::from_utf8(
            serde_json::from_value::<k8s_openapi::ByteString>(b64.into())
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(weir_config::parse_json(text.as_bytes()).unwrap(), snap);
        assert!(
            !body.to_string().contains("s3cret"),
            "only base64 in the request"
        );
        // A change: one more apply, no read.
        snap.backends.clear();
        snap.version = snap.content_hash();
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        let methods: Vec<String> = log.lock().unwrap().iter().map(|r| r.0.clone()).collect();
        assert_eq!(methods, vec!["GET", "PATCH", "PATCH"]);
    }

    /// A failed write is a typed error counted under its kind, and is not remembered as
    /// written: the next round tries again.
    #[tokio::test]
    async fn a_failed_write_is_counted_and_retried() {
        let (client, log) = recording_client(|method| {
            // `get_opt` reads a 404 as "absent" only with reason NotFound.
            let (code, reason) = if method == http::Method::GET {
                (404, "NotFound")
            } else {
                (500, "InternalError")
            };
            (
                code,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": reason, "code": code, "message": "boom"}),
            )
        });
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let mut snap = weir_config::Snapshot::default();
        snap.version = snap.content_hash();
        let failures = || {
            METRICS
                .errors
                .with_label_values(&["snapshot_secret_write"])
                .get()
        };
        let before = failures();
        let mut written = None;
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        assert_eq!(failures(), before + 1);
        // Read once (nothing there), the write failed: what is known is "empty", not the text.
        assert_eq!(written.as_deref(), Some(&b""[..]));
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        assert_eq!(failures(), before + 2);
        let methods: Vec<String> = log.lock().unwrap().iter().map(|r| r.0.clone()).collect();
        assert_eq!(methods, vec!["GET", "PATCH", "PATCH"]);
    }

    /// A snapshot over a Secret's 1 MiB is not sent (the API server would refuse it), counted
    /// as its own error kind, and reported so the caller does not retry the version.
    #[tokio::test]
    async fn a_snapshot_too_large_for_a_secret_is_not_sent() {
        let (client, log) = secret_mock();
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let mut snap = weir_config::Snapshot::default();
        // 2 MiB that gzip cannot shrink below 1 MiB: letters from a xorshift sequence.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let big: String = (0..2 * SECRET_DATA_LIMIT)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        snap.backends.insert(
            "b".into(),
            yaml_serde::from_str(&format!(
                "{{endpoints: ['a:1'], credential: {{header: h, value: '{big}'}}}}"
            ))
            .unwrap(),
        );
        snap.version = snap.content_hash();
        let too_large = || {
            METRICS
                .errors
                .with_label_values(&["snapshot_too_large"])
                .get()
        };
        let before = too_large();
        let mut written = None;
        let r = write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        assert_eq!(r, SecretWrite::TooLarge);
        assert_eq!(too_large(), before + 1);
        assert!(log.lock().unwrap().is_empty(), "nothing sent");
        assert_eq!(written, None);
    }

    fn unpacked(data: &[u8]) -> weir_config::Snapshot {
        weir_config::parse_json(&weir_config::unpack(data).unwrap()).unwrap()
    }

    /// The form is decided by the size alone, whichever JSON is made first: pretty JSON when
    /// it fits (even with the compact text close to the limit), gzip when only the compact
    /// text would. The pretty text is made only when the compact one is under the limit.
    #[test]
    fn pretty_when_it_fits_else_gzip_at_the_limit() {
        let with_value = |n: usize| {
            let mut snap = weir_config::Snapshot::default();
            snap.backends.insert(
                "b".into(),
                yaml_serde::from_str(&format!(
                    "{{endpoints: ['a:1'], credential: {{header: h, value: '{}'}}}}",
                    "x".repeat(n)
                ))
                .unwrap(),
            );
            snap
        };
        let sizes = |snap: &weir_config::Snapshot| {
            let compact = serde_json::to_vec(snap).unwrap().len();
            let pretty = serde_json::to_vec_pretty(snap).unwrap().len() + 1;
            (compact, pretty)
        };
        let overhead = {
            let (c, p) = sizes(&with_value(0));
            (c, p - c)
        };
        // Pretty exactly at the limit: kept pretty.
        let snap = with_value(SECRET_DATA_LIMIT - overhead.0 - overhead.1);
        assert_eq!(sizes(&snap).1, SECRET_DATA_LIMIT);
        let data = secret_data(&snap).ok().unwrap();
        assert!(!weir_config::is_gzip(&data));
        assert_eq!(
            data,
            [serde_json::to_vec_pretty(&snap).unwrap(), b"\n".to_vec()].concat()
        );
        // One byte more: compact still under the limit, pretty over it: gzip.
        let snap = with_value(SECRET_DATA_LIMIT - overhead.0 - overhead.1 + 1);
        assert!(sizes(&snap).0 < SECRET_DATA_LIMIT);
        let data = secret_data(&snap).ok().unwrap();
        assert!(weir_config::is_gzip(&data));
        assert_eq!(unpacked(&data), snap);
        // Compact over the limit: gzip.
        let snap = with_value(SECRET_DATA_LIMIT);
        let data = secret_data(&snap).ok().unwrap();
        assert!(weir_config::is_gzip(&data));
        assert_eq!(unpacked(&data), snap);
    }

    /// 10,000 ProxyRoutes of `make bench`'s operator-scale shape: 5 MB of pretty JSON, over a
    /// Secret's 1 MiB, so the Secret gets gzip-compressed JSON, which fits, reads back through
    /// the contract's loader (what `weir-dataplane --config` calls) as the same snapshot, and
    /// is written once: the same snapshot gives the same bytes.
    #[tokio::test]
    async fn a_10000_route_snapshot_fits_compressed() {
        use crate::compile::{compile, Inputs, SecretIndex, ServiceIndex};
        use crate::crd::{Backend, BackendSpec, ProxyRoute, ProxyRouteSpec};
        let mut be = Backend::new(
            "bench",
            yaml_serde::from_str::<BackendSpec>("{endpoints: [{address: '127.0.0.1:9000'}]}")
                .unwrap(),
        );
        be.metadata.namespace = Some("bench".into());
        let routes: Vec<ProxyRoute> = (0..10_000)
            .map(|i| {
                let spec: ProxyRouteSpec = yaml_serde::from_str(&format!(
                    "{{hostnames: [r{i}.bench.test], rules: [{{filters: {{responseHeaders: \
                     {{set: [{{name: x-bench, value: '0'}}]}}}}, backendRefs: [{{name: bench}}]}}]}}"
                ))
                .unwrap();
                let mut r = ProxyRoute::new(&format!("r{i}"), spec);
                r.metadata.namespace = Some("bench".into());
                r.metadata.generation = Some(1);
                r
            })
            .collect();
        let listeners: Vec<weir_config::Listener> =
            yaml_serde::from_str("[{name: http, address: '0.0.0.0:8080', protocol: http}]")
                .unwrap();
        let compiled = compile(Inputs {
            routes: &routes,
            backends: std::slice::from_ref(&be),
            sinks: &[],
            services: &ServiceIndex::default(),
            secrets: &SecretIndex::default(),
            listeners: &listeners,
        });
        let snap = compiled.snapshot;
        assert_eq!(snap.routes.len(), 10_000);
        let pretty = serde_json::to_vec_pretty(&snap).unwrap();
        assert!(pretty.len() > SECRET_DATA_LIMIT, "{} bytes", pretty.len());

        let (client, log) = secret_mock();
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let mut written = None;
        let r = write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        assert_eq!(r, SecretWrite::Holds);
        let reqs = log.lock().unwrap().clone();
        let methods: Vec<&str> = reqs.iter().map(|(m, _, _, _)| m.as_str()).collect();
        assert_eq!(methods, vec!["GET", "PATCH"]);
        let b64 = reqs[1].3["data"][SNAPSHOT_KEY].as_str().unwrap();
        let data = serde_json::from_value::<k8s_openapi::ByteString>(b64.into())
            .unwrap()
            .0;
        assert!(weir_config::is_gzip(&data));
        assert!(data.len() <= SECRET_DATA_LIMIT, "{} bytes", data.len());
        eprintln!(
            "10,000 routes: {} bytes pretty, {} bytes in the Secret",
            pretty.len(),
            data.len()
        );
        assert_eq!(weir_config::load(&data).unwrap(), snap);
        assert_eq!(written.as_deref(), Some(data.as_slice()));
        // The same snapshot again: the same bytes, nothing sent.
        write_snapshot_secret(&api, "weir-snapshot", &snap, &mut written).await;
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}
