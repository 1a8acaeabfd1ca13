//! Request limits (`listeners[].limits`, `rules[].maxRequestBodyBytes`): header size and count
//! (431), URI length (414), body size (413, up front from `Content-Length` and while
//! streaming), the HTTP/1.1 header read timeout and a connection idle timeout.
//!
//! The protocol layers enforce coarse backstops (hyper's HTTP/1.1 buffer and header count,
//! HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`, HTTP/3 `SETTINGS_MAX_FIELD_SECTION_SIZE`); the exact
//! limits are checked here, the same way for every protocol, before routing.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::reply::{error_response, ErrorKind};
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weir_config::ListenerLimits;

/// The per-request limits of a listener, checked by [`check_head`].
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
}

impl From<&ListenerLimits> for RequestLimits {
    fn from(l: &ListenerLimits) -> Self {
        RequestLimits {
            max_header_bytes: l.max_request_header_bytes as usize,
            max_headers: l.max_request_headers as usize,
            max_uri_bytes: l.max_uri_bytes as usize,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        (&ListenerLimits::default()).into()
    }
}

/// hyper's default HTTP/1.1 read buffer (~400 KiB); raised only when the header limit is
/// larger, so body throughput is unchanged.
const H1_DEFAULT_BUF: usize = 8192 + 4096 * 100;

/// The coarse HTTP/1.1 request-head limits past which the server answers 431 itself, for
/// hyper's server and Weir's codec alike: `(head bytes, header fields)`. hyper's defaults
/// (~400 KiB buffer, 100 fields), raised when the listener allows more.
pub fn h1_backstops(l: &ListenerLimits) -> (usize, usize) {
    let header_bytes = l.max_request_header_bytes as usize;
    (
        H1_DEFAULT_BUF.max(header_bytes + 8192),
        (l.max_request_headers as usize).max(100),
    )
}

/// The HTTP/1.1 + HTTP/2 connection builder for a listener with these limits.
pub fn http_builder(l: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = http.http1();
        h1.timer(TokioTimer::new())
            .header_read_timeout(l.header_read_timeout.get())
            .keep_alive(true);
        // hyper answers 431 itself past these; the exact limits are checked in check_head.
        let (buf, fields) = h1_backstops(l);
        if buf > H1_DEFAULT_BUF {
            h1.max_buf_size(buf);
        }
        if fields > 100 {
            h1.max_headers(fields);
        }
    }
    // No keep_alive_interval: PINGs would count as traffic for limits::IdleIo, so idle HTTP/2
    // connections would never hit the listener's idleTimeout (which also closes dead peers).
    // hyper has no per-stream header timeout to set here.
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(h2_header_list_size(l))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .enable_connect_protocol();
    http
}

/// `SETTINGS_MAX_HEADER_LIST_SIZE` for a listener: its header limits, with the 32 bytes of
/// overhead per field HPACK counts on top of name and value. h2 also bounds CONTINUATION
/// with it. The exact limits are checked in [`check_head`].
fn h2_header_list_size(l: &ListenerLimits) -> u32 {
    let header_bytes = l.max_request_header_bytes as usize;
    let list = header_bytes.saturating_add(32 * l.max_request_headers as usize);
    u32::try_from(list).unwrap_or(u32::MAX)
}

/// Rapid reset (CVE-2023-44487): streams the client resets before they are accepted; past
/// this the connection gets GOAWAY `ENHANCE_YOUR_CALM`. h2's and hyper's default.
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams reset for the peer's protocol errors before the connection is closed (hyper's).
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The `h2` server settings for a listener with these limits (`listen/h2.rs`): the values
/// hyper's server uses (see [`http_builder`]), so `--downstream-h2 hyper|h2` differ only in
/// the glue. hyper's defaults: 1 MiB stream and connection windows, 16 KiB frames, a 400 KiB
/// send buffer, 200 concurrent streams.
pub fn h2_settings(l: &ListenerLimits) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buffer_size(400 * 1024)
        .max_concurrent_streams(200)
        .max_header_list_size(h2_header_list_size(l))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESET_STREAMS))
        .enable_connect_protocol();
    b
}

/// Checks the request line and headers against the listener's limits: `414 uri_too_long`,
/// `431 too_many_headers` or `431 headers_too_large`.
pub fn check_head<B>(limits: &RequestLimits, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Some(error_response(
            StatusCode::URI_TOO_LONG,
            ErrorKind::UriTooLong,
            &format!(
                "request target is {uri_len} bytes; the limit is {}",
                limits.max_uri_bytes
            ),
        ));
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Some(error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::TooManyHeaders,
            &format!(
                "request has {} header fields; the limit is {}",
                headers.len(),
                limits.max_headers
            ),
        ));
    }
    let size = uri_len
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>();
    if size > limits.max_header_bytes {
        return Some(error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::HeadersTooLarge,
            &format!(
                "request headers are {size} bytes; the limit is {}",
                limits.max_header_bytes
            ),
        ));
    }
    None
}

fn body_too_large(max: u64) -> Response<ProxyBody> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::BodyTooLarge,
        &format!("request body is larger than the route's limit of {max} bytes"),
    )
}

/// Set when a streamed body ran past its limit.
#[derive(Debug, Clone)]
pub struct BodyTrip {
    max: u64,
    tripped: Arc<AtomicBool>,
}

impl BodyTrip {
    /// The reply to send instead of `resp` when the body ran past the limit while streaming.
    pub fn outcome(&self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        if self.tripped.load(Ordering::Relaxed) {
            body_too_large(self.max)
        } else {
            resp
        }
    }
}

/// Applies `max` to the request body: `413 body_too_large` at once when `Content-Length` says
/// more, otherwise the body is wrapped so it fails (and the reply becomes 413, see
/// [`BodyTrip::outcome`]) when more arrives.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn limit_body<B>(
    max: Option<u64>,
    req: Request<B>,
) -> Result<(Request<Limited<B>>, Option<BodyTrip>), Response<ProxyBody>> {
    let Some(max) = max else {
        return Ok((req.map(|inner| Limited::new(inner, None)), None));
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(body_too_large(max));
    }
    let trip = BodyTrip {
        max,
        tripped: Arc::new(AtomicBool::new(false)),
    };
    let t = trip.clone();
    Ok((req.map(|inner| Limited::new(inner, Some(t))), Some(trip)))
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(u64);

pin_project_lite::pin_project! {
    /// A request body that fails once more than its limit has been read.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        trip: Option<BodyTrip>,
        seen: u64,
    }
}

impl<B> Limited<B> {
    fn new(inner: B, trip: Option<BodyTrip>) -> Self {
        Limited {
            inner,
            trip,
            seen: 0,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(trip), Some(d)) = (this.trip.as_ref(), f.data_ref()) {
                    *this.seen += d.len() as u64;
                    if *this.seen > trip.max {
                        trip.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(trip.max)))));
                    }
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection closed when no byte has been read or written for `timeout`.
///
/// The timer is only looked at while a read is pending and only re-armed when it fires, so
/// traffic costs a flag store, not a timer reset. Once polled, the timer holds the task's
/// waker: a pending read by the same task then only checks whether the timer has fired (an
/// atomic load), not `Sleep::poll` again (its waker registration and budget check were ~120
/// instructions, twice per proxied HTTP/1.1 request, callgrind).
pub struct IdleIo<T> {
    inner: T,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    active: bool,
    /// The waker the armed timer wakes; `None` until the timer is first polled.
    waker: Option<std::task::Waker>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        IdleIo {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            active: false,
            waker: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.active = true;
                Poll::Ready(r)
            }
            Poll::Pending => {
                // The timer already wakes this task and has not fired: nothing to do.
                if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                    && !this.sleep.is_elapsed()
                {
                    return Poll::Pending;
                }
                loop {
                    if this.sleep.as_mut().poll(cx).is_pending() {
                        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            this.waker = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    if !this.active {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connection idle timeout",
                        )));
                    }
                    this.active = false;
                    let next = tokio::time::Instant::now() + this.timeout;
                    this.sleep.as_mut().reset(next);
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.active = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.active = true;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs a TCP connection's future, but drops it (closing the connection) when no request
/// head was complete within `timeout` of the start: the HTTP/2 side of the header read
/// timeout (hyper enforces it per request on HTTP/1.1). `seen` is set by the service.
pub async fn first_request_deadline<F, T, E>(
    conn: F,
    seen: Arc<AtomicBool>,
    timeout: Duration,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    T: Default,
{
    let late = async {
        tokio::time::sleep(timeout).await;
        if seen.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = conn => r,
        () = late => {
            tracing::debug!("no complete request head within the header read timeout; closing");
            Ok(T::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_limits() {
        let l = RequestLimits {
            max_header_bytes: 100,
            max_headers: 3,
            max_uri_bytes: 20,
        };
        let ok = Request::get("/short").header("a", "b").body(()).unwrap();
        assert!(check_head(&l, &ok).is_none());
        let long = Request::get(format!("/{}", "x".repeat(30)))
            .body(())
            .unwrap();
        assert_eq!(
            check_head(&l, &long).map(|r| r.status()),
            Some(StatusCode::URI_TOO_LONG)
        );
        let mut many = Request::get("/").body(()).unwrap();
        for i in 0..4 {
            many.headers_mut().insert(
                format!("h{i}").parse::<http::HeaderName>().unwrap(),
                "v".parse().unwrap(),
            );
        }
        assert_eq!(
            check_head(&l, &many).map(|r| r.status()),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let big = Request::get("/")
            .header("a", "v".repeat(200))
            .body(())
            .unwrap();
        assert_eq!(
            check_head(&l, &big).map(|r| r.status()),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    /// The timer is polled only when it may have fired: a connection read again and again by
    /// the same task (woken by other work) must still time out, also after traffic re-armed it.
    #[tokio::test]
    async fn idle_timeout_fires_between_pending_reads_by_the_same_task() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::from_millis(50));
        b.write_all(b"x").await.unwrap();
        let (mut read, mut pending) = (0, 0u64);
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| loop {
                let mut buf = [0u8; 8];
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(&mut io).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => read += rb.filled().len(),
                    Poll::Ready(r) => return Poll::Ready(r),
                    Poll::Pending => {
                        // Other work wakes the task: the read is polled again, same waker.
                        pending += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }),
        )
        .await
        .expect("the idle timeout never fired");
        assert_eq!(read, 1);
        assert!(pending > 1, "the read was pending {pending} times");
        let e = r.expect_err("a silent connection ends with an error");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        drop(b);
    }

    #[tokio::test]
    async fn body_limit_up_front_and_streaming() {
        let req = Request::post("/")
            .header("content-length", "11")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"hello world",
            )))
            .unwrap();
        let r = limit_body(Some(10), req).err().map(|r| r.status());
        assert_eq!(r, Some(StatusCode::PAYLOAD_TOO_LARGE));

        use http_body_util::BodyExt;
        let req = Request::post("/")
            .body(http_body_util::Full::new(Bytes::from_static(
                b"hello world",
            )))
            .unwrap();
        let Ok((req, Some(trip))) = limit_body(Some(10), req) else {
            panic!("limit not applied")
        };
        assert!(req.into_body().collect().await.is_err());
        let r = trip.outcome(Response::new(crate::http::body::empty()));
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
