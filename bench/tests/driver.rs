//! End-to-end tests: in-process `serve` servers on 127.0.0.1:0 driven by the
//! load driver, the one-shot client and the HTTP/3 client. Counts only, no
//! timing assertions.

use bytes::Bytes;
use weir_bench::h3client::{self, BodyEnd};
use weir_bench::server::{self, ServeConfig, Server};
use weir_bench::stats::Report;
use weir_bench::{load, oneshot, ErrorKind, LoadConfig, Protocol, Trust};

async fn serve(cfg: ServeConfig) -> Server {
    server::start(cfg).await.expect("server starts")
}

async fn drive(cfg: LoadConfig) -> Report {
    tokio::task::spawn_blocking(move || load::run(&cfg))
        .await
        .expect("load thread")
        .expect("load run")
}

fn load_cfg(url: String, protocol: Protocol, c: usize, m: usize, n: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(url, protocol);
    cfg.connections = c;
    cfg.streams = m;
    cfg.requests = Some(n);
    cfg.threads = 2;
    cfg
}

fn assert_clean(r: &Report, n: u64, body: u64) {
    assert_eq!(r.total_errors(), 0, "errors: {:?}", r.first_errors);
    assert_eq!(r.responses, n);
    assert_eq!(r.status.get(&200), Some(&n));
    assert_eq!(r.bytes, n * body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_load_2000_requests_no_errors() {
    let srv = serve(ServeConfig::default()).await;
    let cfg = load_cfg(format!("http://{}/", srv.addr()), Protocol::H1, 4, 1, 2000);
    let r = drive(cfg).await;
    assert_clean(&r, 2000, 13);
    assert_eq!(r.connections, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_load_2000_requests_no_errors() {
    let srv = serve(ServeConfig::default()).await;
    let cfg = load_cfg(
        format!("http://{}/x?y=1", srv.addr()),
        Protocol::H2,
        2,
        16,
        2000,
    );
    let r = drive(cfg).await;
    assert_clean(&r, 2000, 13);
    assert_eq!(r.connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_load_2000_requests_no_errors() {
    let srv = serve(ServeConfig {
        h3: true,
        ..Default::default()
    })
    .await;
    let addr = srv.h3_addr().expect("h3 enabled");
    let mut cfg = load_cfg(format!("https://{addr}/"), Protocol::H3, 4, 32, 2000);
    cfg.trust = Trust::Insecure;
    let r = drive(cfg).await;
    assert_clean(&r, 2000, 13);
    assert_eq!(r.connections, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_load_with_request_body_and_cacert_trust() {
    let srv = serve(ServeConfig {
        h3: true,
        body_size: 4096,
        ..Default::default()
    })
    .await;
    // SNI "localhost" verified against the server's own certificate.
    let mut cfg = load_cfg(
        format!("https://localhost:{}/upload", srv.addr().port()),
        Protocol::H3,
        2,
        8,
        300,
    );
    cfg.connect_to = Some(srv.addr().to_string());
    cfg.trust = srv.trust();
    cfg.method = http::Method::POST;
    cfg.body = Bytes::from(vec![b'x'; 10_000]);
    let r = drive(cfg).await;
    assert_clean(&r, 300, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_h1_over_tls_alpn_load() {
    let srv = serve(ServeConfig {
        tls: true,
        ..Default::default()
    })
    .await;
    for protocol in [Protocol::H2, Protocol::H1] {
        let mut cfg = load_cfg(format!("https://{}/", srv.addr()), protocol, 2, 8, 500);
        cfg.trust = srv.trust();
        cfg.method = http::Method::PUT;
        cfg.body = Bytes::from_static(b"payload");
        let r = drive(cfg).await;
        assert_clean(&r, 500, 13);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_mode_stops_by_itself() {
    let srv = serve(ServeConfig::default()).await;
    let mut cfg = LoadConfig::new(format!("http://{}/", srv.addr()), Protocol::H2);
    cfg.duration = Some(std::time::Duration::from_millis(300));
    cfg.streams = 4;
    let r = drive(cfg).await;
    assert_eq!(r.total_errors(), 0, "errors: {:?}", r.first_errors);
    assert!(r.responses > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_returns_body_h1_h2_h3() {
    let srv = serve(ServeConfig {
        h3: true,
        ..Default::default()
    })
    .await;
    for (protocol, scheme, head) in [
        (Protocol::H1, "http", "HTTP/1.1 200 OK\r\n"),
        (Protocol::H2, "http", "HTTP/2 200 OK\r\n"),
        (Protocol::H3, "https", "HTTP/3 200 OK\r\n"),
    ] {
        let mut cfg = LoadConfig::new(format!("{scheme}://{}/", srv.addr()), protocol);
        cfg.trust = Trust::Insecure;
        let mut out = Vec::new();
        let status = oneshot::run(&cfg, &mut out).await.expect("one-shot");
        assert_eq!(status, 200);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with(head), "{protocol:?}: {text:?}");
        assert!(text.contains("content-length: 13\r\n"), "{text:?}");
        assert!(text.ends_with("\r\n\r\nHello, world!"), "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_api_collects_body() {
    let srv = serve(ServeConfig {
        h3: true,
        body_size: 100_000,
        ..Default::default()
    })
    .await;
    let addr = srv.h3_addr().expect("h3 enabled");
    let conn = h3client::connect_with(addr, Some("localhost"), &srv.trust())
        .await
        .expect("connect");
    let req = http::Request::post("https://localhost/echo")
        .body(Bytes::from_static(b"hello"))
        .expect("request");
    let resp = conn.request(req).await.expect("response");
    assert_eq!(resp.status, 200);
    assert!(resp.end.is_clean());
    assert_eq!(resp.body, server::body_of(100_000));
    assert_eq!(resp.headers["content-length"], "100000");

    // Streaming variant on the same connection.
    let mut s = conn
        .send_request(
            http::Request::get("https://localhost/")
                .body(())
                .expect("request"),
        )
        .await
        .expect("stream");
    s.finish().await.expect("finish");
    let head = s.recv_response().await.expect("head");
    assert_eq!(head.status(), 200);
    let (body, end) = s.collect_body().await;
    assert!(end.is_clean());
    assert_eq!(body.len(), 100_000);
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_reset_midway_is_an_error() {
    let srv = serve(ServeConfig {
        h3: true,
        body_size: 64 * 1024,
        reset_after: Some(1000),
        ..Default::default()
    })
    .await;
    let addr = srv.h3_addr().expect("h3 enabled");

    // Library client: head received, body ends with a reset.
    let conn = h3client::connect(addr, None, true).await.expect("connect");
    let req = http::Request::get(format!("https://{addr}/"))
        .body(Bytes::new())
        .expect("request");
    let resp = conn.request(req).await.expect("head");
    assert_eq!(resp.status, 200);
    match &resp.end {
        BodyEnd::Error(e) => assert_eq!(e.kind(), ErrorKind::Reset, "{e}"),
        BodyEnd::Clean => panic!("reset reported as a clean end"),
    }
    assert!(resp.body.len() < 64 * 1024);
    conn.close().await;

    // One-shot: an error, not a clean end.
    let mut cfg = LoadConfig::new(format!("https://{addr}/"), Protocol::H3);
    cfg.trust = Trust::Insecure;
    let mut out = Vec::new();
    let err = oneshot::run(&cfg, &mut out)
        .await
        .expect_err("reset must fail");
    assert_eq!(err.kind(), ErrorKind::Reset, "{err}");

    // Load driver: every request counted as a reset.
    let mut cfg = load_cfg(format!("https://{addr}/"), Protocol::H3, 1, 4, 20);
    cfg.trust = Trust::Insecure;
    let r = drive(cfg).await;
    assert_eq!(r.responses, 0);
    assert_eq!(r.errors_of(ErrorKind::Reset), 20, "{:?}", r.first_errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2_reset_midway_is_an_error() {
    let srv = serve(ServeConfig {
        body_size: 64 * 1024,
        reset_after: Some(1000),
        ..Default::default()
    })
    .await;
    for protocol in [Protocol::H1, Protocol::H2] {
        let cfg = LoadConfig::new(format!("http://{}/", srv.addr()), protocol);
        let mut out = Vec::new();
        let err = oneshot::run(&cfg, &mut out)
            .await
            .expect_err("reset must fail");
        assert_eq!(err.kind(), ErrorKind::Reset, "{protocol:?}: {err}");

        let cfg = load_cfg(format!("http://{}/", srv.addr()), protocol, 2, 4, 40);
        let r = drive(cfg).await;
        assert_eq!(r.responses, 0, "{protocol:?}");
        assert_eq!(
            r.errors_of(ErrorKind::Reset),
            40,
            "{protocol:?}: {:?}",
            r.first_errors
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_counted() {
    // Bind then drop to get a port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = load_cfg(format!("http://127.0.0.1:{port}/"), Protocol::H1, 1, 1, 10);
    let r = drive(cfg).await;
    assert_eq!(r.responses, 0);
    assert!(r.errors_of(ErrorKind::Connect) > 0, "{:?}", r.errors);

    let cfg = LoadConfig::new(format!("http://127.0.0.1:{port}/"), Protocol::H1);
    let mut out = Vec::new();
    let err = oneshot::run(&cfg, &mut out).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
}

/// The H3 client's futures can be spawned on a multi-threaded runtime.
#[allow(dead_code)]
fn h3client_futures_are_send(conn: &'static h3client::H3Conn) {
    fn is_send<T: Send>(_: &T) {}
    let req = http::Request::get("https://x/")
        .body(Bytes::new())
        .expect("request");
    is_send(&conn.request(req));
    is_send(&h3client::connect(
        "127.0.0.1:1".parse().expect("addr"),
        None,
        true,
    ));
    is_send(&server::start(ServeConfig::default()));
}
