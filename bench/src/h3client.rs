//! HTTP/3 client over QUIC (quinn + h3), usable from other crates' tests.
//!
//! ```no_run
//! # async fn demo() -> weir_bench::Result<()> {
//! use weir_bench::h3client::{self, BodyEnd};
//! let addr = "127.0.0.1:8443".parse().unwrap();
//! let conn = h3client::connect(addr, Some("localhost"), true).await?;
//! let req = http::Request::get("https://localhost/").body(bytes::Bytes::new()).unwrap();
//! let resp = conn.request(req).await?;
//! assert_eq!(resp.status, 200);
//! assert!(matches!(resp.end, BodyEnd::Clean));
//! conn.close().await;
//! # Ok(()) }
//! ```

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};

use crate::error::{Error, Result};
use crate::tls::Trust;

pub(crate) type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
pub(crate) type RawStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Builds a quinn client configuration from a rustls configuration
/// (ALPN is forced to `h3`).
pub fn quic_client_config(tls: &rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30s fits a VarInt"),
        ))
        .stream_receive_window(quinn::VarInt::from_u32(4 << 20))
        .receive_window(quinn::VarInt::from_u32(32 << 20));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Raw pieces of an established connection, for the load driver.
pub(crate) struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub sender: Sender,
    pub driver: tokio::task::JoinHandle<()>,
}

pub(crate) async fn connect_raw(
    addr: SocketAddr,
    server_name: &str,
    cfg: quinn::ClientConfig,
) -> Result<Raw> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| Error::Connect(format!("UDP bind: {e}")))?;
    endpoint.set_default_client_config(cfg);
    let conn = endpoint
        .connect(addr, server_name)
        .map_err(|e| Error::Connect(format!("{addr}: {e}")))?
        .await
        .map_err(Error::from_quic_connect)?;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(Error::from_h3_conn)?;
    let driver = tokio::spawn(async move {
        let _ = poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Raw {
        endpoint,
        conn,
        sender,
        driver,
    })
}

/// An HTTP/3 connection. Requests may be sent concurrently (`&self`).
/// Dropping it closes the connection once all its streams are dropped.
pub struct H3Conn {
    raw: Raw,
}

/// Connects to `addr` with ALPN `h3`.
///
/// `server_name` is the TLS server name; `None` (or an IP literal) sends no SNI.
/// `insecure` skips certificate verification (self-signed servers); otherwise
/// the system roots are used — see [`connect_with`] for other roots.
pub async fn connect(
    addr: SocketAddr,
    server_name: Option<&str>,
    insecure: bool,
) -> Result<H3Conn> {
    let trust = if insecure {
        Trust::Insecure
    } else {
        Trust::System
    };
    connect_with(addr, server_name, &trust).await
}

/// Like [`connect`] with an explicit trust setting (e.g. [`Trust::Roots`] with a
/// test's generated certificate).
pub async fn connect_with(
    addr: SocketAddr,
    server_name: Option<&str>,
    trust: &Trust,
) -> Result<H3Conn> {
    let tls = crate::tls::client_config(trust, &[b"h3"])?;
    let cfg = quic_client_config(&tls)?;
    let ip_name;
    let name = match server_name {
        Some(n) => n.trim_start_matches('[').trim_end_matches(']'),
        None => {
            ip_name = addr.ip().to_string();
            &ip_name
        }
    };
    Ok(H3Conn {
        raw: connect_raw(addr, name, cfg).await?,
    })
}

impl H3Conn {
    /// Opens a request stream and sends the request head. Send the body with
    /// [`H3Stream::send_data`], then call [`H3Stream::finish`] (also without body).
    pub async fn send_request(&self, req: Request<()>) -> Result<H3Stream> {
        let mut sender = self.raw.sender.clone();
        let inner = sender
            .send_request(req)
            .await
            .map_err(Error::from_h3_stream)?;
        Ok(H3Stream { inner })
    }

    /// Sends a request with a complete body and collects the response.
    ///
    /// Returns `Err` if no response head was received. A body that fails after
    /// the head (e.g. the server resets the stream midway) is returned as
    /// `Ok` with [`H3Response::end`] = [`BodyEnd::Error`] and the bytes read so far.
    pub async fn request(&self, req: Request<Bytes>) -> Result<H3Response> {
        let (parts, body) = req.into_parts();
        let mut s = self.send_request(Request::from_parts(parts, ())).await?;
        // A server may answer before reading the whole body (an early 413) and stop the request
        // stream; RFC 9114 §4.1 says the client must still read that response. So a failed send
        // is reported only if no response head follows.
        let mut sent = Ok(());
        if !body.is_empty() {
            sent = s.send_data(body).await;
        }
        if sent.is_ok() {
            sent = s.finish().await;
        }
        let head = match s.recv_response().await {
            Ok(head) => head,
            Err(e) => return Err(sent.err().unwrap_or(e)),
        };
        let (body, end) = s.collect_body().await;
        let trailers = match end {
            BodyEnd::Clean => s.recv_trailers().await.ok().flatten(),
            BodyEnd::Error(_) => None,
        };
        let (parts, ()) = head.into_parts();
        Ok(H3Response {
            status: parts.status,
            headers: parts.headers,
            body,
            trailers,
            end,
        })
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.raw.conn.remote_address()
    }

    /// The underlying QUIC connection (stats, close reason, ...).
    pub fn quic(&self) -> &quinn::Connection {
        &self.raw.conn
    }

    /// Closes the connection (H3_NO_ERROR) and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.raw.conn.close(quinn::VarInt::from_u32(0x100), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.raw.endpoint.wait_idle()).await;
        self.raw.driver.abort();
    }
}

/// How a response body ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// The server finished the stream normally.
    Clean,
    /// The body failed midway (kind [`crate::ErrorKind::Reset`] for a stream reset).
    Error(Error),
}

impl BodyEnd {
    /// `true` for [`BodyEnd::Clean`].
    pub fn is_clean(&self) -> bool {
        matches!(self, BodyEnd::Clean)
    }
}

/// A collected response.
#[derive(Debug)]
pub struct H3Response {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body bytes received (all of them if `end` is clean).
    pub body: Bytes,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
    /// Whether the body ended cleanly.
    pub end: BodyEnd,
}

/// One request stream: send the body, then read the response.
pub struct H3Stream {
    inner: RawStream,
}

impl H3Stream {
    /// Sends one chunk of the request body.
    pub async fn send_data(&mut self, data: Bytes) -> Result<()> {
        self.inner
            .send_data(data)
            .await
            .map_err(Error::from_h3_stream)
    }

    /// Ends the request (no more body).
    pub async fn finish(&mut self) -> Result<()> {
        self.inner.finish().await.map_err(Error::from_h3_stream)
    }

    /// Waits for the response head.
    pub async fn recv_response(&mut self) -> Result<Response<()>> {
        self.inner
            .recv_response()
            .await
            .map_err(Error::from_h3_stream)
    }

    /// Next body chunk; `Ok(None)` at a clean end, `Err` (kind `Reset`) if the
    /// server reset the stream.
    pub async fn recv_chunk(&mut self) -> Result<Option<Bytes>> {
        match self.inner.recv_data().await {
            Ok(Some(mut b)) => Ok(Some(b.copy_to_bytes(b.remaining()))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::from_h3_stream(e)),
        }
    }

    /// Trailers after the body (call after `recv_chunk` returned `None`).
    pub async fn recv_trailers(&mut self) -> Result<Option<HeaderMap>> {
        self.inner
            .recv_trailers()
            .await
            .map_err(Error::from_h3_stream)
    }

    /// Reads the rest of the body: the bytes and how it ended.
    pub async fn collect_body(&mut self) -> (Bytes, BodyEnd) {
        let mut buf = BytesMut::new();
        loop {
            match self.recv_chunk().await {
                Ok(Some(b)) => buf.extend_from_slice(&b),
                Ok(None) => return (buf.freeze(), BodyEnd::Clean),
                Err(e) => return (buf.freeze(), BodyEnd::Error(e)),
            }
        }
    }

    /// Asks the server to stop sending (abandons the response).
    pub fn stop_sending(&mut self, code: u64) {
        self.inner.stop_sending(h3::error::Code::from(code));
    }
}
