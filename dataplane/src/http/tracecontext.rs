//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `traceparent` in, a child
//! `traceparent` out.
//!
//! Hand-written on purpose: the format is one fixed-layout header (`00-<32 hex>-<16 hex>-<2 hex>`),
//! so parsing is a few byte checks with no allocation, while the OpenTelemetry propagator
//! would bring the whole SDK (and its context machinery) onto the request path for it.
//!
//! Every request gets a span id of its own (the proxy's hop). With a valid incoming
//! `traceparent` the trace id and sampled flag are kept and the upstream sees the proxy's span
//! id as its parent; `tracestate` passes through untouched. Without one (or with an invalid
//! one, or several) a new trace is started, sampled, and any `tracestate` is dropped, as the
//! spec requires. When spans are exported, [`crate::telemetry::otel::Tracing::start`] replaces the sampled flag
//! with the sampler's decision and each upstream try gets its own span id.

use http::header::{HeaderMap, HeaderName};
use std::fmt;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace position of one request as it passes through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span id, when the request carried a valid `traceparent`.
    pub parent_id: Option<u64>,
    /// The proxy's span: the parent id the upstream sees.
    pub span_id: u64,
    /// Trace flags sent upstream (only `sampled`, bit 0, is defined for version 00).
    pub flags: u8,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None, // the spec allows lowercase only
    }
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    s.iter()
        .try_fold(0u128, |acc, &b| Some((acc << 4) | u128::from(hex_val(b)?)))
}

/// Parses a `traceparent` value: `(trace id, parent id, flags)`; `None` when invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u128(&v[0..2])? as u8;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        // A later version may append fields after another dash.
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace = hex_u128(&v[3..35])?;
    let parent = hex_u128(&v[36..52])? as u64;
    let flags = hex_u128(&v[53..55])? as u8;
    if trace == 0 || parent == 0 {
        return None;
    }
    Some((trace, parent, flags))
}

fn nonzero_u64() -> u64 {
    loop {
        let x = fastrand::u64(..);
        if x != 0 {
            return x;
        }
    }
}

impl TraceContext {
    /// Continues the trace of `headers` (exactly one valid `traceparent`), or starts one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parsed = match (values.next(), values.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id: nonzero_u64(),
                flags: flags & 0x01,
            },
            None => TraceContext::start(),
        }
    }

    /// A new trace (sampled), as [`TraceContext::from_headers`] starts for a request without a
    /// valid `traceparent`.
    pub fn start() -> TraceContext {
        TraceContext {
            trace_id: (u128::from(nonzero_u64()) << 64) | u128::from(fastrand::u64(..)),
            parent_id: None,
            span_id: nonzero_u64(),
            flags: 0x01,
        }
    }

    /// Sets the `traceparent` the upstream gets (this hop as the parent); a restarted trace
    /// also loses the caller's `tracestate`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if self.parent_id.is_none() {
            headers.remove(&TRACESTATE);
        }
        headers.insert(
            TRACEPARENT.clone(),
            crate::http::fastfmt::traceparent(self.trace_id, self.span_id, self.flags),
        );
    }

    /// The `traceparent` (and `tracestate` removal) [`TraceContext::inject`] would make, for
    /// the upstream encoder to write ([`crate::http::headers::Added::set_trace`]) when nothing
    /// before it reads them from the request's map.
    pub fn added(&self) -> crate::http::headers::AddedTrace {
        crate::http::headers::AddedTrace {
            trace_id: self.trace_id.to_be_bytes(),
            span_id: self.span_id.to_be_bytes(),
            flags: self.flags,
            drop_state: self.parent_id.is_none(),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    pub fn span_id(&self) -> SpanId {
        SpanId(self.span_id)
    }
}

/// Lowercase hex (32 digits) for logs, without allocating.
#[derive(Clone, Copy)]
pub struct TraceId(pub u128);
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Lowercase hex (16 digits) for logs.
#[derive(Clone, Copy)]
pub struct SpanId(pub u64);
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        assert_eq!(
            parse_traceparent(EXAMPLE.as_bytes()),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 0x01))
        );
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad:?}");
        }
        // A future version with extra fields is read for the known ones.
        assert!(parse_traceparent(format!("cc{}-what-ever", &EXAMPLE[2..]).as_bytes()).is_some());
    }

    #[test]
    fn continues_or_starts() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(EXAMPLE));
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        t.inject(&mut h);
        let out = h["traceparent"].to_str().unwrap().to_string();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(&out[36..52], format!("{}", t.span_id()));
        assert!(h.contains_key("tracestate"));

        let mut bad = HeaderMap::new();
        bad.insert("traceparent", HeaderValue::from_static("garbage"));
        bad.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        let n = TraceContext::from_headers(&bad);
        assert_eq!(n.parent_id, None);
        assert_ne!(n.trace_id, 0);
        n.inject(&mut bad);
        assert!(!bad.contains_key("tracestate"));
        let (trace, parent, flags) =
            parse_traceparent(bad["traceparent"].as_bytes()).expect("valid traceparent out");
        assert_eq!((trace, parent, flags), (n.trace_id, n.span_id, 1));
    }

    /// The trace the upstream encoder writes, merged into a map (as hyper's client and h2c
    /// get it), is what `inject` puts there: the same `traceparent`, `tracestate` kept for a
    /// continued trace and dropped for a restarted one.
    #[test]
    fn added_trace_merges_as_inject() {
        for incoming in [EXAMPLE, "garbage"] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_static(incoming));
            h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
            h.insert("x-other", HeaderValue::from_static("1"));
            let t = TraceContext::from_headers(&h);
            let mut injected = h.clone();
            t.inject(&mut injected);
            let mut added = crate::http::headers::Added::new();
            added.set_trace(t.added());
            let mut merged = h.clone();
            added.merge_into(&mut merged);
            assert_eq!(merged, injected, "{incoming}");
            assert_eq!(merged.contains_key("tracestate"), incoming == EXAMPLE);
        }
    }
}
