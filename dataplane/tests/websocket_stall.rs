//! Issue #19 bug 1 through the real proxy: a WebSocket peer that stops reading while the other
//! keeps sending. The tunnel must end on the route's idle timeout and close both connections
//! (it used to sit in a blocked write forever, its idle timer never polled).

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A masked binary frame of 64 KiB (the client side of RFC 6455 §5.2).
fn big_client_frame() -> Vec<u8> {
    let len: u64 = 64 * 1024;
    let mask = [0x5au8, 0x17, 0xc3, 0x01];
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&mask);
    f.extend((0..len as usize).map(|i| (i as u8) ^ mask[i % 4]));
    f
}

/// A WebSocket backend that completes the handshake, then never reads again (it keeps the
/// connection open until the test ends).
async fn stalled_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let _held = ws.into_inner();
        std::future::pending::<()>().await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_to_a_peer_that_stopped_reading_ends_on_idle_timeout() {
    let backend = stalled_backend().await;
    let port = free_port();
    let dp = Dataplane::start(&websocket_config(
        &format!("{{ name: http, address: \"127.0.0.1:{port}\", protocol: http }}"),
        backend,
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    client
        .write_all(
            b"GET /idle HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut b).await.expect("handshake answer"), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Send until the proxy closes the connection; nothing is read back.
    let frame = big_client_frame();
    let sent = tokio::time::timeout(HANG_GUARD, async {
        let mut sent = 0usize;
        loop {
            match client.write_all(&frame).await {
                Ok(()) => sent += frame.len(),
                Err(e) => return (sent, e),
            }
        }
    })
    .await;
    let (sent, err) = sent.unwrap_or_else(|_| {
        panic!(
            "the tunnel never ended on its 1s idle timeout; log:\n{}",
            dp.log()
        )
    });
    assert!(sent > 0, "some bytes went through before the stall");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err:?}"
    );
}
