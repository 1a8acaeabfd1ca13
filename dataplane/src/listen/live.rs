//! The small handle a front door holds: the runtime serving now, the telemetry handle and the
//! drain signal. The
//! `Dataplane` (layer 8) owns one and swaps runtimes into it; front doors only read it, so they
//! do not import the server that starts them.

use crate::runtime::compile::Runtime;
use crate::telemetry::hub::Telemetry;
use arc_swap::ArcSwapOption;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The live runtime and the drain signal, shared by the `Dataplane` and its front doors.
pub struct Live {
    runtime: ArcSwapOption<Runtime>,
    /// Access log switch, sinks and tracer; the same for the process's whole life.
    telemetry: Arc<Telemetry>,
    /// Drain signal for QUIC connections and their requests; every connection and request
    /// holds a receiver, so `closed()` means "all done".
    drain: watch::Sender<bool>,
    shutting_down: AtomicBool,
    /// Drain signal of TCP connections (HTTP/1.1 keep-alives close after their response,
    /// HTTP/2 gets GOAWAY); taken at shutdown.
    tcp_drain: Mutex<Option<GracefulShutdown>>,
}

impl Live {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Live {
            runtime: ArcSwapOption::empty(),
            telemetry,
            drain: watch::channel(false).0,
            shutting_down: AtomicBool::new(false),
            tcp_drain: Mutex::new(Some(GracefulShutdown::new())),
        }
    }
}

impl Live {
    /// Where requests' access logs and spans go.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The runtime serving now, if a config was loaded.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// Makes `rt` the runtime every new request is served with.
    pub fn store(&self, rt: Arc<Runtime>) {
        self.runtime.store(Some(rt));
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// A drain receiver for a new QUIC connection, `None` once shutdown has begun.
    pub fn drain_watcher(&self) -> Option<watch::Receiver<bool>> {
        (!self.is_shutting_down()).then(|| self.drain.subscribe())
    }

    /// Refuses new connections from now on ([`Live::drain_watcher`] returns `None`).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The drain sender: `send(true)` asks every holder to finish, `closed()` waits for them.
    pub fn drain(&self) -> &watch::Sender<bool> {
        &self.drain
    }

    /// A drain watcher for a new TCP connection, `None` once shutdown has taken the signal.
    pub fn tcp_watcher(&self) -> Option<Watcher> {
        self.tcp_drain
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|g| g.watcher()))
    }

    /// The TCP drain signal, for shutdown (new connections are refused from then on).
    pub fn take_tcp_drain(&self) -> Option<GracefulShutdown> {
        self.tcp_drain.lock().ok().and_then(|mut g| g.take())
    }
}
