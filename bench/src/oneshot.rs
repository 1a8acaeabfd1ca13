//! One-shot client mode (`weir-bench -n 1 -v URL`): one request, the response
//! head and body written out.

use std::io::Write;

use bytes::Buf;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::{Error, Result};
use crate::load::{Dialer, LoadConfig};
use crate::target::Protocol;

/// Sends one request as configured by `cfg` (connections, streams and counts
/// are ignored) and writes the status line, the headers, an empty line and the
/// body to `out`, streaming the body as it arrives.
///
/// Returns the status code. A failure before the end of the body (e.g. a
/// stream reset midway) is an `Err`, after whatever was already written.
pub async fn run(cfg: &LoadConfig, out: &mut (dyn Write + Send)) -> Result<u16> {
    match tokio::time::timeout(cfg.timeout, fetch(cfg, out)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(format!(
            "no complete response within {:?}",
            cfg.timeout
        ))),
    }
}

async fn fetch(cfg: &LoadConfig, out: &mut (dyn Write + Send)) -> Result<u16> {
    let target = cfg.target()?;
    let template = cfg.template(&target)?;
    let dialer = Dialer::new(cfg, &target)?;
    let addr = target.resolve_async().await?;
    match (cfg.protocol, &dialer) {
        (Protocol::H1, _) => {
            let mut s = crate::h1client::connect(addr, dialer.tls()).await?;
            let resp = s
                .send_request(template.h1_request())
                .await
                .map_err(Error::from_hyper)?;
            hyper_response(resp, "HTTP/1.1", out).await
        }
        (Protocol::H2, _) => {
            let mut s = crate::h2client::connect(addr, dialer.tls()).await?;
            let resp = s
                .send_request(template.h2_request())
                .await
                .map_err(Error::from_hyper)?;
            hyper_response(resp, "HTTP/2", out).await
        }
        (
            Protocol::H3,
            Dialer::Quic {
                cfg: qcfg,
                server_name,
            },
        ) => {
            let raw = crate::h3client::connect_raw(addr, server_name, qcfg.clone()).await?;
            let r = h3_fetch(&raw, &template, out).await;
            raw.conn.close(quinn::VarInt::from_u32(0x100), b"done");
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                raw.endpoint.wait_idle(),
            )
            .await;
            raw.driver.abort();
            r
        }
        (Protocol::H3, Dialer::Tcp(_)) => {
            Err(Error::Other("internal: h3 needs a QUIC dialer".into()))
        }
    }
}

async fn h3_fetch(
    raw: &crate::h3client::Raw,
    template: &crate::target::Template,
    out: &mut (dyn Write + Send),
) -> Result<u16> {
    let mut sender = raw.sender.clone();
    let mut s = sender
        .send_request(template.h3_request())
        .await
        .map_err(Error::from_h3_stream)?;
    if !template.body().is_empty() {
        s.send_data(template.body().clone())
            .await
            .map_err(Error::from_h3_stream)?;
    }
    s.finish().await.map_err(Error::from_h3_stream)?;
    let resp = s.recv_response().await.map_err(Error::from_h3_stream)?;
    write_head(out, "HTTP/3", resp.status(), resp.headers())?;
    loop {
        match s.recv_data().await {
            Ok(Some(mut b)) => {
                while b.has_remaining() {
                    let chunk = b.chunk();
                    out.write_all(chunk).map_err(write_err)?;
                    let n = chunk.len();
                    b.advance(n);
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = out.flush();
                return Err(Error::from_h3_stream(e));
            }
        }
    }
    out.flush().map_err(write_err)?;
    Ok(resp.status().as_u16())
}

async fn hyper_response(
    resp: http::Response<Incoming>,
    version: &str,
    out: &mut (dyn Write + Send),
) -> Result<u16> {
    let status = resp.status();
    write_head(out, version, status, resp.headers())?;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    out.write_all(d).map_err(write_err)?;
                }
            }
            Err(e) => {
                let _ = out.flush();
                return Err(Error::from_hyper(e));
            }
        }
    }
    out.flush().map_err(write_err)?;
    Ok(status.as_u16())
}

fn write_head(
    out: &mut (dyn Write + Send),
    version: &str,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<()> {
    let mut head = Vec::with_capacity(256);
    let _ = write!(
        head,
        "{version} {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    out.write_all(&head).map_err(write_err)
}

fn write_err(e: std::io::Error) -> Error {
    Error::Other(format!("write output: {e}"))
}
