//! `weir-bench serve`: a bare server answering every request `200` with a
//! fixed body, to measure the load driver's own ceiling (and to test it).
//!
//! TCP serves HTTP/1.1 and h2c (hyper-util auto); with TLS enabled, a TCP
//! connection whose first byte is a TLS handshake record is served over TLS
//! (ALPN h2, http/1.1). With HTTP/3 enabled, UDP on the same port serves h3.
//! TLS and h3 use a freshly generated self-signed certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::tls::Trust;

/// Server options.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Address to listen on (TCP, and UDP for h3). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Response body size in bytes (default 13: `Hello, world!`).
    pub body_size: usize,
    /// Serve HTTP/3 on UDP, same port.
    pub h3: bool,
    /// Also accept TLS on the TCP port (ALPN h2, http/1.1).
    pub tls: bool,
    /// Fault injection: send only this many body bytes, then reset the stream
    /// (h2/h3) or close the connection (HTTP/1.1, Content-Length promised the full size).
    pub reset_after: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            body_size: 13,
            h3: false,
            tls: false,
            reset_after: None,
        }
    }
}

struct State {
    body: Bytes,
    len: HeaderValue,
    partial: Option<Bytes>,
    /// A 64 KiB slice of the pattern, sent repeatedly for `?bytes=N`.
    chunk: Bytes,
    /// TCP connections accepted so far (`GET /__stats`): how many upstream connections a
    /// proxy in front opened.
    accepted: AtomicU64,
}

/// Answers `{"tcp_accepted": N}` (connections accepted so far, this request's included).
pub const STATS_PATH: &str = "/__stats";

/// Chunk size of `?bytes=N` responses.
const BULK_CHUNK: usize = 64 * 1024;

/// Response header carrying the number of request body bytes the server received
/// (only when it received any), so uploads through a proxy can be checked.
pub const RECEIVED_HEADER: &str = "x-received-bytes";

/// `?bytes=N` in the query asks for an N-byte body (streamed in 64 KiB chunks) instead of
/// the fixed one.
pub fn bytes_param(uri: &http::Uri) -> Option<u64> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("bytes=")?.parse().ok())
}

/// A running server; dropping it stops accepting.
pub struct Server {
    tcp: SocketAddr,
    udp: Option<SocketAddr>,
    cert: Option<CertificateDer<'static>>,
    endpoint: Option<quinn::Endpoint>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// TCP address (HTTP/1.1, h2c, and TLS if enabled).
    pub fn addr(&self) -> SocketAddr {
        self.tcp
    }

    /// UDP address serving HTTP/3, if enabled (same port as [`Server::addr`]).
    pub fn h3_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The generated self-signed certificate, if TLS or h3 is enabled.
    pub fn cert(&self) -> Option<&CertificateDer<'static>> {
        self.cert.as_ref()
    }

    /// A trust setting accepting exactly this server's certificate.
    pub fn trust(&self) -> Trust {
        match &self.cert {
            Some(c) => Trust::Roots(vec![c.clone()]),
            None => Trust::System,
        }
    }

    /// Waits until the accept loops end (they only end on fatal errors).
    pub async fn wait(mut self) {
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(ep) = &self.endpoint {
            ep.close(quinn::VarInt::from_u32(0x100), b"shutdown");
        }
    }
}

/// The body served for `size` bytes: `Hello, world!` repeated and truncated.
pub fn body_of(size: usize) -> Bytes {
    const PATTERN: &[u8] = b"Hello, world!";
    PATTERN
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect::<Vec<u8>>()
        .into()
}

/// Starts the server on the current tokio runtime.
pub async fn start(cfg: ServeConfig) -> Result<Server> {
    let body = body_of(cfg.body_size);
    let state = Arc::new(State {
        len: HeaderValue::from(body.len()),
        partial: cfg.reset_after.map(|n| body.slice(..n.min(body.len()))),
        body,
        chunk: body_of(BULK_CHUNK),
        accepted: AtomicU64::new(0),
    });

    let (listener, udp_socket) = bind(cfg.listen, cfg.h3).await?;
    let tcp = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("local_addr: {e}")))?;

    let cert_key = if cfg.tls || cfg.h3 {
        let ip = tcp.ip().to_string();
        Some(crate::tls::self_signed(&["localhost", ip.as_str()])?)
    } else {
        None
    };
    let acceptor =
        match (&cert_key, cfg.tls) {
            (Some((c, k)), true) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::server_config(c.clone(), k.clone_key(), &[b"h2", b"http/1.1"])?,
            )),
            _ => None,
        };

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(tcp_accept_loop(
        listener,
        acceptor,
        state.clone(),
    )));

    let (mut udp, mut endpoint) = (None, None);
    if let (Some(sock), Some((c, k))) = (udp_socket, &cert_key) {
        let tls = crate::tls::server_config(c.clone(), k.clone_key(), &[b"h3"])?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024))
            .stream_receive_window(quinn::VarInt::from_u32(4 << 20))
            .receive_window(quinn::VarInt::from_u32(32 << 20));
        sc.transport_config(Arc::new(transport));
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Other("no async runtime for quinn".into()))?;
        let ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(sc), sock, runtime)
            .map_err(|e| Error::Other(format!("QUIC endpoint: {e}")))?;
        udp = Some(
            ep.local_addr()
                .map_err(|e| Error::Other(format!("local_addr: {e}")))?,
        );
        tasks.push(tokio::spawn(quic_accept_loop(ep.clone(), state.clone())));
        endpoint = Some(ep);
    }

    Ok(Server {
        tcp,
        udp,
        cert: cert_key.map(|(c, _)| c),
        endpoint,
        tasks,
    })
}

/// Binds TCP, and UDP on the same port when asked (retrying with another
/// port when the listen port is 0 and the UDP port happens to be taken).
async fn bind(listen: SocketAddr, udp: bool) -> Result<(TcpListener, Option<std::net::UdpSocket>)> {
    let mut last = None;
    for _ in 0..16 {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::Other(format!("bind TCP {listen}: {e}")))?;
        if !udp {
            return Ok((listener, None));
        }
        let local = listener
            .local_addr()
            .map_err(|e| Error::Other(format!("local_addr: {e}")))?;
        match std::net::UdpSocket::bind(local) {
            Ok(s) => return Ok((listener, Some(s))),
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => return Err(Error::Other(format!("bind UDP {local}: {e}"))),
        }
    }
    Err(Error::Other(format!(
        "bind UDP next to TCP: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

async fn tcp_accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let _ = serve_tcp(stream, acceptor, state).await;
        });
    }
}

async fn serve_tcp(
    stream: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
) -> Result<()> {
    if let Some(acceptor) = acceptor {
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        if n == 1 && first[0] == 0x16 {
            let tls = acceptor
                .accept(stream)
                .await
                .map_err(|e| Error::Tls(e.to_string()))?;
            return serve_conn(TokioIo::new(tls), state).await;
        }
    }
    serve_conn(TokioIo::new(stream), state).await
}

async fn serve_conn<I>(io: I, state: Arc<State>) -> Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20);
    let service = service_fn(move |req| handle(req, state.clone()));
    builder
        .serve_connection(io, service)
        .await
        .map_err(|e| Error::Other(e.to_string()))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<ServeBody>, Infallible> {
    if req.uri().path() == STATS_PATH {
        let json = format!(
            "{{\"tcp_accepted\":{}}}",
            state.accepted.load(Ordering::Relaxed)
        );
        return Ok(Response::new(ServeBody {
            data: Some(Bytes::from(json)),
            ..ServeBody::default()
        }));
    }
    let bulk = bytes_param(req.uri());
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let (body, len) = match (&state.partial, bulk) {
        (Some(p), _) => (
            ServeBody {
                data: (!p.is_empty()).then(|| p.clone()),
                fail: true,
                ..ServeBody::default()
            },
            state.len.clone(),
        ),
        (None, Some(n)) => (
            ServeBody {
                bulk: n,
                chunk: state.chunk.clone(),
                ..ServeBody::default()
            },
            HeaderValue::from(n),
        ),
        (None, None) => (
            ServeBody {
                data: Some(state.body.clone()).filter(|b| !b.is_empty()),
                ..ServeBody::default()
            },
            state.len.clone(),
        ),
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(CONTENT_LENGTH, len);
    if received > 0 {
        resp.headers_mut()
            .insert(RECEIVED_HEADER, HeaderValue::from(received));
    }
    Ok(resp)
}

/// Response body: one data frame, or `bulk` bytes in `chunk`-sized frames, then optionally
/// an error (fault injection).
#[derive(Default)]
struct ServeBody {
    data: Option<Bytes>,
    fail: bool,
    bulk: u64,
    chunk: Bytes,
}

impl Body for ServeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if self.bulk > 0 && !self.chunk.is_empty() {
            let n = self.bulk.min(self.chunk.len() as u64);
            self.bulk -= n;
            return Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))));
        }
        if self.fail {
            self.fail = false;
            return Poll::Ready(Some(Err(std::io::Error::other(
                "weir-bench serve: reset midway (fault injection)",
            ))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.fail && self.bulk == 0
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, self.fail) {
            (Some(d), false) => SizeHint::with_exact(d.len() as u64 + self.bulk),
            (None, false) => SizeHint::with_exact(self.bulk),
            _ => SizeHint::default(),
        }
    }
}

async fn quic_accept_loop(ep: quinn::Endpoint, state: Arc<State>) {
    while let Some(incoming) = ep.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let _ = serve_h3(conn, state).await;
        });
    }
}

async fn serve_h3(conn: quinn::Connection, state: Arc<State>) -> Result<()> {
    let mut h3c: h3::server::Connection<h3_quinn::Connection, Bytes> =
        h3::server::Connection::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(Error::from_h3_conn)?;
    loop {
        match h3c.accept().await {
            Ok(Some(resolver)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve_h3_request(resolver, state).await;
                });
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(Error::from_h3_conn(e)),
        }
    }
}

async fn serve_h3_request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    state: Arc<State>,
) -> Result<()> {
    let (req, mut stream) = resolver
        .resolve_request()
        .await
        .map_err(Error::from_h3_stream)?;
    let bulk = bytes_param(req.uri());
    let mut received = 0u64;
    while let Some(d) = stream.recv_data().await.map_err(Error::from_h3_stream)? {
        received += d.remaining() as u64;
    }
    let mut resp = Response::new(());
    let len = match (&state.partial, bulk) {
        (None, Some(n)) => HeaderValue::from(n),
        _ => state.len.clone(),
    };
    resp.headers_mut().insert(CONTENT_LENGTH, len);
    if received > 0 {
        resp.headers_mut()
            .insert(RECEIVED_HEADER, HeaderValue::from(received));
    }
    stream
        .send_response(resp)
        .await
        .map_err(Error::from_h3_stream)?;
    if let (None, Some(mut left)) = (&state.partial, bulk) {
        while left > 0 {
            let n = left.min(state.chunk.len() as u64);
            left -= n;
            stream
                .send_data(state.chunk.slice(..n as usize))
                .await
                .map_err(Error::from_h3_stream)?;
        }
        stream.finish().await.map_err(Error::from_h3_stream)?;
        return Ok(());
    }
    match &state.partial {
        Some(p) => {
            if !p.is_empty() {
                stream
                    .send_data(p.clone())
                    .await
                    .map_err(Error::from_h3_stream)?;
            }
            // Give the partial body a moment to leave, then reset the stream.
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
        }
        None => {
            if !state.body.is_empty() {
                stream
                    .send_data(state.body.clone())
                    .await
                    .map_err(Error::from_h3_stream)?;
            }
            stream.finish().await.map_err(Error::from_h3_stream)?;
        }
    }
    Ok(())
}
