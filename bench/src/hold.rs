//! Idle HTTP/3 connections (`weir-bench hold`): open N connections from one UDP socket,
//! send one request on each, then keep them open and idle (QUIC keep-alive pings only) for
//! a while — to measure a server's memory per idle connection.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use http::Request;
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::target::Target;
use crate::tls::Trust;

/// What to hold.
#[derive(Clone, Debug)]
pub struct HoldConfig {
    /// Target URL (https://).
    pub url: String,
    /// Connect here (`HOST:PORT`) instead of the URL's host and port.
    pub connect_to: Option<String>,
    /// Certificate verification.
    pub trust: Trust,
    /// Connections to open.
    pub connections: usize,
    /// Handshakes in flight at once.
    pub parallel: usize,
    /// How long to keep them open once all are opened.
    pub hold: Duration,
    /// Limit for each connection's handshake and first request.
    pub timeout: Duration,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct HoldReport {
    /// Connections opened whose request got a 200.
    pub opened: usize,
    /// Connections that failed (handshake, request or status).
    pub failed: usize,
    /// Connections still open at the end of the hold (not closed by the server).
    pub alive_at_end: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Time to open all of them.
    pub open_time: Duration,
}

impl HoldReport {
    /// The report as one JSON object.
    pub fn to_json(&self, cfg: &HoldConfig) -> serde_json::Value {
        serde_json::json!({
            "url": cfg.url,
            "connections": cfg.connections,
            "opened": self.opened,
            "failed": self.failed,
            "alive_at_end": self.alive_at_end,
            "open_s": self.open_time.as_secs_f64(),
            "hold_s": cfg.hold.as_secs_f64(),
            "first_error": self.first_error,
        })
    }
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>;

/// One held connection: dropping the sender would let h3 close it.
struct Held {
    conn: quinn::Connection,
    _sender: Sender,
    driver: tokio::task::JoinHandle<()>,
}

fn client_config(trust: &Trust) -> Result<quinn::ClientConfig> {
    let tls = crate::tls::client_config(trust, &[b"h3"])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*tls).clone())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).expect("60s fits a VarInt"),
        ))
        .keep_alive_interval(Some(Duration::from_secs(5)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

async fn open_one(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    name: String,
    url: String,
) -> Result<Held> {
    let conn = endpoint
        .connect(addr, &name)
        .map_err(|e| Error::Connect(format!("{addr}: {e}")))?
        .await
        .map_err(Error::from_quic_connect)?;
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(Error::from_h3_conn)?;
    let driver = tokio::spawn(async move {
        let _ = poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let req = Request::get(url.as_str())
        .body(())
        .map_err(|e| Error::Input(format!("request: {e}")))?;
    let mut s = sender
        .send_request(req)
        .await
        .map_err(Error::from_h3_stream)?;
    s.finish().await.map_err(Error::from_h3_stream)?;
    let resp = s.recv_response().await.map_err(Error::from_h3_stream)?;
    while let Some(mut b) = s.recv_data().await.map_err(Error::from_h3_stream)? {
        b.advance(b.remaining());
    }
    if resp.status() != 200 {
        driver.abort();
        return Err(Error::Other(format!("status {}", resp.status())));
    }
    Ok(Held {
        conn,
        _sender: sender,
        driver,
    })
}

/// Opens the connections, calls `ready` once all are open (or failed), holds them for
/// `cfg.hold`, then closes them.
pub async fn run(cfg: &HoldConfig, ready: impl FnOnce(&HoldReport)) -> Result<HoldReport> {
    let target = Target::parse(&cfg.url, cfg.connect_to.as_deref())?;
    let addr = target.resolve_async().await?;
    let name = target.server_name_str();
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| Error::Connect(format!("UDP bind: {e}")))?;
    endpoint.set_default_client_config(client_config(&cfg.trust)?);

    let mut report = HoldReport::default();
    let mut held = Vec::with_capacity(cfg.connections);
    let mut set = JoinSet::new();
    let start = Instant::now();
    let mut launched = 0;
    let parallel = cfg.parallel.max(1);
    while launched < cfg.connections || !set.is_empty() {
        while launched < cfg.connections && set.len() < parallel {
            let f = open_one(endpoint.clone(), addr, name.clone(), cfg.url.clone());
            let to = cfg.timeout;
            set.spawn(async move {
                tokio::time::timeout(to, f)
                    .await
                    .unwrap_or_else(|_| Err(Error::Timeout(format!("not open within {to:?}"))))
            });
            launched += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(h))) => {
                held.push(h);
                report.opened += 1;
            }
            Some(Ok(Err(e))) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
            Some(Err(e)) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
            None => break,
        }
    }
    report.open_time = start.elapsed();
    ready(&report);
    tokio::time::sleep(cfg.hold).await;
    report.alive_at_end = held
        .iter()
        .filter(|h| h.conn.close_reason().is_none())
        .count();
    for h in &held {
        h.conn.close(quinn::VarInt::from_u32(0x100), b"done");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    for h in held {
        h.driver.abort();
    }
    Ok(report)
}
