//! HTTP/2 served with the `h2` crate directly (as Pingora does), instead of hyper's server glue:
//! the default for HTTP/2 over TLS (ALPN `h2`); `--downstream-h2 hyper` (`WEIR_DOWNSTREAM_H2`)
//! switches back to hyper's server. h2c on plain listeners stays with hyper (the HTTP/1.1
//! codec hands it over).
//!
//! Why: on the `h2-many` load hyper's server glue was ~26,000 of ~52,500 instructions per
//! request (BENCHMARKS.md "HTTP/2 over TLS: serving with the h2 crate"): a spawned task per
//! stream, the `H2Stream` state machine, flow-control reservation per DATA frame. Here every
//! stream runs inside the connection's task (a [`FuturesUnordered`]: no spawn, no per-stream
//! task, no cross-task wake-ups; the connection's reads and writes are batched across the
//! streams polled in one turn; measured: 51,250 instr. per request, against 53,886 with a
//! spawned task per stream and 52,535 with hyper's server), and a small response that is complete when the pipeline
//! returns goes out as HEADERS + one DATA with END_STREAM (or HEADERS with END_STREAM when it
//! is empty) without a capacity round trip.
//!
//! What it keeps from hyper's server, with the same values ([`crate::http::limits::h2_settings`]):
//! `SETTINGS_MAX_HEADER_LIST_SIZE` from the listener's header limits (also bounds
//! CONTINUATION), extended CONNECT (RFC 8441 WebSockets), h2's rapid-reset defences (streams
//! reset before accept: 20; streams reset for local errors: 1024), 200 concurrent streams, 1 MiB
//! windows, 16 KiB frames, a 400 KiB send buffer; connection-specific response headers
//! stripped; a `date` added when missing; request bodies with flow control released as the
//! pipeline consumes them, and trailers; response bodies sent as the peer's window allows;
//! a client's RST_STREAM drops the stream's future (cancelling the upstream request); drain
//! sends GOAWAY and finishes the streams in flight.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::conn::ConnInfo;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::policy::websocket::StreamUpgrade;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_config::ListenerLimits;

/// Whether HTTP/2 over TLS is served by this module (`--downstream-h2`, set once at start).
static DIRECT: AtomicBool = AtomicBool::new(true);

/// `--downstream-h2 h2` (the default) or `hyper`.
pub fn use_direct(on: bool) {
    DIRECT.store(on, Ordering::Relaxed);
}

pub fn direct_enabled() -> bool {
    DIRECT.load(Ordering::Relaxed)
}

/// A response body at most this large, complete when the pipeline returns, is sent with its
/// HEADERS without waiting for stream capacity (h2 buffers it and sends it as the window
/// allows; the client's initial window is at least 64 KiB unless it says less).
const SMALL_BODY: usize = 16 * 1024;

/// Bytes buffered between an extended CONNECT stream and its WebSocket tunnel, each way.
const PIPE: usize = 64 * 1024;

/// Serves one HTTP/2 connection (the TLS handshake done, ALPN `h2`) until the client closes
/// it, an error, or drain (GOAWAY, then the streams in flight finish).
pub async fn serve<I>(
    live: Arc<Live>,
    io: I,
    info: Arc<ConnInfo>,
    limits: &ListenerLimits,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Holding a drain receiver makes shutdown wait for this connection (as listen/h1.rs).
    let Some(mut drain) = live.drain_watcher() else {
        return Ok(());
    };
    let header_timeout = limits.header_read_timeout.get();
    // Set once a request head is complete (see limits::first_request_deadline).
    let seen = Arc::new(AtomicBool::new(false));
    let seen_conn = seen.clone();
    let conn = async move {
        let mut conn = crate::http::limits::h2_settings(limits)
            .handshake::<_, Bytes>(io)
            .await?;
        let mut streams = FuturesUnordered::new();
        let mut drained = pin!(drain.wait_for(|d| *d));
        let mut draining = false;
        let mut accepting = true;
        poll_fn(|cx| {
            if !draining && drained.as_mut().poll(cx).is_ready() {
                // GOAWAY; h2 keeps serving the streams already opened.
                conn.graceful_shutdown();
                draining = true;
            }
            loop {
                // Polling the connection also flushes what the streams queued.
                while accepting {
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((req, respond)))) => {
                            if !seen_conn.load(Ordering::Relaxed) {
                                seen_conn.store(true, Ordering::Relaxed);
                            }
                            streams.push(stream(live.clone(), info.clone(), req, respond));
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(BoxError::from(e))),
                        Poll::Ready(None) => accepting = false,
                        Poll::Pending => break,
                    }
                }
                let mut progressed = false;
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                    progressed = true;
                }
                if !accepting && streams.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // A stream that finished queued frames: poll the connection again to write
                // them in this turn instead of after a self-wake.
                if !(progressed && accepting) {
                    return Poll::Pending;
                }
            }
        })
        .await
    };
    crate::http::limits::first_request_deadline(conn, seen, header_timeout).await
}

/// One stream: the request through the pipeline, the response back. A client RST_STREAM drops
/// the pipeline's future (and with it the upstream request).
async fn stream(
    live: Arc<Live>,
    info: Arc<ConnInfo>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (mut parts, recv) = req.into_parts();
    let websocket = parts.method == Method::CONNECT
        && parts
            .extensions
            .remove::<h2::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if parts.method == Method::CONNECT {
        // As hyper: the stream's DATA after a CONNECT is the tunnel, not a request body.
        if websocket {
            return connect(live, info, parts, recv, respond).await;
        }
        let req = Request::from_parts(parts, H2Body::empty());
        let Some(resp) = until_reset(&mut respond, proxy(&live, &info, req)).await else {
            return;
        };
        send(respond, resp, true).await;
        return;
    }
    let body = H2Body::new(recv, &parts.headers);
    let req = Request::from_parts(parts, body);
    let Some(resp) = until_reset(&mut respond, proxy(&live, &info, req)).await else {
        return;
    };
    send(respond, resp, false).await;
}

/// The pipeline's future, on the heap: it is ~8 KiB, and the stream's future is moved by value
/// (into `until_reset`, into the `FuturesUnordered` node). Unboxed, callgrind counted 104,645
/// instr. per request instead of 51,250 (the copies). The block is recycled
/// ([`super::recycled_in_place`]): a new allocation per request cost ~600 more.
fn proxy<'a>(
    live: &'a Live,
    info: &'a ConnInfo,
    req: Request<H2Body>,
) -> super::Recycled<impl Future<Output = Response<ProxyBody>> + Send + 'a> {
    super::recycled_in_place(|| proxy::handle(live.runtime(), live.telemetry(), info, req, None))
}

/// Runs `fut` until it is done or the client resets the stream (`None`: the future dropped).
async fn until_reset<F: Future>(respond: &mut SendResponse<Bytes>, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(reason) => {
                tracing::debug!(?reason, "client reset the stream; request cancelled");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Connection-specific fields are illegal in HTTP/2 (RFC 9113 §8.2.2; h2 refuses to send
/// them): removed as hyper's server removes them. One scan of the (few) names first: the
/// removals hash every name even when absent (~1,050 instr. per response, callgrind; the
/// scan ~150), and a proxied response rarely has any of them.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let connection_specific = |n: &header::HeaderName| {
        n == header::CONNECTION
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == header::TE
            || n.as_str() == "keep-alive"
            || n.as_str() == "proxy-connection"
    };
    if !headers.keys().any(connection_specific) {
        return;
    }
    for name in [
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if let Some(v) = headers.remove(header::CONNECTION) {
        if let Ok(list) = v.to_str() {
            for name in list.split(',') {
                headers.remove(name.trim());
            }
        }
    }
}

thread_local! {
    /// The `date` value, formatted once per second per thread (hyper caches it the same way).
    static DATE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
}

fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        match &d.1 {
            Some(v) if d.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
                *d = (secs, Some(v.clone()));
                v
            }
        }
    })
}

/// Sends the pipeline's response: the head, then the body as the stream's window allows, then
/// trailers if any. `connect`: the answer to a (non-WebSocket) CONNECT, sent without a length.
async fn send(mut respond: SendResponse<Bytes>, resp: Response<ProxyBody>, connect: bool) {
    let (mut head, mut body) = resp.into_parts();
    strip_connection_headers(&mut head.headers);
    if connect && head.status.is_success() {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    head.headers.entry(header::DATE).or_insert_with(date);
    if body.is_end_stream() {
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        return;
    }
    // Fast path: a small body that is already complete (the common proxied response, a
    // `Full` reply) goes out with its HEADERS in one write, without a capacity round trip.
    let mut first = None;
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n as usize <= SMALL_BODY)
    {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(&mut cx) {
            match f {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if body.is_end_stream() => {
                        if let Ok(mut tx) =
                            respond.send_response(Response::from_parts(head, ()), false)
                        {
                            let _ = tx.send_data(data, true);
                        }
                        return;
                    }
                    Ok(data) => first = Some(Frame::data(data)),
                    Err(frame) => first = Some(frame),
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed before its first byte");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    return;
                }
                None => {
                    let _ = respond.send_response(Response::from_parts(head, ()), true);
                    return;
                }
            }
        }
    }
    let Ok(mut tx) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    if let Err(e) = pipe_body(&mut tx, body, first).await {
        tracing::debug!(error = %e, "response body not sent in full");
    }
}

/// Copies `body` into the stream: each DATA chunk waits for stream and connection capacity
/// (so a slow reader holds the upstream back instead of growing buffers), trailers last. A
/// client reset ends it (dropping the body, which cancels the upstream side).
async fn pipe_body(
    tx: &mut SendStream<Bytes>,
    mut body: ProxyBody,
    mut first: Option<Frame<Bytes>>,
) -> Result<(), BoxError> {
    loop {
        let frame = match first.take() {
            Some(f) => f,
            None => {
                let next = poll_fn(|cx| {
                    if let Poll::Ready(f) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    match tx.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => {
                            Poll::Ready(Err(BoxError::from(h2::Error::from(reason))))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(BoxError::from(e))),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await?;
                match next {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        tx.send_reset(Reason::INTERNAL_ERROR);
                        return Err(e);
                    }
                    None => {
                        tx.send_data(Bytes::new(), true)?;
                        return Ok(());
                    }
                }
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    tx.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                        Some(r) => r?,
                        None => return Err("stream closed while sending the response".into()),
                    };
                    let chunk = data.split_to(granted.min(data.len()));
                    if !chunk.is_empty() {
                        let end = data.is_empty() && body.is_end_stream();
                        tx.send_data(chunk, end)?;
                        if end {
                            return Ok(());
                        }
                    }
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    tx.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
}

/// An RFC 8441 WebSocket handshake (`CONNECT` with `:protocol websocket`): through the
/// pipeline like any request (routing, policies, the rule's `websocket` switch), sent upstream
/// as an HTTP/1.1 upgrade ([`crate::policy::websocket`]); when the upstream switched
/// protocols, the client gets `200` and the stream's DATA is bridged through an in-memory pipe
/// to the same tunnel the other protocols use.
async fn connect(
    live: Arc<Live>,
    info: Arc<ConnInfo>,
    mut parts: http::request::Parts,
    recv: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let (slot, handoff) = StreamUpgrade::new();
    parts.extensions.insert(slot);
    // What policy::websocket recognises an HTTP/2 WebSocket handshake by.
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let req = Request::from_parts(parts, H2Body::empty());
    let Some(resp) = until_reset(&mut respond, proxy(&live, &info, req)).await else {
        return;
    };
    // The pipeline took the slot and waits for our end only when the upstream switched.
    let upgraded = resp.status().is_success() && !handoff.is_closed();
    if !upgraded {
        send(respond, resp, true).await;
        return;
    }
    let (mut head, _) = resp.into_parts();
    strip_connection_headers(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    let Ok(tx) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    let (ours, theirs) = tokio::io::duplex(PIPE);
    if handoff.send(Box::new(theirs)).is_err() {
        return;
    }
    let remote = info.remote;
    // Its own task: a tunnel lives as long as the WebSocket, not as a request.
    tokio::spawn(async move {
        bridge(tx, recv, ours).await;
        tracing::debug!(client = %remote, "HTTP/2 WebSocket stream closed");
    });
}

/// Copies the stream's DATA into the pipe (releasing flow control as it is written) and the
/// pipe into DATA frames (as the window allows) until both directions ended or either failed.
async fn bridge(mut tx: SendStream<Bytes>, mut recv: RecvStream, io: tokio::io::DuplexStream) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(16 * 1024);
            match rd.read_buf(&mut buf).await {
                // The upstream closed (the tunnel shut our write side): end the stream.
                Ok(0) => {
                    let _ = tx.send_data(Bytes::new(), true);
                    return;
                }
                Ok(_) => {
                    let mut data = buf.split().freeze();
                    while !data.is_empty() {
                        tx.reserve_capacity(data.len());
                        let Some(Ok(n)) = poll_fn(|cx| tx.poll_capacity(cx)).await else {
                            return;
                        };
                        let chunk = data.split_to(n.min(data.len()));
                        if !chunk.is_empty() && tx.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => {
                    tx.send_reset(Reason::CANCEL);
                    return;
                }
            }
        }
    };
    let up = async {
        while let Some(Ok(data)) = recv.data().await {
            let n = data.len();
            if wr.write_all(&data).await.is_err() {
                return;
            }
            let _ = recv.flow_control().release_capacity(n);
        }
        // The client finished (or reset) its side: propagate the close upstream.
        let _ = wr.shutdown().await;
    };
    let (mut up, mut down) = (pin!(up), pin!(down));
    tokio::select! {
        // The client's side ended first: the upstream may still answer.
        () = &mut up => down.await,
        // The tunnel ended (the upstream closed, or the idle timeout dropped it): nothing the
        // client still sends can go anywhere, so stop waiting for it. Dropping the stream's
        // halves resets it, as the HTTP/3 bridge ends on `gone`; before, this task lived on
        // until the client sent again or the connection closed.
        () = &mut down => {}
    }
}

/// A request body read from an h2 stream. Flow control is released as the pipeline takes the
/// data (so a slow upstream holds the client back); trailers are passed on.
pub struct H2Body {
    recv: Option<RecvStream>,
    /// What `content-length` said is still to come (h2 checks the sum against it).
    remaining: Option<u64>,
    data_done: bool,
}

impl H2Body {
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        if recv.is_end_stream() {
            // HEADERS with END_STREAM (most GETs): no body, no lookup.
            return H2Body::empty();
        }
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        H2Body {
            recv: Some(recv),
            remaining,
            data_done: false,
        }
    }

    fn empty() -> Self {
        H2Body {
            recv: None,
            remaining: Some(0),
            data_done: true,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let n = data.len();
                    // The pipeline has the bytes now: let the client send more.
                    let _ = recv.flow_control().release_capacity(n);
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(n as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.recv = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        let out = match recv.poll_trailers(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Some(t))) => Some(Ok(Frame::trailers(t))),
            Poll::Ready(Ok(None)) => None,
            Poll::Ready(Err(e)) => Some(Err(e)),
        };
        this.recv = None;
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
