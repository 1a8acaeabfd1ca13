//! Protocol completeness through the real dataplane: request limits and the slowloris guard,
//! streamed (SSE) responses frame by frame over HTTP/1.1, HTTP/2 and HTTP/3, WebSockets over
//! HTTP/1.1 and HTTP/2 extended CONNECT, gRPC error statuses and deadlines, CORS.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_bench::h3client::{self, H3Conn};

async fn h3(port: u16) -> H3Conn {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(HANG_GUARD, h3client::connect(addr, None, true))
        .await
        .expect("connect hang")
        .expect("HTTP/3 connect")
}

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard expired: {what}"))
}

/// GET /metrics on the admin listener.
async fn metrics_text(dp: &Dataplane) -> String {
    let r = get(&client(), &dp.admin_url("/metrics")).await;
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Polls /metrics until `line` shows up.
async fn wait_metric(dp: &Dataplane, line: &str) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let text = metrics_text(dp).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric line {line:?} never appeared:\n{}",
            text.lines()
                .filter(|l| l.starts_with("weir_websocket"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn body_of(b: &'static [u8]) -> Body {
    full(Bytes::from_static(b))
}

/// A body sent in two chunks with no Content-Length.
fn streamed(chunks: Vec<Bytes>) -> Body {
    let s = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(c))),
    );
    BodyExt::boxed(http_body_util::StreamBody::new(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_their_status_codes() {
    let echo = echo("lim").await;
    let (port, tls_port) = (free_port(), free_port());
    let limits = "limits: { maxUriBytes: 200, maxRequestHeaders: 20, maxRequestHeaderBytes: 2048 }";
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http, {limits} }}
  - {{ name: https, address: "127.0.0.1:{tls_port}", protocol: https, {limits} }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: lim
    rules:
      - matches: [{{ path: {{ value: /small }} }}]
        maxRequestBodyBytes: 1000
        backendRefs: [{{ name: echo }}]
      - backendRefs: [{{ name: echo }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let long_uri = format!("/x?{}", "a".repeat(300));
    let many: Vec<(String, String)> = (0..25).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let big = "b".repeat(3000);

    for (c, proto) in [(client(), "h1"), (h2c_client(), "h2")] {
        let r = send(&c, get_req(&url(&long_uri), &[])).await;
        assert_eq!(r.status, StatusCode::URI_TOO_LONG, "{proto} uri");
        assert_eq!(r.json()["error"], "uri_too_long", "{proto}");

        let hs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = send(&c, get_req(&url("/"), &hs)).await;
        assert_eq!(
            r.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{proto} count"
        );

        let r = try_send(&c, get_req(&url("/"), &[("x-big", &big)])).await;
        assert_eq!(
            r.map(|r| r.status),
            Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            "{proto} size"
        );

        // Body limit: up front from Content-Length, and while streaming without one.
        let req = Request::post(url("/small"))
            .body(full(vec![b'x'; 2000]))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(
            r.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{proto} content-length"
        );
        assert_eq!(r.json()["error"], "body_too_large");
        let req = Request::post(url("/small"))
            .body(streamed(vec![
                Bytes::from(vec![b'y'; 800]),
                Bytes::from(vec![b'y'; 800]),
            ]))
            .unwrap();
        let r = try_send(&c, req).await;
        assert_eq!(
            r.map(|r| r.status),
            Ok(StatusCode::PAYLOAD_TOO_LARGE),
            "{proto} streamed"
        );

        // Within the limits everything is served.
        let req = Request::post(url("/small"))
            .body(streamed(vec![
                Bytes::from(vec![b'z'; 400]),
                Bytes::from(vec![b'z'; 400]),
            ]))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, StatusCode::OK, "{proto} small body");
        assert_eq!(r.json()["bodyBytes"], 800);
        let hs: Vec<(&str, &str)> = many[..10]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = send(&c, get_req(&url("/ok?q=1"), &hs)).await;
        assert_eq!(r.status, StatusCode::OK, "{proto} normal request");
    }

    // HTTP/3: same limits.
    let conn = h3(tls_port).await;
    let h3get = |p: &str| {
        Request::get(format!("https://127.0.0.1{p}"))
            .body(Bytes::new())
            .unwrap()
    };
    let r = conn.request(h3get(&long_uri)).await.expect("h3 uri");
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    let mut req = h3get("/");
    for (k, v) in &many {
        req.headers_mut()
            .insert(k.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
    }
    let r = conn.request(req).await.expect("h3 count");
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let post = Request::post("https://127.0.0.1/small")
        .header("content-length", "2000")
        .body(Bytes::from(vec![b'x'; 2000]))
        .unwrap();
    let r = conn.request(post).await.expect("h3 body");
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = conn.request(h3get("/fine")).await.expect("h3 ok");
    assert_eq!(r.status, StatusCode::OK);
    conn.close().await;
}

/// Slowloris: clients trickling their headers byte by byte are disconnected by the header
/// read timeout; a normal client on the same listener keeps being served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let echo = echo("slow").await;
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http, limits: {{ headerReadTimeout: 1s }} }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // 2000 header bytes at one byte per 50ms would take 100s to complete.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: slow\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(2000)
    );
    let mut slow = Vec::new();
    for _ in 0..3 {
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut r, mut w) = s.into_split();
            let closed = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
            });
            let mut sent = 0;
            for b in head.iter() {
                if closed.is_finished() || w.write_all(&[*b]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = guard("slowloris close", closed).await;
            (sent, head.len())
        }));
    }
    let c = client();
    let mut ok = 0;
    for i in 0..20 {
        let r = send(&c, get_req(&format!("http://{addr}/n{i}"), &[])).await;
        if r.status == StatusCode::OK {
            ok += 1;
        }
    }
    for s in slow {
        let (sent, total) = guard("slowloris task", s).await.expect("join");
        assert!(
            sent < total,
            "the slow client sent all {total} header bytes without being cut off"
        );
    }
    assert_eq!(
        ok, 20,
        "normal requests served while slowloris clients held connections"
    );
    // And still afterwards.
    let r = send(&c, get_req(&format!("http://{addr}/after"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The header read timeout on HTTP/2 (a connection that keeps pinging but never completes a
/// request head) and HTTP/3 (a request stream whose HEADERS frame never completes); the
/// same connections still serve complete requests (HTTP/3) and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_on_h2_and_h3() {
    let echo = echo("hdr").await;
    let (port, tls_port) = (free_port(), free_port());
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http, limits: {{ headerReadTimeout: 1s }} }}
  - {{ name: https, address: "127.0.0.1:{tls_port}", protocol: https, limits: {{ headerReadTimeout: 1s }} }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;

    // HTTP/2: preface + SETTINGS, then only PINGs (each one keeps the connection non-idle).
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut r, mut w) = s.into_split();
    let closed = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink).await;
    });
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    w.write_all(&start).await.expect("preface");
    let ping = [0u8, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut pings = 0;
    while pings < 1000 && !closed.is_finished() {
        if w.write_all(&ping).await.is_err() {
            break;
        }
        pings += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pings < 1000,
        "an HTTP/2 connection without a request was never closed"
    );
    guard("h2 close", closed).await.expect("join");

    // HTTP/3: a request stream with a HEADERS frame that never completes is dropped; a
    // complete request on the same connection is served.
    let conn = h3(tls_port).await;
    let (mut send, mut recv) = conn.quic().open_bi().await.expect("open stream");
    // HEADERS frame (type 0x01) announcing 100 bytes, of which 3 are sent.
    send.write_all(&[0x01, 0x40, 0x64, 0, 0, 0])
        .await
        .expect("partial headers");
    let mut buf = [0u8; 64];
    let end = guard("h3 stream dropped", recv.read(&mut buf)).await;
    assert!(
        !matches!(end, Ok(Some(_))),
        "the server answered an incomplete request: {end:?}"
    );
    let r = conn
        .request(
            Request::get("https://127.0.0.1/fine")
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .expect("complete request on the same connection");
    assert_eq!(r.status, StatusCode::OK);
    conn.close().await;
    let r = send_plain(port).await;
    assert_eq!(r, StatusCode::OK);
}

async fn send_plain(port: u16) -> StatusCode {
    send(
        &client(),
        get_req(&format!("http://127.0.0.1:{port}/"), &[]),
    )
    .await
    .status
}

/// A connection that sends nothing is closed after the listener's idleTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let echo = echo("idle").await;
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http, limits: {{ idleTimeout: 1s, headerReadTimeout: 1h }} }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    // HTTP/1.1 and HTTP/2 (prior knowledge preface, then silence).
    for preface in [&b""[..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(preface).await.expect("write");
        let mut buf = Vec::new();
        let _ = guard("idle close", s.read_to_end(&mut buf)).await;
    }
    let r = send(
        &client(),
        get_req(&format!("http://127.0.0.1:{port}/"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// An upstream whose response bodies the test writes event by event.
async fn sse_backend() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams_tx, streams_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let streams_tx = streams_tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                    let _ = streams_tx.send(tx);
                    let events = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv()
                            .await
                            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                    });
                    let resp = http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(http_body_util::StreamBody::new(events))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, streams_rx)
}

fn event(i: usize) -> Bytes {
    Bytes::from(format!("id: {i}\ndata: event {i}\n\n"))
}

/// Each event is read by the client before the backend is even given the next one, so a
/// proxy that buffered would never deliver it (and the hang guard would fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_over_h1_h2_h3() {
    let (sse, mut streams) = sse_backend().await;
    let (port, tls_port) = (free_port(), free_port());
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
  - {{ name: https, address: "127.0.0.1:{tls_port}", protocol: https }}
backends:
  sse: {{ endpoints: ["{sse}"] }}
routes:
  - name: events
    rules: [{{ backendRefs: [{{ name: sse }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    for (c, proto) in [(client(), "h1"), (h2c_client(), "h2")] {
        let req = get_req(&format!("http://127.0.0.1:{port}/events"), &[]);
        let pending = tokio::spawn(c.request(req));
        let tx = guard("backend stream", streams.recv())
            .await
            .expect("stream");
        tx.send(event(1)).expect("backend send");
        let resp = guard("response head", pending)
            .await
            .expect("join")
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "{proto}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut want = Vec::new();
        for i in 1..=4 {
            if i > 1 {
                tx.send(event(i)).expect("backend send");
            }
            want.extend_from_slice(&event(i));
            while got.len() < want.len() {
                let frame = guard("next event", body.frame())
                    .await
                    .expect("body ended early")
                    .expect("body error");
                if let Ok(d) = frame.into_data() {
                    got.extend_from_slice(&d);
                }
            }
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{proto}: events out of order or merged"
            );
        }
        drop(tx);
        // Then the stream ends (HTTP/2 may carry the end on an empty DATA frame).
        while let Some(f) = guard("end", body.frame()).await {
            let f = f.expect("body error at the end");
            assert!(
                f.data_ref().is_some_and(|d| d.is_empty()),
                "{proto}: unexpected frame after the last event: {f:?}"
            );
        }
    }

    let conn = h3(tls_port).await;
    let mut stream = conn
        .send_request(Request::get("https://127.0.0.1/events").body(()).unwrap())
        .await
        .expect("h3 request");
    stream.finish().await.expect("finish");
    let tx = guard("backend stream", streams.recv())
        .await
        .expect("stream");
    tx.send(event(1)).expect("backend send");
    let head = guard("h3 head", stream.recv_response())
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    let mut got = Vec::new();
    let mut want = Vec::new();
    for i in 1..=4 {
        if i > 1 {
            tx.send(event(i)).expect("backend send");
        }
        want.extend_from_slice(&event(i));
        while got.len() < want.len() {
            let chunk = guard("h3 event", stream.recv_chunk())
                .await
                .expect("h3 body")
                .expect("h3 body ended early");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, want, "h3: events out of order or merged");
    }
    drop(tx);
    assert!(guard("h3 end", stream.recv_chunk())
        .await
        .expect("end")
        .is_none());
    conn.close().await;
}

/// A masked client text frame (payload under 126 bytes).
fn ws_client_frame(text: &str) -> Bytes {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_h1_upgrade_and_h2_extended_connect() {
    use tokio_tungstenite::tungstenite::Message;
    let ws = ws_echo().await;
    let port = free_port();
    let config = websocket_config(
        &format!("{{ name: http, address: \"127.0.0.1:{port}\", protocol: http }}"),
        ws,
    );
    let dp = Dataplane::start(&config).await;

    // HTTP/1.1 Upgrade with a real client.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sock, resp) = guard(
        "ws handshake",
        tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/chat"), tcp),
    )
    .await
    .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let text = format!("hello {i}");
        sock.send(Message::text(text.clone())).await.expect("send");
        let back = guard("echo", sock.next())
            .await
            .expect("open")
            .expect("msg");
        assert_eq!(back, Message::text(text));
    }
    sock.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send binary");
    let back = guard("echo", sock.next())
        .await
        .expect("open")
        .expect("msg");
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h1\"} 1").await;
    // Close propagates: the server's close frame comes back, then the stream ends.
    sock.close(None).await.expect("close");
    loop {
        match guard("close", sock.next()).await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    drop(sock);
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h1\"} 0").await;
    wait_metric(
        &dp,
        "weir_websocket_upgrades_total{protocol=\"h1\",result=\"upgraded\"} 1",
    )
    .await;

    // The per-route switch.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    match tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/off"), tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::FORBIDDEN)
        }
        other => panic!(
            "handshake on a websocket-disabled route: {:?}",
            other.map(|_| ())
        ),
    }

    // A tunnel with no traffic for the route's websocket.idleTimeout is closed by the proxy.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut idle, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/idle"), tcp)
        .await
        .expect("handshake on /idle");
    idle.send(Message::text("once")).await.expect("send");
    let back = guard("echo", idle.next())
        .await
        .expect("open")
        .expect("msg");
    assert_eq!(back, Message::text("once"));
    // Now silence: the next read ends (no close frame from us, none from the echo server).
    loop {
        match guard("idle tunnel closed by the proxy", idle.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(m)) => assert!(m.is_close(), "unexpected message {m:?}"),
        }
    }

    // HTTP/2 extended CONNECT (RFC 8441), bridged to the HTTP/1.1 upstream.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send_req, conn) = guard("h2 handshake", h2::client::handshake(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send_req = guard("h2 ready", send_req.ready()).await.expect("ready");
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive right after the preface.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !send_req.is_extended_connect_protocol_enabled() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never enabled extended CONNECT"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://127.0.0.1:{port}/chat"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())
        .unwrap();
    let (resp, mut tx) = send_req.send_request(req, false).expect("send CONNECT");
    let resp = guard("CONNECT response", resp).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut rx = resp.into_body();
    for i in 0..3 {
        let text = format!("over h2 {i}");
        tx.send_data(ws_client_frame(&text), false)
            .expect("send frame");
        let mut want = vec![0x81, text.len() as u8];
        want.extend_from_slice(text.as_bytes());
        let mut got = Vec::new();
        while got.len() < want.len() {
            let d = guard("h2 echo", rx.data())
                .await
                .expect("stream open")
                .expect("data");
            let _ = rx.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        assert_eq!(got, want, "echoed frame");
    }
    wait_metric(
        &dp,
        "weir_websocket_upgrades_total{protocol=\"h2\",result=\"upgraded\"} 1",
    )
    .await;
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h2\"} 1").await;
    // Ending our side closes the tunnel; the upstream's close comes back as the stream's end.
    tx.send_data(Bytes::from_static(&[0x88, 0x80, 0, 0, 0, 0]), true)
        .expect("close frame");
    while let Some(Ok(d)) = guard("h2 end", rx.data()).await {
        let _ = rx.flow_control().release_capacity(d.len());
    }
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h2\"} 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_get_grpc_statuses_and_deadlines() {
    let echo = echo("grpc").await;
    let down = free_port();
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
backends:
  echo: {{ endpoints: ["{echo}"], protocol: h2c }}
  down: {{ endpoints: ["127.0.0.1:{down}"], protocol: h2c }}
routes:
  - name: svc
    hostnames: [svc.test]
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
  - name: gone
    hostnames: [gone.test]
    rules: [{{ backendRefs: [{{ name: down }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let c = h2c_client();
    let grpc = |host: &str, path: &str, timeout: Option<&str>| {
        let mut b = Request::post(format!("http://{host}:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(body_of(b"\0\0\0\0\0")).unwrap()
    };
    let cases = [
        ("nowhere.test", "/pkg.Svc/Call", None, "12"),
        ("gone.test", "/pkg.Svc/Call", None, "14"),
        (
            "svc.test",
            "/pkg.Svc/Call?delay_ms=20000",
            Some("200m"),
            "4",
        ),
    ];
    // The connection goes to 127.0.0.1; the hosts travel as :authority.
    for (host, path, timeout, want) in cases {
        let r = send_to(port, grpc(host, path, timeout)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{host}{path}: trailers-only reply"
        );
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert_eq!(r.header("grpc-status"), Some(want), "{host}{path}");
        assert!(r.body.is_empty());
    }
    // Not gRPC: the same failures stay HTTP errors.
    let r = send(
        &c,
        get_req(
            &format!("http://127.0.0.1:{port}/"),
            &[("host", "nowhere.test")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A gRPC request within its deadline is proxied (the echo answers JSON over h2c).
    let r = send_to(port, grpc("svc.test", "/pkg.Svc/Call", Some("10S"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["headers"]["grpc-timeout"], "10S");
}

/// Sends a request whose URI names a host that does not resolve, over a connection to
/// 127.0.0.1:`port` (HTTP/2: the URI's authority becomes :authority).
async fn send_to(port: u16, req: Request<Body>) -> Resp {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = guard("h2 request", sender.send_request(req))
        .await
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = guard("h2 body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_simple_requests() {
    let echo = echo("cors").await;
    let port = free_port();
    let auth_down = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: api
    rules:
      - matches: [{{ path: {{ value: /api }} }}]
        cors:
          allowOrigins:
            - {{ value: "https://app.example.com" }}
            - {{ type: RegularExpression, value: "https://[a-z0-9]+\\.preview\\.example\\.com" }}
          allowMethods: [GET, POST, PUT]
          allowHeaders: [authorization, x-request-id]
          exposeHeaders: [x-echo-server]
          allowCredentials: true
          maxAge: 10m
        backendRefs: [{{ name: echo }}]
      - matches: [{{ path: {{ value: /guarded }} }}]
        cors: {{ allowOrigins: [{{ value: "https://app.example.com" }}] }}
        extAuth: {{ url: "http://127.0.0.1:{auth_down}", failureMode: failClosed }}
        backendRefs: [{{ name: echo }}]
      - backendRefs: [{{ name: echo }}]
"#
    );
    let _dp = Dataplane::start(&config).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/api/items");
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(&url)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization")
            .body(empty())
            .unwrap()
    };
    // Preflight from an allowed origin: answered by the proxy.
    let r = send(&c, preflight("https://app.example.com")).await;
    // Preflights answer 200 (what the Gateway API CORS conformance test takes).
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, x-request-id")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-echo-server")
    );
    assert!(
        r.header("x-echo-server").is_none(),
        "preflight reached the upstream"
    );
    // Regex origin.
    let r = send(&c, preflight("https://pr42.preview.example.com")).await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://pr42.preview.example.com")
    );
    // Other origins get no CORS headers (the browser blocks them).
    let r = send(&c, preflight("https://evil.example.net")).await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = send(&c, preflight("https://x.preview.example.com.evil.net")).await;
    assert!(r.header("access-control-allow-origin").is_none());

    // Simple request from an allowed origin: proxied, headers added.
    let r = send(&c, get_req(&url, &[("origin", "https://app.example.com")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["server"], "cors");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-echo-server")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.header_all("vary").iter().any(|v| v.contains("Origin")));
    // From another origin: proxied, no CORS headers.
    let r = send(&c, get_req(&url, &[("origin", "https://evil.example.net")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("access-control-allow-origin").is_none());
    // Preflights are answered before external auth (browsers send no credentials with
    // them); the actual request is still checked (here: the webhook is down, fail closed).
    let guarded = format!("http://127.0.0.1:{port}/guarded");
    let req = Request::builder()
        .method(Method::OPTIONS)
        .uri(&guarded)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "GET")
        .body(empty())
        .unwrap();
    let r = send(&c, req).await;
    // Preflights answer 200 (what the Gateway API CORS conformance test takes).
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = send(
        &c,
        get_req(&guarded, &[("origin", "https://app.example.com")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A rule without a policy passes OPTIONS through to the upstream.
    let req = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("http://127.0.0.1:{port}/other"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .body(empty())
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.json()["method"], "OPTIONS");
    assert!(r.header("access-control-allow-origin").is_none());
}

/// HTTP/2 over TLS (ALPN `h2`, where each stream's request future is boxed, `listen/tcp.rs`):
/// many streams in flight on one connection are all answered, each with its own response;
/// then a rapid-reset flood (streams opened and cancelled at once) on a second connection is
/// cut off with GOAWAY `ENHANCE_YOUR_CALM` (hyper/h2's limit of 20 streams reset before they
/// were accepted), and a new connection is served afterwards.
#[tokio::test]
async fn h2_over_tls_many_streams_and_reset_flood() {
    let echo = echo("h2tls").await;
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: https, address: "127.0.0.1:{port}", protocol: https }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let _dp = Dataplane::start(&config).await;

    async fn tls_h2(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let cfg = weir_bench::tls::client_config(&weir_bench::tls::Trust::Insecure, &[b"h2"])
            .expect("client config");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = guard(
            "TLS handshake",
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls
    }
    async fn h2_tls(port: u16) -> h2::client::SendRequest<Bytes> {
        let (send, conn) = guard("h2 handshake", h2::client::handshake(tls_h2(port).await))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        send
    }
    let get = |path: String| {
        Request::get(format!("https://localhost:{port}{path}"))
            .body(())
            .unwrap()
    };

    // 100 streams in flight at once, each answered with its own path.
    let send = h2_tls(port).await;
    let mut send = guard("h2 ready", send.ready()).await.expect("ready");
    let mut pending = Vec::new();
    for i in 0..100 {
        let (resp, _) = send
            .send_request(get(format!("/stream/{i}")), true)
            .expect("send_request");
        pending.push((i, resp));
        send = guard("h2 ready", send.ready()).await.expect("ready");
    }
    for (i, resp) in pending {
        let resp = guard("response", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "stream {i}");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = guard("body", body.data()).await {
            let chunk = chunk.expect("body chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let doc: serde_json::Value = serde_json::from_slice(&got).expect("echo JSON");
        assert_eq!(doc["uri"], format!("/stream/{i}"), "stream {i}");
    }

    // Rapid reset, written by hand so the frames arrive together: 40 streams, each HEADERS
    // (GET /, END_STREAM) and at once RST_STREAM(CANCEL). The server answers GOAWAY
    // ENHANCE_YOUR_CALM (0xb) once more than 20 were reset before being accepted, and closes.
    let mut tls = tls_h2(port).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
                                                         // :method GET, :scheme https, :path / (static table), :authority "localhost" (literal).
    let mut block = vec![0x82, 0x87, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    for i in 0..40u32 {
        let id = (2 * i + 1).to_be_bytes();
        out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x5]); // HEADERS, END_STREAM|END_HEADERS
        out.extend_from_slice(&id);
        out.extend_from_slice(&block);
        out.extend_from_slice(&[0, 0, 4, 3, 0]); // RST_STREAM
        out.extend_from_slice(&id);
        out.extend_from_slice(&8u32.to_be_bytes()); // CANCEL
    }
    tls.write_all(&out).await.expect("write flood");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the server closes (an error after its GOAWAY counts as closed too).
    while let Ok(n) = guard("flooded connection closed", tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut goaway = None;
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        if rest[3] == 7 && len >= 8 {
            goaway = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        rest = &rest[9 + len..];
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "no GOAWAY ENHANCE_YOUR_CALM after the reset flood"
    );

    // The server is still serving new connections.
    let send = h2_tls(port).await;
    let mut send = guard("h2 ready", send.ready()).await.expect("ready");
    let (resp, _) = send
        .send_request(get("/after".into()), true)
        .expect("send_request");
    let resp = guard("response", resp).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}
