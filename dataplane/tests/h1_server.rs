//! The HTTP/1.1 server codec (`dataplane/src/listen/h1.rs`) against a hostile client on a real
//! socket, through the real binary: every request-side framing and smuggling defence, what
//! happens to the connection afterwards, pipelining, `Expect: 100-continue`, HTTP/1.0 and
//! `Connection: close`, bodies left unread and clients vanishing mid-body.
//!
//! Each case runs with `--downstream-h1 codec` (the default); the cases whose outcome hyper's
//! server shares run with `--downstream-h1 hyper` too, so both servers are held to them (where
//! they differ, the test says how).

mod common;
use common::*;

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy(server: &str) -> (Dataplane, SocketAddr, SocketAddr) {
    let echo = echo("h1s").await;
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules:
      - matches: [{{ path: {{ value: /small }} }}]
        maxRequestBodyBytes: 10
        backendRefs: [{{ name: echo }}]
      - backendRefs: [{{ name: echo }}]
"#
    );
    let dp = Dataplane::start_with(
        &config,
        Opts {
            args: vec!["--downstream-h1".into(), server.into()],
            ..Opts::default()
        },
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    (dp, addr, echo)
}

/// Sends `bytes` and reads until the proxy closes (the last request asks for that, or is
/// refused). No half-close: hyper's server drops requests in flight when the client's side
/// ends.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_all(&mut s).await
}

/// Reads until the proxy closes the connection (a reset after the response counts as closed).
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(HANG_GUARD, s.read(&mut buf)).await {
            Err(_) => panic!("the proxy did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in `text`, in order (heads parsed, bodies skipped by
/// their `Content-Length`).
fn statuses(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.starts_with("HTTP/1.") {
        let Some((head, body)) = rest.split_once("\r\n\r\n") else {
            break;
        };
        let Some(status) = head.get(9..12).and_then(|s| s.parse().ok()) else {
            break;
        };
        out.push(status);
        let len = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        rest = body.get(len..).unwrap_or_default();
    }
    out
}

/// Hostile request heads, and the status each gets (the connection is closed after all of
/// them). The third column: hyper's server answers the same.
const REFUSED: &[(&str, &[u8], u16, bool)] = &[
    (
        "cl+te",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        false, // hyper drops the length, reads the chunked body and closes after (200)
    ),
    (
        "cl-conflict",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        400,
        true,
    ),
    (
        "cl-list",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nab",
        400,
        true,
    ),
    (
        "cl-sign",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab",
        400,
        true,
    ),
    (
        "cl-negative",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
        true,
    ),
    (
        "te-not-last-chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
        true,
    ),
    (
        "te-http10",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        true,
    ),
    (
        "te-other-coding",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        false, // hyper accepts it and forwards a body whose gzip coding is lost on the way
    ),
    (
        "obs-fold",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
        400,
        true,
    ),
    (
        "bare-cr",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
        400,
        true,
    ),
    (
        "nul-in-value",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\x002\r\n\r\n",
        400,
        true,
    ),
    (
        "ctl-in-name",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: 1\r\n\r\n",
        400,
        true,
    ),
    (
        "space-before-colon",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        400,
        true,
    ),
    ("bad-method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, true),
    ("bad-target", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, true),
    (
        "version-2",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        505,
        false, // hyper: 400 (it answers 505 only to an HTTP/2 preface on an HTTP/1-only server)
    ),
    ("version-junk", b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400, true),
];

async fn refusals(server: &str) {
    let (_dp, addr, _) = proxy(server).await;
    for (name, raw, status, shared) in REFUSED {
        if server == "hyper" && !shared {
            continue;
        }
        let text = exchange(addr, raw).await;
        assert_eq!(statuses(&text), vec![*status], "{server} {name}: {text}");
    }
    // Too many fields (more than 100), and a head larger than the buffer: 431.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..120 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let text = exchange(addr, many.as_bytes()).await;
    assert_eq!(statuses(&text), vec![431], "{server} too many fields");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(500 * 1024)
    );
    let text = exchange(addr, big.as_bytes()).await;
    assert_eq!(statuses(&text), vec![431], "{server} oversized head");
    // And the listener still serves.
    let text = exchange(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), vec![200], "{server} after: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_are_refused_codec() {
    refusals("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_are_refused_hyper() {
    refusals("hyper").await;
}

/// Broken chunked bodies: the request fails (never a 2xx) and the connection is closed.
async fn broken_chunks(server: &str) {
    let (_dp, addr, _) = proxy(server).await;
    for (name, raw) in [
        (
            "chunk-size-overflow",
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nab\r\n0\r\n\r\n"[..],
        ),
        (
            "chunk-size-junk",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        ),
        (
            "chunk-ext-bare-lf",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;a\nb\r\nab\r\n0\r\n\r\n",
        ),
        (
            "chunk-data-no-crlf",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
        ),
    ] {
        let text = exchange(addr, raw).await;
        let got = statuses(&text);
        assert!(
            got.len() <= 1 && got.iter().all(|s| !(200..300).contains(s)),
            "{server} {name}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_bodies_fail_codec() {
    broken_chunks("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_bodies_fail_hyper() {
    broken_chunks("hyper").await;
}

/// Pipelined requests (one write) are answered in order, bodies and trailers included; the
/// request forms hyper accepts (absolute-form, bare LF line ends) are served the same.
async fn pipelining(server: &str) {
    let (_dp, addr, _) = proxy(server).await;
    let raw = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: v\r\n\r\n\
GET http://a/four HTTP/1.1\nHost: a\n\n\
GET /five HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n\
GET /never HTTP/1.1\r\nHost: a\r\n\r\n";
    let text = exchange(addr, raw).await;
    assert_eq!(statuses(&text), vec![200; 5], "{server}: {text}");
    let order: Vec<usize> = ["/one", "/two", "/three", "/four", "/five"]
        .iter()
        .map(|p| {
            text.find(&format!("\"uri\": \"{p}"))
                .or_else(|| text.find(&format!("\"uri\": \"http://a{p}")))
                .unwrap_or_else(|| panic!("{server}: no answer for {p}: {text}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{server}: {text}");
    assert!(text.contains("\"bodyBytes\": 5"), "{server}: {text}");
    assert!(text.contains("\"bodyBytes\": 3"), "{server}: {text}");
    assert!(!text.contains("/never"), "{server}: answered after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_order_codec() {
    pipelining("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_order_hyper() {
    pipelining("hyper").await;
}

/// `Expect: 100-continue` is answered before the body is sent; HTTP/1.0 closes unless it asks
/// for keep-alive.
async fn continue_and_http10(server: &str) {
    let (_dp, addr, _) = proxy(server).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(HANG_GUARD, s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{server}: {interim}"
    );
    s.write_all(b"data").await.expect("write body");
    let text = read_all(&mut s).await;
    assert_eq!(statuses(&text), vec![200], "{server}: {text}");
    assert!(text.contains("\"bodyBytes\": 4"), "{server}: {text}");

    // HTTP/1.0: closed after the response; with keep-alive, a second request is served.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let text = read_all(&mut s).await;
    assert_eq!(statuses(&text), vec![200], "{server} 1.0: {text}");
    let text = exchange(
        addr,
        b"GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(
        statuses(&text),
        vec![200, 200],
        "{server} 1.0 keep-alive: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: keep-alive"),
        "{server}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_and_http10_codec() {
    continue_and_http10("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_and_http10_hyper() {
    continue_and_http10("hyper").await;
}

/// A body the proxy answers without reading (413 from `Content-Length`) leaves the rest of the
/// upload on the connection: it is closed after the response, so those bytes are never read as
/// a request. A client that vanishes mid-body cuts the upstream request short (the backend
/// sees a body error), and the proxy keeps serving.
async fn unread_and_vanished_bodies(server: &str) {
    let (_dp, addr, echo) = proxy(server).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let text = read_all(&mut s).await;
    assert_eq!(statuses(&text), vec![413], "{server}: {text}");
    assert!(!text.contains("smuggled"), "{server}: {text}");

    let stats = || async {
        get(&client(), &format!("http://{echo}/?stats=1"))
            .await
            .json()
    };
    let before = stats().await;
    let (requests, errors) = (
        before["requests"].as_u64().unwrap_or(0),
        before["bodyErrors"].as_u64().unwrap_or(0),
    );
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("write");
    s.write_all(&[b'x'; 20000]).await.expect("write");
    let wait_for = |field: &'static str, above: u64| async move {
        tokio::time::timeout(HANG_GUARD, async {
            while stats().await[field].as_u64().unwrap_or(0) <= above {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{server}: the backend's {field} never rose"))
    };
    // The backend has the request (its body is being streamed): now vanish.
    wait_for("requests", requests).await;
    drop(s);
    wait_for("bodyErrors", errors).await;
    let text = exchange(
        addr,
        b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), vec![200], "{server}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_and_vanished_bodies_codec() {
    unread_and_vanished_bodies("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_and_vanished_bodies_hyper() {
    unread_and_vanished_bodies("hyper").await;
}

/// Request forms where the codec must answer as hyper's server did on main: a missing `Host`
/// on HTTP/1.1, and authority-form with a method other than CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_request_forms_as_hyper() {
    let (_a, codec, _) = proxy("codec").await;
    let (_b, hyper, _) = proxy("hyper").await;
    for raw in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET a:80 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET http://b/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let c = statuses(&exchange(codec, raw).await);
        let h = statuses(&exchange(hyper, raw).await);
        assert_eq!(c, h, "{:?}", String::from_utf8_lossy(raw));
    }
}

/// HTTP/1.1 over TLS (ALPN `http/1.1`) is the codec's too: a body, and a second request on
/// the same connection; ALPN `h2` still goes to hyper's HTTP/2 server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_over_tls() {
    let echo = echo("tls").await;
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
    let curl = |args: Vec<String>| async move {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sk", "--max-time", "60"])
                .args(args)
                .output()
                .expect("run curl")
        })
        .await
        .expect("join");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    // Two transfers in one curl run share the connection (curl reuses it; `--next` resets
    // the options, so they are given again).
    let text = curl(vec![
        "--http1.1".into(),
        "-i".into(),
        "--data-binary".into(),
        "hello".into(),
        url("/one"),
        "--next".into(),
        "-sk".into(),
        "--http1.1".into(),
        "-i".into(),
        url("/two"),
    ])
    .await;
    assert_eq!(statuses(&text), vec![200, 200], "{text}");
    assert!(text.contains("\"bodyBytes\": 5"), "{text}");
    let text = curl(vec!["--http2".into(), "-i".into(), url("/h2")]).await;
    assert!(text.starts_with("HTTP/2 200"), "{text}");
}

/// Drain on SIGTERM: an idle keep-alive connection is closed at once (the drain deadline is
/// longer than the test's hang guard, so only the codec closing it lets the read end); a
/// request in flight gets its response with `connection: close`; the process exits 0.
async fn drain(server: &str) {
    let echo = echo("drain").await;
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let mut dp = Dataplane::start_with(
        &config,
        Opts {
            drain_timeout: Some("600s".into()),
            args: vec!["--downstream-h1".into(), server.into()],
            ..Opts::default()
        },
    )
    .await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Idle after one exchange.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(HANG_GUARD, idle.read(&mut buf))
        .await
        .expect("first response")
        .expect("read");
    assert_eq!(statuses(&String::from_utf8_lossy(&buf[..n])), vec![200]);
    // In flight: the backend answers after a while.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(b"GET /slow?delay_ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let stats = || async {
        get(&client(), &format!("http://{echo}/?stats=1"))
            .await
            .json()
    };
    tokio::time::timeout(HANG_GUARD, async {
        while stats().await["requests"].as_u64().unwrap_or(0) < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow request never reached the backend");
    dp.signal(libc::SIGTERM);
    let rest = read_all(&mut idle).await;
    assert!(rest.is_empty(), "{server}: idle connection got {rest}");
    let text = read_all(&mut busy).await;
    assert_eq!(statuses(&text), vec![200], "{server}: {text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{server}: {text}"
    );
    assert!(dp.wait_exit().await.success(), "{server}: exit status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_and_finishes_in_flight_codec() {
    drain("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_and_finishes_in_flight_hyper() {
    drain("hyper").await;
}

/// A client that closes its connection while the upstream is still answering: the upstream
/// request is dropped too (the backend counts it as cancelled), as hyper's server does.
async fn client_gone(server: &str) {
    let (_dp, addr, echo) = proxy(server).await;
    let stats = || async {
        get(&client(), &format!("http://{echo}/?stats=1"))
            .await
            .json()
    };
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The backend would answer after 10 minutes, longer than the hang guard.
    s.write_all(b"GET /slow?delay_ms=600000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let wait_for = |field: &'static str| async move {
        tokio::time::timeout(HANG_GUARD, async {
            while stats().await[field].as_u64().unwrap_or(0) < 1 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{server}: the backend's {field} never rose"))
    };
    wait_for("requests").await;
    drop(s);
    wait_for("requestsCancelled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_cancels_the_upstream_codec() {
    client_gone("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_cancels_the_upstream_hyper() {
    client_gone("hyper").await;
}
