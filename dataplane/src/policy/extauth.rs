//! External authorization over HTTP or HTTPS (Envoy `ext_authz` HTTP-service semantics), with a decision
//! cache and a circuit breaker around the webhook.
//!
//! The webhook gets the request's method, its path and query behind the configured prefix,
//! the allowed request headers plus `x-forwarded-host`, and no body. 2xx allows (allowed
//! headers of the answer are set on the upstream request); 5xx, a timeout or a connection
//! failure is a failure, decided by `failureMode`; any other status denies, and the client
//! gets that status, the body (up to 64 KiB) and the allowed headers.

use crate::http::body::{full, ProxyBody};
use crate::http::reply::{error_response, ErrorKind, ProxyError};
use crate::upstream::breaker::{Breaker, Mode};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use weir_config::{CircuitBreaker, ExtAuth, FailureMode};

/// Header added upstream when a request was let through by `failOpen`.
pub const FAILURE_MODE_HEADER: &str = "x-weir-auth-failure-mode-allowed";
const MAX_DENY_BODY: usize = 64 * 1024;

type AuthClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook's client: `http://`, or `https://` checked against `caFile` (else the system
/// roots). The error says why TLS cannot be set up; every call then fails with it.
fn client_for(cfg: &ExtAuth) -> Result<AuthClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.timeout.get()));
    http.enforce_http(false);
    let tls =
        crate::http::tls::client_config(cfg.ca_file.as_deref(), cfg.url.starts_with("https://"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

struct Families {
    requests: IntCounterVec,
    cache: IntCounterVec,
    failure_mode: IntCounterVec,
    breaker: IntGaugeVec,
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| {
        let r = &crate::telemetry::metrics::metrics().registry;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &prometheus::Registry, c: C) -> C {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!(error = %e, "cannot register a metric family");
            }
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(prometheus::Opts::new(name, help), labels)
                    .expect("valid metric definition"),
            )
        };
        Families {
            requests: counter(
                "weir_ext_auth_requests_total",
                "Calls to an external authorization webhook by result: allowed (2xx), denied (other non-5xx), failed (5xx, timeout, connection error).",
                &["route", "result"],
            ),
            cache: counter(
                "weir_ext_auth_cache_total",
                "External authorization decision cache lookups by result (hit, miss).",
                &["route", "result"],
            ),
            failure_mode: counter(
                "weir_ext_auth_failure_mode_total",
                "Requests decided by failureMode (webhook failed or its breaker open), by decision (allowed, denied).",
                &["route", "decision"],
            ),
            breaker: reg(
                r,
                IntGaugeVec::new(
                    prometheus::Opts::new(
                        "weir_ext_auth_breaker_state",
                        "Breaker around an external authorization webhook: 0 closed, 1 open, 2 half-open (only rules with a breaker).",
                    ),
                    &["route"],
                )
                .expect("valid metric definition"),
            ),
        }
    })
}

struct Handles {
    allowed: IntCounter,
    denied: IntCounter,
    failed: IntCounter,
    hit: IntCounter,
    miss: IntCounter,
    fm_allowed: IntCounter,
    fm_denied: IntCounter,
    /// Only with a breaker.
    breaker: Option<IntGauge>,
}

/// A webhook's decision, as cached.
#[derive(Debug, Clone)]
enum Verdict {
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// What the proxy does with the request.
pub enum Outcome {
    /// Forward, after setting these headers upstream.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Answer this instead.
    Respond(Response<ProxyBody>),
}

#[derive(Default)]
struct Cache {
    map: HashMap<[u8; 32], (Instant, Verdict)>,
    order: VecDeque<[u8; 32]>,
}

/// One compiled `extAuth`.
pub struct ExtAuthRt {
    route: String,
    base: String,
    timeout: Duration,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    failure_mode: FailureMode,
    status_on_error: StatusCode,
    cache_ttl: Option<(Duration, usize)>,
    cache: Mutex<Cache>,
    /// The backends' breaker with one half-open probe: its [`Ticket`] frees the probe slot
    /// when a check is dropped mid-call (the client went away), which a hand-kept `probing`
    /// flag did not (issue #19).
    breaker: Option<Arc<Breaker>>,
    client: Result<AuthClient, String>,
    m: Handles,
}

impl std::fmt::Debug for ExtAuthRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthRt")
            .field("route", &self.route)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn names(v: &[String]) -> Vec<HeaderName> {
    v.iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

impl ExtAuthRt {
    pub fn new(route: &str, cfg: &ExtAuth) -> ExtAuthRt {
        let f = families();
        let c = |vec: &IntCounterVec, v: &str| vec.with_label_values(&[route, v]);
        let breaker = cfg
            .circuit_breaker
            .as_ref()
            .map(|_| f.breaker.with_label_values(&[route]));
        // A new breaker (first config, or a changed `extAuth`) starts closed; an unchanged one
        // is carried over a reload with its state (see crate::policy::stages::PolicyCarry).
        if let Some(g) = &breaker {
            g.set(0);
        }
        let client = client_for(cfg);
        if let Err(e) = &client {
            tracing::error!(route, webhook = %cfg.url, error = %e, "external authorization client cannot be set up; every check fails");
        }
        ExtAuthRt {
            route: route.to_string(),
            base: cfg.url.trim_end_matches('/').to_string(),
            timeout: cfg.timeout.get(),
            request_headers: names(&cfg.allowed_request_headers),
            upstream_headers: names(&cfg.allowed_upstream_headers),
            client_headers: names(&cfg.allowed_client_headers),
            failure_mode: cfg.failure_mode,
            status_on_error: StatusCode::from_u16(cfg.status_on_error)
                .unwrap_or(StatusCode::FORBIDDEN),
            cache_ttl: cfg
                .cache
                .as_ref()
                .map(|c| (c.ttl.get(), c.max_entries as usize)),
            cache: Mutex::new(Cache::default()),
            breaker: cfg.circuit_breaker.as_ref().map(|b| {
                Arc::new(Breaker::new(
                    &format!("extAuth {route}"),
                    &CircuitBreaker {
                        consecutive_failures: b.consecutive_failures,
                        error_ratio: None,
                        open_duration: b.open_for,
                        half_open_probes: 1,
                        ..CircuitBreaker::default()
                    },
                ))
            }),
            client,
            m: Handles {
                allowed: c(&f.requests, "allowed"),
                denied: c(&f.requests, "denied"),
                failed: c(&f.requests, "failed"),
                hit: c(&f.cache, "hit"),
                miss: c(&f.cache, "miss"),
                fm_allowed: c(&f.failure_mode, "allowed"),
                fm_denied: c(&f.failure_mode, "denied"),
                breaker,
            },
        }
    }

    /// Decides a request: `pq` is its path and query, `host` the host it asked for.
    pub async fn check(
        &self,
        method: &Method,
        pq: &str,
        host: &str,
        headers: &HeaderMap,
    ) -> Outcome {
        let mut sent = HeaderMap::new();
        for n in &self.request_headers {
            for v in headers.get_all(n) {
                sent.append(n.clone(), v.clone());
            }
        }
        let key = self.cache_ttl.map(|_| {
            let mut h = Sha256::new();
            h.update(method.as_str());
            h.update([0]);
            h.update(pq);
            h.update([0]);
            h.update(host);
            for (n, v) in &sent {
                h.update([0]);
                h.update(n.as_str());
                h.update([1]);
                h.update(v.as_bytes());
            }
            <[u8; 32]>::from(h.finalize())
        });
        if let Some(k) = &key {
            if let Some(v) = self.cached(k) {
                self.m.hit.inc();
                return self.apply(v);
            }
            self.m.miss.inc();
        }
        let ticket = match &self.breaker {
            Some(b) => match b.try_acquire() {
                Some(t) => {
                    self.show_state(b);
                    Some(t)
                }
                None => return self.failure("the authorization webhook's circuit breaker is open"),
            },
            None => None,
        };
        let result = self.call(method, pq, host, sent).await;
        if let (Some(t), Some(b)) = (ticket, &self.breaker) {
            t.record(result.is_err());
            self.show_state(b);
        }
        match result {
            Ok(v) => {
                match &v {
                    Verdict::Allow(_) => self.m.allowed.inc(),
                    Verdict::Deny { .. } => self.m.denied.inc(),
                }
                if let (Some(k), Some((ttl, max))) = (key, self.cache_ttl) {
                    self.store(k, v.clone(), ttl, max);
                }
                self.apply(v)
            }
            Err(why) => {
                self.m.failed.inc();
                tracing::warn!(route = %self.route, webhook = %self.base, error = %why, "external authorization failed");
                self.failure(&format!("the authorization webhook failed: {why}"))
            }
        }
    }

    fn failure(&self, why: &str) -> Outcome {
        match self.failure_mode {
            FailureMode::FailOpen => {
                self.m.fm_allowed.inc();
                Outcome::Allow(vec![(
                    HeaderName::from_static(FAILURE_MODE_HEADER),
                    HeaderValue::from_static("true"),
                )])
            }
            FailureMode::FailClosed => {
                self.m.fm_denied.inc();
                Outcome::Respond(error_response(
                    self.status_on_error,
                    ErrorKind::ExtAuthError,
                    why,
                ))
            }
        }
    }

    fn apply(&self, v: Verdict) -> Outcome {
        match v {
            Verdict::Allow(h) => Outcome::Allow(h),
            Verdict::Deny {
                status,
                headers,
                body,
            } => {
                let mut resp = Response::new(full(body));
                *resp.status_mut() = status;
                for (n, v) in headers {
                    resp.headers_mut().append(n, v);
                }
                resp.extensions_mut()
                    .insert(ProxyError(ErrorKind::ExtAuthDenied));
                Outcome::Respond(resp)
            }
        }
    }

    async fn call(
        &self,
        method: &Method,
        pq: &str,
        host: &str,
        sent: HeaderMap,
    ) -> Result<Verdict, String> {
        let uri: Uri = format!("{}{pq}", self.base)
            .parse()
            .map_err(|e| format!("bad webhook URI: {e}"))?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = sent;
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut()
                .insert(HeaderName::from_static("x-forwarded-host"), v);
        }
        let fut = async {
            let client = self.client.as_ref().map_err(|e| e.clone())?;
            let resp = client.request(req).await.map_err(|e| {
                // The connect / TLS cause is in the source chain, not the top-level message.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                msg
            })?;
            let (parts, body) = resp.into_parts();
            if parts.status.is_server_error() {
                return Err(format!("webhook answered {}", parts.status));
            }
            let pick = |allowed: &[HeaderName]| {
                let mut out = Vec::new();
                for n in allowed {
                    for v in parts.headers.get_all(n) {
                        out.push((n.clone(), v.clone()));
                    }
                }
                out
            };
            if parts.status.is_success() {
                return Ok(Verdict::Allow(pick(&self.upstream_headers)));
            }
            let body = Limited::new(body, MAX_DENY_BODY)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok(Verdict::Deny {
                status: parts.status,
                headers: pick(&self.client_headers),
                body,
            })
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    fn cached(&self, k: &[u8; 32]) -> Option<Verdict> {
        let c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match c.map.get(k) {
            Some((exp, v)) if *exp > Instant::now() => Some(v.clone()),
            _ => None,
        }
    }

    fn store(&self, k: [u8; 32], v: Verdict, ttl: Duration, max: usize) {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while c.map.len() >= max && !c.map.contains_key(&k) {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            c.map.remove(&old);
        }
        // Keys leave the map only through `order`, so the two stay in step.
        if c.map.insert(k, (now + ttl, v)).is_none() {
            c.order.push_back(k);
        }
    }

    /// Decisions cached now.
    pub fn cached_entries(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    fn show_state(&self, b: &Breaker) {
        if let Some(g) = &self.m.breaker {
            g.set(match b.mode() {
                Mode::Closed => 0,
                Mode::Open => 1,
                Mode::HalfOpen => 2,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A webhook on loopback that answers its calls in turn: the first `503`, the second
    /// never (it reports that the call arrived and holds the connection), the rest `200`.
    async fn scripted_webhook() -> (String, mpsc::UnboundedReceiver<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        let calls = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (tx, calls) = (tx.clone(), calls.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = tx.send(n);
                    let status = match n {
                        1 => "503 Service Unavailable",
                        2 => {
                            // Hold the call until the client goes away.
                            let _ = s.read(&mut buf).await;
                            return;
                        }
                        _ => "200 OK",
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        (url, rx)
    }

    fn allowed(o: &Outcome) -> bool {
        matches!(o, Outcome::Allow(h) if h.is_empty())
    }

    /// Issue #19 bug 2: the half-open probe's future is dropped mid-call (the client went
    /// away). The breaker must let the next request probe; it used to refuse every request
    /// until the next config change.
    #[tokio::test]
    async fn dropped_probe_frees_the_breaker() {
        let (url, mut calls) = scripted_webhook().await;
        let cfg: ExtAuth = serde_json::from_value(serde_json::json!({
            "url": url,
            "timeout": "1h",
            "failureMode": "failClosed",
            "circuitBreaker": {"consecutiveFailures": 1, "openFor": "200ms"},
        }))
        .expect("config");
        let rt = ExtAuthRt::new("issue19-probe", &cfg);
        let (m, h) = (Method::GET, HeaderMap::new());
        let check = || rt.check(&m, "/", "x.test", &h);

        // The 503 opens the breaker; while open, no call goes out.
        assert!(!allowed(&check().await), "503 is a failure");
        assert_eq!(calls.recv().await, Some(1));
        assert!(!allowed(&check().await), "open: refused");
        assert!(calls.try_recv().is_err(), "open: the webhook is not called");

        // After openFor the probe goes out; its client vanishes while the webhook holds it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        tokio::select! {
            _ = check() => panic!("the webhook never answers the probe"),
            n = calls.recv() => assert_eq!(n, Some(2)),
        }

        // The dropped probe freed its slot: the next request probes, succeeds, closes.
        let o = check().await;
        assert!(allowed(&o), "the next probe must reach the webhook");
        assert_eq!(calls.recv().await, Some(3));
        assert!(allowed(&check().await), "closed again");
        assert_eq!(calls.recv().await, Some(4));
    }
}
