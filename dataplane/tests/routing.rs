//! Routing precedence through the real proxy: every rule tags its responses with `x-rule`, and a
//! table of requests asserts which rule served each (see the precedence list in src/router.rs).

mod common;
use common::*;

use http::StatusCode;

/// Rules are deliberately declared in an order that contradicts precedence wherever possible,
/// so only the documented precedence (not declaration order) can produce the expected table.
const CONFIG: &str = r#"
version: routing-1
listeners:
  - { name: http, address: "127.0.0.1:PORT", protocol: http }
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  # Catch-all (no hostnames), declared first: must still lose to exact and wildcard hosts.
  - name: catchall
    rules:
      - matches: [{ path: { type: Exact, value: /shared } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: catchall-shared }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /only-catchall } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: catchall-only }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /api } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: catchall-api }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /dup } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: dup-first } ] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /dup } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: dup-second }] } }
        backendRefs: [{ name: echo }]
  # Short wildcard, declared before the longer one.
  - name: wild
    hostnames: ["*.example.com"]
    rules:
      - matches: [{ path: { type: Exact, value: /shared/x } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: wild-shared-exact }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /shared } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: wild-shared }] } }
        backendRefs: [{ name: echo }]
  - name: wild-eu
    hostnames: ["*.eu.example.com"]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /shared } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: eu-shared }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /deep } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: eu-deep }] } }
        backendRefs: [{ name: echo }]
  # Exact host. Within it, each precedence level is declared least-specific first.
  - name: api
    hostnames: [api.example.com]
    rules:
      - matches: [{ headers: [{ name: x-nopath, value: "1" }] }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: nopath-header }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: RegularExpression, value: '/api/v[0-9]+/.*|/files/[0-9]+\.txt' } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: regex }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /api } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: prefix-short }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /api/v1 } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: prefix-long }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Wildcard, value: "/api/*/items" } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: wildcard } ] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Wildcard, value: "/api/*/items/**" } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: wildcard-tail } ] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /api/v1/items } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: exact } ] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /m } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: method-any }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /m }, method: POST }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: method-post }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /h } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: headers-0 }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /h }, headers: [{ name: x-a, value: "1" }] }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: headers-1 }] } }
        backendRefs: [{ name: echo }]
      - matches:
          - path: { type: Exact, value: /h }
            headers:
              - { name: x-a, value: "1" }
              - { name: x-b, type: RegularExpression, value: "b[a-z]*" }
        filters: { responseHeaders: { set: [{ name: x-rule, value: headers-2 }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /q } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: query-0 }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: Exact, value: /q }, queryParams: [{ name: v, value: "2" }] }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: query-1 }] } }
        backendRefs: [{ name: echo }]
      - matches:
          - { path: { type: Exact, value: /or-a } }
          - { path: { type: Exact, value: /or-b } }
        filters: { responseHeaders: { set: [{ name: x-rule, value: or }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /tie } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: tie-route-api }] } }
        backendRefs: [{ name: echo }]
  # Same exact host again, later: loses every tie to route `api`.
  - name: api-again
    hostnames: [API.example.com]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /tie } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: tie-route-api-again }] } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /again } }]
        filters: { responseHeaders: { set: [{ name: x-rule, value: again }] } }
        backendRefs: [{ name: echo }]
"#;

/// Expected rule for a request; `None` means 404.
struct Case {
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Option<&'static str>,
}

const fn c(
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want: Option<&'static str>,
) -> Case {
    Case {
        host,
        method,
        path,
        headers,
        want,
    }
}

const API: &str = "api.example.com";

const TABLE: &[Case] = &[
    // Path kinds within the exact host: Exact > Wildcard > PathPrefix (longest first) > regex.
    c(API, "GET", "/api/v1/items", &[], Some("exact")),
    c(API, "GET", "/api/v2/items", &[], Some("wildcard")),
    c(API, "GET", "/api/v2/items/7", &[], Some("wildcard-tail")),
    c(API, "GET", "/api/v1/other", &[], Some("prefix-long")),
    c(API, "GET", "/api/v1", &[], Some("prefix-long")),
    c(API, "GET", "/api/v1x/other", &[], Some("prefix-short")),
    c(API, "GET", "/api", &[], Some("prefix-short")),
    c(API, "GET", "/files/12.txt", &[], Some("regex")),
    // Regex must match the whole path.
    c(API, "GET", "/files/12.txt.bak", &[], None),
    // A match without a path condition comes after every path kind.
    c(
        API,
        "GET",
        "/files/12.txt",
        &[("x-nopath", "1")],
        Some("regex"),
    ),
    c(
        API,
        "GET",
        "/files/x.txt",
        &[("x-nopath", "1")],
        Some("nopath-header"),
    ),
    // Method condition first.
    c(API, "POST", "/m", &[], Some("method-post")),
    c(API, "GET", "/m", &[], Some("method-any")),
    // More header conditions first; regex values match whole values.
    c(
        API,
        "GET",
        "/h",
        &[("x-a", "1"), ("x-b", "bee")],
        Some("headers-2"),
    ),
    c(
        API,
        "GET",
        "/h",
        &[("x-a", "1"), ("x-b", "abee")],
        Some("headers-1"),
    ),
    c(API, "GET", "/h", &[("x-a", "1")], Some("headers-1")),
    c(
        API,
        "GET",
        "/h",
        &[("x-a", "2"), ("x-b", "bee")],
        Some("headers-0"),
    ),
    c(API, "GET", "/h", &[], Some("headers-0")),
    // More query conditions first.
    c(API, "GET", "/q?v=2", &[], Some("query-1")),
    c(API, "GET", "/q?a=1&v=2", &[], Some("query-1")),
    c(API, "GET", "/q?v=3", &[], Some("query-0")),
    c(API, "GET", "/q", &[], Some("query-0")),
    // Matches within a rule are ORed.
    c(API, "GET", "/or-a", &[], Some("or")),
    c(API, "GET", "/or-b", &[], Some("or")),
    // Declaration order breaks the remaining ties: route index, then rule index.
    c(API, "GET", "/tie/x", &[], Some("tie-route-api")),
    c(API, "GET", "/again", &[], Some("again")),
    c("other.org", "GET", "/dup", &[], Some("dup-first")),
    c(API, "GET", "/dup/1", &[], Some("dup-first")),
    // Host: the port and case do not matter.
    c(
        "API.Example.COM:8080",
        "GET",
        "/api/v1/items",
        &[],
        Some("exact"),
    ),
    // Exact host beats catch-all even for a path the catch-all knows (/api)...
    c("other.org", "GET", "/api/x", &[], Some("catchall-api")),
    c(API, "GET", "/api/x", &[], Some("prefix-short")),
    // ...and the wildcard host beats the catch-all although its path is less specific.
    c(API, "GET", "/shared", &[], Some("wild-shared")),
    c(
        "www.example.com",
        "GET",
        "/shared",
        &[],
        Some("wild-shared"),
    ),
    c("other.org", "GET", "/shared", &[], Some("catchall-shared")),
    // The catch-all still serves paths the more specific hosts' routes do not match.
    c(API, "GET", "/only-catchall/x", &[], Some("catchall-only")),
    c(
        "www.example.com",
        "GET",
        "/only-catchall",
        &[],
        Some("catchall-only"),
    ),
    // Longer wildcard suffix beats shorter, even against a more specific path.
    c(
        "a.eu.example.com",
        "GET",
        "/shared/x",
        &[],
        Some("eu-shared"),
    ),
    c("a.eu.example.com", "GET", "/deep", &[], Some("eu-deep")),
    c("b.a.eu.example.com", "GET", "/deep/1", &[], Some("eu-deep")),
    c(
        "www.example.com",
        "GET",
        "/shared/x",
        &[],
        Some("wild-shared-exact"),
    ),
    // `*.eu.example.com` does not cover `eu.example.com`; `*.example.com` does.
    c("eu.example.com", "GET", "/deep", &[], None),
    c("eu.example.com", "GET", "/shared", &[], Some("wild-shared")),
    // `*.example.com` does not cover `example.com` itself.
    c(
        "example.com",
        "GET",
        "/shared",
        &[],
        Some("catchall-shared"),
    ),
    // Paths are matched as received: no percent-decoding.
    c(API, "GET", "/%61pi/v1", &[], None),
    c(API, "GET", "/api%2Fv1/items", &[], None),
    // Prefixes match on segment boundaries.
    c(API, "GET", "/apix", &[], None),
    c("other.org", "GET", "/nothing", &[], None),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_table() {
    let echo = echo("routing").await;
    let port = free_port();
    let config = CONFIG
        .replace("PORT", &port.to_string())
        .replace("ECHO", &echo.to_string());
    let dp = Dataplane::start(&config).await;
    let client = client();

    let mut failures = Vec::new();
    for case in TABLE {
        let mut req = http::Request::builder()
            .method(case.method)
            .uri(format!("http://127.0.0.1:{port}{}", case.path))
            .header("host", case.host);
        for (k, v) in case.headers {
            req = req.header(*k, *v);
        }
        let r = send(&client, req.body(empty()).unwrap()).await;
        let got = match r.status {
            StatusCode::OK => {
                assert_eq!(r.header("x-echo-server"), Some("routing"));
                // The request reached the backend with its path and method unchanged.
                let j = r.json();
                assert_eq!(j["uri"], case.path);
                assert_eq!(j["method"], case.method);
                r.header("x-rule").map(str::to_string)
            }
            StatusCode::NOT_FOUND => {
                let j = r.json();
                assert_eq!(j["error"], "no_route", "404 body: {j}");
                assert_eq!(j["status"], 404);
                assert!(r.header("x-rule").is_none());
                None
            }
            s => panic!(
                "{} {} {}: unexpected status {s}",
                case.method, case.host, case.path
            ),
        };
        if got.as_deref() != case.want {
            failures.push(format!(
                "{} {} {} {:?}: want {:?}, got {:?}",
                case.method, case.host, case.path, case.headers, case.want, got
            ));
        }
    }
    drop(dp);
    assert!(
        failures.is_empty(),
        "routing mismatches:\n{}",
        failures.join("\n")
    );
}
