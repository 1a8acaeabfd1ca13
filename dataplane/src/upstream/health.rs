//! Endpoint state: active health checks (one task per endpoint), passive outlier ejection,
//! in-flight counts and the peak-EWMA latency estimate the balancers read.
//!
//! Thresholds are plain counters. An endpoint is *available* (in rotation) when it passes its
//! active checks (or has none) and is not ejected.

use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use weir_config::{HealthCheck, OutlierDetection};

/// Latency assumed for an endpoint before its first response (Linkerd uses 30ms too).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Latency recorded for a failure with no response, so EWMA balancing shuns a failing endpoint
/// instead of preferring its fast errors.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The process epoch, and the Unix time (ms) it was taken at.
fn epoch_pair() -> (Instant, u64) {
    static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), unix)
    })
}

fn epoch() -> Instant {
    epoch_pair().0
}

/// A duration in nanoseconds as `f64`, through `u64`: `as_nanos() as f64` converts a `u128`
/// with a compiler-builtins call (`__floattidf`, ~45 instructions, three per latency sample:
/// ~135 per request, callgrind). The same value below 584 years.
#[inline]
fn nanos_f64(d: Duration) -> f64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64 as f64
}

/// Milliseconds since the process epoch; 0 is reserved for "never".
fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last active check of an endpoint.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub ok: bool,
    pub at: SystemTime,
    /// `status 200`, `connected`, `timed out after 1s`, `connection refused`, …
    pub detail: String,
}

#[derive(Debug, Default, Clone)]
pub struct CheckCounters {
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub passed: u64,
    pub failed: u64,
    /// Healthy → unhealthy and back.
    pub transitions: u64,
    pub last: Option<CheckResult>,
}

#[derive(Debug, Default)]
struct OutlierCounters {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// Ejections so far, decayed by one per `maxEjectionTime` spent without one.
    ejections: u32,
    ejections_total: u64,
    last_change_ms: u64,
}

/// How one try against an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not 5xx.
    Success,
    /// A 5xx response.
    Status(u16),
    /// No response: connect error, reset, timeout.
    LocalFailure,
}

#[derive(Debug)]
struct Ewma {
    rtt_ns: f64,
    stamp: Instant,
}

/// Everything known about one endpoint. Kept across config reloads while the endpoint's
/// address, protocol and health check settings stay the same.
#[derive(Debug)]
pub struct EndpointState {
    pub authority: Authority,
    pub check_config: Option<HealthCheck>,
    pub h2: bool,
    in_flight: AtomicU64,
    requests: AtomicU64,
    healthy: AtomicBool,
    /// Process-clock ms ([`now_ms`]) of the last transition to healthy (or of creation).
    healthy_since_ms: AtomicU64,
    checks: Mutex<CheckCounters>,
    ejected_until_ms: AtomicU64,
    outlier: Mutex<OutlierCounters>,
    ewma: Mutex<Ewma>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for EndpointState {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

/// Decrements an endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A consistent copy of an endpoint's state for `GET /backends`.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub healthy: bool,
    pub checks: CheckCounters,
    pub ejected_until: Option<SystemTime>,
    pub ejections: u64,
    pub in_flight: u64,
    pub requests: u64,
    pub ewma_ms: f64,
    /// Unix ms since when the endpoint has been available (healthy and not ejected); 0 while
    /// it is not.
    pub available_since_ms: u64,
}

impl EndpointState {
    pub fn new(authority: Authority, check_config: Option<HealthCheck>, h2: bool) -> Self {
        EndpointState {
            authority,
            check_config,
            h2,
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            healthy_since_ms: AtomicU64::new(now_ms()),
            checks: Mutex::new(CheckCounters::default()),
            ejected_until_ms: AtomicU64::new(0),
            outlier: Mutex::new(OutlierCounters::default()),
            ewma: Mutex::new(Ewma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                stamp: Instant::now(),
            }),
            task: Mutex::new(None),
        }
    }

    /// Passes active checks (or has none).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// In rotation: healthy and not ejected.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_available_by(|| now_ms)
    }

    /// [`Self::is_available`], reading the clock (`now_ms`) only for an endpoint that has
    /// been ejected at some time: the clock read cost ~90 instructions per pick (callgrind),
    /// and an endpoint never ejected is available whatever the time.
    #[inline]
    pub fn is_available_by(&self, now_ms: impl FnOnce() -> u64) -> bool {
        if !self.is_healthy() {
            return false;
        }
        // 0: never ejected (`now_ms` is never 0), so no clock read.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as started; the guard ends it.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records a response latency (or a failure) into the peak-EWMA estimate.
    pub fn observe_latency(&self, rtt: Duration, failed: bool, decay: Duration) {
        self.observe_latency_at(rtt, failed, decay, Instant::now());
    }

    /// [`Self::observe_latency`] at `now`, the time the try ended: the caller's clock reading,
    /// so no second one is taken here.
    pub fn observe_latency_at(&self, rtt: Duration, failed: bool, decay: Duration, now: Instant) {
        let rtt = if failed {
            rtt.max(FAILURE_PENALTY)
        } else {
            rtt
        };
        let rtt = nanos_f64(rtt);
        let mut e = lock(&self.ewma);
        if rtt > e.rtt_ns {
            e.rtt_ns = rtt; // peak: jump up at once
        } else {
            let elapsed = nanos_f64(now.saturating_duration_since(e.stamp));
            let w = (-elapsed / nanos_f64(decay).max(1.0)).exp();
            e.rtt_ns = e.rtt_ns * w + rtt * (1.0 - w);
        }
        e.stamp = now;
    }

    /// `latency × (in-flight + 1)`, the estimate decayed for the time since the last sample
    /// (as tower's PeakEwma does), in nanoseconds.
    pub fn ewma_cost(&self, decay: Duration) -> f64 {
        let mut e = lock(&self.ewma);
        let now = Instant::now();
        let elapsed = nanos_f64(now.saturating_duration_since(e.stamp));
        let w = (-elapsed / nanos_f64(decay).max(1.0)).exp();
        e.rtt_ns *= w;
        e.stamp = now;
        let pending = self.in_flight() as f64;
        e.rtt_ns * (pending + 1.0)
    }

    fn ewma_ms(&self) -> f64 {
        lock(&self.ewma).rtt_ns / 1e6
    }

    /// Applies one active check result; logs (and counts) healthy/unhealthy transitions.
    pub fn record_check(&self, backend: &str, cfg: &HealthCheck, ok: bool, detail: String) {
        let mut c = lock(&self.checks);
        if ok {
            c.passed += 1;
            c.consecutive_successes = c.consecutive_successes.saturating_add(1);
            c.consecutive_failures = 0;
        } else {
            c.failed += 1;
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.consecutive_successes = 0;
        }
        let healthy = self.is_healthy();
        if healthy && !ok && c.consecutive_failures >= cfg.unhealthy_threshold {
            self.healthy.store(false, Ordering::Relaxed);
            c.transitions += 1;
            tracing::warn!(
                target: "weir::health",
                backend,
                endpoint = %self.authority,
                healthy = false,
                consecutive_failures = c.consecutive_failures,
                check = %detail,
                "endpoint unhealthy: out of rotation"
            );
        } else if !healthy && ok && c.consecutive_successes >= cfg.healthy_threshold {
            self.healthy_since_ms.store(now_ms(), Ordering::Relaxed);
            self.healthy.store(true, Ordering::Relaxed);
            c.transitions += 1;
            tracing::info!(
                target: "weir::health",
                backend,
                endpoint = %self.authority,
                healthy = true,
                consecutive_successes = c.consecutive_successes,
                "endpoint healthy: back in rotation"
            );
        }
        c.last = Some(CheckResult {
            ok,
            at: SystemTime::now(),
            detail,
        });
    }

    /// Counts a try's outcome; returns true when a threshold is reached and the endpoint
    /// should be ejected (the caller applies the ejection cap).
    pub fn outlier_trips(&self, outcome: Outcome, cfg: &OutlierDetection) -> bool {
        let mut o = lock(&self.outlier);
        match outcome {
            Outcome::Success => {
                o.consecutive_5xx = 0;
                o.consecutive_gateway = 0;
                o.consecutive_local = 0;
                return false;
            }
            Outcome::Status(s) => {
                o.consecutive_5xx += 1;
                if matches!(s, 502..=504) {
                    o.consecutive_gateway += 1;
                } else {
                    o.consecutive_gateway = 0;
                }
                o.consecutive_local = 0;
            }
            Outcome::LocalFailure => {
                o.consecutive_5xx += 1;
                o.consecutive_gateway += 1;
                o.consecutive_local += 1;
            }
        }
        let hit = |n: u32, threshold: u32| threshold > 0 && n >= threshold;
        let trips = hit(o.consecutive_5xx, cfg.consecutive_5xx)
            || hit(o.consecutive_gateway, cfg.consecutive_gateway_errors)
            || hit(o.consecutive_local, cfg.consecutive_local_failures);
        if trips {
            o.consecutive_5xx = 0;
            o.consecutive_gateway = 0;
            o.consecutive_local = 0;
        }
        trips
    }

    /// Ejects the endpoint for `base × 2^(n-1)` (capped); returns the ejection length.
    pub fn eject(&self, backend: &str, cfg: &OutlierDetection) -> Duration {
        let mut o = lock(&self.outlier);
        let now = now_ms();
        let max = cfg.max_ejection_time.get();
        // One ejection forgiven per maxEjectionTime spent without being ejected.
        if o.last_change_ms > 0 {
            let quiet = now.saturating_sub(o.last_change_ms) / (max.as_millis().max(1) as u64);
            o.ejections = o
                .ejections
                .saturating_sub(quiet.min(u32::MAX as u64) as u32);
        }
        let shift = o.ejections.min(20);
        let length = cfg
            .base_ejection_time
            .get()
            .saturating_mul(1u32 << shift)
            .min(max);
        o.ejections = o.ejections.saturating_add(1);
        o.ejections_total += 1;
        let until = now + length.as_millis() as u64;
        o.last_change_ms = until;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        tracing::warn!(
            target: "weir::health",
            backend,
            endpoint = %self.authority,
            ejected_for = ?length,
            ejections = o.ejections,
            "endpoint ejected (passive outlier detection)"
        );
        length
    }

    pub fn view(&self) -> EndpointView {
        let now = now_ms();
        let checks = lock(&self.checks);
        let healthy = self.is_healthy();
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let ejected_until =
            (until > now).then(|| SystemTime::now() + Duration::from_millis(until - now));
        let ejections = lock(&self.outlier).ejections_total;
        // Available again at the later of: turning healthy, the last ejection ending.
        let available_since_ms = if healthy && until <= now {
            // Process-clock ms → Unix ms through the epoch's fixed offset (stable across views).
            let since = self.healthy_since_ms.load(Ordering::Relaxed).max(until);
            epoch_pair().1 + since.saturating_sub(1)
        } else {
            0
        };
        EndpointView {
            healthy,
            checks: checks.clone(),
            ejected_until,
            ejections,
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            ewma_ms: self.ewma_ms(),
            available_since_ms,
        }
    }

    /// Starts the active checker of this endpoint when it has a check and none runs yet.
    /// Needs a Tokio runtime; without one (e.g. `weir-dataplane check`) nothing starts.
    pub fn ensure_checker(self: &Arc<Self>, backend: &str) {
        let Some(cfg) = self.check_config.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut task = lock(&self.task);
        if task.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let backend = backend.to_string();
        let join = handle.spawn(check_loop(weak, backend, cfg));
        *task = Some(join.abort_handle());
    }
}

/// `now` for [`EndpointState::is_available`].
pub fn clock_ms() -> u64 {
    now_ms()
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(fastrand::u64(
            0..=max.as_nanos().min(u64::MAX as u128) as u64,
        ))
    }
}

/// Checks one endpoint every `interval + jitter` until its state is dropped.
async fn check_loop(state: Weak<EndpointState>, backend: String, cfg: HealthCheck) {
    let mut wait = jitter(cfg.jitter.get());
    loop {
        tokio::time::sleep(wait).await;
        wait = cfg.interval.get() + jitter(cfg.jitter.get());
        let Some((authority, h2)) = state.upgrade().map(|s| (s.authority.clone(), s.h2)) else {
            return;
        };
        let timeout = cfg.timeout.get();
        let (ok, detail) =
            match tokio::time::timeout(timeout, check_once(&authority, &cfg, h2)).await {
                Ok(Ok(d)) => (true, d),
                Ok(Err(d)) => (false, d),
                Err(_) => (false, format!("timed out after {timeout:?}")),
            };
        let Some(s) = state.upgrade() else { return };
        tracing::debug!(target: "weir::health", backend = %backend, endpoint = %authority, ok, detail = %detail, "health check");
        s.record_check(&backend, &cfg, ok, detail);
    }
}

/// One check over a fresh connection (so a dead process is noticed even when pooled
/// connections linger). `Ok(detail)` passes.
async fn check_once(authority: &Authority, cfg: &HealthCheck, h2: bool) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let Some(http) = &cfg.http else {
        return Ok("connected".into());
    };
    let host = http.host.clone().unwrap_or_else(|| authority.to_string());
    let io = TokioIo::new(stream);
    let status = if h2 {
        let uri = format!("http://{host}{}", http.path);
        let req = Request::get(uri)
            .header(header::USER_AGENT, "weir-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let r = sender.send_request(req).await;
        conn.abort();
        r.map_err(|e| format!("request: {e}"))?.status()
    } else {
        let req = Request::get(http.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "weir-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let r = sender.send_request(req).await;
        conn.abort();
        r.map_err(|e| format!("request: {e}"))?.status()
    };
    let code = status.as_u16();
    if http.expected_statuses.iter().any(|r| r.contains(code)) {
        Ok(format!("status {code}"))
    } else {
        Err(format!("status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> EndpointState {
        EndpointState::new("127.0.0.1:1".parse().unwrap(), None, false)
    }

    #[test]
    fn thresholds_are_counted_exactly() {
        let s = state();
        let cfg = HealthCheck {
            http: None,
            tcp: Some(Default::default()),
            interval: weir_config::Duration::from_secs(1),
            jitter: weir_config::Duration::from_secs(0),
            timeout: weir_config::Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            panic_mode: false,
        };
        for _ in 0..2 {
            s.record_check("b", &cfg, false, "x".into());
            assert!(s.is_healthy());
        }
        s.record_check("b", &cfg, true, "ok".into()); // breaks the run
        for _ in 0..2 {
            s.record_check("b", &cfg, false, "x".into());
        }
        assert!(s.is_healthy());
        s.record_check("b", &cfg, false, "x".into());
        assert!(!s.is_healthy(), "3rd consecutive failure");
        s.record_check("b", &cfg, true, "ok".into());
        assert!(!s.is_healthy());
        s.record_check("b", &cfg, true, "ok".into());
        assert!(s.is_healthy(), "2nd consecutive success");
        assert_eq!(s.view().checks.transitions, 2);
    }

    #[test]
    fn outlier_triggers_and_exponential_ejection() {
        let s = state();
        let cfg = OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            consecutive_local_failures: 2,
            base_ejection_time: weir_config::Duration::from_secs(10),
            max_ejection_time: weir_config::Duration::from_secs(35),
            max_ejection_percent: 100,
        };
        assert!(!s.outlier_trips(Outcome::Status(500), &cfg));
        assert!(!s.outlier_trips(Outcome::Status(503), &cfg));
        assert!(!s.outlier_trips(Outcome::Success, &cfg));
        assert!(!s.outlier_trips(Outcome::LocalFailure, &cfg));
        assert!(s.outlier_trips(Outcome::LocalFailure, &cfg), "2 local");
        assert!(
            !s.outlier_trips(Outcome::Status(500), &cfg),
            "counters reset"
        );
        assert_eq!(s.eject("b", &cfg), Duration::from_secs(10));
        assert!(s.is_ejected(clock_ms()));
        assert!(!s.is_available(clock_ms()));
        assert_eq!(s.eject("b", &cfg), Duration::from_secs(20));
        assert_eq!(s.eject("b", &cfg), Duration::from_secs(35), "capped");
    }

    #[test]
    fn ewma_peaks_then_decays() {
        let s = state();
        let decay = Duration::from_secs(10);
        s.observe_latency(Duration::from_millis(500), false, decay);
        assert!(s.ewma_ms() >= 499.0);
        s.observe_latency(Duration::from_millis(1), false, decay);
        assert!(
            s.ewma_ms() > 1.0,
            "one fast sample does not erase the peak at once"
        );
        s.observe_latency(Duration::from_millis(1), true, decay);
        assert!(s.ewma_ms() >= 999.0, "failures cost the penalty");
    }
}
