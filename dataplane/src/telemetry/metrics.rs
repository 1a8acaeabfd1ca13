//! The Prometheus registry served on the admin listener at `GET /metrics` (every family is
//! documented in `docs/metrics.md`).
//!
//! Two kinds of families:
//! - **event** families (requests, errors, retries, connections, …) are updated on the request
//!   path through handles resolved once, not per request: [`RouteMetrics`] per (route, backend)
//!   pair and [`BackendMetrics`] per backend live in the runtime tables and hold `OnceLock`ed
//!   counter/histogram clones, so a request costs a few relaxed atomic adds and no map lookup,
//!   no lock;
//! - **state** families (endpoint health, ejections, in-flight, breaker state, …) are read from
//!   the running config's backend state when scraped ([`Metrics::render`]), so they never lag
//!   and endpoints that left the config disappear from the next scrape. The registry does not
//!   walk that state itself: the caller hands a [`StateSource`] (upstream exports its own
//!   gauges), so telemetry stays below the runtime in the layer order.
//!
//! Label values are config names (routes, backends, listeners, endpoints) and fixed enums;
//! never paths, hosts or client addresses.

use crate::http::reply::ErrorKind;
use crate::telemetry::sink::SinkHandle;
use http::{Method, Version};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// `protocol` label values, indexed by [`protocol_index`].
pub const PROTOCOLS: [&str; 3] = ["h1", "h2", "h3"];
/// `method` label values; any other method counts as `other`.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];
/// `status_class` label values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `kind` label values of `weir_proxy_errors_total`: the `error` codes of the JSON replies
/// the proxy makes, plus `upstream_body_error` (an upstream body that failed midway); indexed
/// by [`ErrorKind::index`].
pub const ERROR_KINDS: [&str; ErrorKind::CODES.len()] = ErrorKind::CODES;
/// `transport` label values of the connection families.
pub const TRANSPORTS: [&str; 3] = ["tcp", "tls", "quic"];
/// Label value for "none" (no route matched, no backend chosen).
pub const NONE: &str = "-";

const N_REQ: usize = PROTOCOLS.len() * METHODS.len() * STATUS_CLASSES.len();

/// Seconds: 0.5 ms … 60 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Seconds, for connections: 10 ms … 1 h.
const CONN_BUCKETS: [f64; 11] = [
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Seconds, for handshakes: 0.5 ms … 10 s.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// Bytes: 0, then 64 B × 4ⁿ up to 1 GiB.
fn size_buckets() -> Vec<f64> {
    let mut v = vec![0.0];
    let mut b = 64.0;
    while b <= (1u64 << 30) as f64 {
        v.push(b);
        b *= 4.0;
    }
    v
}

pub fn protocol_index(v: Version) -> usize {
    if v == Version::HTTP_2 {
        1
    } else if v == Version::HTTP_3 {
        2
    } else {
        0
    }
}

pub fn method_index(m: &Method) -> usize {
    // The standard methods compare as enum values (no string compare: the search by name
    // was ~37 instructions per request, callgrind); the order is `METHODS`'.
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if *m == Method::GET {
        return 0;
    }
    STANDARD
        .iter()
        .position(|x| x == m)
        .unwrap_or(METHODS.len() - 1)
}

pub fn status_class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// The metric index of an `error` code (the request path uses [`ErrorKind::index`] directly).
pub fn error_kind_index(kind: &str) -> Option<usize> {
    ErrorKind::from_code(kind).map(ErrorKind::index)
}

/// The process-wide metrics.
///
/// This one stays a global, unlike the rest of telemetry (see [`crate::telemetry::hub`]): the
/// registry is read on every hot path (in-flight gauges, per-protocol counters, upstream pool
/// and health gauges, the rule and backend handles compiled into the runtime), so passing a
/// handle would thread a parameter through every layer for state that is process-wide by
/// nature (one registry per `/metrics` endpoint, as Prometheus' own `default_registry` is).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "cannot register a metric family");
    }
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric definition"),
    )
}

/// Something that sets the scrape-time state families (backend and endpoint gauges) on
/// [`Metrics`] after they were reset. The runtime implements it by asking upstream to export
/// its own gauges, so this registry (layer 1) never reads the runtime (layer 3).
pub trait StateSource {
    fn export_state(&self, m: &Metrics);
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    in_flight: [IntGauge; 3],
    errors: IntCounterVec,

    upstream_latency: HistogramVec,
    retries: IntCounterVec,
    retries_exhausted: IntCounterVec,
    overloaded: IntCounterVec,

    pub(crate) endpoint_healthy: IntGaugeVec,
    pub(crate) endpoint_available: IntGaugeVec,
    pub(crate) endpoint_available_since: prometheus::GaugeVec,
    pub(crate) health_checks: IntCounterVec,
    pub(crate) ejections: IntCounterVec,
    pub(crate) endpoint_in_flight: IntGaugeVec,
    pub(crate) endpoint_requests: IntCounterVec,
    pub(crate) connections_created: IntCounterVec,
    pub(crate) requests_resent: IntCounterVec,
    pub(crate) connections_open: IntGaugeVec,
    pub(crate) breaker_state: IntGaugeVec,
    pub(crate) breaker_opens: IntCounterVec,
    pub(crate) concurrency_in_use: IntGaugeVec,
    pub(crate) concurrency_limit: IntGaugeVec,

    conn_total: IntCounterVec,
    conn_active: IntGaugeVec,
    conn_rejected: IntCounterVec,
    conn_duration: HistogramVec,
    handshakes: IntCounterVec,
    handshake_duration: HistogramVec,

    config_info: IntGaugeVec,
    sink_items: IntCounterVec,
    sink_attempts: IntCounterVec,
    sink_queue: IntGaugeVec,
    sink_last_success: prometheus::GaugeVec,
    config_reloads: IntCounterVec,
    config_last_success: Gauge,

    /// Serializes scrapes: the state families are reset and refilled for each one.
    scrape: Mutex<()>,
    no_route: Arc<RouteMetrics>,
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            requests: counter_vec(
                &r,
                "weir_requests_total",
                "Requests served, counted when the response ends.",
                &["route", "backend", "method", "status_class", "protocol"],
            ),
            duration: histogram_vec(
                &r,
                "weir_request_duration_seconds",
                "Time from request headers received to the last byte of the response handed to the client connection.",
                &["route", "backend", "protocol"],
                LATENCY_BUCKETS.to_vec(),
            ),
            request_size: histogram_vec(
                &r,
                "weir_request_body_bytes",
                "Request body bytes read from the client, counted as they stream.",
                &["route", "backend", "protocol"],
                size_buckets(),
            ),
            response_size: histogram_vec(
                &r,
                "weir_response_body_bytes",
                "Response body bytes sent to the client, counted as they stream.",
                &["route", "backend", "protocol"],
                size_buckets(),
            ),
            in_flight: {
                let v = gauge_vec(
                    &r,
                    "weir_requests_in_flight",
                    "Requests received whose response has not ended yet.",
                    &["protocol"],
                );
                PROTOCOLS.map(|p| v.with_label_values(&[p]))
            },
            errors: counter_vec(
                &r,
                "weir_proxy_errors_total",
                "Requests the proxy answered with its own error reply, or whose upstream body failed midway, by kind.",
                &["route", "backend", "kind"],
            ),
            upstream_latency: histogram_vec(
                &r,
                "weir_upstream_response_duration_seconds",
                "Per try: time from sending the request upstream to its response headers.",
                &["backend"],
                LATENCY_BUCKETS.to_vec(),
            ),
            retries: counter_vec(
                &r,
                "weir_backend_retries_total",
                "Retries sent (tries after the first).",
                &["backend"],
            ),
            retries_exhausted: counter_vec(
                &r,
                "weir_backend_retries_exhausted_total",
                "Requests whose last try failed in a retryable way but could not be retried (attempts, budget or deadline spent).",
                &["backend"],
            ),
            overloaded: counter_vec(
                &r,
                "weir_backend_concurrency_rejected_total",
                "Requests rejected (503 backend_overloaded) because maxConcurrentRequests stayed full for queueTimeout.",
                &["backend"],
            ),
            endpoint_healthy: gauge_vec(
                &r,
                "weir_backend_endpoint_healthy",
                "1 when the endpoint passes its active health checks (or has none), else 0.",
                &["backend", "endpoint"],
            ),
            endpoint_available: gauge_vec(
                &r,
                "weir_backend_endpoint_available",
                "1 when the endpoint is in rotation (healthy and not ejected), else 0.",
                &["backend", "endpoint"],
            ),
            endpoint_available_since: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "weir_backend_endpoint_available_since_seconds",
                        "Unix time the endpoint last became available (healthy and not ejected; or was first seen), 0 while it is not.",
                    ),
                    &["backend", "endpoint"],
                )
                .expect("valid metric definition"),
            ),
            health_checks: counter_vec(
                &r,
                "weir_backend_health_checks_total",
                "Active health checks by result.",
                &["backend", "endpoint", "result"],
            ),
            ejections: counter_vec(
                &r,
                "weir_backend_endpoint_ejections_total",
                "Passive outlier-detection ejections.",
                &["backend", "endpoint"],
            ),
            endpoint_in_flight: gauge_vec(
                &r,
                "weir_backend_endpoint_requests_in_flight",
                "Tries sent to the endpoint whose response has not ended yet.",
                &["backend", "endpoint"],
            ),
            endpoint_requests: counter_vec(
                &r,
                "weir_backend_endpoint_requests_total",
                "Tries sent to the endpoint (retries included).",
                &["backend", "endpoint"],
            ),
            connections_created: counter_vec(
                &r,
                "weir_upstream_connections_created_total",
                "Upstream connections opened to the endpoint; tries minus this is pool reuse.",
                &["backend", "endpoint"],
            ),
            requests_resent: counter_vec(
                &r,
                "weir_upstream_requests_resent_total",
                "Requests sent again on a new connection because the pooled HTTP/1.1 connection they were given closed before they went out (the keep-alive race).",
                &["backend", "endpoint"],
            ),
            connections_open: gauge_vec(
                &r,
                "weir_upstream_connections_open",
                "Upstream connections to the endpoint open now, idle in the pool or carrying a request.",
                &["backend", "endpoint"],
            ),
            breaker_state: gauge_vec(
                &r,
                "weir_backend_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open (only backends with a breaker).",
                &["backend"],
            ),
            breaker_opens: counter_vec(
                &r,
                "weir_backend_circuit_breaker_opens_total",
                "Times the circuit breaker opened.",
                &["backend"],
            ),
            concurrency_in_use: gauge_vec(
                &r,
                "weir_backend_concurrency_in_use",
                "maxConcurrentRequests slots held (only backends with a limit).",
                &["backend"],
            ),
            concurrency_limit: gauge_vec(
                &r,
                "weir_backend_concurrency_limit",
                "The configured maxConcurrentRequests.",
                &["backend"],
            ),
            conn_total: counter_vec(
                &r,
                "weir_downstream_connections_total",
                "Client connections accepted (for tls and quic: before the handshake).",
                &["listener", "transport"],
            ),
            conn_active: gauge_vec(
                &r,
                "weir_downstream_connections_active",
                "Client connections open now.",
                &["listener", "transport"],
            ),
            conn_rejected: counter_vec(
                &r,
                "weir_downstream_connections_rejected_total",
                "Client connections refused or dropped before serving, by reason.",
                &["listener", "transport", "reason"],
            ),
            conn_duration: histogram_vec(
                &r,
                "weir_downstream_connection_duration_seconds",
                "Lifetime of served client connections.",
                &["transport"],
                CONN_BUCKETS.to_vec(),
            ),
            handshakes: counter_vec(
                &r,
                "weir_tls_handshakes_total",
                "TLS (TCP) and QUIC handshakes by result.",
                &["listener", "transport", "result"],
            ),
            handshake_duration: histogram_vec(
                &r,
                "weir_tls_handshake_duration_seconds",
                "Duration of successful TLS and QUIC handshakes.",
                &["transport"],
                HANDSHAKE_BUCKETS.to_vec(),
            ),
            config_info: gauge_vec(
                &r,
                "weir_config_info",
                "1 for the config version being served.",
                &["version"],
            ),
            config_reloads: counter_vec(
                &r,
                "weir_config_reloads_total",
                "Config applies (startup, PUT /config, SIGHUP, certificate reload) by result.",
                &["result"],
            ),
            sink_items: counter_vec(
                &r,
                "weir_sink_items_total",
                "Telemetry items (access logs, metric objects or data points, spans) per sink by result: shipped, dropped (queue full), failed (send gave up).",
                &["sink", "result"],
            ),
            sink_attempts: counter_vec(
                &r,
                "weir_sink_send_attempts_total",
                "Send attempts per sink (HTTP requests including retries, syslog datagrams and writes).",
                &["sink"],
            ),
            sink_queue: gauge_vec(
                &r,
                "weir_sink_queue_items",
                "Access logs waiting in a sink's queue.",
                &["sink"],
            ),
            sink_last_success: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "weir_sink_last_success_timestamp_seconds",
                        "Unix time of a sink's last successful send (absent until one succeeds).",
                    ),
                    &["sink"],
                )
                .expect("valid metric definition"),
            ),
            config_last_success: register(
                &r,
                Gauge::new(
                    "weir_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config apply.",
                )
                .expect("valid metric definition"),
            ),
            scrape: Mutex::new(()),
            no_route: Arc::new(RouteMetrics::new(NONE, NONE)),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(error = %e, "cannot register the process metrics");
        }
        for res in ["success", "failure"] {
            m.config_reloads.with_label_values(&[res]);
        }
        m
    }

    /// Handles for requests that matched no route.
    pub fn no_route(&self) -> Arc<RouteMetrics> {
        self.no_route.clone()
    }

    pub fn in_flight(&self, protocol: usize) -> &IntGauge {
        &self.in_flight[protocol.min(2)]
    }

    /// A config apply ended; on success `version` is now served.
    pub fn config_applied(&self, result: Result<&str, ()>) {
        match result {
            Ok(version) => {
                self.config_reloads.with_label_values(&["success"]).inc();
                self.config_info.reset();
                self.config_info.with_label_values(&[version]).set(1);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.config_last_success.set(now.as_secs_f64());
            }
            Err(()) => self.config_reloads.with_label_values(&["failure"]).inc(),
        }
    }

    /// Handles for one listener's connections.
    pub fn listener(&self, listener: &str, transport: usize) -> ListenerMetrics {
        let t = TRANSPORTS[transport];
        let hs = |result| self.handshakes.with_label_values(&[listener, t, result]);
        ListenerMetrics {
            listener: listener.into(),
            transport,
            total: self.conn_total.with_label_values(&[listener, t]),
            active: self.conn_active.with_label_values(&[listener, t]),
            duration: self.conn_duration.with_label_values(&[t]),
            handshake_ok: hs("success"),
            handshake_failed: hs("failure"),
            handshake_timeout: hs("timeout"),
            handshake_duration: self.handshake_duration.with_label_values(&[t]),
        }
    }

    /// Per-route totals since the process started, for the status page: responses, 5xx
    /// responses and the request-duration histogram, summed over backends, methods and
    /// protocols. Read from the same families `/metrics` serves (no extra bookkeeping on the
    /// request path); the page turns two polls into rates and quantiles.
    pub fn route_totals(&self) -> BTreeMap<String, RouteTotals> {
        fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value())
        }
        let mut out: BTreeMap<String, RouteTotals> = BTreeMap::new();
        for f in self.requests.collect() {
            for m in f.get_metric() {
                let Some(route) = label(m, "route") else {
                    continue;
                };
                let n = m.get_counter().get_value() as u64;
                let t = out.entry(route.to_string()).or_default();
                t.requests += n;
                if label(m, "status_class") == Some("5xx") {
                    t.errors += n;
                }
            }
        }
        for f in self.duration.collect() {
            for m in f.get_metric() {
                let Some(route) = label(m, "route") else {
                    continue;
                };
                let t = out.entry(route.to_string()).or_default();
                let h = m.get_histogram();
                t.latency_count += h.get_sample_count();
                let finite = h
                    .get_bucket()
                    .iter()
                    .filter(|b| b.upper_bound().is_finite());
                for (i, b) in finite.enumerate() {
                    if let Some(c) = t.latency_buckets.get_mut(i) {
                        *c += b.cumulative_count();
                    }
                }
            }
        }
        out
    }

    /// The text exposition of every family, with the state families read from `rt` now.
    pub fn render(&self, rt: Option<&dyn StateSource>, sinks: &[Arc<SinkHandle>]) -> Vec<u8> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(rt, sinks);
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// Every family with the state families read from `rt` now (the `httpJson` sinks ship this).
    pub fn gather(
        &self,
        rt: Option<&dyn StateSource>,
        sinks: &[Arc<SinkHandle>],
    ) -> Vec<prometheus::proto::MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(rt, sinks);
        self.registry.gather()
    }

    fn refresh_sinks(&self, sinks: &[Arc<SinkHandle>]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.sink_items.reset();
        self.sink_attempts.reset();
        self.sink_queue.reset();
        self.sink_last_success.reset();
        for h in sinks {
            let s = &h.stats;
            let n = h.name.as_str();
            for (result, c) in [
                ("shipped", &s.shipped),
                ("dropped", &s.dropped),
                ("failed", &s.failed),
            ] {
                self.sink_items
                    .with_label_values(&[n, result])
                    .inc_by(c.load(Relaxed));
            }
            self.sink_attempts
                .with_label_values(&[n])
                .inc_by(s.attempts.load(Relaxed));
            self.sink_queue
                .with_label_values(&[n])
                .set(h.queued() as i64);
            let last = s.last_success_ms.load(Relaxed);
            if last > 0 {
                self.sink_last_success
                    .with_label_values(&[n])
                    .set(last as f64 / 1000.0);
            }
        }
    }

    fn refresh(&self, rt: Option<&dyn StateSource>, sinks: &[Arc<SinkHandle>]) {
        self.refresh_sinks(sinks);
        self.endpoint_available_since.reset();
        for g in [
            &self.endpoint_healthy,
            &self.endpoint_available,
            &self.endpoint_in_flight,
            &self.connections_open,
            &self.breaker_state,
            &self.concurrency_in_use,
            &self.concurrency_limit,
        ] {
            g.reset();
        }
        for c in [
            &self.health_checks,
            &self.ejections,
            &self.endpoint_requests,
            &self.connections_created,
            &self.requests_resent,
            &self.breaker_opens,
        ] {
            c.reset();
        }
        if let Some(rt) = rt {
            rt.export_state(self);
        }
    }

    /// `Content-Type` of [`Metrics::render`]'s output.
    pub fn content_type() -> &'static str {
        "text/plain; version=0.0.4; charset=utf-8"
    }
}

/// Pre-resolved request handles of one (route, backend) pair; label sets are created on first
/// use, then each request is a relaxed atomic add per family.
/// One route's totals for the status page (see [`Metrics::route_totals`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTotals {
    /// Responses (any status).
    pub requests: u64,
    /// 5xx responses (the proxy's own and the upstream's).
    pub errors: u64,
    /// Requests in the duration histogram.
    pub latency_count: u64,
    /// Cumulative counts per bound of [`LATENCY_BOUNDS`].
    pub latency_buckets: [u64; LATENCY_BUCKETS.len()],
}

/// Upper bounds (seconds) of the request-duration histogram, for the status page.
pub const LATENCY_BOUNDS: [f64; LATENCY_BUCKETS.len()] = LATENCY_BUCKETS;

pub struct RouteMetrics {
    pub route: Arc<str>,
    pub backend: Arc<str>,
    /// Allocated on the pair's first request: the slots are ~2.9 KB and every route has two
    /// pairs (its backend, and `-`), which was ~60 MB of a 10,000-route pod's RSS while most
    /// routes of a big config see no traffic (BENCHMARKS.md, "control plane at scale").
    slots: OnceLock<Box<Slots>>,
}

/// The handles of one (route, backend) pair, each resolved on its first use.
struct Slots {
    requests: [OnceLock<IntCounter>; N_REQ],
    duration: [OnceLock<Histogram>; 3],
    request_size: [OnceLock<Histogram>; 3],
    response_size: [OnceLock<Histogram>; 3],
    errors: [OnceLock<IntCounter>; ERROR_KINDS.len()],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// What one finished exchange reports.
pub struct Finished {
    pub protocol: usize,
    pub method: usize,
    pub status: u16,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<usize>,
    pub body_error: bool,
}

impl RouteMetrics {
    pub fn new(route: &str, backend: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            backend: backend.into(),
            slots: OnceLock::new(),
        }
    }

    fn slots(&self) -> &Slots {
        self.slots.get_or_init(|| {
            Box::new(Slots {
                requests: std::array::from_fn(|_| OnceLock::new()),
                duration: std::array::from_fn(|_| OnceLock::new()),
                request_size: std::array::from_fn(|_| OnceLock::new()),
                response_size: std::array::from_fn(|_| OnceLock::new()),
                errors: std::array::from_fn(|_| OnceLock::new()),
            })
        })
    }

    fn histogram<'a>(
        &self,
        slot: &'a OnceLock<Histogram>,
        vec: &HistogramVec,
        protocol: usize,
    ) -> &'a Histogram {
        slot.get_or_init(|| {
            vec.with_label_values(&[&self.route, &self.backend, PROTOCOLS[protocol]])
        })
    }

    fn error(&self, kind: usize) {
        if let Some(slot) = self.slots().errors.get(kind) {
            slot.get_or_init(|| {
                metrics()
                    .errors
                    .with_label_values(&[&self.route, &self.backend, ERROR_KINDS[kind]])
            })
            .inc();
        }
    }

    pub fn record(&self, f: &Finished) {
        let m = metrics();
        let p = f.protocol.min(2);
        let class = status_class_index(f.status);
        let i =
            (p * METHODS.len() + f.method.min(METHODS.len() - 1)) * STATUS_CLASSES.len() + class;
        let slots = self.slots();
        slots.requests[i]
            .get_or_init(|| {
                m.requests.with_label_values(&[
                    &self.route,
                    &self.backend,
                    METHODS[f.method.min(METHODS.len() - 1)],
                    STATUS_CLASSES[class],
                    PROTOCOLS[p],
                ])
            })
            .inc();
        self.histogram(&slots.duration[p], &m.duration, p)
            .observe(f.duration.as_secs_f64());
        self.histogram(&slots.request_size[p], &m.request_size, p)
            .observe(f.bytes_in as f64);
        self.histogram(&slots.response_size[p], &m.response_size, p)
            .observe(f.bytes_out as f64);
        if let Some(kind) = f.error {
            self.error(kind);
        }
        if f.body_error {
            // By name: kinds were appended after it (limits, WebSockets, policies).
            self.error(ErrorKind::UpstreamBodyError.index());
        }
    }
}

/// Pre-resolved handles of one backend.
#[derive(Clone)]
pub struct BackendMetrics {
    pub upstream_latency: Histogram,
    pub retries: IntCounter,
    pub retries_exhausted: IntCounter,
    pub overloaded: IntCounter,
}

impl BackendMetrics {
    pub fn new(backend: &str) -> BackendMetrics {
        let m = metrics();
        BackendMetrics {
            upstream_latency: m.upstream_latency.with_label_values(&[backend]),
            retries: m.retries.with_label_values(&[backend]),
            retries_exhausted: m.retries_exhausted.with_label_values(&[backend]),
            overloaded: m.overloaded.with_label_values(&[backend]),
        }
    }
}

/// Pre-resolved handles of one listener's connections (one transport).
#[derive(Clone)]
pub struct ListenerMetrics {
    listener: Arc<str>,
    transport: usize,
    total: IntCounter,
    active: IntGauge,
    duration: Histogram,
    handshake_ok: IntCounter,
    handshake_failed: IntCounter,
    handshake_timeout: IntCounter,
    handshake_duration: Histogram,
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerMetrics")
            .field("listener", &self.listener)
            .field("transport", &TRANSPORTS[self.transport])
            .finish_non_exhaustive()
    }
}

/// Handshake outcome for [`ListenerMetrics::handshake`].
pub enum Handshake {
    Ok(Duration),
    Failed,
    TimedOut,
}

impl ListenerMetrics {
    /// Counts an accepted connection; the guard tracks it until dropped.
    pub fn accepted(&self) -> ConnGuard {
        self.total.inc();
        self.active.inc();
        ConnGuard {
            metrics: self.clone(),
            start: std::time::Instant::now(),
        }
    }

    pub fn rejected(&self, reason: &str) {
        metrics()
            .conn_rejected
            .with_label_values(&[&self.listener, TRANSPORTS[self.transport], reason])
            .inc();
    }

    pub fn handshake(&self, h: Handshake) {
        match h {
            Handshake::Ok(d) => {
                self.handshake_ok.inc();
                self.handshake_duration.observe(d.as_secs_f64());
            }
            Handshake::Failed => self.handshake_failed.inc(),
            Handshake::TimedOut => self.handshake_timeout.inc(),
        }
    }
}

/// An open client connection: decrements the active gauge and records the lifetime on drop.
pub struct ConnGuard {
    metrics: ListenerMetrics,
    start: std::time::Instant,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.active.dec();
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_totals_sum_over_backends_methods_and_protocols() {
        // Route names of their own: the registry is process-wide and tests run in parallel.
        let finished = |protocol, status, ms| Finished {
            protocol,
            method: method_index(&Method::GET),
            status,
            duration: Duration::from_millis(ms),
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            body_error: false,
        };
        let a = RouteMetrics::new("totals-test", "b1");
        let b = RouteMetrics::new("totals-test", "b2");
        a.record(&finished(0, 200, 3));
        a.record(&finished(2, 503, 40));
        b.record(&finished(1, 404, 700));
        RouteMetrics::new("totals-other", "b1").record(&finished(0, 500, 1));
        let totals = metrics().route_totals();
        let t = &totals["totals-test"];
        assert_eq!((t.requests, t.errors, t.latency_count), (3, 1, 3));
        let le = |bound: f64| {
            let i = LATENCY_BOUNDS.iter().position(|b| *b == bound).unwrap();
            t.latency_buckets[i]
        };
        // Cumulative, like Prometheus buckets: 3 ms <= 5 ms; 40 ms <= 50 ms; 700 ms <= 1 s.
        assert_eq!(
            (le(0.001), le(0.005), le(0.05), le(0.5), le(1.0)),
            (0, 1, 2, 2, 3)
        );
        assert_eq!(totals["totals-other"].errors, 1);
    }

    #[test]
    fn indexes() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        // Every standard method by its own name; a method spelled differently is "other".
        for name in &METHODS[..METHODS.len() - 1] {
            let m = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(METHODS[method_index(&m)], *name);
        }
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(METHODS[method_index(&lower)], "other");
        assert_eq!(
            METHODS[method_index(&Method::from_bytes(b"PURGE").unwrap())],
            "other"
        );
        assert_eq!(STATUS_CLASSES[status_class_index(204)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class_index(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class_index(700)], "5xx");
        assert_eq!(PROTOCOLS[protocol_index(Version::HTTP_10)], "h1");
        assert_eq!(PROTOCOLS[protocol_index(Version::HTTP_3)], "h3");
        assert_eq!(error_kind_index("upstream_timeout"), Some(11));
        assert_eq!(error_kind_index("nope"), None);
    }

    /// Every family this file defines has a row in docs/metrics.md.
    #[test]
    fn every_family_is_documented() {
        let doc = include_str!("../../../docs/metrics.md");
        let src = include_str!("metrics.rs");
        let mut n = 0;
        for name in src.split('"').filter(|s| {
            s.len() > 5
                && s.starts_with("weir_")
                && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        }) {
            n += 1;
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "{name} is not documented in docs/metrics.md"
            );
        }
        assert!(n >= 30, "found only {n} families");
    }

    #[test]
    fn body_errors_count_as_upstream_body_error() {
        let rm = RouteMetrics::new("body-err-route", "b");
        rm.record(&Finished {
            protocol: 0,
            method: 0,
            status: 200,
            duration: Duration::from_millis(1),
            bytes_in: 0,
            bytes_out: 1,
            error: None,
            body_error: true,
        });
        let text = String::from_utf8(metrics().render(None, &[])).unwrap();
        assert!(
            text.contains("weir_proxy_errors_total{backend=\"b\",kind=\"upstream_body_error\",route=\"body-err-route\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn families_register_and_render() {
        let m = metrics();
        let rm = RouteMetrics::new("r", "b");
        rm.record(&Finished {
            protocol: 0,
            method: 0,
            status: 200,
            duration: Duration::from_millis(3),
            bytes_in: 0,
            bytes_out: 10,
            error: None,
            body_error: false,
        });
        m.config_applied(Ok("v1"));
        let text = String::from_utf8(m.render(None, &[])).unwrap();
        assert!(text.contains(
            "weir_requests_total{backend=\"b\",method=\"GET\",protocol=\"h1\",route=\"r\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains("weir_config_info{version=\"v1\"} 1"));
        assert!(text.contains("# TYPE weir_request_duration_seconds histogram"));
    }
}
