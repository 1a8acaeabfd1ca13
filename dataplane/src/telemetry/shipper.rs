//! Telemetry shippers: one per configured sink, each with a bounded queue fed from the access
//! log path ([`ship_access`]: `try_send`, never waits; a full queue drops and counts) and a task
//! that batches and sends.
//!
//! - `httpJson`: access logs as ECS 8.0 JSON documents, POSTed as a JSON array of up to
//!   `batchSize` documents to `endpoint`; every `flushInterval`, the registry's counters and
//!   gauges (histograms as `_count`/`_sum`) as `{name,type,value,labels,timestamp,help}`
//!   objects POSTed to `metricsEndpoint` (default `endpoint`); `http` or `https` (system roots
//!   or `caFile`, or no verification with `tlsVerify: false`), over HTTP/1.1 or, with
//!   `transport: http3`, HTTP/3 (see `sink_h3.rs`). Retries with backoff on 5xx,
//!   429, timeouts and connection errors (4 attempts), never on other 4xx; then the batch is
//!   counted as failed and dropped.
//! - `syslog`: each access log as one RFC 5424 message, one per UDP datagram or octet-counted
//!   on TCP (reconnecting after a failure).
//! - `otlp`: access logs, metrics and request spans over OTLP/HTTP protobuf, see
//!   [`crate::telemetry::otel`].
//!
//! [`reconcile`] runs after every config apply: sinks whose name and settings are unchanged
//! keep running (and their counters); changed ones are replaced, removed ones stopped (items
//! still queued there are discarded).
//! [`shutdown`] lets log sinks send what is queued, for a bounded time.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus::proto::{MetricFamily, MetricType};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use weir_config::{Sink, SinkSignal, SinkType, SyslogTransport};

/// One finished request, as handed to the log sinks: captured on the request path without
/// formatting (the strings are moved out of the exchange); each sink's task encodes it (see
/// [`crate::telemetry::sinkenc`]).
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

/// A function returning the registry's families, fresh (state families refreshed).
pub type Gather = Arc<dyn Fn() -> Vec<MetricFamily> + Send + Sync>;

/// Counters of one sink.
#[derive(Default)]
pub struct SinkStats {
    pub shipped: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    /// Send attempts (HTTP requests, datagrams, TCP writes), including retries.
    pub attempts: AtomicU64,
    /// Unix milliseconds of the last successful send; 0 = never.
    pub last_success_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl SinkStats {
    pub(crate) fn success(&self, items: u64) {
        self.shipped.fetch_add(items, Ordering::Relaxed);
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn failure(&self, items: u64, err: String) {
        self.failed.fetch_add(items, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err);
        }
    }
}

/// A running sink as the request path and the reports see it.
pub struct SinkHandle {
    pub name: String,
    pub config: Sink,
    pub stats: SinkStats,
    logs: Option<mpsc::Sender<Arc<AccessEvent>>>,
    /// Finished request spans (`otlp` sinks shipping traces).
    traces: Option<mpsc::Sender<Arc<crate::telemetry::otel::FinishedSpan>>>,
}

impl SinkHandle {
    pub(crate) fn new(
        name: &str,
        config: &Sink,
        logs: Option<mpsc::Sender<Arc<AccessEvent>>>,
        traces: Option<mpsc::Sender<Arc<crate::telemetry::otel::FinishedSpan>>>,
    ) -> SinkHandle {
        SinkHandle {
            name: name.to_string(),
            config: config.clone(),
            stats: SinkStats::default(),
            logs,
            traces,
        }
    }

    /// Access events and spans waiting in the queues.
    pub fn queued(&self) -> usize {
        self.logs
            .as_ref()
            .map_or(0, |t| t.max_capacity() - t.capacity())
            + self
                .traces
                .as_ref()
                .map_or(0, |t| t.max_capacity() - t.capacity())
    }

    /// Whether the span queue has no room (or there is none).
    pub(crate) fn spans_full(&self) -> bool {
        self.traces.as_ref().is_none_or(|t| t.capacity() == 0)
    }

    /// Queues a finished request span; never waits. A full queue drops it and counts.
    pub(crate) fn queue_span(&self, span: Arc<crate::telemetry::otel::FinishedSpan>) {
        if let Some(tx) = &self.traces {
            let n = span.span_count();
            if tx.try_send(span).is_err() {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

struct Running {
    handle: Arc<SinkHandle>,
    /// Set to `true` at shutdown: log and span tasks send what is queued, then end.
    close: watch::Sender<bool>,
    /// Tasks that end by themselves once closed (logs, spans).
    flush: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.flush) {
            t.abort();
        }
    }
}

static RUNNING: Mutex<BTreeMap<String, Running>> = Mutex::new(BTreeMap::new());
/// Sinks that take access logs; read on the request path.
static LOG_SINKS: ArcSwapOption<Vec<Arc<SinkHandle>>> = ArcSwapOption::const_empty();
static SHIPPING_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether any sink takes access logs (the request path then keeps host and path).
pub fn shipping_logs() -> bool {
    SHIPPING_LOGS.load(Ordering::Relaxed)
}

/// Queues an access event on every log sink; never waits. A full queue drops it and counts.
pub fn ship_access(ev: AccessEvent) {
    let guard = LOG_SINKS.load();
    let Some(sinks) = guard.as_ref() else { return };
    let ev = Arc::new(ev);
    for s in sinks.iter() {
        if let Some(tx) = &s.logs {
            if tx.try_send(ev.clone()).is_err() {
                s.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Starts, replaces and stops shippers to match `sinks`. Needs a Tokio runtime.
pub fn reconcile(sinks: &BTreeMap<String, Sink>, gather: Gather) {
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    running.retain(|name, r| {
        let keep = sinks.get(name) == Some(&r.handle.config);
        if !keep {
            tracing::info!(sink = %name, "telemetry sink stopped");
        }
        keep
    });
    for (name, sink) in sinks {
        if running.contains_key(name) {
            continue;
        }
        running.insert(name.clone(), start(name, sink, gather.clone()));
    }
    let logs: Vec<Arc<SinkHandle>> = running
        .values()
        .filter(|r| r.handle.logs.is_some())
        .map(|r| r.handle.clone())
        .collect();
    SHIPPING_LOGS.store(!logs.is_empty(), Ordering::Relaxed);
    LOG_SINKS.store((!logs.is_empty()).then(|| Arc::new(logs)));
    crate::telemetry::otel::set_trace_sinks(
        running
            .values()
            .filter(|r| r.handle.traces.is_some())
            .map(|r| r.handle.clone())
            .collect(),
    );
}

/// Shutdown, after the listeners drained: log and span queues are sent (new batches, with their
/// retries) for up to `grace`, then every shipper stops.
pub async fn shutdown(grace: Duration) {
    SHIPPING_LOGS.store(false, Ordering::Relaxed);
    LOG_SINKS.store(None);
    let running: Vec<Running> =
        std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()))
            .into_values()
            .collect();
    let mut waits = Vec::new();
    for mut r in running {
        let _ = r.close.send(true);
        waits.append(&mut r.flush);
        // `r` drops here: its other tasks (metrics) stop.
    }
    waits.extend(crate::telemetry::otel::close_env());
    if waits.is_empty() {
        return;
    }
    let all = futures_util::future::join_all(waits.iter_mut());
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!("telemetry sinks did not flush within {grace:?}; the rest is dropped");
        for t in &waits {
            t.abort();
        }
    }
}

/// The running sinks (and the `OTEL_*` span exporter), for `/metrics` and `GET /sinks`.
pub fn handles() -> Vec<Arc<SinkHandle>> {
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|r| r.handle.clone())
        .chain(crate::telemetry::otel::env_handle())
        .collect()
}

/// `GET /sinks`: per-sink counters.
pub fn report() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for h in handles() {
        let s = &h.stats;
        let last = s.last_success_ms.load(Ordering::Relaxed);
        let signals: Vec<&str> = [
            (SinkSignal::Logs, "logs"),
            (SinkSignal::Metrics, "metrics"),
            (SinkSignal::Traces, "traces"),
        ]
        .into_iter()
        .filter(|(sig, _)| h.config.ships(*sig))
        .map(|(_, n)| n)
        .collect();
        out.insert(
            h.name.clone(),
            serde_json::json!({
                "type": h.config.kind,
                "endpoint": h.config.endpoint,
                "shipping": true,
                "signals": signals,
                "shipped": s.shipped.load(Ordering::Relaxed),
                "dropped": s.dropped.load(Ordering::Relaxed),
                "failed": s.failed.load(Ordering::Relaxed),
                "attempts": s.attempts.load(Ordering::Relaxed),
                "lastSuccess": (last > 0).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(last)).to_string()),
                "lastError": s.last_error.lock().ok().and_then(|e| e.clone()),
            }),
        );
    }
    serde_json::json!({ "sinks": out })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn start(name: &str, sink: &Sink, gather: Gather) -> Running {
    let mut tasks = Vec::new();
    let mut flush = Vec::new();
    let (close, close_rx) = watch::channel(false);
    let (tx, rx) = if sink.ships(SinkSignal::Logs) {
        let (tx, rx) = mpsc::channel(sink.queue_size());
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (traces_tx, traces_rx) = if sink.kind == SinkType::Otlp && sink.ships(SinkSignal::Traces) {
        let (tx, rx) = mpsc::channel(sink.queue_size());
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let handle = Arc::new(SinkHandle::new(name, sink, tx, traces_tx));
    if !sink.tls_verify() {
        tracing::warn!(sink = %name, "tlsVerify is false: the sink's server certificates are not verified");
    }
    match sink.kind {
        SinkType::Otlp => {
            let gather = sink.ships(SinkSignal::Metrics).then_some(gather);
            let (f, t) =
                crate::telemetry::otel::start_sink(&handle, rx, traces_rx, close_rx, gather);
            flush = f;
            tasks = t;
        }
        SinkType::HttpJson => {
            let client = sink_client(sink).map_err(|e| {
                tracing::error!(sink = %name, error = %e, "cannot set up the sink's HTTP client; every send fails");
                e
            });
            if let Some(rx) = rx {
                flush.push(tokio::spawn(http_logs(
                    handle.clone(),
                    client.clone(),
                    rx,
                    close_rx,
                )));
            }
            if sink.ships(SinkSignal::Metrics) {
                tasks.push(tokio::spawn(http_metrics(handle.clone(), client, gather)));
            }
        }
        SinkType::Syslog => {
            if let Some(rx) = rx {
                flush.push(tokio::spawn(syslog(handle.clone(), rx, close_rx)));
            }
        }
    }
    tracing::info!(sink = %name, kind = ?sink.kind, endpoint = %sink.endpoint, "telemetry sink started");
    Running {
        handle,
        close,
        flush,
        tasks,
    }
}

pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client of an `httpJson` sink: HTTP/1.1 (`transport: http`) or HTTP/3.
#[derive(Clone)]
pub(crate) enum SinkClient {
    Http(Box<HttpClient>),
    H3(Arc<crate::telemetry::sink_h3::H3Client>),
}

fn sink_client(sink: &Sink) -> Result<SinkClient, String> {
    Ok(match sink.transport() {
        SyslogTransport::Http3 => {
            SinkClient::H3(Arc::new(crate::telemetry::sink_h3::H3Client::new(sink)?))
        }
        _ => SinkClient::Http(Box::new(http_client(sink)?)),
    })
}

/// One send; the response status once its body is read (a slow body is cut after `timeout`).
async fn send_once(
    client: &SinkClient,
    req: http::Request<Bytes>,
    timeout: Duration,
) -> Result<http::StatusCode, String> {
    match client {
        SinkClient::H3(c) => match tokio::time::timeout(timeout, c.request(req)).await {
            Err(_) => Err(format!("timed out after {timeout:?}")),
            Ok(r) => r,
        },
        SinkClient::Http(c) => {
            match tokio::time::timeout(timeout, c.request(req.map(Full::new))).await {
                Err(_) => Err(format!("timed out after {timeout:?}")),
                Ok(Err(e)) => Err(format!("request failed: {e}")),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    // Drain so the connection can be reused.
                    let _ = tokio::time::timeout(
                        timeout,
                        http_body_util::BodyExt::collect(resp.into_body()),
                    )
                    .await;
                    Ok(status)
                }
            }
        }
    }
}

/// An HTTP/1.1 client for `http://` and `https://` (system roots, or `caFile`); the error says
/// why TLS cannot be set up (every send then fails with it).
pub(crate) fn http_client(sink: &Sink) -> Result<HttpClient, String> {
    client_for(sink, false)
}

/// [`http_client`], or with `h2` an HTTP/2-only one (h2c for `http://`, ALPN h2 for
/// `https://`), for OTLP/gRPC.
pub(crate) fn client_for(sink: &Sink, h2: bool) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(sink.timeout()));
    http.enforce_http(false);
    let https_needed =
        sink.endpoint.starts_with("https://") || sink.metrics_endpoint().starts_with("https://");
    let tls = if sink.tls_verify() {
        crate::http::tls::client_config(sink.ca_file.as_deref(), https_needed)?
    } else {
        crate::http::tls::client_config_no_verify()?
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if h2 {
        let https = builder.enable_http2().wrap_connector(http);
        return Ok(Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(https));
    }
    let https = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The receiving end of a log (or span) queue, with the shutdown signal.
pub(crate) struct Queue<T = Arc<AccessEvent>> {
    rx: mpsc::Receiver<T>,
    close: watch::Receiver<bool>,
    closing: bool,
    /// The wait after the next batch that cannot be sent.
    pause: crate::telemetry::backoff::Pause,
}

impl<T> Queue<T> {
    pub(crate) fn new(rx: mpsc::Receiver<T>, close: watch::Receiver<bool>) -> Queue<T> {
        Queue {
            rx,
            close,
            closing: false,
            pause: Default::default(),
        }
    }

    /// After a batch that could not be sent (every attempt failed): waits before the next one
    /// (1 s, doubling to 30 s), so a sink that is down does not cost the encoding of batches
    /// bound to fail; meanwhile the queue fills and drops (counted). Shutdown ends the wait.
    pub(crate) async fn failed(&mut self) {
        if self.closing {
            return;
        }
        let pause = self.pause.next_pause();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.close.changed() => self.closing = true,
        }
    }

    /// A batch was sent: the next failure waits the first pause again.
    pub(crate) fn succeeded(&mut self) {
        self.pause.reset();
    }

    /// The next event; once closing, only what is already queued, then `None`.
    async fn next(&mut self) -> Option<T> {
        loop {
            if self.closing {
                return self.rx.try_recv().ok();
            }
            tokio::select! {
                biased;
                ev = self.rx.recv() => return ev,
                // A dropped sender counts as closing too.
                _ = self.close.changed() => self.closing = true,
            }
        }
    }

    /// Up to `max` events, or fewer once the oldest is `wait` old (or at shutdown, what is left).
    pub(crate) async fn next_batch(&mut self, max: usize, wait: Duration) -> Option<Vec<T>> {
        let first = self.next().await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut batch = vec![first];
        // One timer per batch, not one per event.
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        while batch.len() < max {
            tokio::select! {
                biased;
                ev = self.next() => match ev {
                    Some(ev) => batch.push(ev),
                    None => break,
                },
                _ = &mut timer => break,
            }
        }
        Some(batch)
    }
}

async fn http_logs(
    h: Arc<SinkHandle>,
    client: Result<SinkClient, String>,
    rx: mpsc::Receiver<Arc<AccessEvent>>,
    close: watch::Receiver<bool>,
) {
    let c = &h.config;
    let uri: http::Uri = match c.endpoint.parse() {
        Ok(u) => u,
        Err(_) => return, // validated
    };
    let mut q = Queue::new(rx, close);
    while let Some(batch) = q.next_batch(c.batch_size(), c.flush_interval()).await {
        // Written straight into the body: no per-event `serde_json::Value`.
        let body = Bytes::from(crate::telemetry::sinkenc::ecs_batch(
            &batch,
            c.source_name(),
        ));
        let n = batch.len() as u64;
        drop(batch);
        match post(&h, &client, &uri, body).await {
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

async fn http_metrics(h: Arc<SinkHandle>, client: Result<SinkClient, String>, gather: Gather) {
    let c = &h.config;
    let uri: http::Uri = match c.metrics_endpoint().parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(c.flush_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; ship after one interval
    loop {
        tick.tick().await;
        let objs = metric_objects(&gather(), now_ms());
        let n = objs.len() as u64;
        for chunk in objs.chunks(c.batch_size().max(1)) {
            let body = Bytes::from(serde_json::to_vec(chunk).unwrap_or_default());
            let k = chunk.len() as u64;
            match post(&h, &client, &uri, body).await {
                Ok(()) => h.stats.success(k),
                Err(e) => {
                    tracing::warn!(sink = %h.name, items = n, error = %e, "metrics batch dropped");
                    h.stats.failure(k, e);
                }
            }
        }
    }
}

const MAX_ATTEMPTS: u32 = 4;

/// How long shutdown waits for the log sinks to send what they have queued.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// POSTs a JSON body; retries 5xx, 429, timeouts and connection errors with backoff.
async fn post(
    h: &SinkHandle,
    client: &Result<SinkClient, String>,
    uri: &http::Uri,
    body: Bytes,
) -> Result<(), String> {
    let c = &h.config;
    let client = client.as_ref().map_err(|e| e.clone())?;
    let mut waits = crate::telemetry::backoff::send_waits(MAX_ATTEMPTS);
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            if let Some(wait) = waits.next() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "weir-dataplane");
        if let Some(k) = &c.api_key {
            req = req.header(c.api_key_header(), k.0.as_str());
        }
        let req = match req.body(body.clone()) {
            Ok(r) => r,
            Err(e) => return Err(format!("cannot build request: {e}")),
        };
        h.stats.attempts.fetch_add(1, Ordering::Relaxed);
        match send_once(client, req, c.timeout()).await {
            Err(e) => last = e,
            Ok(status) => {
                if status.is_success() {
                    return Ok(());
                }
                last = format!("status {status}");
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                    return Err(format!("{last} (not retried)"));
                }
            }
        }
    }
    Err(format!("{last} after {MAX_ATTEMPTS} attempts"))
}

/// Counters and gauges (histograms and summaries as `_count` and `_sum` counters) as JSON
/// objects `{name,type,value,labels,timestamp,help}`.
pub fn metric_objects(families: &[MetricFamily], now_ms: u64) -> Vec<serde_json::Value> {
    let ts =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(now_ms)).to_string();
    let mut out = Vec::new();
    for f in families {
        for m in f.get_metric() {
            let labels: serde_json::Map<String, serde_json::Value> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().into()))
                .collect();
            let mut push = |name: String, kind: &str, value: f64| {
                out.push(serde_json::json!({
                    "name": name,
                    "type": kind,
                    "value": value,
                    "labels": labels.clone(),
                    "timestamp": ts,
                    "help": f.help(),
                }));
            };
            match f.get_field_type() {
                MetricType::COUNTER => {
                    push(f.name().into(), "counter", m.get_counter().get_value())
                }
                MetricType::GAUGE => push(f.name().into(), "gauge", m.get_gauge().get_value()),
                MetricType::HISTOGRAM => {
                    let hg = m.get_histogram();
                    push(
                        format!("{}_count", f.name()),
                        "counter",
                        hg.get_sample_count() as f64,
                    );
                    push(format!("{}_sum", f.name()), "counter", hg.get_sample_sum());
                }
                _ => {}
            }
        }
    }
    out
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
pub fn syslog_message(e: &AccessEvent, sink: &Sink) -> String {
    let ip = e.client.ip().to_string();
    let mut line = String::with_capacity(128);
    crate::telemetry::sinkenc::access_line(&mut line, e, &ip);
    let severity = if e.status >= 500 { 3 } else { 6 };
    let pri = u32::from(sink.facility()) * 8 + severity;
    let sd_escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace(']', "\\]")
    };
    format!(
        "<{pri}>1 {} {} {} {} access [weir@32473 route=\"{}\" backend=\"{}\" status=\"{}\" method=\"{}\" duration_ms=\"{:.3}\" trace_id=\"{}\"] {}",
        humantime::format_rfc3339_millis(e.time),
        sink.source_name(),
        sink.app_name(),
        std::process::id(),
        sd_escape(&e.route),
        sd_escape(&e.backend),
        e.status,
        sd_escape(e.method.as_str()),
        e.duration.as_secs_f64() * 1000.0,
        crate::http::tracecontext::TraceId(e.trace_id),
        line
    )
}

async fn syslog(
    h: Arc<SinkHandle>,
    rx: mpsc::Receiver<Arc<AccessEvent>>,
    close: watch::Receiver<bool>,
) {
    let mut rx = Queue::new(rx, close);
    let c = &h.config;
    let timeout = c.timeout();
    match c.transport() {
        // http / http3 are refused for syslog by validation.
        SyslogTransport::Udp | SyslogTransport::Http | SyslogTransport::Http3 => {
            let mut sock: Option<tokio::net::UdpSocket> = None;
            while let Some(ev) = rx.next().await {
                let msg = syslog_message(&ev, c);
                h.stats.attempts.fetch_add(1, Ordering::Relaxed);
                if sock.is_none() {
                    sock = udp_connect(&c.endpoint)
                        .await
                        .map_err(|e| h.stats.failure(1, e))
                        .ok();
                    if sock.is_none() {
                        continue;
                    }
                }
                if let Some(s) = &sock {
                    match s.send(msg.as_bytes()).await {
                        Ok(_) => h.stats.success(1),
                        Err(e) => {
                            h.stats.failure(1, format!("udp send: {e}"));
                            sock = None;
                        }
                    }
                }
            }
        }
        SyslogTransport::Tcp => {
            let mut conn: Option<tokio::net::TcpStream> = None;
            while let Some(ev) = rx.next().await {
                let msg = syslog_message(&ev, c);
                let frame = format!("{} {}", msg.len(), msg);
                // One reconnect per message: a stale connection is noticed on write.
                let mut sent = false;
                let mut err = String::new();
                for _ in 0..2 {
                    h.stats.attempts.fetch_add(1, Ordering::Relaxed);
                    if conn.is_none() {
                        match tokio::time::timeout(
                            timeout,
                            tokio::net::TcpStream::connect(c.endpoint.as_str()),
                        )
                        .await
                        {
                            Ok(Ok(s)) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(s);
                            }
                            Ok(Err(e)) => {
                                err = format!("tcp connect: {e}");
                                break;
                            }
                            Err(_) => {
                                err = "tcp connect timed out".into();
                                break;
                            }
                        }
                    }
                    let Some(s) = conn.as_mut() else { break };
                    match tokio::time::timeout(timeout, s.write_all(frame.as_bytes())).await {
                        Ok(Ok(())) => {
                            sent = true;
                            break;
                        }
                        Ok(Err(e)) => err = format!("tcp write: {e}"),
                        Err(_) => err = "tcp write timed out".into(),
                    }
                    conn = None;
                }
                if sent {
                    h.stats.success(1);
                } else {
                    h.stats.failure(1, err);
                }
            }
        }
    }
}

async fn udp_connect(endpoint: &str) -> Result<tokio::net::UdpSocket, String> {
    let addr = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("resolve {endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint} resolves to nothing"))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("udp bind: {e}"))?;
    s.connect(addr)
        .await
        .map_err(|e| format!("udp connect: {e}"))?;
    Ok(s)
}

/// An access event for unit tests (shipper and sinkenc): event `i` is `i` days (less a
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AccessEvent {
        sample_event(0)
    }

    #[test]
    fn ecs_fields() {
        let d: serde_json::Value = serde_json::from_slice(&crate::telemetry::sinkenc::ecs_batch(
            &[Arc::new(event())],
            "edge",
        ))
        .unwrap();
        let d = &d[0];
        assert_eq!(d["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(d["ecs"]["version"], "8.0.0");
        assert_eq!(d["event"]["duration"], 1_500_000);
        assert_eq!(d["http"]["response"]["status_code"], 200);
        assert_eq!(d["http"]["response"]["body"]["bytes"], 42);
        assert_eq!(d["url"]["domain"], "example.com");
        assert_eq!(d["client"]["address"], "10.0.0.1");
        assert_eq!(d["service"]["name"], "edge");
        assert_eq!(d["labels"]["route"], "r");
    }

    #[test]
    fn syslog_framing() {
        let s = Sink::new(SinkType::Syslog, "127.0.0.1:514");
        let m = syslog_message(&event(), &s);
        assert!(
            m.starts_with("<134>1 2023-11-14T22:13:20.123Z weir weir "),
            "{m}"
        );
        assert!(
            m.contains(" access [weir@32473 route=\"r\" backend=\"b\\\"\\]\""),
            "{m}"
        );
    }

    #[test]
    fn metric_objects_from_registry() {
        let r = prometheus::Registry::new();
        let c =
            prometheus::IntCounterVec::new(prometheus::Opts::new("x_total", "X."), &["k"]).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["v"]).inc_by(3);
        let objs = metric_objects(&r.gather(), 0);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0]["name"], "x_total");
        assert_eq!(objs[0]["type"], "counter");
        assert_eq!(objs[0]["value"], 3.0);
        assert_eq!(objs[0]["labels"]["k"], "v");
        assert_eq!(objs[0]["help"], "X.");
        assert_eq!(objs[0]["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
