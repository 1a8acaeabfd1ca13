//! Weir's HTTP/1.1 upstream pool (`dataplane/src/upstream/pool.rs`) through the real binary, against a
//! raw TCP backend whose connection handling each test controls: connections closed by the
//! backend after an answer, `maxIdlePerEndpoint`, `idleTimeout`, bodiless responses, a
//! `Connection: close` answer and a truncated body.
//!
//! Assertions are on counts (connections the backend accepted and saw closed, `GET /backends`
//! `connectionsCreated` / `connectionsOpen`); waits only have the hang guard as a deadline.

mod common;
use common::*;

use http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

/// Counts kept by [`Backend`].
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    /// Connections the proxy closed (EOF seen by the backend).
    closed_by_peer: AtomicU64,
}

/// A raw HTTP/1.1 backend. Per request path:
/// - `/close`: answers (keep-alive, nothing announced) and closes the connection;
/// - `/hold`: answers once `hold` requests have arrived (they need one connection each);
/// - `/204`: `204 No Content`; `HEAD` anything: `200` with `content-length: 2` and no body;
/// - `/conn-close`: answers with `Connection: close` and closes;
/// - `/truncated`: announces 10 bytes, sends 5, closes;
/// - anything else: `200 ok`.
struct Backend {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl Backend {
    async fn start(hold: usize) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let barrier = Arc::new(Barrier::new(hold.max(1)));
        let c = counts.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, c.clone(), barrier.clone()));
            }
        });
        Backend { addr, counts }
    }

    fn accepted(&self) -> u64 {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    fn closed_by_peer(&self) -> u64 {
        self.counts.closed_by_peer.load(Ordering::SeqCst)
    }
}

/// Reads one request head; `None` at EOF (or on an error). Requests carry no body.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut first = head.lines().next()?.split(' ');
            let method = first.next()?.to_string();
            let path = first.next()?.to_string();
            return Some((method, path));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve(mut s: TcpStream, counts: Arc<Counts>, barrier: Arc<Barrier>) {
    let mut buf = Vec::new();
    loop {
        let Some((method, path)) = read_head(&mut s, &mut buf).await else {
            counts.closed_by_peer.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (answer, close): (&[u8], bool) = if method == "HEAD" {
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", false)
        } else {
            match path.as_str() {
                "/close" => (ok, true),
                "/hold" => {
                    barrier.wait().await;
                    (ok, false)
                }
                "/204" => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
                "/conn-close" => (
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                    true,
                ),
                "/truncated" => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcde", true),
                _ => (ok, false),
            }
        };
        if close {
            // Corked, the answer and the FIN leave in one segment, as they do from a server that
            // closes right after answering. Without it the FIN could trail the answer by however
            // long this task waits for a core; a request the proxy sends on the connection in
            // that window is lost to a race no proxy can absorb for a POST (nginx and Go's
            // Transport give up on it too: the request was written, the server may have seen it).
            let _ = socket2::SockRef::from(&s).set_tcp_cork(true);
        }
        if s.write_all(answer).await.is_err() || close {
            return;
        }
    }
}

fn config(port: u16, be: SocketAddr, pool: Value) -> String {
    json!({
        "version": "pool",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"b": {
            "endpoints": [be.to_string()],
            // No retries: a request that fails shows as a failure.
            "retries": {"attempts": 1},
            "pool": pool,
        }},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    })
    .to_string()
}

/// `(connectionsCreated, connectionsOpen)` of the endpoint in `GET /backends`.
async fn conns(dp: &Dataplane, be: SocketAddr) -> (u64, u64) {
    let doc = get(&client(), &dp.admin_url("/backends")).await.json();
    let ep = doc["backends"]["b"]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == be.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("no endpoint {be}: {doc:#}"));
    (
        ep["connectionsCreated"].as_u64().unwrap(),
        ep["connectionsOpen"].as_u64().unwrap(),
    )
}

/// Polls until `f` holds (the hang guard is the only deadline).
async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn req(method: Method, url: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(empty())
        .unwrap()
}

/// A backend that closes every connection right after answering, without announcing it: the
/// next request must not fail on the dead pooled connection (it is skipped once the proxy has
/// seen the close, or sent again on a new connection when hyper hands it back unwritten), even
/// for POST and with retries off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_idle_connections_loses_no_request() {
    const N: u64 = 40;
    let be = Backend::start(1).await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, be.addr, json!({}))).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/close");
    for i in 0..N {
        let method = if i % 2 == 0 {
            Method::POST
        } else {
            Method::GET
        };
        let r = send(&c, req(method, &url)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {:?}", r.body);
        assert_eq!(&r.body[..], b"ok");
    }
    assert_eq!(be.accepted(), N, "one connection per request");
    let (created, _) = conns(&dp, be.addr).await;
    assert_eq!(created, N);
    wait_until("every upstream connection closed", || async {
        conns(&dp, be.addr).await.1 == 0
    })
    .await;
}

/// `maxIdlePerEndpoint`: K requests held at the backend at once need K connections; when they
/// are done, only `maxIdlePerEndpoint` stay open, and later sequential requests reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_bounded_per_endpoint() {
    const K: usize = 4;
    let be = Backend::start(K).await;
    let port = free_port();
    let dp = Dataplane::start(&config(
        port,
        be.addr,
        json!({"maxIdlePerEndpoint": 2, "idleTimeout": "1h"}),
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/hold");
    let held: Vec<_> = (0..K)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(&client(), req(Method::GET, &url)).await })
        })
        .collect();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(be.accepted(), K as u64);
    wait_until("open connections down to maxIdlePerEndpoint", || async {
        conns(&dp, be.addr).await == (K as u64, 2)
    })
    .await;
    wait_until("the backend saw the surplus closed", || async {
        be.closed_by_peer() == K as u64 - 2
    })
    .await;

    let c = client();
    for _ in 0..10 {
        let r = get(&c, &format!("http://127.0.0.1:{port}/x")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        be.accepted(),
        K as u64,
        "sequential requests reuse idle connections"
    );
    assert_eq!(conns(&dp, be.addr).await, (K as u64, 2));
}

/// `idleTimeout`: idle connections are closed by the proxy without any further request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_expire() {
    let be = Backend::start(1).await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, be.addr, json!({"idleTimeout": "50ms"}))).await;
    let c = client();
    let r = get(&c, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    wait_until("the idle connection closed by the proxy", || async {
        be.closed_by_peer() == 1
    })
    .await;
    assert_eq!(conns(&dp, be.addr).await, (1, 0));
    // The next request opens a new connection.
    let r = get(&c, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(be.accepted(), 2);
}

/// Responses without a body (`HEAD`, `204`) give their connection back like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_keep_the_connection() {
    let be = Backend::start(1).await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, be.addr, json!({}))).await;
    let c = client();
    for i in 0..10 {
        let (method, path) = if i % 2 == 0 {
            (Method::HEAD, "/x")
        } else {
            (Method::GET, "/204")
        };
        let r = send(&c, req(method, &format!("http://127.0.0.1:{port}{path}"))).await;
        let want = if i % 2 == 0 {
            StatusCode::OK
        } else {
            StatusCode::NO_CONTENT
        };
        assert_eq!(r.status, want);
        assert!(r.body.is_empty());
    }
    assert_eq!(be.accepted(), 1);
    assert_eq!(conns(&dp, be.addr).await, (1, 1));
}

/// An answer with `Connection: close` and a truncated body: neither connection is used again,
/// and the requests after them succeed on new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_or_broken_exchanges_are_not_reused() {
    let be = Backend::start(1).await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, be.addr, json!({}))).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");

    let r = get(&c, &format!("{base}/conn-close")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&c, &format!("{base}/x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(be.accepted(), 2);

    // The body breaks off: the client sees an error, not a complete 10-byte body.
    let broken = try_send(&client(), req(Method::GET, &format!("{base}/truncated"))).await;
    assert!(
        broken.as_ref().map_or(true, |r| r.body.len() != 10),
        "{broken:?}"
    );
    assert_eq!(be.accepted(), 2, "the idle connection carried it");
    for _ in 0..3 {
        let r = get(&c, &format!("{base}/x")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        be.accepted(),
        3,
        "a new connection after the broken one, then reuse"
    );
    assert_eq!(conns(&dp, be.addr).await, (3, 1));
}
