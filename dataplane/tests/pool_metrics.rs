//! Upstream pool and endpoint uptime gauges on real sockets:
//! `weir_upstream_connections_open` follows the connections the pool holds (keep-alive reuse
//! keeps it at 1; the backend closing them brings it to 0), and
//! `weir_backend_endpoint_available_since_seconds` is 0 while an endpoint is out of rotation and
//! moves forward when it comes back.
//!
//! Assertions are on counts and states; waits only have the hang guard as a deadline.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A backend that counts accepted connections and can be stopped (closing all of them).
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (acc, t) = (accepted.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Backend {
            addr,
            accepted,
            tasks,
        }
    }

    /// Stops accepting and closes every connection (the tasks own the sockets).
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

struct Deadline(tokio::time::Instant, &'static str);

impl Deadline {
    fn new(what: &'static str) -> Deadline {
        Deadline(tokio::time::Instant::now() + HANG_GUARD, what)
    }
    async fn tick(&self) {
        assert!(
            tokio::time::Instant::now() < self.0,
            "gave up waiting: {}",
            self.1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `connectionsOpen` of the endpoint in `GET /backends`.
async fn open_in_backends(dp: &Dataplane, backend: &str, addr: SocketAddr) -> u64 {
    let doc = get(&client(), &dp.admin_url("/backends")).await.json();
    doc["backends"][backend]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
        .and_then(|e| e["connectionsOpen"].as_u64())
        .unwrap_or_else(|| panic!("no connectionsOpen for {addr}: {doc:#}"))
}

async fn scrape(dp: &Dataplane) -> String {
    let r = get(&client(), &dp.admin_url("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of `family{backend=..., endpoint=...}`, `None` when the series is absent.
fn sample(text: &str, family: &str, backend: &str, endpoint: SocketAddr) -> Option<f64> {
    let b = format!("backend=\"{backend}\"");
    let e = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| l.contains(&b) && l.contains(&e))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn config(port: u16, backends: Value) -> String {
    let names: Vec<String> = backends.as_object().unwrap().keys().cloned().collect();
    let rules: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/{n}")}}],
                "backendRefs": [{"name": n}],
            })
        })
        .collect();
    json!({
        "version": "pool-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": backends,
        "routes": [{"name": "r", "rules": rules}],
    })
    .to_string()
}

/// N sequential keep-alive requests ride one upstream connection: open = 1, created = 1, in
/// flight = 0; when the backend closes it the gauge returns to 0 (and the series stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_follow_the_pool() {
    const N: u64 = 20;
    let be = Backend::start().await;
    let port = free_port();
    let dp = Dataplane::start(&config(
        port,
        json!({"b": {"endpoints": [be.addr.to_string()]}}),
    ))
    .await;

    // Before any request: the series exists at 0.
    let m = scrape(&dp).await;
    assert_eq!(
        sample(&m, "weir_upstream_connections_open", "b", be.addr),
        Some(0.0),
        "{m}"
    );

    let http = client();
    for _ in 0..N {
        let r = get(&http, &format!("http://127.0.0.1:{port}/b/x")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(be.accepted.load(Ordering::SeqCst), 1, "pool reuse");
    let m = scrape(&dp).await;
    assert_eq!(
        sample(&m, "weir_upstream_connections_open", "b", be.addr),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "weir_upstream_connections_created_total", "b", be.addr),
        Some(1.0)
    );
    // Exported per endpoint; nothing raced a closing connection here (the count itself is
    // tested in pool.rs: `request_on_a_connection_closed_while_idle_goes_out_on_a_new_one`).
    assert_eq!(
        sample(&m, "weir_upstream_requests_resent_total", "b", be.addr),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "weir_backend_endpoint_requests_total", "b", be.addr),
        Some(N as f64)
    );
    assert_eq!(
        sample(&m, "weir_backend_endpoint_requests_in_flight", "b", be.addr),
        Some(0.0)
    );
    assert_eq!(open_in_backends(&dp, "b", be.addr).await, 1);

    // The backend goes away: once the pool's connection task sees EOF the gauge is 0.
    be.stop();
    let d = Deadline::new("open connections back to 0");
    loop {
        let m = scrape(&dp).await;
        let open = sample(&m, "weir_upstream_connections_open", "b", be.addr);
        assert!(matches!(open, Some(v) if v == 0.0 || v == 1.0), "{open:?}");
        if open == Some(0.0) {
            assert_eq!(
                sample(&m, "weir_upstream_connections_created_total", "b", be.addr),
                Some(1.0)
            );
            assert_eq!(open_in_backends(&dp, "b", be.addr).await, 0);
            break;
        }
        d.tick().await;
    }
}

/// `available_since` is set while in rotation, 0 while out (failed active checks), and later
/// than before once the endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_since_moves_on_health_transitions() {
    let a = echo("a").await;
    let port = free_port();
    let hc = json!({
        "http": {"path": "/healthz"},
        "interval": "20ms",
        "jitter": "0s",
        "timeout": "2s",
        "unhealthyThreshold": 1,
        "healthyThreshold": 1,
    });
    let dp = Dataplane::start(&config(
        port,
        json!({"p": {"endpoints": [a.to_string()], "healthCheck": hc}}),
    ))
    .await;
    let since = |m: &str| sample(m, "weir_backend_endpoint_available_since_seconds", "p", a);
    let avail = |m: &str| sample(m, "weir_backend_endpoint_available", "p", a);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };

    let m = scrape(&dp).await;
    assert_eq!(avail(&m), Some(1.0), "{m}");
    let first = since(&m).unwrap();
    assert!(first > 0.0 && first <= now(), "{first}");
    // Stable while nothing changes.
    assert_eq!(since(&scrape(&dp).await), Some(first));

    set_healthy(a, false).await;
    let d = Deadline::new("a out of rotation");
    loop {
        let m = scrape(&dp).await;
        let (av, s) = (avail(&m), since(&m));
        // Both come from one state read: available == (since > 0).
        assert_eq!(av == Some(1.0), s.unwrap() > 0.0, "{m}");
        if av == Some(0.0) {
            break;
        }
        d.tick().await;
    }

    set_healthy(a, true).await;
    let d = Deadline::new("a back in rotation");
    let back = loop {
        let m = scrape(&dp).await;
        let s = since(&m).unwrap();
        if avail(&m) == Some(1.0) {
            break s;
        }
        assert_eq!(s, 0.0, "{m}");
        d.tick().await;
    };
    assert!(back > first && back <= now(), "first {first}, back {back}");
}

async fn set_healthy(addr: SocketAddr, healthy: bool) {
    let v = u8::from(healthy);
    let r = get(&client(), &format!("http://{addr}/?set_healthy={v}")).await;
    assert_eq!(r.status, StatusCode::OK);
}
