//! Policy follow-ups through the real proxy: CORS headers on replies the policy layer makes
//! (429, auth denials), rate-limit and ext-auth state kept across config reloads that leave
//! the policy unchanged, external auth over https with a caFile, and KairosDB backend
//! requests carrying X-Forwarded-* and the rule's request header filters.

mod common;
use common::*;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering with `handler` (body read whole first),
/// over TLS when `tls` is given.
async fn serve(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body.collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(h(Request::from_parts(parts, bytes)))
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        // A failed handshake (an untrusting client) just ends the connection.
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The webhook: `Bearer good` → 200 with `x-user: alice`, anything else → 401 `nope`;
/// counts its calls.
fn webhook(calls: Arc<Mutex<u32>>) -> Handler {
    Arc::new(move |req: Request<Bytes>| {
        *calls.lock().unwrap() += 1;
        let good = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == "Bearer good");
        if good {
            Response::builder()
                .header("x-user", "alice")
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            Response::builder()
                .status(401)
                .header("www-authenticate", "Bearer")
                .body(Full::new(Bytes::from("nope")))
                .unwrap()
        }
    })
}

async fn codes(c: &HttpClient, n: usize, url: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(c, get_req(url, headers)).await.status.as_u16());
    }
    out
}

const APP: &str = "https://app.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_on_policy_replies() {
    let echo = echo("e").await;
    let hook = serve(webhook(Arc::new(Mutex::new(0))), None).await;
    let port = free_port();
    let config = format!(
        r#"
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: r
    rules:
      - matches: [{{ path: {{ value: /limited }} }}]
        cors: {{ allowOrigins: [{{ value: "{APP}" }}], allowCredentials: true, exposeHeaders: [retry-after] }}
        rateLimit: {{ requestsPerUnit: 1, unit: hour, burst: 1 }}
        backendRefs: [{{ name: echo }}]
      - matches: [{{ path: {{ value: /denied }} }}]
        cors: {{ allowOrigins: [{{ value: "{APP}" }}] }}
        extAuth: {{ url: "http://{hook}" }}
        backendRefs: [{{ name: echo }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let limited = format!("http://127.0.0.1:{port}/limited");

    // The preflight is answered by the proxy and does not spend the bucket.
    for _ in 0..2 {
        let req = Request::builder()
            .method(Method::OPTIONS)
            .uri(&limited)
            .header("origin", APP)
            .header("access-control-request-method", "GET")
            .body(empty())
            .unwrap();
        let r = send(&c, req).await;
        // Preflights answer 200 (what the Gateway API CORS conformance test takes).
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    }
    let r = send(&c, get_req(&limited, &[("origin", APP)])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));

    // The 429 the rate limit makes is readable by the page: CORS headers on it too.
    let r = send(&c, get_req(&limited, &[("origin", APP)])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("retry-after")
    );
    assert!(r.header_all("vary").iter().any(|v| v.contains("Origin")));
    assert_eq!(r.json()["error"], "rate_limited");
    // Another origin: still limited, and no CORS headers.
    let r = send(&c, get_req(&limited, &[("origin", "https://evil.example")])).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("access-control-allow-origin").is_none());

    // The webhook's deny, passed to the client, carries them as well.
    let denied = format!("http://127.0.0.1:{port}/denied");
    let r = send(
        &c,
        get_req(&denied, &[("origin", APP), ("authorization", "Bearer bad")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&r.body[..], b"nope");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    let r = send(
        &c,
        get_req(
            &denied,
            &[("origin", APP), ("authorization", "Bearer good")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
}

/// The config of the reload test: `limited` (burst `BURST`), `authed` (cached ext auth),
/// `broken` (ext auth with a breaker against a dead port), and `other` answering `BODY`.
fn reload_config(
    port: u16,
    echo: SocketAddr,
    hook: SocketAddr,
    dead: u16,
    burst: u32,
    body: &str,
) -> String {
    format!(
        r#"
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: limited
    hostnames: [limited.test]
    rateLimit: {{ requestsPerUnit: 1, unit: hour, burst: {burst} }}
    rules:
      - backendRefs: [{{ name: echo }}]
  - name: authed
    hostnames: [authed.test]
    rules:
      - extAuth: {{ url: "http://{hook}", cache: {{ ttl: 1h }} }}
        backendRefs: [{{ name: echo }}]
  - name: broken
    hostnames: [broken.test]
    rules:
      - extAuth: {{ url: "http://127.0.0.1:{dead}", circuitBreaker: {{ consecutiveFailures: 2, openFor: 1h }} }}
        backendRefs: [{{ name: echo }}]
  - name: other
    hostnames: [other.test]
    rules:
      - directResponse: {{ status: 200, body: "{body}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_state_survives_unrelated_reloads() {
    let echo = echo("e").await;
    let calls = Arc::new(Mutex::new(0));
    let hook = serve(webhook(calls.clone()), None).await;
    let dead = free_port();
    let port = free_port();
    let cfg = |burst: u32, body: &str| reload_config(port, echo, hook, dead, burst, body);
    let dp = Dataplane::start(&cfg(5, "v1")).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/x");
    let host = |h: &'static str| [("host", h)];
    let authed = [("host", "authed.test"), ("authorization", "Bearer good")];
    let other_body = |c: HttpClient, url: String| async move {
        let r = send(&c, get_req(&url, &[("host", "other.test")])).await;
        String::from_utf8_lossy(&r.body).into_owned()
    };

    assert_eq!(codes(&c, 3, &url, &host("limited.test")).await, [200; 3]);
    assert_eq!(codes(&c, 1, &url, &authed).await, [200]);
    assert_eq!(*calls.lock().unwrap(), 1);
    // Two failures open the breaker (fail closed: 403).
    assert_eq!(codes(&c, 2, &url, &host("broken.test")).await, [403, 403]);
    assert_eq!(other_body(c.clone(), url.clone()).await, "v1");

    // Reload with only `other` changed.
    let (status, v) = dp.put_config(cfg(5, "v2")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(other_body(c.clone(), url.clone()).await, "v2");

    // The bucket still counts the 3 spent: 2 more, then 429.
    assert_eq!(
        codes(&c, 3, &url, &host("limited.test")).await,
        [200, 200, 429]
    );
    // The cached decision is reused: no new webhook call.
    assert_eq!(codes(&c, 1, &url, &authed).await, [200]);
    assert_eq!(*calls.lock().unwrap(), 1);
    // The breaker is still open: the webhook is not even tried.
    let r = send(&c, get_req(&url, &host("broken.test"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let msg = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("circuit breaker is open"), "{msg}");
    let m = get(&c, &dp.admin_url("/metrics")).await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(
        m.lines()
            .any(|l| l == "weir_ext_auth_requests_total{result=\"failed\",route=\"broken\"} 2"),
        "{m}"
    );

    // Changing the limit starts its buckets fresh (burst 6: six pass, the 7th is limited).
    let (status, v) = dp.put_config(cfg(6, "v2")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut want = vec![200; 6];
    want.push(429);
    assert_eq!(codes(&c, 7, &url, &host("limited.test")).await, want);
    // The unchanged auth policies kept their state through this reload too.
    assert_eq!(codes(&c, 1, &url, &authed).await, [200]);
    assert_eq!(*calls.lock().unwrap(), 1);
}

/// A TLS acceptor for `localhost` with a fresh self-signed certificate, and that certificate
/// as PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key.into())
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        ck.cert.pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_over_https_with_ca_file() {
    let echo = echo("e").await;
    let calls = Arc::new(Mutex::new(0));
    let (acceptor, pem) = tls_acceptor();
    let hook = serve(webhook(calls.clone()), Some(acceptor)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let port = free_port();
    let hook_port = hook.port();
    let config = format!(
        r#"
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: trusted
    hostnames: [trusted.test]
    rules:
      - extAuth: {{ url: "https://localhost:{hook_port}/check", caFile: "{ca}", allowedUpstreamHeaders: [x-user], timeout: 5s }}
        backendRefs: [{{ name: echo }}]
  - name: untrusted
    hostnames: [untrusted.test]
    rules:
      - extAuth: {{ url: "https://localhost:{hook_port}/check", timeout: 5s }}
        backendRefs: [{{ name: echo }}]
"#,
        ca = ca.display()
    );
    let dp = Dataplane::start(&config).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/doc");

    let r = send(
        &c,
        get_req(
            &url,
            &[("host", "trusted.test"), ("authorization", "Bearer good")],
        ),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["headers"]["x-user"], "alice");
    let r = send(
        &c,
        get_req(
            &url,
            &[("host", "trusted.test"), ("authorization", "Bearer bad")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&r.body[..], b"nope");
    assert_eq!(*calls.lock().unwrap(), 2);

    // Without the caFile the self-signed certificate is not trusted: the webhook is never
    // answered (the handshake fails), which is a failure, and fail closed denies with 403.
    let r = send(
        &c,
        get_req(
            &url,
            &[("host", "untrusted.test"), ("authorization", "Bearer good")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"], "ext_auth_error");
    assert_eq!(*calls.lock().unwrap(), 2);
    let m = get(&c, &dp.admin_url("/metrics")).await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    for line in [
        "weir_ext_auth_requests_total{result=\"allowed\",route=\"trusted\"} 1",
        "weir_ext_auth_requests_total{result=\"denied\",route=\"trusted\"} 1",
        "weir_ext_auth_requests_total{result=\"failed\",route=\"untrusted\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing:\n{m}");
    }
}

/// Headers each fake KairosDB backend received.
type SeenHeaders = Arc<Mutex<Vec<http::HeaderMap>>>;

/// A fake KairosDB answering every query with one empty result per requested metric.
async fn kairos_backend() -> (SocketAddr, SeenHeaders) {
    let seen: SeenHeaders = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = serve(
        Arc::new(move |req: Request<Bytes>| {
            s.lock().unwrap().push(req.headers().clone());
            let q: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
            let queries: Vec<Value> = q["metrics"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            json!({ "sample_size": 0, "results": [
                                { "name": m["name"], "group_by": [], "tags": {}, "values": [] }
                            ] })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    json!({ "queries": queries }).to_string(),
                )))
                .unwrap()
        }),
        None,
    )
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kairos_backend_requests_carry_forwarding_and_filter_headers() {
    let (ka, seen_a) = kairos_backend().await;
    let (kb, seen_b) = kairos_backend().await;
    let port = free_port();
    let config = format!(
        r#"
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  ka: {{ endpoints: ["{ka}"] }}
  kb: {{ endpoints: ["{kb}"] }}
routes:
  - name: multi
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /api/v1/datapoints/query }} }}]
        filters:
          requestHeaders:
            set: [{{ name: x-tenant, value: t1 }}]
            remove: [x-secret]
        kairos:
          mode: multi
          metricRoutes:
            - {{ type: RegularExpression, value: 'cpu\..*', backend: ka }}
            - {{ type: RegularExpression, value: 'mem\..*', backend: kb }}
        backendRefs: [{{ name: ka }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let query = |metrics: &[&str]| {
        let ms: Vec<Value> = metrics.iter().map(|m| json!({ "name": m })).collect();
        Request::post(format!("http://127.0.0.1:{port}/api/v1/datapoints/query"))
            .header("host", "kairos.example:8080")
            .header("content-type", "application/json")
            .header("x-secret", "do-not-forward")
            .header("x-tenant", "spoofed")
            .header("x-forwarded-for", "198.51.100.1")
            .body(full(Bytes::from(
                json!({ "start_relative": { "value": 1, "unit": "hours" }, "metrics": ms })
                    .to_string(),
            )))
            .unwrap()
    };
    let check = |h: &http::HeaderMap, what: &str| {
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(
            get("x-forwarded-for"),
            "198.51.100.1, 127.0.0.1",
            "{what}: {h:?}"
        );
        assert_eq!(get("x-forwarded-proto"), "http", "{what}");
        assert_eq!(get("x-forwarded-host"), "kairos.example:8080", "{what}");
        assert_eq!(get("host"), "kairos.example:8080", "{what}");
        assert!(
            get("forwarded").contains("for=127.0.0.1;proto=http"),
            "{what}: {h:?}"
        );
        assert_eq!(get("x-tenant"), "t1", "{what}");
        assert!(!h.contains_key("x-secret"), "{what}: {h:?}");
    };

    // Split across both backends.
    let r = send(&c, query(&["cpu.user", "mem.free", "cpu.sys"])).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    let names: Vec<&str> = v["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["results"][0]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["cpu.user", "mem.free", "cpu.sys"]);
    // One metric's backend only: the pass-through path.
    let r = send(&c, query(&["mem.used"])).await;
    assert_eq!(r.status, StatusCode::OK);

    let a = seen_a.lock().unwrap().clone();
    let b = seen_b.lock().unwrap().clone();
    assert_eq!((a.len(), b.len()), (1, 2));
    check(&a[0], "multi, backend a");
    check(&b[0], "multi, backend b");
    check(&b[1], "pass-through, backend b");
}
