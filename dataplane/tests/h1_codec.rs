//! The HTTP/1.1 upstream codec (`dataplane/src/upstream/h1.rs`) against a hostile backend on
//! a real socket, through the real binary: every framing and smuggling defence, and whether
//! the connection is used again afterwards (connections the backend accepted).
//!
//! Each case runs with `--upstream-h1 codec` (the default); the cases whose outcome hyper's
//! client shares run with `--upstream-h1 hyper` too, so both clients are held to them.

mod common;
use common::*;

use http::{Method, Request, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The backend's answer per request path: raw bytes, and whether it closes afterwards.
fn answer(path: &str) -> (&'static [u8], bool) {
    match path {
        // Transfer-Encoding and Content-Length: chunked wins, the connection is not reused.
        "/cl-te" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        "/cl-same" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/cl-conflict" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
            false,
        ),
        "/cl-list" => (b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok!", false),
        "/cl-sign" => (b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false),
        "/obs-fold" => (
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/bare-cr" => (
            b"HTTP/1.1 200 OK\r\nx-a: 1\rx-b: 2\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/nul" => (
            b"HTTP/1.1 200 OK\r\nx-a: 1\x002\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/ctl-name" => (
            b"HTTP/1.1 200 OK\r\nx\x01a: 1\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/chunk-overflow" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/chunk-ext-lf" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/chunk-no-crlf" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            false,
        ),
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;ext=\"v\"\r\nok\r\n1\r\n!\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        ),
        "/chunked-cut" => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            true,
        ),
        // A second response nobody asked for after the body: never the next request's answer.
        "/split" => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            false,
        ),
        "/interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/unasked-101" => (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        "/304" => (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
        "/te-http10" => (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    }
}

/// A raw backend answering by [`answer`]; counts the connections it accepted.
async fn hostile_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let path = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head.split(' ').nth(1).unwrap_or_default().to_string();
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let (bytes, close) = answer(&path);
        if close {
            // The answer and the FIN in one segment.
            let _ = socket2::SockRef::from(&s).set_tcp_cork(true);
        }
        if s.write_all(bytes).await.is_err() || close {
            return;
        }
    }
}

struct Setup {
    port: u16,
    accepted: Arc<AtomicU64>,
    _dp: Dataplane,
}

impl Setup {
    async fn start(client: &str) -> Setup {
        let (be, accepted) = hostile_backend().await;
        let port = free_port();
        let config = json!({
            "version": "h1",
            "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
            // No retries: a response refused shows as the failure it is.
            "backends": {"b": {"endpoints": [be.to_string()], "retries": {"attempts": 1}}},
            "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
        })
        .to_string();
        let opts = Opts {
            args: vec!["--upstream-h1".into(), client.into()],
            ..Opts::default()
        };
        let dp = Dataplane::start_with(&config, opts).await;
        Setup {
            port,
            accepted,
            _dp: dp,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// A plain request after the case: answered `ok`, and on a new connection or not.
    async fn next_is_ok(&self, new_connection: bool, case: &str) {
        let before = self.accepted();
        let r = get(&client(), &self.url("/ok")).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "{case}"
        );
        assert_eq!(
            self.accepted() - before,
            u64::from(new_connection),
            "{case}: new connection after it"
        );
    }
}

/// Heads no client may forward: a 502, and the connection is not used again.
async fn refused_heads(client_kind: &str) {
    let s = Setup::start(client_kind).await;
    s.next_is_ok(true, "first").await;
    for case in [
        "/cl-conflict",
        "/cl-list",
        "/cl-sign",
        "/obs-fold",
        "/bare-cr",
        "/nul",
        "/ctl-name",
        "/te-http10",
    ] {
        let r = get(&client(), &s.url(case)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{client_kind} {case}");
        s.next_is_ok(true, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_response_heads_are_refused_codec() {
    refused_heads("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_response_heads_are_refused_hyper() {
    refused_heads("hyper").await;
}

/// Bodies that break their framing: the client never gets a complete-looking body, and the
/// connection is not used again.
async fn broken_bodies(client_kind: &str) {
    let s = Setup::start(client_kind).await;
    s.next_is_ok(true, "first").await;
    for (case, whole) in [
        ("/chunk-overflow", &b"ok"[..]),
        ("/chunk-ext-lf", b"ok"),
        ("/chunk-no-crlf", b"ok"),
        ("/chunked-cut", b"hello"),
    ] {
        let r = try_send(&client(), req(&s.url(case))).await;
        assert!(
            r.as_ref().map_or(true, |r| r.body != whole),
            "{client_kind} {case}: {r:?}"
        );
        s.next_is_ok(true, case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_errors_codec() {
    broken_bodies("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_errors_hyper() {
    broken_bodies("hyper").await;
}

/// Response splitting: bytes after a `Content-Length` body are never read as the answer to
/// the next request.
async fn splitting(client_kind: &str) {
    let s = Setup::start(client_kind).await;
    s.next_is_ok(true, "first").await;
    for _ in 0..3 {
        let r = get(&client(), &s.url("/split")).await;
        assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
        s.next_is_ok(true, "/split").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_splitting_is_not_read_as_the_next_answer_codec() {
    splitting("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_splitting_is_not_read_as_the_next_answer_hyper() {
    splitting("hyper").await;
}

/// Both `Transfer-Encoding` and `Content-Length`: the chunked body whole, without the
/// `Content-Length`, and the connection closed after (hyper's client left the length in, and
/// the client read 3 bytes of `hello`).
async fn both_framings(client_kind: &str) {
    let s = Setup::start(client_kind).await;
    s.next_is_ok(true, "first").await;
    for _ in 0..2 {
        let r = get(&client(), &s.url("/cl-te")).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"hello"[..]),
            "{client_kind}"
        );
        assert_ne!(
            r.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        s.next_is_ok(true, "/cl-te").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_with_content_length_codec() {
    both_framings("codec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_with_content_length_hyper() {
    both_framings("hyper").await;
}

/// What the codec forwards, and when it keeps the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_cases_codec() {
    let s = Setup::start("codec").await;
    s.next_is_ok(true, "first").await;
    let c = client();

    // Agreeing duplicates are one length; the connection stays.
    let r = get(&c, &s.url("/cl-same")).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    s.next_is_ok(false, "/cl-same").await;

    // Chunks with extensions and trailers; the connection stays.
    let r = get(&c, &s.url("/chunked")).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok!"[..]));
    s.next_is_ok(false, "/chunked").await;

    // 100 and 103 are skipped; the final answer comes, and the connection stays.
    let r = get(&c, &s.url("/interim")).await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok"[..]));
    assert!(r.headers.get("link").is_none());
    s.next_is_ok(false, "/interim").await;

    // A 304 has no body whatever its Content-Length says: the next answer is read right.
    for _ in 0..2 {
        let r = get(&c, &s.url("/304")).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(r.body.is_empty());
        s.next_is_ok(false, "/304").await;
    }

    // A 101 nobody asked for is refused.
    let r = get(&c, &s.url("/unasked-101")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    s.next_is_ok(true, "/unasked-101").await;

    // No framing: read until close.
    let r = get(&c, &s.url("/until-close")).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"until close"[..])
    );
    s.next_is_ok(true, "/until-close").await;
}

fn req(url: &str) -> Request<Body> {
    Request::builder()
        .method(Method::GET)
        .uri(url)
        .body(empty())
        .unwrap()
}

/// A raw backend that answers every request with `status` and records each request head it
/// got (as text, in arrival order, tagged with `name`) in `log`.
async fn recording_backend(
    name: &'static str,
    status: u16,
    log: Arc<std::sync::Mutex<Vec<(&'static str, String)>>>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        log.lock().unwrap().push((name, head));
                        let answer =
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{name}");
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// A retried request goes out with the same head as its first try: the codec borrows the
/// request head for each try (no copy), hyper's client gets a copy of it and the last try the
/// head itself; the credential, the client's fields and `Host` are in both.
async fn retry_resends_the_head(client_kind: &str) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failing = recording_backend("f1", 503, log.clone()).await;
    let healthy = recording_backend("ok", 200, log.clone()).await;
    let port = free_port();
    let config = json!({
        "version": "retry-head",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"b": {
            "endpoints": [failing.to_string(), healthy.to_string()],
            "loadBalancer": {"type": "roundRobin"},
            "credential": {"header": "authorization", "value": "Bearer cred"},
            "retries": {"attempts": 2, "retryOn": {"statuses": [503]}},
        }},
        "routes": [{"name": "r", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    })
    .to_string();
    let opts = Opts {
        args: vec!["--upstream-h1".into(), client_kind.into()],
        ..Opts::default()
    };
    let _dp = Dataplane::start_with(&config, opts).await;
    let c = client();
    // Round robin: within a few requests one starts on the failing endpoint.
    for _ in 0..4 {
        let r = send(
            &c,
            get_req(
                &format!("http://127.0.0.1:{port}/p?q=1"),
                &[("x-client", "v"), ("authorization", "Bearer from-client")],
            ),
        )
        .await;
        assert_eq!(
            (r.status, &r.body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "{client_kind}"
        );
    }
    let log = log.lock().unwrap().clone();
    let first = log
        .iter()
        .position(|(name, _)| *name == "f1")
        .unwrap_or_else(|| panic!("{client_kind}: no try reached the failing endpoint: {log:?}"));
    let (tried, retried) = (&log[first].1, &log[first + 1]);
    assert_eq!(retried.0, "ok", "{client_kind}: {log:?}");
    assert_eq!(tried, &retried.1, "{client_kind}: the retry's head differs");
    let lower = tried.to_ascii_lowercase();
    for field in [
        "get /p?q=1 http/1.1\r\n",
        "\r\nx-client: v",
        "\r\nauthorization: bearer cred",
        "\r\nhost: 127.0.0.1:",
        // The fields the proxy adds (kept apart from the head's map) go with every try.
        "\r\nx-forwarded-for: 127.0.0.1\r\n",
        "\r\nx-forwarded-proto: http\r\n",
        "\r\nx-forwarded-host: 127.0.0.1:",
        "\r\nforwarded: for=127.0.0.1;proto=http;host=\"127.0.0.1:",
        "\r\ntraceparent: 00-",
    ] {
        assert!(
            lower.contains(field),
            "{client_kind}: {field:?} in {tried:?}"
        );
    }
    assert!(!lower.contains("from-client"), "{client_kind}: {tried:?}");
}

/// The lines of a recorded head with field name `name` (lowercase).
fn fields_named<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// What the proxy adds to a forwarded request, as the upstream receives it over a real
/// socket, through the codec (which writes the added fields after the head's own) and
/// hyper's client (which gets them merged into its map): a client's X-Forwarded-For and
/// `Forwarded` are appended to, its X-Forwarded-Proto/Host and `traceparent` replaced (one
/// field each, never two), a restarted trace's `tracestate` dropped; a client that sends none
/// gets each once.
///
/// `trace_routed`: the route's first rule matches on the `traceparent` the proxy sends (any
/// valid value; a second rule sends the rest to another backend), so the proxy's trace context
/// goes into the request's map before routing; otherwise the upstream encoder writes it. Every
/// request must reach the first rule's backend: each carries the proxy's `traceparent` by the
/// time it is routed, the one without any and the one with an invalid one included.
async fn added_fields_on_the_wire(client_kind: &str, trace_routed: bool) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let backend = recording_backend("ok", 200, log.clone()).await;
    let other = recording_backend("other", 200, log.clone()).await;
    let port = free_port();
    let rules = if trace_routed {
        json!([
            {"matches": [{"headers": [{"name": "traceparent", "type": "RegularExpression",
                "value": "00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]"}]}],
             "backendRefs": [{"name": "b"}]},
            {"backendRefs": [{"name": "other"}]},
        ])
    } else {
        json!([{"backendRefs": [{"name": "b"}]}])
    };
    let config = json!({
        "version": "added",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"b": {"endpoints": [backend.to_string()]},
                     "other": {"endpoints": [other.to_string()]}},
        "routes": [{"name": "r", "rules": rules}],
    })
    .to_string();
    let opts = Opts {
        args: vec!["--upstream-h1".into(), client_kind.into()],
        ..Opts::default()
    };
    let _dp = Dataplane::start_with(&config, opts).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/a");
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let spoofed = [
        ("host", "shop.test:8080"),
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "spoof.test"),
        ("forwarded", "for=203.0.113.9"),
        ("traceparent", parent),
        ("tracestate", "k=v"),
        ("x-client", "1"),
    ];
    for headers in [&spoofed[..], &[("host", "shop.test:8080")][..]] {
        let r = send(&c, get_req(&url, headers)).await;
        assert_eq!(r.status, StatusCode::OK, "{client_kind}");
    }
    // A restarted trace (an invalid `traceparent`) loses the client's `tracestate`.
    let restarted = [
        ("host", "shop.test:8080"),
        ("traceparent", "00-zz"),
        ("tracestate", "k=v"),
    ];
    let r = send(&c, get_req(&url, &restarted)).await;
    assert_eq!(r.status, StatusCode::OK, "{client_kind}");
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "{client_kind}: {log:?}");
    assert!(
        log.iter().all(|(name, _)| *name == "ok"),
        "{client_kind}, trace_routed {trace_routed}: {log:?}"
    );
    let (with, without, restart) = (&log[0].1, &log[1].1, &log[2].1);
    let one = |head: &str, name: &str| -> String {
        let v = fields_named(head, name);
        assert_eq!(v.len(), 1, "{client_kind}: one {name} in {head:?}");
        v[0].to_owned()
    };
    assert_eq!(
        one(with, "x-forwarded-for"),
        "203.0.113.9, 198.51.100.1, 127.0.0.1"
    );
    assert_eq!(one(with, "x-forwarded-proto"), "http");
    assert_eq!(one(with, "x-forwarded-host"), "shop.test:8080");
    assert_eq!(
        one(with, "forwarded"),
        "for=203.0.113.9, for=127.0.0.1;proto=http;host=\"shop.test:8080\""
    );
    let tp = one(with, "traceparent");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && !tp.contains("b7ad6b7169203331"),
        "{client_kind}: the trace continues with the proxy as parent: {tp}"
    );
    assert_eq!(
        one(with, "tracestate"),
        "k=v",
        "a continued trace keeps tracestate"
    );
    assert_eq!(one(with, "x-client"), "1");
    assert_eq!(one(with, "host"), "shop.test:8080");
    assert_eq!(one(without, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(without, "x-forwarded-proto"), "http");
    assert_eq!(one(without, "x-forwarded-host"), "shop.test:8080");
    assert_eq!(
        one(without, "forwarded"),
        "for=127.0.0.1;proto=http;host=\"shop.test:8080\""
    );
    assert_eq!(one(without, "traceparent").len(), 55);
    assert!(
        fields_named(restart, "tracestate").is_empty(),
        "{restart:?}"
    );
    assert_eq!(one(restart, "traceparent").len(), 55);
}

#[tokio::test]
async fn added_fields_on_the_wire_codec() {
    added_fields_on_the_wire("codec", false).await;
}

#[tokio::test]
async fn added_fields_on_the_wire_hyper() {
    added_fields_on_the_wire("hyper", false).await;
}

#[tokio::test]
async fn added_fields_on_the_wire_trace_routed_codec() {
    added_fields_on_the_wire("codec", true).await;
}

#[tokio::test]
async fn added_fields_on_the_wire_trace_routed_hyper() {
    added_fields_on_the_wire("hyper", true).await;
}

#[tokio::test]
async fn retry_resends_the_head_codec() {
    retry_resends_the_head("codec").await;
}

#[tokio::test]
async fn retry_resends_the_head_hyper() {
    retry_resends_the_head("hyper").await;
}
