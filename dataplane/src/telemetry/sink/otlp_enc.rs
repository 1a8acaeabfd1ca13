//! The encoders of `otlp` sinks: access events as OTLP `LogRecord`s, finished requests as
//! spans (protobuf written directly, see [`crate::telemetry::sink::proto`]; prost messages for
//! OTLP/JSON), and the Prometheus registry as OTLP metrics.

use crate::telemetry::event::{nonzero_u64, unix_nanos, AccessEvent, FinishedSpan};
use crate::telemetry::sink::format::{http_version, set_ip, Scratch};
use crate::telemetry::sink::proto::{
    bytes_field, envelope, fixed64, key, kv, kv_int, kv_str, varint, varint_field, varint_len, Val,
    I32, LEN,
};
use arc_swap::ArcSwap;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus::proto::{MetricFamily, MetricType};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::SystemTime;

/// What every OTLP exporter of a dataplane shares; the tracer
/// ([`crate::telemetry::otel::Tracing`]) owns it and sets the resource on every config apply.
pub struct Shared {
    resource: ArcSwap<Resource>,
    /// Unix nanoseconds of the first config apply: the start time of cumulative metrics.
    start: OnceLock<u64>,
}

impl Shared {
    pub fn new(resource: Resource) -> Shared {
        Shared {
            resource: ArcSwap::from_pointee(resource),
            start: OnceLock::new(),
        }
    }

    pub fn resource(&self) -> Arc<Resource> {
        self.resource.load_full()
    }

    pub fn set_resource(&self, r: Resource) {
        self.resource.store(Arc::new(r));
    }

    /// The start time of cumulative metrics, fixed on the first call.
    pub fn start_nanos(&self) -> u64 {
        *self.start.get_or_init(|| unix_nanos(SystemTime::now()))
    }
}

pub(crate) const SCOPE: &str = "weir-dataplane";

/// The fields of one access event's OTLP `LogRecord` (`event_name` `weir.access`), without
/// the record's own key and length.
pub fn otlp_log_record(out: &mut Vec<u8>, e: &AccessEvent, s: &mut Scratch) {
    const ATTR: u8 = 6;
    let t = unix_nanos(e.time);
    fixed64(out, 1, t);
    // SeverityNumber: INFO = 9, ERROR = 17.
    let (sev, sev_text) = if e.status >= 500 {
        (17, "ERROR")
    } else {
        (9, "INFO")
    };
    varint_field(out, 2, sev);
    bytes_field(out, 3, sev_text.as_bytes());
    set_ip(&mut s.ip, e.client.ip());
    let body = &mut s.text;
    body.clear();
    body.push_str(&s.ip);
    body.push(' ');
    body.push_str(e.method.as_str());
    body.push(' ');
    body.push_str(e.host.as_deref().unwrap_or("-"));
    body.push_str(e.path.as_deref().unwrap_or("-"));
    let _ = write!(body, " {} {}", e.status, e.bytes_out);
    let body_val = Val::Str(body);
    key(out, 5, LEN);
    varint(out, body_val.len() as u64);
    body_val.write(out);
    kv(
        out,
        ATTR,
        "http.request.method",
        Val::Str(e.method.as_str()),
    );
    kv(
        out,
        ATTR,
        "url.path",
        Val::Str(e.path.as_deref().unwrap_or("")),
    );
    kv(
        out,
        ATTR,
        "http.response.status_code",
        Val::Int(i64::from(e.status)),
    );
    kv(
        out,
        ATTR,
        "network.protocol.version",
        Val::Str(http_version(e.protocol)),
    );
    kv(out, ATTR, "client.address", Val::Str(&s.ip));
    kv(
        out,
        ATTR,
        "http.request.body.size",
        Val::Int(e.bytes_in as i64),
    );
    kv(
        out,
        ATTR,
        "http.response.body.size",
        Val::Int(e.bytes_out as i64),
    );
    kv(
        out,
        ATTR,
        "weir.duration_ms",
        Val::F64(e.duration.as_secs_f64() * 1000.0),
    );
    kv(out, ATTR, "weir.route", Val::Str(&e.route));
    kv(out, ATTR, "weir.backend", Val::Str(&e.backend));
    kv(out, ATTR, "weir.listener", Val::Str(&e.listener));
    kv(out, ATTR, "weir.attempts", Val::Int(i64::from(e.attempts)));
    kv(out, ATTR, "weir.end", Val::Str(e.end));
    if let Some(h) = &e.host {
        kv(out, ATTR, "server.address", Val::Str(h));
    }
    if let Some(u) = &e.upstream {
        kv(out, ATTR, "weir.upstream", Val::Str(u));
    }
    if let Some(err) = e.error {
        kv(out, ATTR, "error.type", Val::Str(err));
    }
    bytes_field(out, 9, &e.trace_id.to_be_bytes());
    bytes_field(out, 10, &e.span_id.to_be_bytes());
    fixed64(out, 11, t);
    bytes_field(out, 12, b"weir.access");
}

/// A batch of access events as an encoded `ExportLogsServiceRequest` (one resource, one
/// scope), byte for byte what prost writes for the same message.
pub fn otlp_logs_request(
    batch: &[Arc<AccessEvent>],
    resource: &Resource,
    scope: &InstrumentationScope,
) -> Vec<u8> {
    let mut s = Scratch::default();
    let mut records = Vec::with_capacity(batch.len() * 700);
    let mut rec = std::mem::take(&mut s.record);
    for e in batch {
        rec.clear();
        otlp_log_record(&mut rec, e, &mut s);
        bytes_field(&mut records, 2, &rec); // ScopeLogs.log_records
    }
    envelope(resource, scope, &records)
}

pub fn scope() -> InstrumentationScope {
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
        kv_str("network.protocol.version", http_version(f.protocol)),
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
        use {bytes_field, fixed64, key, varint, varint_field, I32, LEN};
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
                1 + varint_len(m.len() as u64) + m.len()
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
    sc: &mut Scratch,
) {
    use {bytes_field, kv, Val};
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
    set_ip(&mut sc.ip, f.client.ip());
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
        Val::Str(http_version(f.protocol)),
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
    let mut sc = Scratch::default();
    let mut spans = Vec::with_capacity(batch.len() * 1200);
    for f in batch {
        encode_spans(&mut spans, f, &mut route_id, &mut sc);
    }
    envelope(resource, &scope(), &spans)
}

/// The Prometheus registry as OTLP metrics (`start`: when the counters began): counters as cumulative monotonic sums, gauges as
/// gauges, histograms as cumulative explicit-bucket histograms. Returns the request and the
/// number of data points.
pub fn metrics_request(
    families: &[MetricFamily],
    resource: &Resource,
    start: u64,
    now: u64,
) -> (ExportMetricsServiceRequest, u64) {
    let start = start.min(now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::event::{
        sample_event as event, sample_events as events, Attempt, SpanData,
    };
    use crate::telemetry::otel::{resource, EnvConfig};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{
        LogRecord, ResourceLogs, ScopeLogs, SeverityNumber,
    };
    use prost::Message;
    use std::time::Instant;

    fn old_log_record(e: &AccessEvent) -> LogRecord {
        let t = unix_nanos(e.time);
        let (sev, sev_text) = if e.status >= 500 {
            (SeverityNumber::Error, "ERROR")
        } else {
            (SeverityNumber::Info, "INFO")
        };
        let mut attrs = vec![
            kv_str("http.request.method", e.method.as_str()),
            kv_str("url.path", e.path.as_deref().unwrap_or("")),
            kv_int("http.response.status_code", i64::from(e.status)),
            kv_str("network.protocol.version", http_version(e.protocol)),
            kv_str("client.address", e.client.ip().to_string()),
            kv_int("http.request.body.size", e.bytes_in as i64),
            kv_int("http.response.body.size", e.bytes_out as i64),
            KeyValue {
                key: "weir.duration_ms".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::DoubleValue(
                        e.duration.as_secs_f64() * 1000.0,
                    )),
                }),
            },
            kv_str("weir.route", &*e.route),
            kv_str("weir.backend", &*e.backend),
            kv_str("weir.listener", &*e.listener),
            kv_int("weir.attempts", i64::from(e.attempts)),
            kv_str("weir.end", e.end),
        ];
        if let Some(h) = &e.host {
            attrs.push(kv_str("server.address", h.as_str()));
        }
        if let Some(u) = &e.upstream {
            attrs.push(kv_str("weir.upstream", u.as_str()));
        }
        if let Some(err) = e.error {
            attrs.push(kv_str("error.type", err));
        }
        LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: t,
            severity_number: sev as i32,
            severity_text: sev_text.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "{} {} {}{} {} {}",
                    e.client.ip(),
                    e.method,
                    e.host.as_deref().unwrap_or("-"),
                    e.path.as_deref().unwrap_or("-"),
                    e.status,
                    e.bytes_out
                ))),
            }),
            attributes: attrs,
            dropped_attributes_count: 0,
            flags: 0,
            trace_id: e.trace_id.to_be_bytes().to_vec(),
            span_id: e.span_id.to_be_bytes().to_vec(),
            event_name: "weir.access".into(),
        }
    }

    #[test]
    fn otlp_logs_are_the_bytes_prost_wrote() {
        let evs: Vec<Arc<AccessEvent>> = events().into_iter().map(Arc::new).collect();
        let resource = Resource {
            attributes: vec![kv_str("service.name", "svc"), kv_int("n", -5)],
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        let scope = InstrumentationScope {
            name: "weir-dataplane".into(),
            version: "0.1.0".into(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        };
        for n in [0, 1, evs.len()] {
            let want = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: evs[..n].iter().map(|e| old_log_record(e)).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            assert_eq!(
                otlp_logs_request(&evs[..n], &resource, &scope),
                want.encode_to_vec(),
                "{n} records"
            );
        }
        // A long body needs a two-byte length.
        let mut e = event(0);
        e.path = Some("/".repeat(300));
        let e = [Arc::new(e)];
        let got = ExportLogsServiceRequest::decode(&otlp_logs_request(&e, &resource, &scope)[..])
            .unwrap();
        assert_eq!(
            got.resource_logs[0].scope_logs[0].log_records[0],
            old_log_record(&e[0])
        );
    }

    fn finished(i: u32) -> FinishedSpan {
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
            span: SpanData {
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
            },
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
}
