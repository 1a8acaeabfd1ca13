//! The workload controller's task: watches injected pods (label `weir.dev/sidecar=injected`),
//! compiles each pod's snapshot ([`super::compile`]), makes sure each namespace has its token
//! Secret, pushes to each sidecar's admin API with that token, and writes the attached routes'
//! `status.workloads`. Only the Lease holder does any of it.
//!
//! Kept apart from the fleet pusher (`crate::push`) on purpose: the fleet pushes one snapshot
//! to many pods with one token; here every pod has its own snapshot and every namespace its
//! own token. It reuses the fleet's HTTP call and its Kubernetes inputs (routes, Backends,
//! Services, Secrets), handed over by the controller loop after each compile.

use super::compile::{self, Plan, PodPlan, SidecarPod};
use super::snapshots;
use super::status::{attachment_status, PodFacts};
use super::targets;
use super::token;
use super::WorkloadSettings;
use crate::compile::{ObjKey, SecretIndex, ServiceIndex};
use crate::controller::{now_rfc3339, spawn_reflector, spawn_reflector_with};
use crate::crd::{Backend, ProxyRoute, WorkloadAttachmentStatus};
use crate::error::Error;
use crate::inject::patch::{ANN_SNAPSHOT, ANN_SNAPSHOT_KEY, LABEL_SIDECAR, LABEL_SIDECAR_VALUE};
use crate::metrics::METRICS;
use crate::push::{call, host_port, HttpClient};
use futures_util::StreamExt;
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use weir_config::{FieldError, Snapshot};

/// Field manager of `status.workloads`: the fleet status writer (`weir-operator`) never sets
/// that field, so each manager's apply leaves the other's fields alone.
pub const FIELD_MANAGER: &str = "weir-operator-workloads";

/// What the controller loop hands over after each compile.
#[derive(Clone, Default)]
pub struct Inputs {
    pub leader: bool,
    pub routes: Vec<ProxyRoute>,
    pub backends: Vec<Backend>,
    pub services: ServiceIndex,
    pub secrets: SecretIndex,
    /// The Services themselves (the controller loop watches them already), for the selectors
    /// of `spec.targetRefs` to a Service.
    pub service_objects: Vec<Arc<Service>>,
}

/// The watches of the workloads `spec.targetRefs` may name, keeping only what resolution
/// reads (metadata and `spec.selector`): a Deployment's pod template is most of its size.
struct Workloads {
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
}

/// A watch of one workload kind (namespaced, `K::DynamicType = ()`), whose objects keep only
/// their metadata (without managed fields and annotations) and what `strip` leaves.
fn watch_workloads<K>(
    client: &kube::Client,
    ns: Option<&str>,
    notify: &Arc<Notify>,
    what: &'static str,
    mut strip: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Status-only updates (replica counts, all through a rollout) leave the generation as it
    // was: they go to this sink instead of waking the task, since only spec.selector is read.
    let ignore = Some(Arc::new(Notify::new()));
    let wc = watcher::Config::default().any_semantic();
    spawn_reflector_with(
        api,
        wc,
        (),
        notify.clone(),
        ignore,
        what,
        move |k: &mut K| {
            let m = k.meta_mut();
            m.managed_fields = None;
            m.annotations = None;
            strip(k)
        },
    )
}

impl Workloads {
    fn start(client: &kube::Client, ns: Option<&str>, notify: &Arc<Notify>) -> Self {
        Self {
            deployments: watch_workloads(
                client,
                ns,
                notify,
                "deployments",
                |d: &mut Deployment| {
                    d.status = None;
                    d.spec.template = Default::default();
                },
            ),
            statefulsets: watch_workloads(
                client,
                ns,
                notify,
                "statefulsets",
                |d: &mut StatefulSet| {
                    d.status = None;
                    d.spec.template = Default::default();
                    d.spec.volume_claim_templates = None;
                },
            ),
            daemonsets: watch_workloads(client, ns, notify, "daemonsets", |d: &mut DaemonSet| {
                d.status = None;
                d.spec.template = Default::default();
            }),
        }
    }

    async fn ready(&self) {
        self.deployments.wait_until_ready().await.ok();
        self.statefulsets.wait_until_ready().await.ok();
        self.daemonsets.wait_until_ready().await.ok();
    }

    fn index(&self, services: &[Arc<Service>]) -> targets::TargetIndex {
        let (d, s, ds) = (
            self.deployments.state(),
            self.statefulsets.state(),
            self.daemonsets.state(),
        );
        targets::index(
            d.iter().map(|x| &**x),
            s.iter().map(|x| &**x),
            ds.iter().map(|x| &**x),
            services.iter().map(|x| &**x),
        )
    }
}

/// One sidecar as the pusher knows it.
#[derive(Debug, Clone, Default, PartialEq)]
struct PodState {
    uid: String,
    restarts: i32,
    /// The version the sidecar acknowledged.
    acked: Option<String>,
    /// The version it refused (not retried until the desired one changes).
    rejected: Option<String>,
}

/// A pod to push to: its address and identity.
#[derive(Clone)]
struct Target {
    key: ObjKey,
    namespace: String,
    ip: String,
    uid: String,
    restarts: i32,
}

fn sidecar_pods(pods: &Store<Pod>) -> (Vec<SidecarPod>, Vec<Target>) {
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for p in pods.state() {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let st = p.status.as_ref();
        if st
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
        {
            continue;
        }
        let sp = SidecarPod {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            labels: p.labels().clone(),
            boot: p.annotations().get(ANN_SNAPSHOT).cloned(),
            snapshot_key: p.annotations().get(ANN_SNAPSHOT_KEY).cloned(),
        };
        // Pushed as soon as it has an address: the sidecar serves its boot snapshot from the
        // start, and the app may call the outbound listener before the pod is Ready.
        if let Some(ip) = st.and_then(|s| s.pod_ip.clone()).filter(|i| !i.is_empty()) {
            targets.push(Target {
                key: sp.key(),
                namespace: sp.namespace.clone(),
                ip,
                uid: p.metadata.uid.clone().unwrap_or_default(),
                restarts: st
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0),
            });
        }
        out.push(sp);
    }
    out.sort_by_key(|a| a.key());
    (out, targets)
}

/// Pushes `snapshot` to one sidecar unless it runs it already (or refused it).
async fn sync_pod(
    client: &HttpClient,
    s: &WorkloadSettings,
    token: &str,
    t: &Target,
    mut state: PodState,
    snapshot: &Snapshot,
    verify: bool,
) -> (PodState, Result<(), Error>) {
    let url = format!("http://{}/config", host_port(&t.ip, s.admin_port));
    let want = &snapshot.version;
    if verify || state.acked.is_none() {
        match call(
            client,
            Method::GET,
            &url,
            Some(token),
            None,
            s.request_timeout,
        )
        .await
        {
            Ok((StatusCode::OK, v)) => {
                state.acked = v
                    .get("version")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            }
            Ok((StatusCode::UNAUTHORIZED, _)) => return (state, Err(Error::PodUnauthorized)),
            Ok(_) => state.acked = None,
            Err(e) => return (state, Err(e)),
        }
    }
    if state.acked.as_deref() == Some(want) || state.rejected.as_deref() == Some(want) {
        return (state, Ok(()));
    }
    let body = serde_json::to_vec(snapshot).unwrap_or_default();
    match call(
        client,
        Method::PUT,
        &url,
        Some(token),
        Some(body.into()),
        s.request_timeout,
    )
    .await
    {
        Ok((StatusCode::OK, v)) => {
            METRICS.push_ok.inc();
            state.acked = v
                .get("version")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            tracing::info!(pod = %t.key, version = %want, "pushed sidecar snapshot");
            (state, Ok(()))
        }
        Ok((StatusCode::UNPROCESSABLE_ENTITY, v)) => {
            METRICS.push_rejected.inc();
            state.rejected = Some(want.clone());
            let errors: Vec<FieldError> = v
                .get("errors")
                .cloned()
                .and_then(|e| serde_json::from_value(e).ok())
                .unwrap_or_default();
            let e = Error::SidecarRejected {
                pod: t.key.clone(),
                errors,
            };
            (state, Err(e))
        }
        Ok((StatusCode::UNAUTHORIZED, _)) => (state, Err(Error::PodUnauthorized)),
        Ok((status, body)) => (
            state,
            Err(Error::PodStatus {
                what: "PUT /config",
                status,
                body,
            }),
        ),
        Err(e) => {
            METRICS.push_error.inc();
            (state, Err(e))
        }
    }
}

/// Runs until `stop` flips. `inputs` comes from the controller loop after each compile.
pub async fn run(
    client: kube::Client,
    s: WorkloadSettings,
    watch_namespace: Option<String>,
    mut inputs: watch::Receiver<Arc<Inputs>>,
    mut stop: watch::Receiver<bool>,
) {
    let notify = Arc::new(Notify::new());
    let api: Api<Pod> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let wc = watcher::Config::default()
        .any_semantic()
        .labels(&format!("{LABEL_SIDECAR}={LABEL_SIDECAR_VALUE}"));
    let pods = spawn_reflector(api, wc, (), notify.clone(), None, "sidecar pods");
    let workloads = Workloads::start(&client, watch_namespace.as_deref(), &notify);
    // Never compile from half-listed workloads: a ref to one not listed yet would detach.
    tokio::select! {
        _ = async { pods.wait_until_ready().await.ok(); workloads.ready().await } => {}
        _ = stop.changed() => return,
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(http);
    let mut states: BTreeMap<ObjKey, PodState> = BTreeMap::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    // Per namespace, the snapshot Secret's data last written (or found equal), so an unchanged
    // one is not read again every round.
    let mut snapshot_secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // What this replica last wrote per route, so an unchanged status is not rewritten.
    let mut written: BTreeMap<ObjKey, Option<serde_json::Value>> = BTreeMap::new();
    let mut next_verify = tokio::time::Instant::now();
    let mut wake = tokio::time::Instant::now();
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            r = inputs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => return,
        }
        // Let a burst of pod events settle (a rollout moves many pods at once).
        tokio::time::sleep(s.debounce).await;
        let inp = inputs.borrow_and_update().clone();
        if !inp.leader {
            was_leader = false;
            wake = tokio::time::Instant::now() + s.verify_interval;
            continue;
        }
        if !was_leader {
            // A new term: what we think we wrote may be stale.
            written.clear();
            states.clear();
            snapshot_secrets.clear();
            was_leader = true;
        }
        let verify = tokio::time::Instant::now() >= next_verify;
        if verify {
            next_verify = tokio::time::Instant::now() + s.verify_interval;
        }
        let (sidecars, targets) = sidecar_pods(&pods);
        let target_index = workloads.index(&inp.service_objects);
        let plan = compile::compile(compile::Inputs {
            pods: &sidecars,
            routes: &inp.routes,
            backends: &inp.backends,
            services: &inp.services,
            secrets: &inp.secrets,
            targets: &target_index,
        });

        // Tokens: one Secret per namespace with sidecars (created if missing).
        let namespaces: BTreeSet<&str> = targets.iter().map(|t| t.namespace.as_str()).collect();
        tokens.retain(|ns, _| namespaces.contains(ns.as_str()));
        for ns in namespaces {
            if tokens.contains_key(ns) {
                continue;
            }
            match token::ensure(&client, ns).await {
                Ok(t) => {
                    tokens.insert(ns.to_string(), t);
                }
                Err(e) => {
                    let e = e.counted();
                    tracing::warn!(namespace = ns, error = %e, kind = e.kind(), "no sidecar token");
                }
            }
        }

        // Snapshot Secrets: before the pushes, so a sidecar restarted from here on boots from
        // what it is about to be pushed.
        let entries = compile::secret_entries(&sidecars, &plan);
        snapshot_secrets.retain(|ns, _| entries.contains_key(ns));
        let mut too_large: BTreeMap<ObjKey, String> = BTreeMap::new();
        for (ns, e) in &entries {
            let fitted = snapshots::fit(e, snapshots::MAX_SECRET_BYTES);
            for (key, size) in &fitted.left_out {
                tracing::warn!(namespace = %ns, key = %key, bytes = size, "SnapshotTooLarge: a workload's snapshot left out of the sidecar snapshot Secret (its sidecars are still pushed to)");
            }
            too_large.extend(snapshots::left_out_pods(ns, &fitted, &sidecars));
            let versions: BTreeMap<String, String> = e
                .iter()
                .filter(|(k, _)| fitted.data.contains_key(*k))
                .map(|(k, s)| (k.clone(), s.version.clone()))
                .collect();
            if snapshot_secrets.get(ns) == Some(&versions) {
                continue;
            }
            match snapshots::write(&client, ns, fitted.data).await {
                Ok(wrote) => {
                    if wrote {
                        tracing::info!(namespace = %ns, entries = e.len(), "wrote the sidecar snapshot Secret");
                    }
                    snapshot_secrets.insert(ns.clone(), versions);
                }
                Err(e) => {
                    let e = e.counted();
                    tracing::warn!(namespace = %ns, error = %e, kind = e.kind(), "sidecar snapshot Secret not written");
                }
            }
        }

        states.retain(|k, _| targets.iter().any(|t| &t.key == k));
        let work: Vec<(Target, PodState, Arc<Snapshot>, String)> = targets
            .iter()
            .filter_map(|t| {
                let PodPlan::Snapshot(snap) = plan.pods.get(&t.key)? else {
                    return None;
                };
                let token = tokens.get(&t.namespace)?.clone();
                let st = states.entry(t.key.clone()).or_default();
                if st.uid != t.uid || st.restarts != t.restarts {
                    // A new or restarted sidecar runs its boot snapshot again.
                    *st = PodState {
                        uid: t.uid.clone(),
                        restarts: t.restarts,
                        ..Default::default()
                    };
                }
                Some((t.clone(), st.clone(), snap.clone(), token))
            })
            .collect();
        let results: Vec<(ObjKey, String, PodState, Result<(), Error>)> =
            futures_util::stream::iter(work)
                .map(|(t, st, snap, token)| {
                    let http = &http;
                    let s = &s;
                    async move {
                        let (st, r) = sync_pod(http, s, &token, &t, st, &snap, verify).await;
                        (t.key, t.namespace, st, r)
                    }
                })
                .buffer_unordered(s.concurrency.max(1))
                .collect()
                .await;
        let mut retry = false;
        for (key, ns, st, r) in results {
            if let Err(e) = r {
                let rejected = matches!(e, Error::SidecarRejected { .. });
                if matches!(e, Error::PodUnauthorized) {
                    // The Secret was replaced: read it again next round.
                    tokens.remove(&ns);
                }
                let e = e.counted();
                if rejected {
                    tracing::warn!(pod = %key, error = %e, "sidecar rejected its snapshot");
                } else {
                    retry = true;
                    tracing::debug!(pod = %key, error = %e, kind = e.kind(), "sidecar push failed");
                }
            }
            states.insert(key, st);
        }
        for (k, p) in &plan.pods {
            if let PodPlan::Unusable(why) = p {
                tracing::debug!(pod = %k, why, "sidecar not programmed");
            }
        }

        let programmed: BTreeSet<ObjKey> = plan
            .pods
            .iter()
            .filter(|(k, p)| match p {
                PodPlan::Snapshot(s) => {
                    states.get(*k).and_then(|st| st.acked.as_deref()) == Some(s.version.as_str())
                }
                PodPlan::Unusable(_) => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let facts = PodFacts {
            programmed,
            too_large,
        };
        write_statuses(&client, &inp.routes, &plan, &facts, &mut written).await;
        wake = if retry {
            tokio::time::Instant::now() + std::time::Duration::from_secs(1)
        } else {
            next_verify
        };
    }
}

/// Applies `status.workloads` of every attached route whose status changed, and clears it
/// (an empty apply by this manager) on routes that are no longer attached.
async fn write_statuses(
    client: &kube::Client,
    routes: &[ProxyRoute],
    plan: &Plan,
    facts: &PodFacts,
    written: &mut BTreeMap<ObjKey, Option<serde_json::Value>>,
) {
    let now = now_rfc3339();
    for r in routes {
        let ns = r.namespace().unwrap_or_default();
        let name = r.name_any();
        let k = crate::compile::key(&ns, &name);
        let old = r.status.as_ref().and_then(|s| s.workloads.as_ref());
        // What we wrote and the watch has not brought back yet is the base: the conditions'
        // lastTransitionTime must not move on every round until it does.
        let pending: Option<WorkloadAttachmentStatus> = written
            .get(&k)
            .cloned()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok());
        let base = pending.as_ref().or(old);
        let desired = plan
            .routes
            .get(&k)
            .map(|a| attachment_status(a, facts, base, &now));
        if desired.as_ref() == old {
            written.remove(&k);
            continue;
        }
        let value = desired.as_ref().and_then(|d| serde_json::to_value(d).ok());
        if written.get(&k) == Some(&value) {
            continue; // written; the watch has not brought it back yet
        }
        let status = match &value {
            Some(v) => serde_json::json!({"workloads": v}),
            None => serde_json::json!({}),
        };
        let patch = serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "ProxyRoute",
            "status": status,
        });
        let api: Api<ProxyRoute> = Api::namespaced(client.clone(), &ns);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&name, &pp, &Patch::Apply(&patch)).await {
            Ok(_) => {
                written.insert(k, value);
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                METRICS.status_write_errors.inc();
                let e = Error::StatusWrite {
                    object: format!("ProxyRoute:{k}"),
                    source,
                }
                .counted();
                tracing::warn!(object = %k, error = %e, "status write failed");
            }
        }
    }
}
