//! Small formatting helpers for the per-request path, where `format!` and `ToString` (the
//! `core::fmt` machinery: padding, dynamic dispatch, growing buffers) showed up in profiles.
//! Each writes straight into a buffer it is given; results match the `Display` output.

use bytes::Bytes;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Emits the ASCII digits of `n` in decimal.
#[inline]
fn u8_digits(n: u8, emit: &mut impl FnMut(u8)) {
    if n >= 100 {
        emit(b'0' + n / 100);
    }
    if n >= 10 {
        emit(b'0' + (n / 10) % 10);
    }
    emit(b'0' + n % 10);
}

/// Emits an IPv4 address as `Display` writes it, a byte at a time.
#[inline]
fn ipv4_bytes(v4: Ipv4Addr, mut emit: impl FnMut(u8)) {
    let [a, b, c, d] = v4.octets();
    u8_digits(a, &mut emit);
    emit(b'.');
    u8_digits(b, &mut emit);
    emit(b'.');
    u8_digits(c, &mut emit);
    emit(b'.');
    u8_digits(d, &mut emit);
}

/// Appends an IP address as `Display` writes it (IPv4 by hand; IPv6 through `fmt`).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => ipv4_bytes(v4, |b| out.push(char::from(b))),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A header value being written: on the stack up to 128 bytes (a client address, a
/// `Forwarded` element with its host), on the heap only beyond (a long proxy chain). The
/// value is then made with one allocation of its exact size; a `String` made into a value
/// costs two (its buffer, then `Bytes`' shared header, as its capacity is not its length).
/// Hand-rolled rather than `SmallVec`: a value is written a character at a time (an address'
/// digits), and `SmallVec::extend_from_slice` costs a `memmove` call per push (~1,700
/// instructions per request more than a `String`, measured); here a byte is one store.
pub struct ValueBuf {
    stack: [u8; 128],
    len: usize,
    /// Everything written, once it no longer fits `stack`.
    heap: Vec<u8>,
}

impl Default for ValueBuf {
    fn default() -> Self {
        ValueBuf {
            stack: [0; 128],
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl ValueBuf {
    #[inline]
    pub fn push_byte(&mut self, b: u8) {
        match self.stack.get_mut(self.len) {
            Some(slot) if self.heap.is_empty() => {
                *slot = b;
                self.len += 1;
            }
            _ => self.spill(&[b]),
        }
    }

    #[inline]
    pub fn push_str(&mut self, s: &str) {
        self.push_bytes(s.as_bytes());
    }

    /// Appends bytes (a value's own: [`ValueBuf::into_value`] checks them).
    #[inline]
    pub fn push_bytes(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        match self.stack.get_mut(self.len..end) {
            Some(dst) if self.heap.is_empty() => {
                dst.copy_from_slice(s);
                self.len = end;
            }
            _ => self.spill(s),
        }
    }

    /// Appends an IP address as [`push_ip`] does (digits as single-byte stores).
    pub fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => ipv4_bytes(v4, |b| self.push_byte(b)),
            IpAddr::V6(v6) => {
                let _ = write!(self, "{v6}");
            }
        }
    }

    #[inline]
    pub fn push(&mut self, c: char) {
        if c.is_ascii() {
            self.push_byte(c as u8);
        } else {
            self.push_str(c.encode_utf8(&mut [0; 4]));
        }
    }

    #[cold]
    fn spill(&mut self, more: &[u8]) {
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.stack[..self.len]);
        }
        self.heap.extend_from_slice(more);
    }

    fn as_bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }

    /// The value; `None` if it holds a byte a value may not. The buffer moves into the
    /// value's one allocation (see [`shared_value`]).
    pub fn into_value(self) -> Option<HeaderValue> {
        if self.heap.is_empty() {
            shared_value(self)
        } else {
            HeaderValue::from_maybe_shared(Bytes::from(self.heap)).ok()
        }
    }
}

impl AsRef<[u8]> for ValueBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// A header value holding `owner`'s bytes in one allocation (`Bytes::from_owner`: the owner
/// and its reference count together), already shared. A value made with `from_bytes` (a
/// `Vec` copy) is allocated again, for `Bytes`' shared header, the first time it is cloned,
/// and the upstream leg clones the request's headers (for a retry) on every request: that
/// was one more `malloc` per forwarding header and for `traceparent`.
pub fn shared_value(owner: impl AsRef<[u8]> + Send + 'static) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(owner)).ok()
}

impl Write for ValueBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// Appends one more value to header `name`: the UTF-8 values it has, joined with `", "`, then
/// `", "` and what `this_hop` writes, in one value. One hashed lookup for reading and
/// replacing (`HeaderMap::entry`).
pub fn append_to_list(
    headers: &mut HeaderMap,
    name: &'static HeaderName,
    this_hop: impl FnOnce(&mut ValueBuf),
) {
    let mut out = ValueBuf::default();
    match headers.entry(name) {
        Entry::Occupied(mut e) => {
            for v in e.iter() {
                if let Ok(s) = v.to_str() {
                    out.push_str(s);
                    out.push_str(", ");
                }
            }
            this_hop(&mut out);
            if let Some(v) = out.into_value() {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            this_hop(&mut out);
            if let Some(v) = out.into_value() {
                e.insert(v);
            }
        }
    }
}

/// The two lowercase hex digits of every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// `bytes` as lowercase hex, two digits per byte, into `out` (twice as long). A byte at a
/// time from the big-endian bytes, rather than a nibble at a time from a shifted `u128`
/// (two-register shifts per digit); one two-digit lookup per byte, not two one-digit ones
/// (~114 instructions per `traceparent` before, callgrind).
fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
        o.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// The bytes of a W3C `traceparent` value: `00-<32 hex trace id>-<16 hex span id>-<2 hex
/// flags>`, on the stack (the HTTP/1.1 upstream codec copies them straight into the head).
pub fn traceparent_bytes(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> [u8; 55] {
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    put_hex(&mut buf[3..35], &trace_id);
    put_hex(&mut buf[36..52], &span_id);
    put_hex(&mut buf[53..55], &[flags]);
    buf
}

/// A W3C `traceparent` value ([`traceparent_bytes`]) as a shared header value.
pub fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> HeaderValue {
    let buf = traceparent_bytes(trace_id.to_be_bytes(), span_id.to_be_bytes(), flags);
    // Hex digits and dashes only: always a valid value.
    shared_value(buf).unwrap_or_else(|| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ips_match_display() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 99, 100, 255)),
            IpAddr::V4(Ipv4Addr::new(192, 168, 9, 10)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6("2001:db8::8a2e:370:7334".parse().unwrap()),
        ] {
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
            let mut b = ValueBuf::default();
            b.push_ip(ip);
            assert_eq!(b.as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn list_appended() {
        static NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        append_to_list(&mut h, &NAME, |s| s.push_str("9.9.9.9"));
        assert_eq!(h.get_all(&NAME).iter().count(), 1);
        assert_eq!(h[&NAME], "9.9.9.9");
        let mut h = HeaderMap::new();
        h.append(&NAME, HeaderValue::from_static("1.1.1.1"));
        h.append(&NAME, HeaderValue::from_bytes(b"\xff").unwrap());
        h.append(&NAME, HeaderValue::from_static("2.2.2.2, 3.3.3.3"));
        append_to_list(&mut h, &NAME, |s| s.push_str("9.9.9.9"));
        // The prior values (the non-UTF-8 one dropped) and this hop's, in one value.
        assert_eq!(h.get_all(&NAME).iter().count(), 1);
        assert_eq!(h[&NAME], "1.1.1.1, 2.2.2.2, 3.3.3.3, 9.9.9.9");
        // A value that may not be sent leaves the header as it was.
        append_to_list(&mut h, &NAME, |s| s.push('\n'));
        assert_eq!(h[&NAME], "1.1.1.1, 2.2.2.2, 3.3.3.3, 9.9.9.9");
    }

    #[test]
    fn value_buf_spills_to_the_heap() {
        let mut b = ValueBuf::default();
        let long = "1.2.3.4, ".repeat(40);
        for c in long.chars().take(120) {
            b.push(c);
        }
        b.push_str(&long[120..]);
        b.push('é');
        assert_eq!(b.as_bytes(), format!("{long}é").as_bytes());
    }

    #[test]
    fn traceparent_matches_format() {
        for (t, s, f) in [
            (1u128, 2u64, 1u8),
            (u128::MAX, u64::MAX, 0xff),
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 0),
        ] {
            let want = format!("00-{t:032x}-{s:016x}-{f:02x}");
            assert_eq!(traceparent(t, s, f).to_str().unwrap(), want);
        }
        let mut bad = ValueBuf::default();
        bad.push_str("a\nb");
        assert!(bad.into_value().is_none());
    }
}
