//! The dataplane features the Gateway API needs, through the real binary and real sockets:
//! listener-bound routes, ReplaceFullPath, hostname rewrite, per-backendRef header filters,
//! invalid backendRefs (500), per-try backend timeouts, request mirroring.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};

/// A config with one http listener on `port`, `backends` as (name, address, extra fields)
/// and `routes` (YAML, the `routes:` key included).
fn config(port: u16, backends: &[(&str, std::net::SocketAddr, &str)], routes: &str) -> String {
    let mut out = format!(
        "listeners: [{{ name: http, address: \"127.0.0.1:{port}\", protocol: http }}]\nbackends:\n"
    );
    for (name, addr, extra) in backends {
        out.push_str(&format!("  {name}: {{ endpoints: [\"{addr}\"]{extra} }}\n"));
    }
    out + routes
}

/// `x-route` of the response, or the status when it is not 200.
fn served_by(status: StatusCode, route: Option<&str>) -> String {
    match (status, route) {
        (StatusCode::OK, Some(r)) => r.to_string(),
        (s, _) => s.as_u16().to_string(),
    }
}

/// Routes bound to listeners answer only there; elsewhere the request falls through to the
/// routes that are served there (a bound route never shadows them), or 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_served_only_on_their_listeners() {
    let echo = echo("gw").await;
    let (http, side, tls) = (free_port(), free_port(), free_port());
    let tag = |name: &str| {
        format!("filters: {{ responseHeaders: {{ set: [{{ name: x-route, value: {name} }}] }} }}")
    };
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{http}", protocol: http }}
  - {{ name: side, address: "127.0.0.1:{side}", protocol: http }}
  - {{ name: https, address: "127.0.0.1:{tls}", protocol: https }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: everywhere
    hostnames: [app.test]
    rules: [{{ {everywhere}, backendRefs: [{{ name: echo }}] }}]
  - name: http-only
    hostnames: [app.test]
    listeners: [http]
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /bound }} }}]
        {http_only}
        backendRefs: [{{ name: echo }}]
  - name: https-only
    hostnames: [app.test]
    listeners: [https]
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /tls }} }}]
        {https_only}
        backendRefs: [{{ name: echo }}]
  - name: plain-host
    hostnames: [plain.test]
    listeners: [http, side]
    rules: [{{ {plain}, backendRefs: [{{ name: echo }}] }}]
"#,
        everywhere = tag("everywhere"),
        http_only = tag("http-only"),
        https_only = tag("https-only"),
        plain = tag("plain-host"),
    );
    let dp = Dataplane::start(&config).await;
    let c = client();
    let tcp = |port: u16, host: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            let r = send(
                &c,
                get_req(&format!("http://127.0.0.1:{port}{path}"), &[("host", host)]),
            )
            .await;
            served_by(r.status, r.header("x-route"))
        }
    };
    assert_eq!(tcp(http, "app.test", "/bound/x").await, "http-only");
    assert_eq!(tcp(side, "app.test", "/bound/x").await, "everywhere");
    assert_eq!(tcp(http, "app.test", "/tls").await, "everywhere");
    assert_eq!(tcp(http, "plain.test", "/x").await, "plain-host");
    assert_eq!(tcp(side, "plain.test", "/x").await, "plain-host");

    // The https listener (its QUIC side here) serves its own route and the unbound one only.
    let conn = h3_conn(tls).await;
    for (host, path, want) in [
        ("app.test", "/bound/x", "everywhere"),
        ("app.test", "/tls/y", "https-only"),
        ("plain.test", "/x", "404"),
    ] {
        let req = Request::get(format!("https://{host}{path}"))
            .body(Bytes::new())
            .unwrap();
        let r = conn.request(req).await.expect("h3 request");
        let route = r.headers.get("x-route").and_then(|v| v.to_str().ok());
        assert_eq!(served_by(r.status, route), want, "h3 {host}{path}");
    }
    conn.close().await;

    // An unknown listener name is rejected with its path; the last good config keeps serving.
    let bad = config.replace("listeners: [http, side]", "listeners: [http, nope]");
    let (status, body) = dp.put_config(bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["errors"][0]["path"], "routes[3].listeners[1]",
        "{body}"
    );
    assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(tcp(side, "plain.test", "/x").await, "plain-host");
}

/// The echo backend's view of a request: (uri, headers).
fn echoed(r: &Resp) -> (String, serde_json::Value) {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    (
        j["uri"].as_str().unwrap_or_default().to_string(),
        j["headers"].clone(),
    )
}

/// HTTPRouteRewritePath: ReplaceFullPath (replaceFull) and ReplacePrefixMatch (replacePrefix),
/// with header modifiers beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_rewrites_as_the_gateway_api_conformance_test() {
    let echo = echo("rw").await;
    let port = free_port();
    let config = format!(
        r#"
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: rewrite-path
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /prefix/one }} }}]
        filters: {{ path: {{ replacePrefix: {{ from: /prefix/one, to: /one }} }} }}
        backendRefs: [{{ name: echo }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /strip-prefix }} }}]
        filters: {{ path: {{ replacePrefix: {{ from: /strip-prefix, to: / }} }} }}
        backendRefs: [{{ name: echo }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /full/one }} }}]
        filters: {{ path: {{ replaceFull: /one }} }}
        backendRefs: [{{ name: echo }}]
      - matches: [{{ path: {{ type: PathPrefix, value: /full/rewrite-path-and-modify-headers }} }}]
        filters:
          path: {{ replaceFull: /test }}
          requestHeaders:
            set: [{{ name: X-Header-Set, value: set-overwrites-values }}]
            add: [{{ name: X-Header-Add, value: header-val-1 }}, {{ name: X-Header-Add-Append, value: header-val-2 }}]
            remove: [X-Header-Remove]
        backendRefs: [{{ name: echo }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/full/one/two?keep=1", "/one?keep=1"),
    ] {
        let (uri, _) = echoed(&get(&c, &url(path)).await);
        assert_eq!(uri, want, "{path}");
    }
    let r = send(
        &c,
        get_req(
            &url("/full/rewrite-path-and-modify-headers/test"),
            &[
                ("x-header-remove", "remove-val"),
                ("x-header-add-append", "append-val-1"),
                ("x-header-set", "set-val"),
            ],
        ),
    )
    .await;
    let (uri, h) = echoed(&r);
    assert_eq!(uri, "/test");
    assert_eq!(h["x-header-add"], "header-val-1");
    assert_eq!(h["x-header-add-append"], "append-val-1, header-val-2");
    assert_eq!(h["x-header-set"], "set-overwrites-values");
    assert!(h.get("x-header-remove").is_none(), "{h}");
}

/// HTTPRouteRewriteHost: the host sent upstream is rewritten (HTTP/1.1 and h2c backends), the
/// client's stays in X-Forwarded-Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rewrite_as_the_gateway_api_conformance_test() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let port = free_port();
    let routes = r#"
routes:
  - name: rewrite-host
    hostnames: [rewrite.example]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /one } }]
        filters: { hostRewrite: one.example.org }
        backendRefs: [{ name: v1 }]
      - filters: { hostRewrite: example.org }
        backendRefs: [{ name: v2 }]
      - matches: [{ path: { type: PathPrefix, value: /rewrite-host-and-modify-headers } }]
        filters:
          hostRewrite: test.example.org
          requestHeaders:
            set: [{ name: X-Header-Set, value: set-overwrites-values }]
            remove: [X-Header-Remove]
        backendRefs: [{ name: v2 }]
  - name: untouched
    hostnames: [plain.example]
    rules: [{ backendRefs: [{ name: v1 }] }]
"#;
    let config = config(
        port,
        &[("v1", v1, ""), ("v2", v2, ", protocol: h2c")],
        routes,
    );
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for (host, path, server, want) in [
        ("rewrite.example", "/one", "v1", "one.example.org"),
        ("rewrite.example", "/", "v2", "example.org"),
        (
            "rewrite.example",
            "/rewrite-host-and-modify-headers",
            "v2",
            "test.example.org",
        ),
        ("plain.example", "/", "v1", "plain.example"),
    ] {
        let r = send(
            &c,
            get_req(&url(path), &[("host", host), ("x-header-remove", "r")]),
        )
        .await;
        assert_eq!(r.header("x-echo-server"), Some(server), "{host}{path}");
        let (_, h) = echoed(&r);
        assert_eq!(h["host"], want, "{host}{path}: {h}");
        assert_eq!(h["x-forwarded-host"], host, "{host}{path}: {h}");
        if path.starts_with("/rewrite-host-and") {
            assert_eq!(h["x-header-set"], "set-overwrites-values");
            assert!(h.get("x-header-remove").is_none(), "{h}");
        }
    }
}

/// HTTPRouteRequestHeaderModifierBackendWeights: each backendRef's header filters apply only
/// to the requests sent to it, after the rule's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_ref_header_filters_follow_the_picked_backend() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let port = free_port();
    let routes = r#"
routes:
  - name: weights
    rules:
      - filters:
          requestHeaders: { set: [{ name: x-order, value: rule }, { name: x-rule, value: "yes" }] }
          responseHeaders: { set: [{ name: x-resp, value: rule }] }
        backendRefs:
          - name: v1
            weight: 10
            filters:
              requestHeaders: { set: [{ name: backend, value: v1 }, { name: x-order, value: ref-v1 }] }
              responseHeaders: { set: [{ name: x-resp, value: ref-v1 }] }
          - name: v2
            weight: 10
            filters:
              requestHeaders: { set: [{ name: backend, value: v2 }], remove: [x-rule] }
"#;
    let config = config(port, &[("v1", v1, ""), ("v2", v2, "")], routes);
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let mut seen = std::collections::BTreeSet::new();
    // 60 requests at 50/50: both are picked unless the odds (2^-59) say otherwise.
    for _ in 0..60 {
        let r = get(&c, &format!("http://127.0.0.1:{port}/")).await;
        let (_, h) = echoed(&r);
        let server = r.header("x-echo-server").unwrap_or_default().to_string();
        assert_eq!(h["backend"], server.as_str(), "{h}");
        match server.as_str() {
            "v1" => {
                assert_eq!(h["x-order"], "ref-v1", "ref filters run after the rule's");
                assert_eq!(h["x-rule"], "yes");
                assert_eq!(r.header("x-resp"), Some("ref-v1"));
            }
            _ => {
                assert_eq!(h["x-order"], "rule");
                assert!(h.get("x-rule").is_none(), "{h}");
                assert_eq!(r.header("x-resp"), Some("rule"));
            }
        }
        seen.insert(server);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// HTTPRouteInvalidNonExistentBackendRef / InvalidCrossNamespaceBackendRef and partially
/// invalid weights: requests picked for an invalid backendRef get 500 with its reason, in
/// proportion to its weight; the valid refs keep serving their share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backend_refs_answer_500_by_weight() {
    let v1 = echo("v1").await;
    let port = free_port();
    let routes = r#"
routes:
  - name: all-invalid
    hostnames: [gone.test]
    rules:
      - backendRefs: [{ name: "ns/missing", invalid: "backendRef Service ns/missing not found" }]
  - name: half-invalid
    hostnames: [half.test]
    rules:
      - backendRefs:
          - { name: "other/svc", weight: 1, invalid: "backendRef to other/svc not permitted by any ReferenceGrant" }
          - { name: v1, weight: 1 }
  - name: grpc-invalid
    rules:
      - matches: [{ path: { type: PathPrefix, value: /pkg.Svc } }]
        backendRefs: [{ name: "ns/grpc", invalid: "backendRef Service ns/grpc not found" }]
"#;
    let dp = Dataplane::start(&config(port, &[("v1", v1, "")], routes)).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..5 {
        let r = send(&c, get_req(&url, &[("host", "gone.test")])).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.json()["error"], "invalid_backend");
        assert_eq!(
            r.json()["message"],
            "backendRef Service ns/missing not found"
        );
    }
    // GRPCRoute: a gRPC request picked for an invalid backendRef gets UNAVAILABLE (14).
    let grpc = Request::post(format!("http://127.0.0.1:{port}/pkg.Svc/Call"))
        .header("content-type", "application/grpc")
        .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let r = send(&h2c_client(), grpc).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("14"));
    let (mut ok, mut failed) = (0, 0);
    // 60 requests at 50/50: both outcomes show unless the odds (2^-59) say otherwise.
    for _ in 0..60 {
        let r = send(&c, get_req(&url, &[("host", "half.test")])).await;
        match r.status {
            StatusCode::OK => {
                assert_eq!(r.header("x-echo-server"), Some("v1"));
                ok += 1;
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
                assert!(msg.contains("not permitted by any ReferenceGrant"), "{msg}");
                failed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    let line = format!(
        "weir_proxy_errors_total{{backend=\"-\",kind=\"invalid_backend\",route=\"half-invalid\"}} {failed}"
    );
    metrics_line(&dp, &line).await;
}

/// Polls `/metrics` until `line` shows up (an exchange is counted when its response body
/// ends, which may be just after the client has read it); the hang guard ends a wrong wait.
async fn metrics_line(dp: &Dataplane, line: &str) {
    let c = client();
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let m = get(&c, &dp.admin_url("/metrics")).await;
        let text = String::from_utf8_lossy(&m.body);
        if text.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line} in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Requests an echo backend has counted (its own `stats=1`, asked directly).
async fn echo_requests(addr: std::net::SocketAddr) -> u64 {
    let r = get(&client(), &format!("http://{addr}/?stats=1")).await;
    r.json()["requests"].as_u64().unwrap_or_default()
}

/// HTTPRouteTimeoutBackendRequest: `backendRequestTimeout` limits each upstream try (retries
/// get their own), replaces the backend's perTryTimeout for the rule, and `0s` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_request_timeout_limits_each_try() {
    let slow = echo("slow").await;
    let port = free_port();
    let routes = r#"
routes:
  - name: backend-request-timeout
    rules:
      - matches: [{ path: { type: PathPrefix, value: /backend-timeout } }]
        backendRefs: [{ name: slow }]
        backendRequestTimeout: 500ms
      - matches: [{ path: { type: PathPrefix, value: /disable-backend-timeout } }]
        backendRefs: [{ name: slow }]
        backendRequestTimeout: 0s
      - matches: [{ path: { type: PathPrefix, value: /backend-default } }]
        backendRefs: [{ name: slow }]
"#;
    let retries = ", retries: { attempts: 2, perTryTimeout: 200ms, retryOn: { timeout: true } }";
    let _dp = Dataplane::start(&config(port, &[("slow", slow, retries)], routes)).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let before = echo_requests(slow).await;
    let r = get(&c, &url("/backend-timeout?delay_ms=3000")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("500ms"),
        "{}",
        r.json()
    );
    // Two tries, each cut at 500ms: the limit is per try, not per request.
    assert_eq!(echo_requests(slow).await - before, 2);

    // `0s`: no per-try limit for this rule, not even the backend's 200ms.
    let r = get(&c, &url("/disable-backend-timeout?delay_ms=600")).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // Without the field the backend's perTryTimeout applies.
    let r = get(&c, &url("/backend-default?delay_ms=600")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("200ms"),
        "{}",
        r.json()
    );
}

/// What a mirror backend received.
#[derive(Debug)]
struct Copy {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A mirror backend: answers 200 and hands every request it got to the test.
async fn recorder() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Copy>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes())?;
                        let _ = tx.send(Copy {
                            // Origin form whatever the protocol (h2 gives an absolute URI).
                            path: parts
                                .uri
                                .path_and_query()
                                .map_or_else(String::new, |pq| pq.to_string()),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, hyper::Error>(http::Response::new(full("mirror-answer")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, rx)
}

/// A backend that accepts connections and never answers.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

async fn next_copy(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Copy>) -> Copy {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("hang guard: no mirrored copy")
        .expect("recorder gone")
}

/// HTTPRouteRequestMirror / RequestMultipleMirrors: the client gets the answer of the
/// backendRef; each mirror gets a copy with the rule's request filters applied (not the
/// backendRef's own) and the request body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_filtered_copy_of_the_request() {
    let v1 = echo("v1").await;
    let (m2, mut rx2) = recorder().await;
    let (m3, mut rx3) = recorder().await;
    let port = free_port();
    let routes = r#"
routes:
  - name: request-mirror
    rules:
      - matches: [{ path: { type: PathPrefix, value: /mirror } }]
        filters: { mirrors: [{ backend: m2 }] }
        backendRefs: [{ name: v1 }]
      - matches: [{ path: { type: PathPrefix, value: /multi-mirror-and-modify-request-headers } }]
        filters:
          requestHeaders:
            set: [{ name: X-Header-Set, value: set-overwrites-values }]
            add: [{ name: X-Header-Add-Append, value: header-val-2 }]
            remove: [X-Header-Remove]
          path: { replacePrefix: { from: /multi-mirror-and-modify-request-headers, to: /m } }
          mirrors: [{ backend: m2 }, { backend: m3, percent: 100 }]
        backendRefs:
          - name: v1
            filters: { requestHeaders: { set: [{ name: x-only-v1, value: "1" }] } }
"#;
    let backends = [("v1", v1, ""), ("m2", m2, ""), ("m3", m3, "")];
    let dp = Dataplane::start(&config(port, &backends, routes)).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let r = get(&c, &url("/mirror/x?q=1")).await;
    assert_eq!(
        r.header("x-echo-server"),
        Some("v1"),
        "the client gets v1's answer"
    );
    let copy = next_copy(&mut rx2).await;
    assert_eq!(copy.path, "/mirror/x?q=1");
    assert!(copy.body.is_empty());

    let req = Request::post(url("/multi-mirror-and-modify-request-headers/a"))
        .header("x-header-remove", "remove-val")
        .header("x-header-add-append", "append-val-1")
        .header("x-header-set", "set-val")
        .body(full(vec![b'p'; 3000]))
        .unwrap();
    let r = send(&c, req).await;
    let (uri, h) = echoed(&r);
    assert_eq!(uri, "/m/a");
    assert_eq!(h["x-only-v1"], "1");
    assert_eq!(r.json()["bodyBytes"], 3000);
    for rx in [&mut rx2, &mut rx3] {
        let copy = next_copy(rx).await;
        assert_eq!(copy.path, "/m/a");
        let hv = |n: &str| {
            copy.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(hv("x-header-set"), ["set-overwrites-values"]);
        assert_eq!(hv("x-header-add-append"), ["append-val-1", "header-val-2"]);
        assert!(hv("x-header-remove").is_empty());
        assert!(
            hv("x-only-v1").is_empty(),
            "backendRef filters stay with v1"
        );
        assert_eq!(copy.body.as_ref(), &[b'p'; 3000][..]);
    }
    for (backend, n) in [("m2", 2), ("m3", 1)] {
        let line = format!(
            "weir_mirror_requests_total{{backend=\"{backend}\",result=\"sent\",route=\"request-mirror\"}} {n}"
        );
        metrics_line(&dp, &line).await;
    }
}

/// A mirror never delays or fails the request: a mirror backend that never answers, or that
/// refuses connections, leaves the client's requests served; copies beyond the in-flight cap
/// and bodies over the size cap are dropped and counted; percent 0 sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_fire_and_forget_and_bounded() {
    let v1 = echo("v1").await;
    let hole = black_hole().await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (rec, mut rx) = recorder().await;
    let port = free_port();
    let routes = r#"
routes:
  - name: hole
    hostnames: [hole.test]
    rules: [{ filters: { mirrors: [{ backend: hole }] }, backendRefs: [{ name: v1 }] }]
  - name: refused
    hostnames: [refused.test]
    rules: [{ filters: { mirrors: [{ backend: refused }] }, backendRefs: [{ name: v1 }] }]
  - name: never
    hostnames: [never.test]
    rules: [{ filters: { mirrors: [{ backend: rec, percent: 0 }] }, backendRefs: [{ name: v1 }] }]
  - name: big
    hostnames: [big.test]
    rules: [{ filters: { mirrors: [{ backend: rec }] }, backendRefs: [{ name: v1 }] }]
"#;
    let backends = [
        ("v1", v1, ""),
        // Copies stay in flight for the whole test.
        (
            "hole",
            hole,
            ", timeouts: { request: 10m }, retries: { attempts: 1 }",
        ),
        ("refused", refused, ", retries: { attempts: 1 }"),
        ("rec", rec, ""),
    ];
    let dp = Dataplane::start(&config(port, &backends, routes)).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    for _ in 0..3 {
        let r = send(&c, get_req(&url, &[("host", "refused.test")])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for _ in 0..50 {
        let r = send(&c, get_req(&url, &[("host", "never.test")])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Over the size cap: forwarded whole, not mirrored. Under it: mirrored.
    let post = |n: usize| {
        Request::post(&url)
            .header("host", "big.test")
            .body(full(vec![b'b'; n]))
            .unwrap()
    };
    let r = send(&c, post(weir_dataplane::policy::mirror::MAX_BODY + 1)).await;
    assert_eq!(
        r.json()["bodyBytes"],
        weir_dataplane::policy::mirror::MAX_BODY + 1
    );
    // Streamed without a length: cut off at the cap as it passes, and forwarded whole.
    let chunk = Bytes::from(vec![b's'; 16 * 1024]);
    let req = Request::post(&url)
        .header("host", "big.test")
        .body(streamed(vec![chunk; 5]))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.json()["bodyBytes"], 5 * 16 * 1024);
    // A streamed body under the cap is copied whole.
    let chunk = Bytes::from(vec![b'c'; 1000]);
    let req = Request::post(&url)
        .header("host", "big.test")
        .body(streamed(vec![chunk; 3]))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.json()["bodyBytes"], 3000);
    let r = send(&c, post(10)).await;
    assert_eq!(r.json()["bodyBytes"], 10);
    // Copies run in their own tasks: they may arrive in either order.
    let mut copies = [next_copy(&mut rx).await.body, next_copy(&mut rx).await.body];
    copies.sort_by_key(|b| b.len());
    assert_eq!(copies[0].as_ref(), &[b'b'; 10][..]);
    assert_eq!(copies[1].as_ref(), &[b'c'; 3000][..]);
    metrics_line(
        &dp,
        "weir_mirror_requests_total{backend=\"refused\",result=\"failed\",route=\"refused\"} 3",
    )
    .await;
    metrics_line(
        &dp,
        "weir_mirror_requests_total{backend=\"rec\",result=\"dropped\",route=\"big\"} 2",
    )
    .await;
    let text = String::from_utf8_lossy(&get(&c, &dp.admin_url("/metrics")).await.body).into_owned();
    for result in ["sent", "failed", "dropped"] {
        let line = format!(
            "weir_mirror_requests_total{{backend=\"rec\",result=\"{result}\",route=\"never\"}} 0\n"
        );
        assert!(text.contains(&line), "percent 0 made copies:\n{text}");
    }
    assert!(rx.try_recv().is_err(), "nothing else reached the recorder");

    // Last, as the unanswered copies hold every in-flight slot of the process from then on.
    let extra = 20;
    for _ in 0..weir_dataplane::policy::mirror::MAX_IN_FLIGHT + extra {
        let r = send(&c, get_req(&url, &[("host", "hole.test")])).await;
        assert_eq!(r.header("x-echo-server"), Some("v1"));
    }
    metrics_line(
        &dp,
        &format!("weir_mirror_requests_total{{backend=\"hole\",result=\"dropped\",route=\"hole\"}} {extra}"),
    )
    .await;
    let text = String::from_utf8_lossy(&get(&c, &dp.admin_url("/metrics")).await.body).into_owned();
    assert!(
        text.contains(
            "weir_mirror_requests_total{backend=\"hole\",result=\"sent\",route=\"hole\"} 0\n"
        ),
        "the black hole answered?\n{text}"
    );
}

/// Requests over HTTP/3 are mirrored too, body included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requests_are_mirrored() {
    let v1 = echo("v1").await;
    let (rec, mut rx) = recorder().await;
    let tls = free_port();
    let config = format!(
        r#"
listeners: [{{ name: https, address: "127.0.0.1:{tls}", protocol: https }}]
backends:
  v1: {{ endpoints: ["{v1}"] }}
  rec: {{ endpoints: ["{rec}"], protocol: h2c }}
routes:
  - name: h3-mirror
    rules: [{{ filters: {{ mirrors: [{{ backend: rec }}] }}, backendRefs: [{{ name: v1 }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let conn = h3_conn(tls).await;
    let get = Request::get("https://h3.test/get")
        .body(Bytes::new())
        .unwrap();
    let r = conn.request(get).await.expect("h3 get");
    assert_eq!(r.status, StatusCode::OK);
    let post = Request::post("https://h3.test/post")
        .body(Bytes::from(vec![b'q'; 2000]))
        .unwrap();
    let r = conn.request(post).await.expect("h3 post");
    assert_eq!(r.status, StatusCode::OK);
    conn.close().await;
    let mut copies = [next_copy(&mut rx).await, next_copy(&mut rx).await];
    copies.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(copies[0].path, "/get");
    assert!(copies[0].body.is_empty());
    assert_eq!(copies[1].path, "/post");
    assert_eq!(copies[1].body.as_ref(), &[b'q'; 2000][..]);
    assert_eq!(
        copies[1].headers.get("host").and_then(|v| v.to_str().ok()),
        Some("h3.test")
    );
}
