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
use std::collections::HashSet;
use std::sync::Arc;
use weir_config::{ConfigError, Route, Snapshot};

/// For each route of `snap`, the index of the route of `prev` with the same name when the two
/// are equal; `None` for a new or changed route (or without `prev`).
pub fn unchanged_routes(snap: &Snapshot, prev: Option<&Snapshot>) -> Vec<Option<usize>> {
    let Some(prev) = prev else {
        return vec![None; snap.routes.len()];
    };
    // Routes keep their order across versions, so the route of the same name is usually at
    // the next position of `prev`; a name index is built only when it is not (a route added
    // or removed). A route a delta did not touch is the same `Arc` in both versions, so it
    // is known unchanged without comparing it. Both were O(routes) hash and equality work
    // per reload (~12% of a one-route `PATCH` at 10,000 routes).
    let mut index: Option<foldhash::HashMap<&str, usize>> = None;
    let mut next = 0;
    snap.routes
        .iter()
        .map(|r| {
            let j = match prev.routes.get(next) {
                Some(p) if p.name == r.name => next,
                _ => *index
                    .get_or_insert_with(|| {
                        prev.routes
                            .iter()
                            .enumerate()
                            .map(|(i, r)| (r.name.as_str(), i))
                            .collect()
                    })
                    .get(r.name.as_str())?,
            };
            next = j + 1;
            weir_config::same_route(prev.routes.get(j)?, r).then_some(j)
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
    // foldhash: SipHash of 10,000 names was ~10% of a one-route `PATCH` at 10,000 routes.
    let mut names: foldhash::HashSet<&str> = foldhash::HashSet::default();
    names.reserve(snap.routes.len());
    if !snap.routes.iter().all(|r| names.insert(r.name.as_str())) {
        return snap.validate();
    }
    let changed: Vec<Arc<Route>> = snap
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

#[cfg(test)]
mod tests {
    use crate::policy::stages::Stage;
    use crate::route::router::RequestView;
    use crate::runtime::compile::{compile, ReuseCounts, Runtime};
    use http::{HeaderMap, Method};
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn route(name: &str, host: &str, value: &str) -> Value {
        json!({"name": name, "hostnames": [host], "rules": [{
            "matches": [{"path": {"type": "RegularExpression", "value": "/[a-z]+"}}],
            "filters": {"responseHeaders": {"set": [{"name": "x-value", "value": value}]}},
            "backendRefs": [{"name": "b"}]}]})
    }

    fn snap(version: &str, routes: &[Value], backend_port: u16) -> weir_config::Snapshot {
        let s = json!({"version": version,
            "backends": {"b": {"endpoints": [format!("127.0.0.1:{backend_port}")]}},
            "routes": routes});
        // Not `weir_config::load`: it validates, and these tests give `compile` invalid ones.
        serde_json::from_value(s).unwrap()
    }

    /// `route#rule` serving `host` at `/x`, and the rule itself.
    fn lookup(rt: &Runtime, host: &str) -> Option<Arc<crate::policy::rule::RuleRt>> {
        let headers = HeaderMap::new();
        rt.router.find(&RequestView {
            host,
            method: &Method::GET,
            path: "/x",
            query: None,
            headers: &headers,
            body: None,
        })
    }

    fn limiter(rt: &Runtime, route: usize) -> Arc<crate::policy::ratelimit::RateLimiter> {
        rt.routes[route].rules[0]
            .stages
            .iter()
            .find_map(|s| match s {
                Stage::RateLimit(l) => Some(l.clone()),
                _ => None,
            })
            .expect("a rate limit stage")
    }

    #[test]
    fn unchanged_routes_keep_their_compiled_form_and_changed_ones_are_compiled_again() {
        let v1 = compile(
            snap(
                "v1",
                &[route("a", "a.test", "a1"), route("b", "b.test", "b1")],
                1,
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            v1.reuse,
            ReuseCounts {
                reused: 0,
                compiled: 2
            }
        );
        // b changed, c added.
        let v2 = compile(
            snap(
                "v2",
                &[
                    route("a", "a.test", "a1"),
                    route("b", "b.test", "b2"),
                    route("c", "c.test", "c2"),
                ],
                1,
            ),
            Some(&v1),
        )
        .unwrap();
        assert_eq!(
            v2.reuse,
            ReuseCounts {
                reused: 1,
                compiled: 2
            }
        );
        // a: the very same rule and conditions (regex included), and the router serves it.
        assert!(Arc::ptr_eq(&v1.routes[0].rules[0], &v2.routes[0].rules[0]));
        assert!(Arc::ptr_eq(&v1.routes[0].conds, &v2.routes[0].conds));
        assert!(Arc::ptr_eq(
            &lookup(&v2, "a.test").unwrap(),
            &v1.routes[0].rules[0]
        ));
        // b: compiled again, and served with its new value.
        assert!(!Arc::ptr_eq(&v1.routes[1].rules[0], &v2.routes[1].rules[0]));
        let b = lookup(&v2, "b.test").unwrap();
        assert!(Arc::ptr_eq(&b, &v2.routes[1].rules[0]));
        assert!(format!("{:?}", b.response_headers).contains("b2"));
        assert_eq!(&*lookup(&v2, "c.test").unwrap().route, "c");
        // The unchanged backend keeps its runtime (pools, health, breaker).
        assert!(Arc::ptr_eq(&v1.backends["b"], &v2.backends["b"]));

        // A backend change compiles every route again: rules hold their backends.
        let v3 = compile(
            snap(
                "v3",
                &[
                    route("a", "a.test", "a1"),
                    route("b", "b.test", "b2"),
                    route("c", "c.test", "c2"),
                ],
                2,
            ),
            Some(&v2),
        )
        .unwrap();
        assert_eq!(v3.reuse.reused, 0);
        let a = lookup(&v3, "a.test").unwrap();
        assert!(Arc::ptr_eq(&a.backends[0].backend, &v3.backends["b"]));
        assert_eq!(
            v3.backends["b"].endpoints[0].authority.as_str(),
            "127.0.0.1:2"
        );
    }

    /// A kept route's rate limiter stays carried: through a version that kept the route
    /// compiled, into one that compiles it again with the same limit.
    #[test]
    fn rate_limit_state_is_carried_through_kept_routes() {
        let mut limited = route("limited", "l.test", "1");
        limited["rateLimit"] = json!({"requestsPerUnit": 1, "unit": "hour", "burst": 1});
        let v1 = compile(
            snap("v1", &[limited.clone(), route("o", "o.test", "1")], 1),
            None,
        )
        .unwrap();
        let v2 = compile(
            snap("v2", &[limited.clone(), route("o", "o.test", "2")], 1),
            Some(&v1),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&v1.routes[0].rules[0], &v2.routes[0].rules[0]));
        // Same limit, another header value: compiled again, same bucket.
        let mut changed = limited.clone();
        changed["rules"][0]["filters"]["responseHeaders"]["set"][0]["value"] = json!("2");
        let v3 = compile(
            snap("v3", &[changed, route("o", "o.test", "2")], 1),
            Some(&v2),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&v2.routes[0].rules[0], &v3.routes[0].rules[0]));
        assert!(Arc::ptr_eq(&limiter(&v1, 0), &limiter(&v3, 0)));
    }

    /// Validation covers the changed routes only when it can, and reports errors with the
    /// paths of the whole snapshot.
    #[test]
    fn invalid_changes_are_rejected_with_their_paths() {
        let routes = [
            route("a", "a.test", "1"),
            route("b", "b.test", "1"),
            route("c", "c.test", "1"),
        ];
        let v1 = compile(snap("v1", &routes, 1), None).unwrap();
        let mut bad = routes.clone();
        bad[2]["rules"][0]["backendRefs"][0]["name"] = json!("nope");
        let e = compile(snap("v2", &bad, 1), Some(&v1)).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].path, "routes[2].rules[0].backendRefs[0].name");
        let mut dup = routes.clone();
        dup[1] = route("a", "x.test", "1");
        let e = compile(snap("v2", &dup, 1), Some(&v1)).unwrap_err();
        assert_eq!(e.errors[0].path, "routes[1].name", "{e}");
        // An unchanged route made invalid by a change elsewhere (its backend removed).
        let s = json!({"version": "v2", "backends": {"other": {"endpoints": ["127.0.0.1:1"]}},
            "routes": routes});
        let e = compile(serde_json::from_value(s).unwrap(), Some(&v1)).unwrap_err();
        assert_eq!(e.errors.len(), 3, "{e}");
        assert_eq!(e.errors[0].path, "routes[0].rules[0].backendRefs[0].name");
    }

    /// Sequences of changes (exact, wildcard and catch-all routes added, changed, removed,
    /// reordered): after each, the router built from the previous version's tables answers
    /// every host as one compiled from nothing.
    #[test]
    fn reused_router_tables_answer_as_a_full_build() {
        let hosts = |i: u64| match i % 9 {
            0 => json!(["*.w.test"]),
            1 => json!([]),
            2 => json!([format!("h{}.test", i % 5), format!("h{}.w.test", i % 3)]),
            _ => json!([format!("h{}.test", i % 7)]),
        };
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut routes: Vec<Value> = (0..12)
            .map(|i| {
                json!({"name": format!("r{i}"), "hostnames": hosts(i % 4 + 3), "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/{}", i % 3)}}],
                "backendRefs": [{"name": "b"}]}]})
            })
            .collect();
        let mut rt = compile(snap("v0", &routes, 1), None).unwrap();
        let mut names = 12;
        let probes: Vec<String> = (0..7)
            .map(|n| format!("h{n}.test"))
            .chain((0..3).map(|n| format!("h{n}.w.test")))
            .chain(["x.w.test".to_string(), "other.test".to_string()])
            .collect();
        let mut reused_tables = 0;
        for step in 1..120 {
            if step % 10 == 0 {
                // A burst: ten exact-host routes at once, more changed hosts than the router
                // scans for (it indexes every hostname then).
                for k in 0..10 {
                    let at = next() as usize % (routes.len() + 1);
                    routes.insert(
                        at,
                        json!({"name": format!("r{names}"), "hostnames": [format!("h{k}.test")],
                        "rules": [{"backendRefs": [{"name": "b"}]}]}),
                    );
                    names += 1;
                }
            }
            let i = next() as usize % routes.len();
            match next() % 5 {
                0 => {
                    routes.remove(i);
                }
                1 => {
                    routes.insert(
                        i,
                        json!({"name": format!("r{names}"), "hostnames": hosts(next()),
                        "rules": [{"backendRefs": [{"name": "b"}]}]}),
                    );
                    names += 1;
                }
                2 => routes[i]["hostnames"] = hosts(next()),
                3 if routes.len() > 2 => {
                    let j = (i + 1) % routes.len();
                    routes.swap(i, j)
                }
                _ => {
                    routes[i]["rules"][0]["matches"] = json!([{"path": {"type": "PathPrefix", "value": format!("/{}", next() % 3)}}])
                }
            }
            if routes.is_empty() {
                routes.push(json!({"name": "last", "rules": [{"backendRefs": [{"name": "b"}]}]}));
            }
            let s = snap(&format!("v{step}"), &routes, 1);
            if changed_exact_hosts_for(&s, &rt) {
                reused_tables += 1;
            }
            let next_rt = compile(s.clone(), Some(&rt)).unwrap();
            let fresh = compile(s, None).unwrap();
            for host in &probes {
                for path in ["/0", "/1", "/2", "/"] {
                    let headers = HeaderMap::new();
                    let view = RequestView {
                        host,
                        method: &Method::GET,
                        path,
                        query: None,
                        headers: &headers,
                        body: None,
                    };
                    let got = next_rt
                        .router
                        .find(&view)
                        .map(|r| (r.route.clone(), r.rule_index));
                    let want = fresh
                        .router
                        .find(&view)
                        .map(|r| (r.route.clone(), r.rule_index));
                    assert_eq!(got, want, "step {step}: {host}{path}");
                }
            }
            rt = next_rt;
        }
        // The sequence exercised both paths.
        assert!(reused_tables > 10 && reused_tables < 110, "{reused_tables}");
    }

    fn changed_exact_hosts_for(s: &weir_config::Snapshot, prev: &Runtime) -> bool {
        let unchanged = super::unchanged_routes(s, Some(&prev.snapshot));
        super::changed_exact_hosts(s, prev, &unchanged).is_some()
    }
}
