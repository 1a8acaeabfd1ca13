//! WebSockets over HTTP/3 (RFC 9220): an extended CONNECT with `:protocol websocket` on an
//! HTTP/3 request stream. The request goes through [`crate::pipeline::proxy::handle`] like any other
//! (routing, policies, the rule's `websocket` switch), which sends it upstream as an HTTP/1.1
//! upgrade ([`crate::policy::websocket`]). When the upstream switched protocols, the client gets
//! `200` and the stream's DATA frames are bridged, through an in-memory pipe, to the same
//! tunnel the HTTP/1.1 and HTTP/2 paths use (idle timeout, close propagation, metrics with
//! `protocol="h3"`).
//!
//! Close propagation: the client finishing its stream shuts the tunnel's client-to-upstream
//! direction; the upstream closing ends in `finish()` on the stream. A tunnel that ends
//! abnormally (idle timeout, upstream error) also stops the client's sending side with
//! `H3_REQUEST_CANCELLED`.
//!
//! The h3 crate only accepts `:protocol websocket` with Weir's patch (vendor/h3/WEIR-PATCH.md).

use crate::http::conn::ConnInfo;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::policy::websocket::StreamUpgrade;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Bytes buffered between the HTTP/3 stream and the tunnel, each way.
const PIPE: usize = 64 * 1024;

/// An RFC 9220 WebSocket handshake (`CONNECT` with `:protocol websocket`).
pub fn is_websocket_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.extensions().get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEBSOCKET)
}

/// Serves one extended CONNECT request stream: the handshake through the proxy pipeline, then
/// (on success) a detached task bridging the stream to the tunnel.
pub async fn serve(
    dp: &Arc<Live>,
    info: &ConnInfo,
    quic: &quinn::Connection,
    req: Request<()>,
    stream: Stream,
) {
    let (slot, handoff) = StreamUpgrade::new();
    let (mut parts, ()) = req.into_parts();
    parts.extensions.insert(slot);
    // The stream's DATA is the WebSocket connection, not a request body.
    let req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let resp = tokio::select! {
        resp = super::boxed_in_place(|| proxy::handle(dp.runtime(), dp.telemetry(), info, req, None)) => resp,
        reason = quic.closed() => {
            tracing::debug!(client = %info.remote, reason = %reason, "client connection closed during the WebSocket handshake");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    // A tunnel task holds the receiving side only when the upstream switched protocols.
    let upgraded = resp.status().is_success() && !handoff.is_closed();
    let (parts, mut body) = resp.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(client = %info.remote, error = %e, "cannot send HTTP/3 response headers");
        return;
    }
    if !upgraded {
        // A refusal (403, 404, 502, the upstream's own answer, ...): send its body and end.
        while let Some(frame) = body.frame().await {
            let Ok(Ok(data)) = frame.map(|f| f.into_data()) else {
                break;
            };
            if !data.is_empty() && send.send_data(data).await.is_err() {
                return;
            }
        }
        let _ = send.finish().await;
        return;
    }
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (gone_tx, gone) = oneshot::channel();
    let end = TunnelEnd {
        io: theirs,
        _gone: gone_tx,
    };
    if handoff.send(Box::new(end)).is_err() {
        let _ = send.finish().await;
        return;
    }
    let remote = info.remote;
    tokio::spawn(async move {
        bridge(send, recv, ours, gone).await;
        tracing::debug!(client = %remote, "HTTP/3 WebSocket stream closed");
    });
}

/// Copies the request stream's DATA into the pipe and the pipe into DATA frames until both
/// directions ended, the client stopped reading, or the tunnel went away.
async fn bridge(
    mut send: SendHalf,
    mut recv: RecvHalf,
    io: DuplexStream,
    mut gone: oneshot::Receiver<()>,
) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let down = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(16 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    // The upstream closed (the tunnel shut our write side): end the stream.
                    let _ = send.finish().await;
                    return true;
                }
                Ok(_) => {
                    if send.send_data(buf.split().freeze()).await.is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    let up = async {
        loop {
            let next = tokio::select! {
                r = recv.recv_data() => Some(r.map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining())))),
                _ = &mut gone => None,
            };
            match next {
                // The tunnel ended without the client closing (idle timeout, upstream error).
                None => {
                    recv.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
                    return;
                }
                Some(Ok(Some(data))) => {
                    if wr.write_all(&data).await.is_err() {
                        return;
                    }
                }
                // The client finished (or reset) its side: propagate the close upstream.
                Some(Ok(None)) | Some(Err(_)) => {
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            _ = &mut up, if !up_done => up_done = true,
            ok = &mut down, if !down_done => {
                if !ok {
                    // The client stopped reading: dropping our end closes the tunnel.
                    return;
                }
                down_done = true;
            }
        }
    }
}

/// The tunnel's end of the pipe; dropping it (the tunnel ended) fires `_gone`.
struct TunnelEnd {
    io: DuplexStream,
    _gone: oneshot::Sender<()>,
}

impl AsyncRead for TunnelEnd {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelEnd {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
