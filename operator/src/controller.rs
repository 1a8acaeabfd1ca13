//! The controller: watches (reflector stores fed by watchers), a debounced compile loop, the
//! pusher, the last-known-good ConfigMap and status write-back, gated by the Lease.
//!
//! Shape (after Linkerd's policy controller): every watch only updates its store and pokes one
//! `Notify`; one loop reads all stores, compiles (a pure function), hands the snapshot to the
//! pusher through a `watch` channel and, when leading, writes the last-known-good Secret. The
//! statuses that really changed are written by their own task (`status_loop`), fed the latest
//! compile outcome and pod progress through another `watch` channel: a thousand status writes
//! (and their echoes) never hold the next compile and push back.

use crate::compile::{self, Compiled, ServiceIndex, ServicePort, Slice};
use crate::crd::{Backend, ProxyRoute, TelemetrySink};
use crate::lease::{self, LeaseConfig};
use crate::metrics::METRICS;
use crate::push::{self, Desired, PodStates, PodTarget, PusherConfig};
use crate::status::{self, PodProgress};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

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
}

/// Starts a reflector whose every event pokes `notify` (the compile loop). With `status_only`
/// (for the operator's own kinds, which have a status subresource, so every spec change bumps
/// `metadata.generation`), an update that leaves an object's uid and generation as they were
/// (a status write, often our own echoing back) pokes `status_only` (the status task) instead:
/// compile reads only spec, name, namespace, generation and the creation time, so it has
/// nothing to redo, and a burst of status writes cannot keep the compile loop's debounce open.
fn spawn_reflector<K>(
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
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = SpecVersions::default();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => match &status_only {
                    Some(poke) if !seen.observe(&ev) => poke.notify_one(),
                    _ => notify.notify_one(),
                },
                Err(e) => tracing::warn!(watch = what, error = %e, "watch error (retrying)"),
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
struct SecretWatches {
    client: Client,
    notify: Arc<Notify>,
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Secrets whose watcher has listed: data, or `None` when it does not exist.
    known: Arc<std::sync::Mutex<compile::SecretIndex>>,
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
    fn sync(&mut self, wanted: &std::collections::BTreeSet<String>) {
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
                        Err(e) => {
                            // The error names the Secret, never its data.
                            tracing::warn!(secret = %key, error = %e, "secret watch error (retrying)");
                            // Not allowed to read it (RBAC): count it as not found, so the
                            // referencing object reports it and everything else goes on.
                            let forbidden = matches!(
                                &e,
                                watcher::Error::InitialListFailed(kube::Error::Api(ae))
                                    | watcher::Error::WatchStartFailed(kube::Error::Api(ae))
                                    if ae.code == 403
                            );
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

    fn index(&self) -> compile::SecretIndex {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every wanted Secret has been read (found or not).
    fn all_known(&self, wanted: &std::collections::BTreeSet<String>) -> bool {
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

fn service_index(services: &Store<Service>, slices: &Store<DynamicObject>) -> ServiceIndex {
    let mut idx = ServiceIndex::default();
    for s in services.state() {
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
    for s in slices.state() {
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

/// RFC 3339, whole seconds (what `metav1.Time` stores).
pub fn now_rfc3339() -> String {
    format!("{:.0}", k8s_openapi::jiff::Timestamp::now())
}

struct StatusWriter {
    /// Last status written per `Kind:ns/name`, until the watch shows it back.
    written: HashMap<String, serde_json::Value>,
    writes: u64,
    recorder: Recorder,
}

/// Publishes an event, best effort (events are informational; failures are only logged).
async fn publish(recorder: &Recorder, t: &status::Transition, reference: &ObjectReference) {
    let ev = Event {
        type_: if t.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: t.reason.to_string(),
        note: Some(t.note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::debug!(error = %e, reason = t.reason, "cannot publish event");
    }
}

/// One status write in flight: patches the status subresource and publishes the events of
/// its transitions; yields the object's key, the status written and whether it was.
type StatusWrite =
    std::pin::Pin<Box<dyn std::future::Future<Output = (String, serde_json::Value, bool)> + Send>>;

/// Status writes one pass keeps in flight: a burst of new objects gets its statuses in a
/// fraction of the time one-by-one writes take, without flooding the API server.
const STATUS_WRITES_IN_FLIGHT: usize = 8;

impl StatusWriter {
    /// Computes and, when it differs from what the object has, applies the status.
    #[cfg(test)]
    async fn sync<K, S>(
        &mut self,
        client: &Client,
        obj: &K,
        current: Option<&S>,
        compute: impl FnOnce(Option<&S>) -> S,
    ) where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        S: Serialize + DeserializeOwned + PartialEq + status::StatusView,
    {
        if let Some(write) = self.plan(client, obj, current, compute) {
            let (kkey, value, ok) = write.await;
            self.record(kkey, value, ok);
        }
    }

    /// Computes the status; when it differs from what the object has (or what we wrote and
    /// the watch has not shown yet), returns the write to make. Call `record` with its result.
    fn plan<K, S>(
        &mut self,
        client: &Client,
        obj: &K,
        current: Option<&S>,
        compute: impl FnOnce(Option<&S>) -> S,
    ) -> Option<StatusWrite>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        S: Serialize + DeserializeOwned + PartialEq + status::StatusView,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let kkey = format!("{}:{ns}/{name}", K::kind(&()));
        let current_v = current.and_then(|c| serde_json::to_value(c).ok());
        if self.written.contains_key(&kkey) && self.written.get(&kkey) == current_v.as_ref() {
            self.written.remove(&kkey);
        }
        let pending: Option<S> = self
            .written
            .get(&kkey)
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let base = pending.as_ref().or(current);
        let desired = compute(base);
        if base == Some(&desired) {
            return None;
        }
        let value = serde_json::to_value(&desired).ok()?;
        let (old_c, old_e) = base
            .map(|b| (b.conditions(), b.endpoints()))
            .unwrap_or_default();
        let mut ts = status::condition_transitions(&K::kind(&()), old_c, desired.conditions());
        ts.extend(status::endpoint_transitions(old_e, desired.endpoints()));
        let reference = obj.object_ref(&());
        let recorder = self.recorder.clone();
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": value,
        });
        Some(Box::pin(async move {
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            let ok = match api.patch_status(&name, &pp, &Patch::Apply(&patch)).await {
                Ok(_) => {
                    for t in &ts {
                        publish(&recorder, t, &reference).await;
                    }
                    true
                }
                Err(kube::Error::Api(e)) if e.code == 404 => false,
                Err(e) => {
                    METRICS.status_write_errors.fetch_add(1, Relaxed);
                    tracing::warn!(object = %kkey, error = %e, "status write failed");
                    false
                }
            };
            (kkey, patch["status"].clone(), ok)
        }))
    }

    /// Takes the result of a write from `plan`.
    fn record(&mut self, kkey: String, value: serde_json::Value, ok: bool) {
        if ok {
            self.writes += 1;
            METRICS.status_writes.fetch_add(1, Relaxed);
            tracing::info!(object = %kkey, "status updated");
            self.written.insert(kkey, value);
        }
    }
}

/// What the status task computes statuses from: the latest compile and what the pods run.
#[derive(Clone, Default)]
struct StatusJob {
    /// Leadership term; a new term forgets the pending copies (the world is re-read).
    term: u64,
    /// Bumped when what statuses are computed from changes materially (term, snapshot
    /// version, pod progress, writing on/off): a pass in progress stops and starts over with
    /// the newer job instead of finishing writes that are already stale.
    epoch: u64,
    /// `None`: write nothing (not leading, or not every ready pod has been asked yet).
    work: Option<(Arc<Compiled>, Arc<PodProgress>)>,
}

/// What decides `StatusJob::epoch`.
#[derive(PartialEq)]
struct JobKey {
    term: u64,
    version: Option<String>,
    progress: Option<Arc<PodProgress>>,
}

/// The status task: one pass over all objects per new job (writes only what differs), the
/// latest job winning. Runs until the sender is dropped.
async fn status_loop(
    client: Client,
    mut w: StatusWriter,
    mut jobs: watch::Receiver<StatusJob>,
    poke: Arc<Notify>,
    stores: (Store<ProxyRoute>, Store<Backend>, Store<TelemetrySink>),
    sink_status_interval: Duration,
) {
    let (routes, backends, sinks) = stores;
    let mut term = 0;
    let mut sink_counters_at: Option<tokio::time::Instant> = None;
    loop {
        if !jobs.has_changed().unwrap_or(false) {
            // A new job, or a status update seen on a watch (ours echoing back: the pass
            // drops its pending copy; someone else's: the pass puts it right).
            tokio::select! {
                r = jobs.changed() => if r.is_err() { return },
                _ = poke.notified() => {}
            }
        }
        let job = jobs.borrow_and_update().clone();
        if job.term != term {
            // New term: forget what we think we wrote; re-read the world.
            w.written.clear();
            term = job.term;
        }
        let Some((compiled, progress)) = &job.work else {
            continue;
        };
        let superseded = || jobs.has_changed().unwrap_or(true) && jobs.borrow().epoch != job.epoch;
        let t0 = std::time::Instant::now();
        let writes = w.writes;
        let done = write_statuses(
            &client,
            &mut w,
            compiled,
            progress,
            (&routes, &backends, &sinks),
            (&mut sink_counters_at, sink_status_interval),
            superseded,
        )
        .await;
        tracing::debug!(
            elapsed = ?t0.elapsed(),
            writes = w.writes - writes,
            done,
            "status pass"
        );
    }
}

/// Runs the operator until `stop` flips to true.
pub async fn run(
    client: Client,
    s: Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let notify = Arc::new(Notify::new());
    let wc = watcher::Config::default().any_semantic();
    let (routes_api, backends_api, sinks_api, services_api): (
        Api<ProxyRoute>,
        Api<Backend>,
        Api<TelemetrySink>,
        Api<Service>,
    ) = match &s.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let slice_ar = endpoint_slice_resource(&client)
        .await
        .map_err(|e| format!("cannot discover EndpointSlices: {e}"))?;
    tracing::info!(version = %slice_ar.api_version, "EndpointSlice API");
    let slices_api: Api<DynamicObject> = match &s.watch_namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &slice_ar),
        None => Api::all_with(client.clone(), &slice_ar),
    };
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &s.dataplane_namespace);

    // Status-only updates of our own kinds poke the status task, not the compile loop.
    let status_poke = Arc::new(Notify::new());
    let sp = Some(status_poke.clone());
    let routes = spawn_reflector(
        routes_api,
        wc.clone(),
        (),
        notify.clone(),
        sp.clone(),
        "proxyroutes",
    );
    let backends = spawn_reflector(
        backends_api,
        wc.clone(),
        (),
        notify.clone(),
        sp.clone(),
        "backends",
    );
    let sinks = spawn_reflector(
        sinks_api,
        wc.clone(),
        (),
        notify.clone(),
        sp,
        "telemetrysinks",
    );
    let services = spawn_reflector(
        services_api,
        wc.clone(),
        (),
        notify.clone(),
        None,
        "services",
    );
    let slices = spawn_reflector(
        slices_api,
        wc.clone().labels(SERVICE_NAME_LABEL),
        slice_ar.clone(),
        notify.clone(),
        None,
        "endpointslices",
    );
    let pods = spawn_reflector(
        pods_api,
        wc.clone().labels(&s.dataplane_selector),
        (),
        notify.clone(),
        None,
        "pods",
    );

    // Never compile from a half-listed world: an empty store would push an empty snapshot.
    let ready = async {
        routes.wait_until_ready().await.ok();
        backends.wait_until_ready().await.ok();
        sinks.wait_until_ready().await.ok();
        services.wait_until_ready().await.ok();
        slices.wait_until_ready().await.ok();
        pods.wait_until_ready().await.ok();
    };
    tokio::select! {
        _ = ready => {}
        _ = stop.changed() => return Ok(()),
    }
    tracing::info!("caches synced");
    METRICS.synced.store(true, Relaxed);

    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
    let lease_task = tokio::spawn(lease::run(
        Api::<Lease>::namespaced(client.clone(), &s.dataplane_namespace),
        s.lease.clone(),
        leader_tx,
        lease_stop_rx,
    ));

    let (desired_tx, desired_rx) = watch::channel(Desired::default());
    let states: PodStates = Default::default();
    let progress = Arc::new(Notify::new());
    let pusher = tokio::spawn(push::run(
        s.pusher.clone(),
        desired_rx,
        states.clone(),
        progress.clone(),
    ));
    crate::ui::publish(crate::ui::Sources {
        routes: routes.clone(),
        backends: backends.clone(),
        sinks: sinks.clone(),
        pods: pods.clone(),
        states: states.clone(),
        desired: desired_tx.subscribe(),
    });

    let lkg_api: Api<Secret> = Api::namespaced(client.clone(), &s.dataplane_namespace);
    let mut lkg_written: Option<String> = None;
    let mut secret_watches = SecretWatches {
        client: client.clone(),
        notify: notify.clone(),
        tasks: HashMap::new(),
        known: Default::default(),
    };
    let mut history: VecDeque<(String, BTreeMap<String, i64>)> = VecDeque::new();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(s.lease.identity.clone()),
        },
    );
    let writer = StatusWriter {
        written: HashMap::new(),
        writes: 0,
        recorder: recorder.clone(),
    };
    let (status_tx, status_rx) = watch::channel(StatusJob::default());
    let status_task = tokio::spawn(status_loop(
        client.clone(),
        writer,
        status_rx,
        status_poke,
        (routes.clone(), backends.clone(), sinks.clone()),
        s.sink_status_interval,
    ));
    let mut term = 0u64;
    let mut last_key: Option<JobKey> = None;
    let mut announced_rejections: std::collections::HashSet<(String, String)> = Default::default();
    let mut was_leader = false;
    loop {
        // Debounce: wait for a quiet period (bounded), so bursts compile once.
        let deadline = tokio::time::Instant::now() + s.debounce * 5;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(s.debounce) => break,
                _ = notify.notified() => {
                    if tokio::time::Instant::now() >= deadline { break; }
                }
            }
        }
        let leader = *leader_rx.borrow_and_update();
        METRICS.leader.store(leader, Relaxed);
        if leader != was_leader {
            // New term: forget what we think we wrote; re-read the world.
            term += 1;
            lkg_written = None;
            was_leader = leader;
        }

        let t0 = std::time::Instant::now();
        let route_objs: Vec<ProxyRoute> = routes.state().iter().map(|r| (**r).clone()).collect();
        let backend_objs: Vec<Backend> = backends.state().iter().map(|r| (**r).clone()).collect();
        let sink_objs: Vec<TelemetrySink> = sinks.state().iter().map(|r| (**r).clone()).collect();
        let idx = service_index(&services, &slices);
        let secrets_idx = secret_watches.index();
        let compiled: Compiled = compile::compile(compile::Inputs {
            routes: &route_objs,
            backends: &backend_objs,
            sinks: &sink_objs,
            services: &idx,
            secrets: &secrets_idx,
            listeners: &s.listeners,
        });
        secret_watches.sync(&compiled.secret_refs);
        if !secret_watches.all_known(&compiled.secret_refs) {
            // A referenced Secret has not been read yet: this snapshot would lack a credential
            // or certificate that exists. Its watcher pokes `notify` once it has listed.
            tokio::select! {
                _ = notify.notified() => {}
                _ = stop.changed() => break,
            }
            continue;
        }
        let version = compiled.snapshot.version.clone();
        if !history.iter().any(|(v, _)| *v == version) {
            history.push_back((version.clone(), compiled.contents()));
            while history.len() > 32 {
                history.pop_front();
            }
            tracing::info!(
                %version,
                routes = compiled.snapshot.routes.len(),
                backends = compiled.snapshot.backends.len(),
                "compiled snapshot"
            );
        }
        let targets = ready_pods(&pods.state());
        let snapshot_ok = compiled.global.is_empty();
        if !snapshot_ok {
            tracing::error!(errors = ?compiled.global, "operator settings are invalid; not pushing");
        }
        desired_tx.send_if_modified(|d| {
            let same = d.leader == leader
                && d.pods == targets
                && d.snapshot.as_ref().map(|s| &s.version) == Some(&version);
            if !same {
                d.leader = leader;
                d.pods = targets.clone();
                d.snapshot = snapshot_ok.then(|| Arc::new(compiled.snapshot.clone()));
            }
            !same
        });

        if leader && snapshot_ok {
            write_snapshot_secret(
                &lkg_api,
                &s.snapshot_secret,
                &compiled.snapshot,
                &mut lkg_written,
            )
            .await;
        }
        // Until the pusher has asked every ready pod what it runs, status would be a guess.
        let pods_known = {
            let st = states.lock().unwrap_or_else(|e| e.into_inner());
            targets
                .iter()
                .all(|t| st.get(&t.key).is_some_and(|p| p.polled))
        };
        let mut work = None;
        if leader && pods_known {
            let progress_view = {
                let st = states.lock().unwrap_or_else(|e| e.into_inner());
                PodProgress {
                    pods: targets
                        .iter()
                        .map(|t| {
                            let acked = st.get(&t.key)?.acked.clone()?;
                            history
                                .iter()
                                .find(|(v, _)| *v == acked)
                                .map(|(_, c)| c.clone())
                        })
                        .collect(),
                    health: targets
                        .iter()
                        .map(|t| st.get(&t.key).and_then(|p| p.health.clone()))
                        .collect(),
                    rejected: targets
                        .iter()
                        .filter_map(|t| {
                            let (v, errs) = st.get(&t.key)?.rejected.clone()?;
                            (v == version).then(|| (t.key.clone(), errs))
                        })
                        .collect(),
                    sinks: targets
                        .iter()
                        .map(|t| st.get(&t.key).and_then(|p| p.sinks.clone()))
                        .collect(),
                }
            };
            if announced_rejections.len() > 1024 {
                announced_rejections.clear();
            }
            for (pod, errs) in &progress_view.rejected {
                if announced_rejections.insert((pod.clone(), version.clone())) {
                    let (ns, name) = pod.split_once('/').unwrap_or_default();
                    let reference = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(ns.into()),
                        name: Some(name.into()),
                        ..Default::default()
                    };
                    let shown: Vec<String> = errs.iter().take(5).map(|e| e.to_string()).collect();
                    let t = status::Transition {
                        warning: true,
                        reason: "SnapshotRejected",
                        note: format!("snapshot {version} rejected: {}", shown.join("; ")),
                    };
                    publish(&recorder, &t, &reference).await;
                }
            }
            work = Some(Arc::new(progress_view));
        }
        // Statuses are written by the status task from this compile; it makes a pass on every
        // round, and drops a pass in progress only when the inputs changed materially.
        let key = JobKey {
            term,
            version: work.as_ref().map(|_| version.clone()),
            progress: work.clone(),
        };
        let material = last_key.as_ref() != Some(&key);
        let compiled = Arc::new(compiled);
        status_tx.send_modify(|j| {
            j.term = term;
            if material {
                j.epoch += 1;
            }
            j.work = work.map(|p| (compiled.clone(), p));
        });
        last_key = Some(key);
        METRICS.observe_reconcile(t0.elapsed());
        METRICS.routes_invalid.store(
            compiled.routes.values().filter(|r| !r.included).count() as u64,
            Relaxed,
        );
        METRICS.pods_ready.store(targets.len() as u64, Relaxed);
        {
            let st = states.lock().unwrap_or_else(|e| e.into_inner());
            let programmed = targets
                .iter()
                .filter(|t| {
                    st.get(&t.key).and_then(|p| p.acked.as_deref()) == Some(version.as_str())
                })
                .count();
            METRICS.pods_programmed.store(programmed as u64, Relaxed);
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "reconciled");

        tokio::select! {
            _ = notify.notified() => {}
            _ = progress.notified() => {}
            _ = leader_rx.changed() => {}
            _ = stop.changed() => break,
        }
    }
    let _ = lease_stop_tx.send(true);
    let _ = lease_task.await;
    pusher.abort();
    status_task.abort();
    Ok(())
}

/// Writes the last-known-good snapshot to the Secret `name` (server-side apply, only when it
/// changed). The snapshot holds resolved credentials, API keys and TLS keys, so it lives in a
/// Secret; logs name only its version.
#[tracing::instrument(level = "debug", skip_all, fields(version = %snapshot.version))]
async fn write_snapshot_secret(
    api: &Api<Secret>,
    name: &str,
    snapshot: &weir_config::Snapshot,
    written: &mut Option<String>,
) {
    let Ok(mut text) = serde_json::to_string_pretty(snapshot) else {
        return;
    };
    text.push('\n');
    if written.is_none() {
        match api.get_opt(name).await {
            Ok(sec) => {
                *written = Some(
                    sec.and_then(|c| c.data)
                        .and_then(|d| d.get(SNAPSHOT_KEY).cloned())
                        .and_then(|b| String::from_utf8(b.0).ok())
                        .unwrap_or_default(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the snapshot Secret");
                return;
            }
        }
    }
    if written.as_deref() == Some(text.as_str()) {
        return;
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
        "data": { SNAPSHOT_KEY: k8s_openapi::ByteString(text.clone().into_bytes()) },
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
            METRICS.configmap_writes.fetch_add(1, Relaxed);
            tracing::info!(secret = name, version = %snapshot.version, "wrote last-known-good snapshot");
            *written = Some(text);
        }
        // The API error describes the request, not the Secret's data.
        Err(e) => tracing::warn!(error = %e, "cannot write the snapshot Secret"),
    }
}

/// One pass over every object: writes the statuses that differ. Stops early (returns `false`)
/// as soon as `superseded` says a newer job makes the rest of this pass stale.
#[tracing::instrument(level = "debug", skip_all, fields(version = %compiled.snapshot.version))]
async fn write_statuses(
    client: &Client,
    w: &mut StatusWriter,
    compiled: &Compiled,
    pods: &PodProgress,
    (routes, backends, sinks): (&Store<ProxyRoute>, &Store<Backend>, &Store<TelemetrySink>),
    (sink_counters_at, sink_status_interval): (&mut Option<tokio::time::Instant>, Duration),
    superseded: impl Fn() -> bool,
) -> bool {
    let now = now_rfc3339();
    let mut inflight = Writes {
        w,
        inflight: Default::default(),
    };
    let done = 'pass: {
        for r in routes.state() {
            if superseded() {
                break 'pass false;
            }
            let k = compile::key(&r.namespace().unwrap_or_default(), &r.name_any());
            let Some(o) = compiled.routes.get(&k) else {
                continue;
            };
            let write = inflight.w.plan(client, &*r, r.status.as_ref(), |old| {
                status::route_status(&k, o, compiled, pods, old, &now)
            });
            inflight.add(write).await;
        }
        for b in backends.state() {
            if superseded() {
                break 'pass false;
            }
            let k = compile::key(&b.namespace().unwrap_or_default(), &b.name_any());
            let Some(o) = compiled.backends.get(&k) else {
                continue;
            };
            let write = inflight.w.plan(client, &*b, b.status.as_ref(), |old| {
                status::backend_status(&k, o, pods, old, &now)
            });
            inflight.add(write).await;
        }
        // Sink counters move with traffic: refresh them at most once per interval.
        let refresh_counters = sink_counters_at.is_none_or(|t| t.elapsed() >= sink_status_interval);
        if refresh_counters {
            *sink_counters_at = Some(tokio::time::Instant::now());
        }
        for s in sinks.state() {
            if superseded() {
                break 'pass false;
            }
            let k = compile::key(&s.namespace().unwrap_or_default(), &s.name_any());
            let Some(o) = compiled.sinks.get(&k) else {
                continue;
            };
            let write = inflight.w.plan(client, &*s, s.status.as_ref(), |old| {
                status::sink_status(&k, o, pods, old, &now, refresh_counters)
            });
            inflight.add(write).await;
        }
        true
    };
    // Writes already sent finish either way, so what we wrote is known before the next pass.
    inflight.drain().await;
    if done {
        // Forget objects that are gone.
        let live: std::collections::HashSet<String> = compiled
            .routes
            .keys()
            .map(|k| format!("ProxyRoute:{k}"))
            .chain(compiled.backends.keys().map(|k| format!("Backend:{k}")))
            .chain(compiled.sinks.keys().map(|k| format!("TelemetrySink:{k}")))
            .collect();
        inflight.w.written.retain(|k, _| live.contains(k));
    }
    done
}

/// The status writes of one pass, at most `STATUS_WRITES_IN_FLIGHT` at a time.
struct Writes<'a> {
    w: &'a mut StatusWriter,
    inflight: futures_util::stream::FuturesUnordered<StatusWrite>,
}

impl Writes<'_> {
    async fn add(&mut self, write: Option<StatusWrite>) {
        let Some(write) = write else {
            return;
        };
        self.inflight.push(write);
        while self.inflight.len() >= STATUS_WRITES_IN_FLIGHT {
            self.next().await;
        }
    }

    async fn next(&mut self) {
        if let Some((kkey, value, ok)) = self.inflight.next().await {
            self.w.record(kkey, value, ok);
        }
    }

    async fn drain(&mut self) {
        while !self.inflight.is_empty() {
            self.next().await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Write patterns against a mocked API server: which requests the status writer sends.
    use super::*;
    use crate::compile::RouteOutcome;
    use crate::crd::{ProxyRouteSpec, ProxyRouteStatus};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<(String, String, String, serde_json::Value)>>>;

    fn route_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute",
            "metadata": {"name": "r", "namespace": "ns", "generation": 1},
            "spec": {"rules": [{"backendRefs": [{"name": "be"}]}]},
        })
    }

    /// A client whose API server records every request (method, URI, content type, JSON
    /// body) and answers it with `answer(method)`: a status code and a JSON body.
    fn recording_client(answer: fn(&http::Method) -> (u16, serde_json::Value)) -> (Client, Log) {
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
    fn mock() -> (Client, Log) {
        recording_client(|_| (200, route_json()))
    }

    fn status_patches(log: &Log) -> Vec<(String, String, serde_json::Value)> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(m, u, _, _)| m == "PATCH" && u.contains("/status"))
            .map(|(_, u, ct, v)| (u.clone(), ct.clone(), v.clone()))
            .collect()
    }

    fn pods(programmed: bool) -> PodProgress {
        let gen = if programmed { 1 } else { 0 };
        PodProgress {
            pods: vec![Some(BTreeMap::from([("ProxyRoute:ns/r".to_string(), gen)]))],
            health: vec![None],
            rejected: vec![],
            sinks: vec![None],
        }
    }

    async fn sync(
        w: &mut StatusWriter,
        client: &Client,
        obj: &ProxyRoute,
        outcome: &RouteOutcome,
        p: PodProgress,
        now: &str,
    ) {
        let compiled = Compiled::default();
        w.sync(client, obj, obj.status.as_ref(), |old| {
            status::route_status("ns/r", outcome, &compiled, &p, old, now)
        })
        .await;
    }

    #[tokio::test]
    async fn status_is_written_once_per_real_change() {
        let (client, log) = mock();
        let mut w = StatusWriter {
            written: HashMap::new(),
            writes: 0,
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: None,
                },
            ),
        };
        let mut route = ProxyRoute::new("r", ProxyRouteSpec::default());
        route.metadata.namespace = Some("ns".into());
        route.metadata.generation = Some(1);
        let outcome = RouteOutcome {
            generation: Some(1),
            backends: vec!["ns/be".into()],
            included: true,
            ..Default::default()
        };
        // First sight: one server-side apply of the status subresource.
        sync(&mut w, &client, &route, &outcome, pods(false), "t0").await;
        let patches = status_patches(&log);
        assert_eq!(patches.len(), 1);
        let (url, ct, body) = &patches[0];
        assert!(
            url.starts_with("/apis/weir.dev/v1alpha1/namespaces/ns/proxyroutes/r/status?"),
            "{url}"
        );
        assert!(
            url.contains("fieldManager=weir-operator") && url.contains("force=true"),
            "{url}"
        );
        assert_eq!(ct, "application/apply-patch+yaml");
        assert_eq!(body["kind"], "ProxyRoute");
        assert_eq!(body["apiVersion"], "weir.dev/v1alpha1");
        let written: ProxyRouteStatus = serde_json::from_value(body["status"].clone()).unwrap();

        // The watch has not shown our write yet: the pending copy prevents a second write.
        sync(&mut w, &client, &route, &outcome, pods(false), "t1").await;
        assert_eq!(status_patches(&log).len(), 1);

        // The watch caught up; later, with nothing changed: still no write.
        route.status = Some(written.clone());
        sync(&mut w, &client, &route, &outcome, pods(false), "t2").await;
        assert_eq!(status_patches(&log).len(), 1);
        assert!(w.written.is_empty(), "pending copy dropped once seen");

        // A real change (the pod now runs this generation): exactly one more write, where
        // only the flipped condition's lastTransitionTime moves.
        sync(&mut w, &client, &route, &outcome, pods(true), "t3").await;
        let patches = status_patches(&log);
        assert_eq!(patches.len(), 2);
        let after: ProxyRouteStatus =
            serde_json::from_value(patches[1].2["status"].clone()).unwrap();
        let time = |s: &ProxyRouteStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time(&after, "Programmed"), "t3");
        assert_eq!(time(&after, "Accepted"), "t0");
        // ... and one event for the flip.
        let events = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, u, _, _)| m == "POST" && u.contains("/events"))
            .count();
        assert_eq!(events, 1);
    }

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
        let mut snap: weir_config::Snapshot = serde_yaml_ng::from_str(
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

    /// A client whose API server counts the status patches in flight and records them. No
    /// patch is answered before `STATUS_WRITES_IN_FLIGHT` are open at once (from then on all
    /// are answered at once): a writer that kept fewer in flight would hang the test.
    fn counting_mock() -> (Client, Log, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::AtomicUsize;
        let log: Log = Default::default();
        let max: Arc<AtomicUsize> = Default::default();
        let open: Arc<AtomicUsize> = Default::default();
        let gate = Arc::new(watch::channel(false).0);
        let (l, m) = (log.clone(), max.clone());
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (l, m, open, gate) = (l.clone(), m.clone(), open.clone(), gate.clone());
            async move {
                let (parts, _) = req.into_parts();
                if parts.method == http::Method::PATCH {
                    let n = open.fetch_add(1, Relaxed) + 1;
                    m.fetch_max(n, Relaxed);
                    let mut opened = gate.subscribe();
                    if n >= STATUS_WRITES_IN_FLIGHT {
                        gate.send_replace(true);
                    }
                    let _ = opened.wait_for(|o| *o).await;
                    open.fetch_sub(1, Relaxed);
                }
                l.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    String::new(),
                    serde_json::Value::Null,
                ));
                let body = serde_json::to_vec(&route_json()).unwrap();
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
            }
        });
        (Client::new(svc, "default"), log, max)
    }

    /// `n` routes in a store, with their compile outcomes.
    fn routes_world(n: usize) -> (Store<ProxyRoute>, Compiled) {
        let (store, mut writer) = reflector::store::<ProxyRoute>();
        let mut compiled = Compiled::default();
        for i in 0..n {
            let mut r = ProxyRoute::new(&format!("r{i}"), ProxyRouteSpec::default());
            r.metadata.namespace = Some("ns".into());
            r.metadata.generation = Some(1);
            writer.apply_watcher_event(&watcher::Event::Apply(r));
            compiled.routes.insert(
                format!("ns/r{i}"),
                RouteOutcome {
                    generation: Some(1),
                    included: true,
                    ..Default::default()
                },
            );
        }
        (store, compiled)
    }

    #[tokio::test]
    async fn a_pass_writes_in_parallel_and_stops_when_superseded() {
        let (client, log, max_open) = counting_mock();
        let mut w = StatusWriter {
            written: HashMap::new(),
            writes: 0,
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: None,
                },
            ),
        };
        let (routes, compiled) = routes_world(20);
        let (backends, _) = reflector::store::<Backend>();
        let (sinks, _) = reflector::store::<TelemetrySink>();
        let progress = PodProgress::default();
        let mut at = None;
        // Superseded after 10 objects: 10 writes, all finished (and remembered) on return.
        let checks = std::cell::Cell::new(0);
        let first_pass = write_statuses(
            &client,
            &mut w,
            &compiled,
            &progress,
            (&routes, &backends, &sinks),
            (&mut at, Duration::from_secs(30)),
            || {
                checks.set(checks.get() + 1);
                checks.get() > 10
            },
        );
        // (A hang guard only: with fewer writes in flight the mock never answers.)
        let done = tokio::time::timeout(Duration::from_secs(60), first_pass)
            .await
            .expect("8 status writes in flight at once");
        assert!(!done);
        assert_eq!(status_patches(&log).len(), 10);
        assert_eq!(w.written.len(), 10);
        assert_eq!(max_open.load(Relaxed), STATUS_WRITES_IN_FLIGHT);
        // The next pass writes only the other 10 (the pending copies stand for the first).
        let done = write_statuses(
            &client,
            &mut w,
            &compiled,
            &progress,
            (&routes, &backends, &sinks),
            (&mut at, Duration::from_secs(30)),
            || false,
        )
        .await;
        assert!(done);
        let patches = status_patches(&log);
        assert_eq!(patches.len(), 20);
        let names: std::collections::BTreeSet<&str> = patches
            .iter()
            .map(|(u, _, _)| {
                u.split("/proxyroutes/")
                    .nth(1)
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(names.len(), 20, "each route written once: {names:?}");
        assert_eq!(w.writes, 20);
        assert!(max_open.load(Relaxed) <= STATUS_WRITES_IN_FLIGHT);
    }
}
