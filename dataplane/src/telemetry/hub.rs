//! [`Telemetry`]: the handle a dataplane passes around instead of process globals. It owns
//! the access-log switch, the running sinks and the tracer; the server creates one, keeps it
//! across config applies (sinks and their counters survive reloads), and hands it to the
//! front doors, the request path, the admin API and the status page.

use crate::http::tracecontext::TraceContext;
use crate::telemetry::event::AccessEvent;
use crate::telemetry::otel::{RequestSpan, Tracing};
use crate::telemetry::sink::{Gather, SinkHandle, Sinks};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_config::{Sink, TracingConfig};

pub struct Telemetry {
    /// Access logs (target `weir::access`) on or off; switched at runtime by the admin API.
    access_log: AtomicBool,
    sinks: Sinks,
    tracing: Tracing,
}

impl Telemetry {
    /// With the process environment's `OTEL_*` variables.
    pub fn new(access_log: bool) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            access_log: AtomicBool::new(access_log),
            sinks: Sinks::default(),
            tracing: Tracing::default(),
        })
    }

    /// Turns access logs on or off.
    pub fn set_access_log(&self, on: bool) {
        self.access_log.store(on, Ordering::Relaxed);
    }

    pub fn access_log_enabled(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Whether any sink takes access logs (the request path then keeps host and path).
    #[inline]
    pub fn shipping_logs(&self) -> bool {
        self.sinks.shipping_logs()
    }

    /// Queues an access event on every log sink; never waits.
    pub fn ship_access(&self, ev: AccessEvent) {
        self.sinks.ship_access(ev)
    }

    /// Sampling and, when sampled and exported, the request's span (see
    /// [`Tracing::start`]).
    #[inline]
    pub fn start_span(&self, trace: &mut TraceContext) -> Option<Box<RequestSpan>> {
        self.tracing.start(trace)
    }

    /// After a config apply: the snapshot's `tracing` section and sinks. Unchanged sinks keep
    /// running; `gather` reads the registry for the sinks that ship metrics. Needs a Tokio
    /// runtime.
    pub fn apply(
        &self,
        sinks: &BTreeMap<String, Sink>,
        tracing: Option<&TracingConfig>,
        gather: Gather,
    ) {
        self.tracing.configure(tracing);
        let spans = self.sinks.reconcile(sinks, gather, self.tracing.otlp());
        self.tracing.set_trace_sinks(spans);
    }

    /// Shutdown, after the listeners drained: log and span queues are sent (new batches, with
    /// their retries) for up to `grace`, then every sink stops.
    pub async fn shutdown(&self, grace: Duration) {
        let mut waits = self.sinks.close();
        waits.extend(self.tracing.close_env());
        crate::telemetry::sink::flush(waits, grace).await;
    }

    /// The running sinks and the `OTEL_*` span exporter, for `/metrics` and `GET /sinks`.
    pub fn sink_handles(&self) -> Vec<Arc<SinkHandle>> {
        let mut all = self.sinks.handles();
        all.extend(self.tracing.env_handle());
        all
    }

    /// `GET /sinks`: per-sink counters.
    pub fn sink_report(&self) -> serde_json::Value {
        crate::telemetry::sink::report(&self.sink_handles())
    }
}
