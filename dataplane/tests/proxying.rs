//! What one request goes through: header and path transforms, forwarding headers, hop-by-hop
//! stripping, the proxy's own error replies, and the client/upstream protocols.

mod common;
use common::*;

use http::{Request, StatusCode, Version};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_transforms() {
    let echo = echo("xf").await;
    let port = free_port();
    let config = r#"
version: transforms-1
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: xf
    rules:
      - matches: [{ path: { type: PathPrefix, value: /strip } }]
        filters:
          path: { stripPrefix: /strip }
          requestHeaders:
            add: [{ name: x-added, value: by-proxy }]
            set: [{ name: x-set, value: by-proxy }]
            remove: [x-removed]
          responseHeaders:
            add: [{ name: x-echo-server, value: added }]
            set: [{ name: x-resp-set, value: by-proxy }]
            remove: [content-type]
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /replace } }]
        filters: { path: { replacePrefix: { from: /replace/v1, to: /internal/v2 } } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /add } }]
        filters: { path: { addPrefix: /base } }
        backendRefs: [{ name: echo }]
      - matches: [{ path: { type: PathPrefix, value: /combo } }]
        filters:
          path:
            stripPrefix: /combo
            replacePrefix: { from: /v1, to: /v2 }
            addPrefix: /svc
        backendRefs: [{ name: echo }]
      - backendRefs: [{ name: echo }]
"#
    .replace("PORT", &port.to_string())
    .replace("ECHO", &echo.to_string());
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Header transforms both ways.
    let r = send(
        &c,
        get_req(
            &url("/strip/users/7?x=1"),
            &[
                ("x-added", "from-client"),
                ("x-set", "from-client"),
                ("x-removed", "secret"),
                ("x-untouched", "yes"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["uri"], "/users/7?x=1");
    let h = &j["headers"];
    assert_eq!(h["x-added"], "from-client, by-proxy", "add keeps existing");
    assert_eq!(h["x-set"], "by-proxy", "set replaces");
    assert!(h.get("x-removed").is_none(), "removed header went upstream");
    assert_eq!(h["x-untouched"], "yes");
    assert_eq!(r.header_all("x-echo-server"), ["xf", "added"]);
    assert_eq!(r.header("x-resp-set"), Some("by-proxy"));
    assert!(
        r.header("content-type").is_none(),
        "content-type not removed"
    );

    // Path rewrites, query strings kept.
    for (path, want) in [
        ("/strip", "/"),
        ("/stripped/x", "/stripped/x"), // not under /strip: catch-all rule, unchanged
        ("/replace/v1/items?q=a%20b", "/internal/v2/items?q=a%20b"),
        ("/replace/v10/items", "/replace/v10/items"), // segment-aware: no rewrite
        ("/replace/v1", "/internal/v2"),
        ("/add/x", "/base/add/x"),
        ("/combo/v1/users?id=3", "/svc/v2/users?id=3"),
        ("/combo", "/svc/"),
    ] {
        let r = send(&c, get_req(&url(path), &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.json()["uri"], want, "rewrite of {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_hop_by_hop_headers() {
    let echo = echo("fwd").await;
    let port = free_port();
    let config = json!({
        "version": "fwd-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [
            {"name": "abs", "hostnames": ["abs.test"], "rules": [{
                "filters": {"responseHeaders": {"set": [{"name": "x-route", "value": "abs"}]}},
                "backendRefs": [{"name": "echo"}]}]},
            {"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]},
        ],
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let c = client();

    let r = send(
        &c,
        get_req(
            &format!("http://127.0.0.1:{port}/fwd"),
            &[
                ("host", "shop.example.com:8080"),
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=203.0.113.9;proto=https"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "must-not-pass"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-end-to-end", "kept"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    let h = &j["headers"];
    assert_eq!(h["host"], "shop.example.com:8080", "Host passes unchanged");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"shop.example.com:8080\""
    );
    for hop in ["connection", "x-hop", "keep-alive", "proxy-authorization"] {
        assert!(h.get(hop).is_none(), "hop-by-hop {hop} forwarded: {h}");
    }
    assert_eq!(h["x-end-to-end"], "kept");

    // Absolute-form request target: its authority is the host (RFC 9112 §3.2.2), for routing
    // and for what goes upstream alike; the Host header is ignored.
    let raw = raw_http(
        port,
        "GET http://abs.test:8080/abs?q=1 HTTP/1.1\r\nHost: decoy.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-route: abs"), "{head}");
    let j: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(j["uri"], "/abs?q=1");
    assert_eq!(j["headers"]["host"], "abs.test:8080");
    assert_eq!(j["headers"]["x-forwarded-host"], "abs.test:8080");
    assert_eq!(
        j["headers"]["forwarded"],
        "for=127.0.0.1;proto=http;host=\"abs.test:8080\""
    );

    // HTTP/1.0 without Host: nothing to route on.
    let raw = raw_http(port, "GET /x HTTP/1.0\r\n\r\n").await;
    assert!(raw.starts_with("HTTP/1.0 400"), "{raw}");
    assert!(raw.contains("\"error\":\"no_host\""), "{raw}");
}

/// Writes `request` on a fresh connection and reads until the server closes it.
async fn raw_http(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(HANG_GUARD, io)
        .await
        .expect("hang guard")
        .expect("raw HTTP exchange")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies() {
    let echo = echo("err").await;
    let dead = free_port(); // nothing listens here
                            // Accepts connections and closes them without answering.
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            drop(s);
        }
    });
    let port = free_port();
    let config = json!({
        "version": "errors-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {
            "dead": {"endpoints": [format!("127.0.0.1:{dead}")]},
            "slow": {"endpoints": [echo.to_string()], "timeouts": {"request": "300ms"}},
            "patient": {"endpoints": [echo.to_string()]},
            "closer": {"endpoints": [closer_addr.to_string()]},
            "empty": {"endpoints": []},
        },
        "routes": [{
            "name": "errs",
            "hostnames": ["errors.test"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/dead"}}],
                 "backendRefs": [{"name": "dead"}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/closer"}}],
                 "backendRefs": [{"name": "closer"}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/empty"}}],
                 "backendRefs": [{"name": "empty"}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                 "backendRefs": [{"name": "slow"}]},
                // The rule timeout overrides the backend's 300ms upwards...
                {"matches": [{"path": {"type": "PathPrefix", "value": "/longer"}}],
                 "timeout": "20s",
                 "backendRefs": [{"name": "slow"}]},
                // ...and the default 30s downwards.
                {"matches": [{"path": {"type": "PathPrefix", "value": "/shorter"}}],
                 "timeout": "300ms",
                 "backendRefs": [{"name": "patient"}]},
            ],
        }],
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let c = client();
    let req =
        |p: &str, host: &str| get_req(&format!("http://127.0.0.1:{port}{p}"), &[("host", host)]);
    let check = |r: &Resp, status: u16, code: &str| {
        assert_eq!(r.status.as_u16(), status, "body: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let j = r.json();
        assert_eq!(j["status"], status);
        assert_eq!(j["error"], code);
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()));
    };

    check(&send(&c, req("/", "nowhere.test")).await, 404, "no_route");
    check(
        &send(&c, req("/other", "errors.test")).await,
        404,
        "no_route",
    );

    let r = send(&c, req("/dead", "errors.test")).await;
    check(&r, 502, "upstream_connect_error");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains(&dead.to_string()));

    // Connected, but the upstream hung up without a response.
    check(
        &send(&c, req("/closer", "errors.test")).await,
        502,
        "upstream_error",
    );
    // A backend without endpoints.
    check(
        &send(&c, req("/empty", "errors.test")).await,
        503,
        "no_endpoint",
    );

    // Slower than the backend's request timeout: 504.
    let r = send(&c, req("/slow?delay_ms=5000", "errors.test")).await;
    check(&r, 504, "upstream_timeout");
    // Within it: served.
    let r = send(&c, req("/slow?delay_ms=0", "errors.test")).await;
    assert_eq!(r.status, StatusCode::OK);

    // The rule's longer timeout wins over the backend's 300ms.
    let r = send(&c, req("/longer?delay_ms=1000", "errors.test")).await;
    assert_eq!(r.status, StatusCode::OK, "body: {:?}", r.body);
    assert_eq!(r.json()["server"], "err");
    // The rule's shorter timeout wins over the backend's default 30s.
    let r = send(&c, req("/shorter?delay_ms=5000", "errors.test")).await;
    check(&r, 504, "upstream_timeout");

    // Backend status codes pass through untouched (not rewritten into proxy errors).
    let r = send(&c, req("/slow?status=503", "errors.test")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("x-echo-server"), Some("err"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_plain_listener_and_h2c_upstream() {
    let echo = echo("h2").await;
    let port = free_port();
    let config = json!({
        "version": "h2c-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {
            "h1": {"endpoints": [echo.to_string()]},
            "h2": {"endpoints": [echo.to_string()], "protocol": "h2c"},
        },
        "routes": [{"name": "all", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/up-h2"}}],
             "backendRefs": [{"name": "h2"}]},
            {"backendRefs": [{"name": "h1"}]},
        ]}],
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    for (client_version, c) in [
        (Version::HTTP_11, client()),
        (Version::HTTP_2, h2c_client()),
    ] {
        for (path, upstream) in [("/x", "HTTP/1.1"), ("/up-h2/x", "HTTP/2.0")] {
            let body = "hello over h2c";
            let req = Request::post(url(path)).body(full(body)).unwrap();
            let r = send(&c, req).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.version, client_version, "client side of {path}");
            let j = r.json();
            assert_eq!(j["version"], upstream, "upstream side of {path}");
            assert_eq!(j["method"], "POST");
            assert_eq!(j["bodyBytes"], body.len());
            assert_eq!(j["headers"]["x-forwarded-proto"], "http");
            // HTTP/2 clients send :authority, which goes upstream as Host.
            assert_eq!(j["headers"]["host"], format!("127.0.0.1:{port}"));
        }
    }

    // Bodies far larger than HTTP/2 flow-control windows, streamed back by the backend while
    // still being uploaded, over every client/upstream protocol pair.
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    let big = bytes::Bytes::from(big);
    for c in [client(), h2c_client()] {
        for path in ["/mirror?mirror=1", "/up-h2/mirror?mirror=1"] {
            let req = Request::post(url(path)).body(full(big.clone())).unwrap();
            let r = send(&c, req).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.body.len(), big.len(), "{path}: mirrored length");
            assert!(r.body == big, "{path}: mirrored bytes differ");
        }
    }

    // Many concurrent streams on one h2c connection.
    let c = h2c_client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let u = url(&format!("/s{i}?delay_ms=50"));
        tasks.push(tokio::spawn(
            async move { send(&c, get_req(&u, &[])).await },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["uri"], format!("/s{i}?delay_ms=50"));
    }
}

/// `curl -k` against an https listener with a generated self-signed certificate.
fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--max-time",
            "60",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = stdout.rsplit_once('\n').expect("curl -w line");
    (body.to_string(), tail.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http1_and_http2_via_curl() {
    let echo = echo("tls").await;
    let port = free_port();
    let config = json!({
        "version": "tls-1",
        "listeners": [{"name": "https", "address": format!("127.0.0.1:{port}"), "protocol": "https"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let url = format!("https://127.0.0.1:{port}/tls?x=1");

    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let url = url.clone();
        let (body, tail) = tokio::task::spawn_blocking(move || {
            curl(&[flag, "-X", "POST", "--data-binary", "tls body", &url])
        })
        .await
        .unwrap();
        assert_eq!(tail, format!("{want} 200"), "curl {flag}");
        let j: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(j["server"], "tls");
        assert_eq!(j["uri"], "/tls?x=1");
        assert_eq!(j["bodyBytes"], 8);
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert!(j["headers"]["forwarded"]
            .as_str()
            .unwrap()
            .contains("proto=https"));
    }

    // Not plaintext-compatible: an http:// request to the TLS port gets no HTTP answer.
    let plain = format!("http://127.0.0.1:{port}/");
    let r = try_send(&client(), get_req(&plain, &[])).await;
    assert!(r.is_err(), "plain HTTP on the TLS port answered: {r:?}");
}

/// The generated certificate is written where the log says, and a client that trusts that file
/// verifies the listener (no `-k`). The private key is never written; the file and its folder
/// are gone after a clean shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_file_verifies_and_is_removed() {
    let echo = echo("ss").await;
    let port = free_port();
    let config = json!({
        "version": "ss-1",
        "listeners": [{"name": "https", "address": format!("127.0.0.1:{port}"), "protocol": "https"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    });
    let mut dp = Dataplane::start(&config.to_string()).await;
    let folder = dp.dir.path().join(format!("weir-selfsigned-{}", dp.pid()));
    let cert = folder.join("cert.pem");
    assert!(
        dp.log().contains(&cert.display().to_string()),
        "{}",
        dp.log()
    );
    let names: Vec<_> = std::fs::read_dir(&folder)
        .expect("the certificate's folder")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["cert.pem"], "only the certificate is on disk");

    let url = format!("https://localhost:{port}/verified");
    let cert_arg = cert.display().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "--resolve",
                &resolve,
                "--cacert",
                &cert_arg,
            ])
            .args(["-o", "/dev/null"])
            .args(["-w", "%{http_code}", &url])
            .output()
            .expect("run curl")
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl --cacert: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    dp.signal(libc::SIGTERM);
    assert!(dp.wait_exit().await.success());
    assert!(!folder.exists(), "{} left behind", folder.display());
}

/// The fields the proxy adds reach an h2c upstream (hyper's HTTP/2 client gets them merged
/// into its map) with the same values as an HTTP/1.1 one: a client's X-Forwarded-For appended
/// to, X-Forwarded-Proto/Host replaced (the echo joins repeated fields, so a duplicate would
/// show). A rule's request filters still see and change them (they are put in the map for
/// such a rule, before the filters run): a `set` replaces the proxy's X-Forwarded-Proto, a
/// `remove` drops its `Forwarded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_fields_reach_h2c_and_filters_change_them() {
    let echo = echo("e").await;
    let port = free_port();
    let config = json!({
        "version": "added-h2c",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {
            "h1": {"endpoints": [echo.to_string()]},
            "h2": {"endpoints": [echo.to_string()], "protocol": "h2c"},
        },
        "routes": [{"name": "all", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/h2"}}],
             "backendRefs": [{"name": "h2"}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/filtered"}}],
             "filters": {"requestHeaders": {
                 "set": [{"name": "x-forwarded-proto", "value": "from-filter"}],
                 "remove": ["forwarded"]}},
             "backendRefs": [{"name": "h1"}]},
            {"backendRefs": [{"name": "h1"}]},
        ]}],
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let spoofed = [
        ("host", "shop.test"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "spoof.test"),
    ];
    for c in [client(), h2c_client()] {
        for (path, version) in [("/h2", "HTTP/2.0"), ("/h1", "HTTP/1.1")] {
            let r = send(&c, get_req(&url(path), &spoofed)).await;
            assert_eq!(r.status, StatusCode::OK);
            let j = r.json();
            assert_eq!(j["version"], version, "{path}");
            let h = &j["headers"];
            assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{path}");
            assert_eq!(h["x-forwarded-proto"], "http", "{path}: {h}");
            // The host the client asked for (an HTTP/2 client's :authority wins over `Host`).
            let host = h["host"].as_str().unwrap_or_default();
            assert!(
                host == "shop.test" || host == format!("127.0.0.1:{port}"),
                "{h}"
            );
            assert_eq!(h["x-forwarded-host"], host, "{path}: {h}");
            let fwd = format!("for=127.0.0.1;proto=http;host=\"{host}\"");
            assert_eq!(h["forwarded"], fwd.as_str(), "{path}");
            assert_eq!(h["traceparent"].as_str().map(str::len), Some(55), "{path}");
        }
        let r = send(&c, get_req(&url("/filtered"), &spoofed)).await;
        let h = &r.json()["headers"];
        assert_eq!(h["x-forwarded-proto"], "from-filter", "{h}");
        assert!(h.get("forwarded").is_none(), "{h}");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{h}");
    }
}
