//! What the request path hands the sinks: a finished request's [`AccessEvent`] and, when it was
//! sampled, its [`FinishedSpan`]. Plain data, captured without formatting; the sinks' tasks
//! encode it (see [`crate::telemetry::sink`]). Nothing here knows where it goes, so the sinks
//! and the tracer that fill their queues both sit above it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One finished request, as handed to the log sinks: captured on the request path without
/// formatting (the strings are moved out of the exchange); each sink's task encodes it.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: http::Method,
    pub host: Option<String>,
    pub path: Option<String>,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub upstream: Option<String>,
    pub attempts: u32,
    pub error: Option<&'static str>,
    pub end: &'static str,
    pub trace_id: u128,
    pub span_id: u64,
}

/// One upstream try of a sampled request.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub span_id: u64,
    pub number: u32,
    pub endpoint: String,
    pub start: u64,
    pub end: u64,
    /// When the response headers came, if the try lasted until the response body ended.
    pub headers: Option<u64>,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

/// The spans of a sampled request while it is served (the tracer that sampled it wraps this,
/// see [`crate::telemetry::otel::RequestSpan`]).
#[derive(Debug)]
pub struct SpanData {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub t0: Instant,
    pub t0_unix: u64,
    /// Route selection: start, end, whether a route matched.
    pub route: Option<(u64, u64, bool)>,
    pub attempts: Vec<Attempt>,
}

/// A request span once the exchange ended, queued to the trace sinks.
pub struct FinishedSpan {
    pub span: SpanData,
    pub end: u64,
    pub method: http::Method,
    pub host: Option<String>,
    pub path: Option<String>,
    pub protocol: &'static str,
    pub status: u16,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub error: Option<&'static str>,
    pub end_kind: &'static str,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl SpanData {
    /// Spans this request exports: server, route (when selection ran), one per try.
    pub fn span_count(&self) -> u64 {
        1 + u64::from(self.route.is_some()) + self.attempts.len() as u64
    }
}

impl FinishedSpan {
    /// Spans this request exports: server, route (when selection ran), one per try.
    pub fn span_count(&self) -> u64 {
        self.span.span_count()
    }
}

/// A random id that is not 0 (span ids).
pub(crate) fn nonzero_u64() -> u64 {
    loop {
        let x = fastrand::u64(..);
        if x != 0 {
            return x;
        }
    }
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// An access event for unit tests (sinks and encoders): event `i` is `i` days (less a
/// millisecond) after the first, with values that need escaping.
#[cfg(test)]
pub(crate) fn sample_event(i: u64) -> AccessEvent {
    AccessEvent {
        time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123 + i * 86_399_999),
        listener: "web".into(),
        client: SocketAddr::from(([10, 0, 0, 1], 5555)),
        method: http::Method::GET,
        host: Some("example.com".into()),
        path: Some("/a".into()),
        protocol: "h2",
        status: 200,
        bytes_in: 0,
        bytes_out: 42,
        duration: Duration::from_micros(1500),
        route: "r".into(),
        backend: "b\"]".into(),
        upstream: Some("127.0.0.1:1".into()),
        attempts: 1,
        error: None,
        end: "complete",
        trace_id: 0x0af7651916cd43dd8448eb211c80319c,
        span_id: 0xb7ad6b7169203331,
    }
}

/// Events covering every optional field and odd characters (the encoders' byte-equality
/// tests).
#[cfg(test)]
pub(crate) fn sample_events() -> Vec<AccessEvent> {
    let event = sample_event;
    let mut v = vec![event(0)];
    let mut e = event(1);
    e.client = "[2001:db8::1]:443".parse::<SocketAddr>().unwrap();
    e.method = http::Method::from_bytes(b"PURGE").unwrap();
    e.host = None;
    e.path = None;
    e.upstream = None;
    e.protocol = "h3";
    e.status = 503;
    e.error = Some("connect_error");
    e.end = "upstream_error";
    e.attempts = 3;
    e.bytes_in = u64::MAX;
    e.duration = Duration::new(12, 345_678_901);
    e.trace_id = 0;
    e.span_id = 1;
    v.push(e);
    let mut e = event(2);
    e.host = Some("h\u{e9}st\t\"q\"\\\u{1}\u{7f}".into());
    e.path = Some("/\u{1f600}/\n".into());
    e.route = "".into();
    e.listener = "l\r\x0c\x08".into();
    e.protocol = "h1";
    e.status = 404;
    e.time = UNIX_EPOCH;
    e.duration = Duration::ZERO;
    v.push(e);
    let mut e = event(3);
    e.time = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    v.push(e);
    v
}
