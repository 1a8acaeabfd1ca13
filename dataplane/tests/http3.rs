//! HTTP/3 through the real dataplane: our quinn/h3 client (weir-bench) and ngtcp2's gtlsclient.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use weir_bench::h3client::{self, BodyEnd, H3Conn};
use weir_bench::tls::Trust;

/// A config with one https listener (TCP + UDP on `port`) and the given backends/routes.
fn config(port: u16, tls: &str, rest: &str) -> String {
    format!(
        "version: h3-test\nlisteners:\n  - name: https\n    address: 127.0.0.1:{port}\n    protocol: https\n{tls}{rest}"
    )
}

fn echo_routes(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"backends:
  a: {{ endpoints: ["{a}"] }}
  b: {{ endpoints: ["{b}"] }}
routes:
  - name: api
    hostnames: [api.test]
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /v1 }} }}]
        filters:
          path: {{ replacePrefix: {{ from: /v1, to: /internal }} }}
          requestHeaders: {{ set: [{{ name: x-via, value: h3 }}] }}
          responseHeaders: {{ add: [{{ name: x-rule, value: api-v1 }}] }}
        backendRefs: [{{ name: b }}]
  - name: default
    rules:
      - backendRefs: [{{ name: a }}]
"#
    )
}

async fn h3(port: u16) -> H3Conn {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(HANG_GUARD, h3client::connect(addr, None, true))
        .await
        .expect("connect hang")
        .expect("HTTP/3 connect")
}

/// Runs a command off the async runtime (the echo backends share this test's runtime).
async fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run command")
}

fn get(url: &str) -> Request<Bytes> {
    Request::get(url).body(Bytes::new()).unwrap()
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn routes_filters_and_errors_over_h3() {
    let (a, b) = (echo("a").await, echo("b").await);
    let port = free_port();
    let dp = Dataplane::start(&config(port, "", &echo_routes(a, b))).await;
    let conn = h3(port).await;

    let r = conn
        .request(get("https://api.test/v1/users?x=1"))
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.end.is_clean());
    assert_eq!(
        r.headers.get("x-rule").map(|v| v.to_str().unwrap()),
        Some("api-v1")
    );
    let doc = json(&r.body);
    assert_eq!(doc["server"], "b");
    assert_eq!(doc["uri"], "/internal/users?x=1");
    assert_eq!(doc["headers"]["x-via"], "h3");
    assert_eq!(doc["headers"]["host"], "api.test");
    assert_eq!(doc["headers"]["x-forwarded-proto"], "https");
    assert_eq!(doc["headers"]["x-forwarded-host"], "api.test");

    // Dot segments are resolved before routing: this is not under /v1 any more.
    let r = conn
        .request(get("https://api.test/v1/%2e%2e/x"))
        .await
        .expect("dots");
    let doc = json(&r.body);
    assert_eq!(doc["server"], "a");
    assert_eq!(doc["uri"], "/x");

    // Other hosts fall to the catch-all; a POST body arrives whole.
    let post = Request::post("https://other.test/upload")
        .body(Bytes::from_static(b"hello h3"))
        .unwrap();
    let r = conn.request(post).await.expect("post");
    let doc = json(&r.body);
    assert_eq!(doc["server"], "a");
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["bodyBytes"], 8);

    // Request trailers are not lost and an empty GET stays empty upstream (no chunked body).
    let r = conn
        .request(get("https://other.test/empty"))
        .await
        .expect("get");
    let doc = json(&r.body);
    assert_eq!(doc["bodyBytes"], 0);
    assert!(doc["headers"].get("transfer-encoding").is_none(), "{doc}");

    // Upstream status passes through; no route is a JSON 404.
    let r = conn
        .request(get("https://other.test/x?status=418"))
        .await
        .expect("418");
    assert_eq!(r.status.as_u16(), 418);
    let cfg = config(port, "", &echo_routes(a, b)).replace(
        "  - name: default\n    rules:\n      - backendRefs: [{ name: a }]\n",
        "",
    );
    let (status, body) = dp.put_config(cfg).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = conn
        .request(get("https://nowhere.test/"))
        .await
        .expect("404");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(json(&r.body)["error"], "no_route");
    conn.close().await;
}

#[tokio::test]
async fn alt_svc_on_tcp_tls_only() {
    let a = echo("a").await;
    let port = free_port();
    let rest = format!(
        "  - {{ name: plain, address: \"127.0.0.1:{}\", protocol: http }}\n",
        free_port()
    );
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let cfg = cfg.replace(
        "    protocol: https\n",
        &format!("    protocol: https\n    http3: {{ altSvcMaxAge: 1h }}\n{rest}"),
    );
    let dp = Dataplane::start(&cfg).await;
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sk", "--max-time", "60", "-D", "-", "-o", "/dev/null"])
        .arg(format!("https://127.0.0.1:{port}/?x=1"));
    let out = run(curl).await;
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        headers.contains(&format!("alt-svc: h3=\":{port}\"; ma=3600")),
        "{headers}"
    );
    // An upstream's own Alt-Svc never leaks (the echo backend sends none; the plain listener adds none).
    let conn = h3(port).await;
    let r = conn.request(get("https://x.test/")).await.expect("h3");
    assert!(r.headers.get("alt-svc").is_none());
    conn.close().await;

    // Behind a Service mapping 443 to this port, Alt-Svc names the port clients use; 0 and
    // "off" stop advertising; an impossible port is refused with its field path and the last
    // good config keeps serving.
    let alt_svc = || async {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sk", "--max-time", "60", "-D", "-", "-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{port}/"));
        let out = run(curl).await;
        let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(headers.starts_with("http/"), "{headers}");
        headers
            .lines()
            .find_map(|l| l.strip_prefix("alt-svc: ").map(str::to_string))
    };
    let with = |v: &str| {
        cfg.replace(
            "http3: { altSvcMaxAge: 1h }",
            &format!("http3: {{ altSvcMaxAge: 1h, advertisedPort: {v} }}"),
        )
    };
    let (status, body) = dp.put_config(with("443")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(alt_svc().await.as_deref(), Some("h3=\":443\"; ma=3600"));
    for off in ["0", "off"] {
        let (status, body) = dp.put_config(with(off)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(alt_svc().await, None, "advertisedPort: {off}");
    }
    let (status, body) = dp.put_config(with("443")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = dp.put_config(with("70000")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string()
            .contains("listeners[0].http3.advertisedPort"),
        "{body}"
    );
    assert_eq!(alt_svc().await.as_deref(), Some("h3=\":443\"; ma=3600"));
}

/// 256 MiB up and 256 MiB down through HTTP/3, checked by checksum, memory flat.
#[tokio::test]
async fn streams_256_mib_both_ways_over_h3() {
    const SIZE: u64 = 256 << 20;
    let a = echo("a").await;
    let port = free_port();
    // The echo answers once it has the whole upload, and the request timeout runs until the
    // response head: on a loaded machine a debug build needs more than the default 30s for it.
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"], timeouts: {{ request: 10m }} }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let dp = Dataplane::start(&cfg).await;
    let conn = h3(port).await;

    // Upload, hashed while sending; the request has no Content-Length (streamed).
    let mut s = conn
        .send_request(Request::post("https://up.test/").body(()).unwrap())
        .await
        .expect("open stream");
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while sent < SIZE {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ((sent + i as u64) % 253) as u8;
        }
        hasher.update(&chunk);
        tokio::time::timeout(HANG_GUARD, s.send_data(Bytes::copy_from_slice(&chunk)))
            .await
            .expect("send hang")
            .expect("send_data");
        sent += chunk.len() as u64;
    }
    s.finish().await.expect("finish");
    let head = tokio::time::timeout(HANG_GUARD, s.recv_response())
        .await
        .expect("hang")
        .expect("response");
    assert_eq!(head.status(), StatusCode::OK);
    let (body, end) = s.collect_body().await;
    assert!(end.is_clean());
    let doc = json(&body);
    let want = hex(&hasher.finalize());
    assert_eq!(doc["bodyBytes"], SIZE);
    assert_eq!(doc["bodySha256"], want);

    // Download, checked against the echo pattern without keeping it.
    let mut s = conn
        .send_request(
            Request::get(format!("https://down.test/?bytes={SIZE}"))
                .body(())
                .unwrap(),
        )
        .await
        .expect("open stream");
    s.finish().await.expect("finish");
    let head = s.recv_response().await.expect("response");
    assert_eq!(head.status(), StatusCode::OK);
    let mut got = 0u64;
    loop {
        match tokio::time::timeout(HANG_GUARD, s.recv_chunk())
            .await
            .expect("recv hang")
        {
            Ok(Some(c)) => {
                assert_eq!(
                    &c[..],
                    &echo_backend::pattern_chunk(got, c.len())[..],
                    "at offset {got}"
                );
                got += c.len() as u64;
            }
            Ok(None) => break,
            Err(e) => panic!("download failed after {got} bytes: {e}"),
        }
    }
    assert_eq!(got, SIZE);
    let hwm = dp.vm_hwm_kib();
    assert!(
        hwm < 128 * 1024,
        "dataplane peak RSS {hwm} KiB: bodies are being buffered"
    );
    conn.close().await;
}

/// An upstream body that breaks midway must reach the client as a stream error, not a clean end.
#[tokio::test]
async fn upstream_failure_midway_resets_the_stream() {
    let a = echo("a").await;
    let port = free_port();
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let _dp = Dataplane::start(&cfg).await;
    let conn = h3(port).await;
    let r = conn
        .request(get("https://x.test/?bytes=1048576&fail_after=200000"))
        .await
        .expect("response head");
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        matches!(r.end, BodyEnd::Error(_)),
        "a broken body ended cleanly after {} bytes",
        r.body.len()
    );
    assert!(r.body.len() <= 200_000);
    // The connection survives: the next request on it works.
    let r = conn
        .request(get("https://x.test/?bytes=1000"))
        .await
        .expect("next request");
    assert!(r.end.is_clean());
    assert_eq!(r.body.len(), 1000);
    conn.close().await;
}

async fn echo_stats(addr: SocketAddr) -> serde_json::Value {
    let r = common::get(&client(), &format!("http://{addr}/?stats=1")).await;
    r.json()
}

/// A client that stops reading makes the proxy drop the upstream response.
#[tokio::test]
async fn client_cancel_reaches_the_upstream() {
    let a = echo("a").await;
    let port = free_port();
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let _dp = Dataplane::start(&cfg).await;
    let conn = h3(port).await;
    let mut s = conn
        .send_request(
            Request::get("https://x.test/?bytes=1073741824&chunk_delay_ms=20")
                .body(())
                .unwrap(),
        )
        .await
        .expect("open");
    s.finish().await.expect("finish");
    let head = s.recv_response().await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    let first = s.recv_chunk().await.expect("chunk").expect("some data");
    assert!(!first.is_empty());
    assert_eq!(echo_stats(a).await["responsesDropped"], 0);
    s.stop_sending(0x10c); // H3_REQUEST_CANCELLED
    drop(s);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        if echo_stats(a).await["responsesDropped"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never saw the cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Same for an upload the client abandons: the upstream sees its request body fail.
    let mut s = conn
        .send_request(Request::post("https://x.test/").body(()).unwrap())
        .await
        .expect("open");
    // Less than QUIC's initial congestion window (12,000 bytes) in flight: quinn 0.11 (the
    // client here) does not send CONNECTION_CLOSE while its congestion window is full
    // (quinn-rs/quinn#2785, fixed after quinn-proto 0.11.19), and with 100 KB the close below
    // then reached the dataplane only through its idle timeout (30 s), now and then.
    s.send_data(Bytes::from(vec![7u8; 8_000]))
        .await
        .expect("send");
    // Wait until the upstream has the request, then walk away without finishing.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while echo_stats(a).await["requests"] != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client vanishes mid-upload (connection closed with an error, no clean end).
    conn.quic().close(quinn::VarInt::from_u32(0x10c), b"gone");
    drop(s);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while echo_stats(a).await["bodyErrors"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream never saw the upload abort"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that disappears while the upstream is still working on a body-less request
/// cancels that upstream request (it does not run to its timeout, 10 minutes here).
#[tokio::test]
async fn client_gone_cancels_pending_upstream_request() {
    let a = echo("a").await;
    let port = free_port();
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"], timeouts: {{ request: 10m }} }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let _dp = Dataplane::start(&cfg).await;
    let conn = h3(port).await;
    let mut s = conn
        .send_request(
            Request::get("https://x.test/?delay_ms=60000")
                .body(())
                .unwrap(),
        )
        .await
        .expect("open");
    s.finish().await.expect("finish");
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while echo_stats(a).await["requests"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(echo_stats(a).await["requestsCancelled"], 0);
    conn.quic().close(quinn::VarInt::from_u32(0x10c), b"bye");
    drop(s);
    while echo_stats(a).await["requestsCancelled"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream request was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn thousand_concurrent_streams_on_ten_connections() {
    let (a, b) = (echo("a").await, echo("b").await);
    let port = free_port();
    let _dp = Dataplane::start(&config(port, "", &echo_routes(a, b))).await;
    let mut tasks = Vec::new();
    for c in 0..10 {
        let conn = std::sync::Arc::new(h3(port).await);
        for i in 0..100 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let url = if i % 2 == 0 {
                    format!("https://api.test/v1/c{c}/r{i}")
                } else {
                    format!("https://x.test/c{c}/r{i}")
                };
                let r = conn.request(get(&url)).await.map_err(|e| e.to_string())?;
                if r.status != StatusCode::OK || !r.end.is_clean() {
                    return Err(format!("{url}: {} clean={}", r.status, r.end.is_clean()));
                }
                let doc: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
                let want = if i % 2 == 0 { "b" } else { "a" };
                if doc["server"] != want {
                    return Err(format!("{url} went to {}", doc["server"]));
                }
                Ok(())
            }));
        }
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = tokio::time::timeout(HANG_GUARD, t)
            .await
            .expect("hang")
            .expect("task")
        {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
}

/// SIGTERM: GOAWAY, the in-flight HTTP/3 request completes, then exit 0.
#[tokio::test]
async fn sigterm_drains_http3_requests() {
    let a = echo("a").await;
    let port = free_port();
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let mut dp = Dataplane::start_with(
        &cfg,
        Opts {
            drain_timeout: Some("20s".into()),
            ..Opts::default()
        },
    )
    .await;
    let conn = std::sync::Arc::new(h3(port).await);
    let c2 = conn.clone();
    let slow = tokio::spawn(async move { c2.request(get("https://x.test/?delay_ms=1500")).await });
    // Let the request reach the upstream before the signal.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while echo_stats(a).await["requests"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    dp.signal(libc::SIGTERM);
    let r = tokio::time::timeout(HANG_GUARD, slow)
        .await
        .expect("hang")
        .expect("task")
        .expect("in-flight request");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.end.is_clean());
    let status = dp.wait_exit().await;
    assert!(status.success(), "exit status {status}");
    // Nothing listens any more.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let again =
        tokio::time::timeout(Duration::from_secs(10), h3client::connect(addr, None, true)).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "a new HTTP/3 connection was accepted after shutdown"
    );
}

fn write_cert(dir: &std::path::Path, tag: &str) -> (String, String, Trust) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let cert = dir.join(format!("{tag}.crt"));
    let key = dir.join(format!("{tag}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let trust = Trust::Roots(vec![ck.cert.der().clone()]);
    (cert.display().to_string(), key.display().to_string(), trust)
}

/// Certificate files replaced on disk: new handshakes get the new certificate (QUIC and TCP),
/// established HTTP/3 connections keep working.
#[tokio::test]
async fn certificate_reload_keeps_established_connections() {
    let a = echo("a").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, trust_old) = write_cert(dir.path(), "live");
    let tls =
        format!("    tls:\n      certificates: [{{ certFile: \"{cert}\", keyFile: \"{key}\" }}]\n");
    let cfg = config(port, &tls, &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let _dp = Dataplane::start_with(
        &cfg,
        Opts {
            args: vec!["--cert-check-interval".into(), "100ms".into()],
            ..Opts::default()
        },
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let old = h3client::connect_with(addr, Some("localhost"), &trust_old)
        .await
        .expect("connect with old cert");
    assert_eq!(
        old.request(get("https://localhost/"))
            .await
            .expect("old")
            .status,
        StatusCode::OK
    );

    // Rotate: write the new pair elsewhere, then move it over the old files.
    let (new_cert, new_key, trust_new) = write_cert(dir.path(), "next");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    let fresh = loop {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_secs(5),
            h3client::connect_with(addr, Some("localhost"), &trust_new),
        )
        .await
        {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate never served over QUIC"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        fresh
            .request(get("https://localhost/"))
            .await
            .expect("fresh")
            .status,
        StatusCode::OK
    );
    // The old certificate is no longer offered to new handshakes...
    let stale = tokio::time::timeout(
        Duration::from_secs(10),
        h3client::connect_with(addr, Some("localhost"), &trust_old),
    )
    .await;
    assert!(!matches!(stale, Ok(Ok(_))), "old certificate still served");
    // ...but the connection made with it is still up.
    let r = old
        .request(get("https://localhost/after"))
        .await
        .expect("old connection after reload");
    assert_eq!(r.status, StatusCode::OK);
    // TCP TLS got the new certificate too.
    let pem = dir.path().join("trust-new.pem");
    std::fs::copy(&cert, &pem).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args([
        "-s",
        "--max-time",
        "60",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
    ])
    .arg(&pem)
    .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
    .arg(format!("https://localhost:{port}/"));
    let out = run(curl).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    old.close().await;
    fresh.close().await;
}

/// An independent HTTP/3 implementation (ngtcp2/nghttp3's gtlsclient, no SNI to an IP) fetches
/// a body through Weir and it matches byte for byte.
#[tokio::test]
async fn gtlsclient_interop() {
    if std::process::Command::new("gtlsclient")
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("gtlsclient not found: install Debian's ngtcp2-client (`make deps` does)");
    }
    let a = echo("a").await;
    let port = free_port();
    let cfg = config(port, "", &format!("backends:\n  a: {{ endpoints: [\"{a}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"));
    let _dp = Dataplane::start(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{port}/payload?bytes=300000");
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            std::process::Command::new("timeout")
                .args(["60", "gtlsclient", "--quiet", "--exit-on-all-streams-close"])
                .arg(format!("--download={}", dir.display()))
                .args(["127.0.0.1", &port.to_string(), &url])
                .output()
        }
    })
    .await
    .unwrap()
    .expect("run gtlsclient");
    assert!(
        out.status.success(),
        "gtlsclient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "gtlsclient should have saved one file: {files:?}"
    );
    let body = std::fs::read(files[0].path()).expect("downloaded file");
    assert_eq!(body.len(), 300_000);
    assert_eq!(body, echo_backend::pattern_chunk(0, 300_000));
}
