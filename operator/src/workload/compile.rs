//! The pure per-workload compile: `sidecar pods + attached ProxyRoutes + Backends + Services ->
//! one snapshot per pod + one attachment outcome per route`. No I/O, so it is unit-tested on
//! golden inputs (`testdata/`).
//!
//! A pod's snapshot is the injector's boot snapshot (the `weir.dev/sidecar-snapshot`
//! annotation: the inbound listener to the app on loopback, the empty outbound listener) plus
//! the routes attached to the pod, bound to the outbound listener, and the Backends they use.
//! Routes are compiled by the fleet's own [`crate::compile::compile`], so an attached route
//! means exactly what it means on the fleet. Pods with the same boot snapshot and the same
//! attached routes (the replicas of one workload) share one compile.

use super::targets::{self, Resolved, TargetIndex, Unresolved};
use crate::compile::{self, ObjKey, SecretIndex, ServiceIndex};
use crate::crd::{Backend, ProxyRoute, RouteMatch, WorkloadRef};
use crate::inject::patch::{INBOUND_LISTENER, OUTBOUND_LISTENER};
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use weir_config::{FieldError, Snapshot};

/// An injected pod, reduced to what the compile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The injector's boot snapshot (`weir.dev/sidecar-snapshot`), JSON.
    pub boot: Option<String>,
    /// Its entry in the namespace's snapshot Secret (`weir.dev/sidecar-snapshot-key`, written
    /// by the injector); `None` for pods injected before there was one.
    pub snapshot_key: Option<String>,
}

impl SidecarPod {
    pub fn key(&self) -> ObjKey {
        compile::key(&self.namespace, &self.name)
    }
}

/// What to compile. `routes` may hold every ProxyRoute: those without `spec.workloadSelector`
/// or `spec.targetRefs` are ignored.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub pods: &'a [SidecarPod],
    pub routes: &'a [ProxyRoute],
    pub backends: &'a [Backend],
    pub services: &'a ServiceIndex,
    pub secrets: &'a SecretIndex,
    /// What each Deployment, StatefulSet, DaemonSet and Service selects, for `spec.targetRefs`.
    pub targets: &'a TargetIndex,
}

/// One pod's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum PodPlan {
    /// Push this snapshot.
    Snapshot(Arc<Snapshot>),
    /// Nothing can be pushed (no or a bad boot snapshot); the sidecar keeps what it runs.
    Unusable(String),
}

/// One attached route's outcome over all pods.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Attachment {
    pub generation: Option<i64>,
    /// Pods (`ns/name`) whose snapshot contains the route.
    pub pods: BTreeSet<ObjKey>,
    /// Pods where an older route claims the same host and match: pod -> message (with the
    /// field path and the winning route).
    pub conflicts: BTreeMap<ObjKey, String>,
    /// Spec or reference problems (the route is in no snapshot), with field paths.
    pub invalid: Vec<FieldError>,
    /// One per `spec.targetRefs[i]`, in order.
    pub refs: Vec<RefAttachment>,
}

/// One `spec.targetRefs[i]` of an attached route.
#[derive(Debug, Clone, PartialEq)]
pub struct RefAttachment {
    pub target: WorkloadRef,
    /// `Ok`: the target selects `selected`, at least one pod; `Err`: why it selects none (the
    /// message names `spec.targetRefs[i]`).
    pub resolved: Result<(), (Unresolved, String)>,
    /// Sidecar pods (`ns/name`) the target selects.
    pub selected: BTreeSet<ObjKey>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub pods: BTreeMap<ObjKey, PodPlan>,
    /// Every route with `spec.workloadSelector`, attached to pods or not.
    pub routes: BTreeMap<ObjKey, Attachment>,
}

/// Is this route attached to workloads (and so not part of the fleet's snapshot)?
pub fn is_attached(r: &ProxyRoute) -> bool {
    r.spec.workload_selector.is_some() || !r.spec.target_refs.is_empty()
}

/// Does the route (its selector, or one of its resolved `refs`) select the pod? A route that
/// sets both selects nothing (it is reported `Invalid`).
fn selects(r: &ProxyRoute, refs: &[Resolved], pod: &SidecarPod) -> bool {
    if r.namespace().as_deref() != Some(pod.namespace.as_str()) {
        return false;
    }
    match (&r.spec.workload_selector, refs) {
        (Some(s), []) => {
            !s.match_labels.is_empty()
                && s.match_labels
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v))
        }
        (None, refs) => refs.iter().any(|x| x.selects(&pod.labels)),
        (Some(_), _) => false,
    }
}

/// Set both ways of attaching, the route is ambiguous: which pods did the user mean, the
/// union or the intersection? Refused rather than guessed.
fn both_set(r: &ProxyRoute) -> Option<FieldError> {
    (r.spec.workload_selector.is_some() && !r.spec.target_refs.is_empty()).then(|| {
        FieldError::new(
            "spec.targetRefs",
            "set either spec.workloadSelector or spec.targetRefs, not both",
        )
    })
}

/// `(host, canonical match)`: what two routes must not both claim on one pod.
type Claim = (String, String);

/// What a route claims on a workload: `(host, match)` -> the field path that claims it. Two
/// routes conflict on a pod when they claim the same host with the same match (path, method,
/// headers, query): the dataplane would pick by declaration order, so one route would be
/// silently dead there.
fn claims(r: &ProxyRoute) -> Vec<(Claim, String)> {
    let hosts: Vec<String> = if r.spec.hostnames.is_empty() {
        vec!["*".into()]
    } else {
        r.spec
            .hostnames
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect()
    };
    let mut out = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let matches: Vec<(String, Option<&RouteMatch>)> = if rule.matches.is_empty() {
            vec![(format!("spec.rules[{i}]"), None)]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .map(|(j, m)| (format!("spec.rules[{i}].matches[{j}]"), Some(m)))
                .collect()
        };
        for (path, m) in matches {
            // No match and an empty match both mean "every request".
            let canon = m
                .and_then(|m| serde_json::to_value(m).ok())
                .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
                .map(|v| v.to_string())
                .unwrap_or_else(|| "{}".into());
            for h in &hosts {
                out.push(((h.clone(), canon.clone()), path.clone()));
            }
        }
    }
    out
}

/// The compile.
pub fn compile(inputs: Inputs<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut attached: Vec<&ProxyRoute> = inputs.routes.iter().filter(|r| is_attached(r)).collect();
    // Oldest first: on a conflict the older route keeps the claim (as Gateway API does).
    attached.sort_by_key(|r| compile::route_order(r));
    let mut resolved: BTreeMap<ObjKey, Vec<Resolved>> = BTreeMap::new();
    for r in &attached {
        let k = key_of(r);
        let refs = targets::resolve(r, inputs.targets);
        plan.routes.insert(
            k.clone(),
            Attachment {
                generation: r.metadata.generation,
                invalid: both_set(r).into_iter().collect(),
                refs: refs
                    .iter()
                    .map(|x| RefAttachment {
                        target: x.target.clone(),
                        resolved: x.selector.as_ref().map(|_| ()).map_err(Clone::clone),
                        selected: BTreeSet::new(),
                    })
                    .collect(),
                ..Default::default()
            },
        );
        resolved.insert(k, refs);
    }
    let claims_of: BTreeMap<ObjKey, Vec<(Claim, String)>> =
        attached.iter().map(|r| (key_of(r), claims(r))).collect();

    // Group pods by (boot snapshot, routes kept): one compile per group.
    type Group = (String, Vec<ObjKey>);
    let mut groups: BTreeMap<Group, Vec<ObjKey>> = BTreeMap::new();
    for pod in inputs.pods {
        let pk = pod.key();
        // Which refs select the pod, for their status (before any reason to skip the pod).
        for r in &attached {
            let rk = key_of(r);
            if r.namespace().as_deref() != Some(pod.namespace.as_str()) {
                continue;
            }
            if let Some(a) = plan.routes.get_mut(&rk) {
                for (x, ra) in resolved[&rk].iter().zip(a.refs.iter_mut()) {
                    if x.selects(&pod.labels) {
                        ra.selected.insert(pk.clone());
                    }
                }
            }
        }
        let Some(boot) = pod.boot.clone() else {
            plan.pods.insert(
                pk,
                PodPlan::Unusable("no weir.dev/sidecar-snapshot annotation".into()),
            );
            continue;
        };
        let mut taken: BTreeMap<Claim, ObjKey> = BTreeMap::new();
        let mut kept = Vec::new();
        for r in &attached {
            let rk = key_of(r);
            if !selects(r, &resolved[&rk], pod) {
                continue;
            }
            let mine = &claims_of[&rk];
            if let Some((claim, path, other)) = mine
                .iter()
                .find_map(|(c, p)| taken.get(c).map(|o| (c, p, o)))
            {
                let what = if claim.0 == "*" {
                    "every host".to_string()
                } else {
                    format!("host {}", claim.0)
                };
                let msg = format!(
                    "{path}: {what} with the same match is already claimed by route {other} (older) on pod {pk}; this route is not served there"
                );
                if let Some(a) = plan.routes.get_mut(&rk) {
                    a.conflicts.insert(pk.clone(), msg);
                }
                continue;
            }
            for (c, _) in mine {
                taken.insert(c.clone(), rk.clone());
            }
            kept.push(rk);
        }
        groups.entry((boot, kept)).or_default().push(pk);
    }
    for a in plan.routes.values_mut() {
        for (i, ra) in a.refs.iter_mut().enumerate() {
            if ra.resolved.is_ok() && ra.selected.is_empty() {
                ra.resolved = Err((
                    Unresolved::NoPods,
                    format!(
                        "spec.targetRefs[{i}]: {} {} selects no pod with the Weir sidecar (is its namespace labelled weir.dev/inject=enabled, and the workload restarted since?)",
                        ra.target.kind, ra.target.name
                    ),
                ));
            }
        }
    }

    for ((boot, kept), pods) in groups {
        let routes: Vec<ProxyRoute> = attached
            .iter()
            .filter(|r| kept.contains(&key_of(r)))
            .map(|r| (*r).clone())
            .collect();
        let outcome = workload_snapshot(&boot, &routes, inputs);
        match outcome {
            Err(why) => {
                for p in pods {
                    plan.pods.insert(p, PodPlan::Unusable(why.clone()));
                }
            }
            Ok((snapshot, route_outcomes)) => {
                for (rk, ro) in route_outcomes {
                    let Some(a) = plan.routes.get_mut(&rk) else {
                        continue;
                    };
                    if ro.included {
                        a.pods.extend(pods.iter().cloned());
                    } else if a.invalid.is_empty() {
                        a.invalid = ro.invalid.into_iter().chain(ro.unresolved).collect();
                    }
                }
                let snapshot = Arc::new(snapshot);
                for p in pods {
                    plan.pods.insert(p, PodPlan::Snapshot(snapshot.clone()));
                }
            }
        }
    }
    plan
}

/// What the snapshot Secret of each namespace should hold: namespace -> (the pods'
/// `snapshot_key` -> their snapshot). Every namespace with a sidecar pod is present, empty or
/// not, so entries of pods that are gone are dropped. Pods sharing a key have the same labels
/// (as admitted) and boot snapshot, so the same compile; if they no longer agree (a pod
/// relabelled since admission) the key is left out: such a sidecar boots from its boot
/// snapshot, as before this Secret existed, rather than from another pod's routes.
pub fn secret_entries(
    pods: &[SidecarPod],
    plan: &Plan,
) -> BTreeMap<String, BTreeMap<String, Arc<Snapshot>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Arc<Snapshot>>> = BTreeMap::new();
    let mut split: BTreeSet<(String, String)> = BTreeSet::new();
    for pod in pods {
        let entries = out.entry(pod.namespace.clone()).or_default();
        let (Some(key), Some(PodPlan::Snapshot(snap))) =
            (pod.snapshot_key.as_ref(), plan.pods.get(&pod.key()))
        else {
            continue;
        };
        match entries.get(key) {
            Some(other) if other.version != snap.version => {
                split.insert((pod.namespace.clone(), key.clone()));
            }
            Some(_) => {}
            None => {
                entries.insert(key.clone(), snap.clone());
            }
        }
    }
    for (ns, key) in split {
        if let Some(e) = out.get_mut(&ns) {
            e.remove(&key);
        }
    }
    out
}

fn key_of(r: &ProxyRoute) -> ObjKey {
    compile::key(&r.namespace().unwrap_or_default(), &r.name_any())
}

/// The boot snapshot plus `routes` on its outbound listener, with the Backends they use.
fn workload_snapshot(
    boot: &str,
    routes: &[ProxyRoute],
    inputs: Inputs<'_>,
) -> Result<(Snapshot, BTreeMap<ObjKey, compile::RouteOutcome>), String> {
    let mut snap = weir_config::parse_json(boot.as_bytes())
        .map_err(|e| format!("weir.dev/sidecar-snapshot: {e}"))?;
    let outbound = snap
        .listeners
        .iter()
        .find(|l| l.name == OUTBOUND_LISTENER)
        .cloned()
        .ok_or_else(|| {
            format!("weir.dev/sidecar-snapshot has no {OUTBOUND_LISTENER:?} listener (injected by an older injector: restart the pod)")
        })?;
    let compiled = compile::compile(compile::Inputs {
        routes,
        backends: inputs.backends,
        sinks: &[],
        services: inputs.services,
        secrets: inputs.secrets,
        listeners: std::slice::from_ref(&outbound),
    });
    let used: BTreeSet<&ObjKey> = compiled
        .routes
        .values()
        .filter(|o| o.included)
        .flat_map(|o| o.backends.iter())
        .collect();
    for (name, b) in &compiled.snapshot.backends {
        if used.contains(name) {
            snap.backends.insert(name.clone(), b.clone());
        }
    }
    for mut r in compiled.snapshot.routes {
        std::sync::Arc::make_mut(&mut r).listeners = vec![OUTBOUND_LISTENER.to_string()];
        snap.routes.push(r);
    }
    // The inbound route stays bound to the inbound listener whatever the annotation said.
    for r in &mut snap.routes {
        if r.listeners.is_empty() {
            std::sync::Arc::make_mut(r).listeners = vec![INBOUND_LISTENER.to_string()];
        }
    }
    snap.version = String::new();
    snap.version = format!("workload-{}", snap.content_hash());
    Ok((snap, compiled.routes))
}

#[cfg(test)]
mod tests;
