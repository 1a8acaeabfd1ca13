//! The Gateway API at run time: discovery of the CRDs (polled, so the operator starts and
//! serves ProxyRoutes without them and picks them up once installed), the watches, the inputs
//! of [`compile_gateway_api`] from their stores, and the lease-gated status writer.
//!
//! The compile loop of [`crate::controller`] holds one [`GatewayApi`] and calls two hooks:
//! [`GatewayApi::compile`] beside the Weir compile, and [`GatewayApi::publish`] with the
//! outcome and whether this replica leads.

use super::compile::{compile_gateway_api, FleetPort, GatewayCompiled, GatewayInputs};
use super::types::*;
use crate::compile::{key, ObjKey, SecretIndex, ServiceIndex};
use crate::crd::Condition;
use crate::status::{merge_conditions, PodProgress};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Gateway API settings of the operator.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Watch and compile the Gateway API kinds (chart value `gatewayAPI.enabled`).
    pub enabled: bool,
    /// The dataplane Service (in the dataplane namespace): its ports are the ports Gateway
    /// listeners may use, its address is every Gateway's `status.addresses`.
    pub dataplane_service: Option<String>,
    /// How often discovery is asked whether the Gateway API CRDs are installed, until all are.
    pub discovery_interval: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            enabled: true,
            dataplane_service: None,
            discovery_interval: Duration::from_secs(10),
        }
    }
}

/// The watches started so far (each once its CRD is served and its first list is in).
#[derive(Default, Clone)]
struct Stores {
    classes: Option<Store<GatewayClass>>,
    gateways: Option<Store<Gateway>>,
    http: Option<Store<HTTPRoute>>,
    grpc: Option<Store<GRPCRoute>>,
    grants: Option<Store<ReferenceGrant>>,
    grants_v1beta1: Option<Store<ReferenceGrantV1beta1>>,
    namespaces: Option<Store<Namespace>>,
    dataplane_service: Option<Store<Service>>,
}

/// What the status task gets from the compile loop.
#[derive(Clone, Default)]
struct StatusJob {
    leader: bool,
    term: u64,
    compiled: Option<Arc<GatewayCompiled>>,
    /// What the ready dataplane pods run; `None` until the pusher has asked them all.
    progress: Option<Arc<PodProgress>>,
}

/// The handle the compile loop holds.
pub struct GatewayApi {
    stores: Arc<Mutex<Stores>>,
    status_tx: watch::Sender<StatusJob>,
    term: u64,
    was_leader: bool,
}

fn state<K>(s: &Option<Store<K>>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.iter()
        .flat_map(|s| s.state())
        .map(|o| (*o).clone())
        .collect()
}

/// Starts a watch and waits for its first list, so compile never sees a half-listed kind.
async fn watch_kind<K>(
    api: Api<K>,
    notify: Arc<Notify>,
    status_only: Arc<Notify>,
    what: &'static str,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let cfg = watcher::Config::default().any_semantic();
    let store = crate::controller::spawn_reflector(api, cfg, (), notify, Some(status_only), what);
    // A watch that cannot list keeps retrying inside the reflector; the kind is left out of
    // compile until then (as if it had no objects would be wrong: it would drop their routes).
    store.wait_until_ready().await.ok();
    tracing::info!(kind = what, "Gateway API watch synced");
    store
}

/// Which Gateway API resources the API server serves now: `(plural, version)`.
async fn served(client: &Client) -> Vec<(String, String)> {
    match kube::discovery::group(client, GROUP).await {
        Ok(g) => g
            .versions()
            .flat_map(|v| {
                g.versioned_resources(v)
                    .into_iter()
                    .map(move |(ar, _)| (ar.plural, v.to_string()))
            })
            .collect(),
        // Not installed (404) or discovery failing: try again at the next poll.
        Err(e) => {
            tracing::debug!(error = %e, "Gateway API group not served");
            Vec::new()
        }
    }
}

impl GatewayApi {
    /// Starts discovery polling and the status task; watches start as their CRDs appear.
    pub fn start(
        client: Client,
        settings: &GatewaySettings,
        dataplane_namespace: &str,
        watch_namespace: Option<&str>,
        notify: Arc<Notify>,
    ) -> GatewayApi {
        let stores: Arc<Mutex<Stores>> = Default::default();
        let (status_tx, status_rx) = watch::channel(StatusJob::default());
        let status_poke = Arc::new(Notify::new());
        let api = GatewayApi {
            stores: stores.clone(),
            status_tx,
            term: 0,
            was_leader: false,
        };
        if !settings.enabled {
            tracing::info!("Gateway API support is off");
            return api;
        }
        if let Some(name) = &settings.dataplane_service {
            let svc_api: Api<Service> = Api::namespaced(client.clone(), dataplane_namespace);
            let cfg = watcher::Config::default()
                .any_semantic()
                .fields(&format!("metadata.name={name}"));
            let store = crate::controller::spawn_reflector(
                svc_api,
                cfg,
                (),
                notify.clone(),
                None,
                "dataplane-service",
            );
            lock(&stores).dataplane_service = Some(store);
        }
        tokio::spawn(discover(
            client.clone(),
            settings.discovery_interval,
            watch_namespace.map(str::to_string),
            stores,
            notify,
            status_poke.clone(),
        ));
        tokio::spawn(status_loop(client, status_rx, status_poke));
        api
    }

    /// Compiles the Gateway API objects; `None` while the CRDs are not installed (or their
    /// first lists are not in yet).
    pub fn compile(
        &self,
        services: &[Arc<Service>],
        index: &ServiceIndex,
        secrets: &SecretIndex,
        listeners: &[weir_config::Listener],
    ) -> Option<GatewayCompiled> {
        let st = lock(&self.stores).clone();
        // Classes, Gateways and HTTPRoutes are the core; GRPCRoute and ReferenceGrant may be
        // missing from an older install and count as none.
        st.classes.as_ref()?;
        st.gateways.as_ref()?;
        st.http.as_ref()?;
        let mut grants = state(&st.grants);
        grants.extend(
            state(&st.grants_v1beta1)
                .into_iter()
                .map(ReferenceGrant::from),
        );
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = state(&st.namespaces)
            .into_iter()
            .map(|n| (n.name_any(), n.metadata.labels.unwrap_or_default()))
            .collect();
        let app_protocols = app_protocols(services);
        let svc = state(&st.dataplane_service).into_iter().next();
        let (fleet, addresses) = fleet(svc.as_ref(), listeners);
        Some(compile_gateway_api(GatewayInputs {
            classes: &state(&st.classes),
            gateways: &state(&st.gateways),
            http_routes: &state(&st.http),
            grpc_routes: &state(&st.grpc),
            grants: &grants,
            namespaces: &namespaces,
            services: index,
            app_protocols: &app_protocols,
            secrets,
            fleet: &fleet,
            addresses: &addresses,
        }))
    }

    /// Hands the latest outcome to the status task; it writes only while `leader`.
    pub fn publish(
        &mut self,
        leader: bool,
        compiled: Option<GatewayCompiled>,
        progress: Option<Arc<PodProgress>>,
    ) {
        if leader != self.was_leader {
            self.term += 1;
            self.was_leader = leader;
        }
        let job = StatusJob {
            leader,
            term: self.term,
            compiled: compiled.map(Arc::new),
            progress,
        };
        self.status_tx.send_if_modified(|j| {
            let same = j.leader == job.leader
                && j.term == job.term
                && j.compiled.as_deref() == job.compiled.as_deref()
                && j.progress.as_deref() == job.progress.as_deref();
            if !same {
                *j = job;
            }
            !same
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `appProtocol` of every Service port.
fn app_protocols(services: &[Arc<Service>]) -> BTreeMap<(ObjKey, u16), String> {
    let mut out = BTreeMap::new();
    for s in services {
        let k = key(&s.namespace().unwrap_or_default(), &s.name_any());
        for p in s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()) {
            if let (Some(a), Ok(port)) = (&p.app_protocol, u16::try_from(p.port)) {
                out.insert((k.clone(), port), a.clone());
            }
        }
    }
    out
}

/// The fleet's ports and addresses from the dataplane Service: each TCP port whose
/// targetPort is a listener's port number, or its name (the chart names container ports after
/// the listeners). Without the Service, each listener's own port and no address.
pub fn fleet(
    svc: Option<&Service>,
    listeners: &[weir_config::Listener],
) -> (Vec<FleetPort>, Vec<GatewayStatusAddress>) {
    let listener_port = |l: &weir_config::Listener| {
        l.address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    let Some(svc) = svc else {
        let ports = listeners
            .iter()
            .filter_map(|l| {
                Some(FleetPort {
                    port: listener_port(l)?,
                    listener: l.name.clone(),
                    protocol: l.protocol,
                })
            })
            .collect();
        return (ports, Vec::new());
    };
    let mut ports = Vec::new();
    for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
            continue;
        }
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        let l = listeners.iter().find(|l| match &target {
            IntOrString::Int(t) => listener_port(l).map(i32::from) == Some(*t),
            IntOrString::String(name) => l.name == *name,
        });
        if let Some(l) = l {
            ports.push(FleetPort {
                port,
                listener: l.name.clone(),
                protocol: l.protocol,
            });
        }
    }
    let ingress: Vec<GatewayStatusAddress> = svc
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| match (&i.ip, &i.hostname) {
            (Some(ip), _) => Some(GatewayStatusAddress {
                type_: Some("IPAddress".into()),
                value: ip.clone(),
            }),
            (None, Some(h)) => Some(GatewayStatusAddress {
                type_: Some("Hostname".into()),
                value: h.clone(),
            }),
            _ => None,
        })
        .collect();
    let addresses = if ingress.is_empty() {
        svc.spec
            .iter()
            .filter_map(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
            .map(|ip| GatewayStatusAddress {
                type_: Some("IPAddress".into()),
                value: ip,
            })
            .collect()
    } else {
        ingress
    };
    (ports, addresses)
}

/// Polls discovery until every Gateway API kind Weir reads is watched.
async fn discover(
    client: Client,
    interval: Duration,
    watch_namespace: Option<String>,
    stores: Arc<Mutex<Stores>>,
    notify: Arc<Notify>,
    status_poke: Arc<Notify>,
) {
    let ns_api = |c: &Client| -> (Api<Gateway>, Api<HTTPRoute>, Api<GRPCRoute>) {
        match &watch_namespace {
            Some(ns) => (
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
            ),
            None => (
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
            ),
        }
    };
    let mut announced = false;
    loop {
        let have = served(&client).await;
        let has =
            |plural: &str, version: &str| have.iter().any(|(p, v)| p == plural && v == version);
        let s = lock(&stores).clone();
        let (gw_api, http_api, grpc_api) = ns_api(&client);
        let (n, sp) = (notify.clone(), status_poke.clone());
        if s.classes.is_none()
            && has("gatewayclasses", "v1")
            && has("gateways", "v1")
            && has("httproutes", "v1")
        {
            tracing::info!("Gateway API CRDs found; starting their watches");
            let classes = watch_kind(
                Api::<GatewayClass>::all(client.clone()),
                n.clone(),
                sp.clone(),
                "gatewayclasses",
            );
            let gateways = watch_kind(gw_api, n.clone(), sp.clone(), "gateways");
            let http = watch_kind(http_api, n.clone(), sp.clone(), "httproutes");
            // Namespaces have no status we write: every change may matter to a Selector.
            let namespaces = async {
                let store = crate::controller::spawn_reflector(
                    Api::<Namespace>::all(client.clone()),
                    watcher::Config::default().any_semantic(),
                    (),
                    n.clone(),
                    None,
                    "namespaces",
                );
                store.wait_until_ready().await.ok();
                store
            };
            let (c, g, h, ns) = tokio::join!(classes, gateways, http, namespaces);
            let mut st = lock(&stores);
            st.classes = Some(c);
            st.gateways = Some(g);
            st.http = Some(h);
            st.namespaces = Some(ns);
            notify.notify_one();
        } else if s.classes.is_none() && !announced {
            tracing::info!(
                "Gateway API CRDs not installed (gateway.networking.k8s.io/v1 GatewayClass, \
                 Gateway, HTTPRoute); serving Weir resources only and checking again every {interval:?}"
            );
            announced = true;
        }
        if s.grpc.is_none() && has("grpcroutes", "v1") {
            let store = watch_kind(grpc_api, n.clone(), sp.clone(), "grpcroutes").await;
            lock(&stores).grpc = Some(store);
            notify.notify_one();
        }
        if s.grants.is_none() && s.grants_v1beta1.is_none() {
            // v1 when served (Gateway API >= v1.5), else v1beta1.
            if has("referencegrants", "v1") {
                let api: Api<ReferenceGrant> = match &watch_namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let store = watch_kind(api, n.clone(), sp.clone(), "referencegrants").await;
                lock(&stores).grants = Some(store);
                notify.notify_one();
            } else if has("referencegrants", "v1beta1") {
                let api: Api<ReferenceGrantV1beta1> = match &watch_namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let store = watch_kind(api, n, sp, "referencegrants.v1beta1").await;
                lock(&stores).grants_v1beta1 = Some(store);
                notify.notify_one();
            }
        }
        let s = lock(&stores).clone();
        if s.classes.is_some()
            && s.grpc.is_some()
            && (s.grants.is_some() || s.grants_v1beta1.is_some())
        {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------

/// Stamps `lastTransitionTime` from the object's current conditions.
fn stamp(new: Vec<Condition>, old: &[Condition], now: &str) -> Vec<Condition> {
    merge_conditions(new, old, now)
}

/// The status an object should get, with times carried over from its current one.
fn class_status(
    new: &GatewayClassStatus,
    old: Option<&GatewayClassStatus>,
    now: &str,
) -> GatewayClassStatus {
    let old_c = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    GatewayClassStatus {
        conditions: stamp(new.conditions.clone(), old_c, now),
        supported_features: new.supported_features.clone(),
    }
}

fn gateway_status(new: &GatewayStatus, old: Option<&GatewayStatus>, now: &str) -> GatewayStatus {
    let old_c = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    let listeners = new
        .listeners
        .iter()
        .map(|l| {
            let prev = old
                .and_then(|o| o.listeners.iter().find(|p| p.name == l.name))
                .map(|p| p.conditions.as_slice())
                .unwrap_or_default();
            ListenerStatus {
                conditions: stamp(l.conditions.clone(), prev, now),
                ..l.clone()
            }
        })
        .collect();
    GatewayStatus {
        addresses: new.addresses.clone(),
        conditions: stamp(new.conditions.clone(), old_c, now),
        listeners,
    }
}

/// A Gateway compiled into the snapshot is `Programmed` once every ready dataplane pod runs a
/// snapshot with it at this generation (`GatewayCompiled::contents`); until then `Pending`,
/// with the count, and `NoResources` while no pod is ready.
fn with_pod_acks(k: &ObjKey, st: &GatewayStatus, pods: &PodProgress) -> GatewayStatus {
    let mut st = st.clone();
    for c in &mut st.conditions {
        if c.type_ != "Programmed" || c.status != "True" {
            continue;
        }
        let ready = pods.ready();
        let n = pods.programmed(&format!("Gateway:{k}"), c.observed_generation);
        let (ok, reason, message) = match (ready, n == ready) {
            (0, _) => (false, "NoResources", "no ready dataplane pods".to_string()),
            (_, true) => (
                true,
                "Programmed",
                format!("{n}/{ready} ready dataplane pods run this generation"),
            ),
            (_, false) => (
                false,
                "Pending",
                format!("{n}/{ready} ready dataplane pods run this generation"),
            ),
        };
        c.status = if ok { "True" } else { "False" }.to_string();
        c.reason = reason.to_string();
        c.message = message;
    }
    st
}

/// Weir's `status.parents` entries replace its old ones; other controllers' are kept.
fn route_status(new: &[RouteParentStatus], old: Option<&RouteStatus>, now: &str) -> RouteStatus {
    let old_parents = old.map(|o| o.parents.as_slice()).unwrap_or_default();
    let mut parents: Vec<RouteParentStatus> = old_parents
        .iter()
        .filter(|p| p.controller_name != super::CONTROLLER_NAME)
        .cloned()
        .collect();
    for p in new {
        let prev = old_parents
            .iter()
            .find(|o| o.parent_ref == p.parent_ref && o.controller_name == p.controller_name)
            .map(|o| o.conditions.as_slice())
            .unwrap_or_default();
        parents.push(RouteParentStatus {
            conditions: stamp(p.conditions.clone(), prev, now),
            ..p.clone()
        });
    }
    RouteStatus { parents }
}

/// The status writer: while leading, writes every owned object's status that differs from
/// what the API server has (`lastTransitionTime` moves only when a condition's status flips,
/// so a recompile that changes nothing writes nothing).
async fn status_loop(client: Client, mut jobs: watch::Receiver<StatusJob>, poke: Arc<Notify>) {
    // What we wrote last, per object: skips a second write while our first one has not come
    // back on the watch yet.
    let mut written: HashMap<String, serde_json::Value> = HashMap::new();
    let mut term = 0;
    loop {
        tokio::select! {
            r = jobs.changed() => if r.is_err() { return },
            _ = poke.notified() => {}
        }
        let job = jobs.borrow_and_update().clone();
        if job.term != term {
            written.clear();
            term = job.term;
        }
        let (true, Some(c)) = (job.leader, job.compiled) else {
            continue;
        };
        let now = crate::controller::now_rfc3339();
        for (name, st) in &c.classes {
            let api: Api<GatewayClass> = Api::all(client.clone());
            write(&api, name, "GatewayClass", &mut written, |old| {
                class_status(st, old.and_then(|o| o.status.as_ref()), &now)
            })
            .await;
        }
        for (k, st) in &c.gateways {
            // Until every ready pod was asked what it runs, Programmed would be a guess.
            let Some(p) = &job.progress else {
                continue;
            };
            let st = &with_pod_acks(k, st, p);
            let (ns, name) = k.split_once('/').unwrap_or_default();
            let api: Api<Gateway> = Api::namespaced(client.clone(), ns);
            write(&api, name, "Gateway", &mut written, |old| {
                gateway_status(st, old.and_then(|o| o.status.as_ref()), &now)
            })
            .await;
        }
        for (k, st) in &c.http_routes {
            let (ns, name) = k.split_once('/').unwrap_or_default();
            let api: Api<HTTPRoute> = Api::namespaced(client.clone(), ns);
            write(&api, name, "HTTPRoute", &mut written, |old| {
                route_status(st, old.and_then(|o| o.status.as_ref()), &now)
            })
            .await;
        }
        for (k, st) in &c.grpc_routes {
            let (ns, name) = k.split_once('/').unwrap_or_default();
            let api: Api<GRPCRoute> = Api::namespaced(client.clone(), ns);
            write(&api, name, "GRPCRoute", &mut written, |old| {
                route_status(st, old.and_then(|o| o.status.as_ref()), &now)
            })
            .await;
        }
    }
}

/// Objects whose status Weir writes: the status is read back as JSON to compare.
trait HasStatus {
    fn status_json(&self) -> serde_json::Value;
}

macro_rules! has_status {
    ($($k:ty),*) => {$(
        impl HasStatus for $k {
            fn status_json(&self) -> serde_json::Value {
                serde_json::to_value(&self.status).unwrap_or_default()
            }
        }
    )*};
}
has_status!(GatewayClass, Gateway, HTTPRoute, GRPCRoute);

/// Reads the object, computes its desired status from it, and patches the status
/// subresource when it differs from both the object's and what we wrote last.
async fn write<K, S>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    written: &mut HashMap<String, serde_json::Value>,
    desired: impl FnOnce(Option<&K>) -> S,
) where
    K: Resource + Clone + DeserializeOwned + Debug + HasStatus,
    S: serde::Serialize,
{
    let current = match api.get_opt(name).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(kind, name, error = %e, "cannot read for the status write");
            return;
        }
    };
    let Some(current) = current else {
        return;
    };
    let want = serde_json::to_value(desired(Some(&current))).unwrap_or_default();
    let wkey = format!("{kind}:{}/{name}", current.namespace().unwrap_or_default());
    if current.status_json() == want || written.get(&wkey) == Some(&want) {
        return;
    }
    let patch = serde_json::json!({ "status": want });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::debug!(kind, name, "status written");
            written.insert(wkey, want);
        }
        Err(e) => tracing::warn!(kind, name, error = %e, "status write failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners() -> Vec<weir_config::Listener> {
        serde_json::from_value(serde_json::json!([
            {"name": "http", "address": "0.0.0.0:8080", "protocol": "http"},
            {"name": "https", "address": "$(POD_IP):8443", "protocol": "https"},
        ]))
        .unwrap()
    }

    fn service(extra: serde_json::Value) -> Service {
        let mut v = serde_json::json!({
            "metadata": {"name": "weir-dataplane", "namespace": "weir-system"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
                {"name": "h3", "port": 443, "targetPort": 8443, "protocol": "UDP"},
                {"name": "other", "port": 9000, "targetPort": 9999, "protocol": "TCP"},
            ]},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fleet_ports_follow_target_ports_and_addresses_prefer_the_load_balancer() {
        let (ports, addrs) = fleet(Some(&service(serde_json::json!({}))), &listeners());
        let got: Vec<(u16, &str)> = ports
            .iter()
            .map(|p| (p.port, p.listener.as_str()))
            .collect();
        // By container port name, by number; UDP and unmatched target ports left out.
        assert_eq!(got, [(80, "http"), (443, "https")]);
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].value, "10.96.0.7");

        let lb = service(serde_json::json!({"status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.5"}, {"hostname": "lb.example.com"}]}}}));
        let (_, addrs) = fleet(Some(&lb), &listeners());
        let got: Vec<(&str, &str)> = addrs
            .iter()
            .map(|a| (a.type_.as_deref().unwrap_or_default(), a.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [("IPAddress", "203.0.113.5"), ("Hostname", "lb.example.com")]
        );
    }

    #[test]
    fn gateway_programmed_counts_the_pods_running_its_generation() {
        let programmed = |ok: bool, gen: i64| crate::crd::Condition {
            type_: "Programmed".into(),
            status: if ok { "True" } else { "False" }.into(),
            observed_generation: Some(gen),
            last_transition_time: String::new(),
            reason: if ok { "Programmed" } else { "Invalid" }.into(),
            message: String::new(),
        };
        let k = key("infra", "gw");
        let compiled = GatewayStatus {
            conditions: vec![programmed(true, 2)],
            ..Default::default()
        };
        let with = |v: i64| {
            Some(std::sync::Arc::new(BTreeMap::from([(
                "Gateway:infra/gw".to_string(),
                v,
            )])))
        };
        let pods = |p: Vec<Option<std::sync::Arc<BTreeMap<String, i64>>>>| PodProgress {
            pods: p,
            ..Default::default()
        };
        let got = |p: &PodProgress| {
            let st = with_pod_acks(&k, &compiled, p);
            let c = &st.conditions[0];
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        // One of two pods still runs generation 1; the other one nothing known.
        assert_eq!(
            got(&pods(vec![with(2), with(1)])),
            (
                "False".into(),
                "Pending".into(),
                "1/2 ready dataplane pods run this generation".into()
            )
        );
        assert_eq!(got(&pods(vec![with(2), None])).1, "Pending");
        assert_eq!(
            got(&pods(vec![with(2), with(2)])),
            (
                "True".into(),
                "Programmed".into(),
                "2/2 ready dataplane pods run this generation".into()
            )
        );
        assert_eq!(got(&pods(vec![])).1, "NoResources");
        // A Gateway the compile did not program stays as compiled.
        let invalid = GatewayStatus {
            conditions: vec![programmed(false, 2)],
            ..Default::default()
        };
        assert_eq!(with_pod_acks(&k, &invalid, &pods(vec![with(2)])), invalid);
    }

    #[test]
    fn without_the_service_each_listener_is_its_own_port_and_there_is_no_address() {
        let (ports, addrs) = fleet(None, &listeners());
        let got: Vec<(u16, &str)> = ports
            .iter()
            .map(|p| (p.port, p.listener.as_str()))
            .collect();
        assert_eq!(got, [(8080, "http"), (8443, "https")]);
        assert!(addrs.is_empty());
    }
}
