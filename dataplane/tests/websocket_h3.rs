//! WebSockets over HTTP/3 (RFC 9220 extended CONNECT) through the real dataplane: an h3
//! client sends `CONNECT` with `:protocol websocket`, the proxy routes it to a tokio-tungstenite
//! echo backend as an HTTP/1.1 upgrade, and WebSocket frames flow over the request stream.
//! Checks echo (small and larger-than-the-pipe messages), close propagation both ways, the
//! per-rule switch, the idle timeout, and the metrics.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use common::*;
use http::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;
use weir_bench::h3client::{self, H3Conn, H3Stream};

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard expired: {what}"))
}

async fn h3(port: u16) -> H3Conn {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    guard("h3 connect", h3client::connect(addr, None, true))
        .await
        .expect("HTTP/3 connect")
}

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

/// A masked client frame (RFC 6455 §5.2) with FIN set.
fn client_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mask = [0x5au8, 0xa5, 0x0f, 0xf0];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(f)
}

/// Reads one unmasked server frame (FIN set, as the echo server sends them): opcode, payload.
/// `None` if the stream ended cleanly before a frame started.
async fn server_frame(s: &mut H3Stream, buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            assert_eq!(buf[0] & 0x80, 0x80, "unfragmented frame expected");
            assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                126 | 127 => (u64::MAX, 0),
                n => (u64::from(n), 2),
            };
            if head > 0 && buf.len() as u64 >= head as u64 + len {
                let opcode = buf[0] & 0x0f;
                buf.advance(head);
                return Some((opcode, buf.split_to(len as usize).to_vec()));
            }
        }
        match guard("server frame", s.recv_chunk()).await {
            Ok(Some(d)) => buf.extend_from_slice(&d),
            Ok(None) => {
                assert!(buf.is_empty(), "stream ended inside a frame");
                return None;
            }
            Err(e) => panic!("stream failed: {e}"),
        }
    }
}

/// Reads a QUIC variable-length integer (RFC 9000 §16).
async fn varint(r: &mut quinn::RecvStream) -> u64 {
    let mut first = [0u8; 1];
    guard("varint", r.read_exact(&mut first))
        .await
        .expect("read varint");
    let len = 1usize << (first[0] >> 6);
    let mut v = u64::from(first[0] & 0x3f);
    let mut rest = [0u8; 7];
    guard("varint", r.read_exact(&mut rest[..len - 1]))
        .await
        .expect("read varint");
    for b in &rest[..len - 1] {
        v = (v << 8) | u64::from(*b);
    }
    v
}

fn take_varint(p: &mut &[u8]) -> u64 {
    let len = 1usize << (p[0] >> 6);
    let mut v = u64::from(p[0] & 0x3f);
    for b in &p[1..len] {
        v = (v << 8) | u64::from(*b);
    }
    *p = &p[len..];
    v
}

/// The server's HTTP/3 SETTINGS (RFC 9114 §7.2.4), read from its control stream.
async fn server_settings(port: u16) -> Vec<(u64, u64)> {
    let tls = weir_bench::tls::client_config(&weir_bench::tls::Trust::Insecure, &[b"h3"])
        .expect("TLS config");
    let cfg = h3client::quic_client_config(&tls).expect("QUIC config");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("UDP bind");
    ep.set_default_client_config(cfg);
    let conn = guard(
        "QUIC handshake",
        ep.connect(format!("127.0.0.1:{port}").parse().unwrap(), "localhost")
            .expect("connect"),
    )
    .await
    .expect("QUIC handshake");
    // The server opens its control stream (type 0x00) and the QPACK streams, in any order.
    loop {
        let mut r = guard("server uni stream", conn.accept_uni())
            .await
            .expect("uni stream");
        if varint(&mut r).await != 0x00 {
            continue;
        }
        assert_eq!(varint(&mut r).await, 0x04, "first frame is SETTINGS");
        let len = varint(&mut r).await as usize;
        let mut payload = vec![0u8; len];
        guard("SETTINGS", r.read_exact(&mut payload))
            .await
            .expect("SETTINGS payload");
        let mut out = Vec::new();
        let mut p = payload.as_slice();
        while !p.is_empty() {
            let id = take_varint(&mut p);
            out.push((id, take_varint(&mut p)));
        }
        conn.close(0u32.into(), b"");
        return out;
    }
}

fn connect_req(port: u16, path: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://127.0.0.1:{port}{path}"))
        .header("sec-websocket-version", "13")
        .extension(h3::ext::Protocol::WEBSOCKET)
        .body(())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_h3_extended_connect() {
    let ws = ws_echo().await;
    let port = free_port();
    let config = websocket_config(
        &format!("{{ name: https, address: \"127.0.0.1:{port}\", protocol: https }}"),
        ws,
    );
    let dp = Dataplane::start(&config).await;
    // SETTINGS_ENABLE_CONNECT_PROTOCOL (0x08) = 1 (RFC 9220 §3).
    let settings = server_settings(port).await;
    assert!(
        settings.contains(&(0x08, 1)),
        "server SETTINGS without ENABLE_CONNECT_PROTOCOL: {settings:?}"
    );
    let conn = h3(port).await;

    // Handshake: 200, no Sec-WebSocket-Accept (RFC 9220 / RFC 8441 §5).
    let mut s = guard(
        "send CONNECT",
        conn.send_request(connect_req(port, "/chat")),
    )
    .await
    .expect("CONNECT sent");
    let resp = guard("CONNECT response", s.recv_response())
        .await
        .expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    let mut buf = BytesMut::new();

    // Text frames echo one by one.
    for i in 0..3 {
        let text = format!("over h3 {i}");
        s.send_data(client_frame(0x1, text.as_bytes()))
            .await
            .expect("send frame");
        let (op, payload) = server_frame(&mut s, &mut buf).await.expect("echo frame");
        assert_eq!((op, payload), (0x1, text.into_bytes()));
    }
    // A binary message larger than the proxy's internal pipe, sent in pieces.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let frame = client_frame(0x2, &big);
    for piece in frame.chunks(30_000) {
        s.send_data(Bytes::copy_from_slice(piece))
            .await
            .expect("send piece");
    }
    let (op, payload) = server_frame(&mut s, &mut buf).await.expect("big echo");
    assert_eq!(op, 0x2);
    assert!(payload == big, "200 kB binary message echoed intact");

    wait_metric(
        &dp,
        "weir_websocket_upgrades_total{protocol=\"h3\",result=\"upgraded\"} 1",
    )
    .await;
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h3\"} 1").await;

    // Close: our close frame reaches the backend, its close frame comes back, then the
    // backend's TCP close ends the HTTP/3 stream; ending our side closes the tunnel.
    s.send_data(client_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .expect("close frame");
    let (op, _) = server_frame(&mut s, &mut buf).await.expect("close echo");
    assert_eq!(op, 0x8, "close frame from the backend");
    assert!(
        server_frame(&mut s, &mut buf).await.is_none(),
        "stream ends after the close"
    );
    s.finish().await.expect("finish our side");
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h3\"} 0").await;

    // The per-rule switch: 403 on a route with WebSockets off.
    let mut s = guard("send CONNECT", conn.send_request(connect_req(port, "/off")))
        .await
        .expect("CONNECT sent");
    let resp = guard("CONNECT response", s.recv_response())
        .await
        .expect("response head");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (body, _) = guard("403 body", s.collect_body()).await;
    assert!(
        String::from_utf8_lossy(&body).contains("websocket_disabled"),
        "{body:?}"
    );
    wait_metric(
        &dp,
        "weir_websocket_upgrades_total{protocol=\"h3\",result=\"disabled\"} 1",
    )
    .await;

    // Idle timeout: after one echo and then silence, the proxy ends the stream.
    let mut s = guard(
        "send CONNECT",
        conn.send_request(connect_req(port, "/idle")),
    )
    .await
    .expect("CONNECT sent");
    let resp = guard("CONNECT response", s.recv_response())
        .await
        .expect("response head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut buf = BytesMut::new();
    s.send_data(client_frame(0x1, b"once")).await.expect("send");
    let (op, payload) = server_frame(&mut s, &mut buf).await.expect("echo");
    assert_eq!((op, payload.as_slice()), (0x1, &b"once"[..]));
    assert!(
        server_frame(&mut s, &mut buf).await.is_none(),
        "idle tunnel ended by the proxy"
    );
    wait_metric(
        &dp,
        "weir_websocket_upgrades_total{protocol=\"h3\",result=\"upgraded\"} 2",
    )
    .await;
    wait_metric(&dp, "weir_websocket_tunnels_open{protocol=\"h3\"} 0").await;

    conn.close().await;
}
