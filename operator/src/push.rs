//! Pushing snapshots to dataplane pods (`PUT /config` on `podIP:adminPort`).
//!
//! The pusher tracks, per pod, the version it acknowledged. It pushes when the desired version
//! changes, when a pod is new or restarted (uid or container restarts changed), and when a
//! periodic poll shows a pod running something else (a restarted process). The poll is
//! `GET /backends` (running version + per-endpoint health), or `GET /config` on dataplanes
//! without it. Pushes
//! run with bounded concurrency; failures are retried with exponential backoff; a snapshot a
//! pod rejects (422) is not retried until the desired version changes.

use crate::error::Error;
use crate::metrics::METRICS;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use weir_config::{FieldError, Snapshot};

pub use crate::compile::POD_IP_PLACEHOLDER;

/// A ready dataplane pod to push to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub ip: String,
    /// Sum of container restart counts; a change means the process restarted.
    pub restarts: i32,
}

/// What the controller wants the pods to run.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub leader: bool,
    pub snapshot: Option<Arc<Snapshot>>,
    pub pods: Vec<PodTarget>,
}

/// What the pusher knows about one pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodState {
    pub uid: String,
    pub restarts: i32,
    /// The version the pod acknowledged or reported running.
    pub acked: Option<String>,
    /// The desired version the pod rejected, with its errors.
    pub rejected: Option<(String, Vec<FieldError>)>,
    pub last_error: Option<String>,
    /// Endpoint health from the pod's last `GET /backends`; `None` until one succeeded.
    pub health: Option<HealthReport>,
    /// Telemetry sink counters from the pod's last `GET /sinks` (asked while the snapshot
    /// has sinks); `None` when unknown.
    pub sinks: Option<SinkReport>,
    /// The pusher has tried this pod at least once (so `acked`/`health` are not just
    /// "not asked yet"); status waits for this, so a restarted operator does not write
    /// "unknown" over a status that is still true.
    pub polled: bool,
}

/// One pod's view of endpoint health: backend name -> endpoint address -> health.
pub type HealthReport = BTreeMap<String, BTreeMap<String, EndpointHealth>>;

/// One endpoint as one pod sees it (only the fields status needs, so counters and
/// timestamps in the report cause no status churn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    /// In rotation: healthy and not ejected.
    pub available: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// Parses a `GET /backends` document: `{"version", "backends": {name: {"endpoints": [{
/// "address", "healthy", "available", "activeCheck": {"lastCheck": {"result", "detail"}},
/// "ejectedUntil"}]}}}`. Unknown fields are ignored; missing ones default to healthy.
pub fn parse_backends_report(v: &serde_json::Value) -> Option<(String, HealthReport)> {
    let version = v.get("version")?.as_str()?.to_string();
    let mut out = HealthReport::new();
    for (name, b) in v.get("backends")?.as_object()? {
        let mut eps = BTreeMap::new();
        for ep in b
            .get("endpoints")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            let Some(addr) = ep.get("address").and_then(|a| a.as_str()) else {
                continue;
            };
            let healthy = ep.get("healthy").and_then(|h| h.as_bool()).unwrap_or(true);
            let available = ep
                .get("available")
                .and_then(|h| h.as_bool())
                .unwrap_or(healthy);
            let reason = if available {
                None
            } else if !healthy {
                let detail = ep
                    .pointer("/activeCheck/lastCheck/detail")
                    .and_then(|d| d.as_str())
                    .filter(|d| !d.is_empty());
                Some(match detail {
                    Some(d) => format!("health check failing: {d}"),
                    None => "health check failing".to_string(),
                })
            } else {
                Some("ejected by outlier detection".to_string())
            };
            eps.insert(addr.to_string(), EndpointHealth { available, reason });
        }
        out.insert(name.clone(), eps);
    }
    Some((version, out))
}

/// One pod's telemetry sink counters: sink name -> counters.
pub type SinkReport = BTreeMap<String, SinkCounters>;

/// What one pod reports about one sink (`GET /sinks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkCounters {
    pub shipped: u64,
    pub dropped: u64,
    pub failed: u64,
    /// RFC 3339 time of the last successful send.
    pub last_success: Option<String>,
}

/// Parses a `GET /sinks` document: `{"sinks": {name: {"shipped", "dropped", "failed",
/// "lastSuccess"}}}`; unknown fields are ignored.
pub fn parse_sinks_report(v: &serde_json::Value) -> Option<SinkReport> {
    let mut out = SinkReport::new();
    for (name, s) in v.get("sinks")?.as_object()? {
        let n = |f: &str| s.get(f).and_then(|v| v.as_u64()).unwrap_or(0);
        out.insert(
            name.clone(),
            SinkCounters {
                shipped: n("shipped"),
                dropped: n("dropped"),
                failed: n("failed"),
                last_success: s
                    .get("lastSuccess")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            },
        );
    }
    Some(out)
}

pub type PodStates = Arc<Mutex<BTreeMap<String, PodState>>>;

/// Where the admin bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    None,
    Static(String),
    File(std::path::PathBuf),
    Secret {
        api: Box<kube::Api<k8s_openapi::api::core::v1::Secret>>,
        name: String,
        key: String,
    },
}

impl TokenSource {
    async fn read(&self) -> Result<Option<String>, Error> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::File(p) => tokio::fs::read_to_string(p)
                .await
                .map(|t| Some(t.trim().to_string()))
                .map_err(|source| Error::AdminTokenFile {
                    path: p.clone(),
                    source,
                }),
            TokenSource::Secret { api, name, key } => {
                let s = api
                    .get(name)
                    .await
                    .map_err(|source| Error::AdminTokenSecret {
                        name: name.clone(),
                        source,
                    })?;
                let v = s.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
                    Error::AdminTokenKey {
                        name: name.clone(),
                        key: key.clone(),
                    }
                })?;
                Ok(Some(String::from_utf8_lossy(&v.0).trim().to_string()))
            }
        }
    }
}

#[derive(Clone)]
pub struct PusherConfig {
    pub admin_port: u16,
    pub concurrency: usize,
    pub verify_interval: Duration,
    pub request_timeout: Duration,
    pub token: TokenSource,
}

/// The per-pod snapshot body: the canonical snapshot with `$(POD_IP)` substituted.
pub fn body_for(snapshot: &Snapshot, pod_ip: &str) -> Vec<u8> {
    let mut s = snapshot.clone();
    for l in &mut s.listeners {
        if l.address.contains(POD_IP_PLACEHOLDER) {
            l.address = l.address.replace(POD_IP_PLACEHOLDER, pod_ip);
        }
    }
    serde_json::to_vec(&s).unwrap_or_default()
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How soon pods that failed are tried again: 400 ms, doubling per round that still has a
/// failure, at most 30 s, never giving up (the pods are still wanted); reset by a round
/// without failures. Jitter is added on top (see [`retry_delay`]).
pub const RETRY: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(400))
    .with_factor(2.0)
    .with_max_delay(Duration::from_secs(30))
    .without_max_times();

/// The next delay of `backoff` plus up to a quarter of it at random, so a fleet of operators
/// (or one operator's many pods) failing together does not retry in lockstep. backon's own
/// jitter adds up to the whole delay; a quarter keeps the retry as prompt as before.
fn retry_delay(backoff: &mut ExponentialBackoff) -> Duration {
    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
    delay + delay.mul_f64(fastrand::f64() / 4.0)
}

enum Outcome {
    /// The pod runs this version now.
    Running(String),
    /// The pod has no config.
    Empty,
    Rejected {
        current: Option<String>,
        errors: Vec<FieldError>,
    },
    Unauthorized,
    Failed(Error),
}

enum Poll {
    Report(String, HealthReport),
    /// The dataplane has no `GET /backends` (older build) or no config yet.
    NotFound,
    Unauthorized,
    Failed(Error),
}

async fn get_backends(client: &HttpClient, url: &str, token: Option<&str>, t: Duration) -> Poll {
    match call(client, Method::GET, url, token, None, t).await {
        Ok((StatusCode::OK, v)) => match parse_backends_report(&v) {
            Some((ver, h)) => Poll::Report(ver, h),
            None => Poll::Failed(Error::PodBadReport),
        },
        Ok((StatusCode::NOT_FOUND, _)) => Poll::NotFound,
        Ok((StatusCode::UNAUTHORIZED, _)) => Poll::Unauthorized,
        Ok((status, body)) => Poll::Failed(Error::PodStatus {
            what: "GET /backends",
            status,
            body,
        }),
        Err(e) => Poll::Failed(e),
    }
}

pub(crate) async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, serde_json::Value), Error> {
    let mut req = Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(Error::PodRequest)?;
    let fut = async {
        let resp = client.request(req).await.map_err(Error::PodUnreachable)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(Error::PodBody)?
            .to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::PodTimeout(timeout))?
}

async fn get_version(client: &HttpClient, url: &str, token: Option<&str>, t: Duration) -> Outcome {
    match call(client, Method::GET, url, token, None, t).await {
        Ok((StatusCode::OK, v)) => match v.get("version").and_then(|v| v.as_str()) {
            Some(ver) => Outcome::Running(ver.to_string()),
            None => Outcome::Failed(Error::PodNoVersion("GET /config")),
        },
        Ok((StatusCode::NOT_FOUND, _)) => Outcome::Empty,
        Ok((StatusCode::UNAUTHORIZED, _)) => Outcome::Unauthorized,
        Ok((status, body)) => Outcome::Failed(Error::PodStatus {
            what: "GET /config",
            status,
            body,
        }),
        Err(e) => Outcome::Failed(e),
    }
}

async fn put(
    client: &HttpClient,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
    t: Duration,
) -> Outcome {
    match call(client, Method::PUT, url, token, Some(body), t).await {
        Ok((StatusCode::OK, v)) => match v.get("version").and_then(|v| v.as_str()) {
            Some(ver) => Outcome::Running(ver.to_string()),
            None => Outcome::Failed(Error::PodNoVersion("PUT /config")),
        },
        Ok((StatusCode::UNPROCESSABLE_ENTITY, v)) => Outcome::Rejected {
            current: v
                .get("currentVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            errors: v
                .get("errors")
                .cloned()
                .and_then(|e| serde_json::from_value(e).ok())
                .unwrap_or_default(),
        },
        Ok((StatusCode::UNAUTHORIZED, _)) => Outcome::Unauthorized,
        Ok((status, body)) => Outcome::Failed(Error::PodStatus {
            what: "PUT /config",
            status,
            body,
        }),
        Err(e) => Outcome::Failed(e),
    }
}

/// Syncs one pod: verify (when asked or unknown), then push when it runs something else.
/// Returns the new state and whether the pod needs another try.
#[tracing::instrument(level = "debug", skip_all, fields(pod = %target.key, version = %snapshot.version))]
async fn sync_pod(
    client: &HttpClient,
    cfg: &PusherConfig,
    token: Option<&str>,
    target: &PodTarget,
    mut state: PodState,
    snapshot: &Snapshot,
    verify: bool,
) -> (PodState, bool, bool) {
    let base = format!("http://{}/config", host_port(&target.ip, cfg.admin_port));
    let want = &snapshot.version;
    let mut unauthorized = false;
    let mut polled = false;
    let verify = verify || !state.polled;
    state.polled = true;
    if verify {
        let url = format!("http://{}/backends", host_port(&target.ip, cfg.admin_port));
        match get_backends(client, &url, token, cfg.request_timeout).await {
            Poll::Report(v, h) => {
                state.acked = Some(v);
                state.health = Some(h);
                polled = true;
            }
            Poll::NotFound => state.health = None,
            Poll::Unauthorized => unauthorized = true,
            Poll::Failed(e) => {
                state.health = None;
                state.last_error = Some(e.counted().to_string());
                return (state, true, false);
            }
        }
        state.sinks = if snapshot.sinks.is_empty() {
            None
        } else {
            let url = format!("http://{}/sinks", host_port(&target.ip, cfg.admin_port));
            match call(client, Method::GET, &url, token, None, cfg.request_timeout).await {
                Ok((StatusCode::OK, v)) => parse_sinks_report(&v),
                _ => None,
            }
        };
    }
    if !polled && (verify || state.acked.is_none()) {
        match get_version(client, &base, token, cfg.request_timeout).await {
            Outcome::Running(v) => state.acked = Some(v),
            Outcome::Empty => state.acked = None,
            Outcome::Unauthorized => unauthorized = true,
            Outcome::Failed(e) => {
                state.last_error = Some(e.counted().to_string());
                return (state, true, false);
            }
            Outcome::Rejected { .. } => {}
        }
    }
    if state.acked.as_deref() == Some(want.as_str()) {
        state.last_error = None;
        return (state, false, unauthorized);
    }
    if state.rejected.as_ref().is_some_and(|(v, _)| v == want) {
        return (state, false, unauthorized);
    }
    let body = body_for(snapshot, &target.ip);
    match put(client, &base, token, body, cfg.request_timeout).await {
        Outcome::Running(v) => {
            METRICS.push_ok.inc();
            tracing::info!(pod = %target.key, version = %v, "pushed snapshot");
            state.acked = Some(v);
            state.rejected = None;
            state.last_error = None;
            (state, false, false)
        }
        Outcome::Rejected { current, errors } => {
            METRICS.push_rejected.inc();
            tracing::warn!(pod = %target.key, version = %want, errors = ?errors, "pod rejected the snapshot");
            state.acked = current;
            state.rejected = Some((want.clone(), errors));
            (state, false, false)
        }
        Outcome::Unauthorized => {
            METRICS.push_error.inc();
            state.last_error = Some(Error::PodUnauthorized.counted().to_string());
            (state, true, true)
        }
        Outcome::Empty => (state, true, false),
        Outcome::Failed(e) => {
            METRICS.push_error.inc();
            let e = e.counted();
            tracing::debug!(pod = %target.key, error = %e, "push failed");
            state.last_error = Some(e.to_string());
            (state, true, false)
        }
    }
}

pub(crate) fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Runs the pusher until `desired`'s sender is dropped. `progress` is notified whenever a pod's
/// acknowledged version changes, so status can follow.
pub async fn run(
    cfg: PusherConfig,
    mut desired: watch::Receiver<Desired>,
    states: PodStates,
    progress: Arc<Notify>,
) {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.set_nodelay(true);
    let client: HttpClient = Client::builder(hyper_util::rt::TokioExecutor::new()).build(http);
    let mut token: Option<Option<String>> = None;
    // Some while a round has failed pods; `None` starts the policy over.
    let mut backoff: Option<ExponentialBackoff> = None;
    let mut next_verify = tokio::time::Instant::now() + cfg.verify_interval;
    let mut wake = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = desired.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let d = desired.borrow_and_update().clone();
        let Some(snapshot) = d.snapshot.clone().filter(|_| d.leader) else {
            wake = tokio::time::Instant::now() + cfg.verify_interval;
            continue;
        };
        let verify = tokio::time::Instant::now() >= next_verify;
        if verify {
            next_verify = tokio::time::Instant::now() + cfg.verify_interval;
        }
        if token.is_none() {
            match cfg.token.read().await {
                Ok(t) => token = Some(t),
                Err(e) => {
                    let e = e.counted();
                    tracing::warn!(error = %e, kind = e.kind(), "no admin token");
                    token = Some(None);
                }
            }
        }
        let tok = token.clone().flatten();
        // Reconcile the pod set: forget gone pods, reset restarted ones.
        let work: Vec<(PodTarget, PodState)> = {
            let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
            st.retain(|k, _| d.pods.iter().any(|p| &p.key == k));
            d.pods
                .iter()
                .map(|p| {
                    let s = st.entry(p.key.clone()).or_default();
                    if s.uid != p.uid || s.restarts != p.restarts {
                        *s = PodState {
                            uid: p.uid.clone(),
                            restarts: p.restarts,
                            ..Default::default()
                        };
                    }
                    (p.clone(), s.clone())
                })
                .collect()
        };
        let results: Vec<(String, PodState, bool, bool)> = futures_util::stream::iter(work)
            .map(|(target, state)| {
                let client = &client;
                let cfg = &cfg;
                let tok = tok.as_deref();
                let snapshot = &snapshot;
                async move {
                    let (s, retry, unauth) =
                        sync_pod(client, cfg, tok, &target, state, snapshot, verify).await;
                    (target.key, s, retry, unauth)
                }
            })
            .buffer_unordered(cfg.concurrency.max(1))
            .collect()
            .await;
        let mut changed = false;
        let mut any_retry = false;
        {
            let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
            for (key, s, retry, unauth) in results {
                any_retry |= retry;
                if unauth {
                    token = None;
                }
                if let Some(old) = st.get_mut(&key) {
                    if old.acked != s.acked
                        || old.rejected != s.rejected
                        || old.health != s.health
                        || old.sinks != s.sinks
                        || old.polled != s.polled
                    {
                        changed = true;
                    }
                    *old = s;
                }
            }
        }
        if changed {
            progress.notify_one();
        }
        if any_retry {
            let delay = retry_delay(backoff.get_or_insert_with(|| RETRY.build()));
            // Retry the failing pods soon, but keep polling the others on schedule.
            wake = (tokio::time::Instant::now() + delay).min(next_verify);
        } else {
            backoff = None;
            wake = next_verify;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy keeps the pusher's former schedule: 200 ms << failures (at most 8), capped
    /// at 30 s, plus up to a quarter of jitter. (backon multiplies in f32, so a delay may be
    /// some microseconds off the exact doubling.)
    #[test]
    fn retry_policy_keeps_the_former_schedule() {
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(1);
        let mut plain = RETRY.build();
        let mut jittered = RETRY.build();
        for failures in 1u32..=20 {
            let before = Duration::from_millis((200u64 << failures.min(8)).min(30_000));
            let got = plain.next().expect("never gives up");
            assert!(
                close(got, before),
                "after {failures} failed rounds: {got:?}"
            );
            let d = retry_delay(&mut jittered);
            assert!(
                d + Duration::from_millis(1) > before
                    && d < before + before / 4 + Duration::from_millis(1),
                "{d:?} vs {before:?}"
            );
        }
    }

    #[test]
    fn pod_ip_is_substituted_and_version_kept() {
        let mut s: Snapshot = yaml_serde::from_str(
            "listeners: [{name: http, address: '$(POD_IP):8080', protocol: http}]",
        )
        .unwrap();
        s.version = s.content_hash();
        let body = body_for(&s, "127.0.0.2");
        let back = weir_config::parse_json(&body).unwrap();
        assert_eq!(back.listeners[0].address, "127.0.0.2:8080");
        assert_eq!(back.version, s.version);
    }
}
