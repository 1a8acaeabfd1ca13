//! HTTP/2 client connections: TLS with ALPN `h2`, or h2c with prior knowledge.

use std::net::SocketAddr;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::error::{Error, Result};
use crate::h1client::{tcp_connect, tls_connect, ReqBody, TlsParams};

/// Opens an HTTP/2 connection and spawns its driver on the current runtime.
/// With `tls`, the server must select `h2` via ALPN.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&TlsParams>,
) -> Result<http2::SendRequest<ReqBody>> {
    let tcp = tcp_connect(addr).await?;
    match tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some(t) => {
            let s = tls_connect(tcp, t).await?;
            if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(Error::Tls("server did not select h2 via ALPN".into()));
            }
            handshake(TokioIo::new(s)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<http2::SendRequest<ReqBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_reset_streams(1024)
        .handshake(io)
        .await
        .map_err(Error::from_hyper)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
