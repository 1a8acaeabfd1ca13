//! What every sink kind is built from: the [`SinkKind`] trait, the [`SinkHandle`] the request
//! path and the reports see, its counters, and the [`Queue`] a kind's tasks read from.

use crate::telemetry::event::{AccessEvent, FinishedSpan};
use crate::telemetry::sink::otlp_enc::Shared;
use prometheus::proto::MetricFamily;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use weir_config::Sink;

/// A sink kind: how a configured sink of that kind ships what its queues receive. Called when
/// a sink starts (never on the request path), so a `dyn` call costs nothing measurable.
///
/// Adding a kind: a file in this folder implementing this trait (with its encoder), one line in
/// [`crate::telemetry::sink::registry`]'s `kind`, and the `SinkType` variant with its settings in the contract.
pub trait SinkKind: Sync {
    /// Whether sinks of this kind take finished request spans (a span queue is made for them).
    fn takes_spans(&self, _config: &Sink) -> bool {
        false
    }

    /// Spawns the sink's tasks (needs a Tokio runtime). Tasks in [`Tasks::flush`] must end by
    /// themselves once their queues are closed and drained (shutdown waits for them).
    fn start(&self, handle: &Arc<SinkHandle>, inputs: Inputs) -> Tasks;
}

/// What a sink's tasks read from.
pub struct Inputs {
    /// Access events, when the sink ships logs.
    pub logs: Option<Queue<Arc<AccessEvent>>>,
    /// Finished request spans, when [`SinkKind::takes_spans`].
    pub spans: Option<Queue<Arc<FinishedSpan>>>,
    /// The registry's families, when the sink ships metrics.
    pub gather: Option<Gather>,
    /// What every `otlp` exporter shares (resource, start time), owned by the tracer.
    pub otlp: Arc<Shared>,
}

/// The tasks of a running sink.
#[derive(Default)]
pub struct Tasks {
    /// Tasks that send what is queued and end once closed (logs, spans).
    pub flush: Vec<tokio::task::JoinHandle<()>>,
    /// The others (metrics), aborted when the sink stops.
    pub other: Vec<tokio::task::JoinHandle<()>>,
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
    pub(crate) logs: Option<mpsc::Sender<Arc<AccessEvent>>>,
    /// Finished request spans (`otlp` sinks shipping traces).
    pub(crate) traces: Option<mpsc::Sender<Arc<FinishedSpan>>>,
}

impl SinkHandle {
    pub(crate) fn new(
        name: &str,
        config: &Sink,
        logs: Option<mpsc::Sender<Arc<AccessEvent>>>,
        traces: Option<mpsc::Sender<Arc<FinishedSpan>>>,
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
    pub(crate) fn queue_span(&self, span: Arc<FinishedSpan>) {
        if let Some(tx) = &self.traces {
            let n = span.span_count();
            if tx.try_send(span).is_err() {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The receiving end of a log (or span) queue, with the shutdown signal.
pub struct Queue<T> {
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

    /// Records one batch's delivery: the sink's counters and the queue's pause (a failure
    /// waits before the next batch). The one place every kind reports an outcome.
    pub(crate) async fn settle(
        &mut self,
        h: &SinkHandle,
        items: u64,
        what: &'static str,
        sent: Result<(), String>,
    ) {
        match sent {
            Ok(()) => {
                h.stats.success(items);
                self.succeeded();
            }
            Err(e) => {
                tracing::warn!(sink = %h.name, items, error = %e, "{what} batch dropped");
                h.stats.failure(items, e);
                self.failed().await;
            }
        }
    }

    /// The next event; once closing, only what is already queued, then `None`.
    pub(crate) async fn next(&mut self) -> Option<T> {
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
