//! HTTP/3 under hostile peers (issue #22), with a raw client (quinn plus hand-written frames,
//! `common::rawh3`) against the real dataplane binary: huge declared frames cost no memory,
//! malformed requests are refused like the HTTP/2 door refuses them, the QPACK encoder stream
//! is checked, and a stream-reset flood is cut off.

mod common;

use bytes::Bytes;
use common::rawh3::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// 32 MiB, the size a hostile client declared (and sent) in the issue.
const HUGE: u64 = 32 << 20;

/// A config with one https listener (TCP + UDP on `port`) routing everything to `backend`.
fn config(port: u16, backend: SocketAddr) -> String {
    format!(
        "version: h3-hostile\nlisteners:\n  - name: https\n    address: 127.0.0.1:{port}\n    protocol: https\nbackends:\n  a: {{ endpoints: [\"{backend}\"] }}\nroutes:\n  - name: r\n    rules: [{{ backendRefs: [{{ name: a }}] }}]\n"
    )
}

async fn start() -> (Dataplane, SocketAddr, SocketAddr) {
    let backend = echo("a").await;
    let port = free_port();
    let dp = Dataplane::start(&config(port, backend)).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    (dp, addr, backend)
}

async fn stats(backend: SocketAddr) -> serde_json::Value {
    common::get(&client(), &format!("http://{backend}/?stats=1"))
        .await
        .json()
}

fn get(path: &str) -> Bytes {
    headers(&request_fields("GET", path))
}

/// Writes `len` zero bytes in 64 KiB pieces; stops early (false) when the server stops the
/// stream or closes the connection.
async fn write_zeros(send: &mut quinn::SendStream, len: u64) -> bool {
    let piece = Bytes::from(vec![0u8; 64 * 1024]);
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        if send.write_all(&piece[..n]).await.is_err() {
            return false;
        }
        left -= n as u64;
    }
    true
}

/// Peak RSS (VmHWM) growth of the dataplane across `f`, in KiB.
async fn hwm_growth<F: std::future::Future<Output = ()>>(dp: &Dataplane, f: F) -> u64 {
    let before = dp.vm_hwm_kib();
    f.await;
    let after = dp.vm_hwm_kib();
    eprintln!("VmHWM {before} KiB -> {after} KiB");
    after.saturating_sub(before)
}

#[test]
fn huffman_digits_decode() {
    // "200" = 00010 00000 00000 + 1 bit of padding; "431" = 011010 011001 00001 + 7 bits.
    assert_eq!(
        huffman_digits(&[0b0001_0000, 0b0000_0001]).as_deref(),
        Some("200")
    );
    assert_eq!(
        huffman_digits(&[0b0110_1001, 0b1001_0000, 0b1111_1111]).as_deref(),
        Some("431")
    );
}

/// A 32 MiB declared HEADERS frame, a 32 MiB unknown frame on a request stream and one on the
/// control stream: each is refused or skipped as it arrives, and the dataplane's peak RSS grows
/// by less than 4 MiB for each (the issue measured +35.6, +29.9 and +22.2 MiB before). Idle,
/// the growth is ~1.5 MiB; on a loaded machine, where the dataplane falls behind the sender and
/// the stream's 1 MiB receive window fills, 2.4–2.6 MiB was measured (the bound was 2 MiB
/// until that failed one run in three under four parallel builds).
#[tokio::test]
async fn huge_declared_frames_cost_no_memory() {
    let (dp, addr, _backend) = start().await;
    let raw = RawH3::connect(addr).await;
    // Warm up with legitimate traffic, so that what is measured below is the frames' cost,
    // not one-time growth: the first bulk transfer on the connection fills quinn's 1 MiB
    // stream receive window and grows the allocator once (about 2 MiB, whatever the frames).
    for _ in 0..3 {
        assert_eq!(raw.request(&[get("/warm")]).await, Outcome::Status(200));
    }
    let upload = 8u64 << 20;
    let mut head = request_fields("POST", "/warm-upload");
    let length = upload.to_string();
    head.push(("content-length", &length));
    let (mut send, recv) = raw
        .open(&[headers(&head), frame_header(0x00, upload)], false)
        .await
        .expect("open");
    assert!(write_zeros(&mut send, upload).await, "upload stopped");
    send.finish().expect("finish");
    assert_eq!(response(recv).await, Outcome::Status(200));

    // 1. HEADERS declaring 32 MiB, then all of it sent: 431 from the frame header alone.
    let mut outcome = None;
    let headers_kib = hwm_growth(&dp, async {
        let (mut send, recv) = raw
            .open(&[frame_header(0x01, HUGE)], false)
            .await
            .expect("open");
        let sent_all = write_zeros(&mut send, HUGE).await;
        outcome = Some((response(recv).await, sent_all));
        drop(send);
    })
    .await;
    let (status, _) = outcome.expect("ran");
    assert_eq!(status, Outcome::Status(431));

    // 2. An unknown frame of 32 MiB before the request's HEADERS: skipped, request served.
    let grease_kib = hwm_growth(&dp, async {
        let (mut send, recv) = raw
            .open(&[frame_header(GREASE_FRAME, HUGE)], false)
            .await
            .expect("open");
        assert!(write_zeros(&mut send, HUGE).await, "stream stopped");
        send.write_all(&get("/after-grease"))
            .await
            .expect("HEADERS");
        send.finish().expect("finish");
        assert_eq!(response(recv).await, Outcome::Status(200));
    })
    .await;

    // 3. An unknown frame of 32 MiB on the control stream: skipped, the connection serves on.
    let mut raw = raw;
    let control_kib = hwm_growth(&dp, async {
        raw.control
            .write_all(&frame_header(GREASE_FRAME, HUGE))
            .await
            .expect("control frame header");
        assert!(write_zeros(&mut raw.control, HUGE).await, "control stopped");
        assert_eq!(raw.request(&[get("/after")]).await, Outcome::Status(200));
    })
    .await;

    eprintln!(
        "peak RSS growth: 32 MiB HEADERS {headers_kib} KiB, 32 MiB unknown request-stream frame {grease_kib} KiB, 32 MiB unknown control-stream frame {control_kib} KiB"
    );
    for (what, kib) in [
        ("HEADERS", headers_kib),
        ("unknown request-stream frame", grease_kib),
        ("unknown control-stream frame", control_kib),
    ] {
        assert!(kib < 4096, "{what}: peak RSS grew {kib} KiB");
    }
}

/// Known control-stream frames and HEADERS on the control stream have a size cap: a larger
/// declared length closes the connection with H3_EXCESSIVE_LOAD before any payload arrives.
#[tokio::test]
async fn oversized_control_frames_close_the_connection() {
    let (_dp, addr, _backend) = start().await;
    for ty in [0x07u64 /* GOAWAY */, 0x01 /* HEADERS */] {
        let mut raw = RawH3::connect(addr).await;
        assert_eq!(raw.request(&[get("/")]).await, Outcome::Status(200));
        raw.control
            .write_all(&frame_header(ty, HUGE))
            .await
            .expect("frame header");
        assert_eq!(raw.closed().await, Some(H3_EXCESSIVE_LOAD), "type {ty:#x}");
    }
}

/// The QPACK encoder stream may not exceed the dynamic table capacity the server announced
/// (none, so 0): QPACK_ENCODER_STREAM_ERROR. Setting the capacity to 0 is fine.
#[tokio::test]
async fn qpack_encoder_stream_beyond_capacity_is_an_error() {
    let (_dp, addr, _backend) = start().await;
    let cases: [(&[u8], Option<u64>); 3] = [
        // Set Dynamic Table Capacity 0: allowed, the connection serves on.
        (&[0x20], None),
        // Set Dynamic Table Capacity 4096 (5-bit prefix: 31 + 4065).
        (&[0x3f, 0xe1, 0x1f], Some(QPACK_ENCODER_STREAM_ERROR)),
        // Insert With Literal Name "a: b" into a table of capacity 0.
        (&[0x41, b'a', 0x01, b'b'], Some(QPACK_ENCODER_STREAM_ERROR)),
    ];
    for (instructions, expect) in cases {
        let raw = RawH3::connect(addr).await;
        let mut enc = raw.conn.open_uni().await.expect("encoder stream");
        enc.write_all(&[0x02]).await.expect("stream type");
        enc.write_all(instructions).await.expect("instructions");
        match expect {
            Some(code) => assert_eq!(raw.closed().await, Some(code), "{instructions:x?}"),
            None => assert_eq!(raw.request(&[get("/")]).await, Outcome::Status(200)),
        }
    }
}

/// Every malformed case RFC 9114 names is refused (stream error H3_MESSAGE_ERROR) without
/// reaching the backend, and the connection keeps serving other streams.
#[tokio::test]
async fn malformed_requests_are_refused() {
    let (_dp, addr, backend) = start().await;
    let raw = RawH3::connect(addr).await;
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut f = request_fields("GET", "/");
        f.extend_from_slice(extra);
        headers(&f)
    };
    let cases: Vec<(&str, Bytes)> = vec![
        ("connection", with(&[("connection", "close")])),
        ("keep-alive", with(&[("keep-alive", "timeout=5")])),
        (
            "proxy-connection",
            with(&[("proxy-connection", "keep-alive")]),
        ),
        ("upgrade", with(&[("upgrade", "websocket")])),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
        ),
        ("te: gzip", with(&[("te", "gzip")])),
        (
            "duplicated :path",
            headers(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "x.test"),
                (":path", "/a"),
                (":path", "/b"),
            ]),
        ),
        (
            "duplicated :method",
            headers(&[
                (":method", "GET"),
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "x.test"),
                (":path", "/"),
            ]),
        ),
        (
            "pseudo-header after a regular field",
            headers(&[
                (":method", "GET"),
                (":scheme", "https"),
                ("user-agent", "x"),
                (":authority", "x.test"),
                (":path", "/"),
            ]),
        ),
        (
            ":protocol without CONNECT",
            with(&[(":protocol", "websocket")]),
        ),
        (
            "missing :path",
            headers(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "x.test"),
            ]),
        ),
        (
            "empty :path",
            headers(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "x.test"),
                (":path", ""),
            ]),
        ),
        ("invalid content-length", with(&[("content-length", "12a")])),
        (
            "conflicting content-length",
            with(&[("content-length", "1"), ("content-length", "2")]),
        ),
    ];
    for (what, head) in &cases {
        let outcome = raw.request(std::slice::from_ref(head)).await;
        assert!(
            matches!(
                outcome,
                Outcome::Reset(H3_MESSAGE_ERROR) | Outcome::Status(400)
            ),
            "{what}: {outcome:?}"
        );
    }
    // Valid requests on the same connection are still served, `te: trailers` included.
    assert_eq!(raw.request(&[get("/ok")]).await, Outcome::Status(200));
    assert_eq!(
        raw.request(&[with(&[("te", "trailers")])]).await,
        Outcome::Status(200)
    );
    let doc = stats(backend).await;
    assert_eq!(
        doc["requests"], 2,
        "only the valid requests reached the backend: {doc}"
    );
}

/// Waits until the backend has settled every request it saw: each ended in a response or in
/// a failed body. Returns (requests, failed bodies).
async fn settled(backend: SocketAddr, complete: u64) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let doc = stats(backend).await;
        let (req, err) = (
            doc["requests"].as_u64().expect("requests"),
            doc["bodyErrors"].as_u64().expect("bodyErrors"),
        );
        if req == complete + err {
            return (req, err);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend saw {req} requests, {err} failed bodies, expected {complete} complete: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A body that disagrees with its content-length is a stream error (H3_MESSAGE_ERROR) found
/// while it streams; the upstream request is aborted, so the backend never gets it complete.
#[tokio::test]
async fn content_length_mismatch_never_reaches_the_backend_complete() {
    let (_dp, addr, backend) = start().await;
    let raw = RawH3::connect(addr).await;
    let post = |len: &'static str| {
        let mut f = request_fields("POST", "/upload");
        f.push(("content-length", len));
        headers(&f)
    };
    // Shorter, longer, and a zero length with DATA.
    for (what, req) in [
        ("short", vec![post("10"), data(b"hello")]),
        ("long", vec![post("5"), data(b"hello world")]),
        (
            "long, two frames",
            vec![post("5"), data(b"hel"), data(b"lo!!")],
        ),
        ("zero", vec![post("0"), data(b"x")]),
    ] {
        let outcome = raw.request(&req).await;
        assert_eq!(outcome, Outcome::Reset(H3_MESSAGE_ERROR), "{what}");
    }
    settled(backend, 0).await;

    // The DATA that completes the length is held until the stream is seen to end there:
    // the backend has the request but not its last byte while the client sends more.
    let before = stats(backend).await["requests"].as_u64().expect("requests");
    let (mut send, recv) = raw
        .open(&[post("5"), data(b"hello")], false)
        .await
        .expect("open");
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while stats(backend).await["requests"].as_u64() == Some(before) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send.write_all(&data(b" world")).await.expect("more DATA");
    send.finish().expect("finish");
    assert_eq!(response(recv).await, Outcome::Reset(H3_MESSAGE_ERROR));
    settled(backend, 0).await;

    // A matching body still goes through whole, in one DATA frame or in several.
    assert_eq!(
        raw.request(&[post("5"), data(b"hello")]).await,
        Outcome::Status(200)
    );
    assert_eq!(
        raw.request(&[post("11"), data(b"hello"), data(b" world")])
            .await,
        Outcome::Status(200)
    );
    settled(backend, 2).await;
}

/// Opens up to `streams` request streams, each cancelled by `cancel` right after its request
/// was sent; returns how many were opened before the server closed the connection, and the
/// close code.
async fn flood(
    addr: SocketAddr,
    streams: u32,
    cancel: fn(&mut quinn::SendStream, &mut quinn::RecvStream),
) -> (u32, Option<u64>) {
    let raw = RawH3::connect(addr).await;
    let req = get("/flood");
    let mut opened = 0;
    // Kept: quinn stops a receive stream that is dropped unfinished (STOP_SENDING code 0),
    // which would make every variant a STOP_SENDING flood.
    let mut keep = Vec::new();
    for _ in 0..streams {
        match raw.open(std::slice::from_ref(&req), true).await {
            Ok((mut send, mut recv)) => {
                opened += 1;
                cancel(&mut send, &mut recv);
                keep.push((send, recv));
            }
            Err(_) => break,
        }
    }
    (opened, raw.closed().await)
}

/// A rapid-reset flood (5,000 requests, each reset and/or stopped right after it was sent) is
/// answered with H3_EXCESSIVE_LOAD; few of the requests reach the backend. A client that
/// cancels some requests among many completed ones is not cut off.
#[tokio::test]
async fn rapid_reset_flood_is_cut_off() {
    let (_dp, addr, backend) = start().await;
    let code = quinn::VarInt::from_u32(H3_REQUEST_CANCELLED);
    let mut seen = 0;
    let mut figures = Vec::new();
    for (what, cancel) in [
        (
            "RESET_STREAM + STOP_SENDING",
            (|s, r| {
                let _ = s.reset(quinn::VarInt::from_u32(H3_REQUEST_CANCELLED));
                let _ = r.stop(quinn::VarInt::from_u32(H3_REQUEST_CANCELLED));
            }) as fn(&mut quinn::SendStream, &mut quinn::RecvStream),
        ),
        ("STOP_SENDING", |_, r| {
            let _ = r.stop(quinn::VarInt::from_u32(H3_REQUEST_CANCELLED));
        }),
        ("RESET_STREAM", |s, _| {
            let _ = s.reset(quinn::VarInt::from_u32(H3_REQUEST_CANCELLED));
        }),
    ] {
        let (opened, close) = flood(addr, 5000, cancel).await;
        assert_eq!(close, Some(H3_EXCESSIVE_LOAD), "{what}");
        // The backend's count settles once the cancelled upstream requests are gone.
        let (requests, _) = settled_requests(backend, seen).await;
        let reached = requests - seen;
        seen = requests;
        figures.push(format!(
            "{what}: {opened} streams opened, {reached} reached the backend"
        ));
        assert!(opened < 5000, "{what}: never cut off");
        // At most the threshold's worth plus what was already in flight (256 streams).
        assert!(
            reached <= weir_dataplane::h3::RESET_FLOOD_MIN_STREAMS + 256,
            "{what}: {reached} reached the backend"
        );
    }
    eprintln!("rapid reset: {}", figures.join("; "));

    // 300 completed requests and 120 cancelled ones: under half cancelled, not a flood.
    let raw = RawH3::connect(addr).await;
    for _ in 0..300 {
        assert_eq!(raw.request(&[get("/fine")]).await, Outcome::Status(200));
    }
    for _ in 0..120 {
        let (mut send, mut recv) = raw.open(&[get("/cancel")], true).await.expect("open");
        let _ = send.reset(code);
        let _ = recv.stop(code);
    }
    assert_eq!(raw.request(&[get("/still")]).await, Outcome::Status(200));
    assert!(raw.conn.close_reason().is_none());

    // 300 requests whose client reads only the response head and drops the stream (quinn then
    // sends STOP_SENDING): every stream "stopped", but each after its complete response.
    let raw = RawH3::connect(addr).await;
    for _ in 0..300 {
        let (_send, mut recv) = raw.open(&[get("/head-only")], true).await.expect("open");
        assert_eq!(response_head(&mut recv).await, Outcome::Status(200));
    }
    assert_eq!(raw.request(&[get("/still")]).await, Outcome::Status(200));
    assert!(raw.conn.close_reason().is_none());
}

/// The backend's request count once it stops changing between two reads 100 ms apart
/// (upstream requests cancelled by the flood close settle asynchronously).
async fn settled_requests(backend: SocketAddr, at_least: u64) -> (u64, u64) {
    let mut last = u64::MAX;
    loop {
        let doc = stats(backend).await;
        let now = doc["requests"].as_u64().expect("requests");
        if now == last && now >= at_least {
            return (now, doc["bodyErrors"].as_u64().unwrap_or(0));
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A paced reset flood: each request reaches the backend (which holds it for a minute)
/// before the client resets it. The connection is closed with H3_EXCESSIVE_LOAD after about
/// `weir_dataplane::h3::RESET_FLOOD_MIN_STREAMS` (100) of them, and the close cancels every upstream request still
/// waiting (none runs to its end).
#[tokio::test]
async fn paced_reset_flood_cancels_the_upstream_requests() {
    let (_dp, addr, backend) = start().await;
    let raw = RawH3::connect(addr).await;
    let req = get("/?delay_ms=60000");
    let code = quinn::VarInt::from_u32(H3_REQUEST_CANCELLED);
    let mut opened = 0u32;
    let mut keep = Vec::new();
    for _ in 0..1000 {
        let Ok((mut send, mut recv)) = raw.open(std::slice::from_ref(&req), true).await else {
            break;
        };
        opened += 1;
        // Let the request get going before cancelling it (pacing only; nothing is asserted
        // about time).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = send.reset(code);
        let _ = recv.stop(code);
        keep.push((send, recv));
    }
    assert_eq!(raw.closed().await, Some(H3_EXCESSIVE_LOAD));
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    let (reached, cancelled) = loop {
        let doc = stats(backend).await;
        let (reached, cancelled) = (
            doc["requests"].as_u64().expect("requests"),
            doc["requestsCancelled"]
                .as_u64()
                .expect("requestsCancelled"),
        );
        if reached == cancelled {
            break (reached, cancelled);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream requests not cancelled: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("paced reset flood: {opened} streams opened, {reached} reached the backend, {cancelled} cancelled there");
    assert!(opened < 1000, "never cut off");
    assert!(
        reached <= weir_dataplane::h3::RESET_FLOOD_MIN_STREAMS + 256,
        "{reached} reached the backend"
    );
}

/// Trailers whose HEADERS frame declares more than the field-section limit fail the request
/// (the upstream request is aborted before its body is complete, the stream reset with
/// H3_EXCESSIVE_LOAD) without being buffered; the connection keeps serving.
#[tokio::test]
async fn oversized_trailers_fail_the_request() {
    let (_dp, addr, backend) = start().await;
    let raw = RawH3::connect(addr).await;
    let head = headers(&request_fields("POST", "/trailers"));
    let (mut send, recv) = raw
        .open(&[head, data(b"x"), frame_header(0x01, HUGE)], false)
        .await
        .expect("open");
    let sent_all = write_zeros(&mut send, HUGE).await;
    let outcome = response(recv).await;
    assert!(!sent_all, "the dataplane read all of the trailers");
    assert_eq!(outcome, Outcome::Reset(H3_EXCESSIVE_LOAD));
    settled(backend, 0).await;
    assert_eq!(raw.request(&[get("/after")]).await, Outcome::Status(200));
}
