//! Weir's own HTTP/1.1 *server* codec for the downstream leg (plain HTTP/1.1 and HTTP/1.1 over
//! TLS), the counterpart of the upstream client codec in `upstream/h1.rs`. The connection's own
//! task reads into one buffer, parses request heads with `httparse` into `http::request::Parts`
//! (header values share the read buffer), runs the pipeline, and writes the response head and a
//! small body in one `write`. No dispatcher, no service future, no second task. BENCHMARKS.md
//! ("HTTP/1.1 server codec") has the instructions per request of both.
//!
//! What it does not carry goes to hyper's server (`tcp::serve_hyper`), with the bytes already
//! read replayed in front of the connection ([`Rewind`]): the HTTP/2 prior-knowledge preface
//! (h2c), any request with an `Upgrade` field (WebSocket, `h2c`, …) and `CONNECT`. A request
//! with a body streams it through [`RequestBody`], read from the connection by this task while
//! the pipeline runs (so a response may start before the upload ends, as with hyper).
//! `--downstream-h1 hyper` (`WEIR_DOWNSTREAM_H1`) sends every connection through hyper.
//!
//! Request-side defences (RFC 9112), each tested against a raw socket in
//! `dataplane/tests/h1_server.rs`:
//!
//! - `Transfer-Encoding` and `Content-Length` together: 400 (§6.3 3, "MAY reject"; hyper
//!   instead drops the length and closes after). `Transfer-Encoding` on HTTP/1.0: 400. A last
//!   coding other than `chunked`: 400 (§6.3 4); other codings before `chunked`: 501 (§6.1; the
//!   proxy would not decode them).
//! - `Content-Length`: digits only (no sign, no list); several fields must agree, else 400.
//! - Obsolete line folding, bare CR, NUL and other control bytes, whitespace before the colon,
//!   invalid names, methods or targets: 400 (`httparse`'s defaults, as hyper's server uses
//!   them; bare LF line ends are accepted, as by hyper). A version other than 1.0/1.1: 505.
//! - Chunked bodies: the upstream codec's decoder (chunk size of at most 16 hex digits, strict
//!   extensions, CRLF after the data, trailers parsed as fields).
//! - Head larger than the listener's buffer, or more fields than its count: 431 (hyper's
//!   backstops; the exact limits are checked in `limits::check_head` with its JSON answers). A
//!   target over 65,534 bytes: 414, as hyper.
//! - A request body not fully read when the response has been written: the connection is closed
//!   (unless the rest is already buffered). A client gone mid-body: the body ends with an error.

use crate::http::body::BoxError;
use crate::http::conn::ConnInfo;
use crate::http::headers::FieldsSeen;
use crate::listen::live::Live;
use crate::pipeline::proxy;
use crate::upstream::h1::{digits, field_spans, trim, CodecError, Decoder, Framing, Span, Step};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Whether HTTP/1.1 connections are served by the codec (`--downstream-h1`, set once at start).
static CODEC: AtomicBool = AtomicBool::new(true);

/// Chooses the HTTP/1.1 server: Weir's codec (`true`) or hyper's.
pub fn use_codec(on: bool) {
    CODEC.store(on, Ordering::Relaxed);
}

/// Whether new HTTP/1.1 connections go to the codec.
pub fn codec_enabled() -> bool {
    CODEC.load(Ordering::Relaxed)
}

/// hyper's longest request target (`MAX_URI_LEN`), answered with 414 past it.
const MAX_TARGET: usize = (u16::MAX - 1) as usize;

/// Header fields parsed on the stack; a listener allowing more parses into a `Vec`.
const STACK_FIELDS: usize = 100;

/// Room for the fields the pipeline adds on the way upstream (`x-forwarded-*`, `via`,
/// `traceparent`): a map sized to the client's fields alone grows (rehash, realloc).
const ADDED_FIELDS: usize = 8;

/// What a read asks the kernel for at most.
const READ_CHUNK: usize = 16 * 1024;

/// Body data up to this size is copied behind the head (one `write`); larger frames are written
/// from their own buffer.
const COPY_LIMIT: usize = 16 * 1024;

/// Buffered response bytes past which they are written before the next frame is polled.
const FLUSH_AT: usize = 64 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The coarse limits on a request head (the exact ones are `limits::check_head`'s).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of request line and fields; more is 431.
    pub max_head_bytes: usize,
    /// Header fields; more is 431.
    pub max_headers: usize,
}

/// Why a request head was refused; [`RequestError::status`] is the answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("invalid request head: {0}")]
    Head(httparse::Error),
    #[error("invalid method")]
    Method,
    #[error("invalid request target")]
    Target,
    #[error("request target longer than {MAX_TARGET} bytes")]
    TargetTooLong,
    #[error("unsupported HTTP version")]
    Version,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyFields(usize),
    #[error("invalid header field {0:?}")]
    Field(String),
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndEncoding,
    #[error("Transfer-Encoding on an HTTP/1.0 request")]
    EncodingOnHttp10,
    #[error("Transfer-Encoding whose last coding is not chunked")]
    NotChunked,
    #[error("Transfer-Encoding with codings other than chunked")]
    UnsupportedCoding,
}

impl RequestError {
    /// The status a client gets for it.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::TooLarge(_) | RequestError::TooManyFields(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RequestError::TargetTooLong => StatusCode::URI_TOO_LONG,
            RequestError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            RequestError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct ReqHead {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client allows another request on the connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: answer `100 Continue` before reading the body.
    pub expect_continue: bool,
    /// The fields the pipeline asks about, noted during the walk over the fields (its lookups
    /// of names the request does not carry are skipped).
    pub seen: FieldsSeen,
}

/// What the front of the buffer holds. Not boxed: a box would be a `malloc` per request for the
/// rare hand-off's sake.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A request this codec serves (its head has been split off the buffer).
    Request(ReqHead),
    /// A request (or preface) for hyper's server; the buffer is untouched.
    HandOff,
}

/// What a connection keeps between request heads.
#[derive(Default)]
pub struct Scratch {
    spans: Vec<Span>,
    /// The last response's header map, cleared: the next request's fields go in it (hyper
    /// recycles it the same way). A new map per request cost two `malloc`s and ~900
    /// instructions (callgrind).
    headers: Option<HeaderMap>,
}

/// Parses a request head from the front of `buf`. `Ok(None)`: more bytes are needed. `first`:
/// the connection's first bytes (where an HTTP/2 preface may come).
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HeadLimits,
    first: bool,
    scratch: &mut Scratch,
) -> Result<Option<Parsed>, RequestError> {
    if first {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            return Ok((n == H2_PREFACE.len()).then_some(Parsed::HandOff));
        }
    }
    // Not zeroed (MaybeUninit): the upstream codec measured ~3,200 instructions for zeroing a
    // 100-entry array per head.
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap = Vec::new();
    let fields = if limits.max_headers <= STACK_FIELDS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(RequestError::TooLarge(limits.max_head_bytes))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Token) if req.method.is_none() => return Err(RequestError::Method),
        Err(httparse::Error::Token) => return Err(RequestError::Target),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::TooManyFields(limits.max_headers))
        }
        Err(e) => return Err(RequestError::Head(e)),
    };
    if len > limits.max_head_bytes {
        return Err(RequestError::TooLarge(limits.max_head_bytes));
    }
    let (Some(m), Some(target), Some(v)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Head(httparse::Error::Token));
    };
    let method = Method::from_bytes(m.as_bytes()).map_err(|_| RequestError::Method)?;
    if method == Method::CONNECT
        || req
            .headers
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case("upgrade"))
    {
        return Ok(Some(Parsed::HandOff));
    }
    if target.len() > MAX_TARGET {
        return Err(RequestError::TargetTooLong);
    }
    let version = if v == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let base = buf.as_ptr() as usize;
    let target_start = target.as_ptr() as usize - base;
    let target_end = target_start + target.len();
    let spans = &mut scratch.spans;
    field_spans(base, req.headers, spans);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_start..target_end))
        .map_err(|_| RequestError::Target)?;
    let mut headers = scratch.headers.take().unwrap_or_default();
    headers.reserve(spans.len() + ADDED_FIELDS);
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    let mut expect_continue = false;
    let mut length: Option<u64> = None;
    let mut encoding: Option<(bool, bool)> = None; // (last is chunked, only chunked)
    let mut seen = FieldsSeen::default();
    for &(ns, ne, vs, ve) in spans.iter() {
        let name = match HeaderName::from_bytes(&head[ns..ne]) {
            Ok(n) => n,
            Err(_) => {
                return Err(RequestError::Field(
                    String::from_utf8_lossy(&head[ns..ne]).into(),
                ))
            }
        };
        let value = crate::http::headers::parsed_value(head.slice(vs..ve));
        // The four names that frame the message or the connection differ in length (14, 17,
        // 10, 6): the name's length picks the one comparison that can match, instead of four
        // out-of-line `HeaderName` comparisons per field (~75 instructions a field,
        // callgrind).
        match ne - ns {
            14 if name == header::CONTENT_LENGTH => {
                let n = digits(value.as_bytes()).ok_or(RequestError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(RequestError::ContentLength);
                }
                length = Some(n);
            }
            17 if name == header::TRANSFER_ENCODING => {
                if version == Version::HTTP_10 {
                    return Err(RequestError::EncodingOnHttp10);
                }
                // Several fields form one list; only the last coding decides the framing.
                let only = encoding.is_none_or(|(_, only)| only);
                let mut last_chunked = false;
                let mut all_chunked = true;
                for c in value.as_bytes().split(|b| *b == b',') {
                    let c = trim(c);
                    if c.is_empty() {
                        continue;
                    }
                    last_chunked = c.eq_ignore_ascii_case(b"chunked");
                    all_chunked &= last_chunked;
                }
                encoding = Some((last_chunked, only && all_chunked));
            }
            10 if name == header::CONNECTION => {
                seen = seen | FieldsSeen::CONNECTION;
                for t in value.as_bytes().split(|b| *b == b',') {
                    let t = trim(t);
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            6 if name == header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            len => seen.note(len, &name),
        }
        headers.append(name, value);
    }
    let framing = match (encoding, length) {
        (Some(_), Some(_)) => return Err(RequestError::LengthAndEncoding),
        (Some((false, _)), None) => return Err(RequestError::NotChunked),
        (Some((true, false)), None) => return Err(RequestError::UnsupportedCoding),
        (Some((true, true)), None) => Framing::Chunked,
        (None, Some(0) | None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Request(ReqHead {
        parts,
        framing,
        keep_alive: keep_alive && !close,
        expect_continue,
        seen,
    })))
}

/// A request line whose version is `HTTP/x…` with a major other than 1 gets 505 (RFC 9110
/// §15.6.6); any other bad version is a malformed line, 400 (hyper answers 400 to both).
fn version_error(buf: &[u8]) -> RequestError {
    // method SP target SP version: the third piece (only its first bytes matter).
    let version = buf.split(|b| *b == b' ').nth(2).unwrap_or_default();
    match version {
        // Only the major digit is looked at: `httparse` stops at the first wrong byte, and the
        // answer must not depend on how much of the line had arrived.
        [b'H', b'T', b'T', b'P', b'/', major, ..] if major.is_ascii_digit() && *major != b'1' => {
            RequestError::Version
        }
        _ => RequestError::Head(httparse::Error::Version),
    }
}

/// The outcome of feeding `data` to [`parse_request`] `step` bytes at a time, then decoding the
/// body (for the fuzz target: it must not depend on `step`).
pub fn replay(data: &[u8], step: usize) -> String {
    let limits = HeadLimits {
        max_head_bytes: 8192,
        max_headers: 32,
    };
    let mut buf = BytesMut::new();
    let mut scratch = Scratch::default();
    let mut rest = data;
    let head = loop {
        match parse_request(&mut buf, &limits, true, &mut scratch) {
            Err(e) => return format!("error {e}"),
            Ok(Some(Parsed::HandOff)) => return "handoff".into(),
            Ok(Some(Parsed::Request(h))) => break h,
            Ok(None) if rest.is_empty() => return "incomplete head".into(),
            Ok(None) => {
                let n = step.max(1).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    };
    let mut out = format!(
        "{} {} {:?} {:?} keep-alive={}",
        head.parts.method, head.parts.uri, head.parts.version, head.framing, head.keep_alive
    );
    let mut decoder = Decoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Err(e) => return format!("{out} body error {e}"),
            Ok(Step::Data(d)) => body.extend_from_slice(&d),
            Ok(Step::Trailers(t)) => {
                out.push_str(&format!(" trailers={}", t.len()));
                break;
            }
            Ok(Step::Done) => break,
            Ok(Step::NeedMore) if rest.is_empty() => {
                return format!("{out} body truncated after {}", body.len())
            }
            Ok(Step::NeedMore) => {
                let n = step.max(1).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
    if let Framing::Length(n) = head.framing {
        assert_eq!(body.len() as u64, n, "a Content-Length body is its length");
    }
    format!("{out} body={}", body.len())
}

// ---------------------------------------------------------------------------------------------
// The request body: frames handed from the connection task to whoever reads the body.

#[derive(Default)]
struct Slot {
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    /// The body has ended (after `frame`, if one is waiting).
    done: bool,
    /// The reader asked for a frame and none was there.
    want: bool,
    /// The reader dropped the body.
    gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// A request body read from the client connection by the connection's task, one frame at a
/// time, when the reader asks for it (so `Expect: 100-continue` is answered only then, as
/// hyper does).
pub struct RequestBody {
    slot: Option<Arc<Mutex<Slot>>>,
    hint: SizeHint,
}

impl RequestBody {
    fn empty() -> RequestBody {
        RequestBody {
            slot: None,
            hint: SizeHint::with_exact(0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("invalid request body: {0}")]
    Codec(#[from] CodecError),
    #[error("cannot read the request body")]
    Read(#[source] std::io::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(None);
        };
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = s.frame.take() {
            if let Some(w) = s.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(f));
        }
        if s.done {
            return Poll::Ready(None);
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        if !s.want {
            s.want = true;
            if let Some(w) = s.writer.take() {
                w.wake();
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.done && s.frame.is_none()
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            s.gone = true;
            if let Some(w) = s.writer.take() {
                w.wake();
            }
        }
    }
}

/// The connection side of a [`RequestBody`]: decodes frames from the connection when asked.
struct Pump {
    slot: Arc<Mutex<Slot>>,
    decoder: Decoder,
    /// Bytes of `100 Continue` still to write (`None`: not asked for, or written).
    continue_at: Option<usize>,
    /// Nothing more to deliver (the body ended, failed, or the reader is gone).
    finished: bool,
    /// The connection cannot carry another request (the body failed or was cut short).
    broken: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Pump {
    /// Delivers the next frame if the reader wants one. `true`: something changed (poll the
    /// reader again); `false`: waiting for the reader or the socket.
    fn progress<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
    ) -> bool {
        if self.finished {
            return false;
        }
        {
            let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if s.gone {
                self.finished = true;
                return true;
            }
            if s.frame.is_some() || !s.want {
                if !s.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.writer = Some(cx.waker().clone());
                }
                return false;
            }
        }
        loop {
            let step = match self.decoder.decode(rbuf) {
                Ok(Step::NeedMore) => {
                    if let Some(at) = self.continue_at {
                        match Pin::new(&mut *io).poll_write(cx, &CONTINUE[at..]) {
                            Poll::Ready(Ok(n)) if n > 0 => {
                                let at = at + n;
                                self.continue_at = (at < CONTINUE.len()).then_some(at);
                                continue;
                            }
                            Poll::Pending => return false,
                            Poll::Ready(Ok(_)) => {
                                self.fail(BodyError::Read(std::io::ErrorKind::WriteZero.into()));
                                return true;
                            }
                            Poll::Ready(Err(e)) => {
                                self.fail(BodyError::Read(e));
                                return true;
                            }
                        }
                    }
                    match poll_read_buf(io, cx, rbuf) {
                        Poll::Pending => return false,
                        Poll::Ready(Ok(0)) => match self.decoder.eof() {
                            Ok(()) => Ok(Step::Done),
                            Err(e) => Err(BodyError::Codec(e)),
                        },
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(e)) => Err(BodyError::Read(e)),
                    }
                }
                Ok(step) => Ok(step),
                Err(e) => Err(BodyError::Codec(e)),
            };
            // Body bytes arrived (or the body ended): no `100 Continue` needed any more.
            self.continue_at = None;
            match step {
                Err(e) => self.fail(e),
                Ok(Step::Data(d)) => {
                    let done = self.decoder.is_done();
                    self.deliver(Some(Ok(Frame::data(d))), done);
                }
                Ok(Step::Trailers(t)) => self.deliver(Some(Ok(Frame::trailers(t))), true),
                Ok(Step::Done) => self.deliver(None, true),
                Ok(Step::NeedMore) => continue,
            }
            return true;
        }
    }

    fn deliver(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>, done: bool) {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        s.frame = frame;
        s.done = done;
        s.want = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        self.finished = done;
    }

    fn fail(&mut self, e: BodyError) {
        tracing::debug!(error = %e, "request body failed");
        self.broken = true;
        self.deliver(Some(Err(Box::new(e))), true);
    }
}

/// Reads more into `buf` (at least 1 KiB of room, [`READ_CHUNK`] when it grows); `Ok(0)` at EOF.
fn poll_read_buf<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

// ---------------------------------------------------------------------------------------------
// The connection.

/// Everything the codec needs from the listener for one connection.
pub struct Setup {
    pub live: Arc<Live>,
    pub info: Arc<ConnInfo>,
    pub limits: HeadLimits,
    pub header_timeout: Duration,
}

/// How a connection's head read ended without a request.
enum NoRequest {
    /// Closed, idle, timed out or draining: close quietly.
    Close,
    /// Not for this codec: hand the connection (and the buffer) to hyper.
    HandOff,
}

struct Conn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// How much of `wbuf` has been written.
    wpos: usize,
    scratch: Scratch,
}

/// Serves HTTP/1.1 on `io` until the client closes, an error, or drain. Returns the connection
/// and the bytes read so far when it is to be handed to hyper's server.
pub async fn serve<S>(setup: &Setup, io: S) -> Option<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Holding a drain receiver makes shutdown wait for this connection. The drain is read
    // from `is_shutting_down` (an atomic load, set before the signal is sent); the receiver's
    // future is polled once, to be woken when the signal comes while the connection is idle
    // (polling it on every idle wait cost ~1,000 instructions per request, callgrind).
    let mut drain = setup.live.drain_watcher()?;
    let mut drained = pin!(drain.wait_for(|d| *d));
    let mut armed = false;
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: Vec::with_capacity(1024),
        wpos: 0,
        scratch: Scratch::default(),
    };
    // The first head must be complete within the header read timeout of the connection's
    // start; later ones within it of their first byte. Armed only when a read waits.
    let mut deadline = Some(tokio::time::Instant::now() + setup.header_timeout);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut first = true;
    loop {
        let head = match read_head(
            &mut conn,
            setup,
            first,
            &mut deadline,
            &mut timer,
            (drained.as_mut(), &mut armed),
        )
        .await
        {
            Ok(h) => h,
            Err(NoRequest::Close) => return None,
            Err(NoRequest::HandOff) => {
                let pre = std::mem::take(&mut conn.rbuf).freeze();
                return Some(Rewind::new(pre, conn.io));
            }
        };
        first = false;
        match exchange(&mut conn, setup, head).await {
            Ok(true) if !setup.live.is_shutting_down() => {}
            Ok(_) => {
                let _ = conn.io.shutdown().await;
                return None;
            }
            Err(e) => {
                tracing::debug!(client = %setup.info.remote, error = %e, "connection ended with error");
                return None;
            }
        }
        if !conn.rbuf.is_empty() {
            // Pipelined: the next head is (partly) here; its timer starts now.
            deadline = Some(tokio::time::Instant::now() + setup.header_timeout);
        }
    }
}

async fn read_head<S>(
    conn: &mut Conn<S>,
    setup: &Setup,
    first: bool,
    deadline: &mut Option<tokio::time::Instant>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    (mut drained, armed): (Pin<&mut impl Future>, &mut bool),
) -> Result<ReqHead, NoRequest>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if !conn.rbuf.is_empty() {
            match parse_request(&mut conn.rbuf, &setup.limits, first, &mut conn.scratch) {
                Ok(Some(Parsed::Request(h))) => {
                    *deadline = None;
                    return Ok(h);
                }
                Ok(Some(Parsed::HandOff)) => return Err(NoRequest::HandOff),
                Ok(None) => {
                    if deadline.is_none() {
                        *deadline = Some(tokio::time::Instant::now() + setup.header_timeout);
                    }
                }
                Err(e) => {
                    tracing::debug!(client = %setup.info.remote, error = %e, "invalid request head");
                    refuse(conn, e.status()).await;
                    return Err(NoRequest::Close);
                }
            }
        }
        // Between requests (or before the first byte) a drain closes the connection at once.
        let idle = conn.rbuf.is_empty();
        let read = poll_fn(|cx| {
            if idle {
                if setup.live.is_shutting_down() {
                    return Poll::Ready(None);
                }
                if !*armed {
                    *armed = true;
                    if drained.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
            }
            if let Some(at) = *deadline {
                let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if t.deadline() != at {
                    t.as_mut().reset(at);
                }
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            poll_read_buf(&mut conn.io, cx, &mut conn.rbuf).map(Some)
        })
        .await;
        match read {
            None => {
                tracing::debug!(client = %setup.info.remote, "no complete request head within the header read timeout, or draining; closing");
                return Err(NoRequest::Close);
            }
            Some(Ok(0)) | Some(Err(_)) => return Err(NoRequest::Close),
            Some(Ok(_)) => {}
        }
    }
}

/// Answers a refused head (as hyper does: no body, then close).
async fn refuse<S: AsyncWrite + Unpin>(conn: &mut Conn<S>, status: StatusCode) {
    conn.wbuf.clear();
    conn.wbuf.extend_from_slice(b"HTTP/1.1 ");
    conn.wbuf.extend_from_slice(status.as_str().as_bytes());
    conn.wbuf.push(b' ');
    conn.wbuf
        .extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    conn.wbuf
        .extend_from_slice(b"\r\ncontent-length: 0\r\nconnection: close\r\ndate: ");
    with_date(|d| conn.wbuf.extend_from_slice(d.as_bytes()));
    conn.wbuf.extend_from_slice(b"\r\n\r\n");
    let _ = conn.io.write_all(&conn.wbuf).await;
    let _ = conn.io.shutdown().await;
}

/// Why an exchange ended the connection with an error.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("cannot write the response")]
    Write(#[source] std::io::Error),
    #[error("response body failed")]
    Body(#[source] BoxError),
    #[error("response body of {written} bytes against a Content-Length of {declared}")]
    Length { written: u64, declared: u64 },
    #[error("client closed the connection before its response")]
    ClientGone,
}

/// How the response body is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// Runs one request through the pipeline and writes its response. `Ok(true)`: the connection
/// may carry another request.
async fn exchange<S>(
    conn: &mut Conn<S>,
    setup: &Setup,
    head: ReqHead,
) -> Result<bool, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ReqHead {
        parts,
        framing,
        mut keep_alive,
        expect_continue,
        seen,
    } = head;
    let version = parts.version;
    let is_head = parts.method == Method::HEAD;
    let (body, mut pump) = match framing {
        Framing::Empty | Framing::Close => (RequestBody::empty(), None),
        Framing::Length(_) | Framing::Chunked => {
            let slot = Arc::new(Mutex::new(Slot::default()));
            let hint = match framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            };
            let pump = Pump {
                slot: slot.clone(),
                decoder: Decoder::new(framing),
                continue_at: expect_continue.then_some(0),
                finished: false,
                broken: false,
            };
            (
                RequestBody {
                    slot: Some(slot),
                    hint,
                },
                Some(pump),
            )
        }
    };
    let live = &setup.live;
    let mut fut = pin!(proxy::handle(
        live.runtime(),
        live.telemetry(),
        &setup.info,
        Request::from_parts(parts, body),
        Some(seen),
    ));
    // A client that closes while its response is being made: the pipeline's future is dropped
    // (so is the upstream request), as hyper's server does on a busy connection. Only looked
    // for with nothing buffered and no request body (the body's reads see the close).
    let watch_eof = pump.is_none();
    let resp = poll_fn(|cx| {
        drive(conn, &mut pump, cx, |c, cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if watch_eof && c.rbuf.is_empty() {
                if let Poll::Ready(Ok(0) | Err(_)) = poll_read_buf(&mut c.io, cx, &mut c.rbuf) {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
    })
    .await;
    let Some(resp) = resp else {
        return Err(ExchangeError::ClientGone);
    };
    let (mut rparts, mut rbody) = resp.into_parts();

    // The response's framing (RFC 9112 §6.1-6.3), as hyper's server encodes it.
    let status = rparts.status;
    let headers = &mut rparts.headers;
    let fields = ResponseFields::of(headers);
    if fields.close {
        keep_alive = false;
    }
    if fields.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let out = if bodiless {
        Out::None
    } else if let Some(n) = fields.content_length {
        Out::Length(n)
    } else if let Some(n) = rbody.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Out::Chunked
    } else {
        headers.remove(header::CONTENT_LENGTH);
        keep_alive = false;
        Out::Close
    };
    if setup.live.is_shutting_down() {
        keep_alive = false;
    }
    if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    encode_head(&rparts, version, fields.date, &mut conn.wbuf);
    let mut recycled = std::mem::take(&mut rparts.headers);
    recycled.clear();
    conn.scratch.headers = Some(recycled);

    let mut written: u64 = 0;
    if out != Out::None {
        loop {
            let frame = poll_fn(|cx| {
                drive(conn, &mut pump, cx, |c, cx| {
                    if let Poll::Ready(f) = Pin::new(&mut rbody).poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    // Send what is buffered while the body waits.
                    match c.poll_flush_buf(cx) {
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        _ => Poll::Pending,
                    }
                })
            })
            .await
            .map_err(ExchangeError::Write)?;
            match frame {
                None => break,
                Some(Err(e)) => return Err(ExchangeError::Body(e)),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => {
                        if d.is_empty() {
                            continue;
                        }
                        written += d.len() as u64;
                        if let Out::Length(n) = out {
                            if written > n {
                                return Err(ExchangeError::Length {
                                    written,
                                    declared: n,
                                });
                            }
                        }
                        if out == Out::Chunked {
                            put_chunk_size(&mut conn.wbuf, d.len());
                        }
                        if d.len() <= COPY_LIMIT {
                            conn.wbuf.extend_from_slice(&d);
                        } else {
                            let mut at = 0;
                            poll_fn(|cx| {
                                drive(conn, &mut pump, cx, |c, cx| {
                                    c.poll_write_big(cx, &d, &mut at)
                                })
                            })
                            .await
                            .map_err(ExchangeError::Write)?;
                        }
                        if out == Out::Chunked {
                            conn.wbuf.extend_from_slice(b"\r\n");
                        }
                        // A body whose frames keep coming (the upstream is faster than the
                        // client) is written as it goes, never gathered whole: without this
                        // bound a 256 MiB download grew the buffer past 100 MiB
                        // (tests/load.rs).
                        if conn.wbuf.len() >= FLUSH_AT {
                            poll_fn(|cx| drive(conn, &mut pump, cx, |c, cx| c.poll_flush_buf(cx)))
                                .await
                                .map_err(ExchangeError::Write)?;
                        }
                        // The body says it has ended (a Content-Length body whose last bytes
                        // came in this frame: nearly every proxied response): not polled again
                        // for its `None`, a walk down the whole body chain (~600 instructions
                        // per proxied request, callgrind). Its end is already reported.
                        if rbody.is_end_stream() {
                            break;
                        }
                    }
                    Err(f) => {
                        if let (Ok(trailers), Out::Chunked) = (f.into_trailers(), out) {
                            conn.wbuf.extend_from_slice(b"0\r\n");
                            encode_fields(&trailers, &mut conn.wbuf);
                            conn.wbuf.extend_from_slice(b"\r\n");
                            // The trailers end the body.
                            written = u64::MAX;
                            break;
                        }
                    }
                },
            }
        }
        match out {
            Out::Chunked if written != u64::MAX => conn.wbuf.extend_from_slice(b"0\r\n\r\n"),
            Out::Length(n) if written != n => {
                // Flush what there is, then close: the client sees a short body, never the
                // next response as part of this one.
                let _ = poll_fn(|cx| conn.poll_flush_buf(cx)).await;
                return Err(ExchangeError::Length {
                    written,
                    declared: n,
                });
            }
            _ => {}
        }
    }
    drop(rbody);
    poll_fn(|cx| drive(conn, &mut pump, cx, |c, cx| c.poll_flush_buf(cx)))
        .await
        .map_err(ExchangeError::Write)?;
    if out == Out::Close {
        return Ok(false);
    }
    // A request body the pipeline did not read to its end: finish it from what is buffered,
    // else close (reading an unbounded upload just to discard it is not worth the connection).
    if let Some(p) = pump.as_mut() {
        if p.broken || !(p.decoder.is_done() || drain_buffered(&mut p.decoder, &mut conn.rbuf)) {
            return Ok(false);
        }
    }
    Ok(keep_alive)
}

/// Decodes (and discards) the rest of a request body from the buffer; `true` if it ended.
fn drain_buffered(decoder: &mut Decoder, buf: &mut BytesMut) -> bool {
    loop {
        match decoder.decode(buf) {
            Ok(Step::Data(_)) => {}
            Ok(Step::Done) | Ok(Step::Trailers(_)) => return true,
            Ok(Step::NeedMore) | Err(_) => return false,
        }
    }
}

/// Polls `f` and, while it waits, keeps reading the request body for its reader.
fn drive<S, T>(
    conn: &mut Conn<S>,
    pump: &mut Option<Pump>,
    cx: &mut Context<'_>,
    mut f: impl FnMut(&mut Conn<S>, &mut Context<'_>) -> Poll<T>,
) -> Poll<T>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Poll::Ready(v) = f(conn, cx) {
            return Poll::Ready(v);
        }
        let Some(p) = pump.as_mut() else {
            return Poll::Pending;
        };
        if !p.progress(cx, &mut conn.io, &mut conn.rbuf) {
            return Poll::Pending;
        }
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    /// Writes the buffered bytes.
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Writes the buffered bytes, then `data` from its own buffer.
    fn poll_write_big(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        at: &mut usize,
    ) -> Poll<std::io::Result<()>> {
        ready!(self.poll_flush_buf(cx))?;
        while *at < data.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &data[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// What the response's own fields say about its framing, found in one pass over the map:
/// four hashed lookups (`Connection`, `Transfer-Encoding`, `Content-Length`, `Date`) cost
/// ~400 instructions per response, callgrind; comparing each field's name with standard
/// names costs a few.
struct ResponseFields {
    /// A `Connection` field has the `close` token.
    close: bool,
    transfer_encoding: bool,
    /// The first `Content-Length` value, when it is a number.
    content_length: Option<u64>,
    date: bool,
}

impl ResponseFields {
    fn of(headers: &HeaderMap) -> ResponseFields {
        let mut f = ResponseFields {
            close: false,
            transfer_encoding: false,
            content_length: None,
            date: false,
        };
        let mut length_seen = false;
        for (name, value) in headers {
            if *name == header::CONTENT_LENGTH {
                if !length_seen {
                    f.content_length = digits(value.as_bytes());
                    length_seen = true;
                }
            } else if *name == header::DATE {
                f.date = true;
            } else if *name == header::CONNECTION {
                f.close |= has_token(value.as_bytes(), b"close");
            } else if *name == header::TRANSFER_ENCODING {
                f.transfer_encoding = true;
            }
        }
        f
    }
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Status line (HTTP/1.0 to an HTTP/1.0 client, as hyper answers), fields (a `date` added when
/// the response has none, as hyper does), blank line.
/// `date`: the response has a `date` field.
fn encode_head(parts: &http::response::Parts, version: Version, date: bool, out: &mut Vec<u8>) {
    let status = parts.status;
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes())
        .or_else(|| status.canonical_reason().map(str::as_bytes))
        .unwrap_or(b"");
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(15 + reason.len() + fields + 37 + 2);
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    encode_fields(&parts.headers, out);
    if !date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn put_chunk_size(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` value, formatted once per second per thread (hyper caches it the same way).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn with_date(f: impl FnOnce(&str)) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(&d.1);
    });
}

// ---------------------------------------------------------------------------------------------
// Handing a connection to hyper.

/// A connection with bytes already read from it replayed in front (what hyper's server must
/// see again when the codec hands the connection over).
pub struct Rewind<S> {
    pre: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(pre: Bytes, inner: S) -> Rewind<S> {
        Rewind { pre, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let pre = self.pre.split_to(n);
            buf.put_slice(&pre);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Parsed>, RequestError> {
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_headers: 100,
        };
        parse_request(
            &mut BytesMut::from(raw),
            &limits,
            true,
            &mut Scratch::default(),
        )
    }

    fn status(raw: &[u8]) -> Option<StatusCode> {
        parse(raw).err().map(|e| e.status())
    }

    #[test]
    fn framing_defences() {
        let ok = |raw: &[u8]| match parse(raw) {
            Ok(Some(Parsed::Request(h))) => h.framing,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        };
        assert_eq!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Framing::Empty);
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Framing::Chunked
        );
        let bad = StatusCode::BAD_REQUEST;
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(status(raw), Some(bad), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(StatusCode::NOT_IMPLEMENTED)
        );
        assert_eq!(
            status(b"GET / HTTP/2.0\r\n\r\n"),
            Some(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        );
    }

    #[test]
    fn hand_offs_and_partial_heads() {
        assert!(matches!(parse(b"PRI * HTTP/2.0\r\n"), Ok(None)));
        assert!(matches!(parse(H2_PREFACE), Ok(Some(Parsed::HandOff))));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            Ok(Some(Parsed::HandOff))
        ));
        assert!(matches!(
            parse(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Ok(Some(Parsed::HandOff))
        ));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
    }

    #[test]
    fn replay_does_not_depend_on_pieces() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n";
        let whole = replay(raw, raw.len());
        assert_eq!(whole, replay(raw, 1));
        assert!(whole.contains("trailers=1 body=5"), "{whole}");
    }

    /// What the fuzz target `h1_request` checks, over seeded mutations of a few requests, so
    /// `cargo test` holds the parser to it too.
    #[test]
    fn mutated_requests_do_not_depend_on_pieces() {
        let seeds: [&[u8]; 5] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..3000 {
            let mut d = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(..3) {
                    0 if !d.is_empty() => {
                        let i = rng.usize(..d.len());
                        d[i] = rng.u8(..);
                    }
                    1 => d.insert(rng.usize(..=d.len()), rng.u8(..)),
                    _ if !d.is_empty() => {
                        d.remove(rng.usize(..d.len()));
                    }
                    _ => {}
                }
            }
            let whole = replay(&d, d.len());
            for step in [1, 2, 7] {
                assert_eq!(whole, replay(&d, step), "{:?}", String::from_utf8_lossy(&d));
            }
        }
    }

    /// The facts the parser notes during its walk are those a pass over the map it built
    /// finds, and each name the pipeline asks about is noted in any case and when repeated.
    #[test]
    fn fields_seen_while_parsing_are_those_of_the_map() {
        let seen = |raw: &[u8]| match parse(raw) {
            Ok(Some(Parsed::Request(h))) => {
                assert_eq!(h.seen, FieldsSeen::of(&h.parts.headers), "{raw:?}");
                h.seen
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        };
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            seen(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            FieldsSeen::default()
        );
        let cases: [(&str, FieldsSeen); 6] = [
            (&format!("traceparent: {tp}"), FieldsSeen::TRACEPARENT),
            (
                &format!("TraceParent: {tp}\r\ntraceparent: x"),
                FieldsSeen::TRACEPARENT,
            ),
            ("Content-Type: application/grpc", FieldsSeen::CONTENT_TYPE),
            ("GRPC-Timeout: 1S", FieldsSeen::GRPC_TIMEOUT),
            ("Connection: close", FieldsSeen::CONNECTION),
            // Same lengths, other names: nothing noted.
            (
                "traceparenx: 1\r\ncontent-typo: 1\r\nconnectiom: 1",
                FieldsSeen::default(),
            ),
        ];
        for (fields, want) in cases {
            let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n{fields}\r\n\r\n");
            assert_eq!(seen(raw.as_bytes()), want, "{fields}");
        }
        let all = "traceparent: 1\r\ncontent-type: a\r\ngrpc-timeout: 1S\r\nconnection: te";
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\n{all}\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            seen(raw.as_bytes()),
            FieldsSeen::TRACEPARENT
                | FieldsSeen::CONTENT_TYPE
                | FieldsSeen::GRPC_TIMEOUT
                | FieldsSeen::CONNECTION
        );
        // `Upgrade` is never noted here: such a request is handed to hyper's server, whose
        // requests get their facts from the map.
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Some(Parsed::HandOff))
        ));
    }

    #[test]
    fn response_fields_are_those_the_lookups_found() {
        let map = |fields: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (n, v) in fields {
                m.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let cases = [
            map(&[("content-type", "text/plain"), ("content-length", "5")]),
            map(&[
                ("connection", "keep-alive"),
                ("x", "close"),
                ("Connection", "upgrade, Close"),
                ("content-length", "5"),
                ("content-length", "7"),
                ("date", "now"),
                ("transfer-encoding", "chunked"),
            ]),
            map(&[("content-length", "x5"), ("content-length", "5")]),
            map(&[("connection", "closed"), ("dates", "now")]),
            map(&[]),
        ];
        for h in &cases {
            let f = ResponseFields::of(h);
            let looked_up = (
                h.get_all(header::CONNECTION)
                    .iter()
                    .any(|v| has_token(v.as_bytes(), b"close")),
                h.contains_key(header::TRANSFER_ENCODING),
                h.get(header::CONTENT_LENGTH)
                    .and_then(|v| digits(v.as_bytes())),
                h.contains_key(header::DATE),
            );
            let found = (f.close, f.transfer_encoding, f.content_length, f.date);
            assert_eq!(found, looked_up, "{h:?}");
        }
        let f = ResponseFields::of(&cases[1]);
        assert_eq!(
            (f.close, f.transfer_encoding, f.content_length, f.date),
            (true, true, Some(5), true)
        );
    }

    #[test]
    fn chunk_sizes_in_hex() {
        let mut v = Vec::new();
        put_chunk_size(&mut v, 0x1a2b);
        assert_eq!(v, b"1a2b\r\n");
    }
}
