//! `traceparent` / `tracestate` handling: no panic; a `traceparent` that parses keeps its
//! trace id and sampled flag through what the proxy sends upstream, and a restarted trace
//! drops the caller's `tracestate`.
//!
//! Input: the `traceparent` value(s) (separated by `\n`), then a NUL, then `tracestate`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weir_dataplane::tracecontext::{parse_traceparent, TraceContext};

fuzz_target!(|data: &[u8]| {
    let (parents, state) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let mut headers = HeaderMap::new();
    let mut lines = 0;
    for p in parents.split(|b| *b == b'\n') {
        let _ = parse_traceparent(p);
        if let Ok(v) = HeaderValue::from_bytes(p) {
            headers.append("traceparent", v);
            lines += 1;
        }
    }
    if let Some(Ok(v)) = state.map(HeaderValue::from_bytes) {
        headers.insert("tracestate", v);
    }
    let continued = match headers.get_all("traceparent").iter().collect::<Vec<_>>()[..] {
        [one] if lines == 1 => parse_traceparent(one.as_bytes()),
        _ => None,
    };
    let ctx = TraceContext::from_headers(&headers);
    let mut out = headers.clone();
    ctx.inject(&mut out);
    let sent = out.get("traceparent").expect("inject sets traceparent");
    let (trace, span, flags) =
        parse_traceparent(sent.as_bytes()).expect("the traceparent we send parses");
    assert_eq!(trace, ctx.trace_id().0);
    assert_eq!(span, ctx.span_id().0);
    match continued {
        Some((t, _, f)) => {
            assert_eq!(trace, t, "the caller's trace id is kept");
            assert_eq!(flags, f & 1, "the sampled flag is kept");
            assert_eq!(out.get("tracestate"), headers.get("tracestate"));
        }
        None => assert!(
            out.get("tracestate").is_none(),
            "a new trace drops tracestate"
        ),
    }
});
