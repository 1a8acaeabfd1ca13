//! The HTTP/3 front door: a QUIC endpoint (quinn + h3) feeding the same request pipeline as the
//! TCP listeners ([`crate::pipeline::proxy::handle`]).
//!
//! Per connection: the handshake runs in its own task (the accept loop never waits for one),
//! then requests are accepted until the client or a drain ends the connection; each request
//! runs in its own task. Response bodies are written frame by frame with `send_data` awaited to
//! completion (never raced against anything, so a frame is never cut in half); an upstream body
//! that fails midway resets the stream with `H3_INTERNAL_ERROR` instead of finishing it.

use crate::http::body::BoxError;
use crate::http::conn::ConnInfo;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::runtime::compile::ListenerRt;
use crate::telemetry::metrics::Handshake;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::watch;
use weir_config::Http3Config;

type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Binds the UDP socket (with the requested buffer sizes) and starts a quinn endpoint on it.
pub fn bind_endpoint(
    addr: SocketAddr,
    s: &Http3Config,
    server_config: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    for (what, want, set, get) in [
        (
            "receive",
            s.udp_receive_buffer as usize,
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
        ),
        (
            "send",
            s.udp_send_buffer as usize,
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
        ),
    ] {
        if let Err(e) = set(&sock, want) {
            tracing::warn!(address = %addr, buffer = what, error = %e, "cannot set UDP buffer size");
        }
        // Linux reports twice the usable size it granted; less than asked means it was capped.
        match get(&sock) {
            Ok(got) if got < want => tracing::warn!(
                address = %addr,
                buffer = what,
                requested = want,
                granted = got,
                "kernel capped the UDP socket buffer below the requested size (raise net.core.rmem_max / wmem_max); QUIC throughput may suffer"
            ),
            _ => {}
        }
    }
    sock.bind(&addr.into())?;
    let udp: std::net::UdpSocket = sock.into();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        udp,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Stream-reset flood threshold: a connection whose client has reset (RESET_STREAM) or
/// stopped (STOP_SENDING) at least this many streams before their response was complete,
/// more than half of all the request streams it opened, is closed with H3_EXCESSIVE_LOAD
/// ("rapid reset", CVE-2023-44487).
///
/// The HTTP/2 door uses hyper's defaults, i.e. h2's: at most 20 streams reset by the client
/// while still waiting to be accepted (`max_pending_accept_reset_streams`) and 1024 streams
/// reset by the server for errors (`max_local_error_reset_streams`), then GOAWAY
/// ENHANCE_YOUR_CALM. QUIC delivers a reset only when the stream is read or written, so
/// HTTP/3 counts per connection instead: quinn's count of RESET_STREAM / STOP_SENDING frames
/// received (a cancelled request usually sends both: the larger of the two counts), less the
/// responses sent complete (a stream stopped after its response cost nothing). The
/// ratio keeps long-lived browser connections, which cancel some requests (navigation,
/// media seeks) among many completed ones, below the threshold; a client cancelling most of
/// what it opens is cut off after 100. A documented constant until the contract grows a knob.
pub const RESET_FLOOD_MIN_STREAMS: u64 = 100;

/// Streams the client of `conn` has cancelled so far (see [`RESET_FLOOD_MIN_STREAMS`]),
/// less those whose response was complete all the same (`answered`): a client that reads a
/// response's head and drops the stream sends STOP_SENDING too, and has cost nothing.
fn cancelled_streams(conn: &quinn::Connection, answered: u64) -> u64 {
    let rx = conn.stats().frame_rx;
    rx.reset_stream
        .max(rx.stop_sending)
        .saturating_sub(answered)
}

/// True once the client cancels too many of the `opened` request streams it opened.
fn reset_flood(cancelled: u64, opened: u64) -> bool {
    cancelled >= RESET_FLOOD_MIN_STREAMS && cancelled.saturating_mul(2) > opened
}

/// HTTP/3 error code H3_EXCESSIVE_LOAD (RFC 9114 §8.1).
const H3_EXCESSIVE_LOAD: u32 = 0x107;

struct CountGuard(Arc<AtomicUsize>);
impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts QUIC connections until `stop` fires or the endpoint closes.
pub async fn accept_loop(
    dp: Arc<Live>,
    endpoint: quinn::Endpoint,
    settings: Arc<arc_swap::ArcSwap<ListenerRt>>,
    mut stop: watch::Receiver<bool>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            biased;
            _ = stop.changed() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let l = settings.load_full();
        let max = l
            .quic
            .as_ref()
            .map_or(0, |q| q.settings.max_connections as usize);
        if active.load(Ordering::Relaxed) >= max {
            tracing::warn!(listener = %l.name, max, "QUIC connection limit reached; refusing");
            if let Some(m) = &l.quic_metrics {
                m.rejected("max_connections");
            }
            incoming.refuse();
            continue;
        }
        let Some(drain) = dp.drain_watcher() else {
            if let Some(m) = &l.quic_metrics {
                m.rejected("shutting_down");
            }
            incoming.refuse();
            continue;
        };
        active.fetch_add(1, Ordering::Relaxed);
        let guard = CountGuard(active.clone());
        let dp = dp.clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve_connection(dp, incoming, l, drain).await;
        });
    }
}

async fn serve_connection(
    dp: Arc<Live>,
    incoming: quinn::Incoming,
    l: Arc<ListenerRt>,
    mut drain: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let _open = l.quic_metrics.as_ref().map(|m| m.accepted());
    let started = std::time::Instant::now();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %remote, error = %e, "QUIC handshake failed");
            if let Some(m) = &l.quic_metrics {
                m.handshake(Handshake::Failed);
            }
            return;
        }
    };
    if let Some(m) = &l.quic_metrics {
        m.handshake(Handshake::Ok(started.elapsed()));
    }
    let mut h3c = match h3::server::builder()
        // Backstop (RFC 9114 counts 32 bytes per field); exact limits in crate::http::limits.
        .max_field_section_size(
            u64::from(l.limits.max_request_header_bytes)
                + 32 * u64::from(l.limits.max_request_headers),
        )
        // SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSockets over HTTP/3 (crate::listen::h3_websocket).
        .enable_extended_connect(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %remote, error = %e, "HTTP/3 setup failed");
            return;
        }
    };
    let info = Arc::new(ConnInfo::new(
        remote,
        l.name.as_str().into(),
        "https",
        None,
        (&l.limits).into(),
    ));
    let mut draining = *drain.borrow();
    if draining {
        let _ = h3c.shutdown(0).await;
    }
    let mut opened: u64 = 0;
    // Responses sent complete on this connection (for the reset flood count).
    let answered = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            r = h3c.accept() => r,
            _ = drain.changed(), if !draining => {
                draining = true;
                // GOAWAY: requests already accepted finish, new ones are refused.
                let _ = h3c.shutdown(0).await;
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                opened += 1;
                let cancelled = cancelled_streams(&conn, answered.load(Ordering::Relaxed));
                if reset_flood(cancelled, opened) {
                    tracing::warn!(
                        client = %remote,
                        cancelled,
                        opened,
                        "HTTP/3 stream reset flood; closing the connection with H3_EXCESSIVE_LOAD"
                    );
                    // Requests still waiting for their upstream see the close (`quic.closed()`
                    // in serve_request) and are cancelled; those not started never start.
                    conn.close(
                        quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD),
                        b"stream reset flood",
                    );
                    break;
                }
                let dp = dp.clone();
                let info = info.clone();
                let drain = drain.clone();
                let quic = conn.clone();
                let answered = answered.clone();
                // The request's HEADERS must arrive within the header read timeout.
                let header_timeout = l.limits.header_read_timeout.get();
                // Boxed: tokio moves a spawned future (several KiB here) more than once
                // before and after polling it; a box is moved once.
                tokio::spawn(Box::pin(async move {
                    let _drain = drain; // keeps shutdown waiting until this request is done
                    let head = tokio::time::timeout(header_timeout, resolver.resolve_request());
                    match head.await {
                        Ok(Ok((req, stream))) => {
                            if serve_request(&dp, &info, &quic, req, stream).await {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %info.remote, error = %e, "bad HTTP/3 request")
                        }
                        Err(_) => {
                            tracing::debug!(client = %info.remote, "HTTP/3 request headers late")
                        }
                    }
                }));
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(client = %remote, error = %e, "HTTP/3 connection ended");
                }
                break;
            }
        }
    }
}

/// Serves one request stream; true when its response was sent complete.
async fn serve_request(
    dp: &Arc<Live>,
    info: &ConnInfo,
    quic: &quinn::Connection,
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> bool {
    if crate::listen::h3_websocket::is_websocket_connect(&req) {
        crate::listen::h3_websocket::serve(dp, info, quic, req, stream).await;
        return false; // a tunnel, not a response (not counted for the reset flood)
    }
    let (mut send, mut recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let length = match content_length(&parts.headers) {
        Ok(length) => length,
        Err(why) => {
            tracing::debug!(client = %info.remote, why, "malformed HTTP/3 request (content-length)");
            send.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            return false;
        }
    };
    // Without a Content-Length, look at the first DATA (or the end of the stream) so that an
    // empty request is forwarded as empty rather than as a zero-length chunked body. With
    // `content-length: 0` the same look makes sure no DATA follows: the upstream client sends
    // a zero-length body without ever reading it.
    let mut first = None;
    let mut ended = false;
    if matches!(length, None | Some(0)) {
        while first.is_none() && !ended {
            match recv.recv_data().await {
                Ok(Some(mut buf)) if buf.has_remaining() => {
                    first = Some(buf.copy_to_bytes(buf.remaining()))
                }
                Ok(Some(_)) => {} // an empty DATA frame says nothing yet
                Ok(None) => ended = true,
                Err(e) => {
                    tracing::debug!(client = %info.remote, error = %e, "request stream failed before the body");
                    return false;
                }
            }
        }
        if length == Some(0) && first.is_some() {
            tracing::debug!(client = %info.remote, "HTTP/3 request has DATA after content-length: 0; stream reset with H3_MESSAGE_ERROR");
            send.stop_stream(h3::error::Code::H3_MESSAGE_ERROR);
            recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
            return false;
        }
    }
    // A body whose DATA disagrees with its Content-Length is malformed (RFC 9114 §4.1.2), and
    // trailers may be too large: H3Body then fails the upstream request before it is
    // complete and records here the error code the stream is reset with instead of answered.
    let refused = Refusal::default();
    let body = H3Body {
        recv,
        first,
        state: if ended { State::Trailers } else { State::Data },
        empty: ended,
        failed: None,
        remaining: length,
        held: None,
        refused: refused.clone(),
    };
    // A stream reset flood may have closed the connection since this request was accepted:
    // do not start its upstream request.
    if quic.close_reason().is_some() {
        return false;
    }
    // If the client's connection goes away while the upstream is still working on the response
    // head, drop the upstream exchange instead of letting it run to its timeout.
    let resp = tokio::select! {
        // On the heap (a recycled block): kept inline, this future made every spawned request
        // task several KiB, copied on spawn and on completion.
        resp = super::recycled_in_place(|| proxy::handle(dp.runtime(), dp.telemetry(), info, Request::from_parts(parts, body), None)) => resp,
        reason = quic.closed() => {
            tracing::debug!(client = %info.remote, reason = %reason, "client connection closed; upstream request cancelled");
            return false;
        }
    };
    let reset = |send: &mut SendHalf, code: h3::error::Code| {
        tracing::debug!(client = %info.remote, code = %code, "HTTP/3 request refused while its body streamed; stream reset");
        send.stop_stream(code);
    };
    if let Some(code) = refused.code() {
        {
            reset(&mut send, code);
            return false;
        }
    }
    let (parts, mut body) = resp.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(client = %info.remote, error = %e, "cannot send HTTP/3 response headers");
        return false;
    }
    loop {
        match body.frame().await {
            None => {
                if let Some(code) = refused.code() {
                    {
                        reset(&mut send, code);
                        return false;
                    }
                }
                return send.finish().await.is_ok();
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if let Err(e) = send.send_data(data).await {
                        // The client went away (reset / STOP_SENDING): dropping the upstream
                        // body here cancels the upstream exchange.
                        tracing::debug!(client = %info.remote, error = %e, "client stopped reading the response");
                        return false;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let sent = send.send_trailers(trailers).await.is_ok();
                        return sent && send.finish().await.is_ok();
                    }
                }
            },
            Some(Err(e)) => {
                if let Some(code) = refused.code() {
                    {
                        reset(&mut send, code);
                        return false;
                    }
                }
                tracing::warn!(client = %info.remote, error = %e, "upstream body failed midway; resetting the HTTP/3 stream");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return false;
            }
        }
    }
}

/// The HTTP/3 error code a request is to be refused with, set by [`H3Body`] while the body
/// streams (none until then).
#[derive(Clone, Default)]
struct Refusal(Arc<AtomicU64>);

impl Refusal {
    fn set(&self, code: h3::error::Code) {
        self.0.store(code.value(), Ordering::Relaxed);
    }

    fn code(&self) -> Option<h3::error::Code> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            v => Some(h3::error::Code::from(v)),
        }
    }
}

/// The request's declared body length. As h2 does for HTTP/2: every `content-length` value
/// must be a plain decimal number, and repeated values must agree (RFC 9110 §8.6).
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        let bytes = v.as_bytes();
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return Err("content-length is not a number");
        }
        let n = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("content-length out of range")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length values");
        }
        length = Some(n);
    }
    Ok(length)
}

enum State {
    Data,
    Trailers,
    Done,
}

/// An HTTP/3 request body as an [`http_body::Body`], streamed from the QUIC stream.
pub struct H3Body {
    recv: RecvHalf,
    first: Option<Bytes>,
    state: State,
    /// The stream ended before any data: a known-empty body.
    empty: bool,
    /// An error met while coalescing, returned after the data read before it.
    failed: Option<BoxError>,
    /// Body bytes still expected by the request's Content-Length, if it has one.
    remaining: Option<u64>,
    /// The data completing the Content-Length, held back until the request stream is seen to
    /// end there: the upstream client stops reading once it has the declared length, so data
    /// beyond it would otherwise never be seen and the backend would get a complete request.
    held: Option<Bytes>,
    /// Set when the request is refused while its body streams.
    refused: Refusal,
}

/// What [`H3Body::admit`] made of a chunk of request body data.
enum Admit {
    Yield(Bytes),
    Held,
    Mismatch(BoxError),
}

/// Request body data already received is handed upstream in one frame of up to about this
/// many bytes. quinn yields a stream's data one received packet at a time (~1.2 KiB); passed
/// on one by one, every packet became a frame through the body layers, an HTTP/1.1 chunk
/// (header and all) for the upstream and a share of a small `writev`. Only data that is
/// already there is merged: nothing waits for more, so streaming bodies are not delayed.
const COALESCE_BYTES: usize = 64 * 1024;

/// A body dropped before the client finished sending it (an early 413, a rejected request, an
/// upstream that answered without reading everything): ask the client to stop with H3_NO_ERROR,
/// as RFC 9114 §4.1 recommends, rather than quinn's default STOP_SENDING code 0 on drop. The
/// response, if any, is still sent complete; clients must not discard it.
impl Drop for H3Body {
    fn drop(&mut self) {
        if matches!(self.state, State::Data) && !self.empty {
            self.recv.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

impl H3Body {
    /// Counts `b` against the Content-Length: passes it on, holds it back (it completes the
    /// declared length and the end of the DATA is not seen yet), or fails the body (too long).
    fn admit(&mut self, b: Bytes) -> Admit {
        let Some(remaining) = self.remaining else {
            return Admit::Yield(b);
        };
        let n = b.len() as u64;
        if n > remaining || self.held.is_some() && n > 0 {
            return Admit::Mismatch(self.mismatch("more DATA than its content-length"));
        }
        let left = remaining - n;
        self.remaining = Some(left);
        match self.state {
            State::Data if left == 0 => {
                self.held = Some(b);
                Admit::Held
            }
            State::Data => Admit::Yield(b),
            // The end of the DATA was already seen (while coalescing).
            State::Trailers if left > 0 => {
                Admit::Mismatch(self.mismatch("less DATA than its content-length"))
            }
            // Done: an error met while coalescing follows this data.
            State::Trailers | State::Done => Admit::Yield(b),
        }
    }

    /// Marks the request malformed, asks the client to stop sending (H3_MESSAGE_ERROR) and
    /// returns the error that fails the upstream request before its body is complete.
    fn mismatch(&mut self, what: &'static str) -> BoxError {
        self.refused.set(h3::error::Code::H3_MESSAGE_ERROR);
        self.held = None;
        if matches!(self.state, State::Data) {
            self.recv.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
        }
        self.state = State::Done;
        self.failed = None;
        format!("malformed HTTP/3 request: {what}").into()
    }

    /// The error for a failed read of the request stream. Trailers larger than the
    /// field-section limit (refused by h3 from their frame header, never buffered) are the
    /// client's doing: the stream is then reset (H3_EXCESSIVE_LOAD, the code h3 stopped the
    /// request stream with) rather than answered with the upstream's 502.
    fn recv_failed(&self, e: h3::error::StreamError) -> BoxError {
        if matches!(e, h3::error::StreamError::HeaderTooBig { .. }) {
            self.refused.set(h3::error::Code::H3_EXCESSIVE_LOAD);
        }
        Box::new(e)
    }

    /// `first` plus whatever further data the stream has ready now, up to about
    /// [`COALESCE_BYTES`] (one copy into one buffer; `first` alone when nothing more is there).
    /// The end of the data or an error is recorded in `state` / `failed` for the next poll.
    fn coalesce(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        let mut out: Option<BytesMut> = None;
        loop {
            match self.recv.poll_recv_data(cx) {
                Poll::Ready(Ok(Some(mut buf))) => {
                    let out = out.get_or_insert_with(|| {
                        let mut m = BytesMut::with_capacity(COALESCE_BYTES.max(first.len()));
                        m.extend_from_slice(&first);
                        m
                    });
                    out.put(&mut buf);
                    if out.len() >= COALESCE_BYTES {
                        break;
                    }
                }
                Poll::Ready(Ok(None)) => {
                    self.state = State::Trailers;
                    break;
                }
                Poll::Ready(Err(e)) => {
                    self.state = State::Done;
                    self.failed = Some(self.recv_failed(e));
                    break;
                }
                Poll::Pending => break,
            }
        }
        out.map_or(first, BytesMut::freeze)
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.first.take() {
                match this.admit(b) {
                    Admit::Yield(b) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Admit::Held => continue,
                    Admit::Mismatch(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Some(Err(e)));
            }
            match this.state {
                State::Data => match ready!(this.recv.poll_recv_data(cx)) {
                    Ok(Some(mut buf)) => {
                        let b = buf.copy_to_bytes(buf.remaining());
                        if b.is_empty() {
                            continue;
                        }
                        // Data after what completes the Content-Length: checked unmerged.
                        let b = if b.len() < COALESCE_BYTES && this.held.is_none() {
                            this.coalesce(b, cx)
                        } else {
                            b
                        };
                        this.first = Some(b);
                    }
                    Ok(None) => {
                        this.state = State::Trailers;
                        if let Some(b) = this.held.take() {
                            return Poll::Ready(Some(Ok(Frame::data(b))));
                        }
                        if this.remaining.is_some_and(|r| r > 0) {
                            let e = this.mismatch("less DATA than its content-length");
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(this.recv_failed(e))));
                    }
                },
                State::Trailers => {
                    this.state = State::Done;
                    if this.empty {
                        return Poll::Ready(None);
                    }
                    return match ready!(this.recv.poll_recv_trailers(cx)) {
                        Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        Ok(None) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(this.recv_failed(e)))),
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not while an error met while coalescing (`failed`) waits behind the data just
        // returned: the upstream client asks this after every frame and, told the body is
        // complete, would end the request cleanly (a chunked upload's last chunk) instead of
        // polling again for the error. A client that vanished mid-upload then reached the
        // backend as a shorter but complete request.
        self.empty || (matches!(self.state, State::Done) && self.failed.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.empty {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}
