//! A small demo/test backend: answers every request with a JSON description of what it got.
//!
//! Query parameters steer it, so it works behind any path rewrite:
//! `status=N` (reply status), `delay_ms=N` (wait before replying), `bytes=N` (stream N bytes of
//! a fixed pattern instead of JSON), `mirror=1` (stream the request body back).
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
use std::sync::Arc;
use tokio::net::TcpListener;

type EchoBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Serves the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, name.clone(), peer));
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
    name: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<EchoBody>, Infallible> {
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
    if let Some(ms) = param("delay_ms").and_then(|s| s.parse::<u64>().ok()) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let builder = Response::builder()
        .status(status)
        .header("x-echo-server", name.as_ref());

    if param("mirror") == Some("1") {
        let body = req.into_body().map_err(|e| Box::new(e) as _).boxed_unsync();
        return Ok(builder
            .body(body)
            .unwrap_or_else(|_| Response::new(empty())));
    }
    if let Some(n) = param("bytes").and_then(|s| s.parse::<u64>().ok()) {
        let stream = futures_util::stream::unfold(0u64, move |off| async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(64 * 1024) as usize;
            let chunk = Bytes::from(pattern_chunk(off, len));
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk)),
                off + len as u64,
            ))
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
            Err(_) => break,
        }
    }
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let doc = serde_json::json!({
        "server": name.as_ref(),
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

fn empty() -> EchoBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}
