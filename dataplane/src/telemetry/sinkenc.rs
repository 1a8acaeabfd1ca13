//! Encoders for shipped access events, writing straight into a batch's body: ECS 8.0 JSON
//! documents (`httpJson` sinks) and OTLP `LogRecord`s in an `ExportLogsServiceRequest`
//! (`otlp` sinks).
//!
//! The request path only captures an [`AccessEvent`] (moved fields, numbers, no formatting);
//! the shipper tasks call these. No per-event `serde_json::Value` or prost message is built:
//! each field is written in place, with one scratch buffer reused across a batch. The bytes
//! are the same as serializing the equivalent `serde_json::Value` (keys sorted, compact) or
//! prost message (fields by tag, proto3 defaults omitted); the tests compare both.

use crate::telemetry::shipper::AccessEvent;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Buffers reused from one event to the next.
#[derive(Default)]
pub struct Scratch {
    pub(crate) ip: String,
    pub(crate) text: String,
    pub(crate) record: Vec<u8>,
}

/// `n` in decimal, in the end of `buf`.
fn digits(buf: &mut [u8; 20], mut n: u64) -> &str {
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

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(digits(&mut [0; 20], n).as_bytes());
}

/// Appends `s` as a JSON string: quoted, escaped as `serde_json` does (`"`, `\`, and control
/// characters; everything else as is).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

fn hex_into(out: &mut Vec<u8>, n: u128, digits: usize) {
    for k in (0..digits).rev() {
        out.push(HEX[((n >> (4 * k)) & 0xf) as usize]);
    }
}

fn two(out: &mut Vec<u8>, n: u64) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// Appends `t` as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.123Z`), as
/// `humantime::format_rfc3339_millis` writes it. Times before 1970 are written as 1970.
pub fn rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Past the year 9999 (which RFC 3339 cannot write): the last millisecond of 9999.
    let (secs, millis) = if d.as_secs() >= 253_402_300_800 {
        (253_402_300_799, 999)
    } else {
        (d.as_secs(), u64::from(d.subsec_millis()))
    };
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u64;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
    two(out, year / 100);
    two(out, year);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem / 60 % 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    out.push(b'0' + (millis / 100) as u8);
    two(out, millis);
    out.push(b'Z');
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

/// Appends one access event as a compact ECS 8.0 JSON document (keys sorted, as
/// `serde_json::to_vec` of the equivalent `Value` writes them).
pub fn ecs_json(out: &mut Vec<u8>, e: &AccessEvent, service: &str, s: &mut Scratch) {
    set_ip(&mut s.ip, e.client.ip());
    access_line(&mut s.text, e, &s.ip);
    let ip = s.ip.as_bytes();
    out.extend_from_slice(b"{\"@timestamp\":\"");
    rfc3339_millis(out, e.time);
    // An IP address needs no escaping.
    out.extend_from_slice(b"\",\"client\":{\"address\":\"");
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\",\"ip\":\"");
    out.extend_from_slice(ip);
    out.extend_from_slice(b"\",\"port\":");
    push_u64(out, u64::from(e.client.port()));
    out.extend_from_slice(b"},\"ecs\":{\"version\":\"8.0.0\"},");
    if let Some(err) = e.error {
        out.extend_from_slice(b"\"error\":{\"type\":");
        json_str(out, err);
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(
        b"\"event\":{\"category\":[\"web\"],\"dataset\":\"weir.access\",\"duration\":",
    );
    push_u64(out, e.duration.as_nanos() as u64);
    out.extend_from_slice(if e.status >= 500 || e.error.is_some() {
        b",\"kind\":\"event\",\"outcome\":\"failure\"},"
    } else {
        b",\"kind\":\"event\",\"outcome\":\"success\"},"
    });
    out.extend_from_slice(b"\"http\":{\"request\":{\"body\":{\"bytes\":");
    push_u64(out, e.bytes_in);
    out.extend_from_slice(b"},\"method\":");
    json_str(out, e.method.as_str());
    out.extend_from_slice(b"},\"response\":{\"body\":{\"bytes\":");
    push_u64(out, e.bytes_out);
    out.extend_from_slice(b"},\"status_code\":");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b"},\"version\":\"");
    out.extend_from_slice(http_version(e.protocol).as_bytes());
    out.extend_from_slice(b"\"},\"labels\":{\"attempts\":\"");
    push_u64(out, u64::from(e.attempts));
    out.extend_from_slice(b"\",\"backend\":");
    json_str(out, &e.backend);
    out.extend_from_slice(b",\"end\":");
    json_str(out, e.end);
    out.extend_from_slice(b",\"listener\":");
    json_str(out, &e.listener);
    out.extend_from_slice(b",\"route\":");
    json_str(out, &e.route);
    if let Some(u) = &e.upstream {
        out.extend_from_slice(b",\"upstream\":");
        json_str(out, u);
    }
    out.extend_from_slice(b"},\"message\":");
    json_str(out, &s.text);
    out.extend_from_slice(b",\"service\":{\"name\":");
    json_str(out, service);
    out.extend_from_slice(b"},\"span\":{\"id\":\"");
    hex_into(out, u128::from(e.span_id), 16);
    out.extend_from_slice(b"\"},\"trace\":{\"id\":\"");
    hex_into(out, e.trace_id, 32);
    out.extend_from_slice(b"\"},\"url\":{\"domain\":");
    json_str(out, e.host.as_deref().unwrap_or("-"));
    out.extend_from_slice(b",\"path\":");
    json_str(out, e.path.as_deref().unwrap_or("-"));
    out.extend_from_slice(b"}}");
}

/// A batch of access events as the JSON array an `httpJson` sink POSTs.
pub fn ecs_batch(batch: &[Arc<AccessEvent>], service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + batch.len() * 900);
    let mut s = Scratch::default();
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        ecs_json(&mut out, e, service, &mut s);
    }
    out.push(b']');
    out
}


// ---------------------------------------------------------------------------------------
// The serde-derived alternative (issue #17): the same document as `#[derive(Serialize)]`
// structs written with `serde_json::to_writer`, numbers with `itoa`, the time with `humantime`.

mod derived {
    use super::{access_line, http_version, set_ip, AccessEvent, Scratch};
    use serde::Serialize;
    use std::time::SystemTime;

    /// Written with `humantime::format_rfc3339_millis` through `collect_str`.
    struct Rfc3339(SystemTime);
    impl Serialize for Rfc3339 {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_rfc3339_millis(self.0))
        }
    }
    /// A lower-case hex id of `W` digits.
    struct Hex<const W: usize>(u128);
    impl<const W: usize> Serialize for Hex<W> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("{:0w$x}", self.0, w = W))
        }
    }

    // Fields in key order: the old `serde_json::Value` documents had sorted keys.
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(rename = "@timestamp")]
        timestamp: Rfc3339,
        client: Client<'a>,
        ecs: Ecs,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Error<'a>>,
        event: Event,
        http: Http<'a>,
        labels: Labels<'a>,
        message: &'a str,
        service: Name<'a>,
        span: Id<16>,
        trace: Id<32>,
        url: Url<'a>,
    }
    #[derive(Serialize)]
    struct Client<'a> {
        address: &'a str,
        ip: &'a str,
        port: u16,
    }
    #[derive(Serialize)]
    struct Ecs {
        version: &'static str,
    }
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
    }
    #[derive(Serialize)]
    struct Event {
        category: [&'static str; 1],
        dataset: &'static str,
        duration: u64,
        kind: &'static str,
        outcome: &'static str,
    }
    #[derive(Serialize)]
    struct Http<'a> {
        request: Request<'a>,
        response: Response,
        version: &'static str,
    }
    #[derive(Serialize)]
    struct Bytes {
        bytes: u64,
    }
    #[derive(Serialize)]
    struct Request<'a> {
        body: Bytes,
        method: &'a str,
    }
    #[derive(Serialize)]
    struct Response {
        body: Bytes,
        status_code: u16,
    }
    #[derive(Serialize)]
    struct Labels<'a> {
        attempts: &'a str,
        backend: &'a str,
        end: &'a str,
        listener: &'a str,
        route: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        upstream: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Name<'a> {
        name: &'a str,
    }
    #[derive(Serialize)]
    struct Id<const W: usize> {
        id: Hex<W>,
    }
    #[derive(Serialize)]
    struct Url<'a> {
        domain: &'a str,
        path: &'a str,
    }

    pub fn ecs_json(out: &mut Vec<u8>, e: &AccessEvent, service: &str, s: &mut Scratch) {
        set_ip(&mut s.ip, e.client.ip());
        access_line(&mut s.text, e, &s.ip);
        let mut attempts = itoa::Buffer::new();
        let doc = Doc {
            timestamp: Rfc3339(e.time),
            client: Client {
                address: &s.ip,
                ip: &s.ip,
                port: e.client.port(),
            },
            ecs: Ecs { version: "8.0.0" },
            error: e.error.map(|kind| Error { kind }),
            event: Event {
                category: ["web"],
                dataset: "weir.access",
                duration: e.duration.as_nanos() as u64,
                kind: "event",
                outcome: if e.status >= 500 || e.error.is_some() {
                    "failure"
                } else {
                    "success"
                },
            },
            http: Http {
                request: Request {
                    body: Bytes { bytes: e.bytes_in },
                    method: e.method.as_str(),
                },
                response: Response {
                    body: Bytes { bytes: e.bytes_out },
                    status_code: e.status,
                },
                version: http_version(e.protocol),
            },
            labels: Labels {
                attempts: attempts.format(e.attempts),
                backend: &e.backend,
                end: e.end,
                listener: &e.listener,
                route: &e.route,
                upstream: e.upstream.as_deref(),
            },
            message: &s.text,
            service: Name { name: service },
            span: Id {
                id: Hex(u128::from(e.span_id)),
            },
            trace: Id {
                id: Hex(e.trace_id),
            },
            url: Url {
                domain: e.host.as_deref().unwrap_or("-"),
                path: e.path.as_deref().unwrap_or("-"),
            },
        };
        // Writing into a Vec cannot fail, and every field serializes.
        let _ = serde_json::to_writer(out, &doc);
    }
}

/// Which ECS encoder [`ecs_batch_with`] uses (for the comparison test).
#[derive(Clone, Copy, Debug)]
pub enum EcsEncoder {
    Hand,
    Derived,
}

/// [`ecs_batch`] with the chosen encoder.
pub fn ecs_batch_with(batch: &[Arc<AccessEvent>], service: &str, enc: EcsEncoder) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + batch.len() * 900);
    let mut s = Scratch::default();
    out.push(b'[');
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match enc {
            EcsEncoder::Hand => ecs_json(&mut out, e, service, &mut s),
            EcsEncoder::Derived => derived::ecs_json(&mut out, e, service, &mut s),
        }
    }
    out.push(b']');
    out
}

// ---------------------------------------------------------------------------------------
// Protobuf (OTLP logs).

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Wire types.
pub(crate) const VARINT: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const I32: u8 = 5;

pub(crate) fn key(out: &mut Vec<u8>, tag: u8, wire: u8) {
    varint(out, (u64::from(tag) << 3) | u64::from(wire));
}

/// A `fixed64` field, omitted when 0 (proto3).
pub(crate) fn fixed64(out: &mut Vec<u8>, tag: u8, v: u64) {
    if v != 0 {
        key(out, tag, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A varint field (`uint`, `int64`, enum), omitted when 0 (proto3).
pub(crate) fn varint_field(out: &mut Vec<u8>, tag: u8, v: u64) {
    if v != 0 {
        key(out, tag, VARINT);
        varint(out, v);
    }
}

/// A `string`/`bytes`/message field (always written: callers skip empty proto3 scalars).
pub(crate) fn bytes_field(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    key(out, tag, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `AnyValue` payloads of attributes.
pub(crate) enum Val<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    F64(f64),
}

impl Val<'_> {
    /// The encoded length of the `AnyValue` message.
    fn len(&self) -> usize {
        match self {
            Val::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Val::Bool(_) => 2,
            Val::Int(i) => 1 + varint_len(*i as u64),
            Val::F64(_) => 9,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::Str(s) => bytes_field(out, 1, s.as_bytes()),
            Val::Bool(b) => {
                key(out, 2, VARINT);
                out.push(u8::from(*b));
            }
            Val::Int(i) => {
                key(out, 3, VARINT);
                varint(out, *i as u64);
            }
            Val::F64(f) => {
                key(out, 4, I64);
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
}

/// A `KeyValue` attribute as field `tag` of the enclosing message.
pub(crate) fn kv(out: &mut Vec<u8>, tag: u8, k: &str, v: Val<'_>) {
    let vlen = v.len();
    let len = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(vlen as u64) + vlen;
    key(out, tag, LEN);
    varint(out, len as u64);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, vlen as u64);
    v.write(out);
}

pub(crate) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// The fields of one access event's OTLP `LogRecord` (`event_name` `weir.access`), without
/// the record's own key and length.
pub fn otlp_log_record(out: &mut Vec<u8>, e: &AccessEvent, s: &mut Scratch) {
    const ATTR: u8 = 6;
    let t = unix_nanos(e.time);
    fixed64(out, 1, t);
    // SeverityNumber: INFO = 9, ERROR = 17.
    let (sev, sev_text) = if e.status >= 500 {
        (17, "ERROR")
    } else {
        (9, "INFO")
    };
    varint_field(out, 2, sev);
    bytes_field(out, 3, sev_text.as_bytes());
    set_ip(&mut s.ip, e.client.ip());
    let body = &mut s.text;
    body.clear();
    body.push_str(&s.ip);
    body.push(' ');
    body.push_str(e.method.as_str());
    body.push(' ');
    body.push_str(e.host.as_deref().unwrap_or("-"));
    body.push_str(e.path.as_deref().unwrap_or("-"));
    let _ = write!(body, " {} {}", e.status, e.bytes_out);
    let body_val = Val::Str(body);
    key(out, 5, LEN);
    varint(out, body_val.len() as u64);
    body_val.write(out);
    kv(
        out,
        ATTR,
        "http.request.method",
        Val::Str(e.method.as_str()),
    );
    kv(
        out,
        ATTR,
        "url.path",
        Val::Str(e.path.as_deref().unwrap_or("")),
    );
    kv(
        out,
        ATTR,
        "http.response.status_code",
        Val::Int(i64::from(e.status)),
    );
    kv(
        out,
        ATTR,
        "network.protocol.version",
        Val::Str(http_version(e.protocol)),
    );
    kv(out, ATTR, "client.address", Val::Str(&s.ip));
    kv(
        out,
        ATTR,
        "http.request.body.size",
        Val::Int(e.bytes_in as i64),
    );
    kv(
        out,
        ATTR,
        "http.response.body.size",
        Val::Int(e.bytes_out as i64),
    );
    kv(
        out,
        ATTR,
        "weir.duration_ms",
        Val::F64(e.duration.as_secs_f64() * 1000.0),
    );
    kv(out, ATTR, "weir.route", Val::Str(&e.route));
    kv(out, ATTR, "weir.backend", Val::Str(&e.backend));
    kv(out, ATTR, "weir.listener", Val::Str(&e.listener));
    kv(out, ATTR, "weir.attempts", Val::Int(i64::from(e.attempts)));
    kv(out, ATTR, "weir.end", Val::Str(e.end));
    if let Some(h) = &e.host {
        kv(out, ATTR, "server.address", Val::Str(h));
    }
    if let Some(u) = &e.upstream {
        kv(out, ATTR, "weir.upstream", Val::Str(u));
    }
    if let Some(err) = e.error {
        kv(out, ATTR, "error.type", Val::Str(err));
    }
    bytes_field(out, 9, &e.trace_id.to_be_bytes());
    bytes_field(out, 10, &e.span_id.to_be_bytes());
    fixed64(out, 11, t);
    bytes_field(out, 12, b"weir.access");
}

/// A batch of access events as an encoded `ExportLogsServiceRequest` (one resource, one
/// scope), byte for byte what prost writes for the same message.
pub fn otlp_logs_request(
    batch: &[Arc<AccessEvent>],
    resource: &Resource,
    scope: &InstrumentationScope,
) -> Vec<u8> {
    let mut s = Scratch::default();
    let mut records = Vec::with_capacity(batch.len() * 700);
    let mut rec = std::mem::take(&mut s.record);
    for e in batch {
        rec.clear();
        otlp_log_record(&mut rec, e, &mut s);
        bytes_field(&mut records, 2, &rec); // ScopeLogs.log_records
    }
    envelope(resource, scope, &records)
}

/// `Export{Logs,Trace}ServiceRequest { 1: Resource{Logs,Spans} { 1: resource, 2:
/// Scope{Logs,Spans} { 1: scope, 2: items } } }`: the two requests have the same shape;
/// `records` holds the items, each already keyed and framed.
pub(crate) fn envelope(
    resource: &Resource,
    scope: &InstrumentationScope,
    records: &[u8],
) -> Vec<u8> {
    let scope = scope.encode_to_vec();
    let resource = resource.encode_to_vec();
    // ScopeLogs { scope: 1, log_records: 2 }
    let scope_logs_len = 1 + varint_len(scope.len() as u64) + scope.len() + records.len();
    // ResourceLogs { resource: 1, scope_logs: 2 }
    let resource_logs_len = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_logs_len as u64)
        + scope_logs_len;
    let mut out = Vec::with_capacity(1 + varint_len(resource_logs_len as u64) + resource_logs_len);
    // ExportLogsServiceRequest { resource_logs: 1 }
    key(&mut out, 1, LEN);
    varint(&mut out, resource_logs_len as u64);
    bytes_field(&mut out, 1, &resource);
    key(&mut out, 2, LEN);
    varint(&mut out, scope_logs_len as u64);
    bytes_field(&mut out, 1, &scope);
    out.extend_from_slice(records);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{
        LogRecord, ResourceLogs, ScopeLogs, SeverityNumber,
    };
    use std::net::SocketAddr;
    use std::time::Duration;

    fn event(i: u64) -> AccessEvent {
        crate::telemetry::shipper::sample_event(i)
    }

    /// Events covering every optional field and odd characters.
    fn events() -> Vec<AccessEvent> {
        let mut v = vec![event(0)];
        let mut e = event(1);
        e.client = "[2001:db8::1]:443".parse::<SocketAddr>().unwrap();
        e.method = http::Method::from_bytes(b"PURGE").unwrap();
        e.host = None;
        e.path = None;
        e.upstream = None;
        e.protocol = "h3";
        e.status = 503;
        e.error = Some("connect_error");
        e.end = "upstream_error";
        e.attempts = 3;
        e.bytes_in = u64::MAX;
        e.duration = Duration::new(12, 345_678_901);
        e.trace_id = 0;
        e.span_id = 1;
        v.push(e);
        let mut e = event(2);
        e.host = Some("h\u{e9}st\t\"q\"\\\u{1}\u{7f}".into());
        e.path = Some("/\u{1f600}/\n".into());
        e.route = "".into();
        e.listener = "l\r\x0c\x08".into();
        e.protocol = "h1";
        e.status = 404;
        e.time = UNIX_EPOCH;
        e.duration = Duration::ZERO;
        v.push(e);
        let mut e = event(3);
        e.time = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        v.push(e);
        v
    }

    // The encoders these replace, kept as the reference.

    fn old_access_line(e: &AccessEvent) -> String {
        format!(
            "{} \"{} {}{}\" {} {} {} {:.3}ms",
            e.client.ip(),
            e.method,
            e.host.as_deref().unwrap_or("-"),
            e.path.as_deref().unwrap_or("-"),
            e.status,
            e.bytes_in,
            e.bytes_out,
            e.duration.as_secs_f64() * 1000.0
        )
    }

    fn old_ecs_document(e: &AccessEvent, service: &str) -> serde_json::Value {
        let mut labels = serde_json::json!({
            "route": &*e.route,
            "backend": &*e.backend,
            "listener": &*e.listener,
            "end": e.end,
            "attempts": e.attempts.to_string(),
        });
        if let Some(u) = &e.upstream {
            labels["upstream"] = u.as_str().into();
        }
        let mut doc = serde_json::json!({
            "@timestamp": humantime::format_rfc3339_millis(e.time).to_string(),
            "ecs": { "version": "8.0.0" },
            "event": {
                "kind": "event",
                "category": ["web"],
                "dataset": "weir.access",
                "duration": e.duration.as_nanos() as u64,
                "outcome": if e.status >= 500 || e.error.is_some() { "failure" } else { "success" },
            },
            "message": old_access_line(e),
            "http": {
                "version": http_version(e.protocol),
                "request": { "method": e.method.as_str(), "body": { "bytes": e.bytes_in } },
                "response": { "status_code": e.status, "body": { "bytes": e.bytes_out } },
            },
            "url": { "path": e.path.as_deref().unwrap_or("-"), "domain": e.host.as_deref().unwrap_or("-") },
            "client": { "address": e.client.ip().to_string(), "ip": e.client.ip().to_string(), "port": e.client.port() },
            "trace": { "id": format!("{:032x}", e.trace_id) },
            "span": { "id": format!("{:016x}", e.span_id) },
            "service": { "name": service },
            "labels": labels,
        });
        if let Some(err) = e.error {
            doc["error"] = serde_json::json!({ "type": err });
        }
        doc
    }

    use crate::telemetry::otel::{kv_int, kv_str};

    fn old_log_record(e: &AccessEvent) -> LogRecord {
        let t = unix_nanos(e.time);
        let (sev, sev_text) = if e.status >= 500 {
            (SeverityNumber::Error, "ERROR")
        } else {
            (SeverityNumber::Info, "INFO")
        };
        let mut attrs = vec![
            kv_str("http.request.method", e.method.as_str()),
            kv_str("url.path", e.path.as_deref().unwrap_or("")),
            kv_int("http.response.status_code", i64::from(e.status)),
            kv_str("network.protocol.version", http_version(e.protocol)),
            kv_str("client.address", e.client.ip().to_string()),
            kv_int("http.request.body.size", e.bytes_in as i64),
            kv_int("http.response.body.size", e.bytes_out as i64),
            KeyValue {
                key: "weir.duration_ms".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::DoubleValue(
                        e.duration.as_secs_f64() * 1000.0,
                    )),
                }),
            },
            kv_str("weir.route", &*e.route),
            kv_str("weir.backend", &*e.backend),
            kv_str("weir.listener", &*e.listener),
            kv_int("weir.attempts", i64::from(e.attempts)),
            kv_str("weir.end", e.end),
        ];
        if let Some(h) = &e.host {
            attrs.push(kv_str("server.address", h.as_str()));
        }
        if let Some(u) = &e.upstream {
            attrs.push(kv_str("weir.upstream", u.as_str()));
        }
        if let Some(err) = e.error {
            attrs.push(kv_str("error.type", err));
        }
        LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: t,
            severity_number: sev as i32,
            severity_text: sev_text.into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "{} {} {}{} {} {}",
                    e.client.ip(),
                    e.method,
                    e.host.as_deref().unwrap_or("-"),
                    e.path.as_deref().unwrap_or("-"),
                    e.status,
                    e.bytes_out
                ))),
            }),
            attributes: attrs,
            dropped_attributes_count: 0,
            flags: 0,
            trace_id: e.trace_id.to_be_bytes().to_vec(),
            span_id: e.span_id.to_be_bytes().to_vec(),
            event_name: "weir.access".into(),
        }
    }

    #[test]
    fn json_strings_escape_like_serde_json() {
        let mut all = String::new();
        for c in (0u32..0x300).filter_map(char::from_u32) {
            all.push(c);
        }
        for s in ["", "plain", "a\"b\\c", "\u{1f600}\u{2028}", all.as_str()] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_and_timestamps_match() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        // Every day over 1960..2110 (before 1970: as 1970), and a few instants in a day.
        for day in -3650i64..51_000 {
            for secs_in_day in [0u64, 1, 3599, 43_200, 86_399] {
                let secs = (day.max(0) as u64) * 86_400 + secs_in_day;
                let t = UNIX_EPOCH + Duration::from_millis(secs * 1000 + (day as u64 % 1000));
                let mut out = Vec::new();
                rfc3339_millis(&mut out, t);
                let want = humantime::format_rfc3339_millis(t).to_string();
                assert_eq!(String::from_utf8(out).unwrap(), want);
            }
        }
        let mut out = Vec::new();
        rfc3339_millis(&mut out, UNIX_EPOCH + Duration::from_secs(300_000_000_000));
        assert_eq!(out, b"9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn ecs_documents_are_the_bytes_serde_json_wrote() {
        let evs: Vec<Arc<AccessEvent>> = events().into_iter().map(Arc::new).collect();
        for e in &evs {
            let mut out = Vec::new();
            ecs_json(&mut out, e, "edge \"1\"", &mut Scratch::default());
            let want = serde_json::to_vec(&old_ecs_document(e, "edge \"1\"")).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
        let docs: Vec<serde_json::Value> =
            evs.iter().map(|e| old_ecs_document(e, "weir")).collect();
        assert_eq!(ecs_batch(&evs, "weir"), serde_json::to_vec(&docs).unwrap());
        assert_eq!(ecs_batch(&evs[..1], "weir").first(), Some(&b'['));
        let d: serde_json::Value = serde_json::from_slice(&ecs_batch(&evs, "x")).unwrap();
        assert_eq!(d[1]["error"]["type"], "connect_error");
        assert_eq!(d[1]["client"]["ip"], "2001:db8::1");
        assert_eq!(d[0]["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(d[0]["event"]["duration"], 1_500_000);
    }


    #[test]
    fn derived_ecs_documents_are_the_same_bytes() {
        let evs: Vec<Arc<AccessEvent>> = events().into_iter().map(Arc::new).collect();
        for e in &evs {
            let mut out = Vec::new();
            derived::ecs_json(&mut out, e, "edge \"1\"", &mut Scratch::default());
            let want = serde_json::to_vec(&old_ecs_document(e, "edge \"1\"")).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
        assert_eq!(
            ecs_batch_with(&evs, "weir", EcsEncoder::Derived),
            ecs_batch_with(&evs, "weir", EcsEncoder::Hand)
        );
    }

    /// Encodes `WEIR_ECS_EVENTS` (default 100,000) events with `WEIR_ECS_ENCODER`
    /// (`hand` | `derived`), in batches of 100; run under
    /// `valgrind --tool=callgrind --toggle-collect='*ecs_cost_run*'` for instructions per event.
    #[test]
    #[ignore]
    fn ecs_cost() {
        let enc = match std::env::var("WEIR_ECS_ENCODER").as_deref() {
            Ok("derived") => EcsEncoder::Derived,
            _ => EcsEncoder::Hand,
        };
        let n: usize = std::env::var("WEIR_ECS_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let evs: Vec<Arc<AccessEvent>> = (0..100)
            .map(|i| Arc::new(events()[i % 4].clone()))
            .collect();
        let total = ecs_cost_run(&evs, n / 100, enc);
        eprintln!("{enc:?}: {n} events, {total} bytes");
    }

    #[inline(never)]
    fn ecs_cost_run(evs: &[Arc<AccessEvent>], batches: usize, enc: EcsEncoder) -> usize {
        let mut total = 0;
        for _ in 0..batches {
            total += std::hint::black_box(ecs_batch_with(std::hint::black_box(evs), "weir", enc)).len();
        }
        total
    }

    #[test]
    fn otlp_logs_are_the_bytes_prost_wrote() {
        let evs: Vec<Arc<AccessEvent>> = events().into_iter().map(Arc::new).collect();
        let resource = Resource {
            attributes: vec![kv_str("service.name", "svc"), kv_int("n", -5)],
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        let scope = InstrumentationScope {
            name: "weir-dataplane".into(),
            version: "0.1.0".into(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        };
        for n in [0, 1, evs.len()] {
            let want = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: evs[..n].iter().map(|e| old_log_record(e)).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            assert_eq!(
                otlp_logs_request(&evs[..n], &resource, &scope),
                want.encode_to_vec(),
                "{n} records"
            );
        }
        // A long body needs a two-byte length.
        let mut e = event(0);
        e.path = Some("/".repeat(300));
        let e = [Arc::new(e)];
        let got = ExportLogsServiceRequest::decode(&otlp_logs_request(&e, &resource, &scope)[..])
            .unwrap();
        assert_eq!(
            got.resource_logs[0].scope_logs[0].log_records[0],
            old_log_record(&e[0])
        );
    }

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

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
