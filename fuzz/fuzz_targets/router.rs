//! Router construction and lookup: arbitrary route conditions (hosts, paths, methods,
//! headers, query, body fields) compiled through the dataplane's own `runtime::compile`, then
//! arbitrary requests looked up. No panic; a lookup is deterministic; a complete body always
//! decides (never "need the body" again).
//!
//! Input: JSON `{"routes": [Route], "requests": [{"host", "method", "path", "query",
//! "headers": [[name, value]], "body"}]}`. Route names become `r0`, `r1`, ... and every rule
//! goes to one backend `b`, so the metric families stay bounded across runs; `extAuth` is
//! dropped (it builds a TLS client per compile, which is not what this target is about).
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::{json, Value};
use weir_dataplane::bodymatch::BodyView;
use weir_dataplane::proxy::normalize_path;
use weir_dataplane::router::{Lookup, RequestView};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Req {
    host: String,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Deserialize)]
struct In {
    routes: Vec<Value>,
    #[serde(default)]
    requests: Vec<Req>,
}

fn outcome(l: &Lookup) -> String {
    match l {
        Lookup::Rule(r) => format!("rule {}#{}", r.route, r.rule_index),
        Lookup::None => "none".into(),
        Lookup::NeedBody => "need body".into(),
        Lookup::Reject(s, c, _) => format!("reject {s} {c}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<In>(data) else {
        return;
    };
    let mut routes = input.routes;
    routes.truncate(8);
    for (i, r) in routes.iter_mut().enumerate() {
        let Some(o) = r.as_object_mut() else { return };
        o.insert("name".into(), json!(format!("r{i}")));
        o.remove("extAuth");
        if let Some(rules) = o.get_mut("rules").and_then(Value::as_array_mut) {
            rules.truncate(8);
            for rule in rules {
                if let Some(rule) = rule.as_object_mut() {
                    rule.remove("extAuth");
                    rule.remove("kairos");
                    rule.insert("backendRefs".into(), json!([{ "name": "b" }]));
                }
            }
        }
    }
    let snap = json!({
        "version": "fuzz",
        "backends": { "b": { "endpoints": ["127.0.0.1:9"] } },
        "routes": routes,
    });
    let Ok(snap) = weir_config::parse_json(snap.to_string().as_bytes()) else {
        return;
    };
    let Ok(rt) = weir_dataplane::runtime::compile(snap, None) else {
        return;
    };
    for req in input.requests.iter().take(16) {
        let method = Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
        let mut headers = HeaderMap::new();
        for (n, v) in &req.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(n, v);
            }
        }
        let host = req.host.to_ascii_lowercase();
        let path = normalize_path(&req.path);
        let body = BodyView::new(Bytes::from(req.body.clone()), true);
        let view = |body| RequestView {
            host: &host,
            method: &method,
            path: &path,
            query: req.query.as_deref(),
            headers: &headers,
            body,
        };
        let first = rt.router.lookup(&view(None));
        assert_eq!(outcome(&first), outcome(&rt.router.lookup(&view(None))));
        if let Lookup::NeedBody = first {
            let with_body = rt.router.lookup(&view(Some(&body)));
            assert!(
                !matches!(with_body, Lookup::NeedBody),
                "a complete body must decide"
            );
        }
    }
});
