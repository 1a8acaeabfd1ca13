//! Rule policies through the real proxy: redirects and direct responses, rate limits, external
//! authorization against a real webhook, and body-field (metric-name) routing.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering with `handler` (body read whole first).
async fn serve(handler: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(h(Request::from_parts(parts, bytes)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn metrics_text(dp: &Dataplane) -> String {
    let r = get(&client(), &dp.admin_url("/metrics")).await;
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the first sample line starting with `prefix` (0 when absent).
fn sample(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_direct_responses() {
    let echo = echo("e").await;
    let port = free_port();
    let config = r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: r
    rules:
      - matches: [{ path: { type: PathPrefix, value: /old } }, { path: { type: PathPrefix, value: /older/than } }]
        redirect: { scheme: https, path: { type: ReplacePrefixMatch, value: /new }, statusCode: 301 }
      - matches: [{ path: { type: Exact, value: /moved } }]
        redirect: { hostname: other.example.com, port: 8443, path: { type: ReplaceFullPath, value: /x }, statusCode: 308 }
      - matches: [{ path: { type: Exact, value: /same } }]
        redirect: { path: { type: ReplaceFullPath, value: /else } }
      - matches: [{ path: { type: Exact, value: /teapot } }]
        directResponse: { status: 418, headers: [{ name: x-kind, value: teapot }, { name: content-type, value: text/plain }], body: "short and stout" }
      - backendRefs: [{ name: echo }]
"#
    .replace("PORT", &port.to_string())
    .replace("ECHO", &echo.to_string());
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let host = [("host", "a.example.com:8080")];

    let r = send(&c, get_req(&url("/old/a/b?q=1&r=2"), &host)).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    // Scheme changed and no port given: the well-known port, left out.
    assert_eq!(
        r.header("location"),
        Some("https://a.example.com/new/a/b?q=1&r=2")
    );
    let r = send(&c, get_req(&url("/older/than/x"), &host)).await;
    assert_eq!(r.header("location"), Some("https://a.example.com/new/x"));
    let r = send(&c, get_req(&url("/old"), &host)).await;
    assert_eq!(r.header("location"), Some("https://a.example.com/new"));

    let r = send(&c, get_req(&url("/moved?k=v"), &host)).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        Some("http://other.example.com:8443/x?k=v")
    );

    // Nothing but the path changes: scheme, host and the port the client used are kept.
    let r = send(&c, get_req(&url("/same"), &host)).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("http://a.example.com:8080/else"));

    let r = send(&c, get_req(&url("/teapot"), &[])).await;
    assert_eq!(r.status.as_u16(), 418);
    assert_eq!(r.header("x-kind"), Some("teapot"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(&r.body[..], b"short and stout");

    // Everything else still reaches the backend.
    let r = send(&c, get_req(&url("/other"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-echo-server"), Some("e"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_exactly() {
    let echo = echo("e").await;
    let port = free_port();
    // One token per hour refill: within the test only the burst counts, so counts are exact.
    let config = r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: by-ip
    hostnames: [ip.test]
    rateLimit: { requestsPerUnit: 1, unit: hour, burst: 5, key: { trustedHops: 1 } }
    rules:
      - backendRefs: [{ name: echo }]
      - matches: [{ path: { value: /own } }]
        rateLimit: { requestsPerUnit: 1, unit: hour, burst: 2 }
        backendRefs: [{ name: echo }]
  - name: by-key
    hostnames: [key.test]
    rules:
      - rateLimit: { requestsPerUnit: 1, unit: hour, burst: 3, key: { type: header, header: x-api-key } }
        backendRefs: [{ name: echo }]
"#
    .replace("PORT", &port.to_string())
    .replace("ECHO", &echo.to_string());
    let dp = Dataplane::start(&config).await;
    let c = client();
    let statuses = |n: usize, headers: Vec<(&'static str, &'static str)>, path: &'static str| {
        let c = c.clone();
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(send(&c, get_req(&url, &headers)).await);
            }
            out
        }
    };
    let client_a = vec![("host", "ip.test"), ("x-forwarded-for", "203.0.113.9")];
    let rs = statuses(8, client_a.clone(), "/x").await;
    let codes: Vec<u16> = rs.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429, 429, 429]);
    let limited = &rs[5];
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    assert_eq!(limited.json()["error"], "rate_limited");

    // Another client address behind the same trusted proxy has its own bucket; the peer
    // (127.0.0.1) is not the key.
    let client_b = vec![
        ("host", "ip.test"),
        ("x-forwarded-for", "198.51.100.7, 203.0.113.10"),
    ];
    let codes: Vec<u16> = statuses(6, client_b, "/x")
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 429]);
    // A rule with its own limit does not share the route's buckets.
    let codes: Vec<u16> = statuses(3, client_a, "/own")
        .await
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(codes, [200, 200, 429]);

    // Keyed by header: each key gets the burst; requests without the header share one bucket.
    for key in ["k1", "k2"] {
        let codes: Vec<u16> = statuses(4, vec![("host", "key.test"), ("x-api-key", key)], "/x")
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
        assert_eq!(codes, [200, 200, 200, 429], "key {key}");
    }

    let m = metrics_text(&dp).await;
    assert_eq!(
        sample(&m, "weir_rate_limited_total{route=\"by-ip\"}"),
        3 + 1 + 1,
        "{m}"
    );
    assert_eq!(sample(&m, "weir_rate_limited_total{route=\"by-key\"}"), 2);
    assert_eq!(
        sample(
            &m,
            "weir_proxy_errors_total{backend=\"-\",kind=\"rate_limited\",route=\"by-key\"}"
        ),
        2
    );
}

/// A `grpc-timeout` a stage (external auth's allowed headers) or a request filter puts into the
/// map is the upstream deadline, although the client sent none. The HTTP/1.1 parser notes which
/// of the fields the pipeline asks about the request carries; the pipeline notes them again
/// after each stage or filter that may change the map. Kept stale ("no `grpc-timeout`"), the
/// slow upstream's 200 would come back instead of the 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_added_by_a_stage_or_a_filter_is_the_deadline() {
    let echo = echo("e").await;
    let hook = serve(Arc::new(|_req: Request<Bytes>| {
        Response::builder()
            .header("grpc-timeout", "200m")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }))
    .await;
    let port = free_port();
    let config = r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: authed
    hostnames: [authed.test]
    rules:
      - extAuth: { url: "http://HOOK", timeout: 5s, allowedUpstreamHeaders: [grpc-timeout] }
        backendRefs: [{ name: echo }]
        timeout: 60s
  - name: filtered
    hostnames: [filtered.test]
    rules:
      - filters: { requestHeaders: { set: [{ name: grpc-timeout, value: 200m }] } }
        backendRefs: [{ name: echo }]
        timeout: 60s
  - name: plain
    hostnames: [plain.test]
    rules:
      - backendRefs: [{ name: echo }]
        timeout: 60s
"#
    .replace("PORT", &port.to_string())
    .replace("ECHO", &echo.to_string())
    .replace("HOOK", &hook.to_string());
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/?delay_ms=3000");
    let mut got = Vec::new();
    for host in ["authed.test", "filtered.test", "plain.test"] {
        got.push((
            host,
            send(&c, get_req(&url, &[("host", host)])).await.status,
        ));
    }
    // The same slow upstream without the field: answered.
    assert_eq!(
        got,
        [
            ("authed.test", StatusCode::GATEWAY_TIMEOUT),
            ("filtered.test", StatusCode::GATEWAY_TIMEOUT),
            ("plain.test", StatusCode::OK),
        ]
    );
}

/// The webhook: `Bearer good` → 200 (with x-user, x-other), `Bearer bad` → 401 with a body,
/// `Bearer boom` → 500; records every call's method and path.
fn auth_webhook(calls: Arc<Mutex<Vec<String>>>) -> Handler {
    Arc::new(move |req: Request<Bytes>| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        calls.lock().unwrap().push(format!(
            "{} {} {} cookie={}",
            req.method(),
            req.uri(),
            auth,
            req.headers().contains_key("cookie")
        ));
        let b = Response::builder();
        match auth.as_str() {
            "Bearer good" => b
                .header("x-user", "alice")
                .header("x-other", "not-copied")
                .body(Full::new(Bytes::new())),
            "Bearer boom" => b.status(500).body(Full::new(Bytes::from("broken"))),
            _ => b
                .status(401)
                .header("www-authenticate", "Bearer realm=\"weir\"")
                .header("x-internal", "not-copied")
                .body(Full::new(Bytes::from("nope"))),
        }
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_allow_deny_cache_breaker() {
    let echo = echo("e").await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let hook = serve(auth_webhook(calls.clone())).await;
    let dead = free_port();
    let port = free_port();
    let config = r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: cached
    hostnames: [cached.test]
    extAuth:
      url: "http://HOOK/check"
      timeout: 5s
      allowedUpstreamHeaders: [x-user]
      cache: { ttl: 1h, maxEntries: 100 }
    rules:
      - backendRefs: [{ name: echo }]
  - name: guarded
    hostnames: [guarded.test]
    rules:
      - extAuth:
          url: "http://HOOK"
          timeout: 5s
          circuitBreaker: { consecutiveFailures: 2, openFor: 1h }
        backendRefs: [{ name: echo }]
  - name: probe
    hostnames: [probe.test]
    extAuth: { url: "http://HOOK", timeout: 5s, circuitBreaker: { consecutiveFailures: 1, openFor: 1s } }
    rules:
      - backendRefs: [{ name: echo }]
  - name: open
    hostnames: [open.test]
    rules:
      - extAuth: { url: "http://127.0.0.1:DEAD", failureMode: failOpen, timeout: 5s }
        backendRefs: [{ name: echo }]
"#
    .replace("PORT", &port.to_string())
    .replace("ECHO", &echo.to_string())
    .replace("HOOK", &hook.to_string())
    .replace("DEAD", &dead.to_string());
    let dp = Dataplane::start(&config).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/api/items?id=7");
    let n_calls = || calls.lock().unwrap().len();

    // Allow: the upstream gets the allowed webhook header, not the others.
    let good = [
        ("host", "cached.test"),
        ("authorization", "Bearer good"),
        ("x-user", "mallory"),
    ];
    let r = send(&c, get_req(&url, &good)).await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user"], "alice", "{seen}");
    assert!(seen["headers"].get("x-other").is_none(), "{seen}");
    assert_eq!(n_calls(), 1);
    assert_eq!(
        calls.lock().unwrap()[0],
        "GET /check/api/items?id=7 Bearer good cookie=false"
    );
    // Same request again: answered from the cache.
    let r = send(&c, get_req(&url, &good)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(n_calls(), 1);

    // Deny: the webhook's status, body and allowed headers reach the client.
    let bad = [("host", "cached.test"), ("authorization", "Bearer bad")];
    for _ in 0..2 {
        let r = send(&c, get_req(&url, &bad)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(&r.body[..], b"nope");
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weir\""));
        assert!(r.header("x-internal").is_none());
    }
    assert_eq!(n_calls(), 2, "the deny is cached too");

    // Breaker: two failures (500) open it; the third request never reaches the webhook.
    let boom = [("host", "guarded.test"), ("authorization", "Bearer boom")];
    for _ in 0..3 {
        let r = send(&c, get_req(&url, &boom)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "statusOnError default");
        assert_eq!(r.json()["error"], "ext_auth_error");
    }
    assert_eq!(n_calls(), 4);
    let m = metrics_text(&dp).await;
    assert_eq!(
        sample(&m, "weir_ext_auth_breaker_state{route=\"guarded\"}"),
        1,
        "{m}"
    );
    // While open, even a good token is refused without a call (fail closed).
    let r = send(
        &c,
        get_req(
            &url,
            &[("host", "guarded.test"), ("authorization", "Bearer good")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(n_calls(), 4);

    // Half-open: after openFor one probe call goes through; its success closes the breaker.
    let probe =
        |auth: &'static str| get_req(&url, &[("host", "probe.test"), ("authorization", auth)]);
    // The breaker opens after `opened`, so until `opened + openFor` a good token is refused
    // without a call, and the first one let through (the probe) comes no earlier. Requests are
    // counted, not timed: a slow machine just sees fewer refusals before the probe.
    const OPEN_FOR: std::time::Duration = std::time::Duration::from_secs(1);
    let opened = tokio::time::Instant::now();
    assert_eq!(
        send(&c, probe("Bearer boom")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(n_calls(), 5);
    let mut refused = 0;
    loop {
        let status = send(&c, probe("Bearer good")).await.status;
        if status != StatusCode::FORBIDDEN {
            assert_eq!(status, StatusCode::OK, "the probe");
            break;
        }
        assert_eq!(n_calls(), 5, "open: no call");
        refused += 1;
        assert!(refused < 10_000, "the breaker never let a probe through");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        opened.elapsed() >= OPEN_FOR,
        "a probe went through {:?} after opening, before openFor",
        opened.elapsed()
    );
    assert_eq!(n_calls(), 6, "one probe call ({refused} refused before it)");
    assert_eq!(send(&c, probe("Bearer good")).await.status, StatusCode::OK);
    assert_eq!(n_calls(), 7);
    let m = metrics_text(&dp).await;
    assert_eq!(
        sample(&m, "weir_ext_auth_breaker_state{route=\"probe\"}"),
        0,
        "{m}"
    );

    // Fail open: an unreachable webhook lets the request through, marked.
    let r = send(&c, get_req(&url, &[("host", "open.test")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["headers"]["x-weir-auth-failure-mode-allowed"],
        "true"
    );

    let m = metrics_text(&dp).await;
    let v = |s: &str| sample(&m, s);
    assert_eq!(
        v("weir_ext_auth_cache_total{result=\"hit\",route=\"cached\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        v("weir_ext_auth_cache_total{result=\"miss\",route=\"cached\"}"),
        2
    );
    assert_eq!(
        v("weir_ext_auth_requests_total{result=\"allowed\",route=\"cached\"}"),
        1
    );
    assert_eq!(
        v("weir_ext_auth_requests_total{result=\"denied\",route=\"cached\"}"),
        1
    );
    assert_eq!(
        v("weir_ext_auth_requests_total{result=\"failed\",route=\"guarded\"}"),
        2
    );
    assert_eq!(
        v("weir_ext_auth_failure_mode_total{decision=\"denied\",route=\"guarded\"}"),
        4
    );
    assert_eq!(
        v("weir_ext_auth_failure_mode_total{decision=\"allowed\",route=\"open\"}"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_name_routing_from_header_and_body() {
    let a = echo("a").await;
    let b = echo("b").await;
    let d = echo("default").await;
    let port = free_port();
    let config = r#"
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  a: { endpoints: ["ADDR_A"] }
  b: { endpoints: ["ADDR_B"] }
  d: { endpoints: ["ADDR_D"] }
routes:
  - name: m
    rules:
      # Declared first, but entries with more field conditions come first (router.rs).
      - matches: [{ path: { type: Exact, value: /api/v1/datapoints/query } }]
        backendRefs: [{ name: d }]
      - matches:
          - path: { type: Exact, value: /api/v1/datapoints/query }
            fields: [{ header: X-METRICNAME, jsonPath: "metrics[].name", type: RegularExpression, value: 'cpu\..*', maxBodyBytes: 1024 }]
        backendRefs: [{ name: a }]
      - matches:
          - path: { type: Exact, value: /api/v1/datapoints/query }
            fields: [{ jsonPath: metric, value: mem.used }]
          - path: { type: Exact, value: /api/v1/datapoints/query }
            fields: [{ jsonPath: metricName, value: disk }]
        backendRefs: [{ name: b }]
      - matches:
          - path: { type: Exact, value: /strict }
            fields: [{ jsonPath: metric, value: x, maxBodyBytes: 64, onBodyError: reject }]
        backendRefs: [{ name: a }]
      - matches: [{ path: { type: PathPrefix, value: /plain } }]
        backendRefs: [{ name: d }]
"#
    .replace("PORT", &port.to_string())
    .replace("ADDR_A", &a.to_string())
    .replace("ADDR_B", &b.to_string())
    .replace("ADDR_D", &d.to_string());
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let post = |path: &str, body: &'static [u8], headers: &[(&str, &str)]| {
        let mut r = Request::post(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(full(Bytes::from_static(body))).unwrap()
    };
    let served_by = |r: &Resp| r.header("x-echo-server").unwrap_or("none").to_string();
    let q = "/api/v1/datapoints/query";

    // Header (any case) without a body.
    let r = send(&c, post(q, b"", &[("x-MetricName", "cpu.user")])).await;
    assert_eq!(served_by(&r), "a");
    // Body shapes.
    let body: &[u8] = br#"{"start_relative":{"value":1,"unit":"hours"},"metrics":[{"tags":{}},{"name":"cpu.load","tags":{"host":["h1"]}}]}"#;
    let r = send(&c, post(q, body, &[("content-type", "application/json")])).await;
    assert_eq!(served_by(&r), "a");
    // Replayed upstream byte for byte.
    let seen = r.json();
    assert_eq!(seen["bodyBytes"], body.len());
    assert_eq!(seen["bodySha256"], hex(&Sha256::digest(body)));
    assert_eq!(seen["headers"]["content-type"], "application/json");
    let r = send(&c, post(q, br#"{"metric":"mem.used"}"#, &[])).await;
    assert_eq!(served_by(&r), "b");
    let r = send(&c, post(q, br#"{"metricName":"disk"}"#, &[])).await;
    assert_eq!(served_by(&r), "b");
    let r = send(&c, post(q, br#"{"metricName":"other"}"#, &[])).await;
    assert_eq!(served_by(&r), "default");
    // The header wins over the body: its value does not match cpu.*, so the body's cpu.x is
    // not looked at.
    let r = send(
        &c,
        post(
            q,
            br#"{"metrics":[{"name":"cpu.x"}]}"#,
            &[("x-metricname", "mem.x")],
        ),
    )
    .await;
    assert_eq!(served_by(&r), "default");
    // Not JSON, or over the cap (1024) with onBodyError noMatch: routing goes on, and the
    // whole body (the part read plus the rest) still reaches the backend unchanged.
    let r = send(&c, post(q, b"not json", &[])).await;
    assert_eq!(served_by(&r), "default");
    let big: &'static [u8] = Box::leak(
        format!(
            r#"{{"metrics":[{{"name":"cpu.big","pad":"{}"}}]}}"#,
            "x".repeat(300_000)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let r = send(&c, post(q, big, &[])).await;
    assert_eq!(served_by(&r), "default");
    let seen = r.json();
    assert_eq!(seen["bodyBytes"], big.len());
    assert_eq!(seen["bodySha256"], hex(&Sha256::digest(big)));

    // Over HTTP/2 (h2c) too: the body is read from the stream, routed on and replayed.
    let h2 = h2c_client();
    let r = send(&h2, post(q, br#"{"metric":"mem.used","x":[1,2,3]}"#, &[])).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(served_by(&r), "b");
    assert_eq!(
        r.json()["bodySha256"],
        hex(&Sha256::digest(br#"{"metric":"mem.used","x":[1,2,3]}"#))
    );
    let r = send(&h2, post(q, big, &[])).await;
    assert_eq!(served_by(&r), "default");
    assert_eq!(r.json()["bodySha256"], hex(&Sha256::digest(big)));

    // onBodyError reject: 413 over the cap, 400 when not JSON or without the field.
    let r = send(&c, post("/strict", &[b'{'; 100], &[])).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"], "body_too_large");
    let r = send(&c, post("/strict", b"[1,2", &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "body_not_json");
    let r = send(&c, post("/strict", br#"{"other":1}"#, &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(&c, post("/strict", br#"{"metric":"x"}"#, &[])).await;
    assert_eq!(served_by(&r), "a");

    // A path decided without body rules still works for large uploads.
    let r = send(&c, post("/plain", big, &[])).await;
    assert_eq!(served_by(&r), "default");
    assert_eq!(r.json()["bodyBytes"], big.len());
}

/// Memory under a flood of distinct rate-limit keys (run with `--ignored --nocapture`):
/// 1,000,000 client addresses against a table bounded at 100,000 keys, once with buckets
/// that refill during the flood (full buckets are dropped) and once with buckets that cannot
/// refill (the table saturates and the rest share the overflow bucket). Prints the RSS growth.
#[test]
#[ignore]
fn rate_limit_flood_memory() {
    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    for cfg in [
        r#"{"requestsPerUnit": 10, "burst": 20}"#,
        r#"{"requestsPerUnit": 1, "unit": "hour", "burst": 20}"#,
    ] {
        let cfg: weir_config::RateLimit = serde_json::from_str(cfg).unwrap();
        let l = weir_dataplane::ratelimit::RateLimiter::new("flood", &cfg);
        let before = rss_kib();
        let limited = AtomicU64::new(0);
        for k in 0..1_000_000u64 {
            let ip = std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(k) + 1));
            if matches!(
                l.check(ip, &http::HeaderMap::new()),
                weir_dataplane::ratelimit::Decision::Limited { .. }
            ) {
                limited.fetch_add(1, Ordering::Relaxed);
            }
        }
        let after = rss_kib();
        println!(
            "rate-limit flood ({} per {:?}, burst {}): 1000000 distinct keys, {} kept (bound 100000), RSS {} KiB -> {} KiB (+{} KiB), {} limited",
            cfg.requests_per_unit,
            cfg.unit,
            cfg.burst(),
            l.keys(),
            before,
            after,
            after.saturating_sub(before),
            limited.load(Ordering::Relaxed)
        );
        assert!(l.keys() <= 100_000);
        assert!(
            after.saturating_sub(before) < 32 * 1024,
            "grew more than 32 MiB"
        );
    }
}
