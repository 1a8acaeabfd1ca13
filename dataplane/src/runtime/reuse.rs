//! What a reload keeps of the previous version: which routes are unchanged (equal to the
//! previous route of the same name), so that their validation and compiled form carry over,
//! and which exact hosts' routing tables must be built again.
//!
//! Why: at 10,000 routes a one-route `PATCH /config` validated and compiled all 10,000 routes
//! and freed the 10,000 compiled ones of the previous version (~450 ms per pod, release; 50
//! pods sharing a core made a change take 20 s to reach them all; BENCHMARKS.md, "control
//! plane at scale"). The result is still the same as a whole validation and compile: an
//! invalid snapshot is rejected whole, and the compiled tables are those a full build makes.

use crate::runtime::compile::Runtime;
use std::collections::{HashMap, HashSet};
use weir_config::{ConfigError, Route, Snapshot};

/// For each route of `snap`, the index of the route of `prev` with the same name when the two
/// are equal; `None` for a new or changed route (or without `prev`).
pub fn unchanged_routes(snap: &Snapshot, prev: Option<&Snapshot>) -> Vec<Option<usize>> {
    let Some(prev) = prev else {
        return vec![None; snap.routes.len()];
    };
    let index: HashMap<&str, usize> = prev
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    snap.routes
        .iter()
        .map(|r| {
            let j = *index.get(r.name.as_str())?;
            (prev.routes.get(j)? == r).then_some(j)
        })
        .collect()
}

/// [`Snapshot::validate`], at the cost of the changed routes only when it can be: a route's
/// checks depend on the route, the listeners and the backend names, and on nothing else but
/// the uniqueness of route names. So when the listeners and backend names are those of `prev`
/// (which was valid: it runs), the unchanged routes passed these checks already, and the
/// snapshot is valid exactly when it is with only its changed routes (and names are unique).
/// Any failure is reported by the whole validation, so error paths (`routes[i]`) are those of
/// `snap` itself.
pub fn validate(
    snap: &Snapshot,
    prev: Option<&Snapshot>,
    unchanged: &[Option<usize>],
) -> Result<(), ConfigError> {
    let same_context = prev.is_some_and(|p| {
        p.listeners == snap.listeners && p.backends.keys().eq(snap.backends.keys())
    });
    if !same_context {
        return snap.validate();
    }
    let mut names = HashSet::with_capacity(snap.routes.len());
    if !snap.routes.iter().all(|r| names.insert(r.name.as_str())) {
        return snap.validate();
    }
    let changed: Vec<Route> = snap
        .routes
        .iter()
        .zip(unchanged)
        .filter(|(_, u)| u.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    let reduced = Snapshot {
        version: snap.version.clone(),
        listeners: snap.listeners.clone(),
        routes: changed,
        backends: snap.backends.clone(),
        sinks: snap.sinks.clone(),
        tracing: snap.tracing.clone(),
    };
    match reduced.validate() {
        Ok(()) => Ok(()),
        Err(_) => snap.validate(),
    }
}

/// The exact hosts (lowercase) whose routing tables must be built again when the router of
/// `prev` is reused: those of the routes compiled anew and of `prev`'s routes whose compiled
/// form was not kept. `None` when the previous tables cannot be reused: such a route has a
/// wildcard or no hostname (its rules sit in many tables), or the kept routes changed their
/// relative order (declaration order breaks precedence ties), or some route is bound to
/// listeners (per-listener tables are built whole).
pub fn changed_exact_hosts(
    snap: &Snapshot,
    prev: &Runtime,
    kept_from: &[Option<usize>],
) -> Option<HashSet<String>> {
    if !prev.listener_routers.is_empty() || snap.routes.iter().any(|r| !r.listeners.is_empty()) {
        return None;
    }
    let mut hosts = HashSet::new();
    let mut add = |route: &weir_config::Route| -> Option<()> {
        if route.hostnames.is_empty() {
            return None;
        }
        for h in &route.hostnames {
            if h.starts_with('*') {
                return None;
            }
            hosts.insert(h.to_ascii_lowercase());
        }
        Some(())
    };
    let mut kept_prev = vec![false; prev.snapshot.routes.len()];
    let mut last = None;
    for (route, kept) in snap.routes.iter().zip(kept_from) {
        match kept {
            Some(j) => {
                if last.is_some_and(|l| l >= *j) {
                    return None;
                }
                last = Some(*j);
                *kept_prev.get_mut(*j)? = true;
            }
            None => add(route)?,
        }
    }
    for (route, kept) in prev.snapshot.routes.iter().zip(&kept_prev) {
        if !kept {
            add(route)?;
        }
    }
    Some(hosts)
}

