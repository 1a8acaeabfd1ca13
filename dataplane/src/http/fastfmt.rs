//! Small formatting helpers for the per-request path, where `format!` and `ToString` (the
//! `core::fmt` machinery: padding, dynamic dispatch, growing buffers) showed up in profiles.
//! Each writes straight into a buffer it is given; results match the `Display` output.

use bytes::Bytes;
use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::net::IpAddr;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `n` in decimal.
fn push_u8(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + (n / 10) % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

/// Appends an IP address as `Display` writes it (IPv4 by hand; IPv6 through `fmt`).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u8(out, a);
            out.push('.');
            push_u8(out, b);
            out.push('.');
            push_u8(out, c);
            out.push('.');
            push_u8(out, d);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends one more value to header `name`: the UTF-8 values it has, joined with `", "`, then
/// `", "` and what `this_hop` writes, in one buffer (`extra`: bytes to reserve for this hop's
/// part). One hashed lookup for reading and replacing (`HeaderMap::entry`).
pub fn append_to_list(
    headers: &mut HeaderMap,
    name: &'static HeaderName,
    extra: usize,
    this_hop: impl FnOnce(&mut String),
) {
    match headers.entry(name) {
        Entry::Occupied(mut e) => {
            let mut out = String::new();
            for v in e.iter() {
                if let Ok(s) = v.to_str() {
                    out.reserve(s.len() + 2 + extra);
                    out.push_str(s);
                    out.push_str(", ");
                }
            }
            this_hop(&mut out);
            if let Some(v) = header_from_string(out) {
                e.insert(v);
            }
        }
        Entry::Vacant(e) => {
            let mut out = String::with_capacity(extra);
            this_hop(&mut out);
            if let Some(v) = header_from_string(out) {
                e.insert(v);
            }
        }
    }
}

/// A header value owning `s` (no copy); `None` if `s` holds a byte a value may not.
pub fn header_from_string(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
}

/// `n` as `width` lowercase hex digits (the low `width * 4` bits).
fn put_hex(out: &mut [u8], mut n: u128) {
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A W3C `traceparent` value: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> HeaderValue {
    let mut buf = [b'-'; 55];
    buf[0] = b'0';
    buf[1] = b'0';
    put_hex(&mut buf[3..35], trace_id);
    put_hex(&mut buf[36..52], u128::from(span_id));
    put_hex(&mut buf[53..55], u128::from(flags));
    // Hex digits and dashes only: always a valid value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""))
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
        }
    }

    #[test]
    fn list_appended() {
        static NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        append_to_list(&mut h, &NAME, 8, |s| s.push_str("9.9.9.9"));
        assert_eq!(h.get_all(&NAME).iter().count(), 1);
        assert_eq!(h[&NAME], "9.9.9.9");
        let mut h = HeaderMap::new();
        h.append(&NAME, HeaderValue::from_static("1.1.1.1"));
        h.append(&NAME, HeaderValue::from_bytes(b"\xff").unwrap());
        h.append(&NAME, HeaderValue::from_static("2.2.2.2, 3.3.3.3"));
        append_to_list(&mut h, &NAME, 8, |s| s.push_str("9.9.9.9"));
        // The prior values (the non-UTF-8 one dropped) and this hop's, in one value.
        assert_eq!(h.get_all(&NAME).iter().count(), 1);
        assert_eq!(h[&NAME], "1.1.1.1, 2.2.2.2, 3.3.3.3, 9.9.9.9");
        // A value that may not be sent leaves the header as it was.
        append_to_list(&mut h, &NAME, 8, |s| s.push('\n'));
        assert_eq!(h[&NAME], "1.1.1.1, 2.2.2.2, 3.3.3.3, 9.9.9.9");
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
        assert!(header_from_string("a\nb".into()).is_none());
    }
}
