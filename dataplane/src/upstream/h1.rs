//! Weir's own HTTP/1.1 client codec for the upstream leg, as Pingora has one: the exchange's
//! task writes the request head in one buffer and parses the response head with `httparse`
//! into `http::response::Parts`; the response body ([`CodecBody`]) reads from the connection
//! itself and hands it back to the pool when it ends cleanly. There is no connection task and
//! no dispatch channel (hyper's client spawns one task per connection and passes every request
//! and response through a channel to it). BENCHMARKS.md ("HTTP/1.1 upstream codec") has the
//! instructions per request of both.
//!
//! It carries the requests that are most of a proxy's traffic: no request body (GET, HEAD,
//! DELETE, … with no or a zero `Content-Length`), HTTP/1.1, no upgrade, not CONNECT. Everything
//! else (request bodies, which hyper streams while reading an early answer; WebSocket and other
//! upgrades; CONNECT; HTTP/1.0 requests) goes through hyper's client as before
//! ([`uses_codec`] decides per request; `pool.rs` keeps both kinds of connection).
//!
//! The parsing is split from the IO ([`parse_head`], [`Decoder`]) so the fuzz target
//! `fuzz/fuzz_targets/h1_response.rs` drives exactly what a backend's bytes meet. Framing and
//! smuggling defences (RFC 9112 §6.3), each tested against a hostile backend in
//! `dataplane/tests/h1_codec.rs`:
//!
//! - `Transfer-Encoding` and `Content-Length` together: `Transfer-Encoding` wins, the
//!   `Content-Length` is removed before forwarding, and the connection is not reused (§6.3 3);
//!   `Transfer-Encoding` on an HTTP/1.0 response is an error; one whose last coding is not
//!   `chunked` is read until close.
//! - `Content-Length`: digits only; several values (in one field or several) must agree, else
//!   the response is an error.
//! - Obsolete line folding, bare CR, NUL and other control bytes in names or values, invalid
//!   names: rejected by `httparse` (its defaults, as hyper's client uses them).
//! - Chunk sizes: 1–16 hex digits (more would overflow `u64`), optional whitespace, extensions
//!   of visible characters only (no bare CR or LF, no NUL: `httparse::parse_chunk_size` takes
//!   any byte in an extension and an empty size, so the size line is parsed here), CRLF after
//!   each chunk's data, trailers parsed like headers.
//! - Bytes after the end of a response (a body longer than its `Content-Length`, or a second
//!   response nobody asked for): the connection is not reused, so they are never read as the
//!   answer to the next request.
//! - 1xx: `100 Continue`, `102`, `103 Early Hints` and other interim answers are skipped (as
//!   hyper's client does); a `101` we did not ask for is an error.
//! - `HEAD`, `204` and `304` answers have no body whatever their headers say.
//! - A body that ends before its length (or its last chunk) is an error to the client, never a
//!   shorter complete body; the connection is not reused.
//! - Limits: at most [`MAX_HEADERS`] header fields and [`MAX_HEAD_BYTES`] of response head (or
//!   trailers), hyper's client defaults.

use crate::http::body::BoxError;
use crate::http::headers::Added;
use crate::upstream::endpoint::CountedIo;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;

/// Header fields a response head (or trailer section) may have: hyper's client default.
pub const MAX_HEADERS: usize = 100;

/// Bytes a response head may take: hyper's client default buffer limit (8 KiB + 4 KiB per
/// header field of [`MAX_HEADERS`]).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * MAX_HEADERS;

/// Longest chunk-size line (size and extensions), as hyper bounds chunk extensions.
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// What is wrong with a response, named for the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid status code {0}")]
    Status(u16),
    #[error("101 Switching Protocols without an upgrade request")]
    UnexpectedUpgrade,
    #[error("Transfer-Encoding on an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("invalid header field {0:?}")]
    Field(String),
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("invalid trailer section: {0}")]
    Trailers(httparse::Error),
    #[error("trailer section larger than {MAX_HEAD_BYTES} bytes")]
    TrailersTooLarge,
    #[error("connection closed before the response body ended")]
    Truncated,
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, `204`, `304`, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// The connection may carry another request once this response has ended.
    pub keep_alive: bool,
}

/// Whether the codec carries the request of head `req` and `body` (else hyper's client does;
/// see the module comment), and whether the head has a `Host` field.
pub fn uses_codec<B: http_body::Body>(req: &http::request::Parts, body: &B) -> (bool, bool) {
    // One pass over the names: three hashed lookups cost ~290 instructions per request
    // (callgrind), this ~60; the `Host` check rides along (a `contains_key` cost ~105).
    let mut codec =
        req.version != Version::HTTP_10 && req.method != Method::CONNECT && body.is_end_stream();
    let mut host = false;
    for (n, v) in &req.headers {
        host |= *n == header::HOST;
        codec &= *n != header::TRANSFER_ENCODING
            && *n != header::UPGRADE
            && (*n != header::CONTENT_LENGTH || v == "0");
    }
    (codec, host)
}

/// Appends the request head to `out`: request line (origin form, HTTP/1.1), `host` when given
/// (the request has none), the header fields as they are (the request carries no body, so none
/// is added for framing) except the ones `added` replaces, then the fields the proxy adds
/// (`added`, [`Added::write_h1`]), blank line.
pub fn encode_head(
    req: &http::request::Parts,
    added: &Added,
    host: Option<&HeaderValue>,
    out: &mut Vec<u8>,
) {
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = req.method.as_str();
    let headers = &req.headers;
    // One reservation for the whole head: name, ": ", value and CRLF per field.
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let host_len = host.map_or(0, |h| h.len() + 8);
    out.reserve(method.len() + pq.len() + 13 + host_len + fields + added.h1_len() + 2);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The client's fields that an added one replaces (or joins into its list) are left out
    // here; which ones were there is noted for the list's join.
    let mut seen = 0u32;
    for (name, value) in headers {
        if !added.is_empty() {
            if let Some(i) = added.position(name) {
                seen |= 1 << i;
                continue;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    added.write_h1(headers, seen, out);
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head from the front of `buf` for a request of `method`, skipping (and
/// consuming) interim 1xx answers. `Ok(None)`: more bytes are needed. On success the head's
/// bytes are split off `buf` (header values share them, no copy); what remains is body.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, CodecError> {
    parse_head_with(buf, method, &mut Vec::new())
}

/// Where a header field's name and value lie in the head: `(name start, end, value start,
/// end)`.
pub(crate) type Span = (usize, usize, usize, usize);

/// Room for the fields the proxy adds to a response on its way (`date`, `server`, `via`, …):
/// a map sized to the upstream's fields alone grew (rehash and realloc) on every request,
/// ~750 instructions (callgrind).
const ADDED_FIELDS: usize = 8;

/// Largest map kept for reuse by [`recycle_map`]: a head with many more fields is rare, and
/// its map is not worth holding on to.
const RECYCLED_MAP_CAPACITY: usize = 128;

thread_local! {
    /// One cleared header map, from the last request that went upstream, for the next
    /// response head ([`recycle_map`]).
    static SPARE_MAP: std::cell::Cell<Option<HeaderMap>> = const { std::cell::Cell::new(None) };
}

/// Keeps `map` (a request's header map, done with once its exchange is over) for the next
/// response head this thread parses. A proxied request drops one map (the request's) and
/// builds one (the response's); reusing the first as the second saves two `malloc` and two
/// `free` per request (~300 instructions, callgrind). A cache only: a map used on another
/// thread, or none kept, changes nothing but the cost.
pub fn recycle_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > RECYCLED_MAP_CAPACITY {
        return;
    }
    map.clear();
    SPARE_MAP.set(Some(map));
}

/// An empty header map with room for `n` fields: the spare one when there is one.
fn map_with_capacity(n: usize) -> HeaderMap {
    if let Some(mut map) = SPARE_MAP.take() {
        if map.try_reserve(n).is_ok() {
            return map;
        }
    }
    HeaderMap::with_capacity(n)
}

/// [`parse_head`] with the connection's scratch list of field positions (a 100-entry array on
/// the stack was zeroed on every response: ~3,200 instructions, as `rep stosb`).
fn parse_head_with(
    buf: &mut BytesMut,
    method: &Method,
    spans: &mut Vec<Span>,
) -> Result<Option<Head>, CodecError> {
    loop {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut fields)
            .map_err(CodecError::Head)?;
        let len = match parsed {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
                return Err(CodecError::HeadTooLarge)
            }
            httparse::Status::Partial => return Ok(None),
        };
        if len > MAX_HEAD_BYTES {
            return Err(CodecError::HeadTooLarge);
        }
        let code = res.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| CodecError::Status(code))?;
        match code {
            101 => return Err(CodecError::UnexpectedUpgrade),
            100..=199 => {
                buf.advance(len);
                continue;
            }
            _ => {}
        }
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .map(|r| Bytes::copy_from_slice(r.as_bytes()));
        // Offsets into the head, so the values can share its bytes once it is split off.
        let base = buf.as_ptr() as usize;
        field_spans(base, res.headers, spans);
        let head = buf.split_to(len).freeze();
        let mut headers = map_with_capacity(spans.len() + ADDED_FIELDS);
        let mut seen = Seen::default();
        for &(ns, ne, vs, ve) in spans.iter() {
            let name = match common_name(&head[ns..ne]) {
                Some(name) => name,
                None => HeaderName::from_bytes(&head[ns..ne]).map_err(|_| {
                    CodecError::Field(String::from_utf8_lossy(&head[ns..ne]).into())
                })?,
            };
            seen.note(&name, (vs, ve));
            let value = crate::http::headers::parsed_value(head.slice(vs..ve));
            headers.append(name, value);
        }
        let (framing, framing_keeps) =
            framing(status, version, method, &mut headers, &seen, &head)?;
        // Without a `Connection` field the version alone decides (as `keeps_alive` would).
        let keep_alive = framing_keeps
            && if seen.connection {
                crate::upstream::pool::keeps_alive(version, &headers)
            } else {
                version != Version::HTTP_10
            };
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some(r) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
            parts.extensions.insert(r);
        }
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// The standard field names most responses carry, in the two spellings servers send (hyper's
/// lowercase; nginx's, Apache's and most others' Title-Case), matched by length and a compare
/// of the bytes: `HeaderName::from_bytes` lower-cases each name through its table first (~110
/// instructions a field, callgrind). Any other spelling or name takes the general way, which
/// gives these the same names.
#[inline]
fn common_name(n: &[u8]) -> Option<HeaderName> {
    let is = |lower: &[u8], title: &[u8]| n == lower || n == title;
    Some(match n.len() {
        4 if is(b"date", b"Date") => header::DATE,
        4 if is(b"etag", b"ETag") => header::ETAG,
        6 if is(b"server", b"Server") => header::SERVER,
        10 if is(b"connection", b"Connection") => header::CONNECTION,
        12 if is(b"content-type", b"Content-Type") => header::CONTENT_TYPE,
        13 if is(b"last-modified", b"Last-Modified") => header::LAST_MODIFIED,
        13 if is(b"cache-control", b"Cache-Control") => header::CACHE_CONTROL,
        13 if is(b"accept-ranges", b"Accept-Ranges") => header::ACCEPT_RANGES,
        14 if is(b"content-length", b"Content-Length") => header::CONTENT_LENGTH,
        17 if is(b"transfer-encoding", b"Transfer-Encoding") => header::TRANSFER_ENCODING,
        _ => return None,
    })
}

/// The framing fields a response head has, noted while its fields go into the map: the
/// framing and keep-alive decisions then look up only what is there. Three hashed lookups
/// (`Transfer-Encoding`, `Content-Length`, `Connection`) cost ~350 instructions per response
/// (callgrind); comparing each parsed name with three standard names costs a few.
#[derive(Default)]
struct Seen {
    transfer_encoding: bool,
    connection: bool,
    /// `Content-Length` fields, and where the first one's value lies in the head.
    content_lengths: usize,
    content_length: (usize, usize),
}

impl Seen {
    #[inline(always)]
    fn note(&mut self, name: &HeaderName, value: (usize, usize)) {
        if *name == header::CONTENT_LENGTH {
            if self.content_lengths == 0 {
                self.content_length = value;
            }
            self.content_lengths += 1;
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// The body's framing, and whether it lets the connection be reused (RFC 9112 §6.3).
/// `seen`: the framing fields of `headers`, with value positions in `head`.
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &mut HeaderMap,
    seen: &Seen,
    head: &[u8],
) -> Result<(Framing, bool), CodecError> {
    if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok((Framing::Empty, true));
    }
    if seen.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(CodecError::TransferEncodingOnHttp10);
        }
        // With both, Transfer-Encoding wins; the Content-Length goes before forwarding and the
        // connection is closed after (§6.3 3): a hint of smuggling.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked, !both)
        } else {
            (Framing::Close, false)
        });
    }
    let (len, many) = match seen.content_lengths {
        0 => return Ok((Framing::Close, false)),
        // The one field's value, from the head: no lookup.
        1 => {
            let (vs, ve) = seen.content_length;
            content_length(std::iter::once(&head[vs..ve]))?
        }
        _ => content_length(
            headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(HeaderValue::as_bytes),
        )?,
    };
    if many {
        // Agreeing duplicates: forwarded as the one value they mean.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok((
        if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        },
        true,
    ))
}

/// The length the `Content-Length` values mean, and whether there was more than one (fields,
/// or comma-separated values in one): they must all agree, each a plain decimal number.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<(u64, bool), CodecError> {
    let mut len = None;
    let mut many = false;
    for v in values {
        for part in v.split(|b| *b == b',') {
            let n = digits(trim(part)).ok_or(CodecError::ContentLength)?;
            many |= len.is_some();
            if len.is_some_and(|l| l != n) {
                return Err(CodecError::ContentLength);
            }
            len = Some(n);
        }
    }
    Ok((len.ok_or(CodecError::ContentLength)?, many))
}

/// Offsets of each parsed field's name and value from `base` (the start of the head buffer),
/// so the values can share the head's bytes once it is split off and frozen (also used by the
/// server codec).
pub(crate) fn field_spans(base: usize, fields: &[httparse::Header<'_>], spans: &mut Vec<Span>) {
    spans.clear();
    spans.extend(fields.iter().map(|f| {
        let name = f.name.as_ptr() as usize - base;
        let value = f.value.as_ptr() as usize - base;
        (name, name + f.name.len(), value, value + f.value.len())
    }));
}

/// `b` without leading and trailing spaces and tabs (also used by the server codec).
pub(crate) fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ' && *c != b'\t');
    let end = b.iter().rposition(|c| *c != b' ' && *c != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

/// A decimal `Content-Length`: 1–19 digits (always fits `u64`), nothing else (no sign, no
/// list; also used by the server codec).
pub(crate) fn digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The trailer section (the body has ended with it).
    Trailers(HeaderMap),
    /// More bytes are needed.
    NeedMore,
    /// The body has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// The response body's framing, decoded from a buffer (no IO, so the fuzz target can drive it).
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of body still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body (or the trailers, or the end) from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, CodecError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::Done),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                State::ChunkSize => match chunk_size(buf)? {
                    None => return Ok(Step::NeedMore),
                    Some((len, 0)) => {
                        buf.advance(len);
                        self.state = State::Trailers;
                    }
                    Some((len, size)) => {
                        buf.advance(len);
                        self.state = State::ChunkData(size);
                    }
                },
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::ChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Step::Done);
                    }
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    self.state = State::Done;
                    return Ok(Step::Trailers(trailers));
                }
            }
        }
    }

    /// The connection reached its end: fine for a body read until close, an error otherwise.
    pub fn eof(&mut self) -> Result<(), CodecError> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(CodecError::Truncated),
        }
    }
}

/// A chunk-size line at the front of `buf`: `(its length, the size)`, `None` when incomplete.
/// `chunk-size [ BWS ; ext ] CRLF` with 1–16 hex digits; extension bytes are visible ASCII,
/// SP, HTAB or obs-text (RFC 9112 §7.1.1); bare CR, LF, NUL and other controls are errors.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, CodecError> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err(CodecError::ChunkSize);
        }
        size = size << 4 | u64::from(d);
        i += 1;
    }
    if digits == 0 && i < buf.len() {
        return Err(CodecError::ChunkSize);
    }
    let mut in_ext = false;
    while let Some(&b) = buf.get(i) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') if digits > 0 => Ok(Some((i + 2, size))),
                    Some(_) => Err(CodecError::ChunkSize),
                }
            }
            b';' => in_ext = true,
            b' ' | b'\t' => {}
            0x21..=0x7e | 0x80..=0xff if in_ext => {}
            _ => return Err(CodecError::ChunkSize),
        }
        i += 1;
        if i > MAX_CHUNK_LINE {
            return Err(CodecError::ChunkSize);
        }
    }
    Ok(None)
}

/// The trailer section at the front of `buf` (fields and the blank line), `None` when
/// incomplete.
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, CodecError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, map) = match httparse::parse_headers(buf, &mut fields) {
        Err(e) => return Err(CodecError::Trailers(e)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(CodecError::TrailersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete((len, _))) if len > MAX_HEAD_BYTES => {
            return Err(CodecError::TrailersTooLarge)
        }
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| CodecError::Field(f.name.to_string()))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| CodecError::Field(name.to_string()))?;
                map.append(name, value);
            }
            (len, map)
        }
    };
    buf.advance(len);
    Ok(Some(map))
}

/// Read size: what a read asks the kernel for at most. A small response arrives whole in one
/// read; bulk bodies go in 16 KiB frames.
const READ_CHUNK: usize = 16 * 1024;

/// A codec connection: the socket and its read and write buffers, kept across exchanges.
///
/// Boxed once per connection: a response carries its connection in its body, and the
/// response is moved several times on its way out of a try (the try's result, the kept last
/// result, the reply); with the connection's ~130 bytes inline each move was a bigger
/// `memcpy` (~600 instructions of `memcpy` per request in `dispatch`, callgrind), and so were
/// the pool's pushes and pops of idle connections.
pub struct Conn(Box<ConnState>);

impl std::ops::Deref for Conn {
    type Target = ConnState;
    #[inline(always)]
    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

/// What a [`Conn`] holds.
pub struct ConnState {
    io: CountedIo,
    /// Bytes read but not yet consumed; empty between exchanges (else not reusable).
    rbuf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// Scratch for [`parse_head_with`].
    spans: Vec<Span>,
    /// The exchange's time limit, kept across exchanges and moved to each one's deadline: a
    /// later deadline only moves an atomic (tokio re-files the timer when the old one fires),
    /// where a new `Sleep` per exchange was registered in and removed from the timer wheel
    /// under its lock (~600 instructions per request, callgrind). Made at the first exchange
    /// with a deadline.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why an exchange on a codec connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("cannot write the request")]
    Write(#[source] std::io::Error),
    #[error("cannot read the response")]
    Read(#[source] std::io::Error),
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("connection closed in the middle of the response head")]
    ClosedInHead,
    #[error("no response head before the deadline")]
    TimedOut,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl ExchangeError {
    /// Nothing of a response came, and the request may not have been seen: on a reused
    /// connection (the keep-alive race) it is sent once more on a new one.
    pub fn nothing_received(&self) -> bool {
        matches!(
            self,
            ExchangeError::Write(_) | ExchangeError::ClosedBeforeResponse
        ) || matches!(self, ExchangeError::Read(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

impl Conn {
    pub fn new(io: CountedIo) -> Conn {
        Conn(Box::new(ConnState {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            spans: Vec::new(),
            timer: None,
        }))
    }
}

impl ConnState {
    /// Whether an idle connection can carry a request: not closed by the peer, and nothing
    /// unsolicited arrived on it. Costs no syscall when the socket has not turned readable
    /// since its last read found nothing (tokio keeps that readiness).
    pub fn is_usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        self.rbuf.reserve(64);
        match self.io.stream_mut().try_read_buf(&mut self.rbuf) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            // Closed (0), or bytes nobody asked for: a response to no request.
            Ok(_) => false,
        }
    }

    /// Reads more into the buffer; `Ok(0)` at EOF.
    ///
    /// Through `AsyncRead::poll_read`, not `try_read_buf`: tokio's `poll_read` clears the
    /// socket's read readiness after a short read (the kernel buffer is drained), so
    /// [`Conn::is_usable`] at the next checkout finds no readiness and makes no syscall.
    /// With `try_read_buf` the readiness stayed set and every checkout paid one `recvfrom`
    /// that failed with `EAGAIN`: a third of the dataplane's syscalls per request on every
    /// protocol (BENCHMARKS.md "HTTP/2 over TLS: where the time goes").
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(self.io.stream_mut()), cx, &mut self.rbuf)
    }

    /// Writes the head of `req` (with `host` when given) and reads the response head
    /// (interim answers skipped), by `deadline` when there is one
    /// ([`ExchangeError::TimedOut`]). The rest of the buffer is the start of the body.
    pub async fn exchange(
        &mut self,
        req: &http::request::Parts,
        added: &Added,
        host: Option<&HeaderValue>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Head, ExchangeError> {
        let Some(deadline) = deadline else {
            return self.exchange_head(req, added, host).await;
        };
        // A timer armed no later than this deadline (the last exchange's, with the same time
        // limit) is kept as it is and moved on only if it fires first: resetting it for every
        // exchange cost ~145 instructions per request (callgrind). An earlier deadline than
        // the armed one resets it at once.
        let mut timer = match self.timer.take() {
            Some(t) if t.deadline() <= deadline => t,
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let result = {
            let exchange = self.exchange_head(req, added, host);
            tokio::pin!(exchange);
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                loop {
                    ready!(timer.as_mut().poll(cx));
                    if timer.deadline() >= deadline {
                        return Poll::Ready(Err(ExchangeError::TimedOut));
                    }
                    // An earlier exchange's deadline: this one's is still to come.
                    timer.as_mut().reset(deadline);
                }
            })
            .await
        };
        self.timer = Some(timer);
        result
    }

    async fn exchange_head(
        &mut self,
        req: &http::request::Parts,
        added: &Added,
        host: Option<&HeaderValue>,
    ) -> Result<Head, ExchangeError> {
        self.wbuf.clear();
        encode_head(req, added, host, &mut self.wbuf);
        self.io
            .stream_mut()
            .write_all(&self.wbuf)
            .await
            .map_err(ExchangeError::Write)?;
        let method = &req.method;
        let mut received = false;
        loop {
            if !self.rbuf.is_empty() {
                received = true;
                if let Some(head) = parse_head_with(&mut self.rbuf, method, &mut self.spans)? {
                    return Ok(head);
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(ExchangeError::Read)?;
            if n == 0 {
                return Err(if received {
                    ExchangeError::ClosedInHead
                } else {
                    ExchangeError::ClosedBeforeResponse
                });
            }
        }
    }
}

/// Where a codec response body gives its connection back: the pool it came from.
pub trait Release: Send + Sync {
    fn release(self: std::sync::Arc<Self>, conn: Conn);
}

/// A response body read straight from its connection. The connection goes back (through
/// [`Release`]) when the body has ended cleanly, the response allowed keep-alive and no byte
/// beyond the body came; otherwise it is closed. Dropped before the end: closed.
pub struct CodecBody {
    conn: Option<Conn>,
    to: Option<std::sync::Arc<dyn Release>>,
    decoder: Decoder,
    keep_alive: bool,
}

impl CodecBody {
    /// The body of `head`, read from `conn`. Without a body the connection goes back at once.
    pub fn new(conn: Conn, head: &Head, to: std::sync::Arc<dyn Release>) -> CodecBody {
        let mut body = CodecBody {
            conn: Some(conn),
            to: Some(to),
            decoder: Decoder::new(head.framing),
            keep_alive: head.keep_alive,
        };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        let (Some(conn), Some(to)) = (self.conn.take(), self.to.take()) else {
            return;
        };
        // Bytes beyond the end of the body (a longer body than announced, a response nobody
        // asked for) must never be read as the next request's answer.
        if self.keep_alive && conn.rbuf.is_empty() {
            to.release(conn);
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Drop for CodecBody {
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.release();
        }
    }
}

impl http_body::Body for CodecBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.decoder.decode(&mut conn.rbuf) {
                Ok(step) => step,
                Err(e) => return this.fail(e.into()),
            };
            match step {
                Step::Data(b) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Step::Trailers(t) => {
                    this.release();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Step::Done => {
                    this.release();
                    return Poll::Ready(None);
                }
                Step::NeedMore => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        if let Err(e) = this.decoder.eof() {
                            return this.fail(e.into());
                        }
                        // Read until close: the connection is spent.
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Ok(_) => {}
                    Err(e) => return this.fail(e.into()),
                },
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// An upstream response body: from the codec, or from hyper's client.
pub enum UpstreamBody {
    Codec(CodecBody),
    Hyper(hyper::body::Incoming),
}

// `#[inline]`: the guarded body ([`crate::upstream::backend`]) polls through this in another
// codegen unit; out of line each layer was a call of its own per frame.
impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Codec(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Codec(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Codec(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// Header fields as [`replay`] reports them.
#[doc(hidden)]
pub type Fields = Vec<(String, Vec<u8>)>;

/// What [`replay`] saw.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub struct Replayed {
    head: Option<(u16, Fields, Framing, bool)>,
    body: Vec<u8>,
    trailers: Fields,
    done: bool,
    left: usize,
    error: Option<String>,
}

/// Feeds `data` (a backend's bytes for a request of `method`) through [`parse_head`] and the
/// [`Decoder`] `step` bytes at a time, as reads would deliver them, then the end of the
/// connection. For the fuzz target `h1_response` and the tests: the outcome must not depend on
/// `step`. Which error it is, and what is left unread after it, may (a head over the size limit
/// is refused before its bad byte arrives), so they are left out once there is one.
#[doc(hidden)]
pub fn replay(data: &[u8], method: &Method, step: usize) -> Replayed {
    let mut out = Replayed {
        head: None,
        body: Vec::new(),
        trailers: Vec::new(),
        done: false,
        left: 0,
        error: None,
    };
    let mut pieces = data.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut decoder: Option<Decoder> = None;
    loop {
        let need_more = match decoder.as_mut() {
            None => match parse_head(&mut buf, method) {
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
                Ok(None) => true,
                Ok(Some(h)) => {
                    let fields = h
                        .parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    out.head = Some((h.parts.status.as_u16(), fields, h.framing, h.keep_alive));
                    decoder = Some(Decoder::new(h.framing));
                    false
                }
            },
            Some(d) => match d.decode(&mut buf) {
                Err(e) => {
                    out.error = Some(e.to_string());
                    break;
                }
                Ok(Step::Data(b)) => {
                    assert!(!b.is_empty(), "an empty data frame");
                    out.body.extend_from_slice(&b);
                    false
                }
                Ok(Step::Trailers(t)) => {
                    out.trailers = t
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect();
                    out.done = true;
                    break;
                }
                Ok(Step::Done) => {
                    out.done = true;
                    break;
                }
                Ok(Step::NeedMore) => true,
            },
        };
        if !need_more {
            continue;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => {
                if let Some(d) = decoder.as_mut() {
                    match d.eof() {
                        Ok(()) => out.done = true,
                        Err(e) => out.error = Some(e.to_string()),
                    }
                }
                break;
            }
        }
    }
    out.left = buf.len() + pieces.map(<[u8]>::len).sum::<usize>();
    if out.error.is_some() {
        out.error = Some(String::new());
        out.left = 0;
    }
    if let Some((_, _, Framing::Length(n), _)) = &out.head {
        assert!(
            out.body.len() as u64 <= *n,
            "more body than its Content-Length"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn head(bytes: &[u8], method: &Method) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(bytes), method)
    }

    fn body(framing: Framing, bytes: &[u8]) -> Result<(Vec<u8>, bool), CodecError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Step::Data(b) => out.extend_from_slice(&b),
                Step::Trailers(_) | Step::Done => return Ok((out, true)),
                Step::NeedMore => return Ok((out, false)),
            }
        }
    }

    #[test]
    fn framing_of_responses() {
        let get = Method::GET;
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", &get)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(2), true));
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        assert!(!h.parts.headers.contains_key(header::CONTENT_LENGTH));
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3, 3\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(
            h.parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            1
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        ] {
            assert_eq!(
                head(bad, &get).unwrap_err(),
                CodecError::ContentLength,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            head(
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &get
            )
            .unwrap_err(),
            CodecError::TransferEncodingOnHttp10
        );
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", &get).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        for (status, method) in [(204, &get), (304, &get), (200, &Method::HEAD)] {
            let raw = format!("HTTP/1.1 {status} X\r\ncontent-length: 9\r\n\r\n");
            let h = head(raw.as_bytes(), method).unwrap().unwrap();
            assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        }
    }

    #[test]
    fn keep_alive_and_one_length_field_are_read_from_the_head() {
        // The framing fields are noted while parsing (no lookups): the decisions they drive
        // are those of the looked-up map, whatever the case or place of the fields.
        let get = Method::GET;
        for (raw, keep) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"[..], true),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x, close\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nCONNECTION: upgrade\r\nconnection: close\r\ncontent-length: 2\r\n\r\n", false),
            (b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nCONTENT-LENGTH: 2\r\n\r\n", true),
        ] {
            let h = head(raw, &get).unwrap().unwrap();
            let case = String::from_utf8_lossy(raw);
            assert_eq!((h.framing, h.keep_alive), (Framing::Length(2), keep), "{case}");
        }
        // One field with agreeing values: forwarded as the one value.
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(4));
        assert_eq!(h.parts.headers[header::CONTENT_LENGTH], "4");
        // One field with disagreeing values, or a bad one after a field of another name.
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx: 1\r\nContent-Length: 0x4\r\n\r\n",
        ] {
            assert_eq!(head(bad, &get).unwrap_err(), CodecError::ContentLength);
        }
    }

    #[test]
    fn common_names_are_the_names_from_bytes_gives() {
        let names = [
            "date",
            "etag",
            "server",
            "connection",
            "content-type",
            "last-modified",
            "cache-control",
            "accept-ranges",
            "content-length",
            "transfer-encoding",
        ];
        for name in names {
            let title: String = name
                .split('-')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect::<Vec<_>>()
                .join("-");
            let title = if name == "etag" {
                "ETag".to_string()
            } else {
                title
            };
            for spelling in [name.to_string(), title, name.to_ascii_uppercase()] {
                let general = HeaderName::from_bytes(spelling.as_bytes()).unwrap();
                assert_eq!(general.as_str(), name);
                match common_name(spelling.as_bytes()) {
                    Some(n) => assert_eq!(n, general, "{spelling}"),
                    // Only the two usual spellings take the short way.
                    None => assert_eq!(spelling, name.to_ascii_uppercase()),
                }
            }
            // ... and both of them do.
            assert!(common_name(name.as_bytes()).is_some(), "{name}");
        }
        for other in [
            &b"x-date"[..],
            b"dat",
            b"Date ",
            b"content-lengths",
            b"Content_Length",
        ] {
            assert!(common_name(other).is_none());
        }
        // Through the parser: the names and framing of a head in Title-Case.
        let h = head(
            b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(2), false));
        let names: Vec<&str> = h.parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "date", "content-length", "connection"]);
    }

    #[test]
    fn interim_answers_are_skipped_and_101_refused() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let h = head(raw, &Method::GET).unwrap().unwrap();
        assert_eq!(h.parts.status, 200);
        assert!(!h.parts.headers.contains_key("link"));
        assert_eq!(
            head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET).unwrap_err(),
            CodecError::UnexpectedUpgrade
        );
        // An interim answer alone is not yet a response.
        assert!(head(b"HTTP/1.1 100 Continue\r\n\r\n", &Method::GET)
            .unwrap()
            .is_none());
    }

    #[test]
    fn hostile_heads_are_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\0b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx\0y: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx y: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx : a\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, &Method::GET), Err(CodecError::Head(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(head(&many, &Method::GET).is_err());
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 2, b'a');
        assert_eq!(
            head(&big, &Method::GET).unwrap_err(),
            CodecError::HeadTooLarge
        );
    }

    #[test]
    fn chunked_bodies() {
        let (b, done) = body(
            Framing::Chunked,
            b"2\r\nok\r\n3;name=\"v\"\r\n!!!\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((&b[..], done), (&b"ok!!!"[..], true));
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"0\r\nx-t: 1\r\n\r\nrest"[..]);
        let Step::Trailers(t) = d.decode(&mut buf).unwrap() else {
            panic!("trailers")
        };
        assert_eq!(t["x-t"], "1");
        assert_eq!(
            &buf[..],
            b"rest",
            "bytes after the body stay for the caller"
        );
        for bad in [
            &b"10000000000000000\r\n"[..],
            b"\r\n",
            b"2 x\r\nok\r\n",
            b"2;a\nb\r\nok\r\n0\r\n\r\n",
            b"2;a\rb\r\nok\r\n0\r\n\r\n",
            b"2;a\0\r\nok\r\n0\r\n\r\n",
            b"2\nok\r\n",
            b"-2\r\nok\r\n",
            b"2\r\nokXX0\r\n\r\n",
        ] {
            assert!(
                body(Framing::Chunked, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Sixteen hex digits are the most a u64 holds.
        assert_eq!(
            chunk_size(b"ffffffffffffffff\r\n").unwrap(),
            Some((18, u64::MAX))
        );
        assert_eq!(chunk_size(b"ff").unwrap(), None);
    }

    #[test]
    fn length_and_close_bodies() {
        let mut d = Decoder::new(Framing::Length(2));
        let mut buf = BytesMut::from(&b"okHTTP/1.1 200 OK\r\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Step::Data(Bytes::from("ok")));
        assert!(d.is_done());
        assert!(!buf.is_empty(), "the extra bytes are left: not reusable");
        let mut d = Decoder::new(Framing::Length(10));
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Step::Data(Bytes::from("abcde"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Step::NeedMore);
        assert_eq!(d.eof(), Err(CodecError::Truncated));
        let mut d = Decoder::new(Framing::Close);
        assert_eq!(d.decode(&mut buf).unwrap(), Step::NeedMore);
        assert_eq!(d.eof(), Ok(()));
        assert!(d.is_done());
    }

    /// The fuzz target's property over hostile inputs: read sizes do not change the outcome.
    #[test]
    fn outcome_does_not_depend_on_read_sizes() {
        let inputs: [&[u8]; 6] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;e=\"v\"\r\nok\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\n\r\nextra",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        ];
        for data in inputs {
            for method in [Method::GET, Method::HEAD] {
                let whole = replay(data, &method, data.len());
                for step in 1..=17 {
                    assert_eq!(
                        replay(data, &method, step),
                        whole,
                        "{method} step {step}: {:?}",
                        String::from_utf8_lossy(data)
                    );
                }
            }
        }
        let first = replay(inputs[0], &Method::GET, 3);
        assert_eq!(
            (&first.body[..], first.done, first.left),
            (&b"ok0123456789abcdef"[..], true, 5)
        );
        assert!(replay(inputs[2], &Method::GET, 4).error.is_some());
    }

    /// The fields the proxy adds, written by the encoder, are what merging them into the map
    /// (as the proxy did before, and as hyper's client and h2c still get them) and encoding
    /// that gives: the same fields and values, none duplicated. Without client fields of
    /// those names, the same bytes.
    #[test]
    fn added_fields_match_the_merged_map() {
        use crate::http::headers::AddedName;
        static XFF: AddedName = crate::added_name!("x-forwarded-for", AppendToList);
        static XFP: AddedName = crate::added_name!("x-forwarded-proto", Replace);
        static TS: AddedName = crate::added_name!("tracestate", Remove);
        let mut added = Added::new();
        added.push(&XFF, HeaderValue::from_static("10.0.0.1"));
        added.push(&XFP, HeaderValue::from_static("http"));
        added.push(&TS, HeaderValue::from_static(""));
        static FWD: AddedName = crate::added_name!("forwarded", AppendToList);
        let proxy_fwd = HeaderValue::from_static("for=10.0.0.1;proto=http");
        added.push(&FWD, proxy_fwd);
        added.quote_host_after_last(HeaderValue::from_static("h:1"));
        let lines = |b: &[u8]| {
            let mut v: Vec<String> = String::from_utf8_lossy(b)
                .split("\r\n")
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let clients: [&[(&str, &str)]; 4] = [
            &[("host", "h"), ("accept", "*/*")],
            &[
                ("host", "h"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-proto", "https"),
            ],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
                ("tracestate", "a=b"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-proto", "ws"),
                ("host", "h"),
            ],
            &[
                ("x-forwarded-for", "caf\u{e9}"),
                ("host", "h"),
                ("forwarded", "for=x"),
            ],
        ];
        for fields in clients {
            let mut b = Request::get("/p");
            for (n, v) in fields {
                b = b.header(*n, HeaderValue::from_bytes(v.as_bytes()).unwrap());
            }
            let head = b.body(()).unwrap().into_parts().0;
            let mut direct = Vec::new();
            encode_head(&head, &added, None, &mut direct);
            let mut merged_head = head.clone();
            added.merge_into(&mut merged_head.headers);
            let mut merged = Vec::new();
            encode_head(&merged_head, &Added::new(), None, &mut merged);
            assert_eq!(lines(&direct), lines(&merged), "{fields:?}");
            let text = String::from_utf8_lossy(&direct).into_owned();
            assert_eq!(text.matches("x-forwarded-for:").count(), 1, "{text}");
            assert_eq!(
                text.matches("x-forwarded-proto: http\r\n").count(),
                1,
                "{text}"
            );
            assert!(!text.contains("tracestate"), "{text}");
            if fields.len() == 2 && fields[1].0 == "accept" {
                assert_eq!(direct, merged, "no client field replaced: the same bytes");
            }
        }
        let head = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut out = Vec::new();
        encode_head(&head, &added, None, &mut out);
        assert_eq!(
            out,
            &b"GET / HTTP/1.1\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=10.0.0.1;proto=http;host=\"h:1\"\r\n\r\n"[..]
        );
    }

    /// A trace the encoder writes (`Added::set_trace`) replaces the client's `traceparent`
    /// and, for a restarted trace, drops its `tracestate`: the exact bytes, and the same
    /// lines as the map `TraceContext::inject` makes.
    #[test]
    fn added_trace_on_the_wire() {
        use crate::http::tracecontext::TraceContext;
        let client = Request::get("/t")
            .header("host", "h")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tracestate", "k=v")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let continued = TraceContext {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            parent_id: Some(0xb7ad6b7169203331),
            span_id: 0x00f067aa0ba902b7,
            flags: 1,
        };
        let restarted = TraceContext {
            parent_id: None,
            ..continued
        };
        for (t, want) in [
            (
                continued,
                &b"GET /t HTTP/1.1\r\nhost: h\r\ntracestate: k=v\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\r\n\r\n"[..],
            ),
            (
                restarted,
                &b"GET /t HTTP/1.1\r\nhost: h\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01\r\n\r\n"[..],
            ),
        ] {
            let mut added = Added::new();
            added.set_trace(t.added());
            let mut out = Vec::new();
            encode_head(&client, &added, None, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want)
            );
            let mut injected = client.clone();
            t.inject(&mut injected.headers);
            let mut from_map = Vec::new();
            encode_head(&injected, &Added::new(), None, &mut from_map);
            let mut a: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
            let mut b: Vec<&[u8]> = from_map.split(|b| *b == b'\n').collect();
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn request_heads() {
        let req = Request::get("/a?b")
            .header("host", "h")
            .header("x-y", "z")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        let head = req.into_parts().0;
        encode_head(&head, &Added::new(), None, &mut out);
        assert_eq!(out, b"GET /a?b HTTP/1.1\r\nhost: h\r\nx-y: z\r\n\r\n");
        // A head without `Host` gets the endpoint's, which the head itself does not keep.
        let mut head = Request::get("/")
            .header("x-y", "z")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        out.clear();
        encode_head(
            &head,
            &Added::new(),
            Some(&HeaderValue::from_static("e:1")),
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: e:1\r\nx-y: z\r\n\r\n");
        assert!(!head.headers.contains_key(header::HOST));
        let empty = http_body_util::Empty::<Bytes>::new();
        assert_eq!(uses_codec(&head, &empty), (true, false));
        head.headers
            .insert(header::HOST, HeaderValue::from_static("h"));
        assert_eq!(uses_codec(&head, &empty), (true, true));
        let cases = [
            Request::post("/")
                .body(http_body_util::Full::new(Bytes::from("x")))
                .unwrap(),
            Request::get("/")
                .header("upgrade", "websocket")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
            Request::get("/")
                .version(Version::HTTP_10)
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
            Request::get("/")
                .header("content-length", "3")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        ];
        for r in cases {
            let (head, body) = r.into_parts();
            assert!(!uses_codec(&head, &body).0, "{head:?}");
        }
    }
}
