//! The pure compile step: custom resources + resolved Service endpoints + listener settings ->
//! one [`Snapshot`] and, per object, what happened to it.
//!
//! No Kubernetes API access here, no clocks, no randomness: the same inputs give the same
//! snapshot (and the same content-hash version) on every run and every replica.
//!
//! One invalid object never blocks the rest: it is left out of the snapshot and its problem is
//! reported with the field path inside the object (`spec.rules[0].matches[0].path`).

use crate::crd::{self, Backend, ProxyRoute, TelemetrySink};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use weir_config::{FieldError, Snapshot};

/// Placeholder in listener addresses replaced by each pod's IP when pushing (for setups where
/// pods share a network namespace, such as the e2e test). In a cluster, `0.0.0.0:8080` needs
/// no placeholder and every pod gets byte-identical snapshots.
pub const POD_IP_PLACEHOLDER: &str = "$(POD_IP)";

/// `namespace/name` of an object; also its name inside the snapshot.
pub type ObjKey = String;

/// `namespace/name`.
pub fn key(ns: &str, name: &str) -> ObjKey {
    format!("{ns}/{name}")
}

fn obj_key<K: kube::Resource>(o: &K) -> ObjKey {
    key(
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default(),
    )
}

/// One port of a Service (`spec.ports[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
}

/// One EndpointSlice of a Service, reduced to what compile needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slice {
    /// `(port name, port number)`.
    pub ports: Vec<(String, u16)>,
    /// `(addresses, ready)`; a missing `ready` condition counts as ready (Kubernetes semantics).
    pub endpoints: Vec<(Vec<String>, bool)>,
}

/// What the cluster says about Services, keyed by `namespace/service`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceIndex {
    pub services: BTreeMap<ObjKey, Vec<ServicePort>>,
    pub slices: BTreeMap<ObjKey, Vec<Slice>>,
}

/// What to compile.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub routes: &'a [ProxyRoute],
    pub backends: &'a [Backend],
    pub sinks: &'a [TelemetrySink],
    pub services: &'a ServiceIndex,
    pub listeners: &'a [weir_config::Listener],
}

/// The outcome for one route.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteOutcome {
    pub generation: Option<i64>,
    /// Spec problems (`Accepted=False`), paths relative to the object.
    pub invalid: Vec<FieldError>,
    /// Unresolvable backendRefs (`ResolvedRefs=False`).
    pub unresolved: Vec<FieldError>,
    /// Referenced backends (`ns/name`), deduplicated, in order of first reference.
    pub backends: Vec<ObjKey>,
    /// In the snapshot.
    pub included: bool,
}

/// Why a Backend has no or not all endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendProblem {
    /// The spec is invalid; left out of the snapshot.
    Invalid(Vec<FieldError>),
    /// The Service does not exist (kept in the snapshot with no endpoints).
    ServiceNotFound(String),
    /// The Service has no such port (kept with no endpoints).
    PortNotFound(String),
}

/// The outcome for one Backend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendOutcome {
    pub generation: Option<i64>,
    pub problem: Option<BackendProblem>,
    /// Resolved endpoint addresses.
    pub endpoints: Vec<String>,
    pub included: bool,
}

/// The outcome for one TelemetrySink.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkOutcome {
    pub generation: Option<i64>,
    pub invalid: Vec<FieldError>,
    pub included: bool,
}

/// The snapshot and every object's outcome.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Compiled {
    /// `version` is set to the content hash.
    pub snapshot: Snapshot,
    pub routes: BTreeMap<ObjKey, RouteOutcome>,
    pub backends: BTreeMap<ObjKey, BackendOutcome>,
    pub sinks: BTreeMap<ObjKey, SinkOutcome>,
    /// Problems with the operator's own settings (listeners); when set, the snapshot is empty
    /// of listeners and pods should not be pushed.
    pub global: Vec<FieldError>,
}

impl Compiled {
    /// Which generation of which object the snapshot contains (`kind:ns/name` -> generation).
    pub fn contents(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (k, r) in &self.routes {
            if r.included {
                out.insert(format!("ProxyRoute:{k}"), r.generation.unwrap_or(0));
            }
        }
        for (k, b) in &self.backends {
            if b.included {
                out.insert(format!("Backend:{k}"), b.generation.unwrap_or(0));
            }
        }
        for (k, s) in &self.sinks {
            if s.included {
                out.insert(format!("TelemetrySink:{k}"), s.generation.unwrap_or(0));
            }
        }
        out
    }
}

/// Rewrites a snapshot path (`routes[0].rules[1]…`, `backends["ns/x"].endpoints[0]`) into the
/// object's own path (`spec.rules[1]…`).
fn to_object_path(path: &str, prefix: &str) -> String {
    match path.strip_prefix(prefix) {
        Some("") => "spec".to_string(),
        Some(rest) => format!("spec{rest}"),
        None => path.to_string(),
    }
}

fn parse_duration(
    v: &Option<String>,
    path: &str,
    errs: &mut Vec<FieldError>,
) -> Option<weir_config::Duration> {
    let s = v.as_ref()?;
    match s.parse::<weir_config::Duration>() {
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(FieldError::new(path, e));
            None
        }
    }
}

/// Formats `ip:port`, bracketing IPv6 addresses.
fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Resolves a Service port to the ready endpoints' `ip:targetPort` addresses.
fn resolve_service(
    ns: &str,
    svc: &crd::ServiceRef,
    index: &ServiceIndex,
) -> Result<Vec<String>, BackendProblem> {
    let k = key(ns, &svc.name);
    let ports = index
        .services
        .get(&k)
        .ok_or_else(|| BackendProblem::ServiceNotFound(format!("Service {k} not found")))?;
    let port = ports.iter().find(|p| p.port == svc.port).ok_or_else(|| {
        BackendProblem::PortNotFound(format!("Service {k} has no port {}", svc.port))
    })?;
    let mut out = BTreeSet::new();
    for slice in index.slices.get(&k).into_iter().flatten() {
        let Some((_, target)) = slice.ports.iter().find(|(n, _)| *n == port.name) else {
            continue;
        };
        for (addrs, ready) in &slice.endpoints {
            if *ready {
                for a in addrs {
                    out.insert(host_port(a, *target));
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

fn compile_backend(
    b: &Backend,
    index: &ServiceIndex,
) -> (BackendOutcome, Option<weir_config::Backend>) {
    let ns = b.namespace().unwrap_or_default();
    let name = obj_key(b);
    let mut out = BackendOutcome {
        generation: b.meta().generation,
        ..Default::default()
    };
    let mut errs = Vec::new();
    let endpoints: Vec<serde_json::Value> = match (&b.spec.service, b.spec.endpoints.is_empty()) {
        (Some(_), false) => {
            errs.push(FieldError::new(
                "spec",
                "set either endpoints or service, not both",
            ));
            Vec::new()
        }
        (None, true) => {
            errs.push(FieldError::new(
                "spec",
                "set endpoints (static host:port list) or service",
            ));
            Vec::new()
        }
        (None, false) => b
            .spec
            .endpoints
            .iter()
            .map(|e| serde_json::json!({"address": e.address, "weight": e.weight}))
            .collect(),
        (Some(svc), true) => match resolve_service(&ns, svc, index) {
            Ok(eps) => eps.into_iter().map(serde_json::Value::String).collect(),
            Err(p) => {
                out.problem = Some(p);
                Vec::new()
            }
        },
    };
    // The Backend as the contract spells it; the contract parses and validates it, so every
    // setting (including ones passed through unchanged) is checked by the same rules the
    // dataplane applies, and errors carry the contract's field paths.
    let spec = &b.spec;
    let mut v = serde_json::Map::new();
    v.insert("endpoints".into(), endpoints.into());
    v.insert(
        "protocol".into(),
        serde_json::to_value(spec.protocol).unwrap_or_default(),
    );
    let mut put = |k: &str, val: Option<serde_json::Value>| {
        if let Some(val) = val {
            v.insert(k.to_string(), val);
        }
    };
    put(
        "timeouts",
        spec.timeouts
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok()),
    );
    put(
        "pool",
        spec.pool
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok()),
    );
    put("healthCheck", spec.health_check.clone());
    put("outlierDetection", spec.outlier_detection.clone());
    put("loadBalancer", spec.load_balancer.clone());
    put("circuitBreaker", spec.circuit_breaker.clone());
    put("retries", spec.retries.clone());
    put(
        "maxConcurrentRequests",
        spec.max_concurrent_requests.map(Into::into),
    );
    put("queueTimeout", spec.queue_timeout.clone().map(Into::into));
    let doc = serde_json::json!({ "backends": { name.clone(): v } });
    let prefix = format!("backends[{name:?}]");
    let map_errs = |e: weir_config::ConfigError, errs: &mut Vec<FieldError>| {
        errs.extend(
            e.errors
                .into_iter()
                .map(|fe| FieldError::new(to_object_path(&fe.path, &prefix), fe.message)),
        )
    };
    let parsed = serde_json::to_vec(&doc)
        .map_err(|e| weir_config::ConfigError::single("", e.to_string()))
        .and_then(|bytes| weir_config::parse_json(&bytes));
    let backend = match parsed {
        Ok(snap) => {
            if let Err(e) = snap.validate() {
                map_errs(e, &mut errs);
            }
            snap.backends.get(&name).cloned()
        }
        Err(e) => {
            map_errs(e, &mut errs);
            None
        }
    };
    match backend {
        Some(backend) if errs.is_empty() => {
            out.endpoints = backend
                .endpoints
                .iter()
                .map(|e| e.address.clone())
                .collect();
            out.included = true;
            (out, Some(backend))
        }
        _ => {
            out.problem = Some(BackendProblem::Invalid(errs));
            (out, None)
        }
    }
}

fn convert_header_filter(h: &Option<crd::HeaderFilter>) -> weir_config::HeaderFilter {
    let Some(h) = h else {
        return weir_config::HeaderFilter::default();
    };
    let conv = |v: &[crd::HeaderValue]| {
        v.iter()
            .map(|hv| weir_config::HeaderValue {
                name: hv.name.clone(),
                value: hv.value.clone(),
            })
            .collect()
    };
    weir_config::HeaderFilter {
        add: conv(&h.add),
        set: conv(&h.set),
        remove: h.remove.clone(),
    }
}

fn convert_value_match(v: &crd::ValueMatch) -> weir_config::ValueMatch {
    weir_config::ValueMatch {
        name: v.name.clone(),
        kind: match v.kind {
            crd::StringMatchType::Exact => weir_config::StringMatchType::Exact,
            crd::StringMatchType::RegularExpression => {
                weir_config::StringMatchType::RegularExpression
            }
        },
        value: v.value.clone(),
    }
}

fn convert_route(r: &ProxyRoute, errs: &mut Vec<FieldError>) -> weir_config::Route {
    let ns = r.namespace().unwrap_or_default();
    let rules = r
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| weir_config::Rule {
            matches: rule
                .matches
                .iter()
                .map(|m| weir_config::Match {
                    path: m.path.as_ref().map(|p| weir_config::PathMatch {
                        kind: match p.kind {
                            crd::PathMatchType::Exact => weir_config::PathMatchType::Exact,
                            crd::PathMatchType::PathPrefix => {
                                weir_config::PathMatchType::PathPrefix
                            }
                            crd::PathMatchType::Wildcard => weir_config::PathMatchType::Wildcard,
                            crd::PathMatchType::RegularExpression => {
                                weir_config::PathMatchType::RegularExpression
                            }
                        },
                        value: p.value.clone(),
                    }),
                    method: m.method.clone(),
                    headers: m.headers.iter().map(convert_value_match).collect(),
                    query_params: m.query_params.iter().map(convert_value_match).collect(),
                })
                .collect(),
            filters: rule
                .filters
                .as_ref()
                .map(|f| weir_config::Filters {
                    request_headers: convert_header_filter(&f.request_headers),
                    response_headers: convert_header_filter(&f.response_headers),
                    path: f.path.as_ref().map(|p| weir_config::PathRewrite {
                        strip_prefix: p.strip_prefix.clone(),
                        replace_prefix: p.replace_prefix.as_ref().map(|rp| {
                            weir_config::PrefixReplace {
                                from: rp.from.clone(),
                                to: rp.to.clone(),
                            }
                        }),
                        add_prefix: p.add_prefix.clone(),
                    }),
                })
                .unwrap_or_default(),
            backend_refs: rule
                .backend_refs
                .iter()
                .map(|b| weir_config::BackendRef {
                    name: key(b.namespace.as_deref().unwrap_or(&ns), &b.name),
                    weight: b.weight,
                })
                .collect(),
            timeout: parse_duration(&rule.timeout, &format!("spec.rules[{i}].timeout"), errs),
        })
        .collect();
    weir_config::Route {
        name: obj_key(r),
        hostnames: r.spec.hostnames.clone(),
        rules,
    }
}

fn is_ref_error(fe: &FieldError) -> bool {
    fe.path.contains(".backendRefs[") && fe.path.ends_with("].name")
}

/// Sort key for routes: oldest first, then `ns/name` (declaration order breaks precedence
/// ties in the dataplane, so this order must be stable).
fn route_order(r: &ProxyRoute) -> (Option<String>, ObjKey) {
    (
        r.meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        obj_key(r),
    )
}

/// Compiles everything into one snapshot. See the module docs.
pub fn compile(inputs: Inputs<'_>) -> Compiled {
    let mut out = Compiled::default();
    let mut snap = Snapshot {
        listeners: inputs.listeners.to_vec(),
        ..Default::default()
    };

    // `$(POD_IP)` is substituted per pod at push time; validate with a stand-in address.
    let mut probe = Snapshot {
        listeners: inputs
            .listeners
            .iter()
            .map(|l| weir_config::Listener {
                address: l.address.replace(POD_IP_PLACEHOLDER, "0.0.0.0"),
                ..l.clone()
            })
            .collect(),
        ..Default::default()
    };
    if let Err(e) = probe.validate() {
        out.global = e.errors;
    }
    probe.listeners.clear();

    for b in inputs.backends {
        let (outcome, backend) = compile_backend(b, inputs.services);
        let k = obj_key(b);
        if let Some(backend) = backend {
            snap.backends.insert(k.clone(), backend);
        }
        out.backends.insert(k, outcome);
    }

    let mut routes: Vec<&ProxyRoute> = inputs.routes.iter().collect();
    routes.sort_by_key(|r| route_order(r));
    for r in routes {
        let k = obj_key(r);
        let mut outcome = RouteOutcome {
            generation: r.meta().generation,
            ..Default::default()
        };
        let mut errs = Vec::new();
        let route = convert_route(r, &mut errs);
        for rule in &route.rules {
            for br in &rule.backend_refs {
                if !outcome.backends.contains(&br.name) {
                    outcome.backends.push(br.name.clone());
                }
            }
        }
        probe.routes = vec![route.clone()];
        probe.backends = snap.backends.clone();
        if let Err(e) = probe.validate() {
            for fe in e.errors {
                let fe = FieldError::new(to_object_path(&fe.path, "routes[0]"), fe.message);
                if is_ref_error(&fe) {
                    // Say why: missing, or present but invalid.
                    let msg = match fe
                        .message
                        .split('"')
                        .nth(1)
                        .and_then(|n| out.backends.get(n).map(|b| (n, b)))
                    {
                        Some((n, _)) => format!("Backend {n} is invalid"),
                        None => fe
                            .message
                            .replace("is not defined in backends", "not found"),
                    };
                    outcome.unresolved.push(FieldError::new(fe.path, msg));
                } else {
                    errs.push(fe);
                }
            }
        }
        outcome.invalid = errs;
        if outcome.invalid.is_empty() && outcome.unresolved.is_empty() {
            outcome.included = true;
            snap.routes.push(route);
        }
        out.routes.insert(k, outcome);
    }

    for s in inputs.sinks {
        let k = obj_key(s);
        let mut errs = Vec::new();
        let flush_interval =
            parse_duration(&s.spec.flush_interval, "spec.flushInterval", &mut errs);
        let mut sink = weir_config::Sink::new(
            match s.spec.kind {
                crd::SinkType::Otlp => weir_config::SinkType::Otlp,
                crd::SinkType::HttpJson => weir_config::SinkType::HttpJson,
                crd::SinkType::Syslog => weir_config::SinkType::Syslog,
            },
            s.spec.endpoint.clone(),
        );
        sink.batch_size = s.spec.batch_size.map(|n| n as usize);
        sink.flush_interval = flush_interval;
        let mut p = Snapshot::default();
        p.sinks.insert(k.clone(), sink.clone());
        if let Err(e) = p.validate() {
            let prefix = format!("sinks[{k:?}]");
            errs.extend(
                e.errors
                    .into_iter()
                    .map(|fe| FieldError::new(to_object_path(&fe.path, &prefix), fe.message)),
            );
        }
        let included = errs.is_empty();
        if included {
            snap.sinks.insert(k.clone(), sink);
        }
        out.sinks.insert(
            k,
            SinkOutcome {
                generation: s.meta().generation,
                invalid: errs,
                included,
            },
        );
    }

    snap.version = snap.content_hash();
    out.snapshot = snap;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::*;

    fn route(ns: &str, name: &str, yaml: &str) -> ProxyRoute {
        let spec: ProxyRouteSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut r = ProxyRoute::new(name, spec);
        r.metadata.namespace = Some(ns.into());
        r.metadata.generation = Some(1);
        r
    }

    fn backend(ns: &str, name: &str, yaml: &str) -> Backend {
        let spec: BackendSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let mut b = Backend::new(name, spec);
        b.metadata.namespace = Some(ns.into());
        b.metadata.generation = Some(3);
        b
    }

    fn listeners() -> Vec<weir_config::Listener> {
        serde_yaml_ng::from_str("[{name: http, address: '0.0.0.0:8080', protocol: http}]").unwrap()
    }

    fn run(routes: &[ProxyRoute], backends: &[Backend], services: &ServiceIndex) -> Compiled {
        compile(Inputs {
            routes,
            backends,
            sinks: &[],
            services,
            listeners: &listeners(),
        })
    }

    const GOOD: &str = "{hostnames: [a.example.com], rules: [{matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: be}]}]}";

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            route: &'static str,
            invalid: &'static [&'static str],
            unresolved: &'static [&'static str],
        }
        let cases = [
            Case { name: "good", route: GOOD, invalid: &[], unresolved: &[] },
            Case {
                name: "bad regex",
                route: "{rules: [{matches: [{path: {type: RegularExpression, value: '/a(['}}], backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].matches[0].path"],
                unresolved: &[],
            },
            Case {
                name: "bad header regex in second match",
                route: "{rules: [{matches: [{}, {headers: [{name: x, type: RegularExpression, value: '('}]}], backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].matches[1].headers[0].value"],
                unresolved: &[],
            },
            Case {
                name: "missing backend",
                route: "{rules: [{backendRefs: [{name: be}, {name: nope}]}]}",
                invalid: &[],
                unresolved: &["spec.rules[0].backendRefs[1].name"],
            },
            Case {
                name: "cross-namespace ref",
                route: "{rules: [{backendRefs: [{name: be, namespace: other}]}]}",
                invalid: &[],
                unresolved: &["spec.rules[0].backendRefs[0].name"],
            },
            Case {
                name: "bad timeout and zero weights",
                route: "{rules: [{timeout: 0s, backendRefs: [{name: be, weight: 0}]}]}",
                invalid: &["spec.rules[0].backendRefs", "spec.rules[0].timeout"],
                unresolved: &[],
            },
            Case {
                name: "unparsable timeout",
                route: "{rules: [{timeout: soon, backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].timeout"],
                unresolved: &[],
            },
            Case {
                name: "bad filter",
                route: "{rules: [{filters: {path: {}}, backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].filters.path"],
                unresolved: &[],
            },
        ];
        let be = backend("ns", "be", "{endpoints: [{address: '10.0.0.1:80'}]}");
        for c in &cases {
            let good = route("ns", "good", GOOD);
            let r = route("ns", "subject", c.route);
            let out = run(
                &[good, r],
                std::slice::from_ref(&be),
                &ServiceIndex::default(),
            );
            let o = &out.routes["ns/subject"];
            let mut inv: Vec<&str> = o.invalid.iter().map(|e| e.path.as_str()).collect();
            inv.sort();
            let unr: Vec<&str> = o.unresolved.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(inv, c.invalid, "{}: {:?}", c.name, o.invalid);
            assert_eq!(unr, c.unresolved, "{}: {:?}", c.name, o.unresolved);
            let ok = c.invalid.is_empty() && c.unresolved.is_empty();
            assert_eq!(o.included, ok, "{}", c.name);
            // The other route is always kept, and the snapshot is always valid.
            assert!(out.routes["ns/good"].included, "{}", c.name);
            let names: Vec<&str> = out
                .snapshot
                .routes
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            assert!(names.contains(&"ns/good"), "{}", c.name);
            assert_eq!(names.contains(&"ns/subject"), ok, "{}", c.name);
            out.snapshot.validate().unwrap();
        }
    }

    #[test]
    fn messages_name_the_problem() {
        let be = backend("ns", "be", "{endpoints: [{address: '10.0.0.1:80'}]}");
        let bad_be = backend("ns", "bad", "{endpoints: [{address: 'nohost'}]}");
        let r1 = route("ns", "r1", "{rules: [{backendRefs: [{name: missing}]}]}");
        let r2 = route("ns", "r2", "{rules: [{backendRefs: [{name: bad}]}]}");
        let out = run(&[r1, r2], &[be, bad_be], &ServiceIndex::default());
        assert_eq!(
            out.routes["ns/r1"].unresolved[0].message,
            "backend \"ns/missing\" not found"
        );
        assert_eq!(
            out.routes["ns/r2"].unresolved[0].message,
            "Backend ns/bad is invalid"
        );
        let b = &out.backends["ns/bad"];
        assert!(!b.included);
        match &b.problem {
            Some(BackendProblem::Invalid(e)) => assert_eq!(e[0].path, "spec.endpoints[0]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_is_a_stable_content_hash() {
        let be = backend("ns", "be", "{endpoints: [{address: '10.0.0.1:80'}]}");
        let a = run(
            &[route("ns", "a", GOOD)],
            std::slice::from_ref(&be),
            &ServiceIndex::default(),
        );
        let b = run(
            &[route("ns", "a", GOOD)],
            std::slice::from_ref(&be),
            &ServiceIndex::default(),
        );
        assert_eq!(a.snapshot.version, b.snapshot.version);
        assert!(a.snapshot.version.starts_with("sha256:"));
        assert_eq!(a.snapshot.version, a.snapshot.content_hash());
        let c = run(&[route("ns", "b", GOOD)], &[be], &ServiceIndex::default());
        assert_ne!(a.snapshot.version, c.snapshot.version);
        assert_eq!(
            a.contents().into_iter().collect::<Vec<_>>(),
            vec![
                ("Backend:ns/be".to_string(), 3),
                ("ProxyRoute:ns/a".to_string(), 1)
            ]
        );
    }

    #[test]
    fn service_backends_follow_endpoint_slices() {
        let be = backend("ns", "svc-be", "{service: {name: web, port: 80}}");
        let mut idx = ServiceIndex::default();
        let out = run(&[], std::slice::from_ref(&be), &idx);
        assert_eq!(
            out.backends["ns/svc-be"].problem,
            Some(BackendProblem::ServiceNotFound(
                "Service ns/web not found".into()
            ))
        );
        assert!(
            out.backends["ns/svc-be"].included,
            "kept, with no endpoints"
        );

        idx.services.insert(
            "ns/web".into(),
            vec![ServicePort {
                name: "http".into(),
                port: 80,
            }],
        );
        idx.slices.insert(
            "ns/web".into(),
            vec![
                Slice {
                    ports: vec![("http".into(), 8080), ("metrics".into(), 9090)],
                    endpoints: vec![
                        (vec!["10.1.0.2".into()], true),
                        (vec!["10.1.0.3".into()], false),
                        (vec!["fd00::1".into()], true),
                    ],
                },
                Slice {
                    ports: vec![("http".into(), 8080)],
                    endpoints: vec![(vec!["10.1.0.1".into()], true)],
                },
            ],
        );
        let out = run(&[], std::slice::from_ref(&be), &idx);
        let b = &out.backends["ns/svc-be"];
        assert_eq!(b.problem, None);
        assert_eq!(
            b.endpoints,
            vec!["10.1.0.1:8080", "10.1.0.2:8080", "[fd00::1]:8080"]
        );

        let be81 = backend("ns", "svc-be", "{service: {name: web, port: 81}}");
        let out = run(&[], &[be81], &idx);
        assert!(matches!(
            out.backends["ns/svc-be"].problem,
            Some(BackendProblem::PortNotFound(_))
        ));
    }

    #[test]
    fn backend_spec_problems() {
        let both = backend(
            "ns",
            "x",
            "{endpoints: [{address: 'a:1'}], service: {name: s, port: 1}}",
        );
        let none = backend("ns", "y", "{}");
        let dur = backend(
            "ns",
            "z",
            "{endpoints: [{address: 'a:1'}], timeouts: {connect: 0s}, pool: {idleTimeout: never}}",
        );
        let zero = backend(
            "ns",
            "w",
            "{endpoints: [{address: 'a:1'}], timeouts: {connect: 0s}}",
        );
        let hc = backend(
            "ns",
            "h",
            "{endpoints: [{address: 'a:1'}], healthCheck: {interval: often}}",
        );
        let out = run(&[], &[both, none, dur, zero, hc], &ServiceIndex::default());
        let paths = |k: &str| match &out.backends[k].problem {
            Some(BackendProblem::Invalid(e)) => {
                e.iter().map(|e| e.path.clone()).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(paths("ns/x"), vec!["spec"]);
        assert_eq!(paths("ns/y"), vec!["spec"]);
        // Parse errors stop at the first one (serde); semantic ones are all reported.
        assert_eq!(paths("ns/z"), vec!["spec.pool.idleTimeout"]);
        assert_eq!(paths("ns/w"), vec!["spec.timeouts.connect"]);
        assert_eq!(paths("ns/h"), vec!["spec.healthCheck.interval"]);
        assert!(out.snapshot.backends.is_empty());
    }

    #[test]
    fn routes_are_ordered_oldest_first_then_by_name() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let be = backend("ns", "be", "{endpoints: [{address: '10.0.0.1:80'}]}");
        let mut old = route("ns", "z-old", GOOD);
        old.metadata.creation_timestamp = Some(Time("2020-01-01T00:00:00Z".parse().unwrap()));
        let mut new = route("ns", "a-new", GOOD);
        new.metadata.creation_timestamp = Some(Time("2021-01-01T00:00:00Z".parse().unwrap()));
        let out = run(&[new, old], &[be], &ServiceIndex::default());
        let names: Vec<&str> = out
            .snapshot
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, vec!["ns/z-old", "ns/a-new"]);
    }
}
