//! The body-field extractor (metric-name routing): `jsonPath` parsing, the first value it
//! reaches in a JSON body, and the field verdict. No panic; a verdict on a complete body is
//! never "need the body"; what `eval` matches on is what `first_value` extracts.
//!
//! Input: a flags byte (bit 0 regex, bit 1 `onBodyError: reject`, bit 2 body complete,
//! bit 3 an `x-metric` header carries the value), then `jsonPath\nvalue\nbody`.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weir_config::{parse_json_path, FieldMatch};
use weir_dataplane::bodymatch::{eval, first_value, BodyView, FieldCond, Verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let (Some(path), Some(value), body) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(path), Ok(value)) = (std::str::from_utf8(path), std::str::from_utf8(value)) else {
        return;
    };
    let body = Bytes::copy_from_slice(body.unwrap_or_default());
    let steps = parse_json_path(path);
    let m: FieldMatch = match serde_json::from_value(serde_json::json!({
        "jsonPath": path,
        "header": (flags & 8 != 0).then_some("x-metric"),
        "type": if flags & 1 != 0 { "RegularExpression" } else { "Exact" },
        "value": value,
        "onBodyError": if flags & 2 != 0 { "reject" } else { "noMatch" },
    })) {
        Ok(m) => m,
        Err(_) => return,
    };
    let Ok(cond) = FieldCond::new(&m) else {
        assert!(
            steps.is_err() || flags & 1 != 0,
            "only a bad path or regex is refused"
        );
        return;
    };
    let mut headers = HeaderMap::new();
    if flags & 8 != 0 {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert("x-metric", v);
        }
    }
    let complete = flags & 4 != 0;
    let view = BodyView::new(body.clone(), complete);
    let verdict = eval(std::slice::from_ref(&cond), &headers, Some(&view));
    if complete {
        assert!(
            !matches!(verdict, Verdict::NeedBody),
            "a complete body decides"
        );
    }
    let _ = eval(std::slice::from_ref(&cond), &headers, None);
    // Exact match on the extracted value, body only, complete: eval agrees with first_value.
    if let (Ok(steps), true, 0) = (&steps, complete, flags & 9) {
        let extracted = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| first_value(&v, steps));
        if extracted.as_deref() == Some(value) {
            assert!(matches!(verdict, Verdict::Yes), "{verdict:?}");
        } else if extracted.is_some() {
            assert!(matches!(verdict, Verdict::No), "{verdict:?}");
        }
    }
});
