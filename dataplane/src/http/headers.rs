//! Header and path helpers shared by the pipeline, policies and upstream (layer 0): hop-by-hop
//! removal, forwarding headers, the request host and dot-segment normalisation.

use crate::http::conn::ConnInfo;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::Request;
use std::ops::Range;

/// An [`AddedName`] for the literal header name `$n` (lowercase) added as `$mode` (an
/// [`AddMode`] variant), with its `name: ` line start.
#[macro_export]
macro_rules! added_name {
    ($n:literal, $mode:ident) => {
        $crate::http::headers::AddedName {
            name: ::http::header::HeaderName::from_static($n),
            line_start: concat!($n, ": "),
            mode: $crate::http::headers::AddMode::$mode,
        }
    };
}

static X_FORWARDED_FOR: AddedName = added_name!("x-forwarded-for", AppendToList);
static X_FORWARDED_PROTO: AddedName = added_name!("x-forwarded-proto", Replace);
static X_FORWARDED_HOST: AddedName = added_name!("x-forwarded-host", Replace);
static FORWARDED: AddedName = added_name!("forwarded", AppendToList);
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A field value `httparse` has already parsed, as a [`HeaderValue`] sharing the head's bytes.
///
/// `httparse` accepts exactly the bytes `HeaderValue` accepts (HTAB, SP..`~`, 0x80..=0xFF; its
/// `HEADER_VALUE_MAP`, and the SIMD paths that match it), so checking them again is pure cost:
/// ~34 instructions per field, ~340 per request on each leg of a small exchange (callgrind,
/// `HeaderValue::from_shared`). `value_check_agrees_with_httparse` below feeds every byte value
/// through `httparse` in both the scalar and the SIMD-sized positions and fails if the two sets
/// ever differ (an `httparse` or `http` upgrade). Debug builds check anyway (`http` does).
pub fn parsed_value(bytes: bytes::Bytes) -> HeaderValue {
    // SAFETY: `from_maybe_shared_unchecked` is `unsafe` only because a `HeaderValue` must hold
    // valid field-value bytes (no memory-safety condition); callers pass only spans of values
    // `httparse` returned, which satisfy it (see above and the test).
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// The request's host, lowercase and without a port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(raw[host_range(raw)].to_ascii_lowercase())
}

/// Where the host is in a `Host` value or an authority: after any userinfo, without the port
/// (an IPv6 literal keeps its brackets).
// Byte searches: `str::rfind`/`find` with a `char` pattern (`CharSearcher`) cost ~330
// instructions per request on a 15-byte host, as much as the rest of the routing lookup.
fn host_range(raw: &str) -> Range<usize> {
    let b = raw.as_bytes();
    let start = b.iter().rposition(|&c| c == b'@').map_or(0, |i| i + 1);
    let rest = &b[start..];
    let len = if rest.first() == Some(&b'[') {
        rest.iter()
            .position(|&c| c == b']')
            .map_or(rest.len(), |i| i + 1)
    } else {
        rest.iter().position(|&c| c == b':').unwrap_or(rest.len())
    };
    start..start + len
}

/// The request's host as [`request_host`] gives it, for routing. When it is already lowercase
/// (nearly always) it stays in the value it was read from, a reference-counted clone, instead
/// of being copied into a `String` (an allocation per request).
#[derive(Debug, Clone)]
pub struct Host(HostRepr);

#[derive(Debug, Clone)]
enum HostRepr {
    Header(HeaderValue, Range<usize>),
    Authority(Authority, Range<usize>),
    Owned(String),
}

impl Host {
    /// The request's host (a request-target authority wins over `Host`), or `None`.
    pub fn of<B>(req: &Request<B>) -> Option<Host> {
        if let Some(a) = req.uri().authority() {
            return Some(Host::cut(a.as_str(), |r| HostRepr::Authority(a.clone(), r)));
        }
        let v = req.headers().get(header::HOST)?;
        let raw = v.to_str().ok()?;
        Some(Host::cut(raw, |r| HostRepr::Header(v.clone(), r)))
    }

    fn cut(raw: &str, shared: impl FnOnce(Range<usize>) -> HostRepr) -> Host {
        let range = host_range(raw);
        let host = &raw[range.clone()];
        Host(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            HostRepr::Owned(host.to_ascii_lowercase())
        } else {
            shared(range)
        })
    }

    pub fn as_str(&self) -> &str {
        // The ranges were cut from checked ASCII (`HeaderValue::to_str`, `Authority`).
        match &self.0 {
            HostRepr::Header(v, r) => {
                let b = v.as_bytes().get(r.clone()).unwrap_or_default();
                // SAFETY: a `Header` host is made only by `Host::of`, from a range of a value
                // `HeaderValue::to_str` found to be visible ASCII, so the bytes are UTF-8.
                // Checking them again (`str::from_utf8`) cost ~120 instructions per request
                // (callgrind).
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            HostRepr::Authority(a, r) => &a.as_str()[r.clone()],
            HostRepr::Owned(s) => s,
        }
    }
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, also treating `%2e`/`%2E` as a dot. Paths without
/// dot segments (nearly all) are returned as they are, without copying.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let is_dot = |seg: &str| seg == "." || seg.eq_ignore_ascii_case("%2e");
    let is_dotdot = |seg: &str| {
        seg == ".."
            || seg.eq_ignore_ascii_case("%2e%2e")
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
    };
    // Every dot segment has a `.` or a `%`: most paths have neither and are not split at all.
    if !path.bytes().any(|b| b == b'.' || b == b'%')
        || !path.split('/').any(|s| is_dot(s) || is_dotdot(s))
    {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        if is_dot(seg) {
            trailing_slash = i == last;
        } else if is_dotdot(seg) {
            out.pop();
            trailing_slash = i == last;
        } else {
            out.push(seg);
            trailing_slash = false;
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    std::borrow::Cow::Owned(s)
}

/// Which of the fields the pipeline looks up a request's map for it may hold: a clear bit means
/// the map has no field of that name, so the lookup is skipped. The HTTP/1.1 parser notes them
/// as it walks the fields ([`crate::listen::h1`]); every other request gets them from one pass
/// over its map's names ([`FieldsSeen::of`]). Each lookup of a name the map does not hold
/// cost 140–200 instructions per request (hashing the name; callgrind, BENCHMARKS.md "h1req"),
/// a pass over a few names a few instructions a name.
///
/// The facts describe the map as it was when noted: a stage that may change the map (the
/// rule's stages, request filters) must note them again from the map after it
/// (`pipeline::proxy::forward` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FieldsSeen(u8);

impl FieldsSeen {
    pub const TRACEPARENT: FieldsSeen = FieldsSeen(1);
    pub const CONTENT_TYPE: FieldsSeen = FieldsSeen(2);
    pub const GRPC_TIMEOUT: FieldsSeen = FieldsSeen(4);
    pub const CONNECTION: FieldsSeen = FieldsSeen(8);
    pub const UPGRADE: FieldsSeen = FieldsSeen(16);

    /// The fields `headers` holds, by one pass over its names.
    pub fn of(headers: &HeaderMap) -> FieldsSeen {
        let mut seen = FieldsSeen::default();
        for name in headers.keys() {
            seen.note(name.as_str().len(), name);
        }
        seen
    }

    /// Notes `name` (`len` bytes long): the names asked about differ in length but for two, so
    /// the length picks the one or two comparisons that can match.
    #[inline]
    pub fn note(&mut self, len: usize, name: &HeaderName) {
        let bit = match len {
            7 if *name == header::UPGRADE => FieldsSeen::UPGRADE,
            10 if *name == header::CONNECTION => FieldsSeen::CONNECTION,
            11 if *name == crate::http::tracecontext::TRACEPARENT => FieldsSeen::TRACEPARENT,
            12 if *name == header::CONTENT_TYPE => FieldsSeen::CONTENT_TYPE,
            12 if *name == crate::http::grpc::GRPC_TIMEOUT => FieldsSeen::GRPC_TIMEOUT,
            _ => return,
        };
        self.0 |= bit.0;
    }

    /// The map may hold a field of each name in `names` (a union of the constants).
    #[inline]
    pub fn has(self, names: FieldsSeen) -> bool {
        self.0 & names.0 == names.0
    }
}

impl std::ops::BitOr for FieldsSeen {
    type Output = FieldsSeen;
    fn bitor(self, o: FieldsSeen) -> FieldsSeen {
        FieldsSeen(self.0 | o.0)
    }
}

/// Removes hop-by-hop headers, including the ones a `Connection` header names; `false` when
/// there was none (nothing was removed).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages carry none of them: one pass over the names beats nine hashed removals.
    let is_hop = |n: &HeaderName| {
        *n == header::CONNECTION
            || *n == KEEP_ALIVE
            || *n == PROXY_CONNECTION
            || *n == header::PROXY_AUTHENTICATE
            || *n == header::PROXY_AUTHORIZATION
            || *n == header::TE
            || *n == header::TRAILER
            || *n == header::TRANSFER_ENCODING
            || *n == header::UPGRADE
    };
    if !headers.keys().any(is_hop) {
        return false;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(n);
    }
    true
}

/// Sets `X-Forwarded-For/Proto/Host` and `Forwarded` in `headers` (used by
/// [`crate::policy::kairos`], and by the pipeline when the rule's filters must see them).
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    host_header: Option<&HeaderValue>,
) {
    let mut added = Added::new();
    forwarding(conn, host_header, &mut added);
    added.merge_into(headers);
}

/// The forwarding fields for a request: `X-Forwarded-For` (appended to the client's list),
/// `X-Forwarded-Proto`, `X-Forwarded-Host` (replacing the client's) and `Forwarded`
/// (appended). The address parts are the connection's, made once per connection
/// ([`ConnInfo::forwarded_for`]): writing the address into a new value per request cost ~250
/// instructions and an allocation (callgrind). Pushed onto `added` where it lies (the
/// request's future): returned by value, the list was copied twice more on its way.
pub(crate) fn forwarding(conn: &ConnInfo, host_header: Option<&HeaderValue>, added: &mut Added) {
    added.push(&X_FORWARDED_FOR, conn.forwarded_for.clone());
    added.push(&X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
    if let Some(h) = host_header {
        added.push(&X_FORWARDED_HOST, h.clone());
    }
    // `for=…;proto=…` is the connection's; a host that is a plain token is quoted after it,
    // when the head is written (no value made per request: that cost ~600 instructions and
    // an allocation, callgrind).
    let host = host_header.filter(|h| {
        h.as_bytes().iter().all(|b| {
            matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b':' | b'[' | b']')
        })
    });
    added.push(&FORWARDED, conn.forwarded.clone());
    if let Some(h) = host {
        added.quote_host_after_last(h.clone());
    }
}

/// The `X-Forwarded-For` and `Forwarded` (`for=…;proto=…`) values of a client connection.
pub(crate) fn connection_forwarding(
    remote: std::net::SocketAddr,
    scheme: &'static str,
) -> (HeaderValue, HeaderValue) {
    use crate::http::fastfmt::ValueBuf;
    let ip = remote.ip();
    let mut xff = ValueBuf::default();
    xff.push_ip(ip);
    let mut fwd = ValueBuf::default();
    fwd.push_str("for=");
    if ip.is_ipv6() {
        fwd.push_str("\"[");
        fwd.push_ip(ip);
        fwd.push_str("]\"");
    } else {
        fwd.push_ip(ip);
    }
    fwd.push_str(";proto=");
    fwd.push_str(scheme);
    // Digits, dots, colons, brackets and quotes: always valid values.
    let empty = || HeaderValue::from_static("");
    (
        xff.into_value().unwrap_or_else(empty),
        fwd.into_value().unwrap_or_else(empty),
    )
}

/// How a field the proxy adds meets the client's fields of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddMode {
    /// The client's fields of the name are dropped; the proxy's value goes instead.
    Replace,
    /// One field: the client's values (the UTF-8 ones), each followed by `", "`, then the
    /// proxy's (`X-Forwarded-For`, `Forwarded`).
    AppendToList,
    /// The client's fields of the name are dropped, nothing is added (`tracestate` of a
    /// restarted trace).
    Remove,
}

/// The name of a field the proxy adds, with its HTTP/1.1 line start (`name: `, one copy into
/// the head instead of two) and how it meets the client's fields of the name (a property of
/// the name, so not stored per field: 8 bytes less per slot of [`Added`]); made by
/// [`added_name!`].
#[derive(Debug)]
pub struct AddedName {
    pub name: HeaderName,
    pub line_start: &'static str,
    pub mode: AddMode,
}

/// One field the proxy adds to the upstream request.
#[derive(Debug, Clone)]
pub struct AddedField {
    pub name: &'static AddedName,
    pub value: HeaderValue,
}

/// Most fields the proxy adds to one request: X-Forwarded-For/Proto/Host, `Forwarded`. The
/// list moves with the request into the upstream leg's future, so each slot is 48 bytes more
/// to copy there (6 slots with a host per field cost ~+400 instructions per request in
/// `dispatch`, callgrind). `traceparent` has a slot of its own ([`AddedTrace`]).
const MAX_ADDED: usize = 4;

pub static TRACEPARENT: AddedName = added_name!("traceparent", Replace);
pub static TRACESTATE: AddedName = added_name!("tracestate", Remove);

/// The `traceparent` the proxy sends upstream, kept as the ids it is written from (26 bytes,
/// no alignment padding) and formatted straight into the HTTP/1.1 head: making it a
/// `HeaderValue` and inserting it into the request's map (with the `tracestate` removal)
/// cost ~1,065 instructions per request (callgrind, BENCHMARKS.md "the request side, fifth
/// pass"). Used only when nothing before the upstream encoder reads the request's
/// `traceparent`/`tracestate` (see [`crate::runtime::compile::Runtime::trace_in_map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddedTrace {
    /// Big-endian bytes of the trace id and the span id.
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    /// A restarted trace: the client's `tracestate` is dropped too.
    pub drop_state: bool,
}

impl AddedTrace {
    fn value_bytes(&self) -> [u8; 55] {
        crate::http::fastfmt::traceparent_bytes(self.trace_id, self.span_id, self.flags)
    }
}

/// What [`Added::position`] returns for the client's `traceparent` and a dropped
/// `tracestate`: past every field slot, so no list join looks at it.
const TRACE_SLOT: usize = MAX_ADDED;

/// The fields the proxy adds to a forwarded request, kept out of the request's `HeaderMap`
/// until the upstream head is written: the HTTP/1.1 codec writes them after the request's
/// own fields ([`Added::write_h1`], skipping the client's fields they replace), hyper's
/// client and h2c get them merged into their copy of the map ([`Added::merge_into`]).
/// Inserting each into the map cost a hashed `insert`/`entry` (~185–230 instructions each,
/// callgrind) only for the encoder to walk them again. A fixed array (no allocation); the
/// names are the proxy's statics.
#[derive(Debug, Clone, Default)]
pub struct Added {
    fields: [Option<AddedField>; MAX_ADDED],
    /// `u8`s, here and in `quoted_host`: the list lies in the request's future, and every
    /// byte less keeps the boxed HTTP/3 one under the size where copying it costs most.
    len: u8,
    /// A host written after the value of field `.0` as `;host="…"` (a `Forwarded`
    /// element's; token characters only, so no escaping): that value is then two shared
    /// pieces, not a new value per request.
    quoted_host: Option<(u8, HeaderValue)>,
    trace: Option<AddedTrace>,
}

impl Added {
    pub const fn new() -> Added {
        Added {
            fields: [const { None }; MAX_ADDED],
            len: 0,
            quoted_host: None,
            trace: None,
        }
    }

    /// Sends `trace` as the request's `traceparent` (the client's are dropped), and drops the
    /// client's `tracestate` when `trace.drop_state`.
    pub fn set_trace(&mut self, trace: AddedTrace) {
        self.trace = Some(trace);
    }

    pub fn trace(&self) -> Option<&AddedTrace> {
        self.trace.as_ref()
    }

    /// Adds a field (after the ones there). Beyond [`MAX_ADDED`] (no caller adds more) the
    /// field is dropped, with a debug assertion.
    pub fn push(&mut self, name: &'static AddedName, value: HeaderValue) {
        debug_assert!(
            usize::from(self.len) < MAX_ADDED,
            "more added fields than MAX_ADDED"
        );
        if let Some(slot) = self.fields.get_mut(usize::from(self.len)) {
            *slot = Some(AddedField { name, value });
            self.len += 1;
        }
    }

    /// Sets the host quoted after the value of the field added last (`;host="…"`).
    pub fn quote_host_after_last(&mut self, host: HeaderValue) {
        if let Some(last) = self.len.checked_sub(1) {
            self.quoted_host = Some((last, host));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.trace.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &AddedField> {
        self.fields[..usize::from(self.len)].iter().flatten()
    }

    /// The index of the added field named `name`: the client's field of that name is not
    /// written as it is (it is replaced, merged or removed).
    /// The client's `traceparent` (and `tracestate` of a restarted trace) give an index past
    /// the fields when a trace is added.
    #[inline]
    pub fn position(&self, name: &HeaderName) -> Option<usize> {
        if let Some(i) = self.iter().position(|f| f.name.name == name) {
            return Some(i);
        }
        match &self.trace {
            Some(t) if *name == TRACEPARENT.name || (t.drop_state && *name == TRACESTATE.name) => {
                Some(TRACE_SLOT)
            }
            _ => None,
        }
    }

    /// The quoted host's pieces after field `i`'s value, if it has one.
    fn host_after(&self, i: usize) -> Option<[&[u8]; 3]> {
        match &self.quoted_host {
            Some((at, h)) if usize::from(*at) == i => Some([b";host=\"", h.as_bytes(), b"\""]),
            _ => None,
        }
    }

    /// Field `i`'s whole value: its own, or a new one with the quoted host.
    fn joined(&self, i: usize, f: &AddedField) -> HeaderValue {
        let Some(host) = self.host_after(i) else {
            return f.value.clone();
        };
        let mut b = crate::http::fastfmt::ValueBuf::default();
        b.push_bytes(f.value.as_bytes());
        for p in host {
            b.push_bytes(p);
        }
        b.into_value().unwrap_or_else(|| f.value.clone())
    }

    /// Applies the fields to `headers` as one hashed operation each: `insert`, the joined
    /// list, or `remove`. This is what the proxy did before the fields were kept apart, in
    /// the same order, so a map that gets them here holds what it held then.
    /// The trace goes first, where [`crate::http::tracecontext::TraceContext::inject`] put it.
    pub fn merge_into(&self, headers: &mut HeaderMap) {
        headers.reserve(usize::from(self.len) + 1);
        if let Some(t) = &self.trace {
            if t.drop_state {
                headers.remove(&TRACESTATE.name);
            }
            // Hex digits and dashes only: always a valid value.
            let v = crate::http::fastfmt::shared_value(t.value_bytes())
                .unwrap_or_else(|| HeaderValue::from_static(""));
            headers.insert(TRACEPARENT.name.clone(), v);
        }
        for (i, f) in self.iter().enumerate() {
            match f.name.mode {
                AddMode::Replace => {
                    headers.insert(f.name.name.clone(), self.joined(i, f));
                }
                AddMode::AppendToList => {
                    crate::http::fastfmt::append_to_list(headers, &f.name.name, |b| {
                        b.push_bytes(f.value.as_bytes());
                        for p in self.host_after(i).into_iter().flatten() {
                            b.push_bytes(p);
                        }
                    });
                }
                AddMode::Remove => {
                    headers.remove(&f.name.name);
                }
            }
        }
    }

    /// Bytes [`Added::write_h1`] writes at most, besides the client values it joins.
    pub fn h1_len(&self) -> usize {
        let host = self.quoted_host.as_ref().map_or(0, |(_, h)| h.len() + 8);
        let fields: usize = self
            .iter()
            .map(|f| f.name.line_start.len() + f.value.len() + 2)
            .sum();
        let trace = match self.trace {
            Some(_) => TRACEPARENT.line_start.len() + 55 + 2,
            None => 0,
        };
        host + fields + trace
    }

    /// Writes the fields as HTTP/1.1 header lines after the request's own `headers` (written
    /// without the fields named here). `seen`: bit `i` set when `headers` has a field named
    /// as field `i` (found while writing them, so the common case, none, costs no lookup):
    /// an appended list then starts with the client's values.
    ///
    /// Each line starts with its name's static `name: ` ([`AddedName`]): one copy, not two.
    pub fn write_h1(&self, headers: &HeaderMap, seen: u32, out: &mut Vec<u8>) {
        for (i, f) in self.iter().enumerate() {
            if f.name.mode == AddMode::Remove {
                continue;
            }
            out.extend_from_slice(f.name.line_start.as_bytes());
            if f.name.mode == AddMode::AppendToList && seen & (1 << i) != 0 {
                for v in headers.get_all(&f.name.name) {
                    if v.to_str().is_ok() {
                        out.extend_from_slice(v.as_bytes());
                        out.extend_from_slice(b", ");
                    }
                }
            }
            out.extend_from_slice(f.value.as_bytes());
            if let Some(host) = self.host_after(i) {
                for p in host {
                    out.extend_from_slice(p);
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        if let Some(t) = &self.trace {
            out.extend_from_slice(TRACEPARENT.line_start.as_bytes());
            out.extend_from_slice(&t.value_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Segment-aware prefix match: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let p = prefix.trim_end_matches('/');
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    /// [`parsed_value`]'s premise: a value `httparse` accepts is one `HeaderValue` accepts, and
    /// the reverse, for every byte, both in short values (scalar loop) and at every offset of a
    /// 64-byte value (the AVX2/SSE4.2 paths take 32/16 bytes at a time).
    #[test]
    fn value_check_agrees_with_httparse() {
        for b in 0u8..=255 {
            if b == b'\r' || b == b'\n' {
                continue; // line ends: the parser's business, not a value byte
            }
            for (len, at) in [
                (1usize, 0usize),
                (3, 1),
                (64, 0),
                (64, 17),
                (64, 40),
                (64, 63),
            ] {
                let mut value = vec![b'a'; len];
                value[at] = b;
                let mut raw = b"HTTP/1.1 200 OK\r\nx: a".to_vec();
                raw.extend_from_slice(&value);
                raw.extend_from_slice(b"a\r\n\r\n");
                let mut fields = [httparse::EMPTY_HEADER; 4];
                let mut res = httparse::Response::new(&mut fields);
                let parsed = matches!(res.parse(&raw), Ok(httparse::Status::Complete(_)));
                let checked = HeaderValue::from_bytes(&value).is_ok();
                assert_eq!(parsed, checked, "byte {b:#04x}, len {len}, at {at}");
                let mut raw = b"GET / HTTP/1.1\r\nx: a".to_vec();
                raw.extend_from_slice(&value);
                raw.extend_from_slice(b"a\r\n\r\n");
                let mut fields = [httparse::EMPTY_HEADER; 4];
                let mut req = httparse::Request::new(&mut fields);
                let parsed = matches!(req.parse(&raw), Ok(httparse::Status::Complete(_)));
                assert_eq!(
                    parsed, checked,
                    "request: byte {b:#04x}, len {len}, at {at}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn host_forms() {
        let r = |h: &str| Request::builder().header("host", h).body(()).unwrap();
        assert_eq!(
            request_host(&r("Example.COM:8080")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(&r("[::1]:8080")).as_deref(), Some("[::1]"));
        assert_eq!(
            request_host(&r("api.example.com")).as_deref(),
            Some("api.example.com")
        );
        let abs = Request::builder()
            .uri("https://h2.example.com:8443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&abs).as_deref(), Some("h2.example.com"));
    }

    #[test]
    fn host_without_copy_agrees() {
        for h in [
            "Example.COM:8080",
            "[::1]:8080",
            "api.example.com",
            "u@x.example:1",
            "a:b@c",
            "a:B@c:D",
            "A@[::1]:X",
            "[::1",
            "[a@b]:1",
            "x:",
            "@",
            "",
            "h\tX",
            "UP.example",
        ] {
            let r = Request::builder().header("host", h).body(()).unwrap();
            assert_eq!(
                Host::of(&r).map(|h| h.as_str().to_owned()),
                request_host(&r),
                "{h}"
            );
        }
        for uri in [
            "https://H2.example.com:8443/x",
            "http://u@[::1]:80/",
            "http://a.b/",
        ] {
            let r = Request::builder()
                .uri(uri)
                .header("host", "other")
                .body(())
                .unwrap();
            assert_eq!(
                Host::of(&r).map(|h| h.as_str().to_owned()),
                request_host(&r),
                "{uri}"
            );
        }
        for bad in [&b"caf\xc3\xa9"[..], b"a\xffb"] {
            let r = Request::builder()
                .header("host", HeaderValue::from_bytes(bad).unwrap())
                .body(())
                .unwrap();
            assert!(Host::of(&r).is_none() && request_host(&r).is_none());
        }
        let none = Request::builder().body(()).unwrap();
        assert!(Host::of(&none).is_none() && request_host(&none).is_none());
    }

    #[test]
    fn dot_segments_resolved() {
        for (input, want) in [
            ("/api/users", "/api/users"),
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E./admin/", "/admin/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/a//b", "/a//b"),
            ("/a/..b/c", "/a/..b/c"),
        ] {
            assert_eq!(normalize_path(input), want, "{input}");
        }
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
