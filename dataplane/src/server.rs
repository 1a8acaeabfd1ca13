//! The running dataplane: the current runtime, its listeners (bound here, served by the front
//! doors in [`crate::listen`]), reload and graceful shutdown.

use crate::listen::live::Live;
use crate::runtime::{cert_stamps, compile, CertStamp, ListenerRt, Runtime};
use crate::telemetry::hub::Telemetry;
use crate::telemetry::metrics::metrics;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use weir_config::{ConfigError, Errors, Snapshot};

struct RunningListener {
    settings: Arc<ArcSwap<ListenerRt>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    quic: Option<RunningQuic>,
}

struct RunningQuic {
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningQuic {
    /// Stops accepting; established connections carry on.
    fn stop(&self) {
        self.endpoint.set_server_config(None);
        let _ = self.stop.send(true);
    }
}

/// How far the shutdown has come; `GET /drained` on the admin API waits on it (the injected
/// sidecar's app container holds its SIGTERM in a preStop hook until `Drained`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainPhase {
    Serving,
    /// SIGTERM received: not accepting, in-flight requests finishing.
    Draining,
    /// Every connection closed, or the drain deadline passed.
    Drained,
}

/// Why a delta (`PATCH /config`) was not applied; the running config is unchanged in each case.
#[derive(Debug, thiserror::Error)]
pub enum DeltaRejected {
    /// The pod runs another version (or none) than the delta's `baseVersion`.
    #[error("base version mismatch: running {current:?}")]
    BaseMismatch { current: Option<String> },
    /// The delta does not fit its base (names a route or backend the base lacks).
    #[error("delta does not apply: {0}")]
    Delta(ConfigError),
    /// The resulting snapshot is invalid, as a `PUT` of it would be.
    #[error("resulting config is invalid: {0}")]
    Invalid(ConfigError),
}

/// One dataplane process's serving state.
pub struct Dataplane {
    /// The runtime serving now and the drain signal, shared with the front doors.
    live: Arc<Live>,
    /// Held while a config is applied, so applies never interleave.
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, RunningListener>>,
    /// The file SIGHUP re-reads, when started with one.
    pub config_path: Option<PathBuf>,
    phase: watch::Sender<DrainPhase>,
}

impl Dataplane {
    pub fn new(config_path: Option<PathBuf>, telemetry: Arc<Telemetry>) -> Arc<Dataplane> {
        Arc::new(Dataplane {
            live: Arc::new(Live::new(telemetry)),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            config_path,
            phase: watch::Sender::new(DrainPhase::Serving),
        })
    }

    /// Follows the shutdown's progress (see [`DrainPhase`]).
    pub fn drain_phase(&self) -> watch::Receiver<DrainPhase> {
        self.phase.subscribe()
    }

    /// Access log switch, sinks and tracer, kept across config applies.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        self.live.telemetry()
    }

    /// The runtime serving now, if a config was loaded.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.live.runtime()
    }

    pub fn is_ready(&self) -> bool {
        self.live.runtime().is_some() && !self.live.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.live.is_shutting_down()
    }

    /// A drain receiver for a new QUIC connection, `None` once shutdown has begun.
    pub fn drain_watcher(&self) -> Option<watch::Receiver<bool>> {
        self.live.drain_watcher()
    }

    /// Validates, compiles and swaps in `snapshot`; on any error nothing changes and every
    /// problem is returned. New listener sockets are bound before the swap, removed ones stop
    /// accepting after it; open connections are never dropped.
    pub async fn apply(self: &Arc<Self>, snapshot: Snapshot) -> Result<String, ConfigError> {
        let mut listeners = self.listeners.lock().await;
        self.apply_locked(&mut listeners, snapshot)
    }

    /// Applies a delta (`PATCH /config`) to the running snapshot, when that is the delta's base
    /// version, then validates, compiles and swaps in the result exactly like [`Self::apply`]
    /// would the whole snapshot. The version check and the apply hold the same lock, so no
    /// other config can slip in between.
    pub async fn apply_delta(
        self: &Arc<Self>,
        delta: &weir_config::Delta,
    ) -> Result<String, DeltaRejected> {
        let mut listeners = self.listeners.lock().await;
        let base = match self.live.runtime() {
            Some(rt) if rt.version == delta.base_version => rt,
            other => {
                return Err(DeltaRejected::BaseMismatch {
                    current: other.map(|rt| rt.version.clone()),
                })
            }
        };
        let snapshot = delta.apply(&base.snapshot).map_err(DeltaRejected::Delta)?;
        drop(base);
        self.apply_locked(&mut listeners, snapshot)
            .map_err(DeltaRejected::Invalid)
    }

    /// Re-applies the running snapshot so certificate files are read again, unless another
    /// config was applied since `expected` was loaded.
    pub async fn reload_certificates(
        self: &Arc<Self>,
        expected: &Arc<Runtime>,
    ) -> Result<bool, ConfigError> {
        let mut listeners = self.listeners.lock().await;
        match self.live.runtime() {
            Some(current) if Arc::ptr_eq(&current, expected) => {
                self.apply_locked(&mut listeners, (*current.snapshot).clone())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Watches the certificate files of the running config (size and mtime, every `every`) and
    /// reloads them when they change; TCP and QUIC alike, established connections untouched.
    pub fn spawn_cert_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let dp = self.clone();
        tokio::spawn(async move {
            // Stamps that failed to load; not retried until the files change again.
            let mut failed: Option<Vec<CertStamp>> = None;
            loop {
                tokio::time::sleep(every).await;
                let Some(rt) = dp.runtime() else { continue };
                let stamps = cert_stamps(&rt.snapshot);
                if stamps == rt.cert_stamps || failed.as_ref() == Some(&stamps) {
                    continue;
                }
                match dp.reload_certificates(&rt).await {
                    Ok(true) => {
                        failed = None;
                        tracing::info!(version = %rt.version, "certificate files changed; reloaded");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        // Probably half-written; retried when the files change again.
                        failed = Some(stamps);
                        tracing::error!("certificate files changed but cannot be loaded, keeping the old ones:\n{e}");
                    }
                }
            }
        })
    }

    fn apply_locked(
        self: &Arc<Self>,
        listeners: &mut HashMap<SocketAddr, RunningListener>,
        snapshot: Snapshot,
    ) -> Result<String, ConfigError> {
        let result = self.apply_inner(listeners, snapshot);
        metrics().config_applied(result.as_deref().map_err(|_| ()));
        result
    }

    fn apply_inner(
        self: &Arc<Self>,
        listeners: &mut HashMap<SocketAddr, RunningListener>,
        snapshot: Snapshot,
    ) -> Result<String, ConfigError> {
        let prev = self.live.runtime();
        let started = std::time::Instant::now();
        let rt = compile(snapshot, prev.as_deref())?;
        // Validate + compile; measured per reload (BENCHMARKS.md, "control plane at scale").
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;

        // Bind every new socket first: if one fails, nothing has changed.
        let mut errs = Errors::default();
        let mut fresh_tcp = HashMap::new();
        let mut fresh_quic = HashMap::new();
        for (i, l) in rt.listeners.iter().enumerate() {
            let running = listeners.get(&l.address);
            if running.is_none() {
                match bind(l.address) {
                    Ok(sock) => {
                        fresh_tcp.insert(l.address, sock);
                    }
                    Err(e) => errs.push(
                        format!("listeners[{i}].address"),
                        format!("cannot listen on tcp {}: {e}", l.address),
                    ),
                }
            }
            if let Some(q) = &l.quic {
                if running.is_none_or(|r| r.quic.is_none()) {
                    match crate::listen::h3::bind_endpoint(
                        l.address,
                        &q.settings,
                        q.server_config.clone(),
                    ) {
                        Ok(ep) => {
                            fresh_quic.insert(l.address, ep);
                        }
                        Err(e) => errs.push(
                            format!("listeners[{i}].address"),
                            format!("cannot listen on udp {}: {e}", l.address),
                        ),
                    }
                }
            }
        }
        errs.into_result()?;

        let rt = Arc::new(rt);
        self.live.store(rt.clone());
        let dp = Arc::downgrade(self);
        self.telemetry().apply(
            &rt.snapshot.sinks,
            rt.snapshot.tracing.as_ref(),
            Arc::new(move || {
                let dp = dp.upgrade();
                let rt = dp.as_ref().and_then(|d| d.runtime());
                let sinks = dp
                    .as_ref()
                    .map(|d| d.telemetry().sink_handles())
                    .unwrap_or_default();
                crate::telemetry::metrics::metrics().gather(
                    rt.as_deref()
                        .map(|r| r as &dyn crate::telemetry::metrics::StateSource),
                    &sinks,
                )
            }),
        );
        for l in &rt.listeners {
            let running = match listeners.get_mut(&l.address) {
                Some(r) => r,
                None => {
                    let Some(sock) = fresh_tcp.remove(&l.address) else {
                        continue;
                    };
                    tracing::info!(listener = %l.name, address = %l.address, protocol = ?l.protocol, "listening on tcp");
                    let running = self.spawn_listener(l.clone(), sock);
                    listeners.entry(l.address).or_insert(running)
                }
            };
            running.settings.store(Arc::new(l.clone()));
            match (&l.quic, &running.quic) {
                // New certificates and transport settings apply to new connections only.
                (Some(q), Some(rq)) => rq.endpoint.set_server_config(Some(q.server_config.clone())),
                (Some(_), None) => {
                    if let Some(ep) = fresh_quic.remove(&l.address) {
                        tracing::info!(listener = %l.name, address = %l.address, "listening on udp (HTTP/3)");
                        running.quic = Some(self.spawn_quic(ep, running.settings.clone()));
                    }
                }
                (None, Some(rq)) => {
                    tracing::info!(address = %l.address, "HTTP/3 turned off; no longer accepting QUIC");
                    rq.stop();
                    running.quic = None;
                }
                (None, None) => {}
            }
        }
        listeners.retain(|addr, running| {
            let keep = rt.listeners.iter().any(|l| l.address == *addr);
            if !keep {
                tracing::info!(address = %addr, "listener removed; no longer accepting");
                let _ = running.stop.send(true);
                if let Some(q) = &running.quic {
                    q.stop();
                }
            }
            keep
        });
        tracing::info!(version = %rt.version, routes = rt.snapshot.routes.len(), routes_reused = rt.reuse.reused, backends = rt.backends.len(), compile_ms = format_args!("{compile_ms:.1}"), "config applied");
        // The previous version is released on a blocking thread, not on this worker: even
        // with its unchanged routes shared, that is 10,000s of reference counts (~10% of a
        // one-route `PATCH` at 10,000 routes, perf), and the reply need not wait for it.
        if let (Some(prev), Ok(handle)) = (prev, tokio::runtime::Handle::try_current()) {
            handle.spawn_blocking(move || drop(prev));
        }
        Ok(rt.version.clone())
    }

    /// Re-reads the config file (SIGHUP). Errors leave the running config in place.
    pub async fn reload_from_file(self: &Arc<Self>) -> Result<String, ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::single(
                "",
                "started without --config; nothing to re-read",
            ));
        };
        let snap = tokio::fs::read(path)
            .await
            .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))
            .and_then(|bytes| {
                crate::runtime::pod_ip::expand(bytes, std::env::var("POD_IP").ok().as_deref())
            })
            .and_then(|bytes| weir_config::load(&bytes));
        match snap {
            Ok(snap) => self.apply(snap).await,
            Err(e) => {
                metrics().config_applied(Err(()));
                Err(e)
            }
        }
    }

    fn spawn_listener(self: &Arc<Self>, l: ListenerRt, sock: TcpListener) -> RunningListener {
        let settings = Arc::new(ArcSwap::from_pointee(l));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::listen::tcp::accept_loop(
            self.live.clone(),
            sock,
            settings.clone(),
            stop_rx,
        ));
        RunningListener {
            settings,
            stop,
            task,
            quic: None,
        }
    }

    fn spawn_quic(
        self: &Arc<Self>,
        endpoint: quinn::Endpoint,
        settings: Arc<ArcSwap<ListenerRt>>,
    ) -> RunningQuic {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::listen::h3::accept_loop(
            self.live.clone(),
            endpoint.clone(),
            settings,
            stop_rx,
        ));
        RunningQuic {
            endpoint,
            stop,
            task,
        }
    }

    /// Stops accepting, lets in-flight requests finish (HTTP/1.1 keep-alives close after their
    /// current response, HTTP/2 gets GOAWAY) for up to `drain`, then returns.
    pub async fn shutdown(&self, drain: Duration) {
        self.live.begin_shutdown();
        self.phase.send_replace(DrainPhase::Draining);
        let mut listeners = self.listeners.lock().await;
        let mut endpoints = Vec::new();
        for (_, l) in listeners.drain() {
            let _ = l.stop.send(true);
            let _ = l.task.await;
            if let Some(q) = l.quic {
                q.stop();
                let _ = q.task.await;
                endpoints.push(q.endpoint);
            }
        }
        let graceful = self.live.take_tcp_drain();
        let tcp_open = graceful.as_ref().map_or(0, |g| g.count());
        let quic_open = self.live.drain().receiver_count();
        tracing::info!(tcp_connections = tcp_open, quic_connections_and_requests = quic_open, deadline = ?drain, "draining");
        // QUIC connections answer this with GOAWAY and finish their accepted requests.
        let _ = self.live.drain().send(true);
        let tcp_done = async {
            if let Some(g) = graceful {
                g.shutdown().await;
            }
        };
        let quic_done = self.live.drain().closed();
        match tokio::time::timeout(drain, futures_util::future::join(tcp_done, quic_done)).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("drain deadline reached; closing the remaining connections"),
        }
        // Before the QUIC close and the log flush below, so a waiting `GET /drained` is
        // answered while the admin listener is still up.
        self.phase.send_replace(DrainPhase::Drained);
        for ep in endpoints {
            ep.close(quinn::VarInt::from_u32(0x100), b"shutting down"); // H3_NO_ERROR
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
        // The drained requests' access logs are queued by now; give the sinks a moment.
        self.telemetry()
            .shutdown(crate::telemetry::sink::SHUTDOWN_FLUSH)
            .await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}
