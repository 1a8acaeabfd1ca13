//! Telemetry sinks on real sockets: an in-test HTTP collector decodes `httpJson` batches (ECS
//! fields, batch sizes, API key header, retries on 5xx but not on 4xx, metric objects); UDP and
//! TCP syslog listeners parse RFC 5424 (octet counting on TCP); a sink that never answers, with
//! a tiny queue, does not hold up traffic and counts drops. `tlsVerify: false` against a
//! self-signed https collector (httpJson and otlp); `transport: http3` against an in-test
//! quinn + h3 collector (connection reuse, reconnect after the collector closes it).
//!
//! Waits have only the hang guard as a deadline; assertions are on counts and values.

mod common;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// One request the collector received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
    /// The status the collector answered with.
    status: u16,
}
/// A TLS acceptor serving the self-signed certificate `ck` (for https collectors).
fn tls_acceptor(ck: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsAcceptor {
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key.into())
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

/// An HTTP/1.1 server that records every POST and answers with scripted statuses (then 200).
async fn collector(script: &[u16]) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    collector_with(script, None).await
}

/// [`collector`], over TLS when an acceptor is given.
async fn collector_with(
    script: &[u16],
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let script = Arc::new(Mutex::new(
        script.iter().copied().collect::<VecDeque<u16>>(),
    ));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let script = script.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            serve_collector(s, tx, script).await;
                        }
                    }
                    None => serve_collector(stream, tx, script).await,
                }
            });
        }
    });
    (addr, rx)
}

async fn serve_collector<I>(
    io: I,
    tx: mpsc::UnboundedSender<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        let script = script.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let status = script.lock().unwrap().pop_front().unwrap_or(200);
            let _ = tx.send(Received {
                path: parts.uri.path().to_string(),
                headers: parts.headers,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                status,
            });
            let mut r = http::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(r)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("hang guard: nothing received")
        .expect("collector stopped")
}

fn config(port: u16, backend: SocketAddr, sink: &str) -> String {
    format!(
        r#"listeners: [{{ name: web, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  a: {{ endpoints: ["{backend}"] }}
routes: [{{ name: r, rules: [{{ backendRefs: [{{ name: a }}] }}] }}]
sinks:
  {sink}
"#
    )
}

async fn sinks_report(dp: &Dataplane) -> Value {
    let r = get(&client(), &dp.admin_url("/sinks")).await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// Polls `GET /sinks` until `cond` holds for the named sink.
async fn sink_until(
    dp: &Dataplane,
    name: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let v = sinks_report(dp).await;
        if cond(&v["sinks"][name]) {
            return v["sinks"][name].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}; last report: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test]
async fn http_json_ships_ecs_batches_by_size_then_by_interval() {
    let backend = echo("a").await;
    let (sink, mut rx) = collector(&[]).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"kk: {{ type: httpJson, endpoint: "http://{sink}/ingest", batchSize: 5, flushInterval: 3s, signals: [logs], apiKey: s3cret, apiKeyHeader: X-Weir-Key, sourceName: edge-1 }}"#
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..12 {
        let tp = format!("00-{TRACE}-b7ad6b716920333{}-01", i % 10);
        let r = send(
            &c,
            get_req(
                &format!("http://127.0.0.1:{port}/items/{i}?secret=x"),
                &[("traceparent", &tp), ("host", "shop.example")],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let mut sizes = Vec::new();
    let mut docs = Vec::new();
    while docs.len() < 12 {
        let b = recv(&mut rx).await;
        assert_eq!(b.path, "/ingest");
        assert_eq!(b.headers.get("x-weir-key").unwrap(), "s3cret");
        assert_eq!(b.headers.get("content-type").unwrap(), "application/json");
        let arr = b.body.as_array().expect("a JSON array batch").clone();
        sizes.push(arr.len());
        docs.extend(arr);
    }
    // Two full batches, then the rest when the oldest item is flushInterval old.
    assert_eq!(sizes, vec![5, 5, 2]);
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(d["ecs"]["version"], "8.0.0");
        assert_eq!(d["event"]["dataset"], "weir.access");
        assert!(d["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(d["http"]["request"]["method"], "GET");
        assert_eq!(d["url"]["path"], format!("/items/{i}"), "no query string");
        assert_eq!(d["url"]["domain"], "shop.example");
        assert_eq!(d["http"]["response"]["status_code"], 200);
        assert!(d["http"]["response"]["body"]["bytes"].as_u64().unwrap() > 0);
        assert_eq!(d["client"]["address"], "127.0.0.1");
        assert!(d["event"]["duration"].as_u64().unwrap() > 0, "nanoseconds");
        assert_eq!(d["trace"]["id"], TRACE);
        assert_eq!(d["service"]["name"], "edge-1");
        assert_eq!(d["labels"]["route"], "r");
        assert_eq!(d["labels"]["backend"], "a");
    }
    let s = sink_until(&dp, "kk", "12 shipped", |s| s["shipped"] == 12).await;
    assert_eq!(s["dropped"], 0);
    assert_eq!(s["failed"], 0);
    assert!(s["lastSuccess"].is_string());
    let m = get(&client(), &dp.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"weir_sink_items_total{result="shipped",sink="kk"} 12"#),
        "{text}"
    );
    assert!(text.contains(r#"weir_sink_last_success_timestamp_seconds{sink="kk"}"#));

    // The API key never leaves through GET /config.
    let (status, v) = dp.get_config(None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["snapshot"]["sinks"]["kk"]["apiKey"], "<redacted>");
    assert_eq!(v["snapshot"]["sinks"]["kk"]["apiKeyHeader"], "X-Weir-Key");

    // A reload that leaves the sink as it is keeps it running, counters and all.
    let (status, v) = dp.put_config(format!("version: two\n{cfg}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(sinks_report(&dp).await["sinks"]["kk"]["shipped"], 12);
}

#[tokio::test]
async fn http_json_retries_5xx_but_not_4xx() {
    let backend = echo("a").await;
    let (sink, mut rx) = collector(&[500, 200, 400]).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"kk: {{ type: httpJson, endpoint: "http://{sink}/", batchSize: 1, signals: [logs] }}"#
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");

    get(&c, &format!("{url}one")).await;
    let a = recv(&mut rx).await;
    let b = recv(&mut rx).await;
    assert_eq!((a.status, b.status), (500, 200));
    assert_eq!(a.body, b.body, "the retry sends the same batch");
    assert_eq!(a.headers.get("x-api-key"), None, "no apiKey, no header");

    get(&c, &format!("{url}two")).await;
    let d = recv(&mut rx).await;
    assert_eq!(d.status, 400);
    assert_eq!(d.body[0]["url"]["path"], "/two");

    // The shipper sends one batch at a time: once the third arrives, the 400 was not retried.
    get(&c, &format!("{url}three")).await;
    let e = recv(&mut rx).await;
    assert_eq!(e.body[0]["url"]["path"], "/three");
    assert_eq!(e.status, 200);
    let s = sink_until(&dp, "kk", "2 shipped", |s| s["shipped"] == 2).await;
    assert_eq!(s["failed"], 1);
    assert_eq!(s["attempts"], 4);
    assert!(s["lastError"].as_str().unwrap().contains("400"), "{s}");
}

#[tokio::test]
async fn http_json_ships_metric_objects() {
    let backend = echo("a").await;
    let (sink, mut rx) = collector(&[]).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"kk: {{ type: httpJson, endpoint: "http://{sink}/logs", metricsEndpoint: "http://{sink}/metrics", flushInterval: 50ms, signals: [metrics] }}"#
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let r = get(&client(), &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    loop {
        let b = recv(&mut rx).await;
        assert_eq!(b.path, "/metrics", "metrics only: no log batches");
        let objs = b.body.as_array().expect("array").clone();
        assert!(objs.len() <= 500, "batchSize bounds metric batches too");
        let found = objs.iter().find(|o| {
            o["name"] == "weir_requests_total" && o["labels"]["route"] == "r" && o["value"] == 1.0
        });
        if let Some(o) = found {
            assert_eq!(o["type"], "counter");
            assert_eq!(o["labels"]["backend"], "a");
            assert_eq!(o["labels"]["status_class"], "2xx");
            assert!(o["timestamp"].as_str().unwrap().ends_with('Z'));
            assert!(!o["help"].as_str().unwrap().is_empty());
            break;
        }
    }
    drop(dp);
}

/// Splits an RFC 5424 message into (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
/// MSGID, rest).
fn parse_5424(m: &str) -> (u32, Vec<String>, String) {
    let rest = m.strip_prefix('<').expect("starts with <PRI>");
    let (pri, rest) = rest.split_once('>').expect("PRI closes");
    let parts: Vec<String> = rest.splitn(7, ' ').map(String::from).collect();
    assert_eq!(parts.len(), 7, "header fields in {m:?}");
    assert_eq!(parts[0], "1", "VERSION");
    let tail = parts[6].clone();
    (pri.parse().expect("numeric PRI"), parts[..6].to_vec(), tail)
}

fn check_5424(m: &str, path: &str) {
    let (pri, h, tail) = parse_5424(m);
    assert_eq!(pri, 20 * 8 + 6, "facility local4, severity info");
    assert!(
        h[1].ends_with('Z') && h[1].contains('T'),
        "TIMESTAMP {:?}",
        h[1]
    );
    assert_eq!(h[2], "edge-1", "HOSTNAME is sourceName");
    assert_eq!(h[3], "weir-test", "APP-NAME");
    assert!(h[4].parse::<u32>().is_ok(), "PROCID");
    assert_eq!(h[5], "access", "MSGID");
    assert!(
        tail.starts_with("[weir@32473 route=\"r\" backend=\"a\" status=\"200\""),
        "{tail}"
    );
    let msg = tail.split_once("] ").expect("SD then MSG").1;
    assert!(
        msg.starts_with(&format!("127.0.0.1 \"GET 127.0.0.1{path}\" 200 ")),
        "{msg}"
    );
}

#[tokio::test]
async fn syslog_udp_one_rfc5424_message_per_datagram() {
    let backend = echo("a").await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"sl: {{ type: syslog, endpoint: "{}", facility: 20, appName: weir-test, sourceName: edge-1 }}"#,
            udp.local_addr().unwrap()
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..3 {
        get(&c, &format!("http://127.0.0.1:{port}/u{i}")).await;
    }
    let mut buf = vec![0u8; 65536];
    for i in 0..3 {
        let n = tokio::time::timeout(HANG_GUARD, udp.recv(&mut buf))
            .await
            .expect("hang guard")
            .unwrap();
        let m = std::str::from_utf8(&buf[..n]).unwrap();
        check_5424(m, &format!("/u{i}"));
    }
    sink_until(&dp, "sl", "3 shipped", |s| s["shipped"] == 3).await;
}

/// Reads one octet-counted frame (`LEN SP MSG`).
async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<String> {
    let mut len = Vec::new();
    if r.read_until(b' ', &mut len).await.ok()? == 0 {
        return None;
    }
    let len: usize = std::str::from_utf8(&len[..len.len() - 1])
        .ok()?
        .parse()
        .expect("MSG-LEN is a number");
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await.ok()?;
    Some(String::from_utf8(msg).unwrap())
}

#[tokio::test]
async fn syslog_tcp_octet_counting_and_reconnect() {
    let backend = echo("a").await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"sl: {{ type: syslog, transport: tcp, endpoint: "{}", facility: 20, appName: weir-test, sourceName: edge-1 }}"#,
            tcp.local_addr().unwrap()
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..3 {
        get(&c, &format!("http://127.0.0.1:{port}/t{i}")).await;
    }
    let (s, _) = tokio::time::timeout(HANG_GUARD, tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut r = BufReader::new(s);
    for i in 0..3 {
        let m = tokio::time::timeout(HANG_GUARD, read_frame(&mut r))
            .await
            .expect("hang guard")
            .expect("a frame");
        check_5424(&m, &format!("/t{i}"));
    }
    // The collector goes away; the shipper reconnects and later messages arrive on a new
    // connection (one written into the dying connection may be lost, as with any TCP syslog).
    drop(r);
    let accept = tokio::spawn(async move { tcp.accept().await.unwrap().0 });
    let mut n = 0;
    while !accept.is_finished() {
        get(&c, &format!("http://127.0.0.1:{port}/again")).await;
        n += 1;
        assert!(n < 10_000, "never reconnected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s2 = accept.await.unwrap();
    let mut r2 = BufReader::new(s2);
    let m = tokio::time::timeout(HANG_GUARD, read_frame(&mut r2))
        .await
        .expect("hang guard")
        .expect("a frame after reconnecting");
    check_5424(&m, "/again");
    drop(dp);
}

#[tokio::test]
async fn stuck_sink_with_tiny_queue_drops_and_never_blocks_traffic() {
    let backend = echo("a").await;
    // Accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = black_hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            conns.push(s);
        }
    });
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"stuck: {{ type: httpJson, endpoint: "http://{hole}/", batchSize: 1, queueSize: 2, timeout: 1h, signals: [logs] }}
  later: {{ type: otlp, endpoint: "http://127.0.0.1:4318" }}"#
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..50 {
        let r = send(&c, get_req(&format!("http://127.0.0.1:{port}/d{i}"), &[])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // At most one batch in flight and two queued: the rest were dropped.
    let s = sink_until(&dp, "stuck", "drops", |s| s["dropped"].as_u64() >= Some(47)).await;
    assert_eq!(s["shipped"], 0);
    let v = sinks_report(&dp).await;
    // An otlp sink ships everything by default (see tests/otlp.rs).
    assert_eq!(v["sinks"]["later"]["shipping"], true);
    assert_eq!(
        v["sinks"]["later"]["signals"],
        serde_json::json!(["logs", "metrics", "traces"])
    );
    let m = get(&client(), &dp.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"weir_sink_queue_items{sink="stuck"} 2"#),
        "{text}"
    );
    held.abort();
}

#[tokio::test]
async fn invalid_sinks_are_refused_with_paths() {
    let dp = Dataplane::start_without_config().await;
    let (status, v) = dp
        .put_config(
            r#"sinks:
  a: { type: syslog, endpoint: "nohost", apiKey: k, signals: [metrics] }
  b: { type: httpJson, endpoint: "ftp://x", batchSize: 0, queueSize: 0, facility: 3 }
"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for p in [
        r#"sinks["a"].endpoint"#,
        r#"sinks["a"].apiKey"#,
        r#"sinks["a"].signals[0]"#,
        r#"sinks["b"].endpoint"#,
        r#"sinks["b"].batchSize"#,
        r#"sinks["b"].queueSize"#,
        r#"sinks["b"].facility"#,
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
}

#[tokio::test]
async fn shutdown_sends_what_is_queued() {
    let backend = echo("a").await;
    let (sink, mut rx) = collector(&[]).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"kk: {{ type: httpJson, endpoint: "http://{sink}/", batchSize: 100, flushInterval: 1h, signals: [logs] }}"#
        ),
    );
    let mut dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..3 {
        get(&c, &format!("http://127.0.0.1:{port}/s{i}")).await;
    }
    drop(c);
    // Neither full nor old: only shutdown sends this batch.
    dp.signal(libc::SIGTERM);
    assert!(dp.wait_exit().await.success());
    let b = recv(&mut rx).await;
    let paths: Vec<&str> = b
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/s0", "/s1", "/s2"]);
}

#[tokio::test]
async fn http_json_over_https_trusts_ca_file_only() {
    let backend = echo("a").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let (sink, mut rx) = collector_with(&[], Some(tls_acceptor(&ck))).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"trusted: {{ type: httpJson, endpoint: "https://localhost:{}/tls", caFile: "{}", batchSize: 2, signals: [logs] }}
  untrusted: {{ type: httpJson, endpoint: "https://localhost:{}/tls", batchSize: 2, signals: [logs] }}"#,
            sink.port(),
            ca.display(),
            sink.port()
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..2 {
        get(&c, &format!("http://127.0.0.1:{port}/h{i}")).await;
    }
    let b = recv(&mut rx).await;
    assert_eq!(b.path, "/tls");
    assert_eq!(b.body.as_array().unwrap().len(), 2);
    assert_eq!(b.body[0]["ecs"]["version"], "8.0.0");
    sink_until(&dp, "trusted", "2 shipped", |s| s["shipped"] == 2).await;
    // The self-signed certificate is not in the system roots: that sink fails, after retries.
    let s = sink_until(&dp, "untrusted", "a failed batch", |s| s["failed"] == 2).await;
    assert_eq!(s["shipped"], 0);
}

#[tokio::test]
async fn http_json_tls_verify_false_accepts_a_self_signed_certificate() {
    let backend = echo("a").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (sink, mut rx) = collector_with(&[], Some(tls_acceptor(&ck))).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"insecure: {{ type: httpJson, endpoint: "https://localhost:{p}/insecure", tlsVerify: false, batchSize: 2, signals: [logs] }}
  verified: {{ type: httpJson, endpoint: "https://localhost:{p}/verified", batchSize: 2, signals: [logs] }}"#,
            p = sink.port(),
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    for i in 0..2 {
        get(&c, &format!("http://127.0.0.1:{port}/v{i}")).await;
    }
    let b = recv(&mut rx).await;
    assert_eq!(b.path, "/insecure");
    let paths: Vec<&str> = b
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/v0", "/v1"]);
    sink_until(&dp, "insecure", "2 shipped", |s| s["shipped"] == 2).await;
    // The default verifies: the self-signed certificate is refused, the batch fails.
    let s = sink_until(&dp, "verified", "a failed batch", |s| s["failed"] == 2).await;
    assert_eq!(s["shipped"], 0);
    // Only the insecure sink ever reached the collector.
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn tls_verify_false_is_refused_on_plain_http_and_syslog() {
    let dp = Dataplane::start_without_config().await;
    let (status, v) = dp
        .put_config(
            r#"sinks:
  a: { type: httpJson, endpoint: "http://127.0.0.1:9/", tlsVerify: false }
  b: { type: otlp, endpoint: "https://127.0.0.1:9", metricsEndpoint: "http://x/", tlsVerify: false }
  c: { type: syslog, endpoint: "127.0.0.1:514", tlsVerify: true }
  d: { type: httpJson, endpoint: "https://127.0.0.1:9/", tlsVerify: false }
"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for p in [
        r#"sinks["a"].tlsVerify"#,
        r#"sinks["b"].tlsVerify"#,
        r#"sinks["c"].tlsVerify"#,
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p.starts_with(r#"sinks["d"]"#)),
        "{paths:?}"
    );
}

/// One POST the HTTP/3 collector received, with the index of its QUIC connection.
struct H3Received {
    path: String,
    body: Value,
    conn: usize,
}

/// A QUIC + HTTP/3 server that records every request and answers 200; also hands out each
/// accepted connection (so the test can close one).
async fn h3_collector(
    ck: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<H3Received>,
    mpsc::UnboundedReceiver<quinn::Connection>,
) {
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key.into())
    .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut index = 0;
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let _ = conn_tx.send(conn.clone());
            let tx = tx.clone();
            let me = index;
            index += 1;
            tokio::spawn(async move {
                let Ok(mut h3c) =
                    h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3c.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let Ok((req, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        let mut body = Vec::new();
                        while let Ok(Some(mut chunk)) = stream.recv_data().await {
                            use bytes::Buf;
                            while chunk.has_remaining() {
                                let c = chunk.chunk();
                                body.extend_from_slice(c);
                                let n = c.len();
                                chunk.advance(n);
                            }
                        }
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        if stream.send_response(resp).await.is_err()
                            || stream.finish().await.is_err()
                        {
                            return;
                        }
                        let _ = tx.send(H3Received {
                            path: req.uri().path().to_string(),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            conn: me,
                        });
                    });
                }
            });
        }
    });
    (addr, rx, conn_rx)
}

fn doc_paths(body: &Value) -> Vec<String> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"]["path"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn http_json_over_http3_reuses_one_connection_and_reconnects() {
    let backend = echo("a").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let (sink, mut rx, mut conns) = h3_collector(&ck).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"q: {{ type: httpJson, transport: http3, endpoint: "https://localhost:{}/h3", caFile: "{}", batchSize: 2, signals: [logs] }}"#,
            sink.port(),
            ca.display(),
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    let c = client();
    // Two batches of two over the same connection.
    for i in 0..4 {
        get(&c, &format!("http://127.0.0.1:{port}/q{i}")).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let b = recv(&mut rx).await;
        assert_eq!(b.path, "/h3");
        assert_eq!(b.conn, 0, "a second connection was opened");
        got.extend(doc_paths(&b.body));
    }
    assert_eq!(got, ["/q0", "/q1", "/q2", "/q3"]);
    sink_until(&dp, "q", "4 shipped", |s| s["shipped"] == 4).await;

    // The collector closes the connection: the next batch goes over a new one.
    let first = recv(&mut conns).await;
    first.close(quinn::VarInt::from_u32(0x100), b"bye");
    for i in 4..6 {
        get(&c, &format!("http://127.0.0.1:{port}/q{i}")).await;
    }
    let b = recv(&mut rx).await;
    assert_eq!(b.conn, 1);
    assert_eq!(doc_paths(&b.body), ["/q4", "/q5"]);
    let s = sink_until(&dp, "q", "6 shipped", |s| s["shipped"] == 6).await;
    assert_eq!(s["failed"], 0);
    // Exactly one new connection, and no batch delivered twice.
    recv(&mut conns).await;
    assert!(conns.try_recv().is_err());
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn http3_transport_is_refused_without_https_and_outside_http_json() {
    let dp = Dataplane::start_without_config().await;
    let (status, v) = dp
        .put_config(
            r#"sinks:
  a: { type: httpJson, endpoint: "http://127.0.0.1:9/", transport: http3 }
  b: { type: syslog, endpoint: "127.0.0.1:514", transport: http3 }
  c: { type: httpJson, endpoint: "https://127.0.0.1:9/", transport: tcp }
  d: { type: otlp, endpoint: "https://127.0.0.1:9", transport: http }
  e: { type: httpJson, endpoint: "https://127.0.0.1:9/", transport: http3 }
"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for p in ["a", "b", "c", "d"] {
        let p = format!(r#"sinks["{p}"].transport"#);
        assert!(paths.contains(&p.as_str()), "{p} missing from {paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p.starts_with(r#"sinks["e"]"#)),
        "{paths:?}"
    );
}

#[tokio::test]
async fn otlp_tls_verify_false_accepts_a_self_signed_certificate() {
    let backend = echo("a").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (sink, mut rx) = collector_with(&[], Some(tls_acceptor(&ck))).await;
    let port = free_port();
    let cfg = config(
        port,
        backend,
        &format!(
            r#"o: {{ type: otlp, endpoint: "https://localhost:{}", tlsVerify: false, batchSize: 1, signals: [logs] }}"#,
            sink.port(),
        ),
    );
    let dp = Dataplane::start(&cfg).await;
    get(&client(), &format!("http://127.0.0.1:{port}/o")).await;
    let b = recv(&mut rx).await;
    assert_eq!(b.path, "/v1/logs");
    assert_eq!(b.headers["content-type"], "application/x-protobuf");
    let s = sink_until(&dp, "o", "1 shipped", |s| s["shipped"] == 1).await;
    assert_eq!(s["failed"], 0);
}
