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
