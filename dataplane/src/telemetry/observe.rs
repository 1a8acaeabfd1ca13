//! Per-request observation: body byte counting, and what happens when an exchange ends
//! (request metrics and the access log line).
//!
//! An exchange ends when its response body does: with the last frame (before the client can
//! see the end, so a client that got a whole response can rely on it being counted), on an
//! upstream body error, or when the server drops the body early (the client went away).
//! Nothing here buffers: bodies are wrapped and bytes counted as frames pass.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::reply::ErrorKind;
use crate::http::tracecontext::TraceContext;
use crate::telemetry::hub::Telemetry;
use crate::telemetry::metrics::{metrics, Finished, RouteMetrics, PROTOCOLS};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::IntGauge;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pin_project_lite::pin_project! {
    /// A request body that counts the bytes read from the client.
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        count: Option<Arc<AtomicU64>>,
    }
}

impl<B: Body> CountingBody<B> {
    /// The body, and the counter the exchange reads when it ends. A body that has ended
    /// before it is read (no body: nearly every GET) counts nothing, so it gets no shared
    /// counter (one allocation less per such request).
    pub fn new(inner: B) -> (Self, Option<Arc<AtomicU64>>) {
        let count = (!inner.is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let body = CountingBody {
            inner,
            count: count.clone(),
        };
        (body, count)
    }
}

impl<B: Body<Data = Bytes>> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(count)) = (&r, this.count) {
            if let Some(d) = f.data_ref() {
                count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request as in flight until dropped.
pub struct InFlightGuard(&'static IntGauge);

impl InFlightGuard {
    pub fn new(protocol: usize) -> Self {
        let g = metrics().in_flight(protocol);
        g.inc();
        InFlightGuard(g)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything known about a request once its response headers are out; reported when the
/// response body ends.
pub struct Exchange {
    pub start: Instant,
    pub protocol: usize,
    pub method: http::Method,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// Host and path (no query) for the access log; `None` when access logs are off.
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: u16,
    pub metrics: Arc<RouteMetrics>,
    /// The endpoint of the last upstream try (made text only for an access-log event).
    pub upstream: Option<http::uri::Authority>,
    pub attempts: u32,
    pub error: Option<ErrorKind>,
    pub trace: TraceContext,
    /// The request's span when it is sampled and exported ([`crate::telemetry::otel`]).
    pub span: Option<Box<crate::telemetry::otel::RequestSpan>>,
    /// Request body bytes read; `None` when the request had no body.
    pub bytes_in: Option<Arc<AtomicU64>>,
    pub in_flight: InFlightGuard,
    /// Where the access log and span go.
    pub telemetry: Arc<Telemetry>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    UpstreamError,
    ClientGone,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::UpstreamError => "upstream_error",
            End::ClientGone => "client_gone",
        }
    }
}

impl Exchange {
    /// Reports the exchange. By reference: the caller drops it in place after (moving it out
    /// of its `Option` first was a ~250-byte copy per request, callgrind); what an event
    /// takes is taken from it.
    fn finish(&mut self, bytes_out: u64, end: End) {
        let duration = self.start.elapsed();
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        self.metrics.record(&Finished {
            protocol: self.protocol,
            method: crate::telemetry::metrics::method_index(&self.method),
            status: self.status,
            duration,
            bytes_in,
            bytes_out,
            error: self.error.map(ErrorKind::index),
            body_error: end == End::UpstreamError,
        });
        if self.telemetry.access_log_enabled() {
            tracing::info!(
                target: "weir::access",
                listener = %self.listener,
                client = %self.client,
                method = %self.method,
                host = self.host.as_deref().unwrap_or("-"),
                path = self.path.as_deref().unwrap_or("-"),
                protocol = PROTOCOLS[self.protocol],
                status = self.status,
                bytes_in,
                bytes_out,
                duration_ms = duration.as_secs_f64() * 1000.0,
                route = &*self.metrics.route,
                backend = &*self.metrics.backend,
                upstream = self.upstream.as_ref().map_or("-", |a| a.as_str()),
                attempts = self.attempts,
                error = self.error.map_or("-", ErrorKind::code),
                end = end.as_str(),
                trace_id = %self.trace.trace_id(),
                span_id = %self.trace.span_id(),
                "request"
            );
        }
        if let Some(span) = self.span.take() {
            crate::telemetry::otel::finish(
                *span,
                crate::telemetry::otel::Ended {
                    method: &self.method,
                    host: self.host.as_deref(),
                    path: self.path.as_deref(),
                    protocol: PROTOCOLS[self.protocol],
                    status: self.status,
                    route: &self.metrics.route,
                    backend: &self.metrics.backend,
                    listener: &self.listener,
                    client: self.client,
                    error: self.error.map(ErrorKind::code),
                    end: end.as_str(),
                    bytes_in,
                    bytes_out,
                },
            );
        }
        if self.telemetry.shipping_logs() {
            // Captured, not formatted (the sinks' tasks encode); the strings are moved.
            self.telemetry
                .ship_access(crate::telemetry::event::AccessEvent {
                    time: std::time::SystemTime::now(),
                    listener: self.listener.clone(),
                    client: self.client,
                    method: self.method.clone(),
                    host: self.host.take(),
                    path: self.path.take(),
                    protocol: PROTOCOLS[self.protocol],
                    status: self.status,
                    bytes_in,
                    bytes_out,
                    duration,
                    route: self.metrics.route.clone(),
                    backend: self.metrics.backend.clone(),
                    upstream: self.upstream.as_ref().map(|a| a.as_str().to_owned()),
                    attempts: self.attempts,
                    error: self.error.map(ErrorKind::code),
                    end: end.as_str(),
                    trace_id: self.trace.trace_id,
                    span_id: self.trace.span_id,
                });
        }
    }
}

/// The response body handed to the client connection: counts bytes and ends the exchange.
/// The exchange is held inline, not boxed: the body itself is boxed once into the response
/// (`boxed_unsync`), so a box of its own was one more allocation per request.
pub struct ObservedBody {
    inner: ProxyBody,
    bytes_out: u64,
    exchange: Option<Exchange>,
}

impl ObservedBody {
    pub fn new(inner: ProxyBody, exchange: Exchange) -> Self {
        ObservedBody {
            inner,
            bytes_out: 0,
            exchange: Some(exchange),
        }
    }

    fn end(&mut self, end: End) {
        if let Some(x) = self.exchange.as_mut() {
            x.finish(self.bytes_out, end);
            // Dropped where it is; the in-flight gauge goes down here.
            self.exchange = None;
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.end(End::Complete),
            Poll::Ready(Some(Err(_))) => this.end(End::UpstreamError),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                // Reported with the last frame, before the client can see the end.
                if this.inner.is_end_stream() {
                    this.end(End::Complete);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body the server never had to poll (empty, HEAD, 204/304) ended fine.
        let end = if self.inner.is_end_stream() {
            End::Complete
        } else {
            End::ClientGone
        };
        self.end(end);
    }
}
