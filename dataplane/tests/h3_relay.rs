//! HTTP/3 request bodies relayed to an HTTP/1.1 upstream: data already received is merged into
//! larger chunks (dataplane/src/listen/h3.rs `H3Body`), which must never hold back a streaming body,
//! and a body cut off while it waits for client data must not take the request down with it.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use weir_bench::h3client::{self, H3Conn};

fn config(port: u16, backend: SocketAddr, backend_extra: &str) -> String {
    format!(
        "version: h3-relay\nlisteners:\n  - name: https\n    address: 127.0.0.1:{port}\n    protocol: https\nbackends:\n  a: {{ endpoints: [\"{backend}\"]{backend_extra} }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"
    )
}

async fn h3(port: u16) -> H3Conn {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(HANG_GUARD, h3client::connect(addr, None, true))
        .await
        .expect("connect hang")
        .expect("HTTP/3 connect")
}

/// Ping-pong through `mirror=1`: each small chunk must come back before the next one is sent,
/// so merging request data may only take what has already arrived, never wait for more.
#[tokio::test]
async fn streamed_request_chunks_are_not_held_back() {
    let a = echo("a").await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, a, "")).await;
    let conn = h3(port).await;
    let mut s = conn
        .send_request(Request::post("https://x.test/?mirror=1").body(()).unwrap())
        .await
        .expect("open");
    let mut head = None;
    for round in 0..5u8 {
        let ping = Bytes::from(vec![b'a' + round; 100 + usize::from(round)]);
        tokio::time::timeout(HANG_GUARD, s.send_data(ping.clone()))
            .await
            .expect("send hang")
            .expect("send");
        if head.is_none() {
            let h = tokio::time::timeout(HANG_GUARD, s.recv_response())
                .await
                .expect("head hang")
                .expect("head");
            assert_eq!(h.status(), StatusCode::OK);
            head = Some(h);
        }
        let mut got = Vec::new();
        while got.len() < ping.len() {
            let chunk = tokio::time::timeout(HANG_GUARD, s.recv_chunk())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the echo never came back"))
                .expect("recv")
                .expect("body ended early");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, ping, "round {round}");
    }
    s.finish().await.expect("finish");
    let rest = tokio::time::timeout(HANG_GUARD, s.recv_chunk())
        .await
        .expect("end hang")
        .expect("end");
    assert!(rest.is_none(), "nothing after the last echo");
}

/// Many small QUIC packets' worth of upload arrive upstream whole and in order (the merged
/// chunks are checked by the backend's SHA-256 of what it received).
#[tokio::test]
async fn merged_upload_arrives_whole() {
    use sha2::{Digest, Sha256};
    let a = echo("a").await;
    let port = free_port();
    let _dp = Dataplane::start(&config(port, a, "")).await;
    let conn = h3(port).await;
    let mut s = conn
        .send_request(Request::post("https://x.test/up").body(()).unwrap())
        .await
        .expect("open");
    let mut hasher = Sha256::new();
    let mut sent = 0usize;
    // Odd sizes, so chunk boundaries never line up with packets or the merge limit.
    for i in 0..600usize {
        let len = 1 + (i * 7919) % 20_000;
        let chunk: Vec<u8> = (0..len).map(|j| ((sent + j) % 251) as u8).collect();
        hasher.update(&chunk);
        sent += len;
        tokio::time::timeout(HANG_GUARD, s.send_data(Bytes::from(chunk)))
            .await
            .expect("send hang")
            .expect("send");
    }
    s.finish().await.expect("finish");
    let head = tokio::time::timeout(HANG_GUARD, s.recv_response())
        .await
        .expect("hang")
        .expect("response");
    assert_eq!(head.status(), StatusCode::OK);
    let (body, end) = s.collect_body().await;
    assert!(end.is_clean());
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let want = hex(&hasher.finalize());
    assert_eq!(doc["bodyBytes"], sent as u64);
    assert_eq!(doc["bodySha256"], want);
}

/// An upload that stalls (the client sends part of the body and then nothing) is cut off by
/// the upstream request timeout: the client still gets the 504, and dropping the request body
/// while it waited for client data does not panic (h3-quinn's `stop_sending` used to unwrap a
/// stream that its pending read had taken; see vendor/h3/WEIR-PATCH.md).
#[tokio::test]
async fn stalled_upload_gets_its_timeout_answer() {
    let a = echo("a").await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, a, ", timeouts: { request: 1s }")).await;
    let conn = h3(port).await;
    let mut s = conn
        .send_request(Request::post("https://x.test/stall").body(()).unwrap())
        .await
        .expect("open");
    s.send_data(Bytes::from(vec![7u8; 10_000]))
        .await
        .expect("send");
    // No finish: the body stays open until the timeout ends the exchange.
    let head = tokio::time::timeout(HANG_GUARD, s.recv_response())
        .await
        .expect("hang")
        .expect("a response, not a reset");
    assert_eq!(head.status(), StatusCode::GATEWAY_TIMEOUT);
    // The connection still serves requests, and nothing panicked on the way.
    let r = conn
        .request(
            Request::get("https://x.test/after")
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .expect("request after");
    assert_eq!(r.status, StatusCode::OK);
    let log = dp.log();
    assert!(!log.contains("panicked"), "{log}");
}
