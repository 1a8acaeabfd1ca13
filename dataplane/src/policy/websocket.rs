//! WebSockets through the proxy: an HTTP/1.1 `Upgrade: websocket` handshake, or an RFC 8441
//! extended CONNECT (`:protocol websocket`) over HTTP/2, is routed like any request and sent
//! upstream as an HTTP/1.1 upgrade. RFC 9220 extended CONNECT over HTTP/3 takes the same
//! path; its client side is a byte pipe handed over by `crate::listen::h3_websocket` ([`StreamUpgrade`])
//! instead of a hyper upgrade. When the upstream answers `101`, both sides are upgraded
//! and bytes are copied both ways until either side closes (the close is propagated by
//! shutting down the other side's write half) or nothing flows for the rule's
//! `websocket.idleTimeout`.
//!
//! Metrics: `weir_websocket_upgrades_total{protocol,result}` and
//! `weir_websocket_tunnels_open{protocol}`.

use crate::http::body::{empty, ProxyBody};
use crate::http::headers::FieldsSeen;
use crate::http::reply::{error_response, ErrorKind};
use crate::telemetry::metrics::{metrics, PROTOCOLS};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use weir_config::WebSocketConfig;

static SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;

struct WsMetrics {
    upgrades: IntCounterVec,
    open: IntGaugeVec,
}

fn ws_metrics() -> &'static WsMetrics {
    static M: OnceLock<WsMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = &metrics().registry;
        let upgrades = IntCounterVec::new(
            Opts::new(
                "weir_websocket_upgrades_total",
                "WebSocket handshakes by client protocol and result (upgraded, rejected, disabled, failed).",
            ),
            &["protocol", "result"],
        )
        .expect("valid metric definition");
        let open = IntGaugeVec::new(
            Opts::new(
                "weir_websocket_tunnels_open",
                "WebSocket tunnels open now, by client protocol.",
            ),
            &["protocol"],
        )
        .expect("valid metric definition");
        for c in [
            Box::new(upgrades.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(open.clone()),
        ] {
            if let Err(e) = r.register(c) {
                tracing::error!(error = %e, "cannot register a metric family");
            }
        }
        WsMetrics { upgrades, open }
    })
}

fn count(protocol: usize, result: &str) {
    ws_metrics()
        .upgrades
        .with_label_values(&[PROTOCOLS[protocol.min(2)], result])
        .inc();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// HTTP/1.1 `Connection: upgrade` + `Upgrade: websocket`.
    H1,
    /// RFC 8441 / RFC 9220 extended CONNECT with `:protocol websocket`.
    ExtendedConnect,
}

/// A byte stream the tunnel can run over.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> TunnelIo for T {}

/// Receives the client's stream once the front end answered the handshake.
type Handoff = oneshot::Receiver<Box<dyn TunnelIo>>;

/// The client side of an upgrade hyper does not carry (HTTP/3 extended CONNECT): the front end
/// puts one in the request's extensions and, once it has sent the `200`, hands the tunnel its
/// end of the client stream through the sender [`StreamUpgrade::new`] returned. The sender
/// reports closed when no tunnel is waiting (not a WebSocket, or the handshake failed).
#[derive(Clone)]
pub struct StreamUpgrade(Arc<Mutex<Option<Handoff>>>);

impl StreamUpgrade {
    pub fn new() -> (Self, oneshot::Sender<Box<dyn TunnelIo>>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(rx)))), tx)
    }

    fn take(&self) -> Option<Handoff> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

enum Client {
    Hyper(OnUpgrade),
    Stream(Handoff),
}

impl Client {
    async fn resolve(self) -> Result<Box<dyn TunnelIo>, crate::http::body::BoxError> {
        match self {
            Client::Hyper(u) => Ok(Box::new(TokioIo::new(u.await?))),
            Client::Stream(rx) => Ok(rx.await?),
        }
    }
}

/// A WebSocket handshake in progress: the client's side of the upgrade and how to answer it.
pub struct Upgrade {
    kind: Kind,
    client: Client,
    idle: Duration,
    protocol: usize,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn kind<B>(req: &Request<B>, seen: FieldsSeen) -> Option<Kind> {
    if req.method() == Method::CONNECT {
        let ext = req.extensions();
        let websocket = match ext.get::<hyper::ext::Protocol>() {
            Some(p) => p.as_str().eq_ignore_ascii_case("websocket"),
            None => ext.get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEBSOCKET),
        };
        return websocket.then_some(Kind::ExtendedConnect);
    }
    (req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && seen.has(FieldsSeen::CONNECTION | FieldsSeen::UPGRADE)
        && has_token(req.headers(), header::CONNECTION, "upgrade")
        && has_token(req.headers(), header::UPGRADE, "websocket"))
    .then_some(Kind::H1)
}

/// Takes the client's upgrade out of a WebSocket handshake request. `Ok(None)`: not a
/// WebSocket handshake. `Err`: the rule does not allow it (`403 websocket_disabled`) or the
/// backend cannot take it (`502 websocket_unsupported`: HTTP/2 backends). `seen`: the fields
/// `req`'s map holds now (no `Connection` lookup on a request without one).
#[allow(clippy::result_large_err)]
pub fn take<B>(
    config: Option<&WebSocketConfig>,
    upstream_h2: bool,
    req: &mut Request<B>,
    seen: FieldsSeen,
) -> Result<Option<Upgrade>, Response<ProxyBody>> {
    let Some(kind) = kind(req, seen) else {
        return Ok(None);
    };
    let protocol = crate::telemetry::metrics::protocol_index(req.version());
    let default = WebSocketConfig::default();
    let config = config.unwrap_or(&default);
    if !config.enabled {
        count(protocol, "disabled");
        return Err(error_response(
            StatusCode::FORBIDDEN,
            ErrorKind::WebsocketDisabled,
            "WebSockets are turned off for this route",
        ));
    }
    if upstream_h2 {
        count(protocol, "failed");
        return Err(error_response(
            StatusCode::BAD_GATEWAY,
            ErrorKind::WebsocketUnsupported,
            "the route's backend speaks h2c; WebSockets need an http1 backend",
        ));
    }
    let client = match req
        .extensions()
        .get::<StreamUpgrade>()
        .and_then(StreamUpgrade::take)
    {
        Some(rx) => Client::Stream(rx),
        None => Client::Hyper(hyper::upgrade::on(req)),
    };
    Ok(Some(Upgrade {
        kind,
        client,
        idle: config.idle_timeout.get(),
        protocol,
    }))
}

impl Upgrade {
    /// Turns the upstream request (hop-by-hop headers already stripped) into an HTTP/1.1
    /// upgrade handshake.
    pub fn prepare(&self, method: &mut Method, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if self.kind == Kind::ExtendedConnect {
            *method = Method::GET;
            // RFC 8441 §5: no key/accept on HTTP/2; the HTTP/1.1 upstream needs one.
            let key: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
            if let Ok(v) = HeaderValue::from_str(&base64(&key)) {
                headers.insert(SEC_WEBSOCKET_KEY.clone(), v);
            }
            headers
                .entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
    }

    /// Answers the client from the upstream's response. On `101` both sides are upgraded and
    /// a task copies bytes between them; anything else goes back as the upstream sent it
    /// (a `2xx` that is not an upgrade becomes `502 websocket_not_upgraded`).
    pub fn finish(self, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            if resp
                .extensions()
                .get::<crate::http::reply::ProxyError>()
                .is_some()
            {
                count(self.protocol, "failed");
                return resp;
            }
            count(self.protocol, "rejected");
            if resp.status().is_success() {
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    ErrorKind::WebsocketNotUpgraded,
                    "the upstream answered the WebSocket handshake without switching protocols",
                );
            }
            return resp;
        }
        let upstream = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        let mut out = Response::new(empty());
        *out.headers_mut() = parts.headers;
        match self.kind {
            Kind::H1 => {
                *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = out.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Kind::ExtendedConnect => {
                *out.status_mut() = StatusCode::OK;
                out.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
            }
        }
        count(self.protocol, "upgraded");
        let (client, idle, protocol) = (self.client, self.idle, self.protocol);
        tokio::spawn(async move {
            let (c, u) = tokio::join!(client.resolve(), upstream);
            match (c, u) {
                (Ok(c), Ok(u)) => {
                    let open = ws_metrics()
                        .open
                        .with_label_values(&[PROTOCOLS[protocol.min(2)]]);
                    open.inc();
                    let r = tunnel(c, TokioIo::new(u), idle).await;
                    open.dec();
                    tracing::debug!(result = ?r, "WebSocket tunnel closed");
                }
                (c, u) => {
                    tracing::debug!(client = ?c.err(), upstream = ?u.err(), "WebSocket upgrade failed");
                }
            }
        });
        out
    }
}

/// When bytes last moved through a tunnel, in nanoseconds after `origin`; shared by the two
/// [`IdleIo`] ends of one tunnel.
struct Activity {
    origin: tokio::time::Instant,
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Completes once nothing moved for `idle`. It runs beside the copy rather than between
    /// its steps, so a write blocked on a peer that stopped reading cannot hold it off.
    async fn expired(&self, idle: Duration) {
        loop {
            let deadline = self.last() + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One end of a tunnel that notes every read or write that moved bytes.
struct IdleIo<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Copies bytes both ways until both directions ended (a side's EOF shuts the other side's
/// write half down, so a close is propagated) or nothing moved for `idle`; returns the bytes
/// copied a → b and b → a.
///
/// `copy_bidirectional` drives both directions independently, so a peer that stops reading
/// only stalls the direction towards it, and the idle timer runs beside the copy: such a
/// peer pins the tunnel (its task, buffers and both connections) for `idle` at most.
pub async fn tunnel<A, B>(a: A, b: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = IdleIo {
        io: a,
        activity: &activity,
    };
    let mut b = IdleIo {
        io: b,
        activity: &activity,
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, TUNNEL_BUF, TUNNEL_BUF) => r,
        () = activity.expired(idle) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "WebSocket tunnel idle timeout",
        )),
    }
}

/// Per-direction copy buffer of a tunnel (the size the hand-written loop used).
const TUNNEL_BUF: usize = 16 * 1024;

/// Standard base64 with padding (for `Sec-WebSocket-Key`).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Only turns a hang into a failure (the bugs these tests pin down hang forever); no
    /// test asserts how fast anything is.
    const HANG_GUARD: Duration = Duration::from_secs(30);

    /// A connected loopback TCP pair: (the peer's end, the tunnel's end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        (peer.expect("connect"), accepted.expect("accept").0)
    }

    /// Issue #19 bug 1: a peer that stops reading while the other keeps sending used to pin
    /// the tunnel forever (the loop sat in `write_all` and never polled its idle timer).
    #[tokio::test]
    async fn tunnel_honours_idle_timeout_when_a_peer_stops_reading() {
        let (mut sender, a) = tcp_pair().await;
        let (mut stalled, b) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            loop {
                if let Err(e) = sender.write_all(&chunk).await {
                    return e;
                }
            }
        });
        let r = tokio::time::timeout(HANG_GUARD, tunnel(a, b, Duration::from_millis(300)))
            .await
            .expect("the tunnel must end on its idle timeout, not hang");
        let err = r.expect_err("stalled tunnel must time out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // The tunnel dropped both connections: the sender's writes now fail, and the stalled
        // peer reads what was buffered, then the end of the stream.
        let e = tokio::time::timeout(HANG_GUARD, writer)
            .await
            .expect("the sender must see the connection closed")
            .expect("writer task");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(HANG_GUARD, stalled.read_to_end(&mut sink))
            .await
            .expect("the stalled peer must see the connection closed");
    }

    /// Issue #19 bug 1: both peers write 8 MiB before reading anything. The pipes stand for
    /// the socket buffers on either side of the proxy: each holds 5 MiB, so a path of two
    /// hops holds the 8 MiB but one hop does not. The old loop, blocked writing to one peer,
    /// stopped reading the other, leaving one hop per direction: both peers stalled for good.
    #[tokio::test]
    async fn tunnel_carries_8_mib_each_way_when_both_peers_write_before_reading() {
        const SIZE: usize = 8 * 1024 * 1024;
        const HOP: usize = 5 * 1024 * 1024;
        let (peer_a, a) = tokio::io::duplex(HOP);
        let (peer_b, b) = tokio::io::duplex(HOP);
        fn pattern(seed: u8) -> Vec<u8> {
            (0..SIZE).map(|i| (i % 251) as u8 ^ seed).collect()
        }
        async fn write_then_read(mut io: tokio::io::DuplexStream, seed: u8) -> Vec<u8> {
            io.write_all(&pattern(seed)).await.expect("write");
            io.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.expect("read");
            got
        }
        let run = async {
            tokio::join!(
                write_then_read(peer_a, 1),
                write_then_read(peer_b, 2),
                tunnel(a, b, Duration::from_secs(3600)),
            )
        };
        let (got_a, got_b, copied) = tokio::time::timeout(HANG_GUARD, run)
            .await
            .expect("both peers must get each other's 8 MiB (no deadlock)");
        assert_eq!(copied.expect("tunnel"), (SIZE as u64, SIZE as u64));
        assert!(got_a == pattern(2), "a got b's bytes, in order");
        assert!(got_b == pattern(1), "b got a's bytes, in order");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn detects_handshakes() {
        let h1 = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert_eq!(kind(&h1, FieldsSeen::of(h1.headers())), Some(Kind::H1));
        // Facts that say the map has no `Upgrade` (or no `Connection`) skip the lookups.
        assert_eq!(kind(&h1, FieldsSeen::CONNECTION), None);
        assert_eq!(kind(&h1, FieldsSeen::UPGRADE), None);
        let h2c = Request::get("/")
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert_eq!(kind(&h2c, FieldsSeen::of(h2c.headers())), None);
        let mut ext = Request::connect("/ws").body(()).unwrap();
        ext.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(
            kind(&ext, FieldsSeen::of(ext.headers())),
            Some(Kind::ExtendedConnect)
        );
        let mut h3 = Request::connect("/ws").body(()).unwrap();
        h3.extensions_mut().insert(h3::ext::Protocol::WEBSOCKET);
        assert_eq!(
            kind(&h3, FieldsSeen::of(h3.headers())),
            Some(Kind::ExtendedConnect)
        );
        let mut wt = Request::connect("/wt").body(()).unwrap();
        wt.extensions_mut().insert(h3::ext::Protocol::WEB_TRANSPORT);
        assert_eq!(kind(&wt, FieldsSeen::of(wt.headers())), None);
    }
}
