//! Snapshot deltas: the body of the dataplane's `PATCH /config`.
//!
//! A single-route change at 10,000 routes was a 2 MB `PUT /config` to every pod (BENCHMARKS.md,
//! "The control plane at scale"). A [`Delta`] carries only the routes and backends that changed
//! between two versions, with the version it applies to (`baseVersion`): the pod answers 409
//! when it runs something else, and the operator falls back to a full `PUT`.
//!
//! Both sides use this module: the operator computes a delta with [`Delta::between`], the
//! dataplane applies it with [`Delta::apply`] to the snapshot it runs and then validates and
//! compiles the result whole, exactly as a `PUT` of that result. So a delta can never let
//! through what a full snapshot would not, and the last good config keeps serving when the
//! result is rejected.
//!
//! Only `routes` and `backends` travel as changes (they are what grows with the cluster).
//! Listeners, sinks and tracing are small and rarely change; when they differ,
//! [`Delta::between`] returns `None` and the full snapshot is sent. (Listeners also carry the
//! per-pod `$(POD_IP)` substitution, so leaving them out keeps one delta body for every pod.)

use crate::{Backend, ConfigError, Errors, Route, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The changes from the snapshot `base_version` to the snapshot `version`.
///
/// Wire format (JSON, camelCase, unknown fields rejected):
/// `{"baseVersion", "version", "routes": [{"after", "route"}], "removeRoutes": [name],
/// "backends": {name: Backend}, "removeBackends": [name]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delta {
    /// The version the pod must be running for the delta to apply.
    pub base_version: String,
    /// The version of the result.
    pub version: String,
    /// Routes added or changed, in the order of the new snapshot. Each replaces the route of
    /// the same name (if any) and is placed right after `after`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteChange>,
    /// Names of the routes removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_routes: Vec<String>,
    /// Backends added or changed, whole.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, Backend>,
    /// Names of the backends removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_backends: Vec<String>,
}

/// One added or changed route and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteChange {
    /// The name of the route it follows in the new snapshot; absent: it comes first.
    /// (Declaration order breaks precedence ties, so the order must be kept exactly.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(with = "crate::model::shared::one")]
    pub route: Arc<Route>,
}

impl Delta {
    /// The delta from `old` to `new`, or `None` when a delta cannot express the change and the
    /// whole snapshot must be sent: listeners, sinks or tracing differ, or the routes that both
    /// keep changed their relative order.
    ///
    /// Cost: one equality check per route and backend (no serialization), a few milliseconds
    /// at 10,000 routes.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Option<Delta> {
        if old.listeners != new.listeners || old.sinks != new.sinks || old.tracing != new.tracing {
            return None;
        }
        let old_routes: HashMap<&str, &Arc<Route>> =
            old.routes.iter().map(|r| (r.name.as_str(), r)).collect();
        let new_names: HashSet<&str> = new.routes.iter().map(|r| r.name.as_str()).collect();
        if old_routes.len() != old.routes.len() || new_names.len() != new.routes.len() {
            return None; // duplicate names: not a valid snapshot, let the full path report it
        }
        let mut routes = Vec::new();
        let mut kept_new_order = Vec::new();
        for (i, r) in new.routes.iter().enumerate() {
            match old_routes.get(r.name.as_str()) {
                Some(o) if crate::same_route(o, r) => kept_new_order.push(r.name.as_str()),
                _ => routes.push(RouteChange {
                    after: i.checked_sub(1).map(|p| new.routes[p].name.clone()),
                    route: r.clone(),
                }),
            }
        }
        let changed: HashSet<&str> = routes.iter().map(|c| c.route.name.as_str()).collect();
        let kept_old_order = old
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| new_names.contains(n) && !changed.contains(n));
        if !kept_old_order.eq(kept_new_order.iter().copied()) {
            return None;
        }
        let remove_routes = old
            .routes
            .iter()
            .filter(|r| !new_names.contains(r.name.as_str()))
            .map(|r| r.name.clone())
            .collect();
        let backends = new
            .backends
            .iter()
            .filter(|(k, b)| old.backends.get(*k) != Some(b))
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        let remove_backends = old
            .backends
            .keys()
            .filter(|k| !new.backends.contains_key(*k))
            .cloned()
            .collect();
        Some(Delta {
            base_version: old.version.clone(),
            version: new.version.clone(),
            routes,
            remove_routes,
            backends,
            remove_backends,
        })
    }

    /// True when the delta changes nothing but the version.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.remove_routes.is_empty()
            && self.backends.is_empty()
            && self.remove_backends.is_empty()
    }

    /// The snapshot this delta makes of `base` (which must be the `baseVersion` snapshot; the
    /// caller checks the version). Only the delta's own consistency is checked here (names it
    /// refers to must exist, field paths name the delta's fields); the result still has to be
    /// validated whole ([`Snapshot::validate`]).
    pub fn apply(&self, base: &Snapshot) -> Result<Snapshot, ConfigError> {
        let mut errs = Errors::default();
        // Only needed to check removals: a one-route change hashes no base name here.
        let base_names: foldhash::HashSet<&str> = match self.remove_routes.is_empty() {
            true => Default::default(),
            false => base.routes.iter().map(|r| r.name.as_str()).collect(),
        };
        for (i, n) in self.remove_routes.iter().enumerate() {
            if !base_names.contains(n.as_str()) {
                errs.push(
                    format!("removeRoutes[{i}]"),
                    format!("no route {n:?} in version {}", self.base_version),
                );
            }
        }
        for (i, n) in self.remove_backends.iter().enumerate() {
            if !base.backends.contains_key(n) {
                errs.push(
                    format!("removeBackends[{i}]"),
                    format!("no backend {n:?} in version {}", self.base_version),
                );
            } else if self.backends.contains_key(n) {
                errs.push(
                    format!("removeBackends[{i}]"),
                    format!("backend {n:?} is also in backends"),
                );
            }
        }
        // Routes leaving their place: removed, or replaced (they come back at their `after`).
        // Looked up once per base route: foldhash, not SipHash (names come from the
        // authenticated operator; SipHash of 10,000 names was ~8% of a one-route PATCH).
        let mut out_of_place: foldhash::HashSet<&str> =
            self.remove_routes.iter().map(String::as_str).collect();
        // `after` -> the change placed there; each place holds one route.
        let mut chain: HashMap<Option<&str>, usize> = HashMap::new();
        for (i, c) in self.routes.iter().enumerate() {
            if !out_of_place.insert(c.route.name.as_str()) {
                errs.push(
                    format!("routes[{i}].route.name"),
                    format!("route {:?} is changed twice or also removed", c.route.name),
                );
            }
            if chain.insert(c.after.as_deref(), i).is_some() {
                errs.push(
                    format!("routes[{i}].after"),
                    format!("two routes placed after {:?}", c.after),
                );
            }
        }
        std::mem::take(&mut errs).into_result()?;

        // One pass over the base: each kept route, then the chain of changes that follows it.
        let mut placed = vec![false; self.routes.len()];
        let mut routes = Vec::with_capacity(base.routes.len() + self.routes.len());
        follow(None, &mut chain, &self.routes, &mut placed, &mut routes);
        for r in &base.routes {
            if !out_of_place.contains(r.name.as_str()) {
                routes.push(r);
                follow(
                    Some(&r.name),
                    &mut chain,
                    &self.routes,
                    &mut placed,
                    &mut routes,
                );
            }
        }
        for (i, done) in placed.iter().enumerate() {
            if !done {
                errs.push(
                    format!("routes[{i}].after"),
                    format!(
                        "no route {:?} to follow in version {} or in this delta",
                        self.routes[i].after, self.base_version
                    ),
                );
            }
        }
        errs.into_result()?;
        // Pointer copies: the new version shares every route it did not change with the base.
        let routes = routes.into_iter().cloned().collect();

        let mut backends = base.backends.clone();
        for n in &self.remove_backends {
            backends.remove(n);
        }
        backends.extend(self.backends.iter().map(|(k, b)| (k.clone(), b.clone())));
        Ok(Snapshot {
            version: self.version.clone(),
            listeners: base.listeners.clone(),
            routes,
            backends,
            sinks: base.sinks.clone(),
            tracing: base.tracing.clone(),
        })
    }
}

/// Appends the changes placed after `at`, then those placed after each of them, in turn.
fn follow<'a>(
    mut at: Option<&'a str>,
    chain: &mut HashMap<Option<&'a str>, usize>,
    changes: &'a [RouteChange],
    placed: &mut [bool],
    out: &mut Vec<&'a Arc<Route>>,
) {
    while let Some(i) = chain.remove(&at) {
        placed[i] = true;
        out.push(&changes[i].route);
        at = Some(&changes[i].route.name);
    }
}

/// Parses a JSON delta; errors name the field path (`routes[0].route.rules[0]…`).
pub fn parse_delta_json(bytes: &[u8]) -> Result<Delta, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let d: Delta = serde_path_to_error::deserialize(&mut de).map_err(crate::parse_error)?;
    de.end()
        .map_err(|e| ConfigError::single("", e.to_string()))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(routes: &[(&str, &str)], backends: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for b in backends {
            s.backends.insert(
                b.to_string(),
                serde_json::from_value(
                    serde_json::json!({"endpoints": [{"address": "127.0.0.1:1"}]}),
                )
                .unwrap(),
            );
        }
        for (name, backend) in routes {
            s.routes.push(Arc::new(
                serde_json::from_value(serde_json::json!({
                    "name": name, "hostnames": [format!("{name}.test")],
                    "rules": [{"backendRefs": [{"name": backend}]}],
                }))
                .unwrap(),
            ));
        }
        s.version = s.content_hash();
        s
    }

    /// Every delta the operator computes applies back to exactly the new snapshot, through
    /// its JSON form, whatever was added, changed, removed or reordered around the change.
    #[test]
    fn between_then_apply_gives_the_new_snapshot() {
        let old = snap(
            &[("a", "x"), ("b", "x"), ("c", "y"), ("d", "x")],
            &["x", "y"],
        );
        let cases = [
            (
                "one changed",
                snap(
                    &[("a", "x"), ("b", "y"), ("c", "y"), ("d", "x")],
                    &["x", "y"],
                ),
            ),
            (
                "added first",
                snap(
                    &[("n", "x"), ("a", "x"), ("b", "x"), ("c", "y"), ("d", "x")],
                    &["x", "y"],
                ),
            ),
            (
                "added in the middle, two in a row",
                snap(
                    &[
                        ("a", "x"),
                        ("n", "x"),
                        ("m", "y"),
                        ("b", "x"),
                        ("c", "y"),
                        ("d", "x"),
                    ],
                    &["x", "y"],
                ),
            ),
            (
                "added last",
                snap(
                    &[("a", "x"), ("b", "x"), ("c", "y"), ("d", "x"), ("n", "y")],
                    &["x", "y"],
                ),
            ),
            (
                "removed first and last",
                snap(&[("b", "x"), ("c", "y")], &["x", "y"]),
            ),
            (
                "changed and moved",
                snap(
                    &[("c", "x"), ("a", "x"), ("b", "x"), ("d", "x")],
                    &["x", "y"],
                ),
            ),
            (
                "backend added and removed",
                snap(
                    &[("a", "z"), ("b", "x"), ("c", "z"), ("d", "x")],
                    &["x", "z"],
                ),
            ),
            ("everything removed", snap(&[], &[])),
            ("nothing changed", old.clone()),
        ];
        for (what, new) in cases {
            let d = Delta::between(&old, &new).unwrap_or_else(|| panic!("{what}: no delta"));
            assert_eq!(d.base_version, old.version, "{what}");
            let wire = serde_json::to_vec(&d).unwrap();
            let back = parse_delta_json(&wire).unwrap();
            assert_eq!(back, d, "{what}");
            let got = back.apply(&old).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got, new, "{what}");
        }
    }

    #[test]
    fn only_the_changes_travel() {
        let old = snap(&[("a", "x"), ("b", "x"), ("c", "y")], &["x", "y"]);
        let new = snap(&[("a", "x"), ("b", "y"), ("c", "y")], &["x", "y"]);
        let d = Delta::between(&old, &new).unwrap();
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.routes[0].route.name, "b");
        assert_eq!(d.routes[0].after.as_deref(), Some("a"));
        assert!(d.remove_routes.is_empty() && d.backends.is_empty());
        assert!(!d.is_empty());
        assert!(Delta::between(&old, &old).unwrap().is_empty());
    }

    /// Kept routes in another relative order, or other listeners: the full snapshot goes.
    #[test]
    fn what_a_delta_cannot_say_gives_none() {
        let old = snap(&[("a", "x"), ("b", "x"), ("c", "x")], &["x"]);
        let swapped = snap(&[("b", "x"), ("a", "x"), ("c", "x")], &["x"]);
        // A changed route may move ("changed and moved" above); unchanged ones that trade
        // places cannot be said (the operator's order, oldest first then by name, never does).
        assert!(Delta::between(&old, &swapped).is_none());
        let reversed = snap(&[("c", "x"), ("b", "x"), ("a", "x")], &["x"]);
        assert!(Delta::between(&old, &reversed).is_none());
        let mut listeners = old.clone();
        listeners.listeners = vec![serde_json::from_value(
            serde_json::json!({"name": "h", "address": "127.0.0.1:80", "protocol": "http"}),
        )
        .unwrap()];
        assert!(Delta::between(&old, &listeners).is_none());
    }

    /// A delta that names what the base does not have is refused with the delta's field path.
    #[test]
    fn inconsistent_deltas_name_the_field() {
        let base = snap(&[("a", "x"), ("b", "x")], &["x"]);
        let d: Delta = parse_delta_json(
            br#"{"baseVersion": "v1", "version": "v2",
                 "routes": [{"after": "zz", "route": {"name": "n", "rules": []}}],
                 "removeRoutes": ["gone"], "removeBackends": ["nope"]}"#,
        )
        .unwrap();
        let e = d.apply(&base).unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["removeRoutes[0]", "removeBackends[0]"], "{e}");
        let d: Delta = parse_delta_json(
            br#"{"baseVersion": "v1", "version": "v2",
                 "routes": [{"after": "zz", "route": {"name": "n", "rules": []}}]}"#,
        )
        .unwrap();
        let e = d.apply(&base).unwrap_err();
        assert_eq!(e.errors[0].path, "routes[0].after", "{e}");
        assert!(e.errors[0].message.contains("\"zz\""), "{e}");
        let d: Delta = parse_delta_json(
            br#"{"baseVersion": "v1", "version": "v2",
                 "routes": [{"after": "a", "route": {"name": "n", "rules": []}},
                            {"after": "a", "route": {"name": "m", "rules": []}}]}"#,
        )
        .unwrap();
        assert_eq!(
            d.apply(&base).unwrap_err().errors[0].path,
            "routes[1].after"
        );
        let e = parse_delta_json(br#"{"baseVersion": "v1", "version": "v2", "listeners": []}"#)
            .unwrap_err();
        assert!(e.errors[0].message.contains("unknown field"), "{e}");
        let e = parse_delta_json(
            br#"{"baseVersion": "v1", "version": "v2", "routes": [{"route": {"name": "n", "rules": [{"bogus": 1}]}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.errors[0].path, "routes[0].route.rules[0].bogus", "{e}");
    }
}
