//! Formatting the text encoders share (the ECS `message`, syslog messages, OTLP log bodies):
//! the access line, exact `{:.3}` milliseconds, IP addresses, the HTTP version, and the
//! scratch buffers reused from one event to the next.

use crate::telemetry::event::AccessEvent;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Buffers reused from one event to the next.
#[derive(Default)]
pub struct Scratch {
    pub(crate) ip: String,
    pub(crate) text: String,
    pub(crate) record: Vec<u8>,
}

/// `n` in decimal, in the end of `buf`.
pub(crate) fn digits(buf: &mut [u8; 20], mut n: u64) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or_default() // ASCII digits
}

pub(crate) fn http_version(protocol: &str) -> &'static str {
    match protocol {
        "h2" => "2",
        "h3" => "3",
        _ => "1.1",
    }
}

pub(crate) fn set_ip(s: &mut String, ip: IpAddr) {
    s.clear();
    crate::http::fastfmt::push_ip(s, ip);
}

/// The access line of an ECS document's `message` (and of syslog messages):
/// `IP "METHOD HOSTPATH" STATUS BYTES_IN BYTES_OUT 1.234ms`.
pub fn access_line(s: &mut String, e: &AccessEvent, ip: &str) {
    s.clear();
    s.push_str(ip);
    s.push_str(" \"");
    s.push_str(e.method.as_str());
    s.push(' ');
    s.push_str(e.host.as_deref().unwrap_or("-"));
    s.push_str(e.path.as_deref().unwrap_or("-"));
    let _ = write!(s, "\" {} {} {} ", e.status, e.bytes_in, e.bytes_out);
    push_ms3(s, e.duration.as_secs_f64() * 1000.0);
    s.push_str("ms");
}

/// Appends `v` (finite, not negative) with three decimals, exactly as `format!("{v:.3}")`
/// does (the binary value rounded half to even), without `core::fmt`'s float formatting.
#[inline(never)]
pub fn push_ms3(s: &mut String, v: f64) {
    // Past 1e15 ms (31,000 years) the slow path; below, v * 1000 fits a u64.
    if !(0.0..1e15).contains(&v) {
        let _ = write!(s, "{v:.3}");
        return;
    }
    // v = m * 2^e exactly.
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    // q = v * 1000, rounded half to even.
    let n = u128::from(m) * 1000;
    let q = if e >= 0 {
        n << e // v < 1e15: fits
    } else if e <= -127 {
        0 // n < 2^63: below one half
    } else {
        let sh = (-e) as u32;
        let q = n >> sh;
        let rem = n & ((1u128 << sh) - 1);
        let half = 1u128 << (sh - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q + 1
        } else {
            q
        }
    };
    let q = q as u64;
    s.push_str(digits(&mut [0; 20], q / 1000));
    let f = q % 1000;
    s.push('.');
    s.push(char::from(b'0' + (f / 100) as u8));
    s.push(char::from(b'0' + (f / 10 % 10) as u8));
    s.push(char::from(b'0' + (f % 10) as u8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn milliseconds_format_like_core_fmt() {
        let mut vals = vec![
            0.0, 0.0005, 0.0015, 0.0625, 0.1875, 2.5, 1e-300, 999.9995, 1e14, 1e15, 2e20,
        ];
        // Exact ties (k / 16) and their neighbours, and what durations produce.
        for k in 0..20_000u64 {
            let t = k as f64 / 16.0;
            vals.extend([
                t,
                f64::from_bits(t.to_bits() + 1),
                f64::from_bits(t.to_bits().max(1) - 1),
            ]);
            let d = Duration::from_nanos(k * 7_919 + k * k * 104_729);
            vals.push(d.as_secs_f64() * 1000.0);
        }
        let mut r = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            vals.push(Duration::from_nanos(r % 100_000_000_000).as_secs_f64() * 1000.0);
        }
        for v in vals {
            let mut s = String::new();
            push_ms3(&mut s, v);
            assert_eq!(s, format!("{v:.3}"), "{v:e}");
        }
    }
}
