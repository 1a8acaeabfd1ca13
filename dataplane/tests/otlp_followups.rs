//! OTLP export, continued (see otlp.rs for the basics): spans still queued at shutdown are
//! sent before the process exits, a try's span lasts until the response body ended, and
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` sends OTLP/JSON.
//!
//! Real sockets; waits have only the hang guard as a deadline; assertions are on counts and
//! values (the one duration checked is a lower bound the backend's own pauses guarantee).

mod common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::sync::mpsc;

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

/// Decodes protobuf trace posts until `done` holds for the spans gathered.
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn listener(port: u16) -> serde_json::Value {
    json!([{"name": "web", "address": format!("127.0.0.1:{port}"), "protocol": "http"}])
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

/// The try whose response is forwarded ends with the response body: a body streamed in four
/// chunks with 150 ms pauses keeps the client span open at least 450 ms past the
/// `http.response.headers` event; a body that breaks off marks the try failed.
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
            &format!("http://127.0.0.1:{port}/slow?bytes=200000&chunk_delay_ms=150"),
            &[("traceparent", tp)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 200_000);
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
