//! The registry of sink kinds and the running set: [`Sinks`] starts, keeps, replaces and stops
//! sinks as configs are applied, fans access events out to the log sinks, and closes them at
//! shutdown.

use crate::telemetry::event::AccessEvent;
use crate::telemetry::sink::kind::{Gather, Inputs, Queue, SinkHandle, SinkKind, Tasks};
use crate::telemetry::sink::otlp_enc::Shared;
use crate::telemetry::sink::{http_json, otlp, syslog};
use arc_swap::ArcSwapOption;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use weir_config::{Sink, SinkSignal, SinkType};

/// The registry: the implementation of each contract `SinkType`.
fn kind(t: SinkType) -> &'static dyn SinkKind {
    match t {
        SinkType::HttpJson => &http_json::HttpJson,
        SinkType::Syslog => &syslog::Syslog,
        SinkType::Otlp => &otlp::Otlp,
    }
}

struct Running {
    handle: Arc<SinkHandle>,
    /// Set to `true` at shutdown: log and span tasks send what is queued, then end.
    close: watch::Sender<bool>,
    tasks: Tasks,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in self.tasks.other.iter().chain(&self.tasks.flush) {
            t.abort();
        }
    }
}

/// The running sinks of one dataplane, kept across config applies (owned by
/// [`crate::telemetry::hub::Telemetry`]).
#[derive(Default)]
pub struct Sinks {
    running: Mutex<BTreeMap<String, Running>>,
    /// Sinks that take access logs; read on the request path.
    logs: ArcSwapOption<Vec<Arc<SinkHandle>>>,
    shipping_logs: AtomicBool,
}

impl Sinks {
    /// Whether any sink takes access logs (the request path then keeps host and path).
    pub fn shipping_logs(&self) -> bool {
        self.shipping_logs.load(Ordering::Relaxed)
    }

    /// Queues an access event on every log sink; never waits. A full queue drops it and counts.
    pub fn ship_access(&self, ev: AccessEvent) {
        let guard = self.logs.load();
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

    /// Starts, replaces and stops sinks to match `sinks`; returns the ones that take spans.
    /// Needs a Tokio runtime.
    pub fn reconcile(
        &self,
        sinks: &BTreeMap<String, Sink>,
        gather: Gather,
        otlp: &Arc<Shared>,
    ) -> Vec<Arc<SinkHandle>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
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
            running.insert(name.clone(), start(name, sink, gather.clone(), otlp));
        }
        let logs: Vec<Arc<SinkHandle>> = running
            .values()
            .filter(|r| r.handle.logs.is_some())
            .map(|r| r.handle.clone())
            .collect();
        self.shipping_logs
            .store(!logs.is_empty(), Ordering::Relaxed);
        self.logs.store((!logs.is_empty()).then(|| Arc::new(logs)));
        running
            .values()
            .filter(|r| r.handle.traces.is_some())
            .map(|r| r.handle.clone())
            .collect()
    }

    /// Shutdown, after the listeners drained: stops taking access events and closes every
    /// sink; returns the tasks that are sending what was queued (see [`flush`]). The sinks'
    /// other tasks (metrics) stop.
    pub fn close(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.shipping_logs.store(false, Ordering::Relaxed);
        self.logs.store(None);
        let running: Vec<Running> =
            std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        let mut waits = Vec::new();
        for mut r in running {
            let _ = r.close.send(true);
            waits.append(&mut r.tasks.flush);
            // `r` drops here: its other tasks (metrics) stop.
        }
        waits
    }

    /// The running sinks.
    pub fn handles(&self) -> Vec<Arc<SinkHandle>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.handle.clone())
            .collect()
    }
}

/// Waits up to `grace` for the closed sinks' tasks to send what is queued (new batches, with
/// their retries); then stops them.
pub async fn flush(mut waits: Vec<tokio::task::JoinHandle<()>>, grace: Duration) {
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

/// `GET /sinks`: per-sink counters.
pub fn report(handles: &[Arc<SinkHandle>]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for h in handles {
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

fn start(name: &str, sink: &Sink, gather: Gather, otlp: &Arc<Shared>) -> Running {
    let kind = kind(sink.kind);
    let (close, close_rx) = watch::channel(false);
    let (tx, rx) = if sink.ships(SinkSignal::Logs) {
        let (tx, rx) = mpsc::channel(sink.queue_size());
        (Some(tx), Some(Queue::new(rx, close_rx.clone())))
    } else {
        (None, None)
    };
    let (traces_tx, traces_rx) = if kind.takes_spans(sink) {
        let (tx, rx) = mpsc::channel(sink.queue_size());
        (Some(tx), Some(Queue::new(rx, close_rx)))
    } else {
        (None, None)
    };
    let handle = Arc::new(SinkHandle::new(name, sink, tx, traces_tx));
    if !sink.tls_verify() {
        tracing::warn!(sink = %name, "tlsVerify is false: the sink's server certificates are not verified");
    }
    let tasks = kind.start(
        &handle,
        Inputs {
            logs: rx,
            spans: traces_rx,
            gather: sink.ships(SinkSignal::Metrics).then_some(gather),
            otlp: otlp.clone(),
        },
    );
    tracing::info!(sink = %name, kind = ?sink.kind, endpoint = %sink.endpoint, "telemetry sink started");
    Running {
        handle,
        close,
        tasks,
    }
}

/// How long shutdown waits for the sinks to send what they have queued.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
