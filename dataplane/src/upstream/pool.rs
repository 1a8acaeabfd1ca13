//! Weir's HTTP/1.1 upstream connection pool: one [`Pool`] per endpoint, built directly on
//! `hyper::client::conn::http1` (a [`SendRequest`] per connection, its connection task spawned
//! on the runtime). It replaces hyper-util's legacy client for HTTP/1.1 upstreams; h2c
//! upstreams keep the legacy client (see `upstream.rs`).
//!
//! - **Checkout** pops the most recently used idle sender that is ready (LIFO: warm
//!   connections stay warm, the oldest expire), dropping closed ones; with none ready but one
//!   still finishing its exchange (hyper's connection task not yet idle, or a request body
//!   still being sent after an early answer) it waits for that one while connecting, and takes
//!   whichever comes first; with none at all it connects (connect timeout, `TCP_NODELAY`, TCP
//!   keep-alive).
//! - **Checkin**: HTTP/1.1 carries one exchange at a time, so a sender goes back only after its
//!   response body was read to the end ([`Checkin::release`], called by the response body
//!   wrapper); a failed exchange, an upgrade or a body dropped early never comes back.
//! - A request that met a reused connection the peer had already closed, before any of it was
//!   written (hyper hands the request back), is sent once more on a new connection: the
//!   keep-alive race every proxy has to absorb.
//! - Idle connections older than the idle timeout are dropped at checkout and by a reaper task
//!   that runs only while the pool holds idle connections.
//! - `maxIdlePerEndpoint` bounds what stays *after* a burst, not during one: connections beyond
//!   it are closed (the least recently used first) only once they have sat unused for
//!   [`EXCESS_IDLE_GRACE`]. Closing them the moment the idle list reached the bound churned: with
//!   more exchanges in flight than the bound (h2load -c16 -m10 = 160 streams against the default
//!   128), every exchange finishing in a lull closed its connection and the next wave opened a
//!   new one — 29,288 upstream connections in a 10 s run. HAProxy does the same
//!   (`pool-purge-delay`: idle connections above the low mark go gradually, one purge delay
//!   apart); Envoy keeps idle connections until their idle timeout.
//!
//! - Requests without a body (most of a proxy's traffic) go through Weir's own HTTP/1.1 codec
//!   (`h1.rs`) instead of hyper's client, unless `--upstream-h1 hyper`: the exchange's task
//!   writes the head and parses the response itself, and the response body hands the
//!   connection back. Codec connections have their own idle list (a hyper connection cannot
//!   be taken back from its task); `maxIdlePerEndpoint` and the idle timeout count both lists
//!   together. An idle codec connection is checked at checkout (closed by the peer, or bytes
//!   nobody asked for: dropped), and a request that met the keep-alive race on a reused one
//!   (written into a connection the peer had closed, nothing came back) is sent once more on a
//!   new connection when its method is idempotent or the write itself failed.
//!
//! The pool's mutex is held only to push or pop (and, for codec connections, the idle check: a
//! non-blocking `try_read`, no syscall unless the socket turned readable); nothing awaits
//! under it.

use crate::http::body::ProxyBody;
use crate::http::headers::Added;
use crate::upstream::endpoint::CountedIo;
use crate::upstream::h1::{self, CodecBody, Conn, ExchangeError, UpstreamBody};
use http::uri::Authority;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// TCP keep-alive probe time on upstream connections (as the legacy connector had).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How long a connection beyond `maxIdlePerEndpoint` may sit unused before it is closed. A load
/// whose concurrency swings within a second (request waves, client reconnects) finds its
/// connections again; a one-off spike's surplus goes a second later.
pub const EXCESS_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Whether requests without a body go through the codec (`--upstream-h1`, set once at start).
static CODEC: AtomicBool = AtomicBool::new(true);

/// Chooses the HTTP/1.1 client for requests without a body: Weir's codec (`true`, the
/// default) or hyper's.
pub fn use_codec(on: bool) {
    CODEC.store(on, Ordering::Relaxed);
}

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {authority}")]
    Connect {
        authority: Authority,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {authority} took longer than {timeout:?}")]
    ConnectTimeout {
        authority: Authority,
        timeout: Duration,
    },
    #[error("HTTP/1.1 handshake with {authority} failed")]
    Handshake {
        authority: Authority,
        #[source]
        source: hyper::Error,
    },
    #[error("no connection pool for this endpoint")]
    NoPool,
    #[error("request to {authority} failed")]
    Request {
        authority: Authority,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {authority} failed")]
    Exchange {
        authority: Authority,
        #[source]
        source: ExchangeError,
    },
    #[error("no response from {authority} before the try's deadline")]
    TimedOut { authority: Authority },
}

impl PoolError {
    /// No connection could be made (the request was not sent).
    pub fn is_connect(&self) -> bool {
        !matches!(
            self,
            PoolError::Request { .. } | PoolError::Exchange { .. } | PoolError::TimedOut { .. }
        )
    }

    /// The try's deadline passed first.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PoolError::TimedOut { .. })
    }
}

/// Settings of a pool, from the backend's `timeouts.connect` and `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// Idle connections beyond `max_idle` are closed once unused this long
    /// ([`EXCESS_IDLE_GRACE`]; zero closes them at once).
    pub excess_idle_grace: Duration,
}

/// What checkout found.
enum Found {
    /// Ready for a request now.
    Ready(SendRequest<ProxyBody>),
    /// Open, but its connection has not yet turned idle.
    Busy(SendRequest<ProxyBody>),
}

struct Idle {
    tx: SendRequest<ProxyBody>,
    since: Instant,
}

struct RawIdle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Oldest first; checkout takes from the back.
    idle: VecDeque<Idle>,
    /// Idle codec connections, oldest first.
    raw: VecDeque<RawIdle>,
    /// A reaper task is running for this pool.
    reaper: bool,
}

/// The HTTP/1.1 connections of one endpoint.
pub struct Pool {
    authority: Authority,
    /// `Host` for requests that come without one.
    host: HeaderValue,
    settings: PoolSettings,
    state: Mutex<State>,
    created: AtomicU64,
    /// Requests sent again on a new connection after a reused one was found closed.
    resent: AtomicU64,
    open: Arc<AtomicU64>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("settings", &self.settings)
            .field("created", &self.created())
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// A sender whose exchange is under way: give it back with [`Checkin::release`] once the
/// response body has ended cleanly; dropping it closes the connection instead.
pub struct Checkin {
    pool: Arc<Pool>,
    tx: SendRequest<ProxyBody>,
    /// The response allows another request on this connection (no `Connection: close`, and
    /// HTTP/1.1 or an HTTP/1.0 keep-alive).
    reusable: bool,
}

impl Checkin {
    /// Returns the connection to its pool (when it can carry another request); one whose
    /// response announced its close is let go instead.
    pub fn release(self) {
        let Checkin { pool, tx, reusable } = self;
        if reusable {
            pool.checkin(tx);
        }
    }
}

/// An owned request from the head `parts` that later tries may need again: a copy of the
/// head, or (`last`: no try follows) the head itself.
pub(crate) fn owned_request(
    parts: &mut http::request::Parts,
    uri: http::Uri,
    body: ProxyBody,
    last: bool,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = if last {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    req
}

/// Whether a response from hyper's client leaves its connection reusable. With both
/// `Transfer-Encoding` and `Content-Length`, hyper decodes the chunked body but leaves the
/// `Content-Length` in the response, which would then frame the forwarded body wrongly (a
/// client read `hel` of a chunked `hello` announced as 3 bytes): the `Content-Length` goes and
/// the connection is not reused (RFC 9112 §6.3), as the codec does (`h1.rs`).
fn hyper_reusable(resp: &mut Response<Incoming>) -> bool {
    let h = resp.headers_mut();
    if h.contains_key(header::TRANSFER_ENCODING) && h.remove(header::CONTENT_LENGTH).is_some() {
        return false;
    }
    keeps_alive(resp.version(), resp.headers())
}

/// Whether the upstream keeps the connection open after this response (RFC 9112 §9.3).
pub(crate) fn keeps_alive(version: http::Version, headers: &http::HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for v in headers.get_all(header::CONNECTION) {
        for token in v.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    !close && (version != http::Version::HTTP_10 || keep_alive)
}

impl Pool {
    pub fn new(authority: Authority, settings: PoolSettings) -> Arc<Pool> {
        // As an http URI would give it: the default port left out.
        let host = match authority.port_u16() {
            Some(80) => HeaderValue::from_str(authority.host()),
            _ => HeaderValue::from_str(authority.as_str()),
        }
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Arc::new(Pool {
            authority,
            host,
            settings,
            state: Mutex::default(),
            created: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            open: Arc::default(),
        })
    }

    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// Connections opened so far.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// Requests sent again after a pooled connection turned out closed.
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Connections open now (idle or carrying a request or an upgraded stream).
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        let state = self.lock();
        state.idle.len() + state.raw.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` (origin-form URI) on a pooled or new connection. The response comes with
    /// the [`Checkin`] to release when its body has ended.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<(Response<UpstreamBody>, Option<Checkin>), PoolError> {
        let (mut parts, body) = req.into_parts();
        self.send_parts(&mut parts, &Added::new(), body, true, None)
            .await
    }

    /// Sends the request of head `parts` (origin-form URI) and `body`, getting its response
    /// head by `deadline` when there is one ([`PoolError::TimedOut`]). The codec borrows the
    /// head, so a retry can send it again without a copy; hyper's client takes a copy of it,
    /// or (`last`: no try follows) the head itself. A request without `Host` gets this
    /// endpoint's (the head itself is left as it is: a retry may go to another endpoint).
    /// `added`: the fields the proxy adds; the codec writes them after the head's own,
    /// hyper's client gets them merged into its copy of the map.
    pub async fn send_parts(
        self: &Arc<Self>,
        parts: &mut http::request::Parts,
        added: &Added,
        body: ProxyBody,
        last: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(Response<UpstreamBody>, Option<Checkin>), PoolError> {
        let (codec, has_host) = h1::uses_codec(parts, &body);
        if codec && CODEC.load(Ordering::Relaxed) {
            let host = (!has_host).then_some(&self.host);
            return self
                .send_codec(parts, added, host, deadline)
                .await
                .map(|r| (r, None));
        }
        let uri = parts.uri.clone();
        let mut req = owned_request(parts, uri, body, last);
        // hyper's client writes a map: the added fields go into it as they used to.
        added.merge_into(req.headers_mut());
        if !has_host {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let (resp, checkin) = match deadline {
            None => self.send_hyper(req).await?,
            Some(d) => tokio::time::timeout_at(d, self.send_hyper(req))
                .await
                .map_err(|_| self.timed_out())??,
        };
        Ok((resp.map(UpstreamBody::Hyper), Some(checkin)))
    }

    fn timed_out(&self) -> PoolError {
        PoolError::TimedOut {
            authority: self.authority.clone(),
        }
    }

    /// A new connection for the codec, within `deadline` too.
    async fn connect_raw(&self, deadline: Option<tokio::time::Instant>) -> Result<Conn, PoolError> {
        let io = match deadline {
            None => self.tcp_connect().await?,
            Some(d) => tokio::time::timeout_at(d, self.tcp_connect())
                .await
                .map_err(|_| self.timed_out())??,
        };
        Ok(Conn::new(io))
    }

    /// A request without a body through the codec, on an idle codec connection or a new one.
    /// `added`: the fields the proxy adds; `host`: the `Host` field to add.
    async fn send_codec(
        self: &Arc<Self>,
        req: &http::request::Parts,
        added: &Added,
        host: Option<&HeaderValue>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response<UpstreamBody>, PoolError> {
        let (mut conn, reused) = match self.checkout_raw() {
            Some(c) => (c, true),
            None => (self.connect_raw(deadline).await?, false),
        };
        let head = match conn.exchange(req, added, host, deadline).await {
            Ok(head) => head,
            // The keep-alive race: the peer closed the idle connection as the request went
            // out. Sent again when that cannot repeat an action: nothing was written, or the
            // method is idempotent.
            Err(e)
                if reused
                    && e.nothing_received()
                    && (matches!(e, ExchangeError::Write(_))
                        || crate::upstream::retry::is_idempotent(&req.method)) =>
            {
                tracing::debug!(upstream = %self.authority, error = %e, "pooled connection was closed; retrying on a new connection");
                self.resent.fetch_add(1, Ordering::Relaxed);
                conn = self.connect_raw(deadline).await?;
                conn.exchange(req, added, host, deadline)
                    .await
                    .map_err(|e| self.exchange_error(e))?
            }
            Err(e) => return Err(self.exchange_error(e)),
        };
        let body = CodecBody::new(conn, &head, self.clone());
        Ok(Response::from_parts(head.parts, UpstreamBody::Codec(body)))
    }

    fn exchange_error(&self, source: ExchangeError) -> PoolError {
        if let ExchangeError::TimedOut = source {
            return self.timed_out();
        }
        PoolError::Exchange {
            authority: self.authority.clone(),
            source,
        }
    }

    /// The most recently used idle codec connection that is still usable (expired, closed
    /// ones and ones with unsolicited bytes are dropped, outside the lock).
    fn checkout_raw(&self) -> Option<Conn> {
        let mut dead = Vec::new();
        // Idle since before this instant: expired. One clock read and a subtraction, compared
        // with each entry's stamp (`since.elapsed()` per entry was ~90 instructions a
        // request, callgrind; `None`: the process is younger than the timeout).
        let expired = Instant::now().checked_sub(self.settings.idle_timeout);
        let found = {
            let mut state = self.lock();
            loop {
                let Some(mut e) = state.raw.pop_back() else {
                    break None;
                };
                if expired.is_some_and(|t| e.since < t) {
                    // This one and every older one have expired.
                    dead.push(e.conn);
                    dead.extend(state.raw.drain(..).map(|e| e.conn));
                    break None;
                }
                if e.conn.is_usable() {
                    break Some(e.conn);
                }
                dead.push(e.conn);
            }
        };
        drop(dead);
        found
    }

    /// Puts a codec connection whose exchange ended cleanly back.
    fn checkin_raw(self: &Arc<Self>, conn: Conn) {
        let since = Instant::now();
        self.park(|s| &mut s.raw, |e| e.since, RawIdle { conn, since });
    }

    /// A request through hyper's client (request bodies, upgrades, CONNECT, HTTP/1.0, or all
    /// with `--upstream-h1 hyper`).
    async fn send_hyper(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Checkin), PoolError> {
        let (mut tx, reused) = match self.checkout() {
            Some(Found::Ready(tx)) => (tx, true),
            Some(Found::Busy(tx)) => self.ready_or_connect(tx).await?,
            None => (self.connect().await?, false),
        };
        let req = match tx.try_send_request(req).await {
            Ok(mut resp) => {
                let checkin = self.checkin_for(tx, hyper_reusable(&mut resp));
                return Ok((resp, checkin));
            }
            Err(mut e) => match e.take_message() {
                // The connection was found closed before the request was written: a reused
                // connection the peer closed while it sat idle. Once more, on a new one.
                Some(req) if reused => {
                    tracing::debug!(upstream = %self.authority, error = %e.error(), "pooled connection was closed; retrying on a new connection");
                    req
                }
                _ => {
                    return Err(PoolError::Request {
                        authority: self.authority.clone(),
                        source: e.into_error(),
                    })
                }
            },
        };
        drop(tx);
        self.resent.fetch_add(1, Ordering::Relaxed);
        let mut tx = self.connect().await?;
        match tx.send_request(req).await {
            Ok(mut resp) => {
                let checkin = self.checkin_for(tx, hyper_reusable(&mut resp));
                Ok((resp, checkin))
            }
            Err(source) => Err(PoolError::Request {
                authority: self.authority.clone(),
                source,
            }),
        }
    }

    fn checkin_for(self: &Arc<Self>, tx: SendRequest<ProxyBody>, reusable: bool) -> Checkin {
        Checkin {
            pool: self.clone(),
            tx,
            reusable,
        }
    }

    /// The most recently used idle sender that can take a request now, else the most recent
    /// one still finishing its last exchange (hyper's connection task had not yet turned idle
    /// when the body ended, or a request body is still being sent). Closed and expired ones are
    /// dropped (outside the lock).
    fn checkout(&self) -> Option<Found> {
        let mut state = self.lock();
        // The usual case: the most recent one is ready.
        let back = state.idle.back()?;
        if back.tx.is_ready() && back.since.elapsed() <= self.settings.idle_timeout {
            return state.idle.pop_back().map(|e| Found::Ready(e.tx));
        }
        let mut dead = Vec::new();
        let mut busy = None;
        let mut i = state.idle.len();
        let found = loop {
            if i == 0 {
                break busy
                    .and_then(|b| state.idle.remove(b))
                    .map(|e| Found::Busy(e.tx));
            }
            i -= 1;
            let e = &state.idle[i];
            if e.since.elapsed() > self.settings.idle_timeout {
                // This one and every older one have expired.
                dead.extend(state.idle.drain(..=i));
                break busy
                    .and_then(|b| state.idle.remove(b - (i + 1)))
                    .map(|e| Found::Busy(e.tx));
            }
            if e.tx.is_ready() {
                break state.idle.remove(i).map(|e| Found::Ready(e.tx));
            }
            if e.tx.is_closed() {
                dead.extend(state.idle.remove(i));
                busy = busy.map(|b: usize| b - 1);
            } else if busy.is_none() {
                busy = Some(i);
            }
        };
        drop(state);
        drop(dead);
        found
    }

    /// Waits for a pooled connection that is finishing its last exchange, or connects, whichever
    /// comes first (the one not used stays in the pool).
    async fn ready_or_connect(
        self: &Arc<Self>,
        mut busy: SendRequest<ProxyBody>,
    ) -> Result<(SendRequest<ProxyBody>, bool), PoolError> {
        let connect = self.connect();
        tokio::pin!(connect);
        let connected = tokio::select! {
            biased;
            ready = busy.ready() => match ready {
                Ok(()) => return Ok((busy, true)),
                // Closed: a new connection it is.
                Err(_) => None,
            },
            c = &mut connect => Some(c),
        };
        match connected {
            Some(c) => {
                self.checkin(busy);
                c.map(|tx| (tx, false))
            }
            None => connect.await.map(|tx| (tx, false)),
        }
    }

    /// Puts a sender whose exchange ended back. It is normally ready for the next request at
    /// once (hyper has read the whole response by then); if not, checkout waits for it or
    /// connects, whichever is first.
    fn checkin(self: &Arc<Self>, tx: SendRequest<ProxyBody>) {
        if tx.is_closed() {
            return;
        }
        let since = Instant::now();
        self.park(|s| &mut s.idle, |e| e.since, Idle { tx, since });
    }

    /// Puts an idle connection on its list (hyper's or the codec's). `maxIdlePerEndpoint`
    /// counts both lists: over it, only the list's oldest connection that went unused for the
    /// grace period goes now; the rest of the surplus is the reaper's, once it has been unused
    /// that long.
    fn park<T>(
        self: &Arc<Self>,
        list: fn(&mut State) -> &mut VecDeque<T>,
        since: fn(&T) -> Instant,
        entry: T,
    ) {
        if self.settings.max_idle == 0 || self.settings.idle_timeout.is_zero() {
            return;
        }
        let mut state = self.lock();
        let full = state.idle.len() + state.raw.len() >= self.settings.max_idle;
        let grace = self.settings.excess_idle_grace;
        let l = list(&mut state);
        let evicted = if full && l.front().is_some_and(|e| since(e).elapsed() >= grace) {
            l.pop_front()
        } else {
            None
        };
        l.push_back(entry);
        if !state.reaper {
            state.reaper = spawn(reap(Arc::downgrade(self), self.settings));
        }
        drop(state);
        drop(evicted);
    }

    /// Drops expired idle connections and the surplus over `max_idle` that has gone unused for
    /// the grace period (least recently used first); `false` when none is left (the reaper then
    /// stops).
    fn purge(&self) -> bool {
        let mut state = self.lock();
        let timeout = self.settings.idle_timeout;
        let keep_from = state
            .idle
            .iter()
            .position(|e| e.since.elapsed() <= timeout)
            .unwrap_or(state.idle.len());
        let mut dead: Vec<Idle> = state.idle.drain(..keep_from).collect();
        let mut i = 0;
        while i < state.idle.len() {
            if state.idle[i].tx.is_closed() {
                if let Some(e) = state.idle.remove(i) {
                    dead.push(e);
                }
            } else {
                i += 1;
            }
        }
        let keep_from = state
            .raw
            .iter()
            .position(|e| e.since.elapsed() <= timeout)
            .unwrap_or(state.raw.len());
        let mut dead_raw: Vec<RawIdle> = state.raw.drain(..keep_from).collect();
        let mut i = 0;
        while i < state.raw.len() {
            if state.raw[i].conn.is_usable() {
                i += 1;
            } else if let Some(e) = state.raw.remove(i) {
                dead_raw.push(e);
            }
        }
        // Over the bound, the least recently used of either list goes once unused that long.
        let grace = self.settings.excess_idle_grace;
        while state.idle.len() + state.raw.len() > self.settings.max_idle {
            let hyper_first = match (state.idle.front(), state.raw.front()) {
                (Some(h), Some(r)) => h.since <= r.since,
                (h, _) => h.is_some(),
            };
            let since = if hyper_first {
                state.idle.front().map(|e| e.since)
            } else {
                state.raw.front().map(|e| e.since)
            };
            if since.is_none_or(|s| s.elapsed() < grace) {
                break;
            }
            if hyper_first {
                dead.extend(state.idle.pop_front());
            } else {
                dead_raw.extend(state.raw.pop_front());
            }
        }
        let any = !state.idle.is_empty() || !state.raw.is_empty();
        if !any {
            state.reaper = false;
        }
        drop(state);
        drop(dead);
        drop(dead_raw);
        any
    }

    /// A new connection: TCP connect within the connect timeout, then the HTTP/1.1 connection
    /// task spawned on the runtime (with upgrades, for WebSockets).
    async fn connect(&self) -> Result<SendRequest<ProxyBody>, PoolError> {
        let io = self.tcp_connect().await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|source| PoolError::Handshake {
                authority: self.authority.clone(),
                source,
            })?;
        let authority = self.authority.clone();
        spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// A new TCP connection within the connect timeout, `TCP_NODELAY` and TCP keep-alive on,
    /// counted.
    async fn tcp_connect(&self) -> Result<CountedIo, PoolError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| PoolError::ConnectTimeout {
            authority: self.authority.clone(),
            timeout,
        })?
        .map_err(|source| PoolError::Connect {
            authority: self.authority.clone(),
            source,
        })?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(upstream = %self.authority, error = %e, "cannot set TCP_NODELAY");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(upstream = %self.authority, error = %e, "cannot set TCP keep-alive");
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(CountedIo::new(stream, self.open.clone()))
    }
}

impl h1::Release for Pool {
    fn release(self: Arc<Self>, conn: Conn) {
        self.checkin_raw(conn);
    }
}

/// Spawns on the current runtime; `false` outside one (at shutdown: the future is dropped).
fn spawn<F>(fut: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(fut);
            true
        }
        Err(_) => false,
    }
}

/// Drops expired idle connections, and the surplus over the bound once it has gone unused for
/// the grace period, every half idle timeout or grace period (whichever is shorter) while the
/// pool holds any.
async fn reap(pool: Weak<Pool>, settings: PoolSettings) {
    let every = (settings.idle_timeout / 2)
        .min(settings.excess_idle_grace)
        .max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.purge() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle: 8,
            excess_idle_grace: EXCESS_IDLE_GRACE,
        }
    }

    fn get() -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .body(crate::http::body::empty())
            .unwrap()
    }

    /// Reads one request head (up to the blank line) from a blocking socket.
    fn read_head(s: &mut std::net::TcpStream) -> bool {
        let mut seen = Vec::new();
        let mut b = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => seen.push(b[0]),
                _ => return false,
            }
        }
        true
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    async fn exchange(pool: &Arc<Pool>) -> Checkin {
        let (resp, checkin) = pool.send_hyper(get()).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_is_ok(resp).await;
        checkin
    }

    /// Reads the response body to its end; the test backends answer `ok`.
    async fn body_is_ok(resp: Response<Incoming>) {
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        assert_eq!(&body.to_bytes()[..], b"ok");
    }

    /// Lets the connection tasks run until the pool holds `n` idle connections.
    async fn settle(pool: &Pool, n: usize) {
        for _ in 0..1000 {
            if pool.idle() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle(), n);
    }

    /// A backend that answers one request on its first connection, closes it when told
    /// (`close`) and says so (`closed`), then answers every request on its next connection;
    /// it ends with how many that were.
    fn backend_closing_its_first_connection() -> (
        std::net::SocketAddr,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
        std::thread::JoinHandle<usize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let backend = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            assert!(read_head(&mut s));
            s.write_all(OK).unwrap();
            close_rx.recv().unwrap();
            drop(s);
            closed_tx.send(()).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut served = 0;
            while read_head(&mut s) {
                s.write_all(OK).unwrap();
                served += 1;
            }
            served
        });
        (addr, close_tx, closed_rx, backend)
    }

    /// The keep-alive race, made deterministic: the backend closes an idle keep-alive
    /// connection while the pooled sender still looks ready (on a one-thread runtime blocked
    /// meanwhile, its connection task has not seen the close). With `event_interval(1)` the
    /// runtime polls for IO events between the request task and the connection task, so the
    /// connection task finds the close before writing: hyper hands the request back and the
    /// pool sends it on a new connection instead of failing.
    #[test]
    fn request_on_a_connection_closed_while_idle_goes_out_on_a_new_one() {
        let (addr, close_tx, closed_rx, backend) = backend_closing_its_first_connection();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .event_interval(1)
            .build()
            .unwrap();
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let p = pool.clone();
        rt.block_on(async move {
            tokio::spawn(async move {
                exchange(&p).await.release();
                settle(&p, 1).await;
                // Blocks the runtime's only thread until the backend has closed.
                close_tx.send(()).unwrap();
                closed_rx.recv().unwrap();
                let c = exchange(&p).await;
                assert_eq!(p.resent(), 1, "handed back by hyper and sent again");
                assert_eq!(p.created(), 2);
                c.release();
                settle(&p, 1).await;
                exchange(&p).await.release();
                assert_eq!(p.created(), 2);
            })
            .await
            .unwrap();
        });
        drop(rt);
        drop(pool);
        assert_eq!(backend.join().unwrap(), 2);
    }

    /// The codec's keep-alive race: a reused connection the backend closes after reading the
    /// next request head, without answering. A GET goes out once more on a new connection
    /// (`resent`); a bodiless POST is not repeated (the backend may have acted on it) and fails.
    #[tokio::test(flavor = "current_thread")]
    async fn codec_resends_idempotent_requests_that_met_a_closing_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                std::thread::spawn(move || {
                    // One answer, then the next request is read and the connection closed.
                    if read_head(&mut s) && s.write_all(OK).is_ok() {
                        read_head(&mut s);
                    }
                });
            }
        });
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let codec_get = || async {
            let (resp, checkin) = pool.send(get()).await.unwrap();
            assert!(checkin.is_none(), "the codec carries a bodiless GET");
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            assert_eq!(&body.to_bytes()[..], b"ok");
        };
        codec_get().await;
        assert_eq!(pool.idle(), 1);
        codec_get().await;
        assert_eq!((pool.created(), pool.resent()), (2, 1));
        assert_eq!(pool.idle(), 1);
        let post = Request::post("/").body(crate::http::body::empty()).unwrap();
        let Err(err) = pool.send(post).await else {
            panic!("a POST that may have been acted on was sent again");
        };
        assert!(
            matches!(
                err,
                PoolError::Exchange {
                    source: ExchangeError::ClosedBeforeResponse,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!((pool.created(), pool.resent()), (2, 1));
    }

    /// A codec try's deadline, kept on the connection's own timer: the first exchange, due
    /// in 5 s, is answered; the second on the same connection, due in 100 ms (an earlier
    /// deadline than the timer holds) and never answered, ends with `TimedOut` (no hang, not
    /// a connect error); a third, on a new connection with a later deadline again, is
    /// answered.
    #[tokio::test(flavor = "current_thread")]
    async fn codec_tries_end_at_their_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept() {
                // Each connection answers its first request only; later ones are read and
                // left unanswered (the connection stays open).
                if read_head(&mut s) {
                    let _ = s.write_all(OK);
                }
                held.push(s);
            }
        });
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let send = |due: Duration| {
            let pool = pool.clone();
            async move {
                let (mut head, body) = get().into_parts();
                let until = tokio::time::Instant::now() + due;
                pool.send_parts(&mut head, &Added::new(), body, true, Some(until))
                    .await
            }
        };
        let body_ok = |resp: Response<UpstreamBody>| async {
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            assert_eq!(&body.to_bytes()[..], b"ok");
        };
        let (resp, _) = send(Duration::from_secs(5)).await.unwrap();
        body_ok(resp).await;
        assert_eq!(pool.idle(), 1);
        let Err(err) = send(Duration::from_millis(100)).await else {
            panic!("an unanswered request got a response");
        };
        assert!(err.is_timeout() && !err.is_connect(), "{err:?}");
        assert_eq!((pool.created(), pool.idle()), (1, 0));
        let (resp, _) = send(Duration::from_secs(10)).await.unwrap();
        body_ok(resp).await;
        assert_eq!(pool.created(), 2);
    }

    /// The connection's timer is armed for the first exchange's deadline and not moved for a
    /// later one: a second exchange on the same connection, due in 20 s, whose answer comes
    /// only after the first exchange's deadline (200 ms) has passed, still gets its answer
    /// (the timer fires at the old deadline and is moved on, not taken as this one's).
    #[tokio::test(flavor = "current_thread")]
    async fn codec_timer_armed_for_an_earlier_deadline_does_not_end_a_later_try() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            if read_head(&mut s) && s.write_all(OK).is_ok() && read_head(&mut s) {
                // Sent after the first answer, so answered after its deadline.
                std::thread::sleep(Duration::from_millis(400));
                let _ = s.write_all(OK);
            }
            let _ = read_head(&mut s);
        });
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let first = tokio::time::Instant::now() + Duration::from_millis(200);
        for until in [first, tokio::time::Instant::now() + Duration::from_secs(20)] {
            let (mut head, body) = get().into_parts();
            let (resp, _) = pool
                .send_parts(&mut head, &Added::new(), body, true, Some(until))
                .await
                .expect("answered before its deadline");
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap();
            assert_eq!(&body.to_bytes()[..], b"ok");
        }
        assert!(tokio::time::Instant::now() > first);
        assert_eq!(pool.created(), 1, "both on one connection");
    }

    /// A codec connection idle for longer than `idleTimeout` is not taken at checkout, even
    /// before the reaper has closed it (the runtime is blocked meanwhile, so it cannot run);
    /// one idle for less is.
    #[tokio::test(flavor = "current_thread")]
    async fn codec_connection_idle_past_its_timeout_is_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                std::thread::spawn(
                    move || {
                        while read_head(&mut s) && s.write_all(OK).is_ok() {}
                    },
                );
            }
        });
        let pool = Pool::new(
            addr.to_string().parse().unwrap(),
            PoolSettings {
                idle_timeout: Duration::from_secs(1),
                ..settings()
            },
        );
        let fetch = || {
            let pool = pool.clone();
            async move {
                let (resp, _) = pool.send(get()).await.unwrap();
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
            }
        };
        fetch().await;
        fetch().await;
        assert_eq!((pool.created(), pool.idle()), (1, 1), "reused while fresh");
        std::thread::sleep(Duration::from_millis(1500));
        fetch().await;
        assert_eq!((pool.created(), pool.idle()), (2, 1), "expired, not reused");
    }

    /// A codec connection the backend closed while it was idle is not used: the check at
    /// checkout (`Conn::is_usable`) costs no syscall while the socket has not turned readable
    /// since its last read, and the backend's FIN turns it readable (tokio keeps the closed
    /// readiness), so the request goes out on a new connection at once, not written into the
    /// closed one and then resent (`resent` stays 0).
    #[tokio::test(flavor = "current_thread")]
    async fn codec_connection_the_backend_closed_while_idle_is_not_used() {
        let (addr, close_tx, closed_rx, backend) = backend_closing_its_first_connection();
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let fetch = || {
            let pool = pool.clone();
            async move {
                let req = Request::get("/").body(crate::http::body::empty()).unwrap();
                let (resp, _) = pool.send(req).await.unwrap();
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                body.unwrap().to_bytes()
            }
        };
        assert_eq!(&fetch().await[..], b"ok");
        assert_eq!((pool.created(), pool.idle()), (1, 1));
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        // One turn of the runtime's I/O driver, which takes in the FIN's readiness.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(&fetch().await[..], b"ok");
        assert_eq!((pool.created(), pool.resent()), (2, 0));
        assert_eq!(&fetch().await[..], b"ok");
        assert_eq!((pool.created(), pool.idle()), (2, 1));
        drop(pool);
        assert_eq!(backend.join().unwrap(), 2);
    }

    /// Codec connections: reused LIFO, not reused after `Connection: close`, after a body
    /// longer than its `Content-Length` (the extra bytes are no next answer) or a body dropped
    /// before its end.
    #[tokio::test(flavor = "current_thread")]
    async fn codec_connections_are_reused_only_after_a_clean_end() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut b = [0u8; 1];
                    while s.read(&mut b).is_ok_and(|n| n == 1) {
                        seen.push(b[0]);
                        if !seen.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        let head = String::from_utf8_lossy(&seen).into_owned();
                        seen.clear();
                        let answer: &[u8] = if head.starts_with("GET /close ") {
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                        } else if head.starts_with("GET /long ") {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
                        } else if head.starts_with("GET /big ") {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nabc"
                        } else {
                            OK
                        };
                        if s.write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let fetch = |path: &'static str| {
            let pool = pool.clone();
            async move {
                let req = Request::get(path).body(crate::http::body::empty()).unwrap();
                let (resp, _) = pool.send(req).await.unwrap();
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map(|b| b.to_bytes())
            }
        };
        for _ in 0..3 {
            assert_eq!(&fetch("/").await.unwrap()[..], b"ok");
        }
        assert_eq!((pool.created(), pool.idle()), (1, 1));
        assert_eq!(&fetch("/close").await.unwrap()[..], b"ok");
        assert_eq!((pool.created(), pool.idle()), (1, 0));
        assert_eq!(&fetch("/long").await.unwrap()[..], b"ok");
        assert_eq!(
            (pool.created(), pool.idle()),
            (2, 0),
            "the extra bytes closed it"
        );
        assert_eq!(&fetch("/").await.unwrap()[..], b"ok");
        assert_eq!((pool.created(), pool.idle()), (3, 1));
        // Dropped after the head: the rest of the body is still coming, not reusable.
        let req = Request::get("/big")
            .body(crate::http::body::empty())
            .unwrap();
        let (resp, _) = pool.send(req).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "100000");
        drop(resp);
        assert_eq!((pool.created(), pool.idle()), (3, 0));
        assert_eq!(&fetch("/").await.unwrap()[..], b"ok");
        assert_eq!((pool.created(), pool.idle()), (4, 1));
    }

    /// A keep-alive backend answering `ok` to every request, one thread per connection.
    fn ok_backend() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                std::thread::spawn(move || {
                    while read_head(&mut s) {
                        if s.write_all(OK).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// LIFO reuse, a bound on idle connections, and expiry.
    #[tokio::test(flavor = "current_thread")]
    async fn reuse_bound_and_expiry() {
        let addr = ok_backend();
        let pool = Pool::new(
            addr.to_string().parse().unwrap(),
            PoolSettings {
                max_idle: 2,
                // The bound at once; the grace period is the next test's.
                excess_idle_grace: Duration::ZERO,
                ..settings()
            },
        );
        // Three exchanges at once: three connections.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(exchange(&pool).await);
        }
        assert_eq!(pool.created(), 3);
        for c in held {
            c.release();
        }
        settle(&pool, 2).await;
        // Sequential requests reuse one.
        for _ in 0..5 {
            exchange(&pool).await.release();
            settle(&pool, 2).await;
        }
        assert_eq!(pool.created(), 3);
        // A sender dropped instead of released is not reused.
        drop(exchange(&pool).await);
        settle(&pool, 1).await;
        assert_eq!(pool.created(), 3);

        // Expired idle connections are not handed out.
        let short = Pool::new(
            addr.to_string().parse().unwrap(),
            PoolSettings {
                idle_timeout: Duration::from_millis(1),
                ..settings()
            },
        );
        exchange(&short).await.release();
        settle(&short, 1).await;
        std::thread::sleep(Duration::from_millis(5));
        let _held = exchange(&short).await;
        assert_eq!(short.created(), 2, "an expired connection is not reused");
        assert_eq!(short.idle(), 0);
        assert_eq!(short.resent(), 0);
    }

    /// Which responses let their connection carry another request (RFC 9112 §9.3).
    /// More exchanges in flight than `max_idle`, wave after wave: the surplus connections are
    /// kept while the waves keep needing them (before, each wave closed all but `max_idle` of
    /// them and the next opened new ones: 8 + 19 × 6 = 122 connections here), and closed once
    /// they have gone unused for the grace period.
    #[tokio::test(flavor = "current_thread")]
    async fn waves_above_the_bound_reuse_their_connections() {
        let addr = ok_backend();
        let pool = Pool::new(
            addr.to_string().parse().unwrap(),
            PoolSettings {
                max_idle: 2,
                // Long enough that a wave on a loaded machine never outlasts it.
                excess_idle_grace: Duration::from_secs(2),
                ..settings()
            },
        );
        for _ in 0..20 {
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(exchange(&pool).await);
            }
            for c in held {
                c.release();
            }
            settle(&pool, 8).await;
        }
        assert_eq!(pool.created(), 8, "eight connections carry every wave");
        for _ in 0..1000 {
            if pool.idle() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            pool.idle(),
            2,
            "the unused surplus is closed after the grace period"
        );
        exchange(&pool).await.release();
        assert_eq!(pool.created(), 8);
    }

    #[test]
    fn keep_alive_from_the_response() {
        use http::Version;
        let cases: &[(Version, &[&str], bool)] = &[
            (Version::HTTP_11, &[], true),
            (Version::HTTP_11, &["close"], false),
            (Version::HTTP_11, &["Keep-Alive, CLOSE"], false),
            (Version::HTTP_11, &["upgrade", " close "], false),
            (Version::HTTP_11, &["keep-alive"], true),
            (Version::HTTP_10, &[], false),
            (Version::HTTP_10, &["keep-alive"], true),
            (Version::HTTP_10, &["Keep-Alive"], true),
            (Version::HTTP_10, &["keep-alive, close"], false),
        ];
        for (version, values, want) in cases {
            let mut headers = http::HeaderMap::new();
            for v in *values {
                headers.append(header::CONNECTION, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(
                keeps_alive(*version, &headers),
                *want,
                "{version:?} {values:?}"
            );
        }
    }

    /// A request body as a channel: the request stays unfinished until the sender is dropped.
    struct ChanBody(tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>);

    impl http_body::Body for ChanBody {
        type Data = bytes::Bytes;
        type Error = crate::http::body::BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    /// A connection given back while its request body is still being sent (the backend
    /// answered early) is not ready; the next request waits for it in a race with a new
    /// connection, and takes it once it is free instead of keeping the new one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_finishing_its_exchange_is_waited_for() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served: Arc<Mutex<Vec<u64>>> = Arc::default();
        let s2 = served.clone();
        // Chunked request bodies the backend has read to their end.
        let bodies = Arc::new(AtomicU64::new(0));
        let b2 = bodies.clone();
        std::thread::spawn(move || {
            while let Ok((mut s, _)) = listener.accept() {
                let served = s2.clone();
                let bodies = b2.clone();
                let idx = {
                    let mut v = served.lock().unwrap();
                    v.push(0);
                    v.len() - 1
                };
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while s.read(&mut b).is_ok_and(|n| n == 1) {
                        head.push(b[0]);
                        if !head.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        let chunked = String::from_utf8_lossy(&head)
                            .to_ascii_lowercase()
                            .contains("transfer-encoding: chunked");
                        // Counted before answering, so the client never sees an answer
                        // that is not counted yet.
                        served.lock().unwrap()[idx] += 1;
                        // Answer at once, before a chunked body has arrived.
                        if s.write_all(OK).is_err() {
                            return;
                        }
                        head.clear();
                        if chunked {
                            while !head.ends_with(b"0\r\n\r\n") {
                                match s.read(&mut b) {
                                    Ok(1) => head.push(b[0]),
                                    _ => return,
                                }
                            }
                            bodies.fetch_add(1, Ordering::SeqCst);
                            head.clear();
                        }
                    }
                });
            }
        });
        let pool = Pool::new(addr.to_string().parse().unwrap(), settings());
        let (body_tx, body_rx) = tokio::sync::mpsc::unbounded_channel();
        body_tx.send(bytes::Bytes::from_static(b"hello")).unwrap();
        let req = Request::post("/")
            .body(crate::http::body::boxed(ChanBody(body_rx)))
            .unwrap();
        let (resp, checkin) = pool.send_hyper(req).await.unwrap();
        body_is_ok(resp).await;
        checkin.release();
        assert_eq!(pool.idle(), 1, "kept, though still sending");

        let mut next = Box::pin(pool.send_hyper(get()));
        std::future::poll_fn(|cx| {
            assert!(next.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        // The first request's body ends: its connection turns idle. Let its connection task
        // send the last chunk (the backend has read it) before the waiting request is polled
        // again, so the outcome does not hang on whether the new connection's connect has
        // completed by then: the wait prefers the finishing connection once it is ready.
        drop(body_tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        while bodies.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the first request body never ended"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let (resp, checkin) = next.await.unwrap();
        body_is_ok(resp).await;
        checkin.release();
        assert_eq!(pool.created(), 1, "the finishing connection was taken");
        assert_eq!(served.lock().unwrap()[0], 2);
    }
}
