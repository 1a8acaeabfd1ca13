//! The operator's status page on its metrics port: `GET /ui` serves one self-contained HTML
//! document (`ui/operator.html`, compiled in); the page polls `GET /ui/state`, built here from
//! the controller's reflector stores and the pusher's per-pod view. It reads only what the
//! operator already holds in memory: no API calls, nothing kept for the page.
//!
//! Like `/metrics` on the same port, it needs no token: it shows names, versions, conditions
//! and push errors, the things `kubectl get` shows, never Secret values (statuses and push
//! errors never carry them).

use crate::crd::{Backend, ProxyRoute, TelemetrySink};
use crate::metrics::METRICS;
use crate::push::{Desired, PodStates};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::RwLock;
use tokio::sync::watch;

/// The page: HTML, script and style in one document. The head, style and DOM helpers are the
/// dataplane page's (`dataplane/src/ui/common.html`), so both pages look and work alike.
pub const PAGE: &str = concat!(
    include_str!("../../dataplane/src/ui/common.html"),
    include_str!("ui/operator.html")
);

/// What the controller holds that the page shows; published once the caches synced.
pub struct Sources {
    pub routes: Store<ProxyRoute>,
    pub backends: Store<Backend>,
    pub sinks: Store<TelemetrySink>,
    pub pods: Store<Pod>,
    pub states: PodStates,
    pub desired: watch::Receiver<Desired>,
}

static SOURCES: RwLock<Option<Sources>> = RwLock::new(None);

/// Makes the controller's state visible to `/ui/state` (replacing any earlier one).
pub fn publish(sources: Sources) {
    *SOURCES.write().unwrap_or_else(|e| e.into_inner()) = Some(sources);
}

/// Namespace, name, generation and status of every object in `store`, sorted.
fn objects<K>(store: &Store<K>) -> Vec<serde_json::Value>
where
    K: kube::Resource + serde::Serialize + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut out: Vec<(String, String, serde_json::Value)> = store
        .state()
        .iter()
        .map(|o| {
            let status = serde_json::to_value(o.as_ref())
                .ok()
                .and_then(|mut v| v.get_mut("status").map(serde_json::Value::take))
                .unwrap_or(serde_json::Value::Null);
            let ns = o.namespace().unwrap_or_default();
            let name = o.name_any();
            let v = serde_json::json!({
                "namespace": ns,
                "name": name,
                "generation": o.meta().generation,
                "status": status,
            });
            (ns, name, v)
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out.into_iter().map(|(_, _, v)| v).collect()
}

fn pods_json(s: &Sources, desired: Option<&str>) -> Vec<serde_json::Value> {
    let states = s.states.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut pods: Vec<serde_json::Value> = s
        .pods
        .state()
        .iter()
        .map(|p| {
            let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
            let st = p.status.as_ref();
            let ready = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let restarts: i32 = st
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            let ps = states.get(&key);
            let running = ps.and_then(|p| p.acked.clone());
            let rejected = ps.and_then(|p| p.rejected.as_ref()).map(|(v, errs)| {
                serde_json::json!({
                    "version": v,
                    "errors": errs.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>(),
                })
            });
            serde_json::json!({
                "pod": key,
                "ip": st.and_then(|s| s.pod_ip.clone()),
                "phase": st.and_then(|s| s.phase.clone()),
                "ready": ready,
                "terminating": p.metadata.deletion_timestamp.is_some(),
                "restarts": restarts,
                "polled": ps.is_some_and(|p| p.polled),
                "runningVersion": running,
                "upToDate": desired.is_some() && running.as_deref() == desired,
                "lastError": ps.and_then(|p| p.last_error.clone()),
                "rejected": rejected,
            })
        })
        .collect();
    pods.sort_by(|a, b| a["pod"].as_str().cmp(&b["pod"].as_str()));
    pods
}

/// The `GET /ui/state` document.
pub fn state() -> serde_json::Value {
    let now = crate::controller::now_rfc3339();
    let operator = serde_json::json!({
        "leader": METRICS.leader.get() == 1,
        "synced": METRICS.synced.load(Relaxed),
        "pushes": {
            "ok": METRICS.push_ok.get(),
            "rejected": METRICS.push_rejected.get(),
            "error": METRICS.push_error.get(),
        },
        "statusWrites": METRICS.status_writes.get(),
        "statusWriteErrors": METRICS.status_write_errors.get(),
        "routesInvalid": METRICS.routes_invalid.get(),
    });
    let guard = SOURCES.read().unwrap_or_else(|e| e.into_inner());
    let Some(s) = guard.as_ref() else {
        return serde_json::json!({ "now": now, "operator": operator, "desiredVersion": null,
            "pods": [], "proxyRoutes": [], "backends": [], "telemetrySinks": [] });
    };
    let desired = s
        .desired
        .borrow()
        .snapshot
        .as_ref()
        .map(|snap| snap.version.clone());
    serde_json::json!({
        "now": now,
        "operator": operator,
        "desiredVersion": desired,
        "pods": pods_json(s, desired.as_deref()),
        "proxyRoutes": objects(&s.routes),
        "backends": objects(&s.backends),
        "telemetrySinks": objects(&s.sinks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Condition, ProxyRouteSpec, ProxyRouteStatus};
    use crate::push::PodState;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use kube::runtime::{reflector, watcher};
    use std::sync::Arc;

    #[test]
    fn state_joins_pods_with_the_pushers_view_and_lists_conditions() {
        let (routes, mut rw) = reflector::store::<ProxyRoute>();
        let mut r = ProxyRoute::new("bad", ProxyRouteSpec::default());
        r.metadata.namespace = Some("apps".into());
        r.status = Some(ProxyRouteStatus {
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: "False".into(),
                observed_generation: Some(1),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
                reason: "Invalid".into(),
                message: "spec.rules[0]: bad".into(),
            }],
            ..Default::default()
        });
        rw.apply_watcher_event(&watcher::Event::Apply(r));
        let (pods, mut pw) = reflector::store::<Pod>();
        for (name, ready) in [("dp-0", "True"), ("dp-1", "False")] {
            let mut p = Pod::default();
            p.metadata.name = Some(name.into());
            p.metadata.namespace = Some("weir".into());
            p.status = Some(PodStatus {
                pod_ip: Some("10.0.0.1".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            pw.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let states: PodStates = Default::default();
        states.lock().unwrap().insert(
            "weir/dp-0".into(),
            PodState {
                acked: Some("v2".into()),
                polled: true,
                ..Default::default()
            },
        );
        states.lock().unwrap().insert(
            "weir/dp-1".into(),
            PodState {
                acked: Some("v1".into()),
                last_error: Some("connect: refused".into()),
                polled: true,
                ..Default::default()
            },
        );
        let snapshot: weir_config::Snapshot =
            serde_json::from_value(serde_json::json!({"version": "v2"})).unwrap();
        let (_tx, desired) = watch::channel(Desired {
            leader: true,
            snapshot: Some(Arc::new(snapshot)),
            pods: vec![],
        });
        publish(Sources {
            routes,
            backends: reflector::store().0,
            sinks: reflector::store().0,
            pods,
            states,
            desired,
        });
        let s = state();
        assert_eq!(s["desiredVersion"], "v2");
        let p0 = &s["pods"][0];
        assert_eq!(
            (
                &p0["pod"],
                &p0["ready"],
                &p0["runningVersion"],
                &p0["upToDate"]
            ),
            (
                &"weir/dp-0".into(),
                &true.into(),
                &"v2".into(),
                &true.into()
            )
        );
        let p1 = &s["pods"][1];
        assert_eq!(
            (&p1["ready"], &p1["upToDate"], &p1["lastError"]),
            (&false.into(), &false.into(), &"connect: refused".into())
        );
        let route = &s["proxyRoutes"][0];
        assert_eq!(route["name"], "bad");
        assert_eq!(route["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            route["status"]["conditions"][0]["message"],
            "spec.rules[0]: bad"
        );
    }
}
