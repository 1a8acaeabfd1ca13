//! The TCP front door: HTTP/1.1 and h2c on plain listeners, HTTP/1.1 and HTTP/2 over TLS
//! (ALPN), with the listener's idle, header-read and handshake timeouts. It serves through a
//! [`Live`] handle (runtime + drain signal), like the QUIC door, not through the `Dataplane`.

use crate::http::body::BoxError;
use crate::http::conn::ConnInfo;
use crate::listen::h1;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::runtime::compile::ListenerRt;
use crate::telemetry::metrics::Handshake;
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weir_config::ListenerProtocol;

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `sock` until `stop` fires; each is served with the listener's
/// settings as they are when it is accepted.
pub async fn accept_loop(
    live: Arc<Live>,
    sock: TcpListener,
    settings: Arc<ArcSwap<ListenerRt>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = sock.accept() => match accepted {
                Ok((stream, remote)) => {
                    let live = live.clone();
                    let l = settings.load_full();
                    // Boxed before it is spawned: the connection's future is ~15.7 KiB (the
                    // HTTP/1.1 codec with the pipeline's request future inside it, or the TLS
                    // stream and hyper's server), and tokio moves a spawned future by value
                    // into its task cell and again when the task ends: ten copies, ~145,000
                    // instructions per accepted connection (callgrind), against ~28,000 for
                    // a whole proxied request. A box is moved once; the task holds a pointer.
                    // BENCHMARKS.md "HTTP/1.1: the runtime and kernel side".
                    tokio::spawn(super::boxed_in_place(|| {
                        serve_connection(live, stream, remote, l)
                    }));
                }
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    settings.load().tcp_metrics.rejected("accept_error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_connection(
    live: Arc<Live>,
    stream: TcpStream,
    remote: SocketAddr,
    l: Arc<ListenerRt>,
) {
    let _ = stream.set_nodelay(true);
    // Connections silent for the listener's idleTimeout are closed (TLS handshake included).
    let stream = crate::http::limits::IdleIo::new(stream, l.limits.idle_timeout.get());
    let Some(watcher) = live.tcp_watcher() else {
        l.tcp_metrics.rejected("shutting_down");
        return;
    };
    let _open = l.tcp_metrics.accepted();
    let info = Arc::new(ConnInfo::new(
        remote,
        l.name.as_str().into(),
        match l.protocol {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        },
        l.alt_svc.clone(),
        (&l.limits).into(),
    ));
    // HTTP/1.1 goes to the codec (listen/h1.rs) unless `--downstream-h1 hyper`; HTTP/2 over
    // TLS (ALPN h2) to the h2-crate server (listen/h2.rs) unless `--downstream-h2 hyper`; what
    // the codec hands over (h2c, upgrades, CONNECT) to hyper's server.
    let codec = crate::listen::h1::codec_enabled();
    let result = match &l.tls {
        None if codec => serve_codec(live, stream, info, &l, watcher).await,
        None => serve_hyper(live, stream, info, &l, watcher, false).await,
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            let started = std::time::Instant::now();
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 && crate::listen::h2::direct_enabled() {
                // Holding the watcher makes shutdown wait for this connection too.
                let _watcher = watcher;
                crate::listen::h2::serve(live, tls, info, &l.limits).await
            } else if codec && !h2 {
                serve_codec(live, tls, info, &l, watcher).await
            } else {
                serve_hyper(live, tls, info, &l, watcher, h2).await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %remote, error = %e, "connection ended with error");
    }
}

/// Serves a connection with Weir's HTTP/1.1 codec; what it hands over goes to hyper with the
/// bytes already read replayed.
async fn serve_codec<I>(
    live: Arc<Live>,
    io: I,
    info: Arc<ConnInfo>,
    l: &ListenerRt,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (max_head_bytes, max_headers) = crate::http::limits::h1_backstops(&l.limits);
    let setup = h1::Setup {
        live,
        info,
        limits: h1::HeadLimits {
            max_head_bytes,
            max_headers,
        },
        header_timeout: l.limits.header_read_timeout.get(),
    };
    match h1::serve(&setup, io).await {
        // Mostly h2c (upgrades and CONNECT are rare): boxed, as HTTP/2 over TLS on hyper is.
        Some(rewound) => serve_hyper(setup.live, rewound, setup.info, l, watcher, true).await,
        None => Ok(()),
    }
}

/// Serves a connection with hyper's HTTP/1.1 + HTTP/2 server; `boxed`: the connection is
/// (most likely) HTTP/2: ALPN chose it, or Weir's HTTP/1.1 codec handed it over (h2c).
async fn serve_hyper<I>(
    live: Arc<Live>,
    io: I,
    info: Arc<ConnInfo>,
    l: &ListenerRt,
    watcher: Watcher,
    boxed: bool,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let dp = live;
    // Set once a request head is complete (see limits::first_request_deadline).
    let seen = Arc::new(AtomicBool::new(false));
    let seen_svc = seen.clone();
    let header_timeout = l.limits.header_read_timeout.get();
    let handle = move |req: hyper::Request<hyper::body::Incoming>| {
        let dp = dp.clone();
        let info = info.clone();
        if !seen_svc.load(Ordering::Relaxed) {
            seen_svc.store(true, Ordering::Relaxed);
        }
        async move {
            Ok::<_, Infallible>(proxy::handle(dp.runtime(), dp.telemetry(), &info, req, None).await)
        }
    };
    // The connection served by the listener's builder, under the drain watcher and the
    // first-request deadline (a macro: the service types differ, see the h2 case below).
    macro_rules! serve {
        ($svc:expr) => {{
            let conn = l
                .http
                .serve_connection_with_upgrades(TokioIo::new(io), $svc);
            crate::http::limits::first_request_deadline(watcher.watch(conn), seen, header_timeout)
                .await
        }};
    }
    if boxed {
        // Boxed on HTTP/2: hyper spawns a task per stream holding this future, and
        // tokio moves a task's future by value (spawn, cell, stage changes), so the
        // ~8 KiB `proxy::handle` state was copied several times per request (~5,200
        // instr. of ~66,000; BENCHMARKS.md "HTTP/2 over TLS: where the time goes").
        // HTTP/1.1 polls it in place, where the box only adds an allocation (+780):
        // plain listeners under `--downstream-h1 hyper` keep it unboxed.
        serve!(hyper::service::service_fn(move |req| Box::pin(handle(req))))
    } else {
        serve!(hyper::service::service_fn(handle))
    }
}
