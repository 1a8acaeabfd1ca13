//! Traffic-shaped tests: weighted splitting, 256 MiB streams with flat memory, and hot reloads
//! while requests are flowing.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn listener(port: u16) -> Value {
    json!([{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_3_to_1() {
    let a = echo("a").await;
    let b = echo("b").await;
    let port = free_port();
    let config = json!({
        "version": "weights-1",
        "listeners": listener(port),
        "backends": {
            "a": {"endpoints": [a.to_string()]},
            "b": {"endpoints": [b.to_string()]},
        },
        "routes": [{"name": "split", "rules": [{"backendRefs": [
            {"name": "a", "weight": 3},
            {"name": "b", "weight": 1},
        ]}]}],
    });
    let _dp = Dataplane::start(&config.to_string()).await;

    const TOTAL: usize = 10_000;
    const WORKERS: usize = 8;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/split?bytes=0");
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..TOTAL / WORKERS {
                let r = send(&c, get_req(&url, &[])).await;
                assert_eq!(r.status, StatusCode::OK);
                let server = r.header("x-echo-server").unwrap_or("?").to_string();
                *counts.entry(server).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let a = counts.get("a").copied().unwrap_or(0);
    let b = counts.get("b").copied().unwrap_or(0);
    assert_eq!(a + b, TOTAL, "responses from unknown servers: {counts:?}");
    let share_a = a as f64 * 100.0 / TOTAL as f64;
    eprintln!("weighted split over {TOTAL} requests: {counts:?}");
    assert!(
        (70.0..=80.0).contains(&share_a),
        "a got {share_a:.2}% (want 75 ± 5): {counts:?}"
    );
    let share_b = b as f64 * 100.0 / TOTAL as f64;
    assert!(
        (20.0..=30.0).contains(&share_b),
        "b got {share_b:.2}% (want 25 ± 5): {counts:?}"
    );
}

const BIG: u64 = 256 << 20;
/// The echo pattern (byte i = i % 251) repeats every 251 bytes, so a chunk whose length is a
/// multiple of 251 can be sent again and again without regenerating it.
const CHUNK: usize = 251 * 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_256_mib_both_ways_with_flat_memory() {
    let echo_addr = echo("big").await;
    let port = free_port();
    let config = json!({
        "version": "stream-1",
        "listeners": listener(port),
        // The echo answers once it has the whole upload, and the request timeout runs until
        // the response head: on a loaded machine a debug build needs more than the default 30s.
        "backends": {"echo": {"endpoints": [echo_addr.to_string()], "timeouts": {"request": "10m"}}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let c = client();

    // Upload: a generated, chunked body, hashed while it is being sent.
    let chunk = Bytes::from(echo_backend::pattern_chunk(0, CHUNK));
    let sent = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let s = sent.clone();
    let stream = futures_util::stream::unfold(0u64, move |off| {
        let chunk = chunk.clone();
        let s = s.clone();
        async move {
            if off >= BIG {
                return None;
            }
            let len = (BIG - off).min(CHUNK as u64) as usize;
            let data = chunk.slice(..len);
            let mut g = s.lock().unwrap();
            g.0.update(&data);
            g.1 += len as u64;
            Some((Ok::<_, BoxError>(Frame::data(data)), off + len as u64))
        }
    });
    let req = Request::post(format!("http://127.0.0.1:{port}/upload"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    let (hasher, sent_bytes) = std::mem::take(&mut *sent.lock().unwrap());
    let want_sha = hex(&hasher.finalize());
    assert_eq!(sent_bytes, BIG);
    assert_eq!(j["bodyBytes"], BIG, "upstream saw a different length");
    assert_eq!(
        j["bodySha256"],
        want_sha.as_str(),
        "upstream saw other bytes"
    );

    // Download: the same pattern streamed back, checked byte by byte and hashed.
    let r = tokio::time::timeout(
        HANG_GUARD,
        c.request(get_req(
            &format!("http://127.0.0.1:{port}/download?bytes={BIG}"),
            &[],
        )),
    )
    .await
    .expect("hang guard")
    .expect("download request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers().get("content-length").unwrap().to_str().unwrap(),
        BIG.to_string()
    );
    let pattern = echo_backend::pattern_chunk(0, 251 + 64 * 1024);
    let mut body = r.into_body();
    let mut got = 0u64;
    let mut hasher = Sha256::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("download body error");
            let Some(data) = frame.data_ref() else {
                continue;
            };
            hasher.update(data);
            for piece in data.chunks(64 * 1024) {
                let start = (got % 251) as usize;
                assert!(
                    piece == &pattern[start..start + piece.len()],
                    "download differs from the pattern within bytes {got}..{}",
                    got + piece.len() as u64
                );
                got += piece.len() as u64;
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, read)
        .await
        .expect("hang guard");
    assert_eq!(got, BIG);
    assert_eq!(hex(&hasher.finalize()), want_sha);

    // 512 MiB went through; the proxy's peak RSS must not reflect it.
    let hwm_kib = dp.vm_hwm_kib();
    eprintln!("dataplane VmHWM after 2 x 256 MiB: {hwm_kib} KiB");
    assert!(
        hwm_kib < 100 * 1024,
        "dataplane peak RSS {} MiB: bodies are being buffered",
        hwm_kib / 1024
    );
}

/// One config version for the reload test. `extra_port` adds a second listener.
fn reload_config(
    version: &str,
    port: u16,
    extra_port: Option<u16>,
    backends: Value,
    routes: Value,
) -> String {
    let mut listeners = listener(port);
    if let Some(p) = extra_port {
        listeners.as_array_mut().unwrap().push(
            json!({"name": "extra", "address": format!("127.0.0.1:{p}"), "protocol": "http"}),
        );
    }
    json!({"version": version, "listeners": listeners, "backends": backends, "routes": routes})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_loses_nothing() {
    let ea = echo("a").await.to_string();
    let eb = echo("b").await.to_string();
    let ec = echo("c").await.to_string();
    let port = free_port();
    let extra = free_port();
    let all_to = |b: &str| json!([{"name": "main", "rules": [{"backendRefs": [{"name": b}]}]}]);

    let v1 = reload_config(
        "reload-1",
        port,
        None,
        json!({"a": {"endpoints": [ea]}}),
        all_to("a"),
    );
    // Weights change, a backend is added.
    let v2 = reload_config(
        "reload-2",
        port,
        None,
        json!({"a": {"endpoints": [ea]}, "b": {"endpoints": [eb]}}),
        json!([{"name": "main", "rules": [{"backendRefs": [
            {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}]}]),
    );
    // Routes change (a host-specific route takes over), b's connection settings change (new
    // pool), and a second listener appears.
    let v3 = reload_config(
        "reload-3",
        port,
        Some(extra),
        json!({
            "a": {"endpoints": [ea]},
            "b": {"endpoints": [eb], "timeouts": {"connect": "1s"}},
            "c": {"endpoints": [ec]},
        }),
        json!([
            {"name": "host", "hostnames": ["reload.test"], "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": "c", "weight": 1}, {"name": "b", "weight": 1}]}]},
            {"name": "main", "rules": [{"backendRefs": [{"name": "b"}]}]},
        ]),
    );
    // Backends removed, the extra listener removed, a weight of 0 takes `a` out of rotation.
    let v4 = reload_config(
        "reload-4",
        port,
        None,
        json!({"a": {"endpoints": [ea]}, "c": {"endpoints": [ec, ea]}}),
        json!([{"name": "renamed", "rules": [{"backendRefs": [
            {"name": "c", "weight": 2}, {"name": "a", "weight": 0}]}]}]),
    );
    // Written to the file and picked up by SIGHUP.
    let v5 = reload_config(
        "reload-5",
        port,
        None,
        json!({"b": {"endpoints": [eb]}}),
        all_to("b"),
    );

    let dp = Dataplane::start(&v1).await;
    assert_eq!(dp.version().await, "reload-1");

    // Workers run until the last reload is in, and at least PER_WORKER requests each, so every
    // swap lands while requests are in flight.
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 400;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let c = client();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        // Workers 0 and 1 use HTTP/1.1 keep-alive, 2 and 3 one HTTP/2 connection each.
        let c = if w < 2 { c.clone() } else { h2c_client() };
        let (done, failures) = (done.clone(), failures.clone());
        let stop = stop.clone();
        let url = format!("http://127.0.0.1:{port}/w{w}");
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < PER_WORKER || !stop.load(Ordering::Relaxed) {
                i += 1;
                // Half the workers POST a body, so reloads also meet requests mid-upload.
                let req = if w % 2 == 0 {
                    get_req(&url, &[("host", "reload.test")])
                } else {
                    Request::post(&url)
                        .header("host", "reload.test")
                        .body(full(vec![b'x'; 16 * 1024]))
                        .unwrap()
                };
                match try_send(&c, req).await {
                    Ok(r) if r.status == StatusCode::OK && r.header("x-echo-server").is_some() => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("worker {w} request {i}: {} {:?}", r.status, r.body)),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("worker {w} request {i}: {e}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Each swap happens once the clients have made some progress, so all of them land while
    // requests are in flight (progress-based, not time-based).
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let total = WORKERS * PER_WORKER;
    for (i, (cfg, version)) in [(v2, "reload-2"), (v3, "reload-3"), (v4, "reload-4")]
        .into_iter()
        .enumerate()
    {
        tokio::time::timeout(HANG_GUARD, wait_for(total * (i + 1) / 6))
            .await
            .expect("clients stalled");
        let (status, body) = dp.put_config(cfg).await;
        assert_eq!(status, StatusCode::OK, "PUT {version}: {body}");
        assert_eq!(body["version"], version);
        if version == "reload-3" {
            // The new listener serves right away.
            let r = send(&c, get_req(&format!("http://127.0.0.1:{extra}/x"), &[])).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("x-echo-server"), Some("b"));
        }
        if version == "reload-4" {
            wait_refused(format!("127.0.0.1:{extra}").parse().unwrap()).await;
        }
    }
    tokio::time::timeout(HANG_GUARD, wait_for(total * 4 / 6))
        .await
        .expect("clients stalled");
    dp.write_config(&v5);
    dp.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while dp.version().await != "reload-5" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);

    for t in tasks {
        tokio::time::timeout(HANG_GUARD, t)
            .await
            .expect("worker hung")
            .expect("worker panicked");
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let sent = done.load(Ordering::Relaxed);
    eprintln!("hot reload: {sent} requests across 3 PUTs and 1 SIGHUP");
    assert!(sent >= total);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed across reloads:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let (status, cfg) = dp.get_config(None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cfg["version"], "reload-5");
    assert_eq!(cfg["snapshot"]["routes"][0]["name"], "main");
    assert!(cfg["snapshot"]["backends"].get("c").is_none());
    // And the final config is what serves.
    for _ in 0..10 {
        let r = send(
            &c,
            get_req(
                &format!("http://127.0.0.1:{port}/after"),
                &[("host", "reload.test")],
            ),
        )
        .await;
        assert_eq!(r.header("x-echo-server"), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_warm_pools_of_unchanged_backends() {
    let ea = echo("a").await.to_string();
    let eb = echo("b").await.to_string();
    let port = free_port();
    let routes = |extra: bool| {
        let mut r = vec![json!({"name": "main", "rules": [{"backendRefs": [{"name": "a"}]}]})];
        if extra {
            r.insert(
                0,
                json!({"name": "other", "hostnames": ["other.test"],
                       "rules": [{"backendRefs": [{"name": "b"}]}]}),
            );
        }
        Value::Array(r)
    };
    let v1 = reload_config(
        "pool-1",
        port,
        None,
        json!({"a": {"endpoints": [ea]}, "b": {"endpoints": [eb]}}),
        routes(false),
    );
    // Routes and another backend change; `a` does not.
    let v2 = reload_config(
        "pool-2",
        port,
        None,
        json!({"a": {"endpoints": [ea]}, "b": {"endpoints": [eb], "timeouts": {"connect": "1s"}}}),
        routes(true),
    );
    // `a`'s connection settings change: it gets a fresh pool.
    let v3 = reload_config(
        "pool-3",
        port,
        None,
        json!({"a": {"endpoints": [ea], "timeouts": {"connect": "1s"}}, "b": {"endpoints": [eb]}}),
        routes(true),
    );
    let dp = Dataplane::start(&v1).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/pool");
    // The upstream connections (the proxy's side, as the echo backend saw them) of a few
    // sequential requests.
    let peers = |c: HttpClient, url: String| async move {
        let mut set = std::collections::HashSet::new();
        for _ in 0..5 {
            let r = send(&c, get_req(&url, &[])).await;
            assert_eq!(r.status, StatusCode::OK);
            let j = r.json();
            assert_eq!(j["server"], "a");
            set.insert(j["peer"].as_str().unwrap().to_string());
        }
        set
    };
    let before = peers(c.clone(), url.clone()).await;

    assert_eq!(dp.put_config(v2).await.0, StatusCode::OK);
    let kept = peers(c.clone(), url.clone()).await;
    assert!(
        !kept.is_disjoint(&before),
        "unchanged backend lost its pool: {before:?} then {kept:?}"
    );

    assert_eq!(dp.put_config(v3).await.0, StatusCode::OK);
    let fresh = peers(c.clone(), url.clone()).await;
    assert!(
        fresh.is_disjoint(&before) && fresh.is_disjoint(&kept),
        "changed backend reused old connections: {before:?}, {kept:?}, then {fresh:?}"
    );
}
