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
use crate::telemetry::event::{nonzero_u64, unix_nanos, Attempt, FinishedSpan, SpanData};
use crate::telemetry::sink::otlp::{signal_url, spawn_span_exporter, Signal};
use crate::telemetry::sink::otlp_enc::Shared;
use crate::telemetry::sink::proto::kv_str;
use crate::telemetry::sink::{Queue, SinkHandle};
use arc_swap::ArcSwapOption;
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use weir_config::{Sink, SinkType, TracingConfig};

const DEFAULT_SERVICE: &str = "weir-dataplane";

/// The tracer of one dataplane: the sampler and where spans go, rebuilt on every config apply
/// (owned by [`crate::telemetry::hub::Telemetry`]).
pub struct Tracing {
    /// Whether any span destination exists (checked first on the request path).
    on: AtomicBool,
    tracer: ArcSwapOption<Tracer>,
    state: Mutex<State>,
    /// The `OTEL_*` variables, read once.
    env: EnvConfig,
    /// The exporter `env` describes, started when first needed.
    env_sink: OnceLock<Option<EnvSink>>,
    /// Resource and start time, shared with the `otlp` sinks.
    otlp: Arc<Shared>,
}

#[derive(Default)]
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

impl Default for Tracing {
    /// A tracer reading the process environment's `OTEL_*` variables.
    fn default() -> Self {
        Tracing::new(EnvConfig::from_lookup(|k| std::env::var(k).ok()))
    }
}

impl Tracing {
    pub fn new(env: EnvConfig) -> Tracing {
        let otlp = Arc::new(Shared::new(resource(None, &env)));
        Tracing {
            on: AtomicBool::new(false),
            tracer: ArcSwapOption::empty(),
            state: Mutex::new(State::default()),
            env,
            env_sink: OnceLock::new(),
            otlp,
        }
    }

    /// What the `otlp` sinks share with this tracer (resource, start time).
    pub fn otlp(&self) -> &Arc<Shared> {
        &self.otlp
    }

    fn env_sink(&self) -> Option<&EnvSink> {
        self.env_sink
            .get_or_init(|| {
                let e = &self.env;
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
                let task = spawn_span_exporter(
                    &handle,
                    Queue::new(rx, close_rx),
                    &url,
                    &e.headers,
                    (e.grpc, e.json),
                    self.otlp.clone(),
                );
                tracing::info!(endpoint = %sink.endpoint, "OTLP span exporter from OTEL_* started");
                Some(EnvSink {
                    handle,
                    close,
                    task: Mutex::new(Some(task)),
                })
            })
            .as_ref()
    }

    /// Shutdown: the `OTEL_*` exporter sends the spans still queued and ends; the caller waits
    /// on the task (bounded, see [`crate::telemetry::sink::flush`]).
    pub(crate) fn close_env(&self) -> Option<tokio::task::JoinHandle<()>> {
        let s = self.env_sink.get()?.as_ref()?;
        let _ = s.close.send(true);
        s.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The `OTEL_*` exporter as a sink, for `GET /sinks` and `/metrics`.
    pub fn env_handle(&self) -> Option<Arc<SinkHandle>> {
        self.env_sink.get()?.as_ref().map(|s| s.handle.clone())
    }

    /// Records a snapshot's `tracing` section; it takes effect with the [`Tracing::set_trace_sinks`]
    /// that follows in the same config apply.
    pub fn configure(&self, tracing: Option<&TracingConfig>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.tracing = tracing.cloned();
    }

    /// The sinks that take spans (from [`crate::telemetry::sink::Sinks::reconcile`]); applies
    /// the sampler and resource too. Needs a Tokio runtime (starts the `OTEL_*` exporter when
    /// first needed).
    pub fn set_trace_sinks(&self, sinks: Vec<Arc<SinkHandle>>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.sinks = sinks;
        self.rebuild(&st);
    }

    fn rebuild(&self, st: &State) {
        self.otlp.start_nanos(); // the start time of cumulative metrics: the first config apply
        let e = &self.env;
        let sinks = if e.disabled {
            Vec::new()
        } else if !st.sinks.is_empty() {
            st.sinks.clone()
        } else {
            self.env_sink()
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
        self.otlp.set_resource(resource(t, e));
        let on = !sinks.is_empty();
        self.tracer.store(on.then(|| {
            Arc::new(Tracer {
                bound: (ratio * (1u64 << 63) as f64) as u64,
                parent_based,
                sinks,
            })
        }));
        self.on.store(on, Ordering::Relaxed);
    }

    /// Decides sampling for a request (adjusting the flags sent upstream) and, when sampled
    /// and spans have somewhere to go, starts its span. Costs one atomic load when tracing is
    /// off.
    #[inline]
    pub fn start(&self, trace: &mut TraceContext) -> Option<Box<RequestSpan>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.start_sampled(trace)
    }

    fn start_sampled(&self, trace: &mut TraceContext) -> Option<Box<RequestSpan>> {
        let tracer = self.tracer.load_full()?;
        let sampled = tracer.sampled(trace);
        trace.flags = u8::from(sampled);
        if !sampled {
            return None;
        }
        Some(Box::new(RequestSpan {
            data: SpanData {
                trace_id: trace.trace_id,
                span_id: trace.span_id,
                parent_id: trace.parent_id,
                t0: Instant::now(),
                t0_unix: unix_nanos(SystemTime::now()),
                route: None,
                attempts: Vec::new(),
            },
            tracer,
        }))
    }
}

/// `service.name`: snapshot, then `OTEL_SERVICE_NAME`, then `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, then `weir-dataplane`; other attributes: the snapshot's over
/// the environment's.
pub(crate) fn resource(t: Option<&TracingConfig>, e: &EnvConfig) -> Resource {
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

/// A sampled request while it is served: its spans, and the tracer that sampled it (whose
/// sinks get the finished span).
pub struct RequestSpan {
    data: SpanData,
    tracer: Arc<Tracer>,
}

impl RequestSpan {
    /// Unix nanoseconds now, on the monotonic clock from the span's start.
    pub fn now(&self) -> u64 {
        self.data.t0_unix + self.data.t0.elapsed().as_nanos() as u64
    }

    /// Route selection ran from `start` to now; `matched`: a route was found.
    pub fn route_selected(&mut self, start: u64, matched: bool) {
        self.data.route = Some((start, self.now(), matched));
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
            crate::http::fastfmt::traceparent(self.data.trace_id, span_id, 0x01),
        );
        let start = self.now();
        self.data.attempts.push(Attempt {
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
        if let Some(a) = self.data.attempts.last_mut() {
            a.end = now;
            match result {
                Ok(s) => a.status = Some(s),
                Err(e) => a.error = Some(e),
            }
        }
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
pub fn finish(mut span: RequestSpan, e: Ended<'_>) {
    let end = span.now();
    if let Some(a) = span.data.attempts.last_mut() {
        if a.status.is_some() && a.error.is_none() {
            a.headers = Some(a.end);
            a.end = end;
            if e.end == "upstream_error" {
                a.error = Some("response_body_error");
            }
        }
    }
    let RequestSpan {
        data,
        tracer: sinks,
    } = span;
    // Every queue full (a stuck or slow sink): count the drop without building the span.
    if sinks.sinks.iter().all(|s| s.spans_full()) {
        let n = data.span_count();
        for s in &sinks.sinks {
            s.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
        return;
    }
    let f = Arc::new(FinishedSpan {
        end,
        span: data,
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
