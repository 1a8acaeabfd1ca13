//! HTTP/2 over TLS through the real binary, with a real h2 client on a real socket: the server
//! on the `h2` crate (`listen/h2.rs`, `--downstream-h2 h2`, the default) and hyper's server
//! (`--downstream-h2 hyper`) are held to the same cases: bodies larger than the flow-control
//! windows both ways, a client's RST_STREAM cancelling the upstream (before and during the
//! response), drain with a stream in flight, header lists past the listener's limits, and
//! WebSockets over extended CONNECT (RFC 8441).

mod common;
use common::*;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;

const SERVERS: [&str; 2] = ["h2", "hyper"];

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard expired: {what}"))
}

/// The dataplane with one TLS listener (`extra`: more listener fields) routing to `backend`,
/// whose request timeout (10 min) is longer than any test: a cancel seen upstream is the
/// client's.
async fn proxy(server: &str, backend: SocketAddr, extra: &str, drain: bool) -> (Dataplane, u16) {
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: https, address: "127.0.0.1:{port}", protocol: https{extra} }}
backends:
  b: {{ endpoints: ["{backend}"], timeouts: {{ request: 10m }} }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: b }}] }}]
"#
    );
    let dp = Dataplane::start_with(
        &config,
        Opts {
            args: vec!["--downstream-h2".into(), server.into()],
            drain_timeout: drain.then(|| "20s".into()),
            ..Opts::default()
        },
    )
    .await;
    (dp, port)
}

/// An h2 client connection over TLS (ALPN h2) with the given initial stream window.
async fn h2_tls(port: u16, window: u32) -> h2::client::SendRequest<Bytes> {
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
    let (send, conn) = guard(
        "h2 handshake",
        h2::client::Builder::new()
            .initial_window_size(window)
            .handshake(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    guard("h2 ready", send.ready()).await.expect("ready")
}

fn req(method: Method, port: u16, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("https://localhost:{port}{path}"))
        .body(())
        .unwrap()
}

/// Reads a whole response body, releasing flow control as it goes.
async fn read_body(mut body: h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut got = Vec::new();
    while let Some(d) = guard("body", body.data()).await {
        let d = d?;
        let _ = body.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    Ok(got)
}

async fn echo_stats(addr: SocketAddr) -> serde_json::Value {
    get(&client(), &format!("http://{addr}/?stats=1"))
        .await
        .json()
}

/// Polls the echo backend's counter `key` until it is `want`.
async fn wait_stat(addr: SocketAddr, key: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let stats = echo_stats(addr).await;
        if stats[key] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "echo {key} never reached {want}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 3 MiB upload (3× the server's 1 MiB stream and connection windows: it only completes if
/// the server releases capacity as the body is forwarded), with and without Content-Length;
/// and a 1 MiB download to a client whose window is 16 KiB (the server must wait for
/// WINDOW_UPDATEs instead of failing or buffering past the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_windows_both_ways() {
    let echo = echo("h2big").await;
    for server in SERVERS {
        let (_dp, port) = proxy(server, echo, "", false).await;
        let mut send = h2_tls(port, 16 * 1024).await;
        let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        for declared in [true, false] {
            let mut r = req(Method::POST, port, "/upload");
            if declared {
                r.headers_mut()
                    .insert("content-length", body.len().to_string().parse().unwrap());
            }
            let (resp, mut tx) = send.send_request(r, false).expect("send_request");
            // Sent as the server's window allows.
            let mut rest = Bytes::from(body.clone());
            while !rest.is_empty() {
                tx.reserve_capacity(rest.len());
                let n = guard("capacity", std::future::poll_fn(|cx| tx.poll_capacity(cx)))
                    .await
                    .expect("stream open")
                    .expect("capacity");
                let chunk = rest.split_to(n.min(rest.len()));
                tx.send_data(chunk, rest.is_empty()).expect("send_data");
            }
            let resp = guard("upload response", resp).await.expect("response");
            assert_eq!(resp.status(), StatusCode::OK, "{server}");
            let json: serde_json::Value =
                serde_json::from_slice(&read_body(resp.into_body()).await.expect("body"))
                    .expect("json");
            assert_eq!(
                json["bodyBytes"],
                body.len(),
                "{server} declared={declared}"
            );
            let sha = {
                use sha2::Digest;
                hex(&sha2::Sha256::digest(&body))
            };
            assert_eq!(json["bodySha256"], sha, "{server} declared={declared}");
        }

        let (resp, _) = send
            .send_request(req(Method::GET, port, "/?bytes=1048576"), true)
            .expect("send_request");
        let resp = guard("download", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
        let got = read_body(resp.into_body()).await.expect("body");
        assert_eq!(got.len(), 1024 * 1024, "{server}");
        assert_eq!(
            got,
            common::echo_backend::pattern_chunk(0, got.len()),
            "{server}"
        );
    }
}

/// A client's RST_STREAM cancels the upstream request: before the response (the pipeline's
/// future is dropped, the echo backend sees the request abandoned) and in the middle of a
/// streamed response (the upstream response is dropped before its end). The connection
/// keeps serving other streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_cancels_the_upstream() {
    for server in SERVERS {
        let echo = echo("h2rst").await;
        let (_dp, port) = proxy(server, echo, "", false).await;
        let mut send = h2_tls(port, 65_535).await;

        // Before the response: the backend waits 60 s before answering.
        let (resp, mut tx) = send
            .send_request(req(Method::GET, port, "/?delay_ms=60000"), true)
            .expect("send_request");
        wait_stat(echo, "requests", 1).await;
        assert_eq!(echo_stats(echo).await["requestsCancelled"], 0);
        tx.send_reset(h2::Reason::CANCEL);
        drop(resp);
        wait_stat(echo, "requestsCancelled", 1).await;

        // Mid-response: 100 MiB streamed in 64 KiB chunks 20 ms apart; we read one and reset.
        send = guard("ready", send.ready()).await.expect("ready");
        let (resp, mut tx) = send
            .send_request(
                req(Method::GET, port, "/?bytes=104857600&chunk_delay_ms=20"),
                true,
            )
            .expect("send_request");
        let resp = guard("streamed response", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
        let mut body = resp.into_body();
        let first = guard("first chunk", body.data())
            .await
            .expect("data")
            .expect("data");
        assert!(!first.is_empty());
        assert_eq!(echo_stats(echo).await["responsesDropped"], 0);
        tx.send_reset(h2::Reason::CANCEL);
        drop(body);
        wait_stat(echo, "responsesDropped", 1).await;

        // The connection still serves.
        send = guard("ready", send.ready()).await.expect("ready");
        let (resp, _) = send
            .send_request(req(Method::GET, port, "/after"), true)
            .expect("send_request");
        let resp = guard("after reset", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
    }
}

/// SIGTERM with a stream in flight: the connection gets GOAWAY (no new stream is served on
/// it), the stream in flight is answered in full, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_streams_in_flight() {
    for server in SERVERS {
        let echo = echo("h2drain").await;
        let (mut dp, port) = proxy(server, echo, "", true).await;
        let mut send = h2_tls(port, 65_535).await;
        let (resp, _) = send
            .send_request(req(Method::GET, port, "/?delay_ms=1500&bytes=200000"), true)
            .expect("send_request");
        wait_stat(echo, "requests", 1).await;
        dp.signal(libc::SIGTERM);
        // GOAWAY arrives before the answer: after it the client refuses new streams.
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let refused = match guard("ready", send.clone().ready()).await {
                Err(_) => true,
                Ok(mut s) => match s.send_request(req(Method::GET, port, "/late"), true) {
                    Err(_) => true,
                    Ok((late, _)) => match guard("late", late).await {
                        // Sent before the GOAWAY reached us: refused by the server.
                        Err(e) => {
                            assert!(
                                e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM),
                                "{server}: {e}"
                            );
                            true
                        }
                        // Sent before the server's first GOAWAY, or between its two GOAWAYs
                        // (RFC 9113 §6.8: the second names the last stream it serves).
                        Ok(_) => false,
                    },
                },
            };
            if refused {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{server}: no GOAWAY"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let resp = guard("in-flight response", resp)
            .await
            .expect("in-flight response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
        let got = read_body(resp.into_body()).await.expect("whole body");
        assert_eq!(got.len(), 200_000, "{server}");
        let status = dp.wait_exit().await;
        assert!(status.success(), "{server}: exit status {status}");
    }
}

/// A header list past `SETTINGS_MAX_HEADER_LIST_SIZE` (the listener's limits plus HPACK's
/// per-field overhead) is refused by h2 before the pipeline sees it; one under it but past
/// `maxRequestHeaderBytes` gets the pipeline's `431 headers_too_large`. The connection keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_past_the_limits_are_refused() {
    let echo = echo("h2hdr").await;
    let limits = ", limits: { maxRequestHeaders: 20, maxRequestHeaderBytes: 2048 }";
    for server in SERVERS {
        let (_dp, port) = proxy(server, echo, limits, false).await;
        let mut send = h2_tls(port, 65_535).await;

        let mut r = req(Method::GET, port, "/huge");
        r.headers_mut()
            .insert("x-huge", "h".repeat(8000).parse().unwrap());
        let (resp, _) = send.send_request(r, true).expect("send_request");
        match guard("huge", resp).await {
            Ok(resp) => assert_eq!(
                resp.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{server}"
            ),
            Err(e) => assert_eq!(
                e.reason(),
                Some(h2::Reason::REFUSED_STREAM),
                "{server}: {e}"
            ),
        }

        send = guard("ready", send.ready()).await.expect("ready");
        let mut r = req(Method::GET, port, "/big");
        r.headers_mut()
            .insert("x-big", "b".repeat(2300).parse().unwrap());
        let (resp, _) = send.send_request(r, true).expect("send_request");
        let resp = guard("big", resp).await.expect("response");
        assert_eq!(
            resp.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{server}"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&read_body(resp.into_body()).await.expect("body"))
                .expect("json");
        assert_eq!(json["error"], "headers_too_large", "{server}");

        send = guard("ready", send.ready()).await.expect("ready");
        let (resp, _) = send
            .send_request(req(Method::GET, port, "/fine"), true)
            .expect("send_request");
        let resp = guard("fine", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
    }
}

fn ws_client_frame(text: &str) -> Bytes {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(f)
}

/// WebSockets over HTTP/2 over TLS (RFC 8441 extended CONNECT), bridged to the HTTP/1.1
/// upstream: frames echoed both ways, the close propagated; a route with WebSockets turned
/// off answers 403; a CONNECT with another `:protocol` is not a WebSocket handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_extended_connect() {
    let ws = ws_echo().await;
    for server in SERVERS {
        let port = free_port();
        let config = websocket_config(
            &format!("{{ name: https, address: \"127.0.0.1:{port}\", protocol: https }}"),
            ws,
        );
        let _dp = Dataplane::start_with(
            &config,
            Opts {
                args: vec!["--downstream-h2".into(), server.into()],
                ..Opts::default()
            },
        )
        .await;
        let send = h2_tls(port, 65_535).await;
        // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrive right after the preface.
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while !send.is_extended_connect_protocol_enabled() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{server}: server never enabled extended CONNECT"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let connect = |path: &str| {
            Request::builder()
                .method(Method::CONNECT)
                .uri(format!("https://localhost:{port}{path}"))
                .header("sec-websocket-version", "13")
                .extension(h2::ext::Protocol::from_static("websocket"))
                .body(())
                .unwrap()
        };
        let mut send = guard("ready", send.ready()).await.expect("ready");
        let (resp, _) = send.send_request(connect("/off"), true).expect("CONNECT");
        let resp = guard("CONNECT /off", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{server}");

        send = guard("ready", send.ready()).await.expect("ready");
        let (resp, mut tx) = send.send_request(connect("/chat"), false).expect("CONNECT");
        let resp = guard("CONNECT response", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
        let mut rx = resp.into_body();
        for i in 0..3 {
            let text = format!("over h2 tls {i}");
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
            assert_eq!(got, want, "{server}: echoed frame");
        }
        // Our close frame and END_STREAM: the upstream's close comes back, then the stream ends.
        tx.send_data(Bytes::from_static(&[0x88, 0x80, 0, 0, 0, 0]), true)
            .expect("close frame");
        let mut back = Vec::new();
        while let Some(Ok(d)) = guard("h2 end", rx.data()).await {
            let _ = rx.flow_control().release_capacity(d.len());
            back.extend_from_slice(&d);
        }
        assert_eq!(back.first(), Some(&0x88), "{server}: close frame echoed");
    }
}

/// An h2c backend (hyper) that reads the request to its end and answers with a body and
/// trailers: `x-request-trailer` (the request's `x-sum` trailer, or `none`) and
/// `grpc-status: 0`.
async fn trailers_backend() -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let collected = req.into_body().collect().await?;
                        let got = collected
                            .trailers()
                            .and_then(|t| t.get("x-sum").cloned())
                            .unwrap_or(http::HeaderValue::from_static("none"));
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        trailers.insert("x-request-trailer", got);
                        let frames = futures_util::stream::iter([
                            Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from_static(
                                b"payload",
                            ))),
                            Ok(hyper::body::Frame::trailers(trailers)),
                        ]);
                        Ok::<_, hyper::Error>(http::Response::new(http_body_util::StreamBody::new(
                            frames,
                        )))
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    addr
}

/// Trailers pass both ways over HTTP/2 over TLS to an h2c backend: the response's (as gRPC
/// sends `grpc-status`) after its DATA, and the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways() {
    let backend = trailers_backend().await;
    for server in SERVERS {
        let port = free_port();
        let config = format!(
            r#"
listeners:
  - {{ name: https, address: "127.0.0.1:{port}", protocol: https }}
backends:
  b: {{ endpoints: ["{backend}"], protocol: h2c }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: b }}] }}]
"#
        );
        let _dp = Dataplane::start_with(
            &config,
            Opts {
                args: vec!["--downstream-h2".into(), server.into()],
                ..Opts::default()
            },
        )
        .await;
        let mut send = h2_tls(port, 65_535).await;
        let mut r = req(Method::POST, port, "/svc/Call");
        r.headers_mut()
            .insert("te", http::HeaderValue::from_static("trailers"));
        let (resp, mut tx) = send.send_request(r, false).expect("send_request");
        tx.send_data(Bytes::from_static(b"request body"), false)
            .expect("data");
        let mut t = http::HeaderMap::new();
        t.insert("x-sum", http::HeaderValue::from_static("42"));
        tx.send_trailers(t).expect("trailers");
        let resp = guard("response", resp).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK, "{server}");
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = guard("body", body.data()).await {
            let d = d.expect("data");
            let _ = body.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        assert_eq!(got, b"payload", "{server}");
        let trailers = guard("trailers", body.trailers())
            .await
            .expect("trailers")
            .expect("response trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{server}"
        );
        assert_eq!(
            trailers.get("x-request-trailer").map(|v| v.as_bytes()),
            Some(&b"42"[..]),
            "{server}: request trailers"
        );
    }
}
