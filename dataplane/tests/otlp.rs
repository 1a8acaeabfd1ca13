//! OTLP export on real sockets: an in-test OTLP/HTTP receiver decodes what the dataplane sends
//! with the `opentelemetry-proto` types. Spans carry the caller's trace id and the parent the
//! upstream saw, retries show as sibling attempt spans, sampling follows the ratio and the
//! caller's flag, `otlp` sinks ship access logs and metrics, the `OTEL_*` environment alone
//! sets up export, and a receiver that never answers costs no request but counts drops.
//!
//! Waits have only the hang guard as a deadline; assertions are on counts and values.

mod common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// One POST the receiver got.
#[derive(Debug)]
struct Post {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An OTLP/HTTP receiver: answers 200 to every POST and hands it over.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<Post>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let _ = tx.send(Post {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

type GrpcBody = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>>,
>;

/// An OTLP/gRPC receiver (HTTP/2 prior knowledge): unwraps the gRPC frame, maps the service
/// method to the OTLP/HTTP path (`/v1/traces`, ...) for [`Collected`], answers `grpc-status: 0`
/// in trailers.
async fn grpc_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<Post>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        assert_eq!(body[0], 0, "uncompressed gRPC frame");
                        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
                        assert_eq!(len as usize, body.len() - 5, "one whole gRPC frame");
                        let path = match parts.uri.path() {
                            "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => {
                                "/v1/traces"
                            }
                            "/opentelemetry.proto.collector.logs.v1.LogsService/Export" => {
                                "/v1/logs"
                            }
                            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => {
                                "/v1/metrics"
                            }
                            other => panic!("unexpected gRPC method {other}"),
                        };
                        let _ = tx.send(Post {
                            path: path.to_string(),
                            headers: parts.headers,
                            body: body.slice(5..),
                        });
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames = vec![
                            Ok(hyper::body::Frame::data(Bytes::from_static(&[
                                0, 0, 0, 0, 0,
                            ]))),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ];
                        let body: GrpcBody =
                            http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    (addr, rx)
}

/// Collects decoded things from the receiver until `done` says so (hang guard only).
struct Collected {
    spans: Vec<Span>,
    resources: Vec<Vec<KeyValue>>,
    logs: Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>,
    metrics: Vec<opentelemetry_proto::tonic::metrics::v1::Metric>,
    posts: Vec<(String, HeaderMap)>,
}

impl Collected {
    fn new() -> Collected {
        Collected {
            spans: Vec::new(),
            resources: Vec::new(),
            logs: Vec::new(),
            metrics: Vec::new(),
            posts: Vec::new(),
        }
    }

    fn add(&mut self, p: Post) {
        let ct = &p.headers["content-type"];
        if ct == "application/grpc" {
            assert_eq!(p.headers["te"], "trailers");
        } else {
            assert_eq!(ct, "application/x-protobuf", "{}", p.path);
        }
        match p.path.as_str() {
            "/v1/traces" => {
                let r = ExportTraceServiceRequest::decode(p.body.clone()).expect("decodes");
                for rs in r.resource_spans {
                    self.resources
                        .push(rs.resource.map(|r| r.attributes).unwrap_or_default());
                    for ss in rs.scope_spans {
                        self.spans.extend(ss.spans);
                    }
                }
            }
            "/v1/logs" => {
                let r = ExportLogsServiceRequest::decode(p.body.clone()).expect("decodes");
                for rl in r.resource_logs {
                    for sl in rl.scope_logs {
                        self.logs.extend(sl.log_records);
                    }
                }
            }
            "/v1/metrics" => {
                let r = ExportMetricsServiceRequest::decode(p.body.clone()).expect("decodes");
                for rm in r.resource_metrics {
                    for sm in rm.scope_metrics {
                        self.metrics.extend(sm.metrics);
                    }
                }
            }
            other => panic!("unexpected OTLP path {other}"),
        }
        self.posts.push((p.path, p.headers));
    }

    async fn until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Post>,
        what: &str,
        done: impl Fn(&Collected) -> bool,
    ) {
        while !done(self) {
            match tokio::time::timeout(HANG_GUARD, rx.recv()).await {
                Ok(Some(p)) => self.add(p),
                _ => panic!("receiver never got {what}"),
            }
        }
    }

    fn trace(&self, trace_id: &str) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|k| k.key == key)
        .and_then(|k| k.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn listener(port: u16) -> serde_json::Value {
    json!([{"name": "web", "address": format!("127.0.0.1:{port}"), "protocol": "http"}])
}

async fn sinks(dp: &Dataplane) -> serde_json::Value {
    get(&client(), &dp.admin_url("/sinks")).await.json()
}

/// Polls `GET /sinks` until sink `name` has counted `n` shipped items (the receiver gets a
/// batch before the dataplane sees the answer and counts it).
async fn wait_shipped(dp: &Dataplane, name: &str, n: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let s = sinks(dp).await;
        let got = s["sinks"][name]["shipped"].as_u64().unwrap_or(0);
        assert!(got <= n, "{name}: shipped {got}, expected {n}: {s}");
        if got == n {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: shipped stays {got}, expected {n}: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The upstream's `traceparent` as the echo backend reports it.
fn upstream_traceparent(r: &Resp) -> String {
    r.json()["headers"]["traceparent"]
        .as_str()
        .expect("upstream got a traceparent")
        .to_string()
}

/// A request with a caller `traceparent` makes a server span (parent: the caller's span) with
/// the HTTP semantic attributes, a route span and one client span per try; the upstream's
/// parent is the span of the try that reached it; a retry after a connect error shows as two
/// attempt spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_callers_trace_and_show_each_attempt() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let dead = free_port();
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {
            "half": {
                "endpoints": [format!("127.0.0.1:{dead}"), live.to_string()],
                "loadBalancer": {"type": "roundRobin"},
                "retries": {"attempts": 2, "retryOn": {"connectError": true},
                            "backoff": {"base": "1ms", "max": "1ms"}},
            },
        },
        "routes": [{"name": "api", "rules": [{"backendRefs": [{"name": "half"}]}]}],
        "sinks": {"otel": {"type": "otlp", "endpoint": format!("http://{otlp}"),
                           "signals": ["traces"], "flushInterval": "20ms"}},
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    // Round robin over [dead, live]: the first request tries the dead endpoint first or second.
    let mut upstream_parents = Vec::new();
    for i in 0..2 {
        let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
        let url = format!("http://127.0.0.1:{port}/things/{i}?q=1");
        let r = send(&http, get_req(&url, &[("traceparent", &tp)])).await;
        assert_eq!(r.status, StatusCode::OK);
        let up = upstream_traceparent(&r);
        assert_eq!(&up[3..35], CALLER_TRACE, "upstream trace id");
        assert_eq!(&up[53..55], "01");
        upstream_parents.push(up[36..52].to_string());
    }
    let mut c = Collected::new();
    c.until(&mut rx, "two requests' spans", |c| {
        c.trace(CALLER_TRACE)
            .iter()
            .filter(|s| s.kind == SpanKind::Server as i32)
            .count()
            == 2
    })
    .await;
    let spans = c.trace(CALLER_TRACE);
    let servers: Vec<&&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    let mut attempt_counts = Vec::new();
    for server in servers {
        assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
        let a = &server.attributes;
        assert_eq!(attr_str(a, "http.request.method"), Some("GET"));
        assert_eq!(attr_str(a, "http.route"), Some("api"));
        assert_eq!(attr_int(a, "http.response.status_code"), Some(200));
        assert_eq!(attr_str(a, "server.address"), Some("127.0.0.1"));
        assert_eq!(attr_str(a, "network.protocol.version"), Some("1.1"));
        assert!(attr_str(a, "url.path").is_some_and(|p| p.starts_with("/things/")));
        assert_eq!(server.name, "GET api");
        let children: Vec<&&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == server.span_id)
            .collect();
        let route: Vec<_> = children.iter().filter(|s| s.name == "route").collect();
        assert_eq!(route.len(), 1, "one route span");
        assert_eq!(attr_str(&route[0].attributes, "weir.route"), Some("api"));
        let mut attempts: Vec<&&&Span> = children
            .iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        attempts.sort_by_key(|s| attr_int(&s.attributes, "weir.attempt"));
        let last = attempts.last().expect("an attempt span");
        assert_eq!(
            attr_int(&last.attributes, "http.response.status_code"),
            Some(200)
        );
        assert_eq!(
            attr_str(&last.attributes, "weir.endpoint"),
            Some(live.to_string().as_str())
        );
        assert!(
            upstream_parents.contains(&hex(&last.span_id)),
            "the upstream's parent is the successful attempt's span: {upstream_parents:?}"
        );
        if attempts.len() == 2 {
            let first = attempts[0];
            assert_eq!(attr_int(&first.attributes, "weir.attempt"), Some(1));
            assert_eq!(
                attr_str(&first.attributes, "error.type"),
                Some("connect_error")
            );
            assert_eq!(
                attr_int(&last.attributes, "http.request.resend_count"),
                Some(1)
            );
            assert_ne!(first.span_id, last.span_id);
        }
        attempt_counts.push(attempts.len());
    }
    assert!(
        attempt_counts.iter().all(|n| *n == 1 || *n == 2) && attempt_counts.contains(&2),
        "at least one request retried once: {attempt_counts:?}"
    );
    // Per request: server + route + one span per try, nothing else.
    let want = 2 * 2 + attempt_counts.iter().sum::<usize>();
    assert_eq!(c.trace(CALLER_TRACE).len(), want);
    let s = wait_shipped(&dp, "otel", want as u64).await;
    assert_eq!(s["sinks"]["otel"]["shipping"], true);
    assert_eq!(s["sinks"]["otel"]["signals"], json!(["traces"]));
    assert_eq!(s["sinks"]["otel"]["dropped"], 0);
}

/// Ratio 0 with parent-based sampling: new traces and unsampled callers export nothing (and the
/// upstream sees flags 00); a sampled caller is followed. Without a `traceparent` the upstream
/// still gets one (a new trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_exports_only_sampled_parents() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        "tracing": {"samplingRatio": 0.0, "serviceName": "edge-test"},
        "sinks": {"otel": {"type": "otlp", "endpoint": format!("http://{otlp}"),
                           "signals": ["traces"], "flushInterval": "20ms", "batchSize": 1}},
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/x");
    for _ in 0..5 {
        let r = send(&http, get_req(&url, &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            upstream_traceparent(&r).ends_with("-00"),
            "new trace not sampled"
        );
    }
    let unsampled = "11111111111111111111111111111111";
    let r = send(
        &http,
        get_req(
            &url,
            &[("traceparent", &format!("00-{unsampled}-{CALLER_SPAN}-00"))],
        ),
    )
    .await;
    let up = upstream_traceparent(&r);
    assert_eq!(&up[3..35], unsampled);
    assert!(up.ends_with("-00"));
    // The sampled caller comes last; its spans are queued after anything the others made.
    let r = send(
        &http,
        get_req(
            &url,
            &[(
                "traceparent",
                &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
            )],
        ),
    )
    .await;
    assert!(upstream_traceparent(&r).ends_with("-01"));
    let mut c = Collected::new();
    c.until(&mut rx, "the sampled request's spans", |c| {
        c.trace(CALLER_TRACE).len() == 3
    })
    .await;
    let others: Vec<String> = c
        .spans
        .iter()
        .map(|s| hex(&s.trace_id))
        .filter(|t| t != CALLER_TRACE)
        .collect();
    assert!(others.is_empty(), "unsampled traces exported: {others:?}");
    assert!(c
        .resources
        .iter()
        .all(|r| attr_str(r, "service.name") == Some("edge-test")));
    wait_shipped(&dp, "otel", 3).await;
}

/// Per export of `weir_requests_total` (a monotonic sum), the total over route `r`'s points.
fn route_requests(metrics: &[opentelemetry_proto::tonic::metrics::v1::Metric]) -> Vec<f64> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    metrics
        .iter()
        .filter(|m| m.name == "weir_requests_total")
        .map(|m| match &m.data {
            Some(metric::Data::Sum(sum)) => {
                assert!(sum.is_monotonic, "a counter is a monotonic sum");
                sum.data_points
                    .iter()
                    .filter(|p| attr_str(&p.attributes, "route") == Some("r"))
                    .map(|p| match p.value {
                        Some(Value::AsDouble(v)) => v,
                        _ => 0.0,
                    })
                    .sum()
            }
            other => panic!("weir_requests_total is not a sum: {other:?}"),
        })
        .collect()
}

/// An `otlp` sink ships access logs (one record per request, with the trace id) and the
/// metrics registry (counters as monotonic sums, histograms with buckets), with its API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_sink_ships_logs_and_metrics() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        "sinks": {"otel": {"type": "otlp", "endpoint": format!("http://{otlp}/"),
                           "signals": ["logs", "metrics"], "flushInterval": "50ms",
                           "apiKey": "Bearer s3cret", "apiKeyHeader": "authorization"}},
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    for i in 0..3 {
        let url = format!("http://127.0.0.1:{port}/log/{i}");
        let r = send(&http, get_req(&url, &[("traceparent", &tp)])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Metrics go out every flushInterval, some maybe from before the requests: wait for an
    // export that counts all three.
    let mut c = Collected::new();
    c.until(
        &mut rx,
        "three log records and a metrics export counting 3 requests",
        |c| c.logs.len() >= 3 && route_requests(&c.metrics).contains(&3.0),
    )
    .await;
    assert_eq!(c.logs.len(), 3);
    for l in &c.logs {
        assert_eq!(hex(&l.trace_id), CALLER_TRACE);
        assert_eq!(l.event_name, "weir.access");
        assert_eq!(
            attr_int(&l.attributes, "http.response.status_code"),
            Some(200)
        );
        assert_eq!(attr_str(&l.attributes, "weir.route"), Some("r"));
        assert!(attr_str(&l.attributes, "url.path").is_some_and(|p| p.starts_with("/log/")));
    }
    // The duration histogram of the same route, from any export that saw all three.
    let point = c
        .metrics
        .iter()
        .filter(|m| m.name == "weir_request_duration_seconds")
        .flat_map(|m| match &m.data {
            Some(metric::Data::Histogram(h)) => h.data_points.clone(),
            other => panic!("duration is not a histogram: {other:?}"),
        })
        .find(|p| attr_str(&p.attributes, "route") == Some("r") && p.count == 3)
        .expect("a histogram point counting the 3 requests");
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), 3);
    assert!(point.sum.is_some_and(|s| s > 0.0));
    // No traces signal: no span export. The API key goes in its header.
    assert!(c.posts.iter().all(|(p, _)| p != "/v1/traces"));
    assert!(c
        .posts
        .iter()
        .all(|(_, h)| h["authorization"] == "Bearer s3cret"));
    let s = sinks(&dp).await;
    assert_eq!(s["sinks"]["otel"]["signals"], json!(["logs", "metrics"]));
}

/// With no sink in the snapshot, `OTEL_EXPORTER_OTLP_ENDPOINT` and friends set up span
/// export: headers, service name and resource attributes, the `otel-env` sink report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_environment_configures_export() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    });
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=acme,authorization=Bearer%20t0k".into(),
        ),
        ("OTEL_SERVICE_NAME", "from-env".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "20".into()),
    ];
    let dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Opts::default()
        },
    )
    .await;
    let http = client();
    let r = send(&http, get_req(&format!("http://127.0.0.1:{port}/e"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    let up = upstream_traceparent(&r);
    let trace = up[3..35].to_string();
    let mut c = Collected::new();
    c.until(&mut rx, "the request's spans", |c| {
        c.trace(&trace).len() == 3
    })
    .await;
    let server = c
        .trace(&trace)
        .into_iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert!(
        server.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    let (_, headers) = &c.posts[0];
    assert_eq!(headers["x-tenant"], "acme");
    assert_eq!(headers["authorization"], "Bearer t0k");
    let res = &c.resources[0];
    assert_eq!(attr_str(res, "service.name"), Some("from-env"));
    assert_eq!(attr_str(res, "deployment.environment"), Some("test"));
    assert_eq!(
        attr_str(&server.attributes, "network.protocol.version"),
        Some("1.1")
    );
    // HTTP/2 (h2c) is labelled as such.
    let r = send(
        &h2c_client(),
        get_req(&format!("http://127.0.0.1:{port}/e2"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let trace2 = upstream_traceparent(&r)[3..35].to_string();
    c.until(&mut rx, "the h2 request's spans", |c| {
        c.trace(&trace2).len() == 3
    })
    .await;
    let server2 = c
        .trace(&trace2)
        .into_iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("server span");
    assert_eq!(
        attr_str(&server2.attributes, "network.protocol.version"),
        Some("2")
    );
    let s = wait_shipped(&dp, "otel-env", 6).await;
    assert_eq!(s["sinks"]["otel-env"]["signals"], json!(["traces"]));
}

/// A receiver that accepts and never answers: every request still succeeds, and with a
/// one-item queue what cannot wait is dropped and counted (in `GET /sinks` and `/metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_receiver_drops_and_counts_without_hurting_traffic() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        "sinks": {"otel": {"type": "otlp", "endpoint": format!("http://{hole_addr}"),
                           "signals": ["traces", "logs"], "queueSize": 1, "batchSize": 1,
                           "flushInterval": "10ms", "timeout": "60s"}},
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    const N: u64 = 20;
    for i in 0..N {
        let r = send(
            &http,
            get_req(&format!("http://127.0.0.1:{port}/d/{i}"), &[]),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let s = sinks(&dp).await;
    let o = &s["sinks"]["otel"];
    // Per signal, at most one item is being sent and one queued; the rest were dropped:
    // spans 3 per request, one log record per request.
    let dropped = o["dropped"].as_u64().unwrap();
    assert!(
        dropped >= (N - 2) * 3 + (N - 2),
        "dropped {dropped} of {N} requests' spans and logs: {o}"
    );
    assert_eq!(o["shipped"], 0);
    let m = get(&http, &dp.admin_url("/metrics")).await;
    let body = String::from_utf8_lossy(&m.body).to_string();
    assert!(
        body.lines().any(|l| l.starts_with("weir_sink_items_total{")
            && l.contains("sink=\"otel\"")
            && l.contains("result=\"dropped\"")
            && l.ends_with(&format!(" {dropped}"))),
        "dropped count in /metrics"
    );
}

/// OTLP/gRPC: spans from the `OTEL_*` exporter with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, access
/// logs from an `otlp` sink with `protocol: grpc`, both over HTTP/2 to the same receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_from_environment_and_sink() {
    let (otlp, mut rx) = grpc_receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        "sinks": {"logs": {"type": "otlp", "endpoint": format!("http://{otlp}"),
                           "protocol": "grpc", "signals": ["logs"], "flushInterval": "20ms"}},
    });
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{otlp}/ignored/path"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "20".to_string()),
    ];
    let dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Opts::default()
        },
    )
    .await;
    let http = client();
    let tp = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = send(
        &http,
        get_req(
            &format!("http://127.0.0.1:{port}/g"),
            &[("traceparent", &tp)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let mut c = Collected::new();
    c.until(&mut rx, "spans and the access log over gRPC", |c| {
        c.trace(CALLER_TRACE).len() == 3 && c.logs.len() == 1
    })
    .await;
    assert_eq!(hex(&c.logs[0].trace_id), CALLER_TRACE);
    assert!(c
        .posts
        .iter()
        .all(|(_, h)| h["content-type"] == "application/grpc"));
    wait_shipped(&dp, "otel-env", 3).await;
    wait_shipped(&dp, "logs", 1).await;
}

// ---- Shutdown flush, try spans ending with the body, OTLP http/json -----------------------

async fn spans_until(
    rx: &mut mpsc::UnboundedReceiver<Post>,
    spans: &mut Vec<Span>,
    what: &str,
    done: impl Fn(&[Span]) -> bool,
) {
    while !done(spans) {
        let p = match tokio::time::timeout(HANG_GUARD, rx.recv()).await {
            Ok(Some(p)) => p,
            _ => panic!("receiver never got {what}"),
        };
        assert_eq!(p.path, "/v1/traces");
        assert_eq!(p.headers["content-type"], "application/x-protobuf");
        let r = ExportTraceServiceRequest::decode(p.body).expect("decodes");
        for rs in r.resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
}

fn trace_of(r: &Resp) -> String {
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .expect("upstream got a traceparent")
        .to_string();
    tp[3..35].to_string()
}

/// One request is served, its spans are still queued (the batch age limit is an hour), the
/// dataplane gets SIGTERM: the receiver gets all three spans before the process exits.
async fn spans_flushed_at_shutdown(sink: bool) {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let mut config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    });
    let mut opts = Opts {
        drain_timeout: Some("5s".into()),
        ..Opts::default()
    };
    let name = if sink {
        config["sinks"] = json!({"o": {"type": "otlp", "endpoint": format!("http://{otlp}"),
                                       "signals": ["traces"], "flushInterval": "1h"}});
        "o"
    } else {
        opts.env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{otlp}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "3600000".into()),
        ];
        "otel-env"
    };
    let mut dp = Dataplane::start_with(&config.to_string(), opts).await;
    let r = send(
        &client(),
        get_req(&format!("http://127.0.0.1:{port}/x"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let trace = trace_of(&r);
    let s: serde_json::Value = get(&client(), &dp.admin_url("/sinks")).await.json();
    assert_eq!(s["sinks"][name]["shipped"], 0, "nothing sent yet: {s}");
    assert!(rx.try_recv().is_err(), "nothing sent before shutdown");
    dp.signal(libc::SIGTERM);
    let status = dp.wait_exit().await;
    assert!(status.success(), "exit {status:?}; log:\n{}", dp.log());
    let mut spans = Vec::new();
    spans_until(&mut rx, &mut spans, "the queued spans", |s| {
        s.iter().filter(|s| hex(&s.trace_id) == trace).count() == 3
    })
    .await;
    assert_eq!(spans.len(), 3, "only the one request's spans");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_spans_queued_at_shutdown_are_sent() {
    spans_flushed_at_shutdown(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_exporter_spans_queued_at_shutdown_are_sent() {
    spans_flushed_at_shutdown(false).await;
}

/// The try whose response is forwarded ends with the response body: a body streamed in five
/// chunks with 150 ms pauses (600 ms) keeps the client span open at least 450 ms past the
/// `http.response.headers` event (the event can be recorded late on a loaded machine: with four
/// chunks the bound had no margin and failed once under a full parallel test run); a body that
/// breaks off marks the try failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_span_ends_with_the_response_body() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        "sinks": {"o": {"type": "otlp", "endpoint": format!("http://{otlp}"),
                        "signals": ["traces"], "flushInterval": "20ms"}},
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        &client(),
        get_req(
            &format!("http://127.0.0.1:{port}/slow?bytes=300000&chunk_delay_ms=150"),
            &[("traceparent", tp)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 300_000);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut spans = Vec::new();
    spans_until(&mut rx, &mut spans, "the slow request's spans", |s| {
        s.iter().filter(|s| hex(&s.trace_id) == trace).count() == 3
    })
    .await;
    let find = |k: SpanKind| {
        spans
            .iter()
            .find(|s| s.kind == k as i32)
            .expect("span of that kind")
            .clone()
    };
    let (server, try_span) = (find(SpanKind::Server), find(SpanKind::Client));
    assert_eq!(try_span.events.len(), 1, "{try_span:?}");
    let headers = &try_span.events[0];
    assert_eq!(headers.name, "http.response.headers");
    assert!(try_span.start_time_unix_nano <= headers.time_unix_nano);
    assert!(
        try_span.end_time_unix_nano >= headers.time_unix_nano + 450_000_000,
        "the try ends with the body: {try_span:?}"
    );
    assert!(try_span.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(try_span.status.is_none(), "{try_span:?}");

    // A body that breaks off after its headers: the try failed.
    let tp2 = "00-aaf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = try_send(
        &client(),
        get_req(
            &format!("http://127.0.0.1:{port}/broken?bytes=200000&fail_after=70000"),
            &[("traceparent", tp2)],
        ),
    )
    .await;
    assert!(
        res.is_err() || res.as_ref().is_ok_and(|r| r.body.len() < 200_000),
        "the client sees the body break off"
    );
    let trace2 = "aaf92f3577b34da6a3ce929d0e0e4736";
    spans_until(&mut rx, &mut spans, "the broken request's spans", |s| {
        s.iter().filter(|s| hex(&s.trace_id) == trace2).count() == 3
    })
    .await;
    let broken = spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace2 && s.kind == SpanKind::Client as i32)
        .expect("client span");
    let err = broken
        .attributes
        .iter()
        .find(|kv| kv.key == "error.type")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(
        err,
        Some(any_value::Value::StringValue("response_body_error".into())),
        "{broken:?}"
    );
    assert_eq!(
        broken.status.as_ref().map(|s| s.code),
        Some(2),
        "{broken:?}"
    );
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`: `application/json` bodies per the OTLP/JSON rules
/// (hex ids, lowerCamelCase keys, 64-bit integers as strings, enums as numbers), which the
/// `opentelemetry-proto` serde types read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_protocol_from_environment() {
    let (otlp, mut rx) = receiver().await;
    let live = echo("live").await;
    let port = free_port();
    let config = json!({
        "listeners": listener(port),
        "backends": {"b": {"endpoints": [live.to_string()]}},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    });
    let opts = Opts {
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{otlp}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "20".into()),
        ],
        ..Opts::default()
    };
    let _dp = Dataplane::start_with(&config.to_string(), opts).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        &client(),
        get_req(
            &format!("http://127.0.0.1:{port}/j"),
            &[("traceparent", tp)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let upstream_parent = r.json()["headers"]["traceparent"].as_str().unwrap()[36..52].to_string();
    let mut spans: Vec<serde_json::Value> = Vec::new();
    while spans.len() < 3 {
        let p = match tokio::time::timeout(HANG_GUARD, rx.recv()).await {
            Ok(Some(p)) => p,
            _ => panic!("receiver never got the spans"),
        };
        assert_eq!(p.path, "/v1/traces");
        assert_eq!(p.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&p.body).expect("JSON body");
        // The serde types of opentelemetry-proto read it back.
        let typed: ExportTraceServiceRequest = serde_json::from_slice(&p.body).expect("OTLP/JSON");
        assert!(!typed.resource_spans.is_empty());
        let rs = &v["resourceSpans"][0];
        assert!(rs["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["key"] == "service.name"));
        for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
            spans.extend(ss["spans"].as_array().expect("spans").iter().cloned());
        }
    }
    assert_eq!(spans.len(), 3);
    for s in &spans {
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736", "{s}");
        let id = s["spanId"].as_str().expect("hex span id");
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{s}"
        );
        assert!(s["kind"].is_u64(), "enum as number: {s}");
        let start = s["startTimeUnixNano"].as_str().expect("u64 as string");
        assert!(start.parse::<u64>().is_ok(), "{s}");
    }
    let server = spans.iter().find(|s| s["kind"] == 2).expect("server span");
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    assert!(server["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(
            |a| a["key"] == "http.response.status_code" && a["value"] == json!({"intValue": "200"})
        ));
    let client_span = spans.iter().find(|s| s["kind"] == 3).expect("client span");
    assert_eq!(client_span["spanId"], upstream_parent.as_str());
    assert_eq!(client_span["parentSpanId"], server["spanId"]);
}
