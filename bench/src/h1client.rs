//! HTTP/1.1 client connections (plain TCP or TLS with ALPN `http/1.1`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// Request body type used by the HTTP/1.1 and HTTP/2 clients.
pub type ReqBody = Full<Bytes>;

/// TLS parameters for a TCP connection.
#[derive(Clone, Debug)]
pub struct TlsParams {
    /// Client configuration (its ALPN list decides what is offered).
    pub config: Arc<rustls::ClientConfig>,
    /// Server name (an IP address means no SNI).
    pub server_name: ServerName<'static>,
}

pub(crate) async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::Connect(format!("{addr}: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

pub(crate) async fn tls_connect(
    tcp: TcpStream,
    tls: &TlsParams,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| Error::Tls(crate::error::error_chain(&e)))
}

/// Opens an HTTP/1.1 connection and spawns its driver on the current runtime.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsParams>,
) -> Result<http1::SendRequest<ReqBody>> {
    let tcp = tcp_connect(addr).await?;
    match tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some(t) => handshake(TokioIo::new(tls_connect(tcp, t).await?)).await,
    }
}

async fn handshake<T>(io: T) -> Result<http1::SendRequest<ReqBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(Error::from_hyper)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a response body to its end, counting data bytes without keeping them.
/// A body cut short (reset, premature close) is an error.
pub(crate) async fn drain(body: &mut Incoming) -> Result<u64> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Error::from_hyper)?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}
