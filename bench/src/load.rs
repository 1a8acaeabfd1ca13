//! The load driver: N connections x M concurrent streams, for a duration or a
//! request count.
//!
//! Every worker thread runs its own single-threaded tokio runtime; the
//! connections of a thread share one [`Stats`] (no locks, no allocation per
//! request). Threads are merged at the end.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method};
use tokio::time::timeout;

use crate::error::{Error, Result};
use crate::h1client::TlsParams;
use crate::stats::{Report, RunInfo, Stats};
use crate::target::{Protocol, Target, Template};
use crate::tls::Trust;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Target URL (http:// or https://).
    pub url: String,
    /// Protocol to drive.
    pub protocol: Protocol,
    /// Number of connections.
    pub connections: usize,
    /// Concurrent streams per connection (ignored for HTTP/1.1).
    pub streams: usize,
    /// Run for this long (if set).
    pub duration: Option<Duration>,
    /// Stop after this many requests (if set). With neither set, 10 s.
    pub requests: Option<u64>,
    /// Request method.
    pub method: Method,
    /// Extra request headers.
    pub headers: HeaderMap,
    /// Request body, shared by all requests.
    pub body: Bytes,
    /// Certificate verification.
    pub trust: Trust,
    /// Connect here (`HOST:PORT`) instead of the URL's host and port.
    pub connect_to: Option<String>,
    /// Per-request timeout (send to end of body).
    pub timeout: Duration,
    /// Worker threads; 0 = min(available CPUs, connections).
    pub threads: usize,
}

impl LoadConfig {
    /// Defaults: 1 connection, 1 stream, GET, no body, system trust, 30 s timeout.
    pub fn new(url: impl Into<String>, protocol: Protocol) -> LoadConfig {
        LoadConfig {
            url: url.into(),
            protocol,
            connections: 1,
            streams: 1,
            duration: None,
            requests: None,
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trust: Trust::System,
            connect_to: None,
            timeout: Duration::from_secs(30),
            threads: 0,
        }
    }

    pub(crate) fn target(&self) -> Result<Target> {
        Target::parse(&self.url, self.connect_to.as_deref())
    }

    pub(crate) fn template(&self, target: &Target) -> Result<Template> {
        Template::new(
            target,
            self.protocol,
            self.method.clone(),
            &self.headers,
            self.body.clone(),
        )
    }
}

/// Connection material prepared once per run.
#[derive(Clone)]
pub(crate) enum Dialer {
    Tcp(Option<TlsParams>),
    Quic {
        cfg: quinn::ClientConfig,
        server_name: String,
    },
}

impl Dialer {
    pub(crate) fn new(cfg: &LoadConfig, target: &Target) -> Result<Dialer> {
        let alpn: &[&[u8]] = match cfg.protocol {
            Protocol::H1 => &[b"http/1.1"],
            Protocol::H2 => &[b"h2"],
            Protocol::H3 => &[b"h3"],
        };
        if cfg.protocol == Protocol::H3 {
            let tls = crate::tls::client_config(&cfg.trust, alpn)?;
            return Ok(Dialer::Quic {
                cfg: crate::h3client::quic_client_config(&tls)?,
                server_name: target.server_name_str(),
            });
        }
        if !target.tls {
            return Ok(Dialer::Tcp(None));
        }
        Ok(Dialer::Tcp(Some(TlsParams {
            config: crate::tls::client_config(&cfg.trust, alpn)?,
            server_name: target.server_name.clone(),
        })))
    }

    pub(crate) fn tls(&self) -> Option<&TlsParams> {
        match self {
            Dialer::Tcp(t) => t.as_ref(),
            Dialer::Quic { .. } => None,
        }
    }
}

struct Shared {
    protocol: Protocol,
    addr: SocketAddr,
    dialer: Dialer,
    template: Template,
    streams: usize,
    limit: Option<u64>,
    issued: AtomicU64,
    deadline: Option<Instant>,
    timeout: Duration,
}

impl Shared {
    /// Claims the next request; returns its start time, or `None` when done.
    #[inline]
    fn take(&self) -> Option<Instant> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        match self.limit {
            Some(n) if self.issued.fetch_add(1, Ordering::Relaxed) >= n => None,
            _ => Some(now),
        }
    }

    /// Returns a request claimed with `take` that was not sent, so another connection sends it.
    fn give_back(&self) {
        if self.limit.is_some() {
            self.issued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether more requests may be issued.
    fn more(&self) -> bool {
        let expired = matches!(self.deadline, Some(d) if Instant::now() >= d);
        let spent = matches!(self.limit, Some(n) if self.issued.load(Ordering::Relaxed) >= n);
        !expired && !spent
    }
}

type SharedStats = Rc<RefCell<Stats>>;

/// Runs the load and returns the merged report. Blocking: it spawns its own
/// threads, each with a single-threaded runtime (call it from
/// `spawn_blocking` inside async code).
pub fn run(cfg: &LoadConfig) -> Result<Report> {
    let target = cfg.target()?;
    let template = cfg.template(&target)?;
    let dialer = Dialer::new(cfg, &target)?;
    let addr = target.resolve()?;
    let connections = cfg.connections.max(1);
    let streams = if cfg.protocol == Protocol::H1 {
        1
    } else {
        cfg.streams.max(1)
    };
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(connections),
        t => t.min(connections),
    };
    let duration = match (cfg.duration, cfg.requests) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        protocol: cfg.protocol,
        addr,
        dialer,
        template,
        streams,
        limit: cfg.requests,
        issued: AtomicU64::new(0),
        deadline: duration.map(|d| start + d),
        timeout: cfg.timeout,
    });
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        // Spread connections evenly: thread t gets connections t, t+threads, ...
        let conns = (connections - t).div_ceil(threads);
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name(format!("weir-bench-{t}"))
            .spawn(move || thread_main(sh, conns))
            .map_err(|e| Error::Other(format!("spawn thread: {e}")))?;
        handles.push(h);
    }
    let mut total = Stats::new();
    for h in handles {
        let st = h
            .join()
            .map_err(|_| Error::Other("worker thread panicked".into()))??;
        total.merge(&st);
    }
    // Rate over the time requests were actually in flight (connection
    // teardown after the last response is not counted).
    let elapsed = total
        .last()
        .map_or_else(|| start.elapsed(), |l| l.saturating_duration_since(start));
    Ok(total.report(
        RunInfo {
            url: cfg.url.clone(),
            protocol: cfg.protocol.as_str(),
            connections,
            streams,
            threads,
        },
        elapsed,
    ))
}

fn thread_main(shared: Arc<Shared>, conns: usize) -> Result<Stats> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    let stats: SharedStats = Rc::new(RefCell::new(Stats::new()));
    local.block_on(&rt, async {
        let mut workers = Vec::with_capacity(conns);
        for _ in 0..conns {
            let (sh, st) = (shared.clone(), stats.clone());
            workers.push(tokio::task::spawn_local(async move {
                match sh.protocol {
                    Protocol::H1 => h1_worker(sh, st).await,
                    Protocol::H2 => h2_worker(sh, st).await,
                    Protocol::H3 => h3_worker(sh, st).await,
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
    });
    drop(local);
    drop(rt);
    let out = stats.borrow().clone();
    Ok(out)
}

/// Records a failed connection attempt; returns whether to retry.
async fn connect_failed(sh: &Shared, st: &SharedStats, e: Error, failures: &mut u32) -> bool {
    st.borrow_mut().record_error(&e);
    *failures += 1;
    // With a request budget, give up after a few consecutive failures so an
    // unreachable server does not spin forever; with a deadline, keep trying.
    if sh.deadline.is_none() && *failures >= 3 {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sh.more()
}

fn finish(
    st: &SharedStats,
    start: Instant,
    r: Result<Result<(u16, u64)>, tokio::time::error::Elapsed>,
    to: Duration,
) -> bool {
    match r {
        Ok(Ok((status, bytes))) => {
            st.borrow_mut().record(status, bytes, start);
            true
        }
        Ok(Err(e)) => {
            st.borrow_mut().record_error(&e);
            false
        }
        Err(_) => {
            st.borrow_mut().record_error(&Error::Timeout(format!(
                "no complete response within {to:?}"
            )));
            false
        }
    }
}

// ---------------------------------------------------------------- HTTP/1.1

async fn h1_worker(sh: Arc<Shared>, st: SharedStats) {
    let mut failures = 0;
    while sh.more() {
        let mut sender = match crate::h1client::connect(sh.addr, sh.dialer.tls()).await {
            Ok(s) => s,
            Err(e) => {
                if connect_failed(&sh, &st, e, &mut failures).await {
                    continue;
                }
                return;
            }
        };
        failures = 0;
        st.borrow_mut().record_connection();
        let mut reused = false;
        loop {
            if sender.ready().await.is_err() {
                break; // closed by the server: reconnect
            }
            let Some(start) = sh.take() else { return };
            let fut = async {
                let resp = match sender.send_request(sh.template.h1_request()).await {
                    Ok(r) => r,
                    Err(e) => {
                        // Canceled: never written; Reset: the connection closed before any
                        // response byte.
                        let canceled = e.is_canceled();
                        let e = Error::from_hyper(e);
                        return Err((canceled || matches!(e, Error::Reset(_)), e));
                    }
                };
                let status = resp.status().as_u16();
                let mut body = resp.into_body();
                let n = crate::h1client::drain(&mut body)
                    .await
                    .map_err(|e| (false, e))?;
                Ok((status, n))
            };
            let r = timeout(sh.timeout, fut).await;
            // A server closes an idle keep-alive connection (idle timeout, graceful shutdown)
            // whenever it likes, so a request written at that moment gets no response at all.
            // RFC 9112 §9.3.1.1 lets a client send an idempotent request again; browsers do.
            // Only that case is retried (reused connection, no response head, idempotent
            // method), on a new connection, and counted in `retried`.
            if reused && sh.template.idempotent() && matches!(&r, Ok(Err((true, _)))) {
                sh.give_back();
                st.borrow_mut().record_retry();
                break;
            }
            reused = true;
            if !finish(&st, start, r.map(|x| x.map_err(|(_, e)| e)), sh.timeout) {
                break; // the connection state is unknown after an error
            }
        }
    }
}

// ---------------------------------------------------------------- HTTP/2

async fn h2_worker(sh: Arc<Shared>, st: SharedStats) {
    let mut failures = 0;
    while sh.more() {
        let sender = match crate::h2client::connect(sh.addr, sh.dialer.tls()).await {
            Ok(s) => s,
            Err(e) => {
                if connect_failed(&sh, &st, e, &mut failures).await {
                    continue;
                }
                return;
            }
        };
        failures = 0;
        st.borrow_mut().record_connection();
        let mut tasks = Vec::with_capacity(sh.streams);
        for _ in 0..sh.streams {
            let (sh, st, sender) = (sh.clone(), st.clone(), sender.clone());
            tasks.push(tokio::task::spawn_local(h2_stream(sh, st, sender)));
        }
        drop(sender);
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn h2_stream(
    sh: Arc<Shared>,
    st: SharedStats,
    mut sender: hyper::client::conn::http2::SendRequest<crate::h1client::ReqBody>,
) {
    loop {
        if sender.ready().await.is_err() {
            return;
        }
        let Some(start) = sh.take() else { return };
        let fut = async {
            let resp = sender
                .send_request(sh.template.h2_request())
                .await
                .map_err(Error::from_hyper)?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let n = crate::h1client::drain(&mut body).await?;
            Ok((status, n))
        };
        let r = timeout(sh.timeout, fut).await;
        if !finish(&st, start, r, sh.timeout) && sender.is_closed() {
            return;
        }
    }
}

// ---------------------------------------------------------------- HTTP/3

async fn h3_worker(sh: Arc<Shared>, st: SharedStats) {
    let Dialer::Quic { cfg, server_name } = &sh.dialer else {
        return;
    };
    let mut failures = 0;
    while sh.more() {
        let raw = match crate::h3client::connect_raw(sh.addr, server_name, cfg.clone()).await {
            Ok(r) => r,
            Err(e) => {
                if connect_failed(&sh, &st, e, &mut failures).await {
                    continue;
                }
                return;
            }
        };
        failures = 0;
        st.borrow_mut().record_connection();
        let mut tasks = Vec::with_capacity(sh.streams);
        for _ in 0..sh.streams {
            let (sh, st) = (sh.clone(), st.clone());
            let (sender, conn) = (raw.sender.clone(), raw.conn.clone());
            tasks.push(tokio::task::spawn_local(h3_stream(sh, st, sender, conn)));
        }
        let crate::h3client::Raw {
            endpoint,
            conn,
            sender,
            driver,
        } = raw;
        drop(sender);
        for t in tasks {
            let _ = t.await;
        }
        conn.close(quinn::VarInt::from_u32(0x100), b"done");
        let _ = timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        driver.abort();
    }
}

async fn h3_stream(
    sh: Arc<Shared>,
    st: SharedStats,
    mut sender: crate::h3client::Sender,
    conn: quinn::Connection,
) {
    loop {
        if conn.close_reason().is_some() {
            return;
        }
        let Some(start) = sh.take() else { return };
        let mut opened = false;
        let mut answered = false;
        let fut = async {
            let mut s = sender.send_request(sh.template.h3_request()).await?;
            opened = true;
            let body = sh.template.body();
            if !body.is_empty() {
                s.send_data(body.clone()).await?;
            }
            s.finish().await?;
            let resp = s.recv_response().await?;
            answered = true;
            let mut n = 0u64;
            while let Some(b) = s.recv_data().await? {
                n += b.remaining() as u64;
            }
            Ok::<_, h3::error::StreamError>((resp.status().as_u16(), n))
        };
        let r = timeout(sh.timeout, fut).await;
        // After the server's GOAWAY the h3 client refuses to open new streams, and the server
        // resets streams above the GOAWAY id with H3_REQUEST_REJECTED: neither request was
        // processed, so it is sent on a new connection (RFC 9114 §4.1.1, §5.2) and counted in
        // `retried`, not as an error.
        let rejected = matches!(&r, Ok(Err(h3::error::StreamError::RemoteTerminate { code, .. }))
            if *code == h3::error::Code::H3_REQUEST_REJECTED);
        // A graceful close (H3_NO_ERROR) comes after the server's GOAWAY, and a server that
        // closes gracefully has answered every stream below the GOAWAY id (§5.2): a stream it
        // closed unanswered was one it never processed (opened as the GOAWAY crossed it).
        // This trusts the server's drain; Weir's own drain is covered by its lifecycle tests.
        let closed_unanswered = !answered
            && matches!(&r, Ok(Err(e @ h3::error::StreamError::ConnectionError { .. })) if e.is_h3_no_error());
        if rejected
            || closed_unanswered
            || (!opened && matches!(&r, Ok(Err(h3::error::StreamError::RemoteClosing { .. }))))
        {
            sh.give_back();
            st.borrow_mut().record_retry();
            return;
        }
        // GOAWAY or a dead connection: stop this stream; the worker reconnects.
        let fatal = matches!(
            &r,
            Ok(Err(h3::error::StreamError::RemoteClosing { .. }))
                | Ok(Err(h3::error::StreamError::ConnectionError { .. }))
        );
        finish(
            &st,
            start,
            r.map(|x| x.map_err(Error::from_h3_stream)),
            sh.timeout,
        );
        if fatal {
            return;
        }
    }
}
