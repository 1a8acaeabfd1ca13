//! The status writer: a task of its own that writes the statuses (and events) that really
//! changed, from the latest compile outcome and pod progress.

use super::changed::{BackendIndex, Changed};
use super::{now_rfc3339, FIELD_MANAGER};
use crate::compile::{self, Compiled, ObjKey};
use crate::crd::{Backend, ProxyRoute, TelemetrySink};
use crate::error::Error;
use crate::metrics::METRICS;
use crate::status::{self, PodProgress};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

pub(super) struct StatusWriter {
    /// Last status written per `Kind:ns/name`, until the watch shows it back.
    pub(super) written: HashMap<String, serde_json::Value>,
    pub(super) writes: u64,
    pub(super) recorder: Recorder,
    /// The objects (the store's `Arc`s) each status was last planned from, by `Kind:ns/name`.
    /// A pass skips an object that is still this `Arc` (neither its spec nor its status
    /// changed) unless its status inputs changed ([`Changed`]). Holding the `Arc` keeps the
    /// pointer comparison sound.
    pub(super) planned: HashMap<&'static str, HashMap<ObjKey, Planned>>,
}

/// An object a status was planned from (only its address is compared).
pub(super) type Planned = Arc<dyn std::any::Any + Send + Sync>;

const ROUTE: &str = "ProxyRoute";
const BACKEND: &str = "Backend";

/// Publishes an event, best effort (events are informational; failures are only logged).
pub(super) async fn publish(
    recorder: &Recorder,
    t: &status::Transition,
    reference: &ObjectReference,
) {
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
    if let Err(source) = recorder.publish(&ev, reference).await {
        let e = Error::EventPublish {
            reason: t.reason,
            source,
        }
        .counted();
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
        // Only objects with a write pending are compared with what the cache shows; serializing
        // every object's status on every plan was O(objects) JSON work per round (10,000
        // routes, a round per pod acknowledgement while a change rolls out).
        let seen = self.written.get(&kkey).is_some_and(|w| {
            current.and_then(|c| serde_json::to_value(c).ok()).as_ref() == Some(w)
        });
        if seen {
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
                Err(source) => {
                    METRICS.status_write_errors.inc();
                    let e = Error::StatusWrite {
                        object: kkey.clone(),
                        source,
                    }
                    .counted();
                    tracing::warn!(object = %kkey, error = %e, "status write failed");
                    false
                }
            };
            (kkey, patch["status"].clone(), ok)
        }))
    }

    /// Takes the result of a write from `plan`.
    fn record(&mut self, kkey: String, value: serde_json::Value, ok: bool) {
        if !ok {
            // Not written: the next pass plans it again, whatever changed.
            if let Some((kind, k)) = kkey.split_once(':') {
                self.planned.get_mut(kind).map(|m| m.remove(k));
            }
        }
        if ok {
            self.writes += 1;
            METRICS.status_writes.inc();
            tracing::info!(object = %kkey, "status updated");
            self.written.insert(kkey, value);
        }
    }
}

impl StatusWriter {
    /// `obj` is the very object `kind` `k`'s status was last planned from.
    fn unchanged<K: Send + Sync + 'static>(&self, kind: &str, k: &str, obj: &Arc<K>) -> bool {
        self.planned
            .get(kind)
            .and_then(|m| m.get(k))
            .is_some_and(|p| std::ptr::addr_eq(Arc::as_ptr(p), Arc::as_ptr(obj)))
    }

    fn planned_from<K: Send + Sync + 'static>(
        &mut self,
        kind: &'static str,
        k: ObjKey,
        obj: Arc<K>,
    ) {
        self.planned.entry(kind).or_default().insert(k, obj);
    }

    /// Forgets the objects `compiled` no longer has.
    fn forget_gone(&mut self, compiled: &Compiled) {
        for (kind, m) in &mut self.planned {
            m.retain(|k, _| match *kind {
                ROUTE => compiled.routes.contains_key(k),
                BACKEND => compiled.backends.contains_key(k),
                _ => false,
            });
        }
    }
}

/// What the status task computes statuses from: the latest compile and what the pods run.
#[derive(Clone, Default)]
pub(super) struct StatusJob {
    /// Leadership term; a new term forgets the pending copies (the world is re-read).
    pub(super) term: u64,
    /// Bumped when what statuses are computed from changes materially (term, snapshot
    /// version, pod progress, writing on/off): a pass in progress stops and starts over with
    /// the newer job instead of finishing writes that are already stale.
    pub(super) epoch: u64,
    /// `None`: write nothing (not leading, or not every ready pod has been asked yet).
    pub(super) work: Option<(Arc<Compiled>, Arc<PodProgress>)>,
}

/// What decides `StatusJob::epoch`.
#[derive(PartialEq)]
pub(super) struct JobKey {
    pub(super) term: u64,
    pub(super) version: Option<String>,
    pub(super) progress: Option<Arc<PodProgress>>,
}

/// The status task: one pass over all objects per new job (writes only what differs), the
/// latest job winning. Runs until the sender is dropped.
pub(super) async fn status_loop(
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
    // The inputs of the last pass, and what a pass that did not finish left to recompute.
    let mut last: Option<(Arc<Compiled>, Arc<PodProgress>)> = None;
    let mut carry = Changed::default();
    let mut index = BackendIndex::default();
    let mut cleaned_for: Option<Arc<Compiled>> = None;
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
            w.planned.clear();
            last = None;
            term = job.term;
        }
        let Some((compiled, progress)) = &job.work else {
            continue;
        };
        let mut changed = match &last {
            Some((c, p)) => Changed::between((c, p), (compiled, progress), &mut index),
            None => Changed::everything(),
        };
        changed.extend(std::mem::take(&mut carry));
        let superseded = || jobs.has_changed().unwrap_or(true) && jobs.borrow().epoch != job.epoch;
        let t0 = std::time::Instant::now();
        let writes = w.writes;
        let done = write_statuses(
            &client,
            &mut w,
            compiled,
            (progress, &changed),
            (&routes, &backends, &sinks),
            (&mut sink_counters_at, sink_status_interval),
            superseded,
        )
        .await;
        last = Some((compiled.clone(), progress.clone()));
        if !done {
            // Objects it did not reach (or planned from older inputs) are still to do.
            carry = changed;
        } else if !cleaned_for
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, compiled))
        {
            w.forget_gone(compiled);
            cleaned_for = Some(compiled.clone());
        }
        tracing::debug!(
            elapsed = ?t0.elapsed(),
            writes = w.writes - writes,
            done,
            "status pass"
        );
    }
}

/// One pass over the objects whose status may differ (`changed`, or a new object in the
/// store): writes the statuses that differ. Stops early (returns `false`)
/// as soon as `superseded` says a newer job makes the rest of this pass stale.
#[tracing::instrument(level = "debug", skip_all, fields(version = %compiled.snapshot.version))]
async fn write_statuses(
    client: &Client,
    w: &mut StatusWriter,
    compiled: &Compiled,
    (pods, changed): (&PodProgress, &Changed),
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
        for b in backends.state() {
            if superseded() {
                break 'pass false;
            }
            let k = compile::key(&b.namespace().unwrap_or_default(), &b.name_any());
            let Some(o) = compiled.backends.get(&k) else {
                continue;
            };
            if !changed.backend(&k) && inflight.w.unchanged(BACKEND, &k, &b) {
                continue;
            }
            let write = inflight.w.plan(client, &*b, b.status.as_ref(), |old| {
                status::backend_status(&k, o, pods, old, &now)
            });
            inflight.w.planned_from(BACKEND, k, b);
            inflight.add(write).await;
        }
        // Backends first, finished before any route: a route's status reports its Backends'
        // health, and whoever sees the route written finds its Backends written too.
        inflight.drain().await;
        for r in routes.state() {
            if superseded() {
                break 'pass false;
            }
            let k = compile::key(&r.namespace().unwrap_or_default(), &r.name_any());
            let Some(o) = compiled.routes.get(&k) else {
                continue;
            };
            if !changed.route(&k) && inflight.w.unchanged(ROUTE, &k, &r) {
                continue;
            }
            let write = inflight.w.plan(client, &*r, r.status.as_ref(), |old| {
                status::route_status(&k, o, compiled, pods, old, &now)
            });
            inflight.w.planned_from(ROUTE, k, r);
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
        // Forget objects that are gone (a walk of the few pending writes, not of every object).
        inflight.w.written.retain(|kkey, _| {
            let (kind, k) = kkey.split_once(':').unwrap_or_default();
            match kind {
                ROUTE => compiled.routes.contains_key(k),
                BACKEND => compiled.backends.contains_key(k),
                "TelemetrySink" => compiled.sinks.contains_key(k),
                _ => false,
            }
        });
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
    use super::super::test_support::{mock, route_json, Log};
    use super::*;
    use crate::compile::RouteOutcome;
    use crate::crd::{ProxyRouteSpec, ProxyRouteStatus};
    use bytes::Bytes;
    use http_body_util::Full;
    use kube::runtime::events::Reporter;
    use kube::runtime::{reflector, watcher};
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering::Relaxed;

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
            pods: vec![Some(std::sync::Arc::new(BTreeMap::from([(
                "ProxyRoute:ns/r".to_string(),
                gen,
            )])))],
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

    /// A writer with nothing written yet, publishing events through `client`.
    fn writer(client: &Client) -> StatusWriter {
        StatusWriter {
            written: HashMap::new(),
            writes: 0,
            planned: HashMap::new(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: None,
                },
            ),
        }
    }

    #[tokio::test]
    async fn status_is_written_once_per_real_change() {
        let (client, log) = mock();
        let mut w = writer(&client);
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

    /// `n` routes in a store (with its writer and the routes, to change them later), with
    /// their compile outcomes.
    fn routes_world(
        n: usize,
    ) -> (
        Store<ProxyRoute>,
        reflector::store::Writer<ProxyRoute>,
        Vec<ProxyRoute>,
        Compiled,
    ) {
        let (store, mut writer) = reflector::store::<ProxyRoute>();
        let mut compiled = Compiled::default();
        let mut objs = Vec::new();
        for i in 0..n {
            let mut r = ProxyRoute::new(&format!("r{i}"), ProxyRouteSpec::default());
            r.metadata.namespace = Some("ns".into());
            r.metadata.generation = Some(1);
            writer.apply_watcher_event(&watcher::Event::Apply(r.clone()));
            objs.push(r);
            compiled.routes.insert(
                format!("ns/r{i}"),
                RouteOutcome {
                    generation: Some(1),
                    included: true,
                    ..Default::default()
                },
            );
        }
        (store, writer, objs, compiled)
    }

    #[tokio::test]
    async fn a_pass_writes_in_parallel_and_stops_when_superseded() {
        let (client, log, max_open) = counting_mock();
        let mut w = writer(&client);
        let (routes, _, _, compiled) = routes_world(20);
        let (backends, _) = reflector::store::<Backend>();
        let (sinks, _) = reflector::store::<TelemetrySink>();
        let progress = PodProgress::default();
        let mut at = None;
        let all = Changed::everything();
        // Superseded after 10 objects: 10 writes, all finished (and remembered) on return.
        let checks = std::cell::Cell::new(0);
        let first_pass = write_statuses(
            &client,
            &mut w,
            &compiled,
            (&progress, &all),
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
            (&progress, &all),
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

    /// A pass plans only objects whose inputs changed (`Changed`) or that changed themselves
    /// (a new object in the store: our write echoing back, or someone else's): an overwritten
    /// status is still put right, and an unchanged world costs no status computation.
    #[tokio::test]
    async fn a_pass_plans_only_changed_objects() {
        let (client, log) = mock();
        let mut w = writer(&client);
        let (routes, mut writer, mut objs, mut compiled) = routes_world(3);
        let (backends, _) = reflector::store::<Backend>();
        let (sinks, _) = reflector::store::<TelemetrySink>();
        let progress = PodProgress::default();
        let mut at = None;
        // One pass; the number of status patches so far and the pending copies.
        macro_rules! pass {
            ($compiled:expr, $changed:expr) => {{
                let done = write_statuses(
                    &client,
                    &mut w,
                    &$compiled,
                    (&progress, &$changed),
                    (&routes, &backends, &sinks),
                    (&mut at, Duration::from_secs(30)),
                    || false,
                )
                .await;
                assert!(done);
                (status_patches(&log).len(), w.written.clone())
            }};
        }
        // First pass: every status.
        let (n, written) = pass!(compiled, Changed::everything());
        assert_eq!(n, 3);
        // Our writes echo back for r0 and r1 (new objects in the store); r2's not yet.
        let status_of = |i: usize| -> ProxyRouteStatus {
            serde_json::from_value(written[&format!("ProxyRoute:ns/r{i}")].clone()).unwrap()
        };
        for (i, obj) in objs.iter_mut().enumerate().take(2) {
            obj.status = Some(status_of(i));
            writer.apply_watcher_event(&watcher::Event::Apply(obj.clone()));
        }
        let (n, written) = pass!(compiled, Changed::default());
        assert_eq!(n, 3, "nothing to write");
        assert_eq!(
            written.keys().collect::<Vec<_>>(),
            ["ProxyRoute:ns/r2"],
            "the echoes were seen; r2's pending copy stays"
        );
        // Someone else overwrites r1's status: put right, though no input changed.
        objs[1].status = Some(ProxyRouteStatus::default());
        writer.apply_watcher_event(&watcher::Event::Apply(objs[1].clone()));
        let (n, _) = pass!(compiled, Changed::default());
        assert_eq!(n, 4);
        let last = status_patches(&log).pop().unwrap().0;
        assert!(last.contains("/proxyroutes/r1/status"), "{last}");
        // r0's outcome changes (now invalid), and the caller says so: r0 only.
        compiled.routes.get_mut("ns/r0").unwrap().invalid =
            vec![weir_config::FieldError::new("spec.rules", "bad")];
        let unchanged = pass!(compiled, Changed::default()).0;
        assert_eq!(
            unchanged, 4,
            "not planned when the caller says nothing changed"
        );
        let changed = Changed {
            routes: ["ns/r0".to_string()].into(),
            ..Default::default()
        };
        let (n, _) = pass!(compiled, changed);
        assert_eq!(n, 5);
        let last = status_patches(&log).pop().unwrap().0;
        assert!(last.contains("/proxyroutes/r0/status"), "{last}");
    }
}
