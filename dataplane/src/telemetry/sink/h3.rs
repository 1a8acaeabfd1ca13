//! HTTP/3 transport of `httpJson` sinks (`transport: http3`): batches are POSTed over QUIC +
//! HTTP/3 (quinn, h3). One connection per endpoint authority is kept and reused for every
//! batch; a connection that failed or closed is replaced on the next send. Retries, backoff
//! and counters are the `httpJson` sink's (see [`crate::telemetry::sink::http_json`]).

use bytes::{Buf, Bytes};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use weir_config::Sink;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A live QUIC connection with its HTTP/3 request sender.
struct Live {
    /// Keeps the UDP socket open while the connection lives.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.conn.close(quinn::VarInt::from_u32(0x100), b"");
        self.driver.abort();
    }
}

/// An HTTP/3 client for one sink.
pub(crate) struct H3Client {
    cfg: quinn::ClientConfig,
    conns: Mutex<HashMap<String, Arc<Live>>>,
}

impl H3Client {
    /// TLS from `caFile` / system roots, or no verification with `tlsVerify: false`; ALPN h3.
    pub(crate) fn new(sink: &Sink) -> Result<H3Client, String> {
        let mut tls = if sink.tls_verify() {
            crate::http::tls::client_config(sink.ca_file.as_deref(), true)?
        } else {
            crate::http::tls::client_config_no_verify()?
        };
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| format!("quic tls: {e}"))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(30)).ok());
        cfg.transport_config(Arc::new(transport));
        Ok(H3Client {
            cfg,
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Sends `req` (an absolute `https://` URI) and returns the response status once the
    /// response body has been read. A failed send drops the connection it used.
    pub(crate) async fn request(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::StatusCode, String> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| "endpoint has no host".to_string())?;
        let live = self.connection(&authority).await?;
        let res = send(live.sender.clone(), req).await;
        if res.is_err() {
            let mut conns = self.conns.lock().await;
            if conns
                .get(&authority)
                .is_some_and(|l| l.conn.stable_id() == live.conn.stable_id())
            {
                conns.remove(&authority);
            }
        }
        res
    }

    /// The kept connection to `authority`, or a new one when there is none or it closed.
    async fn connection(&self, authority: &str) -> Result<Arc<Live>, String> {
        let mut conns = self.conns.lock().await;
        if let Some(l) = conns.get(authority) {
            if l.conn.close_reason().is_none() {
                return Ok(l.clone());
            }
        }
        conns.remove(authority);
        let live = Arc::new(self.connect(authority).await?);
        conns.insert(authority.to_string(), live.clone());
        Ok(live)
    }

    async fn connect(&self, authority: &str) -> Result<Live, String> {
        let a: http::uri::Authority = authority.parse().map_err(|e| format!("{authority}: {e}"))?;
        let host = a.host().trim_start_matches('[').trim_end_matches(']');
        let port = a.port_u16().unwrap_or(443);
        let addr: SocketAddr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {host}: no address"))?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| format!("quic: UDP bind: {e}"))?;
        endpoint.set_default_client_config(self.cfg.clone());
        let conn = endpoint
            .connect(addr, host)
            .map_err(|e| format!("quic connect {addr}: {e}"))?
            .await
            .map_err(|e| format!("quic connect {addr}: {e}"))?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| format!("h3 connect {addr}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = poll_fn(|cx| driver.poll_close(cx)).await;
        });
        tracing::debug!(%addr, "http3 sink connection established");
        Ok(Live {
            _endpoint: endpoint,
            conn,
            sender,
            driver,
        })
    }
}

async fn send(mut sender: Sender, req: http::Request<Bytes>) -> Result<http::StatusCode, String> {
    let (parts, body) = req.into_parts();
    let mut s = sender
        .send_request(http::Request::from_parts(parts, ()))
        .await
        .map_err(|e| format!("h3 request: {e}"))?;
    if !body.is_empty() {
        s.send_data(body)
            .await
            .map_err(|e| format!("h3 request body: {e}"))?;
    }
    s.finish().await.map_err(|e| format!("h3 request: {e}"))?;
    let resp = s
        .recv_response()
        .await
        .map_err(|e| format!("h3 response: {e}"))?;
    // Read the body to its end so the stream completes cleanly.
    while let Some(mut chunk) = s
        .recv_data()
        .await
        .map_err(|e| format!("h3 response body: {e}"))?
    {
        chunk.advance(chunk.remaining());
    }
    Ok(resp.status())
}
