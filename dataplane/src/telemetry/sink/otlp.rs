//! The `otlp` sink kind: access logs, metrics and request spans over OTLP/HTTP (protobuf, or
//! JSON for the `OTEL_*` exporter's `http/json`) or OTLP/gRPC; encoders in
//! [`crate::telemetry::sink::otlp_enc`].
//!
//! A task per signal batches, encodes `Export*ServiceRequest` and POSTs it to
//! `<endpoint>/v1/{traces,logs,metrics}` (gRPC: the services' `Export` methods over HTTP/2),
//! retrying 429/502/503/504 (the retryable gRPC codes), timeouts and connection errors with
//! backoff. The `OTEL_*` span exporter of [`crate::telemetry::otel`] is one of these too.

use crate::telemetry::event::{unix_nanos, AccessEvent, FinishedSpan};
use crate::telemetry::sink::kind::{Gather, Inputs, Queue, SinkHandle, SinkKind, Tasks};
use crate::telemetry::sink::otlp_enc::Shared;
use crate::telemetry::sink::otlp_enc::{
    encode_trace_request, metrics_request, otlp_logs_request, scope, trace_request,
};
use bytes::Bytes;
use prost::Message;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;
use weir_config::{Sink, SinkSignal, SinkType};

pub struct Otlp;

impl SinkKind for Otlp {
    fn takes_spans(&self, config: &Sink) -> bool {
        config.kind == SinkType::Otlp && config.ships(SinkSignal::Traces)
    }

    /// Logs (from the access queue), metrics (every `flushInterval`) and traces.
    fn start(&self, handle: &Arc<SinkHandle>, inputs: Inputs) -> Tasks {
        let ep = &handle.config.endpoint;
        let grpc = handle.config.protocol == Some(weir_config::OtlpProtocol::Grpc);
        let poster = |s| Poster::new(handle, &signal_url(ep, s, grpc), &[], grpc);
        let mut tasks = Tasks::default();
        if let Some(q) = inputs.logs {
            tasks.flush.push(tokio::spawn(log_task(
                handle.clone(),
                q,
                poster(Signal::Logs),
                inputs.otlp.clone(),
            )));
        }
        if let Some(q) = inputs.spans {
            tasks.flush.push(tokio::spawn(trace_task(
                handle.clone(),
                q,
                poster(Signal::Traces),
                inputs.otlp.clone(),
            )));
        }
        if let Some(g) = inputs.gather {
            tasks.other.push(tokio::spawn(metrics_task(
                handle.clone(),
                g,
                poster(Signal::Metrics),
                inputs.otlp,
            )));
        }
        tasks
    }
}

/// The `OTEL_*` span exporter's task: spans from `q` to `url` (see
/// [`crate::telemetry::otel`]).
pub(crate) fn spawn_span_exporter(
    handle: &Arc<SinkHandle>,
    q: Queue<Arc<FinishedSpan>>,
    url: &str,
    headers: &[(String, String)],
    (grpc, json): (bool, bool),
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    let mut poster = Poster::new(handle, url, headers, grpc);
    poster.json = json;
    tokio::spawn(trace_task(handle.clone(), q, poster, shared))
}

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

/// Sends encoded export requests of one signal to one destination.
struct Poster {
    client: Result<crate::telemetry::sink::http::HttpClient, String>,
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
            client: crate::telemetry::sink::http::client_for(&sink, grpc),
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
async fn trace_task(
    h: Arc<SinkHandle>,
    mut q: Queue<Arc<FinishedSpan>>,
    poster: Poster,
    shared: Arc<Shared>,
) {
    let max = h.config.batch_size().max(1);
    let wait = h.config.flush_interval();
    while let Some(batch) = q.next_batch(max, wait).await {
        let n = batch.iter().map(|f| f.span_count()).sum();
        let body = if poster.json {
            let req = trace_request(&batch, &shared.resource());
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
            encode_trace_request(&batch, &shared.resource())
        };
        drop(batch);
        let sent = poster.post(&h, Bytes::from(body)).await;
        q.settle(&h, n, "span", sent).await;
    }
}

async fn log_task(
    h: Arc<SinkHandle>,
    mut q: Queue<Arc<AccessEvent>>,
    poster: Poster,
    shared: Arc<Shared>,
) {
    let c = &h.config;
    while let Some(batch) = q.next_batch(c.batch_size(), c.flush_interval()).await {
        // Records written straight into the body (see `otlp_enc`): no per-event prost message.
        let body = otlp_logs_request(&batch, &shared.resource(), &scope());
        let n = batch.len() as u64;
        drop(batch);
        let sent = poster.post(&h, Bytes::from(body)).await;
        q.settle(&h, n, "log", sent).await;
    }
}

async fn metrics_task(h: Arc<SinkHandle>, gather: Gather, poster: Poster, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(h.config.flush_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; ship after one interval
    loop {
        tick.tick().await;
        let (req, n) = metrics_request(
            &gather(),
            &shared.resource(),
            shared.start_nanos(),
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
