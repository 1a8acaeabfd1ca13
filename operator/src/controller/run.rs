//! The run loop: starts the watches, the lease, the pusher and the status task, then compiles
//! on every (debounced) change and hands the outcome to each of them.

use super::snapshot_secret::{write_snapshot_secret, SecretWrite};
use super::status_writer::{publish, status_loop, JobKey, StatusJob, StatusWriter};
use super::watch::{
    endpoint_slice_resource, ready_pods, service_index, spawn_reflector, SecretWatches,
};
use super::{Settings, FIELD_MANAGER, SERVICE_NAME_LABEL};
use crate::compile::{self, Compiled};
use crate::crd::{Backend, ProxyRoute, TelemetrySink};
use crate::error::Error;
use crate::lease;
use crate::metrics::METRICS;
use crate::push::{self, Desired, PodStates};
use crate::status::{self, PodProgress};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Client;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Runs the operator until `stop` flips to true.
pub async fn run(
    client: Client,
    s: Settings,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
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
        .map_err(Error::Discovery)?;
    tracing::info!(version = %slice_ar.api_version, "EndpointSlice API");
    let slices_api: Api<DynamicObject> = match &s.watch_namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &slice_ar),
        None => Api::all_with(client.clone(), &slice_ar),
    };
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &s.dataplane_namespace);

    let mut gateway = crate::gateway::GatewayApi::start(
        client.clone(),
        &s.gateway,
        &s.dataplane_namespace,
        s.watch_namespace.as_deref(),
        notify.clone(),
    );

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
    let stores = Watched {
        routes: routes.clone(),
        backends: backends.clone(),
        sinks: sinks.clone(),
        services: services.clone(),
        slices,
    };
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
    let mut lkg_written: Option<Vec<u8>> = None;
    // The version the snapshot Secret is known to hold (content hash: same version, same text),
    // or that is too large for it (not retried).
    let mut lkg_version: Option<String> = None;
    let mut secret_watches = SecretWatches {
        client: client.clone(),
        notify: notify.clone(),
        tasks: HashMap::new(),
        known: Default::default(),
    };
    // One content map per snapshot version, shared (`Arc`) by every pod that runs it: at 10,000
    // routes × 50 pods, cloning each pod's map every round was 500,000 `String` clones.
    let mut history: VecDeque<(String, Arc<BTreeMap<String, i64>>)> = VecDeque::new();
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
        planned: HashMap::new(),
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
    // The previous round's result: what `compile_reusing` may take over.
    let mut last_compiled: Option<Arc<Compiled>> = None;
    // Sidecars get the routes attached to their workloads from their own task.
    let (workload_tx, workload_rx) =
        watch::channel(Arc::new(crate::workload::runtime::Inputs::default()));
    let workload_task = s.workloads.enabled.then(|| {
        tokio::spawn(crate::workload::runtime::run(
            client.clone(),
            s.workloads.clone(),
            s.watch_namespace.clone(),
            workload_rx,
            stop.clone(),
        ))
    });
    // The last round that compiled, and whether the next round has new inputs to compile: a
    // round woken only by pod progress (the pusher's acknowledgements, a round per batch while
    // a change rolls out) reuses the last compile. At 10,000 routes each such round cloned
    // every ProxyRoute out of the store and walked them all in `compile_reusing`.
    let mut last_compile: Option<tokio::time::Instant> = None;
    let mut inputs_changed = true;
    let mut current: Option<(Arc<Compiled>, Option<crate::gateway::GatewayCompiled>)> = None;
    loop {
        // Debounce, leading edge: a change after a quiet period (no compile for `debounce`) is
        // compiled at once; changes that follow closely are coalesced until `debounce` passes
        // without one (at most 5× `debounce`), so a burst still compiles a few times, not once
        // per object. The former trailing-only debounce added `debounce` (200 ms) to every
        // single change.
        if inputs_changed && last_compile.is_some_and(|t| t.elapsed() < s.debounce) {
            let deadline = tokio::time::Instant::now() + s.debounce * 5;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(s.debounce) => break,
                    _ = notify.notified() => {
                        if tokio::time::Instant::now() >= deadline { break; }
                    }
                }
            }
        }
        let leader = *leader_rx.borrow_and_update();
        METRICS.leader.set(i64::from(leader));
        if leader != was_leader {
            // New term: forget what we think we wrote; re-read the world.
            term += 1;
            lkg_written = None;
            lkg_version = None;
            was_leader = leader;
            inputs_changed = true;
        }

        let t0 = std::time::Instant::now();
        let (compiled, gw) = match current.as_ref().filter(|_| !inputs_changed) {
            Some((c, g)) => (c.clone(), g.clone()),
            None => {
                last_compile = Some(tokio::time::Instant::now());
                let Some(round) = compile_round(
                    &s,
                    leader,
                    &stores,
                    &mut gateway,
                    &mut secret_watches,
                    last_compiled.as_deref(),
                    &workload_tx,
                ) else {
                    // A referenced Secret has not been read yet: this snapshot would lack a
                    // credential or certificate that exists. Its watcher pokes `notify` once
                    // it has listed.
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                };
                let (compiled, gw) = round;
                let version = compiled.snapshot.version.clone();
                if !history.iter().any(|(v, _)| *v == version) {
                    let mut contents = compiled.contents();
                    contents.extend(gw.iter().flat_map(|g| g.contents()));
                    history.push_back((version.clone(), Arc::new(contents)));
                    while history.len() > 32 {
                        history.pop_front();
                    }
                    tracing::info!(
                        %version,
                        routes = compiled.snapshot.routes.len(),
                        backends = compiled.snapshot.backends.len(),
                        compile_ms = format_args!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
                        "compiled snapshot"
                    );
                }
                let compiled = Arc::new(compiled);
                last_compiled = Some(compiled.clone());
                current = Some((compiled.clone(), gw.clone()));
                (compiled, gw)
            }
        };
        let version = compiled.snapshot.version.clone();
        let targets = ready_pods(&pods.state());
        let snapshot_ok = compiled.global.is_empty();
        if !snapshot_ok {
            let e = Error::InvalidSettings(compiled.global.clone()).counted();
            tracing::error!(errors = ?compiled.global, kind = e.kind(), "operator settings are invalid; not pushing");
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

        // Once the Secret holds a version, rounds on that version (one per pod acknowledgement
        // while a change rolls out) skip it: it serialized the whole snapshot (~2 MB at 10,000
        // routes) to compare it with what was written.
        if leader && snapshot_ok && lkg_version.as_deref() != Some(version.as_str()) {
            let r = write_snapshot_secret(
                &lkg_api,
                &s.snapshot_secret,
                &compiled.snapshot,
                &mut lkg_written,
            )
            .await;
            lkg_version = (r != SecretWrite::Failed).then(|| version.clone());
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
                                .map(|(_, c)| Arc::clone(c))
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
        // Gateway API statuses, with what the pods run (Gateway `Programmed` counts them).
        gateway.publish(leader, gw, work.clone());
        // Statuses are written by the status task from this compile; it makes a pass on every
        // round, and drops a pass in progress only when the inputs changed materially.
        let key = JobKey {
            term,
            version: work.as_ref().map(|_| version.clone()),
            progress: work.clone(),
        };
        let material = last_key.as_ref() != Some(&key);
        status_tx.send_modify(|j| {
            j.term = term;
            if material {
                j.epoch += 1;
            }
            j.work = work.map(|p| (compiled.clone(), p));
        });
        last_key = Some(key);
        METRICS.observe_reconcile(t0.elapsed());
        METRICS
            .routes_invalid
            .set(compiled.routes.values().filter(|r| !r.included).count() as i64);
        METRICS.pods_ready.set(targets.len() as i64);
        {
            let st = states.lock().unwrap_or_else(|e| e.into_inner());
            let programmed = targets
                .iter()
                .filter(|t| {
                    st.get(&t.key).and_then(|p| p.acked.as_deref()) == Some(version.as_str())
                })
                .count();
            METRICS.pods_programmed.set(programmed as i64);
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "reconciled");

        // Inputs first: with both a change and pod progress pending, the change compiles now.
        inputs_changed = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = notify.notified() => true,
            _ = leader_rx.changed() => true,
            _ = progress.notified() => false,
        };
    }
    let _ = lease_stop_tx.send(true);
    let _ = lease_task.await;
    pusher.abort();
    status_task.abort();
    if let Some(t) = workload_task {
        t.abort();
    }
    Ok(())
}

/// The stores a compile reads.
struct Watched {
    routes: Store<ProxyRoute>,
    backends: Store<Backend>,
    sinks: Store<TelemetrySink>,
    services: Store<Service>,
    slices: Store<DynamicObject>,
}

/// One compile of everything watched (ProxyRoutes incrementally from `last`, then the Gateway
/// API routes), handing the workload task its routes. `None` while a referenced Secret has
/// not been read yet.
fn compile_round(
    s: &Settings,
    leader: bool,
    w: &Watched,
    gateway: &mut crate::gateway::GatewayApi,
    secret_watches: &mut SecretWatches,
    last: Option<&Compiled>,
    workload_tx: &watch::Sender<Arc<crate::workload::runtime::Inputs>>,
) -> Option<(Compiled, Option<crate::gateway::GatewayCompiled>)> {
    // The store's own `Arc`s: no ProxyRoute is copied for the compile (cloning 10,000 of
    // them per round was 7-16% of the operator's samples during changes). Routes attached to
    // workloads (`spec.workloadSelector`, `spec.targetRefs`) are served by those pods'
    // sidecars, not by the fleet: they go to the workload task instead.
    let (attached, route_objs): (Vec<Arc<ProxyRoute>>, Vec<Arc<ProxyRoute>>) = w
        .routes
        .state()
        .into_iter()
        .partition(|r| crate::workload::is_attached(r) && s.workloads.enabled);
    let backend_objs: Vec<Backend> = w.backends.state().iter().map(|r| (**r).clone()).collect();
    let sink_objs: Vec<TelemetrySink> = w.sinks.state().iter().map(|r| (**r).clone()).collect();
    let idx = service_index(&w.services, &w.slices);
    let secrets_idx = secret_watches.index();
    // Routes unchanged since the last round (spec, generation, referenced Backends) are
    // taken over compiled, not converted and validated again.
    let mut compiled: Compiled = compile::compile_reusing(
        compile::Inputs {
            routes: &route_objs,
            backends: &backend_objs,
            sinks: &sink_objs,
            services: &idx,
            secrets: &secrets_idx,
            listeners: &s.listeners,
        },
        last,
    );
    // The Gateway API routes go into the same snapshot, after the ProxyRoutes.
    let gw = gateway.compile(&w.services.state(), &idx, &secrets_idx, &s.listeners);
    if let Some(g) = &gw {
        compiled.secret_refs.extend(g.secret_refs.iter().cloned());
        g.merge_into(&mut compiled.snapshot);
    }
    secret_watches.sync(&compiled.secret_refs);
    if !secret_watches.all_known(&compiled.secret_refs) {
        return None;
    }
    if s.workloads.enabled {
        // Routes that lost their selector still carry the workload task's status field:
        // it needs them all to clear it.
        let all_routes = attached
            .iter()
            .chain(&route_objs)
            .map(|r| (**r).clone())
            .collect();
        workload_tx.send_replace(Arc::new(crate::workload::runtime::Inputs {
            leader,
            routes: all_routes,
            backends: backend_objs,
            services: idx,
            secrets: secrets_idx,
            service_objects: w.services.state(),
        }));
    }
    Some((compiled, gw))
}
