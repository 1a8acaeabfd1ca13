//! Which statuses a pass must recompute: the objects whose status inputs changed since the
//! last pass, so that a one-route change (and each batch of pod acknowledgements that follows
//! it) recomputes a few statuses, not all 10,000.
//!
//! A ProxyRoute's status is a function of its compile outcome, the outcomes of the Backends
//! it references, how many pods run its generation, the pods' health reports of those
//! Backends, the number of ready pods and the pods' rejections; a Backend's likewise of its
//! own. [`Changed::between`] diffs two (compile, pod progress) pairs along exactly these
//! inputs and maps changed Backends to the routes that reference them ([`BackendIndex`], as
//! Linkerd's policy controller indexes routes by backend). The object itself (spec, or a
//! status someone else wrote) is the other input: the pass compares the store's `Arc`
//! with the one it last planned (`StatusMemo`).
//!
//! Measured (BENCHMARKS.md, "status plans only for changed objects"): `route_status` and
//! `aggregate_health` over every route on every pass were ~30% of the operator's samples
//! during single changes at 10,000 routes × 50 pods.

use crate::compile::{Compiled, ObjKey};
use crate::push::HealthReport;
use crate::status::PodProgress;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A pod's running contents (`kind:ns/name` → generation), shared by the pods of a version.
type Contents = Arc<BTreeMap<String, i64>>;

/// Backend → the routes that reference it.
type ByBackend = HashMap<ObjKey, Vec<ObjKey>>;

/// Objects whose status inputs changed (`ns/name` keys), or all of them.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Changed {
    pub(super) all: bool,
    pub(super) routes: HashSet<ObjKey>,
    pub(super) backends: HashSet<ObjKey>,
}

impl Changed {
    pub(super) fn everything() -> Changed {
        Changed {
            all: true,
            ..Default::default()
        }
    }

    pub(super) fn route(&self, k: &str) -> bool {
        self.all || self.routes.contains(k)
    }

    pub(super) fn backend(&self, k: &str) -> bool {
        self.all || self.backends.contains(k)
    }

    /// Adds `other`'s objects (a pass that did not finish carries its set over).
    pub(super) fn extend(&mut self, other: Changed) {
        self.all |= other.all;
        if !self.all {
            self.routes.extend(other.routes);
            self.backends.extend(other.backends);
        }
    }

    /// What changed between two passes' inputs. `index` maps Backends to the routes of
    /// `next` that reference them.
    pub(super) fn between(
        prev: (&Arc<Compiled>, &Arc<PodProgress>),
        next: (&Arc<Compiled>, &Arc<PodProgress>),
        index: &mut BackendIndex,
    ) -> Changed {
        let (pc, pp) = prev;
        let (nc, np) = next;
        // Every route's `readyPods` and `Programmed` message carry these.
        if pp.pods.len() != np.pods.len() || pp.rejected != np.rejected {
            return Changed::everything();
        }
        let mut out = Changed::default();
        if !Arc::ptr_eq(pc, nc) {
            for (k, o) in &nc.routes {
                if pc.routes.get(k) != Some(o) {
                    out.routes.insert(k.clone());
                }
            }
            let prev_only = pc.backends.keys().filter(|k| !nc.backends.contains_key(*k));
            for k in prev_only {
                out.backends.insert(k.clone());
            }
            for (k, o) in &nc.backends {
                if pc.backends.get(k) != Some(o) {
                    out.backends.insert(k.clone());
                }
            }
        }
        if !Arc::ptr_eq(pp, np) {
            // Pods share one contents map per snapshot version: diff each distinct pair once.
            let mut pairs: Vec<(&Contents, &Contents)> = Vec::new();
            for (a, b) in pp.pods.iter().zip(&np.pods) {
                match (a, b) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        let known = pairs
                            .iter()
                            .any(|(x, y)| Arc::ptr_eq(x, a) && Arc::ptr_eq(y, b));
                        if !Arc::ptr_eq(a, b) && !known {
                            pairs.push((a, b));
                        }
                    }
                    // A pod's contents became known or unknown: rare (start, a pod restart).
                    _ => return Changed::everything(),
                }
            }
            for (a, b) in pairs {
                for key in differing_keys(a, b) {
                    if let Some(k) = key.strip_prefix("ProxyRoute:") {
                        out.routes.insert(k.to_string());
                    } else if let Some(k) = key.strip_prefix("Backend:") {
                        out.backends.insert(k.to_string());
                    }
                }
            }
            for (a, b) in pp.health.iter().zip(&np.health) {
                if a != b {
                    out.backends.extend(health_changes(a.as_ref(), b.as_ref()));
                }
            }
        }
        if !out.backends.is_empty() {
            let by_backend = index.of(nc);
            for b in &out.backends {
                out.routes
                    .extend(by_backend.get(b).into_iter().flatten().cloned());
            }
        }
        out
    }
}

/// Keys whose value differs between two contents maps (present in one only included).
fn differing_keys<'a>(
    a: &'a BTreeMap<String, i64>,
    b: &'a BTreeMap<String, i64>,
) -> impl Iterator<Item = &'a String> {
    let gone_or_changed = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k);
    let added = b.keys().filter(|k| !a.contains_key(*k));
    gone_or_changed.chain(added)
}

/// Backends whose health report differs between two reports of one pod.
fn health_changes(a: Option<&HealthReport>, b: Option<&HealthReport>) -> Vec<String> {
    let empty = HealthReport::new();
    let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

/// Backend → the routes that reference it, for one compile (rebuilt when the compile changes:
/// once per change, O(routes)).
#[derive(Default)]
pub(super) struct BackendIndex {
    of: Option<(Arc<Compiled>, ByBackend)>,
}

impl BackendIndex {
    fn of(&mut self, c: &Arc<Compiled>) -> &ByBackend {
        if !self.of.as_ref().is_some_and(|(k, _)| Arc::ptr_eq(k, c)) {
            self.of = None;
        }
        let (_, m) = self.of.get_or_insert_with(|| {
            let mut m = ByBackend::new();
            for (r, o) in &c.routes {
                for b in &o.backends {
                    m.entry(b.clone()).or_default().push(r.clone());
                }
            }
            (c.clone(), m)
        });
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{BackendOutcome, RouteOutcome};
    use crate::push::EndpointHealth;

    fn compiled(routes: &[(&str, i64, &[&str])], backends: &[(&str, &[&str])]) -> Arc<Compiled> {
        let mut c = Compiled::default();
        for (k, g, bs) in routes {
            c.routes.insert(
                k.to_string(),
                RouteOutcome {
                    generation: Some(*g),
                    backends: bs.iter().map(|b| b.to_string()).collect(),
                    included: true,
                    ..Default::default()
                },
            );
        }
        for (k, eps) in backends {
            c.backends.insert(
                k.to_string(),
                BackendOutcome {
                    endpoints: eps.iter().map(|e| e.to_string()).collect(),
                    included: true,
                    ..Default::default()
                },
            );
        }
        Arc::new(c)
    }

    fn contents(c: &Compiled) -> Arc<BTreeMap<String, i64>> {
        Arc::new(c.contents())
    }

    fn set(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    fn health(backend: &str, addr: &str, available: bool) -> HealthReport {
        BTreeMap::from([(
            backend.to_string(),
            BTreeMap::from([(
                addr.to_string(),
                EndpointHealth {
                    available,
                    reason: None,
                },
            )]),
        )])
    }

    /// Each input of a status maps to exactly the objects it feeds: a route's own outcome, a
    /// pod's rollout of one route, a Backend's endpoints or health (to the routes using it),
    /// the number of ready pods (everything).
    #[test]
    fn changes_map_to_the_objects_they_feed() {
        let bs: &[(&str, &[&str])] = &[("ns/b1", &["10.0.0.1:80"]), ("ns/b2", &["10.0.0.2:80"])];
        let v1 = compiled(
            &[
                ("ns/a", 1, &["ns/b1"]),
                ("ns/b", 1, &["ns/b2"]),
                ("ns/c", 1, &["ns/b2"]),
            ],
            bs,
        );
        let v2 = compiled(
            &[
                ("ns/a", 2, &["ns/b1"]),
                ("ns/b", 1, &["ns/b2"]),
                ("ns/c", 1, &["ns/b2"]),
            ],
            bs,
        );
        let (m1, m2) = (contents(&v1), contents(&v2));
        let pods = |maps: Vec<&Arc<BTreeMap<String, i64>>>, h: Vec<Option<HealthReport>>| {
            Arc::new(PodProgress {
                pods: maps.into_iter().map(|m| Some(m.clone())).collect(),
                health: h,
                rejected: vec![],
                sinks: vec![None, None],
            })
        };
        let mut idx = BackendIndex::default();
        let p_old = pods(vec![&m1, &m1], vec![None, None]);

        // The same inputs: nothing.
        let same = Changed::between((&v1, &p_old), (&v1, &p_old), &mut idx);
        assert_eq!(same, Changed::default());

        // A new generation of `a`: `a` (its outcome), before any pod runs it.
        let c = Changed::between((&v1, &p_old), (&v2, &p_old), &mut idx);
        assert_eq!(
            (c.all, c.routes, c.backends),
            (false, set(&["ns/a"]), set(&[]))
        );

        // One pod acknowledges v2: `a` again (its programmed count), nothing else.
        let p_half = pods(vec![&m2, &m1], vec![None, None]);
        let c = Changed::between((&v2, &p_old), (&v2, &p_half), &mut idx);
        assert_eq!(
            (c.all, c.routes, c.backends),
            (false, set(&["ns/a"]), set(&[]))
        );

        // A pod reports `b2` unhealthy: `b2` and both routes that use it.
        let p_sick = pods(
            vec![&m2, &m1],
            vec![Some(health("ns/b2", "10.0.0.2:80", false)), None],
        );
        let c = Changed::between((&v2, &p_half), (&v2, &p_sick), &mut idx);
        assert_eq!(
            (c.all, c.routes, c.backends),
            (false, set(&["ns/b", "ns/c"]), set(&["ns/b2"]))
        );

        // `b1` gets another endpoint: `b1` and `a`.
        let v3 = compiled(
            &[
                ("ns/a", 2, &["ns/b1"]),
                ("ns/b", 1, &["ns/b2"]),
                ("ns/c", 1, &["ns/b2"]),
            ],
            &[
                ("ns/b1", &["10.0.0.1:80", "10.0.0.3:80"]),
                ("ns/b2", &["10.0.0.2:80"]),
            ],
        );
        let c = Changed::between((&v2, &p_sick), (&v3, &p_sick), &mut idx);
        assert_eq!(
            (c.all, c.routes, c.backends),
            (false, set(&["ns/a"]), set(&["ns/b1"]))
        );

        // A pod fewer: every status says `readyPods`.
        let p_one = Arc::new(PodProgress {
            pods: vec![Some(m2.clone())],
            health: vec![None],
            rejected: vec![],
            sinks: vec![None],
        });
        assert!(Changed::between((&v3, &p_sick), (&v3, &p_one), &mut idx).all);

        // A pass that did not finish carries its set into the next.
        let mut carried = Changed {
            routes: set(&["ns/a"]),
            ..Default::default()
        };
        carried.extend(Changed {
            backends: set(&["ns/b1"]),
            ..Default::default()
        });
        assert!(carried.route("ns/a") && carried.backend("ns/b1") && !carried.route("ns/b"));
        carried.extend(Changed::everything());
        assert!(carried.route("ns/b"));
    }
}
