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
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
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

/// The Secrets the objects reference, as read from the API server: `ns/name` -> its data, or
/// `None` when it does not exist. A referenced Secret absent from the index counts as not
/// found (the controller only compiles for pushing once every referenced Secret was read).
pub type SecretIndex = BTreeMap<ObjKey, Option<BTreeMap<String, Vec<u8>>>>;

/// Keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

/// What to compile. `routes` are `ProxyRoute`s or, from the controller, the reflector store's
/// `Arc<ProxyRoute>`s (so no route is copied for a compile).
#[derive(Debug)]
pub struct Inputs<'a, R = ProxyRoute> {
    pub routes: &'a [R],
    pub backends: &'a [Backend],
    pub sinks: &'a [TelemetrySink],
    pub services: &'a ServiceIndex,
    pub secrets: &'a SecretIndex,
    pub listeners: &'a [weir_config::Listener],
}

// By hand: derived `Clone`/`Copy` would ask `R: Copy`, and `Inputs` only holds references.
impl<R> Clone for Inputs<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for Inputs<'_, R> {}

/// Reads `key` of Secret `ns/name` as UTF-8; the error names the Secret and key, never a value.
pub(crate) fn secret_value(
    secrets: &SecretIndex,
    ns: &str,
    name: &str,
    data_key: &str,
    path: &str,
) -> Result<String, FieldError> {
    let k = key(ns, name);
    let Some(Some(data)) = secrets.get(&k) else {
        return Err(FieldError::new(path, format!("Secret {k} not found")));
    };
    let Some(bytes) = data.get(data_key) else {
        return Err(FieldError::new(
            path,
            format!("Secret {k} has no key {data_key:?}"),
        ));
    };
    String::from_utf8(bytes.clone()).map_err(|_| {
        FieldError::new(
            path,
            format!("Secret {k} key {data_key:?} is not UTF-8 text"),
        )
    })
}

/// Parses a PEM certificate chain and private key and checks that they belong together, so a
/// bad Secret is reported on its route instead of making every pod reject the snapshot.
pub(crate) fn check_tls_pair(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {TLS_CERT_KEY}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {TLS_CERT_KEY}"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("no private key in {TLS_KEY_KEY}: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key in {TLS_KEY_KEY}: {e}"))?;
    rustls::sign::CertifiedKey::new(certs, signing)
        .keys_match()
        .map_err(|e| format!("{TLS_KEY_KEY} does not belong to {TLS_CERT_KEY}: {e}"))
}

/// The outcome for one route.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteOutcome {
    pub generation: Option<i64>,
    /// Spec problems (`Accepted=False`), paths relative to the object.
    pub invalid: Vec<FieldError>,
    /// Unresolvable backendRefs (`ResolvedRefs=False`).
    pub unresolved: Vec<FieldError>,
    /// TLS certificate Secrets that are missing or unusable (`ResolvedRefs=False`; the route
    /// is still served, without that certificate).
    pub unresolved_secrets: Vec<FieldError>,
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
    /// The credential's Secret or key is missing; left out of the snapshot (requests would
    /// otherwise go upstream without their credential).
    UnresolvedRefs(Vec<FieldError>),
}

/// The outcome for one Backend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendOutcome {
    pub generation: Option<i64>,
    pub problem: Option<BackendProblem>,
    /// Resolved endpoint addresses.
    pub endpoints: Vec<String>,
    pub included: bool,
    /// References a Secret (status then carries `ResolvedRefs`).
    pub has_secret_refs: bool,
}

/// The outcome for one TelemetrySink.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkOutcome {
    pub generation: Option<i64>,
    pub invalid: Vec<FieldError>,
    /// The API key's Secret or key is missing (`ResolvedRefs=False`); left out of the snapshot.
    pub unresolved: Vec<FieldError>,
    pub included: bool,
    /// References a Secret (status then carries `ResolvedRefs`).
    pub has_secret_refs: bool,
    /// Included and sets `spec.tracing` (status then carries `TracingApplied`).
    pub has_tracing: bool,
    /// An older sink's different `spec.tracing` is the one applied: why this one's is not.
    pub tracing_conflict: Option<String>,
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
    /// Every Secret (`ns/name`) the objects reference, found or not: the controller watches
    /// exactly these.
    pub secret_refs: BTreeSet<ObjKey>,
    /// What the next [`compile_reusing`] may take over of each ProxyRoute compiled here.
    pub route_memo: BTreeMap<ObjKey, Arc<RouteMemo>>,
}

/// One ProxyRoute as this round compiled it: the input it depends on besides its Backends
/// (spec and generation; its name is the key), and its route in the snapshot when included.
/// Routes with `spec.tls` have none (they also depend on Secrets): they are always compiled.
#[derive(Debug, PartialEq)]
pub struct RouteMemo {
    spec: crd::ProxyRouteSpec,
    generation: Option<i64>,
    route: Option<Arc<weir_config::Route>>,
}

/// What a round may take over from the previous one: the routes whose spec, generation and
/// referenced Backends (their snapshot entry and their outcome) are unchanged. Measured
/// (BENCHMARKS.md, "the operator's compile at 10,000 routes"): converting and validating each
/// route (a JSON round trip through the contract) was most of the operator's CPU per change.
struct ReuseFrom<'a> {
    prev: &'a Compiled,
    /// Backends whose snapshot entry or outcome differs from `prev`'s (added and removed ones
    /// included).
    changed_backends: BTreeSet<&'a str>,
}

impl<'a> ReuseFrom<'a> {
    fn new(
        prev: &'a Compiled,
        backends: &'a BTreeMap<String, weir_config::Backend>,
        outcomes: &'a BTreeMap<ObjKey, BackendOutcome>,
    ) -> ReuseFrom<'a> {
        let names = prev
            .snapshot
            .backends
            .keys()
            .chain(backends.keys())
            .chain(prev.backends.keys())
            .chain(outcomes.keys());
        let changed_backends = names
            .filter(|k| {
                prev.snapshot.backends.get(*k) != backends.get(*k)
                    || prev.backends.get(*k) != outcomes.get(*k)
            })
            .map(String::as_str)
            .collect();
        ReuseFrom {
            prev,
            changed_backends,
        }
    }

    /// The previous outcome and memo of `r` when they still hold.
    fn route(&self, k: &str, r: &ProxyRoute) -> Option<(&'a RouteOutcome, &'a Arc<RouteMemo>)> {
        let memo = self.prev.route_memo.get(k)?;
        let outcome = self.prev.routes.get(k)?;
        let same = memo.generation == r.meta().generation
            && memo.spec == r.spec
            && !outcome
                .backends
                .iter()
                .any(|b| self.changed_backends.contains(b.as_str()));
        same.then_some((outcome, memo))
    }
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

/// Formats `ip:port`, bracketing IPv6 addresses.
fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// Resolves a Service port to the ready endpoints' `ip:targetPort` addresses.
pub(crate) fn resolve_service(
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
    secrets: &SecretIndex,
    refs: &mut BTreeSet<ObjKey>,
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
    put("timeouts", spec.timeouts.clone());
    put("pool", spec.pool.clone());
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
    let mut unresolved = Vec::new();
    if let Some(c) = &spec.credential {
        out.has_secret_refs = true;
        refs.insert(key(&ns, &c.secret_key_ref.name));
        match secret_value(
            secrets,
            &ns,
            &c.secret_key_ref.name,
            &c.secret_key_ref.key,
            "spec.credential.secretKeyRef",
        ) {
            Ok(value) => put(
                "credential",
                Some(
                    serde_json::json!({ "header": c.header, "value": value.trim_end_matches(['\r', '\n']) }),
                ),
            ),
            Err(e) => unresolved.push(e),
        }
    }
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
        Some(_) if errs.is_empty() && !unresolved.is_empty() => {
            out.problem = Some(BackendProblem::UnresolvedRefs(unresolved));
            (out, None)
        }
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

/// The route as the contract spells it. The CRD's rule, match and filter fields have the
/// contract's names and shapes, so the spec is passed through as JSON with only the
/// backendRefs rewritten (`namespace` + `name` -> `ns/name`) and operator-only fields
/// (`tls`) removed; the contract then parses and validates it, so new contract fields need
/// no conversion code and errors carry the contract's field paths.
fn route_json(r: &ProxyRoute) -> serde_json::Value {
    let ns = r.namespace().unwrap_or_default();
    let mut spec = serde_json::to_value(&r.spec).unwrap_or_default();
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("tls");
        // Which pods serve the route is the operator's business, not the dataplane's.
        obj.remove("workloadSelector");
        obj.remove("targetRefs");
        obj.insert("name".into(), obj_key(r).into());
        for rule in obj
            .get_mut("rules")
            .and_then(|v| v.as_array_mut())
            .into_iter()
            .flatten()
        {
            for br in rule
                .get_mut("backendRefs")
                .and_then(|v| v.as_array_mut())
                .into_iter()
                .flatten()
            {
                if let Some(b) = br.as_object_mut() {
                    let bns = b
                        .remove("namespace")
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| ns.clone());
                    let name = b.get("name").and_then(|v| v.as_str()).unwrap_or_default();
                    let full = key(&bns, name);
                    b.insert("name".into(), full.into());
                }
            }
            // KairosDB metric routes name Backends too: `name` (route's namespace) or `ns/name`.
            for mr in rule
                .pointer_mut("/kairos/metricRoutes")
                .and_then(|v| v.as_array_mut())
                .into_iter()
                .flatten()
            {
                if let Some(b) = mr.get_mut("backend") {
                    if let Some(name) = b.as_str().filter(|n| !n.contains('/')) {
                        *b = key(&ns, name).into();
                    }
                }
            }
        }
    }
    spec
}

/// Parses the route with the contract (types and unknown fields; validation comes later).
fn convert_route(
    r: &ProxyRoute,
    errs: &mut Vec<FieldError>,
) -> Option<std::sync::Arc<weir_config::Route>> {
    let doc = serde_json::json!({ "routes": [route_json(r)] });
    let parsed = serde_json::to_vec(&doc)
        .map_err(|e| weir_config::ConfigError::single("", e.to_string()))
        .and_then(|bytes| weir_config::parse_json(&bytes));
    match parsed {
        Ok(mut snap) if !snap.routes.is_empty() => Some(snap.routes.remove(0)),
        Ok(_) => None,
        Err(e) => {
            errs.extend(
                e.errors
                    .into_iter()
                    .map(|fe| FieldError::new(to_object_path(&fe.path, "routes[0]"), fe.message)),
            );
            None
        }
    }
}

fn is_ref_error(fe: &FieldError) -> bool {
    (fe.path.contains(".backendRefs[") && fe.path.ends_with("].name"))
        || (fe.path.contains(".kairos.metricRoutes[") && fe.path.ends_with("].backend"))
}

/// Sort key for routes: oldest first, then `ns/name` (declaration order breaks precedence
/// ties in the dataplane, so this order must be stable).
pub(crate) fn route_order(r: &ProxyRoute) -> (Option<String>, ObjKey) {
    (
        r.meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        obj_key(r),
    )
}

/// Sort key for any object: oldest first, then `ns/name`.
fn age_order<K: kube::Resource>(o: &K) -> (Option<String>, ObjKey) {
    (
        o.meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
        obj_key(o),
    )
}

/// The sink as the contract spells it (spec settings passed through, the API key from its
/// Secret), parsed and validated by the contract.
fn compile_sink(
    s: &TelemetrySink,
    secrets: &SecretIndex,
    refs: &mut BTreeSet<ObjKey>,
) -> (SinkOutcome, Option<weir_config::Sink>) {
    let ns = s.namespace().unwrap_or_default();
    let k = obj_key(s);
    let mut out = SinkOutcome {
        generation: s.meta().generation,
        ..Default::default()
    };
    let mut v: serde_json::Map<String, serde_json::Value> = s
        .spec
        .settings
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.insert(
        "type".into(),
        serde_json::to_value(s.spec.kind).unwrap_or_default(),
    );
    v.insert("endpoint".into(), s.spec.endpoint.clone().into());
    v.remove("apiKey");
    if let Some(r) = &s.spec.api_key_secret_ref {
        out.has_secret_refs = true;
        refs.insert(key(&ns, &r.name));
        match secret_value(secrets, &ns, &r.name, &r.key, "spec.apiKeySecretRef") {
            Ok(value) => {
                v.insert("apiKey".into(), value.trim_end_matches(['\r', '\n']).into());
            }
            Err(e) => out.unresolved.push(e),
        }
    }
    let mut doc = serde_json::json!({ "sinks": { k.clone(): v } });
    let mut errs = Vec::new();
    if let Some(t) = &s.spec.tracing {
        // Validated by the contract as the snapshot's own `tracing` section.
        doc["tracing"] = serde_json::to_value(t).unwrap_or_default();
    }
    let prefix = format!("sinks[{k:?}]");
    let map_errs = |e: weir_config::ConfigError, errs: &mut Vec<FieldError>| {
        errs.extend(e.errors.into_iter().map(|fe| {
            let path = if fe.path.starts_with("tracing") {
                format!("spec.{}", fe.path)
            } else {
                to_object_path(&fe.path, &prefix)
            };
            FieldError::new(path, fe.message)
        }))
    };
    let parsed = serde_json::to_vec(&doc)
        .map_err(|e| weir_config::ConfigError::single("", e.to_string()))
        .and_then(|bytes| weir_config::parse_json(&bytes));
    let sink = match parsed {
        Ok(snap) => {
            if let Err(e) = snap.validate() {
                map_errs(e, &mut errs);
            }
            let sink = snap.sinks.get(&k).cloned();
            if let Some(sink) = sink.as_ref().filter(|_| s.spec.tracing.is_some()) {
                if sink.kind != weir_config::SinkType::Otlp
                    || !sink.ships(weir_config::SinkSignal::Traces)
                {
                    errs.push(FieldError::new(
                        "spec.tracing",
                        "only valid for an otlp sink whose signals include traces",
                    ));
                }
            }
            sink
        }
        Err(e) => {
            map_errs(e, &mut errs);
            None
        }
    };
    out.invalid = errs;
    match sink {
        Some(sink) if out.invalid.is_empty() && out.unresolved.is_empty() => {
            out.included = true;
            (out, Some(sink))
        }
        _ => (out, None),
    }
}

/// Compiles everything into one snapshot. See the module docs.
pub fn compile<R: Borrow<ProxyRoute>>(inputs: Inputs<'_, R>) -> Compiled {
    compile_reusing(inputs, None)
}

/// [`compile`], taking over from `prev` (the previous round's result) each ProxyRoute whose
/// spec, generation and referenced Backends did not change, instead of converting and
/// validating it again: a one-route change compiles one route. The result is the one
/// [`compile`] gives (unit test `compile_reusing_equals_compile`); routes keep their `Arc`, so
/// the delta to the pods finds them unchanged without comparing them.
pub fn compile_reusing<R: Borrow<ProxyRoute>>(
    inputs: Inputs<'_, R>,
    prev: Option<&Compiled>,
) -> Compiled {
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
        let (outcome, backend) =
            compile_backend(b, inputs.services, inputs.secrets, &mut out.secret_refs);
        let k = obj_key(b);
        if let Some(backend) = backend {
            snap.backends.insert(k.clone(), backend);
        }
        out.backends.insert(k, outcome);
    }

    // Every route is validated against all backends: copied once, not once per route
    // (O(routes x backends) at scale).
    probe.backends = snap.backends.clone();
    let reuse = prev.map(|p| ReuseFrom::new(p, &snap.backends, &out.backends));
    let mut tls_certs: Vec<weir_config::Certificate> = Vec::new();
    let mut routes: Vec<&ProxyRoute> = inputs.routes.iter().map(Borrow::borrow).collect();
    // Cached: the key formats a timestamp and a name; `sort_by_key` made it O(n log n) times.
    routes.sort_by_cached_key(|r| route_order(r));
    for r in routes {
        let k = obj_key(r);
        if let Some((outcome, memo)) = reuse.as_ref().and_then(|u| u.route(&k, r)) {
            snap.routes.extend(memo.route.iter().cloned());
            out.route_memo.insert(k.clone(), memo.clone());
            out.routes.insert(k, outcome.clone());
            continue;
        }
        let mut outcome = RouteOutcome {
            generation: r.meta().generation,
            ..Default::default()
        };
        let mut errs = Vec::new();
        let ns = r.namespace().unwrap_or_default();
        for rule in &r.spec.rules {
            let kairos = rule
                .kairos
                .as_ref()
                .and_then(|k| k.get("metricRoutes"))
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("backend")?.as_str())
                .map(|n| {
                    if n.contains('/') {
                        n.to_string()
                    } else {
                        key(&ns, n)
                    }
                });
            let refs = rule
                .backend_refs
                .iter()
                .map(|br| key(br.namespace.as_deref().unwrap_or(&ns), &br.name))
                .chain(kairos);
            for bk in refs {
                if !outcome.backends.contains(&bk) {
                    outcome.backends.push(bk);
                }
            }
        }
        let route = convert_route(r, &mut errs);
        if let Some(route) = &route {
            probe.routes = vec![route.clone()];
        }
        if let Some(Err(e)) = route.as_ref().map(|_| probe.validate()) {
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
                        Some((n, b)) => match &b.problem {
                            Some(BackendProblem::UnresolvedRefs(_)) => {
                                format!("Backend {n} has unresolved Secret references")
                            }
                            _ => format!("Backend {n} is invalid"),
                        },
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
        let route = route.filter(|_| outcome.invalid.is_empty() && outcome.unresolved.is_empty());
        if let Some(route) = &route {
            outcome.included = true;
            snap.routes.push(route.clone());
        }
        if r.spec.tls.is_none() {
            out.route_memo.insert(
                k.clone(),
                Arc::new(RouteMemo {
                    spec: r.spec.clone(),
                    generation: r.meta().generation,
                    route,
                }),
            );
        }
        for (i, cr) in r
            .spec
            .tls
            .iter()
            .flat_map(|t| t.certificate_refs.iter())
            .enumerate()
        {
            out.secret_refs.insert(key(&ns, &cr.name));
            let path = format!("spec.tls.certificateRefs[{i}]");
            let pair =
                secret_value(inputs.secrets, &ns, &cr.name, TLS_CERT_KEY, &path).and_then(|c| {
                    Ok((
                        c,
                        secret_value(inputs.secrets, &ns, &cr.name, TLS_KEY_KEY, &path)?,
                    ))
                });
            let pair = pair.and_then(|(c, k)| {
                check_tls_pair(&c, &k).map(|_| (c, k)).map_err(|e| {
                    FieldError::new(&path, format!("Secret {}: {e}", key(&ns, &cr.name)))
                })
            });
            match pair {
                Ok(_) if !outcome.included => {}
                Ok((c, k)) => tls_certs.push(weir_config::Certificate {
                    cert_file: String::new(),
                    key_file: String::new(),
                    cert_pem: Some(weir_config::SecretString(c)),
                    key_pem: Some(weir_config::SecretString(k)),
                    hostnames: r.spec.hostnames.clone(),
                }),
                Err(e) => outcome.unresolved_secrets.push(e),
            }
        }
        out.routes.insert(k, outcome);
    }

    // Route certificates go to every https listener, after the listener's own ones.
    if !tls_certs.is_empty() {
        for l in &mut snap.listeners {
            if l.protocol == weir_config::ListenerProtocol::Https {
                l.tls
                    .get_or_insert_with(Default::default)
                    .certificates
                    .extend(tls_certs.iter().cloned());
            }
        }
    }

    // Sinks oldest first, as routes: the oldest sink that sets `tracing` decides the
    // snapshot's tracing section; newer sinks with different settings report the conflict.
    let mut sinks: Vec<&TelemetrySink> = inputs.sinks.iter().collect();
    sinks.sort_by_key(|s| age_order(*s));
    let mut tracing_from: Option<ObjKey> = None;
    for s in sinks {
        let (mut outcome, sink) = compile_sink(s, inputs.secrets, &mut out.secret_refs);
        let k = obj_key(s);
        if let Some(sink) = sink {
            if let Some(t) = &s.spec.tracing {
                outcome.has_tracing = true;
                match (&snap.tracing, &tracing_from) {
                    (Some(applied), Some(from)) if applied != t => {
                        outcome.tracing_conflict = Some(format!(
                            "spec.tracing differs from that of the older TelemetrySink {from}, \
                             which is applied"
                        ));
                    }
                    (Some(_), Some(_)) => {}
                    _ => {
                        snap.tracing = Some(t.clone());
                        tracing_from = Some(k.clone());
                    }
                }
            }
            snap.sinks.insert(k.clone(), sink);
        }
        out.sinks.insert(k, outcome);
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
        let spec: ProxyRouteSpec = yaml_serde::from_str(yaml).unwrap();
        let mut r = ProxyRoute::new(name, spec);
        r.metadata.namespace = Some(ns.into());
        r.metadata.generation = Some(1);
        r
    }

    fn backend(ns: &str, name: &str, yaml: &str) -> Backend {
        let spec: BackendSpec = yaml_serde::from_str(yaml).unwrap();
        let mut b = Backend::new(name, spec);
        b.metadata.namespace = Some(ns.into());
        b.metadata.generation = Some(3);
        b
    }

    fn listeners() -> Vec<weir_config::Listener> {
        yaml_serde::from_str("[{name: http, address: '0.0.0.0:8080', protocol: http}]").unwrap()
    }

    fn run(routes: &[ProxyRoute], backends: &[Backend], services: &ServiceIndex) -> Compiled {
        compile(Inputs {
            routes,
            backends,
            sinks: &[],
            services,
            secrets: &SecretIndex::default(),
            listeners: &listeners(),
        })
    }

    const GOOD: &str = "{hostnames: [a.example.com], rules: [{matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: be}]}]}";

    /// Each round compiled with the previous round's result gives exactly what a compile from
    /// nothing gives, whatever changed between rounds (a route's spec, its generation, a
    /// Backend it refers to or one it does not, a route added or removed, a Backend removed);
    /// and unchanged routes are taken over (the same `Arc`), changed ones compiled anew.
    #[test]
    fn compile_reusing_equals_compile() {
        let svc = ServiceIndex::default();
        let be = |addr: &str| {
            backend(
                "ns",
                "be",
                &format!("{{endpoints: [{{address: '{addr}'}}]}}"),
            )
        };
        let other = backend("ns", "other", "{endpoints: [{address: '10.0.0.9:80'}]}");
        let r = |name: &str, host: &str, to: &str| {
            route(
                "ns",
                name,
                &format!("{{hostnames: [{host}], rules: [{{backendRefs: [{{name: {to}}}]}}]}}"),
            )
        };
        let mut bumped = r("a", "a.test", "be");
        bumped.metadata.generation = Some(2);
        let rounds: Vec<(&str, Vec<ProxyRoute>, Vec<Backend>)> = vec![
            (
                "start",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b.test", "other"),
                    r("c", "c.test", "nope"),
                ],
                vec![be("10.0.0.1:80"), other.clone()],
            ),
            (
                "nothing changed",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b.test", "other"),
                    r("c", "c.test", "nope"),
                ],
                vec![be("10.0.0.1:80"), other.clone()],
            ),
            (
                "spec of b",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b2.test", "other"),
                    r("c", "c.test", "nope"),
                ],
                vec![be("10.0.0.1:80"), other.clone()],
            ),
            (
                "generation of a",
                vec![bumped, r("b", "b2.test", "other"), r("c", "c.test", "nope")],
                vec![be("10.0.0.1:80"), other.clone()],
            ),
            (
                "backend of a",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b2.test", "other"),
                    r("c", "c.test", "nope"),
                ],
                vec![be("10.0.0.2:80"), other.clone()],
            ),
            (
                "missing backend appears",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b2.test", "other"),
                    r("c", "c.test", "nope"),
                ],
                vec![
                    be("10.0.0.2:80"),
                    other.clone(),
                    backend("ns", "nope", "{endpoints: [{address: '10.0.0.3:80'}]}"),
                ],
            ),
            (
                "route added, backend removed",
                vec![
                    r("a", "a.test", "be"),
                    r("b", "b2.test", "other"),
                    r("c", "c.test", "nope"),
                    r("d", "d.test", "be"),
                ],
                vec![
                    be("10.0.0.2:80"),
                    backend("ns", "nope", "{endpoints: [{address: '10.0.0.3:80'}]}"),
                ],
            ),
            (
                "route removed",
                vec![r("a", "a.test", "be"), r("d", "d.test", "be")],
                vec![be("10.0.0.2:80")],
            ),
        ];
        let (secrets, listeners) = (SecretIndex::default(), listeners());
        let mut prev: Option<Compiled> = None;
        for (what, routes, backends) in rounds {
            let inputs = || Inputs {
                routes: &routes,
                backends: &backends,
                sinks: &[],
                services: &svc,
                secrets: &secrets,
                listeners: &listeners,
            };
            let fresh = compile(inputs());
            let reused = compile_reusing(inputs(), prev.as_ref());
            assert_eq!(reused, fresh, "{what}");
            if let Some(p) = &prev {
                // Unchanged routes: the previous round's very `Arc`.
                for route in &reused.snapshot.routes {
                    let before = p.snapshot.routes.iter().find(|o| o.name == route.name);
                    let shared = before.is_some_and(|o| Arc::ptr_eq(o, route));
                    let compiled_anew: &[&str] = match what {
                        "spec of b" => &["ns/b"],
                        "generation of a" | "backend of a" => &["ns/a"],
                        "missing backend appears" => &["ns/c"],
                        "route added, backend removed" => &["ns/d"],
                        _ => &[],
                    };
                    let expect = !compiled_anew.contains(&route.name.as_str());
                    assert_eq!(shared, expect, "{what}: {}", route.name);
                }
            }
            prev = Some(reused);
        }
    }

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

    fn secrets(entries: &[(&str, &[(&str, &str)])]) -> SecretIndex {
        entries
            .iter()
            .map(|(k, data)| {
                let d = data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect();
                (k.to_string(), Some(d))
            })
            .collect()
    }

    fn run_with(
        routes: &[ProxyRoute],
        backends: &[Backend],
        sinks: &[TelemetrySink],
        secrets: &SecretIndex,
        listeners: &[weir_config::Listener],
    ) -> Compiled {
        compile(Inputs {
            routes,
            backends,
            sinks,
            services: &ServiceIndex::default(),
            secrets,
            listeners,
        })
    }

    fn sink(ns: &str, name: &str, yaml: &str) -> TelemetrySink {
        let spec: TelemetrySinkSpec = yaml_serde::from_str(yaml).unwrap();
        let mut s = TelemetrySink::new(name, spec);
        s.metadata.namespace = Some(ns.into());
        s.metadata.generation = Some(1);
        s
    }

    #[test]
    fn secret_references_table() {
        let cert = rcgen::generate_simple_self_signed(vec!["tls.example.com".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["x.example.com".to_string()]).unwrap();
        let (crt, key) = (cert.cert.pem(), cert.signing_key.serialize_pem());
        let wrong_key = other.signing_key.serialize_pem();
        let idx = secrets(&[
            ("ns/token", &[("t", "Bearer abc\n")]),
            ("ns/tls", &[("tls.crt", &crt), ("tls.key", &key)]),
            ("ns/mismatch", &[("tls.crt", &crt), ("tls.key", &wrong_key)]),
            ("ns/sinkkey", &[("k", "s3cret")]),
        ]);
        let cred = |secret: &str, k: &str| {
            backend(
                "ns",
                "be",
                &format!("{{endpoints: [{{address: 'a:1'}}], credential: {{header: authorization, secretKeyRef: {{name: {secret}, key: {k}}}}}}}"),
            )
        };
        let https: Vec<weir_config::Listener> = yaml_serde::from_str(
            "[{name: http, address: '0.0.0.0:8080', protocol: http}, {name: https, address: '0.0.0.0:8443', protocol: https}]",
        )
        .unwrap();
        let tls_route = |secret: &str| {
            route(
                "ns",
                "r",
                &format!("{{hostnames: [tls.example.com], tls: {{certificateRefs: [{{name: {secret}}}]}}, rules: [{{backendRefs: [{{name: be}}]}}]}}"),
            )
        };
        let plain_be = backend("ns", "be", "{endpoints: [{address: 'a:1'}]}");

        // Credential: resolved, trailing newline dropped; the Secret is a watched reference.
        let out = run_with(&[], &[cred("token", "t")], &[], &idx, &listeners());
        let c = out.snapshot.backends["ns/be"].credential.clone().unwrap();
        assert_eq!(
            (c.header.as_str(), c.value.as_str()),
            ("authorization", "Bearer abc")
        );
        assert!(out.backends["ns/be"].has_secret_refs);
        assert_eq!(out.secret_refs.iter().collect::<Vec<_>>(), vec!["ns/token"]);
        // The value never shows in the outcome's Debug (what logs would print).
        assert!(!format!("{out:?}").contains("Bearer abc"));

        // Missing Secret / key: left out, reported with the field path; a route to it says why.
        for (secret, k, msg) in [
            ("nope", "t", "Secret ns/nope not found"),
            ("token", "other", "Secret ns/token has no key \"other\""),
        ] {
            let r = route("ns", "r", "{rules: [{backendRefs: [{name: be}]}]}");
            let out = run_with(&[r], &[cred(secret, k)], &[], &idx, &listeners());
            assert!(out.snapshot.backends.is_empty());
            match &out.backends["ns/be"].problem {
                Some(BackendProblem::UnresolvedRefs(e)) => {
                    assert_eq!(e[0].path, "spec.credential.secretKeyRef");
                    assert_eq!(e[0].message, msg);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                out.routes["ns/r"].unresolved[0].message,
                "Backend ns/be has unresolved Secret references"
            );
            assert!(out.secret_refs.contains(&format!("ns/{secret}")));
        }

        // TLS: the pair goes inline into every https listener, with the route's hostnames.
        let out = run_with(
            &[tls_route("tls")],
            std::slice::from_ref(&plain_be),
            &[],
            &idx,
            &https,
        );
        assert!(out.routes["ns/r"].unresolved_secrets.is_empty());
        assert!(out.snapshot.listeners[0].tls.is_none());
        let certs = &out.snapshot.listeners[1].tls.as_ref().unwrap().certificates;
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].hostnames, vec!["tls.example.com"]);
        assert_eq!(certs[0].cert_pem.as_ref().unwrap().0, crt);
        out.snapshot.validate().unwrap();
        assert!(!format!("{:?}", out.snapshot).contains("PRIVATE KEY"));
        assert!(!serde_json::to_string(&out.snapshot.redacted())
            .unwrap()
            .contains("PRIVATE KEY"));

        // A missing or broken TLS Secret: reported, the route is still served without it.
        for (secret, msg) in [
            ("gone", "Secret ns/gone not found"),
            ("token", "Secret ns/token has no key \"tls.crt\""),
            ("mismatch", "does not belong to"),
        ] {
            let out = run_with(
                &[tls_route(secret)],
                std::slice::from_ref(&plain_be),
                &[],
                &idx,
                &https,
            );
            let o = &out.routes["ns/r"];
            assert!(o.included, "{secret}");
            assert_eq!(o.unresolved_secrets[0].path, "spec.tls.certificateRefs[0]");
            assert!(
                o.unresolved_secrets[0].message.contains(msg),
                "{:?}",
                o.unresolved_secrets
            );
            assert!(out.snapshot.listeners[1].tls.is_none());
        }

        // Sink API key from a Secret; other settings pass through to the contract.
        let s = sink(
            "ns",
            "logs",
            "{type: httpJson, endpoint: 'http://127.0.0.1:9/x', batchSize: 10, apiKeySecretRef: {name: sinkkey, key: k}}",
        );
        let out = run_with(&[], &[], &[s], &idx, &listeners());
        let got = &out.snapshot.sinks["ns/logs"];
        assert_eq!(got.api_key.as_ref().unwrap().0, "s3cret");
        assert_eq!(got.batch_size, Some(10));
        assert!(out.sinks["ns/logs"].included && out.sinks["ns/logs"].has_secret_refs);
        let s = sink(
            "ns",
            "logs",
            "{type: httpJson, endpoint: 'http://127.0.0.1:9/x', apiKeySecretRef: {name: sinkkey, key: nope}}",
        );
        let out = run_with(&[], &[], &[s], &idx, &listeners());
        assert!(out.snapshot.sinks.is_empty());
        assert_eq!(
            out.sinks["ns/logs"].unresolved[0].path,
            "spec.apiKeySecretRef"
        );
        // Invalid settings: reported with the object's own path.
        let s = sink(
            "ns",
            "logs",
            "{type: httpJson, endpoint: 'http://127.0.0.1:9/x', batchSize: 0}",
        );
        let out = run_with(&[], &[], &[s], &idx, &listeners());
        assert_eq!(out.sinks["ns/logs"].invalid[0].path, "spec.batchSize");
    }

    /// One case per contract field exposed on ProxyRoute: a valid value reaches the snapshot
    /// unchanged, an invalid one is reported with the object's own field path.
    #[test]
    fn contract_rule_fields_pass_through() {
        struct Case {
            name: &'static str,
            route: &'static str,
            invalid: &'static [&'static str],
            check: fn(&weir_config::Route) -> bool,
        }
        let cases = [
            Case {
                name: "maxRequestBodyBytes",
                route: "{rules: [{maxRequestBodyBytes: 1024, backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.rules[0].max_request_body_bytes == Some(1024),
            },
            Case {
                name: "websocket",
                route: "{rules: [{websocket: {enabled: false}, backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.rules[0].websocket.as_ref().is_some_and(|w| !w.enabled),
            },
            Case {
                name: "cors",
                route: "{rules: [{cors: {allowOrigins: [{value: 'https://a.example.com'}], maxAge: 1m}, backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.rules[0].cors.as_ref().is_some_and(|c| c.allow_origins.len() == 1),
            },
            Case {
                name: "redirect without backendRefs",
                route: "{rules: [{redirect: {scheme: https, statusCode: 301}}]}",
                invalid: &[],
                check: |r| r.rules[0].redirect.is_some() && r.rules[0].backend_refs.is_empty(),
            },
            Case {
                name: "bad redirect",
                route: "{rules: [{redirect: {scheme: ftp}}]}",
                invalid: &["spec.rules[0].redirect.scheme"],
                check: |_| true,
            },
            Case {
                name: "directResponse",
                route: "{rules: [{directResponse: {status: 204}}]}",
                invalid: &[],
                check: |r| r.rules[0].direct_response.as_ref().is_some_and(|d| d.status == 204),
            },
            Case {
                name: "bad directResponse",
                route: "{rules: [{directResponse: {status: 99}}]}",
                invalid: &["spec.rules[0].directResponse.status"],
                check: |_| true,
            },
            Case {
                name: "rule and route rateLimit",
                route: "{rateLimit: {requestsPerUnit: 5}, rules: [{rateLimit: {requestsPerUnit: 10}, backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.rate_limit.is_some() && r.rules[0].rate_limit.is_some(),
            },
            Case {
                name: "bad rateLimit",
                route: "{rateLimit: {requestsPerUnit: 0}, rules: [{backendRefs: [{name: be}]}]}",
                invalid: &["spec.rateLimit.requestsPerUnit"],
                check: |_| true,
            },
            Case {
                name: "extAuth",
                route: "{extAuth: {url: 'http://auth:8080/check'}, rules: [{backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.ext_auth.is_some(),
            },
            Case {
                name: "bad rule extAuth",
                route: "{rules: [{extAuth: {url: 'http://auth:8080/', timeout: 0s}, backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].extAuth.timeout"],
                check: |_| true,
            },
            Case {
                name: "fields match",
                route: "{rules: [{matches: [{fields: [{jsonPath: 'metrics[].name', value: cpu}]}], backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| r.rules[0].matches[0].fields.len() == 1,
            },
            Case {
                name: "bad fields match",
                route: "{rules: [{matches: [{fields: [{jsonPath: 'a[', value: x}]}], backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].matches[0].fields[0].jsonPath"],
                check: |_| true,
            },
            Case {
                name: "kairos names Backends in the route's namespace",
                route: "{rules: [{kairos: {mode: multi, metricRoutes: [{value: cpu, backend: be}]}, backendRefs: [{name: be}]}]}",
                invalid: &[],
                check: |r| {
                    r.rules[0]
                        .kairos
                        .as_ref()
                        .is_some_and(|k| k.metric_routes[0].backend == "ns/be")
                },
            },
            Case {
                name: "unknown field inside a contract field",
                route: "{rules: [{cors: {allowOrigins: [], bogus: 1}, backendRefs: [{name: be}]}]}",
                invalid: &["spec.rules[0].cors.bogus"],
                check: |_| true,
            },
        ];
        let be = backend("ns", "be", "{endpoints: [{address: '10.0.0.1:80'}]}");
        for c in &cases {
            let r = route("ns", "r", c.route);
            let out = run(&[r], std::slice::from_ref(&be), &ServiceIndex::default());
            let o = &out.routes["ns/r"];
            let mut inv: Vec<&str> = o.invalid.iter().map(|e| e.path.as_str()).collect();
            inv.sort();
            inv.dedup();
            assert_eq!(inv, c.invalid, "{}: {:?}", c.name, o.invalid);
            assert!(o.unresolved.is_empty(), "{}: {:?}", c.name, o.unresolved);
            assert_eq!(o.included, c.invalid.is_empty(), "{}", c.name);
            if o.included {
                assert!(
                    (c.check)(&out.snapshot.routes[0]),
                    "{}: {:?}",
                    c.name,
                    out.snapshot.routes[0]
                );
                out.snapshot.validate().unwrap();
            }
        }
        // A metric route to a missing Backend is an unresolved reference, like a backendRef.
        let r = route(
            "ns",
            "r",
            "{rules: [{kairos: {mode: multi, metricRoutes: [{value: cpu, backend: nope}]}, backendRefs: [{name: be}]}]}",
        );
        let out = run(&[r], std::slice::from_ref(&be), &ServiceIndex::default());
        let o = &out.routes["ns/r"];
        assert_eq!(
            o.unresolved[0].path,
            "spec.rules[0].kairos.metricRoutes[0].backend"
        );
        assert_eq!(o.backends, vec!["ns/be", "ns/nope"]);
    }

    #[test]
    fn sink_tracing_sets_the_snapshot_section_oldest_sink_wins() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let aged = |name: &str, year: u32, yaml: &str| {
            let mut s = sink("ns", name, yaml);
            s.metadata.creation_timestamp =
                Some(Time(format!("{year}-01-01T00:00:00Z").parse().unwrap()));
            s
        };
        let otlp = |tracing: &str| {
            format!("{{type: otlp, endpoint: 'http://127.0.0.1:4317', tracing: {tracing}}}")
        };
        let quarter = otlp("{samplingRatio: 0.25, parentBased: false, serviceName: edge}");
        let tenth = otlp("{samplingRatio: 0.1}");
        let idx = SecretIndex::default();
        // (case, sinks, expected snapshot samplingRatio, expected conflicted sinks, invalid paths)
        type Case<'a> = (
            &'a str,
            Vec<TelemetrySink>,
            Option<f64>,
            Vec<&'a str>,
            Vec<(&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "no sink sets tracing",
                vec![sink("ns", "o", "{type: otlp, endpoint: 'http://127.0.0.1:4317'}")],
                None,
                vec![],
                vec![],
            ),
            ("one sink", vec![aged("o", 2020, &quarter)], Some(0.25), vec![], vec![]),
            (
                "oldest wins, newer differing one conflicts (name order does not matter)",
                vec![aged("a-new", 2021, &tenth), aged("z-old", 2020, &quarter)],
                Some(0.25),
                vec!["ns/a-new"],
                vec![],
            ),
            (
                "identical settings do not conflict",
                vec![aged("a", 2020, &quarter), aged("b", 2021, &quarter)],
                Some(0.25),
                vec![],
                vec![],
            ),
            (
                "an invalid older sink does not win",
                vec![
                    aged("old", 2019, &otlp("{samplingRatio: 1.5}")),
                    aged("new", 2021, &tenth),
                ],
                Some(0.1),
                vec![],
                vec![("ns/old", "spec.tracing.samplingRatio")],
            ),
            (
                "only on otlp sinks that ship traces",
                vec![
                    aged(
                        "logs",
                        2020,
                        "{type: otlp, endpoint: 'http://127.0.0.1:4317', signals: [logs], tracing: {samplingRatio: 0.5}}",
                    ),
                    aged(
                        "json",
                        2020,
                        "{type: httpJson, endpoint: 'http://127.0.0.1:9/x', tracing: {samplingRatio: 0.5}}",
                    ),
                ],
                None,
                vec![],
                vec![("ns/logs", "spec.tracing"), ("ns/json", "spec.tracing")],
            ),
        ];
        for (case, sinks, ratio, conflicted, invalid) in cases {
            let out = run_with(&[], &[], &sinks, &idx, &listeners());
            assert_eq!(
                out.snapshot.tracing.as_ref().and_then(|t| t.sampling_ratio),
                ratio,
                "{case}"
            );
            out.snapshot.validate().unwrap();
            for (k, o) in &out.sinks {
                let bad: Vec<&str> = invalid
                    .iter()
                    .filter(|(n, _)| n == k)
                    .map(|(_, p)| *p)
                    .collect();
                let paths: Vec<&str> = o.invalid.iter().map(|e| e.path.as_str()).collect();
                assert_eq!(paths, bad, "{case}: {k}");
                assert_eq!(o.included, bad.is_empty(), "{case}: {k}");
                assert_eq!(
                    o.tracing_conflict.is_some(),
                    conflicted.contains(&k.as_str()),
                    "{case}: {k} {:?}",
                    o.tracing_conflict
                );
            }
        }
        // The winner's other settings come along; the loser names it.
        let out = run_with(
            &[],
            &[],
            &[aged("a-new", 2021, &tenth), aged("z-old", 2020, &quarter)],
            &idx,
            &listeners(),
        );
        let t = out.snapshot.tracing.as_ref().unwrap();
        assert_eq!(
            (t.parent_based, t.service_name.as_deref()),
            (Some(false), Some("edge"))
        );
        assert!(out.sinks["ns/z-old"].has_tracing);
        let msg = out.sinks["ns/a-new"].tracing_conflict.as_deref().unwrap();
        assert!(msg.contains("ns/z-old"), "{msg}");
        // The loser's status says so; the winner's says it applies.
        let pods = crate::status::PodProgress::default();
        let st =
            crate::status::sink_status("ns/a-new", &out.sinks["ns/a-new"], &pods, None, "t", false);
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "TracingApplied")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Conflicted")
        );
        assert!(c.message.contains("ns/z-old"), "{}", c.message);
        let st =
            crate::status::sink_status("ns/z-old", &out.sinks["ns/z-old"], &pods, None, "t", false);
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "TracingApplied")
            .unwrap();
        assert_eq!(c.status, "True");
    }
}
