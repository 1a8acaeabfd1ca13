//! The ECS 8.0 JSON encoder of `httpJson` sinks, writing straight into a batch's body.
//!
//! The request path only captures an [`AccessEvent`] (moved fields, numbers, no formatting);
//! the sink's task calls [`ecs_batch`]. No per-event `serde_json::Value` is built: each field
//! is written in place, with one scratch buffer reused across a batch. The bytes are the same
//! as serializing the equivalent `serde_json::Value` (keys sorted, compact); the tests compare
//! both.
//!
//! Hand-written rather than `#[derive(Serialize)]` structs: the derived version (the same
//! document as nested structs, `serde_json::to_writer`, `itoa`, `humantime` through
//! `collect_str`) wrote the same bytes but cost 14,639 instructions per event against 6,776
//! here (callgrind, release profile, 20,000 events; BENCHMARKS.md "ECS encoder: hand-written
//! or serde-derived"). serde_json escapes every key at run time (~7,500 instructions per
//! event in `format_escaped_str_contents`) and `collect_str` goes through `core::fmt` for the
//! timestamp and the hex ids (~2,500).

use crate::telemetry::event::AccessEvent;
use crate::telemetry::sink::format::{access_line, digits, http_version, set_ip, Scratch};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const HEX: &[u8; 16] = b"0123456789abcdef";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::event::sample_events as events;
    use std::time::Duration;

    // The encoder this replaces, kept as the reference.

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
}
