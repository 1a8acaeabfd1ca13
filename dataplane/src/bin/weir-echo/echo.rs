//! A small demo/test backend: answers every request with a JSON description of what it got.
//!
//! Query parameters steer it, so it works behind any path rewrite:
//! `status=N` (reply status), `delay_ms=N` (wait before replying), `bytes=N` (stream N bytes of
//! a fixed pattern instead of JSON; with `fail_after=M` the body breaks off with an error after M
//! bytes, with `chunk_delay_ms=D` it pauses D ms between 64 KiB chunks), `mirror=1` (stream the
//! request body back), `stats=1` (JSON counters: requests, request bodies that failed midway,
//! streamed responses dropped before their end, requests abandoned before a response — how a
//! test sees a cancel reach the backend).
//! As the Gateway API conformance echo server: `delay=D` (a duration, `1s`, `500ms`) waits
//! like `delay_ms`, and a request header `X-Echo-Set-Header: Name:value,Other:value` becomes
//! those response headers (what lets a test see a gateway's response header filters act on the
//! backend's headers). Every echoed request is logged (`weir::echo`, info: method, path and
//! query, host), how a test sees a mirrored copy arrive, as upstream reads the mirror Pod's log.
//! `GET /healthz` is a health endpoint: 200 while healthy, 503 after `set_healthy=0` (any
//! path; `set_healthy=1` heals), counted apart from `requests` (`healthChecks`,
//! `healthChecksFailed` in the stats).
//! The JSON reply carries `bodyBytes` and `bodySha256` of the request body, computed while
//! streaming, so large uploads never sit in memory.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

type EchoBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    body_errors: AtomicU64,
    responses_dropped: AtomicU64,
    requests_cancelled: AtomicU64,
    health_checks: AtomicU64,
    health_checks_failed: AtomicU64,
    unhealthy: AtomicBool,
}

struct Server {
    name: String,
    stats: Stats,
}

/// Bumps one of the server's counters when dropped before `done` is set: a request abandoned
/// before its response was made, or a streamed response dropped before its last byte.
struct UnlessDone {
    server: Arc<Server>,
    counter: fn(&Stats) -> &AtomicU64,
    done: bool,
}

impl UnlessDone {
    fn new(server: &Arc<Server>, counter: fn(&Stats) -> &AtomicU64) -> Self {
        UnlessDone {
            server: server.clone(),
            counter,
            done: false,
        }
    }
}

impl Drop for UnlessDone {
    fn drop(&mut self) {
        if !self.done {
            (self.counter)(&self.server.stats).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) {
    let name = Arc::new(Server {
        name,
        stats: Stats::default(),
    });
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = name.clone();
                async move {
                    // Counts requests whose handling was abandoned before a response was made
                    // (the client — e.g. the proxy — went away mid-request).
                    let mut guard = UnlessDone::new(&server, |s| &s.requests_cancelled);
                    let resp = handle(req, server, peer).await;
                    guard.done = true;
                    drop(guard);
                    resp
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and spawns the echo backend on the current runtime; returns the bound address.
pub async fn spawn(addr: &str, name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, name.to_string()));
    Ok(local)
}

/// The fixed pattern `bytes=N` streams: byte i is `i % 251`.
pub fn pattern_chunk(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    server: Arc<Server>,
    peer: SocketAddr,
) -> Result<Response<EchoBody>, Infallible> {
    let name = server.name.as_str();
    let q: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let status = param("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut builder = Response::builder()
        .status(status)
        .header("x-echo-server", name);
    for (k, v) in echo_set_headers(req.headers()) {
        builder = builder.header(k, v);
    }
    let st = &server.stats;
    match param("set_healthy") {
        Some("0") => st.unhealthy.store(true, Ordering::Relaxed),
        Some("1") => st.unhealthy.store(false, Ordering::Relaxed),
        _ => {}
    }
    if req.uri().path() == "/healthz" && param("set_healthy").is_none() {
        st.health_checks.fetch_add(1, Ordering::Relaxed);
        let sick = st.unhealthy.load(Ordering::Relaxed);
        if sick {
            st.health_checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let (code, text) = if sick {
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
        } else {
            (StatusCode::OK, "ok\n")
        };
        let body = Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync();
        return Ok(Response::builder()
            .status(code)
            .header("x-echo-server", name)
            .body(body)
            .unwrap_or_else(|_| Response::new(empty())));
    }
    if param("stats") == Some("1") || param("set_healthy").is_some() {
        let doc = serde_json::json!({
            "requests": st.requests.load(Ordering::Relaxed),
            "bodyErrors": st.body_errors.load(Ordering::Relaxed),
            "responsesDropped": st.responses_dropped.load(Ordering::Relaxed),
            "requestsCancelled": st.requests_cancelled.load(Ordering::Relaxed),
            "healthy": !st.unhealthy.load(Ordering::Relaxed),
            "healthChecks": st.health_checks.load(Ordering::Relaxed),
            "healthChecksFailed": st.health_checks_failed.load(Ordering::Relaxed),
        });
        let body = Full::new(Bytes::from(doc.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync();
        return Ok(builder
            .body(body)
            .unwrap_or_else(|_| Response::new(empty())));
    }
    // Counted on arrival, so a test can tell a request is in progress during its delay.
    server.stats.requests.fetch_add(1, Ordering::Relaxed);
    // In the message, not as fields: a test matches the line as text, and fields get
    // ANSI-styled names.
    tracing::info!(
        target: "weir::echo",
        "echoing {} {} for host {:?}",
        req.method(),
        req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        req.headers().get(http::header::HOST),
    );
    let delay = match param("delay_ms").and_then(|s| s.parse::<u64>().ok()) {
        Some(ms) => Some(std::time::Duration::from_millis(ms)),
        None => param("delay")
            .and_then(|d| d.parse::<weir_config::Duration>().ok())
            .map(|d| d.get()),
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }

    if param("mirror") == Some("1") {
        let body = req.into_body().map_err(|e| Box::new(e) as _).boxed_unsync();
        return Ok(builder
            .body(body)
            .unwrap_or_else(|_| Response::new(empty())));
    }
    if let Some(n) = param("bytes").and_then(|s| s.parse::<u64>().ok()) {
        let fail_after = param("fail_after").and_then(|s| s.parse::<u64>().ok());
        let pause = param("chunk_delay_ms")
            .and_then(|s| s.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        let watch = UnlessDone::new(&server, |s| &s.responses_dropped);
        let stream =
            futures_util::stream::unfold((0u64, watch), move |(off, mut watch)| async move {
                if off >= n {
                    watch.done = true;
                    drop(watch);
                    return None;
                }
                if fail_after.is_some_and(|f| off >= f) {
                    // Let what was written reach the peer first, so the break is mid-body.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    watch.done = true;
                    let err: Box<dyn std::error::Error + Send + Sync> =
                        "echo: failing the body on purpose".into();
                    return Some((Err(err), (n, watch)));
                }
                if let (Some(p), true) = (pause, off > 0) {
                    tokio::time::sleep(p).await;
                }
                let mut len = (n - off).min(64 * 1024);
                if let Some(f) = fail_after {
                    len = len.min(f - off);
                }
                let chunk = Bytes::from(pattern_chunk(off, len as usize));
                Some((Ok(Frame::data(chunk)), (off + len, watch)))
            });
        let body = BodyExt::boxed_unsync(StreamBody::new(stream));
        return Ok(builder
            .header("content-length", n)
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap_or_else(|_| Response::new(empty())));
    }

    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), serde_json::Value::String(v));
            }
        }
    }
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    hasher.update(d);
                    total += d.len() as u64;
                }
            }
            Err(_) => {
                server.stats.body_errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let doc = serde_json::json!({
        "server": name,
        "method": method,
        "uri": uri,
        "version": version,
        "peer": peer.to_string(),
        "headers": headers,
        "bodyBytes": total,
        "bodySha256": sha,
    });
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    Ok(builder
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(bytes))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| Response::new(empty())))
}

/// The response headers a request asks for in `X-Echo-Set-Header` (`Name:value`, comma
/// separated, as the Gateway API conformance echo server reads it); malformed ones are skipped.
fn echo_set_headers(headers: &http::HeaderMap) -> Vec<(http::HeaderName, http::HeaderValue)> {
    headers
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            let name = http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
            let value = http::HeaderValue::from_str(v.trim()).ok()?;
            Some((name, value))
        })
        .collect()
}

fn empty() -> EchoBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}
