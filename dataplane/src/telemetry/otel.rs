//! OpenTelemetry export over OTLP/HTTP (protobuf) or OTLP/gRPC: request spans, and the access
//! logs and metrics of `otlp` sinks.
//!
//! **Spans.** A sampled request records a server span (the proxy's hop, whose id is the
//! [`TraceContext`] span id the access log shows), a child `route` span (route selection) and
//! one client span per upstream attempt; the upstream's `traceparent` carries that attempt's
//! span id. Sampling is OpenTelemetry's `parentbased_traceidratio` (or plain `traceidratio`),
//! from the snapshot's `tracing` section, else `OTEL_TRACES_SAMPLER(_ARG)`. With no span
//! destination the request path pays one relaxed atomic load; an unsampled request one more
//! `ArcSwap` load and no allocation.
//!
//! **Where spans go.** Every `otlp` sink whose `signals` include `traces`; when there is none,
//! the exporter `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` describes (sink name `otel-env` in
//! `GET /sinks` and `/metrics`). `OTEL_SDK_DISABLED=true` turns span export off altogether.
//!
//! **Never blocking.** Finished spans and access events go through each sink's bounded queue
//! with `try_send`; a full queue drops and counts (`dropped`). A task per signal batches,
//! encodes `Export*ServiceRequest` with prost and POSTs it to `<endpoint>/v1/{traces,logs,
//! metrics}` (gRPC: the services' `Export` methods over HTTP/2), retrying 429/502/503/504 (the
//! retryable gRPC codes), timeouts and connection errors with backoff.
//!
//! The OpenTelemetry SDK is not used: see README "Tracing" for why.

use crate::http::tracecontext::TraceContext;
use crate::telemetry::shipper::{Gather, Queue, SinkHandle};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::proto::{MetricFamily, MetricType};
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use weir_config::{Sink, SinkType, TracingConfig};

/// Whether any span destination exists (checked first on the request path).
static ON: AtomicBool = AtomicBool::new(false);
static TRACER: ArcSwapOption<Tracer> = ArcSwapOption::const_empty();
static STATE: Mutex<State> = Mutex::new(State {
    tracing: None,
    sinks: Vec::new(),
});
static ENV: OnceLock<EnvConfig> = OnceLock::new();
static ENV_SINK: OnceLock<Option<EnvSink>> = OnceLock::new();

const SCOPE: &str = "weir-dataplane";
const DEFAULT_SERVICE: &str = "weir-dataplane";

struct State {
    tracing: Option<TracingConfig>,
    sinks: Vec<Arc<SinkHandle>>,
}

/// The exporter from `OTEL_*`, started on first use.
struct EnvSink {
    handle: Arc<SinkHandle>,
    /// Set at shutdown: the task sends what is queued, then ends.
    close: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the request path needs: the sampler and where finished spans go.
pub struct Tracer {
    /// `ratio * 2^63`; a trace is sampled when `(low 64 bits of its id) >> 1` is below it.
    bound: u64,
    parent_based: bool,
    sinks: Vec<Arc<SinkHandle>>,
}

impl Tracer {
    fn sampled(&self, trace: &TraceContext) -> bool {
        match trace.parent_id {
            Some(_) if self.parent_based => trace.flags & 1 == 1,
            _ => ((trace.trace_id as u64) >> 1) < self.bound,
        }
    }
}

/// The standard environment, read once.
#[derive(Debug, Clone, Default)]
pub struct EnvConfig {
    pub disabled: bool,
    /// Full URL spans are sent to (with gRPC: the service method on the endpoint's origin).
    pub traces_url: Option<String>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=grpc`.
    pub grpc: bool,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=http/json`: OTLP/HTTP with JSON bodies.
    pub json: bool,
    pub headers: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub service_name: Option<String>,
    pub resource: Vec<(String, String)>,
    pub ratio: Option<f64>,
    pub parent_based: Option<bool>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms), `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub schedule_delay: Option<Duration>,
    pub queue_size: Option<usize>,
    pub batch_size: Option<usize>,
}

fn percent_decode(s: &str) -> String {
    // Malformed escapes stay as they are and invalid UTF-8 becomes U+FFFD, as the W3C baggage
    // format asks of a lenient reader.
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `k1=v1,k2=v2` (W3C baggage-like, values percent-decoded), as `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_EXPORTER_OTLP_HEADERS` are written.
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

impl EnvConfig {
    /// Reads the `OTEL_*` variables through `get` (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> EnvConfig {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut c = EnvConfig {
            disabled: get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            ..EnvConfig::default()
        };
        c.traces_url = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(t), _) => Some(t),
            (None, Some(base)) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
            _ => None,
        };
        let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match protocol.as_deref() {
            None | Some("http/protobuf") => {}
            Some("http/json") => c.json = true,
            Some("grpc") => {
                c.grpc = true;
                // gRPC uses the endpoint's origin; the path is the service method.
                c.traces_url = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
                    .map(|e| signal_url(&e, Signal::Traces, true));
            }
            Some(p) => {
                tracing::warn!(protocol = %p, "unsupported OTLP protocol; using http/protobuf")
            }
        }
        for k in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            for (name, value) in get(k).as_deref().map(parse_pairs).unwrap_or_default() {
                c.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                c.headers.push((name, value));
            }
        }
        c.timeout = get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let num = |k: &str| {
            get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        c.schedule_delay = num("OTEL_BSP_SCHEDULE_DELAY").map(Duration::from_millis);
        c.queue_size = num("OTEL_BSP_MAX_QUEUE_SIZE").map(|n| n.min(1_000_000) as usize);
        c.batch_size = num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").map(|n| n.min(100_000) as usize);
        c.resource = get("OTEL_RESOURCE_ATTRIBUTES")
            .as_deref()
            .map(parse_pairs)
            .unwrap_or_default();
        c.service_name = get("OTEL_SERVICE_NAME");
        let arg = get("OTEL_TRACES_SAMPLER_ARG").and_then(|v| v.parse::<f64>().ok());
        let arg = arg.filter(|r| (0.0..=1.0).contains(r));
        if let Some(s) = get("OTEL_TRACES_SAMPLER") {
            let (parent, ratio) = match s.as_str() {
                "always_on" => (false, Some(1.0)),
                "always_off" => (false, Some(0.0)),
                "traceidratio" => (false, Some(arg.unwrap_or(1.0))),
                "parentbased_always_on" => (true, Some(1.0)),
                "parentbased_always_off" => (true, Some(0.0)),
                "parentbased_traceidratio" => (true, Some(arg.unwrap_or(1.0))),
                other => {
                    tracing::warn!(sampler = %other, "unsupported OTEL_TRACES_SAMPLER; using parentbased_always_on");
                    (true, None)
                }
            };
            c.parent_based = Some(parent);
            c.ratio = ratio;
        }
        c
    }
}

fn env() -> &'static EnvConfig {
    ENV.get_or_init(|| EnvConfig::from_lookup(|k| std::env::var(k).ok()))
}

fn env_sink() -> Option<&'static EnvSink> {
    ENV_SINK
        .get_or_init(|| {
            let e = env();
            let url = e.traces_url.clone().filter(|_| !e.disabled)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                tracing::error!(url = %url, "OTEL_EXPORTER_OTLP endpoint is not an http(s) URL; not exporting");
                return None;
            }
            let mut sink = Sink::new(SinkType::Otlp, url.clone());
            sink.signals = Some(vec![weir_config::SinkSignal::Traces]);
            if let Some(t) = e.timeout {
                sink.timeout = Some(weir_config::Duration(t));
            }
            sink.flush_interval = e.schedule_delay.map(weir_config::Duration);
            sink.queue_size = e.queue_size;
            sink.batch_size = e.batch_size;
            let (tx, rx) = mpsc::channel(sink.queue_size());
            let (close, close_rx) = watch::channel(false);
            let handle = Arc::new(SinkHandle::new("otel-env", &sink, None, Some(tx)));
            let mut poster = Poster::new(&handle, &url, &e.headers, e.grpc);
            poster.json = e.json;
            let task = tokio::spawn(trace_task(handle.clone(), Queue::new(rx, close_rx), poster));
            tracing::info!(endpoint = %sink.endpoint, "OTLP span exporter from OTEL_* started");
            Some(EnvSink {
                handle,
                close,
                task: Mutex::new(Some(task)),
            })
        })
        .as_ref()
}

/// Shutdown: the `OTEL_*` exporter sends the spans still queued and ends; the caller waits on
/// the task (bounded, see [`crate::telemetry::shipper::shutdown`]).
pub(crate) fn close_env() -> Option<tokio::task::JoinHandle<()>> {
    let s = ENV_SINK.get()?.as_ref()?;
    let _ = s.close.send(true);
    s.task.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// The `OTEL_*` exporter as a sink, for `GET /sinks` and `/metrics`.
pub fn env_handle() -> Option<Arc<SinkHandle>> {
    ENV_SINK.get()?.as_ref().map(|s| s.handle.clone())
}

/// Records a snapshot's `tracing` section; it takes effect with the [`set_trace_sinks`] that
/// follows in the same config apply (from [`crate::telemetry::shipper::reconcile`]).
pub fn configure(tracing: Option<&TracingConfig>) {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    st.tracing = tracing.cloned();
}

/// The sinks that take spans, from [`crate::telemetry::shipper::reconcile`]; applies the sampler and
/// resource too. Needs a Tokio runtime (starts the `OTEL_*` exporter when first needed).
pub fn set_trace_sinks(sinks: Vec<Arc<SinkHandle>>) {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    st.sinks = sinks;
    rebuild(&st);
}

fn rebuild(st: &State) {
    start_nanos(); // the start time of cumulative metrics: the first config apply
    let e = env();
    let sinks = if e.disabled {
        Vec::new()
    } else if !st.sinks.is_empty() {
        st.sinks.clone()
    } else {
        env_sink()
            .map(|s| vec![s.handle.clone()])
            .unwrap_or_default()
    };
    let t = st.tracing.as_ref();
    let ratio = t
        .and_then(|t| t.sampling_ratio)
        .or(e.ratio)
        .unwrap_or(1.0)
        .clamp(0.0, 1.0);
    let parent_based = t
        .and_then(|t| t.parent_based)
        .or(e.parent_based)
        .unwrap_or(true);
    RESOURCE.store(Some(Arc::new(resource(t, e))));
    let on = !sinks.is_empty();
    TRACER.store(on.then(|| {
        Arc::new(Tracer {
            bound: (ratio * (1u64 << 63) as f64) as u64,
            parent_based,
            sinks,
        })
    }));
    ON.store(on, Ordering::Relaxed);
}

static RESOURCE: ArcSwapOption<Resource> = ArcSwapOption::const_empty();

fn current_resource() -> Arc<Resource> {
    RESOURCE
        .load_full()
        .unwrap_or_else(|| Arc::new(resource(None, env())))
}

/// `service.name`: snapshot, then `OTEL_SERVICE_NAME`, then `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, then `weir-dataplane`; other attributes: the snapshot's over
/// the environment's.
fn resource(t: Option<&TracingConfig>, e: &EnvConfig) -> Resource {
    let mut attrs: Vec<(String, String)> = e.resource.clone();
    if let Some(t) = t {
        for (k, v) in &t.resource_attributes {
            attrs.retain(|(n, _)| n != k);
            attrs.push((k.clone(), v.clone()));
        }
    }
    let service = t
        .and_then(|t| t.service_name.clone())
        .or_else(|| e.service_name.clone())
        .or_else(|| {
            attrs
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string());
    attrs.retain(|(k, _)| k != "service.name");
    let mut kv = vec![
        kv_str("service.name", service),
        kv_str("telemetry.sdk.name", "weir"),
        kv_str("telemetry.sdk.language", "rust"),
        kv_str("service.version", env!("CARGO_PKG_VERSION")),
    ];
    kv.extend(attrs.into_iter().map(|(k, v)| kv_str(k, v)));
    Resource {
        attributes: kv,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The request path.

/// One upstream try of a sampled request.
#[derive(Debug, Clone)]
struct Attempt {
    span_id: u64,
    number: u32,
    endpoint: String,
    start: u64,
    end: u64,
    /// When the response headers came, if the try lasted until the response body ended.
    headers: Option<u64>,
    status: Option<u16>,
    error: Option<&'static str>,
}

/// A sampled request while it is served.
pub struct RequestSpan {
    trace_id: u128,
    span_id: u64,
    parent_id: Option<u64>,
    t0: Instant,
    t0_unix: u64,
    route: Option<(u64, u64, bool)>,
    attempts: Vec<Attempt>,
    tracer: Arc<Tracer>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

fn nonzero_u64() -> u64 {
    loop {
        let x = fastrand::u64(..);
        if x != 0 {
            return x;
        }
    }
}

/// Decides sampling for a request (adjusting the flags sent upstream) and, when sampled and
/// spans have somewhere to go, starts its span. Costs one atomic load when tracing is off.
#[inline]
pub fn start(trace: &mut TraceContext) -> Option<Box<RequestSpan>> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    start_sampled(trace)
}

fn start_sampled(trace: &mut TraceContext) -> Option<Box<RequestSpan>> {
    let tracer = TRACER.load_full()?;
    let sampled = tracer.sampled(trace);
    trace.flags = u8::from(sampled);
    if !sampled {
        return None;
    }
    Some(Box::new(RequestSpan {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent_id: trace.parent_id,
        t0: Instant::now(),
        t0_unix: unix_nanos(SystemTime::now()),
        route: None,
        attempts: Vec::new(),
        tracer,
    }))
}

impl RequestSpan {
    /// Unix nanoseconds now, on the monotonic clock from the span's start.
    pub fn now(&self) -> u64 {
        self.t0_unix + self.t0.elapsed().as_nanos() as u64
    }

    /// Route selection ran from `start` to now; `matched`: a route was found.
    pub fn route_selected(&mut self, start: u64, matched: bool) {
        self.route = Some((start, self.now(), matched));
    }

    /// An upstream try begins: its span id goes upstream as the `traceparent` parent.
    pub fn attempt_started(
        &mut self,
        number: u32,
        endpoint: &http::uri::Authority,
        headers: &mut http::HeaderMap,
    ) {
        let span_id = nonzero_u64();
        headers.insert(
            crate::http::tracecontext::TRACEPARENT.clone(),
            crate::http::fastfmt::traceparent(self.trace_id, span_id, 0x01),
        );
        let start = self.now();
        self.attempts.push(Attempt {
            span_id,
            number,
            endpoint: endpoint.to_string(),
            start,
            end: start,
            headers: None,
            status: None,
            error: None,
        });
    }

    /// The latest try got response headers (`Ok(status)`) or failed (`Err(error type)`).
    pub fn attempt_ended(&mut self, result: Result<u16, &'static str>) {
        let now = self.now();
        if let Some(a) = self.attempts.last_mut() {
            a.end = now;
            match result {
                Ok(s) => a.status = Some(s),
                Err(e) => a.error = Some(e),
            }
        }
    }
}

/// A request span once the exchange ended, queued to the trace sinks.
pub struct FinishedSpan {
    span: Box<RequestSpan>,
    end: u64,
    method: http::Method,
    host: Option<String>,
    path: Option<String>,
    protocol: &'static str,
    status: u16,
    route: Arc<str>,
    backend: Arc<str>,
    listener: Arc<str>,
    client: SocketAddr,
    error: Option<&'static str>,
    end_kind: &'static str,
    bytes_in: u64,
    bytes_out: u64,
}

impl FinishedSpan {
    /// Spans this request exports: server, route (when selection ran), one per try.
    pub fn span_count(&self) -> u64 {
        1 + u64::from(self.span.route.is_some()) + self.span.attempts.len() as u64
    }
}

/// What the exchange knew when it ended (see [`crate::telemetry::observe`]).
pub struct Ended<'a> {
    pub method: &'a http::Method,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub protocol: &'static str,
    pub status: u16,
    pub route: &'a Arc<str>,
    pub backend: &'a Arc<str>,
    pub listener: &'a Arc<str>,
    pub client: SocketAddr,
    pub error: Option<&'static str>,
    pub end: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Ends a request span and queues it on every trace sink (never waits; full queues drop and
/// count). The try whose response was forwarded ends with the response body (its headers'
/// arrival becomes the event `http.response.headers`); a body that broke off marks it failed.
pub fn finish(mut span: Box<RequestSpan>, e: Ended<'_>) {
    let end = span.now();
    if let Some(a) = span.attempts.last_mut() {
        if a.status.is_some() && a.error.is_none() {
            a.headers = Some(a.end);
            a.end = end;
            if e.end == "upstream_error" {
                a.error = Some("response_body_error");
            }
        }
    }
    let sinks = span.tracer.clone();
    // Every queue full (a stuck or slow sink): count the drop without building the span.
    if sinks.sinks.iter().all(|s| s.spans_full()) {
        let n = 1 + u64::from(span.route.is_some()) + span.attempts.len() as u64;
        for s in &sinks.sinks {
            s.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
        return;
    }
    let f = Arc::new(FinishedSpan {
        end,
        span,
        method: e.method.clone(),
        host: e.host.map(str::to_string),
        path: e.path.map(str::to_string),
        protocol: e.protocol,
        status: e.status,
        route: e.route.clone(),
        backend: e.backend.clone(),
        listener: e.listener.clone(),
        client: e.client,
        error: e.error,
        end_kind: e.end,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
    });
    for s in &sinks.sinks {
        s.queue_span(f.clone());
    }
}

// ---------------------------------------------------------------------------------------
// Encoding.

pub(crate) fn kv_str(k: impl Into<String>, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

pub(crate) fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

fn protocol_version(p: &str) -> &'static str {
    match p {
        "h2" => "2",
        "h3" => "3",
        _ => "1.1",
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

fn error_status(message: &str) -> Option<Status> {
    Some(Status {
        message: message.into(),
        code: status::StatusCode::Error as i32,
    })
}

/// The spans of one finished request: server, route, attempts.
pub fn spans(f: &FinishedSpan) -> Vec<Span> {
    spans_with(f, nonzero_u64)
}

/// [`spans`], the route span's id from `route_id`.
fn spans_with(f: &FinishedSpan, route_id: impl FnOnce() -> u64) -> Vec<Span> {
    let s = &f.span;
    let trace_id = s.trace_id.to_be_bytes().to_vec();
    let server_id = s.span_id.to_be_bytes().to_vec();
    let route = (&*f.route != "-").then_some(&*f.route);
    let name = match route {
        Some(r) => format!("{} {r}", f.method),
        None => f.method.to_string(),
    };
    let mut attrs = vec![
        kv_str("http.request.method", f.method.as_str()),
        kv_str("url.path", f.path.as_deref().unwrap_or("")),
        kv_int("http.response.status_code", i64::from(f.status)),
        kv_str("network.protocol.name", "http"),
        kv_str("network.protocol.version", protocol_version(f.protocol)),
        kv_str("client.address", f.client.ip().to_string()),
        kv_int("client.port", i64::from(f.client.port())),
        kv_str("weir.listener", &*f.listener),
        kv_str("weir.backend", &*f.backend),
        kv_int("weir.attempts", s.attempts.len() as i64),
        kv_int("http.request.body.size", f.bytes_in as i64),
        kv_int("http.response.body.size", f.bytes_out as i64),
        kv_str("weir.end", f.end_kind),
    ];
    if let Some(r) = route {
        attrs.push(kv_str("http.route", r));
    }
    if let Some(h) = &f.host {
        attrs.push(kv_str("server.address", h.as_str()));
    }
    let failed = f.status >= 500 || f.error.is_some();
    if let Some(e) = f.error {
        attrs.push(kv_str("error.type", e));
    } else if f.status >= 500 {
        attrs.push(kv_str("error.type", f.status.to_string()));
    }
    let mut out = Vec::with_capacity(2 + s.attempts.len());
    out.push(Span {
        trace_id: trace_id.clone(),
        span_id: server_id.clone(),
        trace_state: String::new(),
        parent_span_id: s
            .parent_id
            .map(|p| p.to_be_bytes().to_vec())
            .unwrap_or_default(),
        flags: 0x01 | if s.parent_id.is_some() { 0x300 } else { 0x100 },
        name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: s.t0_unix,
        end_time_unix_nano: f.end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: if failed {
            error_status(f.error.unwrap_or(""))
        } else {
            None
        },
    });
    let child = |span_id: u64, name: String, kind: span::SpanKind, start, end, attrs, st| Span {
        trace_id: trace_id.clone(),
        span_id: span_id.to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: server_id.clone(),
        flags: 0x101,
        name,
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: st,
    };
    if let Some((start, end, matched)) = s.route {
        let mut a = vec![
            kv_str("weir.route", &*f.route),
            kv_str("weir.backend", &*f.backend),
        ];
        a.push(KeyValue {
            key: "weir.route.matched".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::BoolValue(matched)),
            }),
        });
        out.push(child(
            route_id(),
            "route".into(),
            span::SpanKind::Internal,
            start,
            end,
            a,
            None,
        ));
    }
    for at in &s.attempts {
        let (host, port) = match at.endpoint.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<i64>().unwrap_or(80)),
            None => (at.endpoint.as_str(), 80),
        };
        let mut a = vec![
            kv_str("http.request.method", f.method.as_str()),
            kv_str("server.address", host),
            kv_int("server.port", port),
            kv_str("weir.endpoint", at.endpoint.as_str()),
            kv_int("weir.attempt", i64::from(at.number)),
        ];
        if at.number > 1 {
            a.push(kv_int(
                "http.request.resend_count",
                i64::from(at.number - 1),
            ));
        }
        let mut st = None;
        if let Some(code) = at.status {
            a.push(kv_int("http.response.status_code", i64::from(code)));
            if code >= 400 && at.error.is_none() {
                a.push(kv_str("error.type", code.to_string()));
                st = error_status("");
            }
        }
        if let Some(e) = at.error {
            a.push(kv_str("error.type", e));
            st = error_status(e);
        }
        let mut try_span = child(
            at.span_id,
            f.method.to_string(),
            span::SpanKind::Client,
            at.start,
            at.end,
            a,
            st,
        );
        if let Some(t) = at.headers {
            try_span.events.push(span::Event {
                time_unix_nano: t,
                name: "http.response.headers".into(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
            });
        }
        out.push(try_span);
    }
    out
}

/// An `ExportTraceServiceRequest` for a batch of finished requests.
pub fn trace_request(
    batch: &[Arc<FinishedSpan>],
    resource: &Resource,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: batch.iter().flat_map(|f| spans(f)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

// Protobuf written directly (the request OTLP/HTTP protobuf and gRPC sinks send): the same
// bytes prost writes for `trace_request`, without building the messages (~20 allocations per
// span). `trace_request` stays for OTLP/JSON.

/// One span's fields; the caller frames it.
struct SpanOut<'a> {
    trace_id: &'a [u8; 16],
    span_id: u64,
    parent: Option<u64>,
    flags: u32,
    name: &'a str,
    kind: span::SpanKind,
    start: u64,
    end: u64,
    /// `http.response.headers` event time.
    event: Option<u64>,
    /// `Some(message)`: status `Error`.
    error: Option<&'a str>,
}

impl SpanOut<'_> {
    /// Writes the span's fields around `attrs` (field 9, already encoded).
    fn write(&self, out: &mut Vec<u8>, attrs: &[u8]) {
        use crate::telemetry::sinkenc::{
            bytes_field, fixed64, key, varint, varint_field, I32, LEN,
        };
        bytes_field(out, 1, self.trace_id);
        bytes_field(out, 2, &self.span_id.to_be_bytes());
        if let Some(p) = self.parent {
            bytes_field(out, 4, &p.to_be_bytes());
        }
        if !self.name.is_empty() {
            bytes_field(out, 5, self.name.as_bytes());
        }
        varint_field(out, 6, self.kind as i32 as u64);
        fixed64(out, 7, self.start);
        fixed64(out, 8, self.end);
        out.extend_from_slice(attrs);
        if let Some(t) = self.event {
            // Event { time_unix_nano: 1, name: 2 }
            const NAME: &[u8] = b"http.response.headers";
            let len = 2 + NAME.len() + if t != 0 { 9 } else { 0 };
            key(out, 11, LEN);
            varint(out, len as u64);
            fixed64(out, 1, t);
            bytes_field(out, 2, NAME);
        }
        if let Some(m) = self.error {
            // Status { message: 2, code: 3 }
            let code = status::StatusCode::Error as u64;
            let mlen = if m.is_empty() {
                0
            } else {
                1 + crate::telemetry::sinkenc::varint_len(m.len() as u64) + m.len()
            };
            key(out, 15, LEN);
            varint(out, (mlen + 2) as u64);
            if !m.is_empty() {
                bytes_field(out, 2, m.as_bytes());
            }
            varint_field(out, 3, code);
        }
        if self.flags != 0 {
            key(out, 16, I32);
            out.extend_from_slice(&self.flags.to_le_bytes());
        }
    }
}

/// Appends the spans of one finished request, each as field 2 of `ScopeSpans`.
fn encode_spans(
    out: &mut Vec<u8>,
    f: &FinishedSpan,
    route_id: impl FnOnce() -> u64,
    sc: &mut crate::telemetry::sinkenc::Scratch,
) {
    use crate::telemetry::sinkenc::{bytes_field, kv, Val};
    const ATTR: u8 = 9;
    let s = &f.span;
    let trace_id = s.trace_id.to_be_bytes();
    let method = f.method.as_str();
    let route = (&*f.route != "-").then_some(&*f.route);
    let mut attrs = std::mem::take(&mut sc.record);
    let mut span = Vec::new();
    // Server span.
    sc.text.clear();
    sc.text.push_str(method);
    if let Some(r) = route {
        sc.text.push(' ');
        sc.text.push_str(r);
    }
    crate::telemetry::sinkenc::set_ip(&mut sc.ip, f.client.ip());
    attrs.clear();
    kv(&mut attrs, ATTR, "http.request.method", Val::Str(method));
    kv(
        &mut attrs,
        ATTR,
        "url.path",
        Val::Str(f.path.as_deref().unwrap_or("")),
    );
    kv(
        &mut attrs,
        ATTR,
        "http.response.status_code",
        Val::Int(i64::from(f.status)),
    );
    kv(&mut attrs, ATTR, "network.protocol.name", Val::Str("http"));
    kv(
        &mut attrs,
        ATTR,
        "network.protocol.version",
        Val::Str(protocol_version(f.protocol)),
    );
    kv(&mut attrs, ATTR, "client.address", Val::Str(&sc.ip));
    kv(
        &mut attrs,
        ATTR,
        "client.port",
        Val::Int(i64::from(f.client.port())),
    );
    kv(&mut attrs, ATTR, "weir.listener", Val::Str(&f.listener));
    kv(&mut attrs, ATTR, "weir.backend", Val::Str(&f.backend));
    kv(
        &mut attrs,
        ATTR,
        "weir.attempts",
        Val::Int(s.attempts.len() as i64),
    );
    kv(
        &mut attrs,
        ATTR,
        "http.request.body.size",
        Val::Int(f.bytes_in as i64),
    );
    kv(
        &mut attrs,
        ATTR,
        "http.response.body.size",
        Val::Int(f.bytes_out as i64),
    );
    kv(&mut attrs, ATTR, "weir.end", Val::Str(f.end_kind));
    if let Some(r) = route {
        kv(&mut attrs, ATTR, "http.route", Val::Str(r));
    }
    if let Some(h) = &f.host {
        kv(&mut attrs, ATTR, "server.address", Val::Str(h));
    }
    let failed = f.status >= 500 || f.error.is_some();
    if let Some(e) = f.error {
        kv(&mut attrs, ATTR, "error.type", Val::Str(e));
    } else if f.status >= 500 {
        kv(
            &mut attrs,
            ATTR,
            "error.type",
            Val::Str(&f.status.to_string()),
        );
    }
    SpanOut {
        trace_id: &trace_id,
        span_id: s.span_id,
        parent: s.parent_id,
        flags: 0x01 | if s.parent_id.is_some() { 0x300 } else { 0x100 },
        name: &sc.text,
        kind: span::SpanKind::Server,
        start: s.t0_unix,
        end: f.end,
        event: None,
        error: failed.then(|| f.error.unwrap_or("")),
    }
    .write(&mut span, &attrs);
    bytes_field(out, 2, &span);
    if let Some((start, end, matched)) = s.route {
        attrs.clear();
        span.clear();
        kv(&mut attrs, ATTR, "weir.route", Val::Str(&f.route));
        kv(&mut attrs, ATTR, "weir.backend", Val::Str(&f.backend));
        kv(&mut attrs, ATTR, "weir.route.matched", Val::Bool(matched));
        SpanOut {
            trace_id: &trace_id,
            span_id: route_id(),
            parent: Some(s.span_id),
            flags: 0x101,
            name: "route",
            kind: span::SpanKind::Internal,
            start,
            end,
            event: None,
            error: None,
        }
        .write(&mut span, &attrs);
        bytes_field(out, 2, &span);
    }
    for at in &s.attempts {
        attrs.clear();
        span.clear();
        let (host, port) = match at.endpoint.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<i64>().unwrap_or(80)),
            None => (at.endpoint.as_str(), 80),
        };
        kv(&mut attrs, ATTR, "http.request.method", Val::Str(method));
        kv(&mut attrs, ATTR, "server.address", Val::Str(host));
        kv(&mut attrs, ATTR, "server.port", Val::Int(port));
        kv(&mut attrs, ATTR, "weir.endpoint", Val::Str(&at.endpoint));
        kv(
            &mut attrs,
            ATTR,
            "weir.attempt",
            Val::Int(i64::from(at.number)),
        );
        if at.number > 1 {
            kv(
                &mut attrs,
                ATTR,
                "http.request.resend_count",
                Val::Int(i64::from(at.number - 1)),
            );
        }
        let mut error = None;
        if let Some(code) = at.status {
            kv(
                &mut attrs,
                ATTR,
                "http.response.status_code",
                Val::Int(i64::from(code)),
            );
            if code >= 400 && at.error.is_none() {
                kv(&mut attrs, ATTR, "error.type", Val::Str(&code.to_string()));
                error = Some("");
            }
        }
        if let Some(e) = at.error {
            kv(&mut attrs, ATTR, "error.type", Val::Str(e));
            error = Some(e);
        }
        SpanOut {
            trace_id: &trace_id,
            span_id: at.span_id,
            parent: Some(s.span_id),
            flags: 0x101,
            name: method,
            kind: span::SpanKind::Client,
            start: at.start,
            end: at.end,
            event: at.headers,
            error,
        }
        .write(&mut span, &attrs);
        bytes_field(out, 2, &span);
    }
    sc.record = attrs;
}

/// A batch of finished requests as an encoded `ExportTraceServiceRequest`: the bytes prost
/// writes for [`trace_request`].
pub fn encode_trace_request(batch: &[Arc<FinishedSpan>], resource: &Resource) -> Vec<u8> {
    encode_trace_request_with(batch, resource, nonzero_u64)
}

fn encode_trace_request_with(
    batch: &[Arc<FinishedSpan>],
    resource: &Resource,
    mut route_id: impl FnMut() -> u64,
) -> Vec<u8> {
    let mut sc = crate::telemetry::sinkenc::Scratch::default();
    let mut spans = Vec::with_capacity(batch.len() * 1200);
    for f in batch {
        encode_spans(&mut spans, f, &mut route_id, &mut sc);
    }
    crate::telemetry::sinkenc::envelope(resource, &scope(), &spans)
}

fn start_nanos() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| unix_nanos(SystemTime::now()))
}

/// The Prometheus registry as OTLP metrics: counters as cumulative monotonic sums, gauges as
/// gauges, histograms as cumulative explicit-bucket histograms. Returns the request and the
/// number of data points.
pub fn metrics_request(
    families: &[MetricFamily],
    resource: &Resource,
    now: u64,
) -> (ExportMetricsServiceRequest, u64) {
    let start = start_nanos().min(now);
    let mut metrics = Vec::new();
    let mut points = 0u64;
    for f in families {
        let attrs = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
            m.get_label()
                .iter()
                .map(|l| kv_str(l.name(), l.value()))
                .collect()
        };
        let number = |m: &prometheus::proto::Metric, v: f64| pm::NumberDataPoint {
            attributes: attrs(m),
            start_time_unix_nano: start,
            time_unix_nano: now,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(pm::number_data_point::Value::AsDouble(v)),
        };
        let data = match f.get_field_type() {
            MetricType::COUNTER => pm::metric::Data::Sum(pm::Sum {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_counter().get_value()))
                    .collect(),
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            MetricType::GAUGE => pm::metric::Data::Gauge(pm::Gauge {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| number(m, m.get_gauge().get_value()))
                    .collect(),
            }),
            MetricType::HISTOGRAM => pm::metric::Data::Histogram(pm::Histogram {
                data_points: f
                    .get_metric()
                    .iter()
                    .map(|m| {
                        let h = m.get_histogram();
                        let mut bounds = Vec::new();
                        let mut counts = Vec::new();
                        let mut prev = 0u64;
                        for b in h.get_bucket() {
                            if b.upper_bound().is_infinite() {
                                continue;
                            }
                            bounds.push(b.upper_bound());
                            counts.push(b.cumulative_count().saturating_sub(prev));
                            prev = b.cumulative_count();
                        }
                        counts.push(h.get_sample_count().saturating_sub(prev));
                        pm::HistogramDataPoint {
                            attributes: attrs(m),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            count: h.get_sample_count(),
                            sum: Some(h.get_sample_sum()),
                            bucket_counts: counts,
                            explicit_bounds: bounds,
                            exemplars: Vec::new(),
                            flags: 0,
                            min: None,
                            max: None,
                        }
                    })
                    .collect(),
                aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
            }),
            _ => continue,
        };
        points += f.get_metric().len() as u64;
        metrics.push(pm::Metric {
            name: f.name().to_string(),
            description: f.help().to_string(),
            unit: String::new(),
            metadata: Vec::new(),
            data: Some(data),
        });
    }
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![pm::ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![pm::ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    (req, points)
}

// ---------------------------------------------------------------------------------------
// Shipping.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

/// Where an `otlp` sink sends `signal`: `<endpoint>/v1/<signal>` over HTTP; with gRPC, the
/// service's `Export` method on the endpoint's origin (its path is ignored).
pub fn signal_url(endpoint: &str, signal: Signal, grpc: bool) -> String {
    if grpc {
        let origin = match endpoint.find("://") {
            Some(i) => {
                let rest = &endpoint[i + 3..];
                &endpoint[..i + 3 + rest.find('/').unwrap_or(rest.len())]
            }
            None => endpoint,
        };
        let method = match signal {
            Signal::Traces => "opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        };
        return format!("{origin}/{method}");
    }
    let name = match signal {
        Signal::Traces => "traces",
        Signal::Logs => "logs",
        Signal::Metrics => "metrics",
    };
    format!("{}/v1/{name}", endpoint.trim_end_matches('/'))
}

/// Starts the tasks of an `otlp` sink: logs (from the shipper's access queue), metrics
/// (every `flushInterval`) and traces. Returns the tasks that send what is queued and end
/// once `close` is set (logs, traces), and the others (metrics).
pub fn start_sink(
    handle: &Arc<SinkHandle>,
    logs: Option<mpsc::Receiver<Arc<crate::telemetry::shipper::AccessEvent>>>,
    traces: Option<mpsc::Receiver<Arc<FinishedSpan>>>,
    close: watch::Receiver<bool>,
    gather: Option<Gather>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ep = &handle.config.endpoint;
    let grpc = handle.config.protocol == Some(weir_config::OtlpProtocol::Grpc);
    let poster = |s| Poster::new(handle, &signal_url(ep, s, grpc), &[], grpc);
    let mut flush = Vec::new();
    if let Some(rx) = logs {
        flush.push(tokio::spawn(log_task(
            handle.clone(),
            Queue::new(rx, close.clone()),
            poster(Signal::Logs),
        )));
    }
    if let Some(rx) = traces {
        flush.push(tokio::spawn(trace_task(
            handle.clone(),
            Queue::new(rx, close),
            poster(Signal::Traces),
        )));
    }
    let mut tasks = Vec::new();
    if let Some(g) = gather {
        tasks.push(tokio::spawn(metrics_task(
            handle.clone(),
            g,
            poster(Signal::Metrics),
        )));
    }
    (flush, tasks)
}

/// Sends encoded export requests of one signal to one destination.
struct Poster {
    client: Result<crate::telemetry::shipper::HttpClient, String>,
    uri: Result<http::Uri, String>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    grpc: bool,
    /// OTLP/HTTP with JSON bodies (`http/json`) instead of protobuf.
    json: bool,
}

/// gRPC status codes the OTLP spec says to retry.
fn grpc_retryable(code: u32) -> bool {
    matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15)
}

impl Poster {
    fn new(h: &SinkHandle, url: &str, headers: &[(String, String)], grpc: bool) -> Poster {
        let mut sink = h.config.clone();
        sink.endpoint = url.to_string();
        let mut headers = headers.to_vec();
        if let Some(k) = &sink.api_key {
            headers.push((sink.api_key_header().to_string(), k.0.clone()));
        }
        let headers = headers
            .iter()
            .filter_map(|(k, v)| {
                let n = http::HeaderName::from_bytes(k.as_bytes()).ok();
                let v = http::HeaderValue::from_str(v).ok().map(|mut v| {
                    v.set_sensitive(true); // often credentials
                    v
                });
                if n.is_none() || v.is_none() {
                    tracing::warn!(sink = %h.name, header = %k, "invalid OTLP header ignored");
                }
                Some((n?, v?))
            })
            .collect();
        Poster {
            client: crate::telemetry::shipper::client_for(&sink, grpc),
            uri: url.parse().map_err(|e| format!("url {url:?}: {e}")),
            headers,
            grpc,
            json: false,
        }
    }

    /// Sends a protobuf body (gRPC-framed for gRPC); retries 429/502/503/504 (gRPC: the
    /// retryable codes), timeouts and connection errors.
    async fn post(&self, h: &SinkHandle, body: Bytes) -> Result<(), String> {
        let body = if self.grpc {
            let mut framed = Vec::with_capacity(body.len() + 5);
            framed.push(0u8); // not compressed
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
            Bytes::from(framed)
        } else {
            body
        };
        let client = self.client.as_ref().map_err(|e| e.clone())?;
        let uri = self.uri.as_ref().map_err(|e| e.clone())?;
        let timeout = h.config.timeout();
        let mut last = String::new();
        const ATTEMPTS: u32 = 3;
        let mut waits = crate::telemetry::backoff::send_waits(ATTEMPTS);
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                if let Some(wait) = waits.next() {
                    tokio::time::sleep(wait).await;
                }
            }
            let mut req =
                http::Request::post(uri.clone()).header(http::header::USER_AGENT, "weir-dataplane");
            req = if self.grpc {
                req.header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers")
            } else if self.json {
                req.header(http::header::CONTENT_TYPE, "application/json")
            } else {
                req.header(http::header::CONTENT_TYPE, "application/x-protobuf")
            };
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            let req = req
                .body(http_body_util::Full::new(body.clone()))
                .map_err(|e| format!("cannot build request: {e}"))?;
            h.stats.attempts.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(timeout, client.request(req)).await {
                Err(_) => last = format!("timed out after {timeout:?}"),
                Ok(Err(e)) => last = format!("request failed: {e}"),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let (parts, body) = resp.into_parts();
                    let collected =
                        tokio::time::timeout(timeout, http_body_util::BodyExt::collect(body)).await;
                    if self.grpc && status.is_success() {
                        // Trailers, or headers for a trailers-only answer.
                        let trailers = match &collected {
                            Ok(Ok(c)) => c.trailers().cloned(),
                            _ => None,
                        };
                        let code = trailers
                            .as_ref()
                            .and_then(|t| t.get("grpc-status"))
                            .or_else(|| parts.headers.get("grpc-status"))
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u32>().ok());
                        match code {
                            Some(0) => return Ok(()),
                            Some(c) => {
                                last = format!("grpc-status {c}");
                                if !grpc_retryable(c) {
                                    return Err(format!("{last} (not retried)"));
                                }
                            }
                            None => last = "no grpc-status in the answer".into(),
                        }
                        continue;
                    }
                    if status.is_success() {
                        return Ok(());
                    }
                    last = format!("status {status}");
                    if !matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        return Err(format!("{last} (not retried)"));
                    }
                }
            }
        }
        Err(format!("{last} after {ATTEMPTS} attempts"))
    }
}

/// Sends span batches; once closed (shutdown), what is queued, then ends.
async fn trace_task(h: Arc<SinkHandle>, mut q: Queue<Arc<FinishedSpan>>, poster: Poster) {
    let max = h.config.batch_size().max(1);
    let wait = h.config.flush_interval();
    while let Some(batch) = q.next_batch(max, wait).await {
        let n = batch.iter().map(|f| f.span_count()).sum();
        let body = if poster.json {
            let req = trace_request(&batch, &current_resource());
            // OTLP/JSON: hex ids, lowerCamelCase keys, 64-bit integers as strings, enums as
            // numbers (opentelemetry-proto's `with-serde`).
            match serde_json::to_vec(&req) {
                Ok(b) => b,
                Err(e) => {
                    h.stats.failure(n, format!("cannot encode JSON: {e}"));
                    continue;
                }
            }
        } else {
            encode_trace_request(&batch, &current_resource())
        };
        drop(batch);
        match poster.post(&h, Bytes::from(body)).await {
            Ok(()) => {
                h.stats.success(n);
                q.succeeded();
            }
            Err(e) => {
                tracing::warn!(sink = %h.name, spans = n, error = %e, "span batch dropped");
                h.stats.failure(n, e);
                q.failed().await;
            }
        }
    }
}

async fn log_task(h: Arc<SinkHandle>, mut q: Queue, poster: Poster) {
    let c = &h.config;
    while let Some(batch) = q.next_batch(c.batch_size(), c.flush_interval()).await {
        // Records written straight into the body (see `sinkenc`): no per-event prost message.
        let body =
            crate::telemetry::sinkenc::otlp_logs_request(&batch, &current_resource(), &scope());
        let n = batch.len() as u64;
        drop(batch);
        match poster.post(&h, Bytes::from(body)).await {
            Ok(()) => {
                h.stats.success(n);
                q.succeeded();
            }
            Err(e) => {
                tracing::warn!(sink = %h.name, items = n, error = %e, "log batch dropped");
                h.stats.failure(n, e);
                q.failed().await;
            }
        }
    }
}

async fn metrics_task(h: Arc<SinkHandle>, gather: Gather, poster: Poster) {
    let mut tick = tokio::time::interval(h.config.flush_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; ship after one interval
    loop {
        tick.tick().await;
        let (req, n) = metrics_request(
            &gather(),
            &current_resource(),
            unix_nanos(SystemTime::now()),
        );
        match poster.post(&h, Bytes::from(req.encode_to_vec())).await {
            Ok(()) => h.stats.success(n),
            Err(e) => {
                tracing::warn!(sink = %h.name, items = n, error = %e, "metrics batch dropped");
                h.stats.failure(n, e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_percent_decoded_leniently() {
        let got =
            parse_pairs("service.name=edge%20proxy, team = a%2Cb ,bad=%zz%4,=x,utf=%C3%A9%FF");
        let want = [
            ("service.name", "edge proxy"),
            ("team", "a,b"),
            ("bad", "%zz%4"),
            ("utf", "\u{e9}\u{fffd}"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn env_precedence_and_parsing() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=x%20y"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "A=2"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=fromattrs,env=prod",
            ),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let e = EnvConfig::from_lookup(get);
        assert_eq!(
            e.traces_url.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            e.headers,
            vec![("b".into(), "x y".into()), ("A".into(), "2".into())]
        );
        assert_eq!((e.parent_based, e.ratio), (Some(false), Some(0.5)));
        let r = resource(None, &e);
        assert_eq!(r.attributes[0], kv_str("service.name", "fromattrs"));
        let t = TracingConfig {
            service_name: Some("snap".into()),
            ..TracingConfig::default()
        };
        assert_eq!(
            resource(Some(&t), &e).attributes[0],
            kv_str("service.name", "snap")
        );
        let e2 = EnvConfig::from_lookup(|k| {
            (k == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://t:1/custom".to_string())
        });
        assert_eq!(e2.traces_url.as_deref(), Some("http://t:1/custom"));
        assert_eq!(e2.parent_based, None);
        assert!(!e2.disabled);
        let off = EnvConfig::from_lookup(|k| (k == "OTEL_SDK_DISABLED").then(|| "TRUE".into()));
        assert!(off.disabled);
    }

    #[test]
    fn signal_urls() {
        assert_eq!(
            signal_url("http://c:4318/", Signal::Logs, false),
            "http://c:4318/v1/logs"
        );
        assert_eq!(
            signal_url("https://c:4317/any/path", Signal::Traces, true),
            "https://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        let e = EnvConfig::from_lookup(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4317".into()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".into()),
            _ => None,
        });
        assert!(e.grpc);
        assert_eq!(
            e.traces_url.as_deref(),
            Some("http://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        );
        let j = EnvConfig::from_lookup(|k| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318".into()),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => Some("http/json".into()),
            _ => None,
        });
        assert!(j.json && !j.grpc);
        assert_eq!(j.traces_url.as_deref(), Some("http://c:4318/v1/traces"));
    }

    fn finished(i: u32) -> FinishedSpan {
        let tracer = Arc::new(Tracer {
            bound: 0,
            parent_based: true,
            sinks: Vec::new(),
        });
        let attempt = |n: u32, status, error| Attempt {
            span_id: 0x1000 + u64::from(n),
            number: n,
            endpoint: if n == 2 {
                "[::1]".into()
            } else {
                format!("10.0.0.{n}:8080")
            },
            start: 1_700_000_000_000_000_100 + u64::from(n),
            end: 1_700_000_000_000_000_200 + u64::from(n),
            headers: (n == 3).then_some(1_700_000_000_000_000_150),
            status,
            error,
        };
        let mut f = FinishedSpan {
            span: Box::new(RequestSpan {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 0x00f067aa0ba902b7,
                parent_id: Some(7),
                t0: Instant::now(),
                t0_unix: 1_700_000_000_000_000_000,
                route: Some((1_700_000_000_000_000_010, 1_700_000_000_000_000_020, true)),
                attempts: vec![
                    attempt(1, None, Some("connect_error")),
                    attempt(2, Some(503), None),
                    attempt(3, Some(200), None),
                ],
                tracer,
            }),
            end: 1_700_000_000_000_000_900,
            method: http::Method::POST,
            host: Some("shop.example".into()),
            path: Some("/cart/\u{e9}".into()),
            protocol: "h3",
            status: 200,
            route: "r".into(),
            backend: "b".into(),
            listener: "web".into(),
            client: "[2001:db8::2]:40000".parse().unwrap(),
            error: None,
            end_kind: "complete",
            bytes_in: 12,
            bytes_out: 3400,
        };
        match i {
            1 => {
                f.span.parent_id = None;
                f.span.route = Some((5, 6, false));
                f.span.attempts.truncate(1);
                f.route = "-".into();
                f.host = None;
                f.path = None;
                f.status = 502;
                f.error = Some("connect_error");
                f.end_kind = "upstream_error";
                f.client = "127.0.0.1:1".parse().unwrap();
                f.method = http::Method::GET;
                f.protocol = "h1";
            }
            2 => {
                f.span.route = None;
                f.span.attempts.clear();
                f.status = 503;
                f.span.t0_unix = 0;
            }
            _ => {}
        }
        f
    }

    #[test]
    fn span_protobuf_is_what_prost_writes() {
        let batch: Vec<Arc<FinishedSpan>> = (0..3).map(|i| Arc::new(finished(i))).collect();
        let res = resource(None, &EnvConfig::default());
        for n in [0, 1, 2, 3] {
            let want = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(res.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        spans: batch[..n]
                            .iter()
                            .flat_map(|f| spans_with(f, || 0x77))
                            .collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let got = encode_trace_request_with(&batch[..n], &res, || 0x77);
            assert_eq!(got, want.encode_to_vec(), "{n} requests");
        }
        let got = ExportTraceServiceRequest::decode(&*encode_trace_request(&batch, &res)).unwrap();
        let spans = &got.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 5 + 3 + 1);
        assert_eq!(spans[4].events[0].name, "http.response.headers");
        assert_eq!(spans[0].name, "POST r");
    }

    #[test]
    fn ratio_sampler() {
        let t = |ratio: f64, parent_based| Tracer {
            bound: (ratio * (1u64 << 63) as f64) as u64,
            parent_based,
            sinks: Vec::new(),
        };
        let ctx = |trace_id: u128, parent: Option<u64>, flags| TraceContext {
            trace_id,
            parent_id: parent,
            span_id: 1,
            flags,
        };
        assert!(t(1.0, true).sampled(&ctx(u128::MAX, None, 1)));
        assert!(!t(0.0, true).sampled(&ctx(1, None, 1)));
        assert!(t(0.0, true).sampled(&ctx(1, Some(7), 1)));
        assert!(!t(1.0, true).sampled(&ctx(1, Some(7), 0)));
        assert!(!t(0.0, false).sampled(&ctx(1, Some(7), 1)));
        // Half the id space for 0.5.
        assert!(t(0.5, false).sampled(&ctx(u128::from(u64::MAX / 2 - 2), None, 1)));
        assert!(!t(0.5, false).sampled(&ctx(u128::from(u64::MAX), None, 1)));
    }
}
