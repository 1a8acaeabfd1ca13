//! KairosDB mode against two fake KairosDB backends on real sockets: `multi` splits a query by
//! metric name, queries each backend with only its metrics and merges the answers in the
//! original order; `simple` passes the query through to the first metric's backend.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a fake backend received: (path, raw body).
type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A fake KairosDB: answers `/api/v1/datapoints/query[/tags]` with one `queries` entry per
/// requested metric, in request order, with values that name the server. A metric named
/// `*.broken` makes it answer 500 with a KairosDB error body.
async fn fake_kairos(name: &'static str) -> (SocketAddr, Seen) {
    fake_kairos_with(name, Arc::new(InFlight::default())).await
}

/// Requests in flight across the fake backends sharing it, and the most seen at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Like [`fake_kairos`]; a metric named `*.delay` makes it wait 200ms and `*.slow` 5s before
/// answering, counted in `in_flight` meanwhile.
async fn fake_kairos_with(name: &'static str, in_flight: Arc<InFlight>) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    let in_flight = in_flight.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        s.lock().unwrap().push((path.clone(), body.clone()));
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let wait = if text.contains(".slow\"") {
                            5000
                        } else if text.contains(".delay\"") {
                            200
                        } else {
                            0
                        };
                        let n = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
                        in_flight.peak.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                        in_flight.now.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(answer(name, &path, &body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn answer(server: &str, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let q: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let metrics = q["metrics"].as_array().cloned().unwrap_or_default();
    if metrics
        .iter()
        .any(|m| m["name"].as_str().unwrap_or("").ends_with(".broken"))
    {
        return Response::builder()
            .status(500)
            .body(Full::new(Bytes::from(
                r#"{"errors":["storage unavailable"]}"#,
            )))
            .unwrap();
    }
    let tags_only = path.ends_with("/tags");
    let queries: Vec<Value> = metrics
        .iter()
        .map(|m| expected_query(server, m["name"].as_str().unwrap_or(""), tags_only))
        .collect();
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "queries": queries }).to_string(),
        )))
        .unwrap()
}

/// The `queries` entry the fake `server` gives for `metric`.
fn expected_query(server: &str, metric: &str, tags_only: bool) -> Value {
    let mut result = json!({
        "name": metric,
        "tags": { "host": [format!("{server}-1")], "served_by": [server] },
    });
    if !tags_only {
        result["group_by"] = json!([{ "name": "type", "type": "number" }]);
        result["values"] = json!([
            [1_700_000_000_000u64, metric.len()],
            [1_700_000_060_000u64, 2]
        ]);
    } else {
        result["values"] = json!([]);
    }
    json!({ "sample_size": if tags_only { 0 } else { 2 }, "results": [result] })
}

fn config(port: u16, ka: SocketAddr, kb: SocketAddr) -> String {
    r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  ka: { endpoints: ["KA"] }
  kb: { endpoints: ["KB"] }
routes:
  - name: multi
    hostnames: [multi.test]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /api/v1/datapoints/query }, method: POST }]
        kairos:
          mode: multi
          maxConcurrency: 2
          backendTimeout: 10s
          metricRoutes:
            - { type: RegularExpression, value: 'cpu\..*', backend: ka }
            - { type: RegularExpression, value: 'mem\..*', backend: kb }
        backendRefs: [{ name: ka }]
  - name: partial
    hostnames: [partial.test]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /api/v1/datapoints/query } }]
        kairos:
          mode: multi
          allowPartial: true
          metricRoutes: [{ type: RegularExpression, value: 'mem\..*', backend: kb }]
        backendRefs: [{ name: ka }]
  - name: bounded
    hostnames: [bounded.test]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /api/v1/datapoints/query } }]
        kairos:
          mode: multi
          maxConcurrency: 1
          backendTimeout: 1s
          metricRoutes:
            - { type: RegularExpression, value: 'cpu\..*', backend: ka }
            - { type: RegularExpression, value: 'mem\..*', backend: kb }
        backendRefs: [{ name: ka }]
  - name: simple
    hostnames: [simple.test]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /api/v1/datapoints/query } }]
        kairos:
          mode: simple
          metricRoutes: [{ value: mem.free, backend: kb }]
        backendRefs: [{ name: ka }]
"#
    .replace("PORT", &port.to_string())
    .replace("KA", &ka.to_string())
    .replace("KB", &kb.to_string())
}

fn query_req(port: u16, host: &str, path: &str, body: &[u8]) -> Request<Body> {
    Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(full(Bytes::copy_from_slice(body)))
        .unwrap()
}

fn metric_names(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_splits_and_merges_in_order() {
    let (ka, seen_a) = fake_kairos("ka").await;
    let (kb, seen_b) = fake_kairos("kb").await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, ka, kb)).await;
    let c = client();

    let query = json!({
        "start_relative": { "value": 1, "unit": "hours" },
        "cache_time": 0,
        "metrics": [
            { "name": "cpu.user", "tags": { "host": ["h1"] }, "aggregators": [{ "name": "avg", "sampling": { "value": 1, "unit": "minutes" } }] },
            { "name": "mem.free", "group_by": [{ "name": "tag", "tags": ["host"] }] },
            { "name": "cpu.sys" },
            { "name": "other.metric" }
        ]
    });
    let body = query.to_string();
    let r = send(
        &c,
        query_req(
            port,
            "multi.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let expected = json!({ "queries": [
        expected_query("ka", "cpu.user", false),
        expected_query("kb", "mem.free", false),
        expected_query("ka", "cpu.sys", false),
        // No metric route: the rule's first backendRef.
        expected_query("ka", "other.metric", false),
    ]});
    assert_eq!(r.json(), expected);
    assert!(r.header("x-weir-partial").is_none());

    // Each backend got one request with only its metrics, everything else unchanged.
    let a = seen_a.lock().unwrap().clone();
    let b = seen_b.lock().unwrap().clone();
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(
        metric_names(&a[0].1),
        ["cpu.user", "cpu.sys", "other.metric"]
    );
    assert_eq!(metric_names(&b[0].1), ["mem.free"]);
    let sub_a: Value = serde_json::from_slice(&a[0].1).unwrap();
    assert_eq!(sub_a["start_relative"], query["start_relative"]);
    assert_eq!(sub_a["cache_time"], 0);
    assert_eq!(sub_a["metrics"][0], query["metrics"][0]);
    let sub_b: Value = serde_json::from_slice(&b[0].1).unwrap();
    assert_eq!(sub_b["metrics"][0], query["metrics"][1]);

    // The tags endpoint has the same shapes.
    let r = send(
        &c,
        query_req(
            port,
            "multi.test",
            "/api/v1/datapoints/query/tags",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({ "queries": [
            expected_query("ka", "cpu.user", true),
            expected_query("kb", "mem.free", true),
            expected_query("ka", "cpu.sys", true),
            expected_query("ka", "other.metric", true),
        ]})
    );
    assert_eq!(seen_b.lock().unwrap()[1].0, "/api/v1/datapoints/query/tags");

    // All metrics on one backend: the query goes through unchanged (byte for byte).
    let one = br#"{"start_absolute":1,"metrics":[{"name":"mem.a"},{"name":"mem.b"}]}"#;
    let r = send(
        &c,
        query_req(port, "multi.test", "/api/v1/datapoints/query", one),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&seen_b.lock().unwrap()[2].1[..], &one[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_backend_failure_is_an_error_unless_partial_is_allowed() {
    let (ka, _) = fake_kairos("ka").await;
    let (kb, _) = fake_kairos("kb").await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, ka, kb)).await;
    let c = client();
    let body = json!({
        "start_relative": { "value": 5, "unit": "minutes" },
        "metrics": [{ "name": "cpu.user" }, { "name": "mem.broken" }, { "name": "mem.free" }]
    })
    .to_string();

    let r = send(
        &c,
        query_req(
            port,
            "multi.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let v = r.json();
    let errors = v["errors"].as_array().expect("KairosDB error shape");
    assert_eq!(errors.len(), 1, "{v}");
    let msg = errors[0].as_str().unwrap();
    for part in [
        "\"kb\"",
        "mem.broken",
        "mem.free",
        "500",
        "storage unavailable",
    ] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
    assert!(!msg.contains("cpu.user"), "{msg}");

    // allowPartial: the other backend's results, the failed metrics empty and named.
    let r = send(
        &c,
        query_req(
            port,
            "partial.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-weir-partial"), Some("mem.broken,mem.free"));
    let empty = |name: &str| json!({ "sample_size": 0, "results": [{ "name": name, "group_by": [], "tags": {}, "values": [] }] });
    assert_eq!(
        r.json(),
        json!({ "queries": [
            expected_query("ka", "cpu.user", false),
            empty("mem.broken"),
            empty("mem.free"),
        ]})
    );

    // A dead backend (connection refused) fails the same way, naming it.
    let dead = free_port();
    let port2 = free_port();
    let dead_addr: SocketAddr = format!("127.0.0.1:{dead}").parse().unwrap();
    let _dp2 = Dataplane::start(&config(port2, ka, dead_addr)).await;
    let r = send(
        &c,
        query_req(
            port2,
            "multi.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let msg = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(msg.contains("\"kb\"") && msg.contains("502"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_mode_passes_the_query_through() {
    let (ka, seen_a) = fake_kairos("ka").await;
    let (kb, seen_b) = fake_kairos("kb").await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, ka, kb)).await;
    let c = client();

    let body = br#"{ "start_relative": {"value": 1, "unit": "days"}, "metrics": [ {"name": "mem.free"}, {"name": "cpu.user"} ] }"#;
    let r = send(
        &c,
        query_req(port, "simple.test", "/api/v1/datapoints/query", body),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // The first metric picks kb, which answers for both (no merge in simple mode).
    assert_eq!(
        r.json(),
        json!({ "queries": [expected_query("kb", "mem.free", false), expected_query("kb", "cpu.user", false)] })
    );
    assert_eq!(&seen_b.lock().unwrap()[0].1[..], &body[..], "byte for byte");
    assert!(seen_a.lock().unwrap().is_empty());

    // X-METRICNAME wins over the body.
    let mut req = query_req(port, "simple.test", "/api/v1/datapoints/query", body);
    req.headers_mut()
        .insert("x-metricname", "cpu.user".parse().unwrap());
    let r = send(&c, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(seen_a.lock().unwrap().len(), 1);

    // Not KairosDB JSON: a KairosDB-shaped 400.
    let r = send(
        &c,
        query_req(port, "simple.test", "/api/v1/datapoints/query", b"{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["errors"][0].as_str().unwrap().contains("metrics"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_concurrency_is_bounded_and_backends_time_out() {
    let in_flight = Arc::new(InFlight::default());
    let (ka, _) = fake_kairos_with("ka", in_flight.clone()).await;
    let (kb, _) = fake_kairos_with("kb", in_flight.clone()).await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, ka, kb)).await;
    let c = client();

    // maxConcurrency 1: the two backends are asked one after the other.
    let body = json!({ "start_absolute": 1, "metrics": [{ "name": "cpu.delay" }, { "name": "mem.delay" }] })
        .to_string();
    let r = send(
        &c,
        query_req(
            port,
            "bounded.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({ "queries": [expected_query("ka", "cpu.delay", false), expected_query("kb", "mem.delay", false)] })
    );
    assert_eq!(in_flight.peak.load(Ordering::SeqCst), 1);

    // backendTimeout 1s against a backend that answers after 5s.
    let body =
        json!({ "start_absolute": 1, "metrics": [{ "name": "cpu.fast" }, { "name": "mem.slow" }] })
            .to_string();
    let r = send(
        &c,
        query_req(
            port,
            "bounded.test",
            "/api/v1/datapoints/query",
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let msg = r.json()["errors"][0].as_str().unwrap().to_string();
    assert!(
        msg.contains("\"kb\"") && msg.contains("mem.slow") && msg.contains("within 1s"),
        "{msg}"
    );
}
