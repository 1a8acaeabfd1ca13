//! Watches: reflector stores fed by watchers, the per-Secret watches, and the views of
//! Services, EndpointSlices and pods that compile and the pusher read.

use super::SERVICE_NAME_LABEL;
use crate::compile::{self, ServiceIndex, ServicePort, Slice};
use crate::error::Error;
use crate::push::PodTarget;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::Notify;

/// Starts a reflector whose every event pokes `notify` (the compile loop). With `status_only`
/// (for the operator's own kinds, which have a status subresource, so every spec change bumps
/// `metadata.generation`), an update that leaves an object's uid and generation as they were
/// (a status write, often our own echoing back) pokes `status_only` (the status task) instead:
/// compile reads only spec, name, namespace, generation and the creation time, so it has
/// nothing to redo, and a burst of status writes cannot keep the compile loop's debounce open.
pub(crate) fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    dyntype: K::DynamicType,
    notify: Arc<Notify>,
    status_only: Option<Arc<Notify>>,
    what: &'static str,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    spawn_reflector_with(api, cfg, dyntype, notify, status_only, what, |_| {})
}

/// [`spawn_reflector`] whose objects pass through `strip` before they are stored: a watch of
/// big objects of which little is read (a Deployment's pod template) keeps only that little.
pub(crate) fn spawn_reflector_with<K>(
    api: Api<K>,
    cfg: watcher::Config,
    dyntype: K::DynamicType,
    notify: Arc<Notify>,
    status_only: Option<Arc<Notify>>,
    what: &'static str,
    strip: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, cfg).modify(strip)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = SpecVersions::default();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => match &status_only {
                    Some(poke) if !seen.observe(&ev) => poke.notify_one(),
                    _ => {
                        // When a change reached the operator: the first stage of a change's
                        // latency (`bench/scripts/scale_stages.py` reads it).
                        tracing::debug!(watch = what, "input event");
                        notify.notify_one()
                    }
                },
                Err(source) => {
                    let e = Error::Watch {
                        watch: what,
                        source,
                    }
                    .counted();
                    tracing::warn!(watch = what, error = %e, "watch error (retrying)");
                }
            }
        }
    });
    store
}

/// `(uid, generation)` of every object of one watch, to tell spec changes from status writes.
#[derive(Default)]
struct SpecVersions(HashMap<(String, String), (Option<String>, Option<i64>)>);

impl SpecVersions {
    /// Records the event; `false` when it changed neither an object's uid nor its generation
    /// (nothing compile reads), `true` otherwise (and for every list, relist or deletion).
    fn observe<K: Resource>(&mut self, ev: &watcher::Event<K>) -> bool {
        let key = |o: &K| {
            let m = o.meta();
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let fp = |o: &K| (o.meta().uid.clone(), o.meta().generation);
        match ev {
            watcher::Event::Apply(o) => self.0.insert(key(o), fp(o)) != Some(fp(o)),
            watcher::Event::InitApply(o) => {
                self.0.insert(key(o), fp(o));
                true
            }
            watcher::Event::Delete(o) => {
                self.0.remove(&key(o));
                true
            }
            watcher::Event::Init => {
                self.0.clear();
                true
            }
            watcher::Event::InitDone => true,
        }
    }
}

/// Watches exactly the Secrets the objects reference (`Compiled::secret_refs`): one watcher
/// per Secret, selected by `metadata.name`, so the operator never lists or caches other
/// Secrets (RBAC: list/watch on secrets; a Role can restrict it with `resourceNames`).
pub(super) struct SecretWatches {
    pub(super) client: Client,
    pub(super) notify: Arc<Notify>,
    pub(super) tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Secrets whose watcher has listed: data, or `None` when it does not exist.
    pub(super) known: Arc<std::sync::Mutex<compile::SecretIndex>>,
}

type SecretData = Option<BTreeMap<String, Vec<u8>>>;

fn secret_data(s: &Secret) -> SecretData {
    Some(
        s.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    )
}

impl SecretWatches {
    /// Starts watchers for newly referenced Secrets and stops those no longer referenced.
    pub(super) fn sync(&mut self, wanted: &std::collections::BTreeSet<String>) {
        let known = self.known.clone();
        self.tasks.retain(|k, t| {
            let keep = wanted.contains(k);
            if !keep {
                t.abort();
                known.lock().unwrap_or_else(|e| e.into_inner()).remove(k);
            }
            keep
        });
        for k in wanted {
            if self.tasks.contains_key(k) {
                continue;
            }
            let Some((ns, name)) = k.split_once('/') else {
                continue;
            };
            let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let cfg = watcher::Config::default()
                .any_semantic()
                .fields(&format!("metadata.name={name}"));
            let key = k.clone();
            let known = self.known.clone();
            let notify = self.notify.clone();
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff());
                let mut listing: SecretData = None;
                while let Some(ev) = stream.next().await {
                    let update = match ev {
                        Ok(watcher::Event::Init) => {
                            listing = None;
                            None
                        }
                        Ok(watcher::Event::InitApply(s)) => {
                            listing = secret_data(&s);
                            None
                        }
                        Ok(watcher::Event::InitDone) => Some(listing.take()),
                        Ok(watcher::Event::Apply(s)) => Some(secret_data(&s)),
                        Ok(watcher::Event::Delete(_)) => Some(None),
                        Err(source) => {
                            // Not allowed to read it (RBAC): count it as not found, so the
                            // referencing object reports it and everything else goes on.
                            let forbidden = matches!(
                                &source,
                                watcher::Error::InitialListFailed(kube::Error::Api(ae))
                                    | watcher::Error::WatchStartFailed(kube::Error::Api(ae))
                                    if ae.code == 403
                            );
                            // The error names the Secret, never its data.
                            let e = Error::SecretWatch {
                                secret: key.clone(),
                                source,
                            }
                            .counted();
                            tracing::warn!(secret = %key, error = %e, "secret watch error (retrying)");
                            let known = known.lock().unwrap_or_else(|e| e.into_inner());
                            (forbidden && !known.contains_key(&key)).then_some(None)
                        }
                    };
                    if let Some(data) = update {
                        let mut m = known.lock().unwrap_or_else(|e| e.into_inner());
                        if m.get(&key) != Some(&data) {
                            m.insert(key.clone(), data);
                            drop(m);
                            notify.notify_one();
                        }
                    }
                }
            });
            self.tasks.insert(k.clone(), task);
        }
    }

    pub(super) fn index(&self) -> compile::SecretIndex {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every wanted Secret has been read (found or not).
    pub(super) fn all_known(&self, wanted: &std::collections::BTreeSet<String>) -> bool {
        let m = self.known.lock().unwrap_or_else(|e| e.into_inner());
        wanted.iter().all(|k| m.contains_key(k))
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

/// `discovery.k8s.io/v1` EndpointSlices when served, else `v1beta1` (Kubernetes < 1.21).
pub async fn endpoint_slice_resource(client: &Client) -> kube::Result<ApiResource> {
    let group = kube::discovery::group(client, "discovery.k8s.io").await?;
    for v in ["v1", "v1beta1"] {
        if let Some((ar, _)) = group
            .versioned_resources(v)
            .into_iter()
            .find(|(ar, _)| ar.kind == "EndpointSlice")
        {
            return Ok(ar);
        }
    }
    let (ar, _) = group.recommended_kind("EndpointSlice").ok_or_else(|| {
        kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(
            "EndpointSlice".into(),
        ))
    })?;
    Ok(ar)
}

/// The fields of an EndpointSlice (same in v1 and v1beta1) that compile needs.
#[derive(Debug, Default, Deserialize)]
struct SliceData {
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Default, Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<SliceConditions>,
}

#[derive(Debug, Default, Deserialize)]
struct SliceConditions {
    ready: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<i32>,
}

pub(super) fn service_index(
    services: &Store<Service>,
    slices: &Store<DynamicObject>,
) -> ServiceIndex {
    service_index_of(&services.state(), &slices.state())
}

/// What compile needs of Services and EndpointSlices (v1 or v1beta1, as dynamic objects), in
/// an order that does not depend on the watch order. Public for the golden tests of compile,
/// which read the same objects from YAML.
pub fn service_index_of(services: &[Arc<Service>], slices: &[Arc<DynamicObject>]) -> ServiceIndex {
    let mut idx = ServiceIndex::default();
    for s in services {
        let ports = s
            .spec
            .as_ref()
            .and_then(|sp| sp.ports.as_ref())
            .map(|ps| {
                ps.iter()
                    .map(|p| ServicePort {
                        name: p.name.clone().unwrap_or_default(),
                        port: u16::try_from(p.port).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        idx.services.insert(
            compile::key(&s.namespace().unwrap_or_default(), &s.name_any()),
            ports,
        );
    }
    for s in slices {
        let Some(svc) = s.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        let data: SliceData = serde_json::from_value(s.data.clone()).unwrap_or_default();
        let slice = Slice {
            ports: data
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
                .collect(),
            endpoints: data
                .endpoints
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    let ready = e.conditions.and_then(|c| c.ready).unwrap_or(true);
                    (e.addresses, ready)
                })
                .collect(),
        };
        idx.slices
            .entry(compile::key(&s.namespace().unwrap_or_default(), svc))
            .or_default()
            .push(slice);
    }
    // Deterministic order regardless of watch order.
    for v in idx.slices.values_mut() {
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    }
    idx
}

/// Ready dataplane pods with an IP, sorted by key.
pub fn ready_pods(pods: &[Arc<Pod>]) -> Vec<PodTarget> {
    let mut out: Vec<PodTarget> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            let ip = st.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let ready = st
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                return None;
            }
            let restarts = st
                .container_statuses
                .as_ref()
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            Some(PodTarget {
                key: compile::key(&p.namespace().unwrap_or_default(), &p.name_any()),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                ip,
                restarts,
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Log;
    use super::*;
    use crate::crd::{ProxyRoute, ProxyRouteSpec};
    use bytes::Bytes;
    use http_body_util::Full;
    use std::time::Duration;

    /// Secret watches: one per referenced Secret, selected by name; a 403 counts as read
    /// ("not found") so a missing permission cannot stall the operator.
    #[tokio::test]
    async fn referenced_secrets_are_watched_one_by_one_by_name() {
        for (status, expect) in [
            (
                200u16,
                Some(Some(BTreeMap::from([("t".to_string(), b"v".to_vec())]))),
            ),
            (403, Some(None)),
        ] {
            let log: Log = Default::default();
            let l = log.clone();
            let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
                let l = l.clone();
                async move {
                    let uri = req.uri().to_string();
                    l.lock().unwrap().push((
                        req.method().to_string(),
                        uri.clone(),
                        String::new(),
                        serde_json::Value::Null,
                    ));
                    let body = if status == 403 {
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "reason": "Forbidden", "code": 403, "message": "forbidden"})
                    } else if uri.contains("watch=true") {
                        // Hang up the watch: the list is what the test looks at.
                        serde_json::Value::Null
                    } else {
                        serde_json::json!({"kind": "SecretList", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": "1"},
                                           "items": [{"metadata": {"name": "token", "namespace": "ns",
                                                                   "resourceVersion": "1"},
                                                      "data": {"t": "dg=="}}]})
                    };
                    let mut resp = http::Response::new(Full::new(Bytes::from(if body.is_null() {
                        Vec::new()
                    } else {
                        serde_json::to_vec(&body).unwrap()
                    })));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let notify = Arc::new(Notify::new());
            let mut w = SecretWatches {
                client: Client::new(svc, "default"),
                notify: notify.clone(),
                tasks: HashMap::new(),
                known: Default::default(),
            };
            let wanted = std::collections::BTreeSet::from(["ns/token".to_string()]);
            w.sync(&wanted);
            tokio::time::timeout(Duration::from_secs(10), async {
                while !w.all_known(&wanted) {
                    notify.notified().await;
                }
            })
            .await
            .expect("the Secret is read");
            assert_eq!(
                w.index().get("ns/token").cloned(),
                expect,
                "status {status}"
            );
            let first = log.lock().unwrap()[0].1.clone();
            assert!(
                first.starts_with("/api/v1/namespaces/ns/secrets?")
                    && first.contains("fieldSelector=metadata.name%3Dtoken"),
                "{first}"
            );
            // No longer referenced: the watch stops and the data is forgotten.
            w.sync(&Default::default());
            assert!(w.tasks.is_empty() && w.index().is_empty());
        }
    }

    /// Only a change of uid or generation (or a list/deletion) is news to compile.
    #[test]
    fn spec_versions_tell_status_writes_from_spec_changes() {
        let mut route = ProxyRoute::new("r", ProxyRouteSpec::default());
        route.metadata.namespace = Some("ns".into());
        route.metadata.uid = Some("u1".into());
        route.metadata.generation = Some(1);
        let mut seen = SpecVersions::default();
        let ev = |r: &ProxyRoute| watcher::Event::Apply(r.clone());
        assert!(seen.observe(&ev(&route)), "first sight");
        // A status write: same uid and generation.
        let mut written = route.clone();
        written.status = Some(Default::default());
        written.metadata.resource_version = Some("7".into());
        assert!(!seen.observe(&ev(&written)));
        // A spec change bumps the generation.
        route.metadata.generation = Some(2);
        assert!(seen.observe(&ev(&route)));
        assert!(!seen.observe(&ev(&route)));
        // Deleted and created again (new uid): news, even at the same generation.
        assert!(seen.observe(&watcher::Event::Delete(route.clone())));
        route.metadata.uid = Some("u2".into());
        assert!(seen.observe(&ev(&route)));
        route.metadata.uid = Some("u3".into());
        assert!(seen.observe(&ev(&route)));
        // A relist is always news.
        assert!(seen.observe(&watcher::Event::<ProxyRoute>::Init));
        assert!(seen.observe(&watcher::Event::InitApply(route.clone())));
        assert!(seen.observe(&watcher::Event::<ProxyRoute>::InitDone));
        assert!(!seen.observe(&ev(&route)));
    }
}
