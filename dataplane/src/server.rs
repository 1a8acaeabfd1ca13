//! The running dataplane: the current runtime, its listeners, reload and graceful shutdown.

use crate::http::conn::ConnInfo;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::runtime::{cert_stamps, compile, CertStamp, ListenerRt, Runtime};
use crate::telemetry::metrics::{metrics, Handshake};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use weir_config::{ConfigError, Errors, ListenerProtocol, Snapshot};

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One dataplane process's serving state.
pub struct Dataplane {
    /// The runtime serving now and the drain signal, shared with the front doors.
    live: Arc<Live>,
    /// Held while a config is applied, so applies never interleave.
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, RunningListener>>,
    graceful: Mutex<Option<GracefulShutdown>>,
    /// The file SIGHUP re-reads, when started with one.
    pub config_path: Option<PathBuf>,
}

impl Dataplane {
    pub fn new(config_path: Option<PathBuf>) -> Arc<Dataplane> {
        Arc::new(Dataplane {
            live: Arc::new(Live::default()),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            config_path,
        })
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
        let rt = compile(snapshot, prev.as_deref())?;

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
        crate::telemetry::otel::configure(rt.snapshot.tracing.as_ref());
        crate::telemetry::shipper::reconcile(
            &rt.snapshot.sinks,
            Arc::new(move || {
                let rt = dp.upgrade().and_then(|d| d.runtime());
                crate::telemetry::metrics::metrics().gather(
                    rt.as_deref()
                        .map(|r| r as &dyn crate::telemetry::metrics::StateSource),
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
        tracing::info!(version = %rt.version, routes = rt.snapshot.routes.len(), backends = rt.backends.len(), "config applied");
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
        let (stop, mut stop_rx) = watch::channel(false);
        let dp = self.clone();
        let s = settings.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop_rx.changed() => break,
                    accepted = sock.accept() => match accepted {
                        Ok((stream, remote)) => {
                            let dp = dp.clone();
                            let l = s.load_full();
                            tokio::spawn(async move { dp.serve_connection(stream, remote, l).await });
                        }
                        Err(e) => {
                            // Usually EMFILE; back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            s.load().tcp_metrics.rejected("accept_error");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        });
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

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        l: Arc<ListenerRt>,
    ) {
        let _ = stream.set_nodelay(true);
        // Connections silent for the listener's idleTimeout are closed (TLS handshake included).
        let stream = crate::http::limits::IdleIo::new(stream, l.limits.idle_timeout.get());
        let Some(watcher) = self
            .graceful
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|g| g.watcher()))
        else {
            l.tcp_metrics.rejected("shutting_down");
            return;
        };
        let _open = l.tcp_metrics.accepted();
        let info = Arc::new(ConnInfo {
            remote,
            listener: l.name.as_str().into(),
            scheme: match l.protocol {
                ListenerProtocol::Http => "http",
                ListenerProtocol::Https => "https",
            },
            alt_svc: l.alt_svc.clone(),
            limits: (&l.limits).into(),
        });
        let dp = self.clone();
        // Set once a request head is complete (see limits::first_request_deadline).
        let seen = Arc::new(AtomicBool::new(false));
        let seen_svc = seen.clone();
        let header_timeout = l.limits.header_read_timeout.get();
        let svc = hyper::service::service_fn(move |req| {
            let dp = dp.clone();
            let info = info.clone();
            if !seen_svc.load(Ordering::Relaxed) {
                seen_svc.store(true, Ordering::Relaxed);
            }
            async move { Ok::<_, Infallible>(proxy::handle(dp.runtime(), &info, req).await) }
        });
        let result = match &l.tls {
            None => {
                let conn = l
                    .http
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc);
                crate::http::limits::first_request_deadline(
                    watcher.watch(conn),
                    seen,
                    header_timeout,
                )
                .await
            }
            Some(cfg) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                let started = std::time::Instant::now();
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => {
                        l.tcp_metrics.handshake(Handshake::Ok(started.elapsed()));
                        s
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                        l.tcp_metrics.handshake(Handshake::Failed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %remote, "TLS handshake timed out");
                        l.tcp_metrics.handshake(Handshake::TimedOut);
                        return;
                    }
                };
                let conn = l
                    .http
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc);
                crate::http::limits::first_request_deadline(
                    watcher.watch(conn),
                    seen,
                    header_timeout,
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %remote, error = %e, "connection ended with error");
        }
    }

    /// Stops accepting, lets in-flight requests finish (HTTP/1.1 keep-alives close after their
    /// current response, HTTP/2 gets GOAWAY) for up to `drain`, then returns.
    pub async fn shutdown(&self, drain: Duration) {
        self.live.begin_shutdown();
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
        let graceful = self.graceful.lock().ok().and_then(|mut g| g.take());
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
        for ep in endpoints {
            ep.close(quinn::VarInt::from_u32(0x100), b"shutting down"); // H3_NO_ERROR
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
        // The drained requests' access logs are queued by now; give the sinks a moment.
        crate::telemetry::shipper::shutdown(crate::telemetry::shipper::SHUTDOWN_FLUSH).await;
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
