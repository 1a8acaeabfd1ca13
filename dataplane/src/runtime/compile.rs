//! `Snapshot -> Runtime`: the compiled tables one config version serves with.

use crate::policy::filters::HeaderOps;
use crate::policy::rule::{RuleRt, Target};
use crate::route::router::{Reuse, RouteConds, Router};
use crate::runtime::reuse;
use crate::telemetry::metrics::{metrics, ListenerMetrics, RouteMetrics};
use crate::upstream::backend::BackendRt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use weir_config::{ConfigError, Errors, Http3Config, ListenerProtocol, Snapshot};

/// One listener's compiled settings.
#[derive(Debug, Clone)]
pub struct ListenerRt {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// QUIC endpoint settings when HTTP/3 is on.
    pub quic: Option<QuicRt>,
    /// `Alt-Svc` value advertised on the TCP side when HTTP/3 is on.
    pub alt_svc: Option<http::HeaderValue>,
    /// Connection metric handles of the TCP side (`tcp` or `tls`).
    pub tcp_metrics: ListenerMetrics,
    /// Connection metric handles of the QUIC side, when HTTP/3 is on.
    pub quic_metrics: Option<ListenerMetrics>,
    /// Request limits and timeouts (see [`crate::http::limits`]).
    pub limits: weir_config::ListenerLimits,
    /// HTTP/1.1 + HTTP/2 connection builder configured with `limits`.
    pub http: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
}

/// HTTP/3 settings of a listener, ready for quinn.
#[derive(Debug, Clone)]
pub struct QuicRt {
    pub server_config: quinn::ServerConfig,
    pub settings: Http3Config,
}

/// Everything one config version needs to serve; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub version: String,
    /// When this version was first applied; a re-apply of the same version (a certificate
    /// reload) keeps it, so the status page says how long the config has been running.
    pub applied_at: std::time::SystemTime,
    pub router: Router,
    /// Per-listener routers, only when some route is bound to listeners (`routes[].listeners`);
    /// empty otherwise and `router` serves every listener.
    pub listener_routers: HashMap<String, Router>,
    pub backends: HashMap<String, Arc<BackendRt>>,
    /// The compiled form of each route, in the order of `snapshot.routes`; the next version
    /// keeps those of its unchanged routes (see [`compile`]).
    pub routes: Vec<CompiledRoute>,
    /// How many routes this version took compiled from the previous one, and how many it
    /// compiled (`config applied` log line, tests).
    pub reuse: ReuseCounts,
    pub listeners: Vec<ListenerRt>,
    /// The certificate files as they were when this runtime read them.
    pub cert_stamps: Vec<CertStamp>,
    /// Rate-limit and ext-auth state, carried into the next version where unchanged.
    pub policies: crate::policy::stages::PolicyState,
    /// Something before the upstream encoder may read the request's `traceparent` or
    /// `tracestate` (a route's header condition names one, or a rule has a stage that reads
    /// request headers: rate limit, external auth, KairosDB): then the proxy's trace context
    /// goes into the request's map as it arrives, so they see it. Otherwise the upstream
    /// encoder writes it ([`crate::http::headers::Added::set_trace`]). Request filters and
    /// mirrors see it either way (the added fields are merged into the map before them).
    pub trace_in_map: bool,
}

impl Runtime {
    /// The routing table of the routes served on `listener`.
    pub fn router_for(&self, listener: &str) -> &Router {
        self.listener_routers.get(listener).unwrap_or(&self.router)
    }
}

/// One route, compiled: its rules' runtime (backends, filters, policy stages, metric handles)
/// and its match conditions (regexes included).
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Shared (`Arc<[_]>`): a kept route is taken into the next version, and into the
    /// router's input, as two reference counts rather than a copied list.
    pub rules: Arc<[Arc<RuleRt>]>,
    pub conds: Arc<RouteConds>,
}

/// Routes taken compiled from the previous version, and routes compiled anew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReuseCounts {
    pub reused: usize,
    pub compiled: usize,
}

/// (path, length and modification time) of a certificate or key file.
pub type CertStamp = (String, Option<(u64, std::time::SystemTime)>);

/// Stamps of every certificate and key file a snapshot names.
pub fn cert_stamps(snap: &Snapshot) -> Vec<CertStamp> {
    snap.listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.certificates.iter())
        .flat_map(|c| [&c.cert_file, &c.key_file])
        // Inline (`certPem`/`keyPem`) certificates have no files to watch.
        .filter(|f| !f.is_empty())
        .map(|f| {
            let meta = std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (f.clone(), meta)
        })
        .collect()
}

/// Validates and compiles a snapshot. `prev` lets unchanged backends keep their runtime (warm
/// pools, health) and unchanged routes their compiled form (see [`crate::runtime::reuse`]).
/// Reads certificate files; touches nothing else outside the process.
pub fn compile(snapshot: Snapshot, prev: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    // Which routes are equal to the previous version's route of the same name: their
    // validation and compiled form carry over (see `runtime::reuse`).
    let unchanged = reuse::unchanged_routes(&snapshot, prev.map(|p| p.snapshot.as_ref()));
    reuse::validate(&snapshot, prev.map(|p| p.snapshot.as_ref()), &unchanged)?;
    let mut errs = Errors::default();
    // Taken before the files are read, so a change during the read is seen later.
    let cert_stamps = cert_stamps(&snapshot);

    let mut listeners = Vec::new();
    for (i, l) in snapshot.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Ok(address) = l.address.parse::<SocketAddr>() else {
            continue; // validate() reported it
        };
        let h3 = l.http3_settings();
        let tls = match l.protocol {
            ListenerProtocol::Http => None,
            ListenerProtocol::Https => {
                crate::http::tls::listener_tls(l.tls.as_ref(), &path, h3.is_some(), &mut errs)
            }
        };
        let mut quic = None;
        let mut alt_svc = None;
        if let (Some(settings), Some(rustls_cfg)) = (h3, tls.as_ref().and_then(|t| t.quic.clone()))
        {
            match crate::http::tls::quic_server_config(rustls_cfg, &settings) {
                Ok(server_config) => {
                    // The port clients reach us on (a Service may map 443 to our 8443).
                    alt_svc = weir_config::AdvertisedPort::resolve(
                        settings.advertised_port.as_ref(),
                        address.port(),
                    )
                    .and_then(|port| {
                        let ma = settings.alt_svc_max_age.get().as_secs();
                        http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma={ma}")).ok()
                    });
                    quic = Some(QuicRt {
                        server_config,
                        settings,
                    });
                }
                Err(e) => errs.push(format!("{path}.http3"), e),
            }
        }
        let quic_metrics = quic.as_ref().map(|_| metrics().listener(&l.name, 2));
        listeners.push(ListenerRt {
            name: l.name.clone(),
            address,
            protocol: l.protocol,
            tls: tls.map(|t| t.tcp),
            quic,
            alt_svc,
            tcp_metrics: metrics().listener(
                &l.name,
                match l.protocol {
                    ListenerProtocol::Http => 0,
                    ListenerProtocol::Https => 1,
                },
            ),
            quic_metrics,
            limits: l.limits.clone(),
            http: crate::http::limits::http_builder(&l.limits),
        });
    }

    let mut backends = HashMap::new();
    // Unchanged backends keep their runtime itself (pools, health, breaker, balancer).
    let mut backends_changed = prev.is_none_or(|p| p.backends.len() != snapshot.backends.len());
    for (name, b) in &snapshot.backends {
        let prev_b = prev.and_then(|p| p.backends.get(name));
        if let Some(rt) = prev_b.filter(|rt| rt.config == *b) {
            backends.insert(name.clone(), rt.clone());
            continue;
        }
        backends_changed = true;
        match BackendRt::new(name, b, prev_b.map(|b| b.as_ref())) {
            Ok(rt) => {
                backends.insert(name.clone(), Arc::new(rt));
            }
            Err(e) => errs.push(format!("backends[{name:?}].endpoints"), e),
        }
    }

    // Routes equal to the previous version's route of the same name keep their compiled
    // form (rules, conditions, metric handles). Only when every backend kept its runtime:
    // a rule holds its backends' `Arc`s (targets, mirrors, KairosDB), so after a backend
    // change every route is compiled again, as before.
    // Measured (BENCHMARKS.md, "control plane at scale"): a one-route `PATCH` at 10,000
    // routes spent most of its ~450 ms compiling, and freeing, the 9,999 unchanged routes.
    let mut compiled: Vec<CompiledRoute> = Vec::with_capacity(snapshot.routes.len());
    // For each route, the previous version's index of the compiled form it kept.
    let mut kept_from: Vec<Option<usize>> = Vec::with_capacity(snapshot.routes.len());
    let mut cond_errs = Errors::default();
    // One set of request metric handles per (route, backend) pair, shared by its rules.
    let mut pair_metrics: HashMap<(String, String), Arc<RouteMetrics>> = HashMap::new();
    let mut pair = |route: &str, backend: &str| {
        pair_metrics
            .entry((route.to_string(), backend.to_string()))
            .or_insert_with(|| Arc::new(RouteMetrics::new(route, backend)))
            .clone()
    };
    // Rate-limit buckets and ext-auth caches/breakers of unchanged policies are kept.
    let mut policy_carry = crate::policy::stages::PolicyCarry::new(prev.map(|p| &p.policies));
    for (ri, route) in snapshot.routes.iter().enumerate() {
        let kept = unchanged[ri]
            .filter(|_| !backends_changed)
            .and_then(|j| Some((j, prev?.routes.get(j)?.clone())));
        if let Some((j, c)) = kept {
            // The kept rules hold their rate limiters and ext-auth runtimes; the next
            // version must know them too.
            policy_carry.keep_route(route);
            compiled.push(c);
            kept_from.push(Some(j));
            continue;
        }
        let route_name: Arc<str> = route.name.as_str().into();
        let mut per_route = Vec::new();
        let route_policy = crate::policy::stages::RoutePolicy::new(route, &mut policy_carry);
        for (ui, rule) in route.rules.iter().enumerate() {
            let mut cum = 0u64;
            let mut targets = Vec::new();
            let mut invalid = Vec::new();
            for br in &rule.backend_refs {
                if br.weight == 0 {
                    continue;
                }
                if let Some(why) = &br.invalid {
                    // Keeps its share of the weight: those requests get 500 (Gateway API).
                    cum += u64::from(br.weight);
                    invalid.push(crate::policy::gateway::InvalidRef::new(cum, why));
                    continue;
                }
                if let Some(b) = backends.get(&br.name) {
                    cum += u64::from(br.weight);
                    targets.push(Target {
                        backend: b.clone(),
                        cum,
                        metrics: pair(&route.name, &br.name),
                        request_headers: HeaderOps::compile(&br.filters.request_headers),
                        response_headers: HeaderOps::compile(&br.filters.response_headers),
                    });
                }
            }
            per_route.push(Arc::new(RuleRt {
                route: route_name.clone(),
                rule_index: ui,
                backends: targets,
                no_backend_metrics: pair(&route.name, crate::telemetry::metrics::NONE),
                total_weight: cum,
                request_headers: HeaderOps::compile(&rule.filters.request_headers),
                response_headers: HeaderOps::compile(&rule.filters.response_headers),
                path: rule.filters.path.clone(),
                timeout: rule.timeout.map(|t| t.get()),
                protocol: crate::policy::protocol::RuleProtocol::compile(rule),
                stages: route_policy.for_rule(ui, rule, &backends, &mut policy_carry),
                gateway: crate::policy::gateway::RuleGateway::compile(
                    &route.name,
                    rule,
                    invalid,
                    &backends,
                ),
            }));
        }
        compiled.push(CompiledRoute {
            rules: per_route.into(),
            conds: Arc::new(RouteConds::compile(ri, route, &mut cond_errs)),
        });
        kept_from.push(None);
    }
    let reuse = ReuseCounts {
        reused: kept_from.iter().flatten().count(),
        compiled: kept_from.iter().filter(|k| k.is_none()).count(),
    };
    let rules: Vec<Arc<[Arc<RuleRt>]>> = compiled.iter().map(|c| c.rules.clone()).collect();
    let router = match cond_errs.is_empty() {
        true => {
            let conds: Vec<Arc<RouteConds>> = compiled.iter().map(|c| c.conds.clone()).collect();
            let hosts = prev.and_then(|p| reuse::changed_exact_hosts(&snapshot, p, &kept_from));
            let reuse = prev.zip(hosts.as_ref()).map(|(p, hosts)| Reuse {
                prev: &p.router,
                hosts,
            });
            Router::assemble(&snapshot.routes, &conds, &rules, reuse)
        }
        false => {
            errs.0.extend(cond_errs.0);
            Router::default()
        }
    };
    // Built only from routes that compiled: their errors are reported once, above.
    let listener_routers = match errs.is_empty() {
        true => crate::runtime::listener_routes::listener_routers(&snapshot, &compiled),
        false => HashMap::new(),
    };
    errs.into_result()?;
    let trace_in_map = trace_read_before_upstream(&compiled);
    let version = snapshot.effective_version();
    let applied_at = prev
        .filter(|p| p.version == version)
        .map_or_else(std::time::SystemTime::now, |p| p.applied_at);
    Ok(Runtime {
        snapshot: Arc::new(snapshot),
        version,
        applied_at,
        router,
        listener_routers,
        backends,
        routes: compiled,
        reuse,
        listeners,
        cert_stamps,
        policies: policy_carry.finish(),
        trace_in_map,
    })
}

/// [`Runtime::trace_in_map`] of the compiled routes (every listener's router is built from
/// them). One pass over the conditions and stages per version: O(routes), as the router's
/// own build.
fn trace_read_before_upstream(routes: &[CompiledRoute]) -> bool {
    use crate::http::tracecontext::{TRACEPARENT, TRACESTATE};
    routes.iter().any(|r| {
        r.conds.reads_header(&TRACEPARENT)
            || r.conds.reads_header(&TRACESTATE)
            || r.rules.iter().any(|u| u.stages.reads_request_headers())
    })
}

impl crate::telemetry::metrics::StateSource for Runtime {
    fn export_state(&self, m: &crate::telemetry::metrics::Metrics) {
        crate::upstream::backend::export_gauges(&self.backends, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn runtime(rules: Value) -> Runtime {
        let s = json!({"version": "t",
            "backends": {"b": {"endpoints": ["127.0.0.1:1"]}},
            "routes": [{"name": "r", "rules": rules}]});
        compile(serde_json::from_value(s).expect("snapshot"), None).expect("compiles")
    }

    /// The trace context goes into the request's map exactly when a route condition names
    /// `traceparent`/`tracestate` (any case) or a rule has a stage that reads request
    /// headers; other header conditions and stages leave it to the upstream encoder.
    #[test]
    fn trace_in_map_when_read_before_upstream() {
        let header = |name: &str| {
            json!([{"matches": [{"headers": [{"name": name, "value": "x"}]}],
                    "backendRefs": [{"name": "b"}]}])
        };
        let cases = [
            (json!([{"backendRefs": [{"name": "b"}]}]), false),
            (header("x-canary"), false),
            (header("Traceparent"), true),
            (header("tracestate"), true),
            (
                json!([{"matches": [{"fields": [{"header": "traceparent", "value": "x"}]}],
                        "backendRefs": [{"name": "b"}]}]),
                true,
            ),
            (
                json!([{"rateLimit": {"requestsPerUnit": 1, "unit": "hour", "burst": 1},
                        "backendRefs": [{"name": "b"}]}]),
                true,
            ),
            (
                json!([{"cors": {"allowOrigins": [{"value": "https://a.test"}]},
                        "backendRefs": [{"name": "b"}]}]),
                false,
            ),
        ];
        for (rules, want) in cases {
            assert_eq!(runtime(rules.clone()).trace_in_map, want, "{rules}");
        }
    }

    /// The router reads the body (and the pipeline awaits the body-reading route) only when a
    /// `fields` condition has a JSON path; a header-only field condition does not.
    #[test]
    fn body_read_only_for_a_json_path() {
        let field =
            |f: Value| json!([{"matches": [{"fields": [f]}], "backendRefs": [{"name": "b"}]}]);
        assert!(!runtime(json!([{"backendRefs": [{"name": "b"}]}]))
            .router
            .reads_body());
        assert!(!runtime(field(json!({"header": "x-m", "value": "x"})))
            .router
            .reads_body());
        let body = json!({"header": "x-m", "jsonPath": "metrics[].name", "value": "x",
                          "maxBodyBytes": 16});
        assert!(runtime(field(body)).router.reads_body());
    }
}
