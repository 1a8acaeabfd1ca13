//! The running dataplane: the current runtime, its listeners, reload and graceful shutdown.

use crate::proxy::{self, ConnInfo};
use crate::runtime::{compile, ListenerRt, Runtime};
use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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
/// How long a client may take to send a request's headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

struct RunningListener {
    settings: Arc<ArcSwap<ListenerRt>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// One dataplane process's serving state.
pub struct Dataplane {
    runtime: ArcSwapOption<Runtime>,
    /// Held while a config is applied, so applies never interleave.
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, RunningListener>>,
    graceful: Mutex<Option<GracefulShutdown>>,
    shutting_down: AtomicBool,
    http: auto::Builder<TokioExecutor>,
    /// The file SIGHUP re-reads, when started with one.
    pub config_path: Option<PathBuf>,
}

impl Dataplane {
    pub fn new(config_path: Option<PathBuf>) -> Arc<Dataplane> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true);
        http.http2().timer(TokioTimer::new());
        Arc::new(Dataplane {
            runtime: ArcSwapOption::empty(),
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            shutting_down: AtomicBool::new(false),
            http,
            config_path,
        })
    }

    /// The runtime serving now, if a config was loaded.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.runtime.load().is_some() && !self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Validates, compiles and swaps in `snapshot`; on any error nothing changes and every
    /// problem is returned. New listener sockets are bound before the swap, removed ones stop
    /// accepting after it; open connections are never dropped.
    pub async fn apply(self: &Arc<Self>, snapshot: Snapshot) -> Result<String, ConfigError> {
        let mut listeners = self.listeners.lock().await;
        let prev = self.runtime.load_full();
        let rt = compile(snapshot, prev.as_deref())?;

        let mut errs = Errors::default();
        let mut fresh = Vec::new();
        for (i, l) in rt.listeners.iter().enumerate() {
            if !listeners.contains_key(&l.address) {
                match bind(l.address) {
                    Ok(sock) => fresh.push((l.clone(), sock)),
                    Err(e) => errs.push(
                        format!("listeners[{i}].address"),
                        format!("cannot listen on {}: {e}", l.address),
                    ),
                }
            }
        }
        errs.into_result()?;

        let rt = Arc::new(rt);
        self.runtime.store(Some(rt.clone()));
        for l in &rt.listeners {
            if let Some(running) = listeners.get(&l.address) {
                running.settings.store(Arc::new(l.clone()));
            }
        }
        for (l, sock) in fresh {
            tracing::info!(listener = %l.name, address = %l.address, protocol = ?l.protocol, "listening");
            let addr = l.address;
            listeners.insert(addr, self.spawn_listener(l, sock));
        }
        listeners.retain(|addr, running| {
            let keep = rt.listeners.iter().any(|l| l.address == *addr);
            if !keep {
                tracing::info!(address = %addr, "listener removed; no longer accepting");
                let _ = running.stop.send(true);
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
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
        let snap = weir_config::load(&bytes)?;
        self.apply(snap).await
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
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        l: Arc<ListenerRt>,
    ) {
        let _ = stream.set_nodelay(true);
        let Some(watcher) = self
            .graceful
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|g| g.watcher()))
        else {
            return; // shutting down
        };
        let info = Arc::new(ConnInfo {
            remote,
            listener: l.name.as_str().into(),
            scheme: match l.protocol {
                ListenerProtocol::Http => "http",
                ListenerProtocol::Https => "https",
            },
        });
        let dp = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let dp = dp.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(proxy::handle(dp.runtime(), &info, req).await) }
        });
        let result = match &l.tls {
            None => {
                let conn = self
                    .http
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc);
                watcher.watch(conn).await
            }
            Some(cfg) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(client = %remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(client = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = self
                    .http
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc);
                watcher.watch(conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %remote, error = %e, "connection ended with error");
        }
    }

    /// Stops accepting, lets in-flight requests finish (HTTP/1.1 keep-alives close after their
    /// current response, HTTP/2 gets GOAWAY) for up to `drain`, then returns.
    pub async fn shutdown(&self, drain: Duration) {
        self.shutting_down.store(true, Ordering::Relaxed);
        let mut listeners = self.listeners.lock().await;
        for (_, l) in listeners.drain() {
            let _ = l.stop.send(true);
            let _ = l.task.await;
        }
        let graceful = self.graceful.lock().ok().and_then(|mut g| g.take());
        if let Some(g) = graceful {
            let open = g.count();
            tracing::info!(connections = open, deadline = ?drain, "draining");
            match tokio::time::timeout(drain, g.shutdown()).await {
                Ok(()) => tracing::info!("all connections closed"),
                Err(_) => {
                    tracing::warn!("drain deadline reached; closing the remaining connections")
                }
            }
        }
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
