//! Upstream side: per backend, its endpoints with their health and connections (for HTTP/1.1
//! a [`Pool`] per endpoint, see `pool.rs`; for h2c a pooled hyper-util client), a balancer,
//! and the resilience layers every request passes through in [`BackendRt::dispatch`]:
//! concurrency limit → retry loop { circuit breaker → balancer → try (per-try timeout) →
//! outlier detection } with a retry budget and backoff.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::headers::Added;
use crate::http::reply::{error_response, ErrorKind};
use crate::telemetry::metrics::{BackendMetrics, Metrics};
use crate::upstream::balancer::Balancer;
use crate::upstream::breaker::{Breaker, BreakerView, Mode};
pub use crate::upstream::endpoint::{CountedIo, EndpointRt};
use crate::upstream::h1::UpstreamBody;
use crate::upstream::health::{clock_ms, EndpointState, InFlight, Outcome};
use crate::upstream::pool::{Checkin, Pool, PoolError, PoolSettings};
use crate::upstream::retry::{backoff, is_idempotent, Budget, Replay};
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_config::{Backend, UpstreamProtocol};

pub type HttpClient = Client<CountingConnector, ProxyBody>;

/// Connections per endpoint (`host:port`), shared by a client and the backends using it.
pub type ConnCounts = Arc<Mutex<HashMap<String, ConnStats>>>;

/// Connections of one endpoint: opened so far, and open now.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub created: u64,
    open: Arc<AtomicU64>,
}

/// `HttpConnector` that counts the connections it opens per endpoint, so `GET /backends` can
/// show pool reuse (requests vs connections), and wraps each in a [`CountedIo`] that keeps the
/// endpoint's open-connection count.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    counts: ConnCounts,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<CountedIo, BoxError>> + Send>>;

impl tower_service::Service<Uri> for CountingConnector {
    type Response = CountedIo;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> ConnectFuture {
        let key = dst.authority().map(|a| a.to_string()).unwrap_or_default();
        let counts = self.counts.clone();
        let fut = self.inner.call(dst);
        Box::pin(async move {
            let io = fut.await.map_err(BoxError::from)?;
            let open = match counts.lock() {
                Ok(mut c) => {
                    let e = c.entry(key).or_default();
                    e.created += 1;
                    e.open.clone()
                }
                Err(_) => Arc::default(),
            };
            open.fetch_add(1, Ordering::Relaxed);
            Ok(CountedIo::new_counted(io, open))
        })
    }
}

/// A backend as the proxy uses it.
pub struct BackendRt {
    pub name: String,
    pub config: Backend,
    conns: Conns,
    pub endpoints: Vec<EndpointRt>,
    balancer: Balancer,
    breaker: Option<Arc<Breaker>>,
    limiter: Option<Arc<Semaphore>>,
    budget: Arc<Budget>,
    credential: Option<(HeaderName, HeaderValue)>,
    eject_lock: Mutex<()>,
    metrics: BackendMetrics,
}

impl std::fmt::Debug for BackendRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `config` is safe to show: Credential's Debug redacts its value.
        f.debug_struct("BackendRt")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// A backend's upstream connections.
enum Conns {
    /// HTTP/1.1: one pool per endpoint, in the order of `endpoints`.
    H1(Vec<Arc<Pool>>),
    /// h2c: hyper-util's legacy client (one multiplexed connection per endpoint) and its
    /// connection counts.
    Legacy {
        client: Box<HttpClient>,
        counts: ConnCounts,
    },
}

/// How sending a request upstream failed.
#[derive(Debug)]
enum SendError {
    Pool(PoolError),
    Legacy(hyper_util::client::legacy::Error),
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            SendError::Pool(e) => e.is_connect(),
            SendError::Legacy(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Pool(e) => e.fmt(f),
            SendError::Legacy(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Pool(e) => std::error::Error::source(e),
            SendError::Legacy(e) => std::error::Error::source(e),
        }
    }
}

/// What [`BackendRt::dispatch`] produced.
pub struct Dispatched {
    /// `Ok`: the upstream's response; `Err`: an error reply made by the proxy.
    pub response: Result<Response<ProxyBody>, Response<ProxyBody>>,
    /// The endpoint of the last try: the endpoint's own `Authority`, shared (a reference
    /// count), where a `String` of it was a `malloc` and a copy per try; the access log makes
    /// its text only when it writes an event.
    pub upstream: Option<Authority>,
    pub attempts: u32,
}

impl Dispatched {
    /// The proxy's own reply, after `attempts` tries (the last on `upstream`).
    #[inline(always)]
    fn local(r: Response<ProxyBody>, upstream: Option<Authority>, attempts: u32) -> Dispatched {
        Dispatched {
            response: Err(r),
            upstream,
            attempts,
        }
    }
}

/// What decides a request's retries (the head every try sends is in [`Payload`]).
struct Head {
    /// The upstream path and query.
    pq: PathAndQuery,
    /// Whether the method is idempotent (retried after more kinds of failure).
    idempotent: bool,
    /// The end of the request timeout, retries included.
    deadline: Instant,
}

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Connect,
    Reset,
    /// Per-try timeout (the request timeout still has time left).
    TryTimeout,
    Status(u16),
}

/// The result of the latest try, kept while deciding whether to retry.
// One per request, on the dispatch's stack and moved once into the reply; boxing the upstream
// response (the codec's connection is inline in its body) would cost a `malloc` per request.
#[allow(clippy::large_enum_variant)]
enum Last {
    Upstream(Response<UpstreamBody>, InFlight, Option<Checkin>),
    Local(Response<ProxyBody>),
}

/// What one try's send returned: the response (with the pooled connection to give back), the
/// send's error, or the try's time limit elapsed.
type TryResult = Result<Result<(Response<UpstreamBody>, Option<Checkin>), SendError>, TimedOut>;

/// A try's time limit elapsed before its response head.
#[derive(Debug)]
struct TimedOut;

/// One try, as [`BackendRt::record_outcome`] needs it.
struct Try {
    idx: usize,
    attempt: u32,
    ticket: Option<crate::upstream::breaker::Ticket>,
    in_flight: InFlight,
    elapsed: Duration,
    /// When the try ended (its latency sample's time).
    ended: Instant,
    /// The try's time limit.
    limit: Duration,
    /// The per-try timeout, when it (not the request timeout) limited the try.
    per_try: Option<Duration>,
}

impl Try {
    /// `t`: the endpoint index, the attempt number, the time limit and the per-try timeout.
    #[inline(always)]
    fn new(
        t: (usize, u32, Duration, Option<Duration>),
        ticket: Option<crate::upstream::breaker::Ticket>,
        in_flight: InFlight,
        (elapsed, ended): (Duration, Instant),
    ) -> Try {
        let (idx, attempt, limit, per_try) = t;
        Try {
            idx,
            attempt,
            ticket,
            in_flight,
            elapsed,
            ended,
            limit,
            per_try,
        }
    }
}

/// The request head and body of every try. The head is built once: HTTP/1.1 codec tries
/// borrow it (no copy of the header map per try: cloning it for the first of the default two
/// attempts and dropping the original cost ~1,300 instructions and 2 `malloc` per request,
/// callgrind); hyper and h2c tries take a copy, the last try the head itself. With retries
/// possible a body goes through a replay buffer; without, or when it is already at its end
/// (no body: most requests, for which the replay buffer's `Arc` and per-try box cost 2
/// `malloc`), it goes straight to the try and a retry sends an empty one again.
struct Payload<'a> {
    replay: Option<Replay>,
    only_body: Option<ProxyBody>,
    /// The body has no frames at all: every try can send it again.
    empty: bool,
    parts: http::request::Parts,
    /// The fields the proxy adds, kept out of `parts.headers` (see [`Added`]); borrowed from
    /// the caller, whose future holds them once.
    added: &'a Added,
    attempts: u32,
}

impl<'a> Payload<'a> {
    #[inline(always)]
    fn new(
        body: ProxyBody,
        parts: http::request::Parts,
        added: &'a Added,
        attempts: u32,
    ) -> Payload<'a> {
        let empty = body.is_end_stream();
        let (replay, only_body) = if attempts > 1 && !empty {
            (Some(Replay::new(body)), None)
        } else {
            (None, Some(body))
        };
        Payload {
            replay,
            only_body,
            empty,
            parts,
            added,
            attempts,
        }
    }

    #[inline(always)]
    fn body_for_try(&mut self) -> ProxyBody {
        match &self.replay {
            Some(r) => r.attempt(),
            None => (self.only_body.take()).unwrap_or_else(crate::http::body::empty),
        }
    }

    /// An owned request for a try that cannot borrow the head (hyper's client, h2c): a copy,
    /// or the head itself on the last try.
    fn owned_request(&mut self, attempt: u32, uri: Uri, body: ProxyBody) -> Request<ProxyBody> {
        let last = attempt >= self.attempts;
        let mut req = crate::upstream::pool::owned_request(&mut self.parts, uri, body, last);
        self.added.merge_into(req.headers_mut());
        req
    }

    /// Whether another try can send the whole body again.
    fn replayable(&self) -> bool {
        match &self.replay {
            Some(r) => r.replayable(),
            None => self.empty,
        }
    }
}

/// A try's outcome as its span records it.
fn span_outcome(result: &TryResult) -> Result<u16, &'static str> {
    match result {
        Ok(Ok((r, _))) => Ok(r.status().as_u16()),
        Ok(Err(e)) if e.is_connect() => Err("connect_error"),
        Ok(Err(_)) => Err("upstream_error"),
        Err(_) => Err("timeout"),
    }
}

/// The last step: the reply from the last try's result. An upstream response's body keeps
/// the endpoint's in-flight count and the concurrency slot until it ends, then gives the
/// connection back to the pool (not after an upgrade: a WebSocket keeps it).
// Both sides are replies, as in `Dispatched::response`; moved out once, not boxed.
#[inline(always)]
#[allow(clippy::result_large_err)]
fn finish(
    last: Last,
    permit: Option<OwnedSemaphorePermit>,
    method: &Method,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    match last {
        Last::Local(r) => Err(r),
        Last::Upstream(resp, in_flight, checkin) => {
            let (parts, body) = resp.into_parts();
            let checkin = checkin.filter(|_| {
                parts.status != StatusCode::SWITCHING_PROTOCOLS && method != Method::CONNECT
            });
            let body = Guarded {
                inner: body,
                guard: Some((in_flight, permit)),
                checkin,
            };
            // Boxed as it is: its errors are already `BoxError`s (`boxed` would wrap it in a
            // `MapErr` that only forwards, one more call per poll).
            Ok(Response::from_parts(parts, body.boxed_unsync()))
        }
    }
}

impl BackendRt {
    /// Builds the runtime backend. State carried over from `prev` when settings allow:
    /// the client (warm pool) when connection settings are equal; each endpoint's state
    /// (health counters and its checker task, ejection, in-flight, latency) when its address,
    /// the protocol and the health check are unchanged; breaker, budget and concurrency
    /// limiter when their settings are unchanged.
    pub fn new(
        name: &str,
        config: &Backend,
        prev: Option<&BackendRt>,
    ) -> Result<BackendRt, String> {
        let h2 = config.protocol == UpstreamProtocol::H2c;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let authority: Authority = ep
                .address
                .parse()
                .map_err(|e| format!("endpoint {:?}: {e}", ep.address))?;
            let reused = prev.and_then(|p| {
                p.endpoints
                    .iter()
                    .find(|e| {
                        e.authority == authority
                            && e.state.h2 == h2
                            && e.state.check_config == config.health_check
                    })
                    .map(|e| e.state.clone())
            });
            let state = reused.unwrap_or_else(|| {
                Arc::new(EndpointState::new(
                    authority.clone(),
                    config.health_check.clone(),
                    h2,
                ))
            });
            state.ensure_checker(name);
            endpoints.push(EndpointRt {
                authority,
                weight: ep.weight,
                state,
            });
        }
        // Warm connections are kept when the connection settings are unchanged.
        let warm = prev.filter(|p| same_connection_settings(&p.config, config));
        let conns = if h2 {
            match warm.map(|p| &p.conns) {
                Some(Conns::Legacy { client, counts }) => Conns::Legacy {
                    client: client.clone(),
                    counts: counts.clone(),
                },
                _ => {
                    let (client, counts) = build_client(config);
                    Conns::Legacy {
                        client: Box::new(client),
                        counts,
                    }
                }
            }
        } else {
            let settings = PoolSettings {
                connect_timeout: config.timeouts.connect.get(),
                idle_timeout: config.pool.idle_timeout.get(),
                max_idle: config.pool.max_idle_per_endpoint,
                excess_idle_grace: crate::upstream::pool::EXCESS_IDLE_GRACE,
            };
            let prev_pools = match warm.map(|p| (&p.endpoints, &p.conns)) {
                Some((eps, Conns::H1(pools))) => Some((eps, pools)),
                _ => None,
            };
            let mut pools: Vec<Arc<Pool>> = Vec::with_capacity(endpoints.len());
            for (i, ep) in endpoints.iter().enumerate() {
                // An address listed twice shares one pool.
                let same = endpoints[..i]
                    .iter()
                    .position(|e| e.authority == ep.authority)
                    .and_then(|j| pools.get(j).cloned());
                let kept = same.or_else(|| {
                    let (eps, prev) = prev_pools?;
                    let j = eps.iter().position(|e| e.authority == ep.authority)?;
                    prev.get(j).cloned()
                });
                pools.push(kept.unwrap_or_else(|| Pool::new(ep.authority.clone(), settings)));
            }
            Conns::H1(pools)
        };
        let breaker = config.circuit_breaker.as_ref().map(|cfg| match prev {
            Some(p) if p.config.circuit_breaker.as_ref() == Some(cfg) => p
                .breaker
                .clone()
                .unwrap_or_else(|| Arc::new(Breaker::new(name, cfg))),
            _ => Arc::new(Breaker::new(name, cfg)),
        });
        let limiter = config.max_concurrent_requests.map(|max| match prev {
            Some(p) if p.config.max_concurrent_requests == Some(max) => p
                .limiter
                .clone()
                .unwrap_or_else(|| Arc::new(Semaphore::new(max as usize))),
            _ => Arc::new(Semaphore::new(max as usize)),
        });
        let budget = match prev {
            Some(p) if p.config.retries.budget == config.retries.budget => p.budget.clone(),
            _ => Arc::new(Budget::new(config.retries.budget)),
        };
        let credential = match &config.credential {
            None => None,
            Some(c) => {
                let name = HeaderName::from_bytes(c.header.as_bytes())
                    .map_err(|_| format!("credential header {:?} is not valid", c.header))?;
                let mut value = HeaderValue::from_str(&c.value)
                    .map_err(|_| "credential value is not a valid header value".to_string())?;
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        Ok(BackendRt {
            name: name.to_string(),
            balancer: Balancer::new(&config.load_balancer, endpoints.len()),
            config: config.clone(),
            conns,
            endpoints,
            breaker,
            limiter,
            budget,
            credential,
            eject_lock: Mutex::new(()),
            metrics: BackendMetrics::new(name),
        })
    }

    /// Chooses an endpoint: an available one not tried yet, else any available one, else
    /// (panic mode only) any at all.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        // The clock is read once, and only when an endpoint that was ever ejected is looked at.
        let now = std::cell::OnceCell::new();
        let eps = &self.endpoints;
        let available = |i: usize| eps[i].state.is_available_by(|| *now.get_or_init(clock_ms));
        self.balancer
            .pick(eps, |i| available(i) && !tried.contains(&i))
            .or_else(|| {
                (!tried.is_empty())
                    .then(|| self.balancer.pick(eps, available))
                    .flatten()
            })
            .or_else(|| {
                let panic = self
                    .config
                    .health_check
                    .as_ref()
                    .is_some_and(|h| h.panic_mode);
                panic.then(|| self.balancer.pick(eps, |_| true)).flatten()
            })
    }

    /// Counts an outcome for passive outlier detection and ejects when a threshold is hit
    /// and the ejection cap allows.
    fn report(&self, idx: usize, outcome: Outcome) {
        let Some(od) = &self.config.outlier_detection else {
            return;
        };
        let Some(ep) = self.endpoints.get(idx) else {
            return;
        };
        if !ep.state.outlier_trips(outcome, od) {
            return;
        }
        let _serial = self.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock_ms();
        if ep.state.is_ejected(now) {
            return;
        }
        let n = self.endpoints.len();
        let cap = (n * od.max_ejection_percent as usize / 100).max(1);
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected(now))
            .count();
        if ejected < cap {
            ep.state.eject(&self.name, od);
        } else {
            tracing::info!(target: "weir::health", backend = %self.name, endpoint = %ep.authority, ejected, cap, "not ejecting: maxEjectionPercent reached");
        }
    }

    /// Sends a request to this backend with every resilience layer applied. `pq` is the
    /// upstream path and query; `headers` are final except for the credential. `timeout`
    /// bounds the whole exchange up to response headers, retries included. `span`: the
    /// request's span when sampled; each try is recorded as its child.
    #[allow(clippy::too_many_arguments)]
    pub async fn dispatch(
        &self,
        method: Method,
        pq: PathAndQuery,
        version: Version,
        headers: HeaderMap,
        body: ProxyBody,
        timeout: Duration,
        span: Option<&mut crate::telemetry::otel::RequestSpan>,
    ) -> Dispatched {
        let added = Added::new();
        self.dispatch_per_try(
            method, pq, version, headers, &added, body, timeout, span, None,
        )
        .await
    }

    /// [`BackendRt::dispatch`] with the limit of each try set by the rule
    /// (`backendRequestTimeout`) instead of `retries.perTryTimeout`: `Some(0)` is no per-try
    /// limit, `None` the backend's own.
    ///
    /// The steps, each a method below: [`Self::admit`] (endpoints, concurrency limit), then
    /// per try [`Self::back_off`], [`Self::admit_try`] (circuit breaker, then the endpoint),
    /// [`Self::try_request`], the send under [`Self::try_limit`], [`Self::record_outcome`]
    /// (health, breaker, outlier detection; the failure if any) and [`Self::may_retry`]; the
    /// last try's result becomes the reply in [`Self::finish`].
    ///
    /// The steps called once per try are `#[inline(always)]`: out of line, the request and
    /// response they take and return were copied through memory, and the calls with them
    /// cost ~+450 instructions per HTTP/1.1 request (callgrind, BENCHMARKS.md #17).
    ///
    /// `added`: the fields the proxy adds, apart from `headers` ([`Added`]); every try sends
    /// them, as the codec writes them or merged into hyper's or h2c's copy of the map.
    #[allow(clippy::too_many_arguments)]
    pub async fn dispatch_per_try(
        &self,
        method: Method,
        pq: PathAndQuery,
        version: Version,
        mut headers: HeaderMap,
        mut added: &Added,
        body: ProxyBody,
        timeout: Duration,
        mut span: Option<&mut crate::telemetry::otel::RequestSpan>,
        rule_per_try: Option<Duration>,
    ) -> Dispatched {
        let start = Instant::now();
        let deadline = start + timeout;
        // What the reply reports: the last try's endpoint and the tries made. The reply itself
        // is made once at the end (a placeholder reply made up front and replaced cost ~100
        // instructions per request, callgrind).
        let (mut upstream, mut tries) = (None, 0);
        // The dispatch's start, when the first try starts with it (no concurrency slot waited for).
        let mut unwaited = None;
        // Decided here when there is nothing to wait for (the common case): awaiting the
        // `admit` future on every request measured ~+500 instr. per HTTP/1.1 request.
        let permit = match (&self.limiter, self.endpoints.is_empty()) {
            (None, false) => {
                unwaited = Some(start);
                None
            }
            _ => match self.admit(timeout).await {
                Ok(p) => p,
                Err(r) => return Dispatched::local(r, None, 0),
            },
        };
        let attempts = self.config.retries.attempts.max(1);
        self.budget.deposit_at(start);
        let head = Head {
            idempotent: is_idempotent(&method),
            pq,
            deadline,
        };
        if let Some((name, value)) = &self.credential {
            // A credential named as an added field (never in practice) overrides it as it
            // did when both were in the map.
            if added.position(name).is_some() {
                static NONE: Added = Added::new();
                added.merge_into(&mut headers);
                added = &NONE;
            }
            headers.insert(name.clone(), value.clone());
        }
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.version = version;
        parts.headers = headers;
        if let Conns::H1(_) = &self.conns {
            // Origin form, as every HTTP/1.1 try sends it.
            parts.uri = Uri::from(head.pq.clone());
        }
        let mut payload = Payload::new(body, parts, added, attempts);
        // Endpoints tried so far; filled only when a retry follows (no allocation otherwise).
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<Last> = None;
        // Set when no try could start: the 503 of an open circuit or no available endpoint.
        let mut refused = None;
        for attempt in 1..=attempts {
            if attempt > 1 && !self.back_off(attempt, deadline).await {
                break;
            }
            let (ticket, idx) = match self.admit_try(&tried) {
                Ok(x) => x,
                Err(kind) => {
                    if last.is_none() {
                        refused = Some(kind);
                    }
                    break;
                }
            };
            let ep = &self.endpoints[idx];
            tries = attempt;
            upstream = Some(ep.authority.clone());
            let uri = match self.try_uri(ep, &head) {
                Ok(u) => u,
                Err(r) => return Dispatched::local(r, upstream, tries),
            };
            if let Some(s) = span.as_deref_mut() {
                s.attempt_started(attempt, &ep.authority, &mut payload.parts.headers);
            }
            let body = payload.body_for_try();
            let in_flight = ep.state.start();
            // The first try starts with the dispatch when nothing was waited for before it:
            // its whole time is left, without a clock read and a subtraction (~85
            // instructions per request, callgrind).
            let (started, remaining) = match unwaited.take() {
                Some(start) => (start, timeout),
                None => {
                    let now = Instant::now();
                    (now, deadline.saturating_duration_since(now))
                }
            };
            let (limit, per_try) = self.try_limit(rule_per_try, remaining);
            let until = tokio::time::Instant::from_std(started + limit);
            let result = self
                .send(idx, attempt, uri, &mut payload, body, until)
                .await;
            if let Some(s) = span.as_deref_mut() {
                s.attempt_ended(span_outcome(&result));
            }
            let ended = Instant::now();
            let timing = (ended.saturating_duration_since(started), ended);
            let t = (idx, attempt, limit, per_try);
            let (l, failure) = self.record_outcome(Try::new(t, ticket, in_flight, timing), result);
            last = Some(l);
            let Some(failure) = failure else {
                break;
            };
            if !self.may_retry(failure, attempt, &head, &payload) {
                break;
            }
            tried.push(idx);
            tracing::debug!(backend = %self.name, upstream = %ep.authority, attempt, failure = ?failure, "retrying");
        }
        let response = match last {
            Some(last) => finish(last, permit, &payload.parts.method),
            // The first try could not start (every later try has a `last` before it).
            None => Err(self.unavailable(refused.unwrap_or(ErrorKind::NoHealthyEndpoint))),
        };
        crate::upstream::h1::recycle_map(std::mem::take(&mut payload.parts.headers));
        Dispatched {
            response,
            upstream,
            attempts: tries,
        }
    }

    /// Step 1: the backend has endpoints, and a slot of `maxConcurrentRequests` (waited for
    /// up to `queueTimeout`, within `timeout`). Gives the slot, held until the response body
    /// ends, or the reply.
    async fn admit(
        &self,
        timeout: Duration,
    ) -> Result<Option<OwnedSemaphorePermit>, Response<ProxyBody>> {
        if self.endpoints.is_empty() {
            return Err(self.unavailable(ErrorKind::NoEndpoint));
        }
        let Some(sem) = &self.limiter else {
            return Ok(None);
        };
        let wait = self.config.queue_timeout.get().min(timeout);
        match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => {
                self.metrics.overloaded.inc();
                Err(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorKind::BackendOverloaded,
                    &format!(
                        "backend {:?} is at maxConcurrentRequests ({}) and no slot freed within {:?}",
                        self.name,
                        self.config.max_concurrent_requests.unwrap_or_default(),
                        wait
                    ),
                ))
            }
        }
    }

    /// The 503 of a backend that cannot take the request: no endpoints, no healthy one, or
    /// an open circuit breaker.
    fn unavailable(&self, kind: ErrorKind) -> Response<ProxyBody> {
        let msg = match kind {
            ErrorKind::NoEndpoint => format!("backend {:?} has no endpoints", self.name),
            ErrorKind::CircuitOpen => {
                format!("the circuit breaker of backend {:?} is open", self.name)
            }
            _ => format!("backend {:?} has no healthy endpoint", self.name),
        };
        error_response(StatusCode::SERVICE_UNAVAILABLE, kind, &msg)
    }

    /// Before a retry: waits the backoff of try `attempt`, or gives up (`false`) when that
    /// wait would reach past the deadline.
    async fn back_off(&self, attempt: u32, deadline: Instant) -> bool {
        let wait = backoff(&self.config.retries.backoff, attempt - 1);
        if Instant::now() + wait >= deadline {
            self.metrics.retries_exhausted.inc();
            return false;
        }
        tokio::time::sleep(wait).await;
        self.metrics.retries.inc();
        true
    }

    /// Admits one try: the circuit breaker's ticket (`None` without a breaker), then the
    /// endpoint ([`Self::pick`], not one of `tried` when another is available). The error is
    /// the kind of the 503 when the circuit is open or no endpoint is available.
    #[inline(always)]
    fn admit_try(
        &self,
        tried: &[usize],
    ) -> Result<(Option<crate::upstream::breaker::Ticket>, usize), ErrorKind> {
        let ticket = match &self.breaker {
            None => None,
            Some(b) => Some(b.try_acquire().ok_or(ErrorKind::CircuitOpen)?),
        };
        let idx = self.pick(tried).ok_or(ErrorKind::NoHealthyEndpoint)?;
        Ok((ticket, idx))
    }

    /// One try's URI for endpoint `ep` when the try needs its own: HTTP/1.1 tries send the
    /// head's origin form (`None`); the h2c client wants the absolute form (it derives
    /// `:authority` and its pool key from it), which can fail: a `400 bad_path` reply.
    // The Err is the reply itself, made on the rare path and moved out once.
    #[inline(always)]
    #[allow(clippy::result_large_err)]
    fn try_uri(&self, ep: &EndpointRt, head: &Head) -> Result<Option<Uri>, Response<ProxyBody>> {
        match &self.conns {
            Conns::H1(_) => Ok(None),
            Conns::Legacy { .. } => Uri::builder()
                .scheme("http")
                .authority(ep.authority.clone())
                .path_and_query(head.pq.clone())
                .build()
                .map(Some)
                .map_err(|e| {
                    error_response(StatusCode::BAD_REQUEST, ErrorKind::BadPath, &e.to_string())
                }),
        }
    }

    /// The time limit of one try with `remaining` left before the deadline, and the per-try
    /// timeout when it is the shorter (`None`: the request timeout itself limits the try).
    #[inline(always)]
    fn try_limit(
        &self,
        rule_per_try: Option<Duration>,
        remaining: Duration,
    ) -> (Duration, Option<Duration>) {
        let per_try = match rule_per_try {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => self.config.retries.per_try_timeout.map(|t| t.get()),
        }
        .filter(|t| *t < remaining);
        (per_try.unwrap_or(remaining), per_try)
    }

    /// Records a try's outcome (latency, outlier detection, breaker) and classifies it: the
    /// result to keep, and the failure to consider retrying for (`None`: stop here — a
    /// response not to retry, or the request timeout itself ran out).
    #[inline(always)]
    fn record_outcome(&self, t: Try, result: TryResult) -> (Last, Option<Failure>) {
        let ep = &self.endpoints[t.idx];
        let decay = self.balancer.ewma_decay();
        let resp = match result {
            Ok(Ok((resp, checkin))) => {
                self.metrics
                    .upstream_latency
                    .observe(t.elapsed.as_secs_f64());
                let status = resp.status().as_u16();
                let server_error = status >= 500;
                ep.state
                    .observe_latency_at(t.elapsed, false, decay, t.ended);
                self.report(
                    t.idx,
                    if server_error {
                        Outcome::Status(status)
                    } else {
                        Outcome::Success
                    },
                );
                if let Some(ticket) = t.ticket {
                    ticket.record(server_error);
                }
                let statuses = &self.config.retries.retry_on.statuses;
                let retry = statuses.iter().any(|r| r.contains(status));
                let last = Last::Upstream(resp, t.in_flight, checkin);
                return (last, retry.then_some(Failure::Status(status)));
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        };
        drop(t.in_flight);
        ep.state.observe_latency_at(t.elapsed, true, decay, t.ended);
        self.report(t.idx, Outcome::LocalFailure);
        if let Some(ticket) = t.ticket {
            ticket.record(true);
        }
        match resp {
            Err(e) => self.send_failed(ep, t.attempt, &e),
            Ok(()) => {
                let last = Last::Local(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::UpstreamTimeout,
                    &format!(
                        "upstream {} did not answer within {:?}",
                        ep.authority, t.limit
                    ),
                ));
                // Without a per-try timeout the request timeout itself ran out.
                (last, t.per_try.map(|_| Failure::TryTimeout))
            }
        }
    }

    /// A try whose send failed (connect or reset): logged, and the `502` reply.
    fn send_failed(&self, ep: &EndpointRt, attempt: u32, e: &SendError) -> (Last, Option<Failure>) {
        let source = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        tracing::warn!(backend = %self.name, upstream = %ep.authority, attempt, error = %e, source = %source, "upstream error");
        let (failure, code, what) = if e.is_connect() {
            (
                Failure::Connect,
                ErrorKind::UpstreamConnectError,
                "cannot connect to",
            )
        } else {
            (
                Failure::Reset,
                ErrorKind::UpstreamError,
                "request failed at",
            )
        };
        let last = Last::Local(error_response(
            StatusCode::BAD_GATEWAY,
            code,
            &format!("{what} upstream {}", ep.authority),
        ));
        (last, Some(failure))
    }

    /// Whether try `attempt`'s failure is retried: allowed by `retries.retryOn` (non-idempotent
    /// requests only after a connect error), a try left, the body replayable, time left, and
    /// the retry budget not spent.
    fn may_retry(&self, failure: Failure, attempt: u32, head: &Head, payload: &Payload) -> bool {
        let (policy, idempotent) = (&self.config.retries, head.idempotent);
        let allowed = match failure {
            Failure::Connect => policy.retry_on.connect_error,
            Failure::Reset => policy.retry_on.reset && idempotent,
            Failure::TryTimeout => policy.retry_on.timeout && idempotent,
            Failure::Status(_) => idempotent,
        };
        let can = attempt < policy.attempts
            && allowed
            && payload.replayable()
            && Instant::now() < head.deadline;
        if !can {
            // A failure retries were configured for, but none is left.
            if allowed && policy.attempts > 1 {
                self.metrics.retries_exhausted.inc();
            }
            return false;
        }
        if !self.budget.withdraw() {
            tracing::debug!(backend = %self.name, "retry budget spent; not retrying");
            self.metrics.retries_exhausted.inc();
            return false;
        }
        true
    }

    /// One try on endpoint `idx`, its response head due by `until`: its HTTP/1.1 pool (which
    /// borrows the head when its codec carries the request, and keeps the time limit itself: a
    /// timer per connection, not one per try), or the h2c client (an owned request with `uri`,
    /// under a timeout). With the response comes the pooled connection to give back when the
    /// response body has ended.
    async fn send(
        &self,
        idx: usize,
        attempt: u32,
        uri: Option<Uri>,
        payload: &mut Payload<'_>,
        body: ProxyBody,
        until: tokio::time::Instant,
    ) -> TryResult {
        match (&self.conns, uri) {
            (Conns::H1(pools), _) => match pools.get(idx) {
                Some(pool) => {
                    let last = attempt >= payload.attempts;
                    match pool
                        .send_parts(&mut payload.parts, payload.added, body, last, Some(until))
                        .await
                    {
                        Ok(r) => Ok(Ok(r)),
                        Err(e) if e.is_timeout() => Err(TimedOut),
                        Err(e) => Ok(Err(SendError::Pool(e))),
                    }
                }
                // `pools` follows `endpoints`; `idx` comes from `pick`.
                None => Ok(Err(SendError::Pool(PoolError::NoPool))),
            },
            (Conns::Legacy { client, .. }, Some(uri)) => {
                let req = payload.owned_request(attempt, uri, body);
                match tokio::time::timeout_at(until, client.request(req)).await {
                    Ok(Ok(resp)) => Ok(Ok((resp.map(UpstreamBody::Hyper), None))),
                    Ok(Err(e)) => Ok(Err(SendError::Legacy(e))),
                    Err(_) => Err(TimedOut),
                }
            }
            // `try_uri` gives h2c tries their URI.
            (Conns::Legacy { .. }, None) => Ok(Err(SendError::Pool(PoolError::NoPool))),
        }
    }

    /// Requests and retries counted by the budget over its window.
    pub fn budget_usage(&self) -> (u64, u64) {
        self.budget.usage()
    }

    pub fn breaker_view(&self) -> Option<BreakerView> {
        self.breaker.as_ref().map(|b| b.view())
    }

    pub fn balancer_name(&self) -> &'static str {
        match self.balancer.kind {
            weir_config::LoadBalancerType::P2cEwma => "p2cEwma",
            weir_config::LoadBalancerType::RoundRobin => "roundRobin",
            weir_config::LoadBalancerType::LeastRequest => "leastRequest",
            weir_config::LoadBalancerType::WeightedRoundRobin => "weightedRoundRobin",
        }
    }

    /// Requests waiting for or holding a `maxConcurrentRequests` slot: (in use, limit).
    pub fn concurrency(&self) -> Option<(u32, u32)> {
        let max = self.config.max_concurrent_requests?;
        let free = self.limiter.as_ref()?.available_permits() as u32;
        Some((max.saturating_sub(free), max))
    }

    /// The HTTP/1.1 pool of `endpoint`.
    fn pool(&self, endpoint: &Authority) -> Option<&Arc<Pool>> {
        let Conns::H1(pools) = &self.conns else {
            return None;
        };
        let i = self
            .endpoints
            .iter()
            .position(|e| &e.authority == endpoint)?;
        pools.get(i)
    }

    /// Upstream connections opened to `endpoint` by this backend's pool or client.
    pub fn connections_created(&self, endpoint: &Authority) -> u64 {
        match &self.conns {
            Conns::H1(_) => self.pool(endpoint).map(|p| p.created()).unwrap_or(0),
            Conns::Legacy { counts, .. } => counts
                .lock()
                .ok()
                .and_then(|c| c.get(endpoint.as_str()).map(|s| s.created))
                .unwrap_or(0),
        }
    }

    /// Requests the HTTP/1.1 pool of `endpoint` sent again on a new connection (the keep-alive
    /// race: the pooled connection closed before the request went out). h2c upstreams: 0 (the
    /// legacy client retries such requests itself without counting them).
    pub fn requests_resent(&self, endpoint: &Authority) -> u64 {
        match &self.conns {
            Conns::H1(_) => self.pool(endpoint).map(|p| p.resent()).unwrap_or(0),
            Conns::Legacy { .. } => 0,
        }
    }

    /// Upstream connections to `endpoint` open now (idle in the pool or carrying requests).
    pub fn connections_open(&self, endpoint: &Authority) -> u64 {
        match &self.conns {
            Conns::H1(_) => self.pool(endpoint).map(|p| p.open()).unwrap_or(0),
            Conns::Legacy { counts, .. } => counts
                .lock()
                .ok()
                .and_then(|c| {
                    c.get(endpoint.as_str())
                        .map(|s| s.open.load(Ordering::Relaxed))
                })
                .unwrap_or(0),
        }
    }

    /// Available endpoints (healthy and not ejected).
    pub fn available_endpoints(&self) -> usize {
        let now = clock_ms();
        self.endpoints
            .iter()
            .filter(|e| e.state.is_available(now))
            .count()
    }
}

/// A response body holding the endpoint's in-flight slot (and the backend's concurrency
/// permit) until it ends or is dropped, and the pooled HTTP/1.1 connection it came on, which
/// goes back to its pool when the body has ended cleanly (and is closed otherwise).
struct Guarded {
    inner: UpstreamBody,
    guard: Option<(InFlight, Option<OwnedSemaphorePermit>)>,
    checkin: Option<Checkin>,
}

impl Guarded {
    /// The exchange is over: the slot is free and the connection can carry the next request.
    fn ended(&mut self) {
        self.guard = None;
        if let Some(c) = self.checkin.take() {
            c.release();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Dropped unread but complete (no body, `HEAD`, `204`, `304`): reusable all the same.
        if self.checkin.is_some() && self.inner.is_end_stream() {
            self.ended();
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard = None;
                this.checkin = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(f))) => {
                // Released with the last frame, before the client can see the end.
                if this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn same_connection_settings(a: &Backend, b: &Backend) -> bool {
    a.protocol == b.protocol && a.timeouts.connect == b.timeouts.connect && a.pool == b.pool
}

fn build_client(config: &Backend) -> (HttpClient, ConnCounts) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeouts.connect.get()));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let counts = ConnCounts::default();
    let connector = CountingConnector {
        inner: connector,
        counts: counts.clone(),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool.idle_timeout.get())
        .pool_max_idle_per_host(config.pool.max_idle_per_endpoint);
    if config.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    (builder.build(connector), counts)
}
/// Sets the scrape-time backend and endpoint gauges of `m` from the live backend table (the
/// registry resets them first). Upstream exports its own state so the metrics registry never
/// walks the runtime.
pub fn export_gauges(backends: &HashMap<String, Arc<BackendRt>>, m: &Metrics) {
    for (name, b) in backends {
        let active = b.config.health_check.is_some();
        for ep in &b.endpoints {
            let v = ep.state.view();
            let labels = [name.as_str(), ep.authority.as_str()];
            m.endpoint_healthy
                .with_label_values(&labels)
                .set(i64::from(v.healthy));
            m.endpoint_available
                .with_label_values(&labels)
                .set(i64::from(v.healthy && v.ejected_until.is_none()));
            m.endpoint_available_since
                .with_label_values(&labels)
                .set(v.available_since_ms as f64 / 1000.0);
            m.connections_open
                .with_label_values(&labels)
                .set(b.connections_open(&ep.authority) as i64);
            if active {
                for (result, n) in [("success", v.checks.passed), ("failure", v.checks.failed)] {
                    m.health_checks
                        .with_label_values(&[labels[0], labels[1], result])
                        .inc_by(n);
                }
            }
            m.ejections.with_label_values(&labels).inc_by(v.ejections);
            m.endpoint_in_flight
                .with_label_values(&labels)
                .set(v.in_flight as i64);
            m.endpoint_requests
                .with_label_values(&labels)
                .inc_by(v.requests);
            m.connections_created
                .with_label_values(&labels)
                .inc_by(b.connections_created(&ep.authority));
            m.requests_resent
                .with_label_values(&labels)
                .inc_by(b.requests_resent(&ep.authority));
        }
        if let Some(v) = b.breaker_view() {
            let state = match v.mode {
                Mode::Closed => 0,
                Mode::Open => 1,
                Mode::HalfOpen => 2,
            };
            m.breaker_state.with_label_values(&[name]).set(state);
            m.breaker_opens
                .with_label_values(&[name])
                .inc_by(v.times_opened);
        }
        if let Some((in_use, max)) = b.concurrency() {
            m.concurrency_in_use
                .with_label_values(&[name])
                .set(i64::from(in_use));
            m.concurrency_limit
                .with_label_values(&[name])
                .set(i64::from(max));
        }
    }
}
