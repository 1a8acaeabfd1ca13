//! Pushing snapshots to dataplane pods (`PUT /config` on `podIP:adminPort`).
//!
//! The pusher tracks, per pod, the version it acknowledged. It pushes when the desired version
//! changes, when a pod is new or restarted (uid or container restarts changed), and when a
//! periodic poll shows a pod running something else (a restarted process). The poll is
//! `GET /backends` (running version + per-endpoint health), or `GET /config` on dataplanes
//! without it. Pushes
//! run with bounded concurrency; failures are retried with exponential backoff; a snapshot a
//! pod rejects (422) is not retried until the desired version changes.
//!
//! A pod that runs one of the last few versions gets only what changed since
//! (`PATCH /config` with a [`weir_config::Delta`]; at 10,000 routes a single-route change is
//! ~1 KB instead of the 2 MB snapshot). It answers 409 when it runs another version by then
//! (and an older dataplane 405): the pusher then sends the whole snapshot (`PUT /config`).
//! Each body is serialized once per round, not once per pod.

use crate::error::Error;
use crate::metrics::METRICS;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use weir_config::{Delta, FieldError, Snapshot};

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
    SnapshotBody::new(snapshot)
        .for_pod(snapshot, pod_ip)
        .to_vec()
}

/// A snapshot serialized once for every pod of a round. Serializing 10,000 routes (2 MB of
/// JSON) once per pod, after cloning the snapshot to substitute `$(POD_IP)`, was the
/// operator's main cost per change; now only the listeners are serialized per pod, and only
/// when one of them binds `$(POD_IP)`.
pub struct SnapshotBody {
    bytes: Bytes,
    /// Where the `listeners` array sits in `bytes`, when a listener address names
    /// `$(POD_IP)` and so differs per pod.
    listeners: Option<std::ops::Range<usize>>,
}

impl SnapshotBody {
    pub fn new(snapshot: &Snapshot) -> SnapshotBody {
        // Serializing plain data types cannot fail.
        let bytes = serde_json::to_vec(snapshot).unwrap_or_default();
        let per_pod = snapshot
            .listeners
            .iter()
            .any(|l| l.address.contains(POD_IP_PLACEHOLDER));
        // serde_json writes the `listeners` field exactly as it writes the array alone; the
        // key is at the top level, so its first occurrence is the field (routes have a
        // `listeners` field too, but of names: never this array of objects).
        let listeners = per_pod
            .then(|| {
                let mut needle = b"\"listeners\":".to_vec();
                needle.extend(serde_json::to_vec(&snapshot.listeners).unwrap_or_default());
                let at = bytes.windows(needle.len()).position(|w| w == needle)?;
                Some(at + b"\"listeners\":".len()..at + needle.len())
            })
            .flatten();
        SnapshotBody {
            bytes: Bytes::from(bytes),
            listeners,
        }
    }

    /// The body for the pod at `pod_ip`: the shared bytes, or a copy with the listeners
    /// re-serialized with the pod's address.
    pub fn for_pod(&self, snapshot: &Snapshot, pod_ip: &str) -> Bytes {
        let Some(range) = &self.listeners else {
            return self.bytes.clone();
        };
        // `ip:port` needs brackets around an IPv6 address.
        let ip = if pod_ip.contains(':') {
            format!("[{pod_ip}]")
        } else {
            pod_ip.to_string()
        };
        let mut listeners = snapshot.listeners.clone();
        for l in &mut listeners {
            l.address = l.address.replace(POD_IP_PLACEHOLDER, &ip);
        }
        let listeners = serde_json::to_vec(&listeners).unwrap_or_default();
        let mut out = Vec::with_capacity(self.bytes.len() + listeners.len());
        out.extend_from_slice(&self.bytes[..range.start]);
        out.extend_from_slice(&listeners);
        out.extend_from_slice(&self.bytes[range.end..]);
        Bytes::from(out)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// How many earlier versions the pusher keeps to compute deltas from: a pod running one of
/// them gets a `PATCH`, one further behind the whole snapshot. Each kept version is a full
/// snapshot in memory (at 10,000 routes ~10 MB), so few.
pub const DELTA_BASES: usize = 4;

/// The `PATCH /config` body taking a pod from `base` to `new`, or `None` when the whole
/// snapshot is the better (or only) way: see [`Delta::between`]; also when more than half the
/// routes changed, since the pod recompiles the same either way and the delta saves little.
pub fn delta_body(base: &Snapshot, new: &Snapshot) -> Option<Bytes> {
    let d = Delta::between(base, new)?;
    if d.routes.len() + d.remove_routes.len() > new.routes.len() / 2 + 1 {
        return None;
    }
    serde_json::to_vec(&d).ok().map(Bytes::from)
}

/// What one round pushes: the snapshot, its body (serialized on first need, once), and a
/// delta for each earlier version some pod runs.
struct Bodies {
    snapshot: Arc<Snapshot>,
    full: tokio::sync::OnceCell<SnapshotBody>,
    /// Base version -> `PATCH /config` body.
    deltas: HashMap<String, Bytes>,
}

impl Bodies {
    async fn full_for(&self, pod_ip: &str) -> Bytes {
        self.full
            .get_or_init(|| async { SnapshotBody::new(&self.snapshot) })
            .await
            .for_pod(&self.snapshot, pod_ip)
    }
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
    body: Option<Bytes>,
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
        .body(Full::new(body.unwrap_or_default()))
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

/// `PUT /config` (the whole snapshot) or `PATCH /config` (a delta); `None` when a PATCH
/// cannot be applied (409 another base version, 400 a delta that does not fit it, 404/405 a
/// dataplane without `PATCH`) and the whole snapshot has to go instead.
async fn send_config(
    client: &HttpClient,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Bytes,
    t: Duration,
) -> Option<Outcome> {
    let patch = method == Method::PATCH;
    let what = if patch {
        "PATCH /config"
    } else {
        "PUT /config"
    };
    let kind = if patch { "delta" } else { "full" };
    METRICS
        .push_bytes
        .with_label_values(&[kind])
        .inc_by(body.len() as u64);
    Some(
        match call(client, method, url, token, Some(body), t).await {
            Ok((StatusCode::OK, v)) => match v.get("version").and_then(|v| v.as_str()) {
                Some(ver) => Outcome::Running(ver.to_string()),
                None => Outcome::Failed(Error::PodNoVersion(what)),
            },
            Ok((
                status @ (StatusCode::CONFLICT
                | StatusCode::BAD_REQUEST
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED),
                v,
            )) if patch => {
                tracing::debug!(%status, answer = %v, "PATCH /config not applied; sending the whole snapshot");
                return None;
            }
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
            Ok((status, body)) => Outcome::Failed(Error::PodStatus { what, status, body }),
            Err(e) => Outcome::Failed(e),
        },
    )
}

/// Syncs one pod: verify (when asked or unknown), then push when it runs something else.
/// Returns the new state and whether the pod needs another try.
#[tracing::instrument(level = "debug", skip_all, fields(pod = %target.key, version = %bodies.snapshot.version))]
async fn sync_pod(
    client: &HttpClient,
    cfg: &PusherConfig,
    token: Option<&str>,
    target: &PodTarget,
    mut state: PodState,
    bodies: &Bodies,
    verify: bool,
) -> (PodState, bool, bool) {
    let snapshot = &*bodies.snapshot;
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
    let t = cfg.request_timeout;
    let delta = state.acked.as_ref().and_then(|v| bodies.deltas.get(v));
    let mut outcome = None;
    if let Some(d) = delta {
        outcome = send_config(client, Method::PATCH, &base, token, d.clone(), t).await;
    }
    let kind = if outcome.is_some() { "delta" } else { "full" };
    let outcome = match outcome {
        Some(o) => o,
        None => {
            let body = bodies.full_for(&target.ip).await;
            send_config(client, Method::PUT, &base, token, body, t)
                .await
                .unwrap_or(Outcome::Empty)
        }
    };
    match outcome {
        Outcome::Running(v) => {
            METRICS.push_ok.inc();
            tracing::info!(pod = %target.key, version = %v, kind, "pushed snapshot");
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
    // The last versions pushed, newest last: the bases of deltas.
    let mut recent: VecDeque<Arc<Snapshot>> = VecDeque::new();
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
        if recent.back().map(|s| &s.version) != Some(&snapshot.version) {
            recent.push_back(snapshot.clone());
            while recent.len() > DELTA_BASES {
                recent.pop_front();
            }
        }
        // One delta per version the pods run (usually one: the previous), computed once.
        let started = std::time::Instant::now();
        let mut deltas = HashMap::new();
        for base in work.iter().filter_map(|(_, s)| s.acked.as_ref()) {
            if base == &snapshot.version || deltas.contains_key(base) {
                continue;
            }
            if let Some(old) = recent.iter().find(|s| &s.version == base) {
                if let Some(d) = delta_body(old, &snapshot) {
                    deltas.insert(base.clone(), d);
                }
            }
        }
        tracing::debug!(
            version = %snapshot.version,
            pods = work.len(),
            verify,
            deltas = deltas.len(),
            delta_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "push round"
        );
        let bodies = Bodies {
            snapshot: snapshot.clone(),
            full: tokio::sync::OnceCell::new(),
            deltas,
        };
        let results: Vec<(String, PodState, bool, bool)> = futures_util::stream::iter(work)
            .map(|(target, state)| {
                let client = &client;
                let cfg = &cfg;
                let tok = tok.as_deref();
                let bodies = &bodies;
                async move {
                    let (s, retry, unauth) =
                        sync_pod(client, cfg, tok, &target, state, bodies, verify).await;
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

    fn snapshot<N: AsRef<str>, V: AsRef<str>>(listener: &str, routes: &[(N, V)]) -> Snapshot {
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .map(|(n, v)| {
                let (n, v) = (n.as_ref(), v.as_ref());
                serde_json::json!({"name": n, "hostnames": [format!("{n}.test")], "rules": [{
                    "filters": {"responseHeaders": {"set": [{"name": "x", "value": v}]}},
                    "backendRefs": [{"name": "b"}]}]})
            })
            .collect();
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "listeners": [{"name": "http", "address": listener, "protocol": "http"}],
            "backends": {"b": {"endpoints": ["127.0.0.1:1"]}},
            "routes": routes,
        }))
        .unwrap();
        s.version = s.content_hash();
        s
    }

    /// The body spliced from one serialization is byte for byte what cloning the snapshot,
    /// substituting and serializing it gave (the former per-pod way), IPv6 bracketed.
    #[test]
    fn spliced_bodies_equal_whole_serializations() {
        for listener in ["$(POD_IP):8080", "0.0.0.0:8080"] {
            let s = snapshot(listener, &[("a", "1"), ("listeners", "2")]);
            let body = SnapshotBody::new(&s);
            for ip in ["10.0.0.7", "fd00::7"] {
                let mut want = s.clone();
                let bracketed = if ip.contains(':') {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                want.listeners[0].address = listener.replace(POD_IP_PLACEHOLDER, &bracketed);
                let got = body.for_pod(&s, ip);
                assert_eq!(
                    &got[..],
                    &serde_json::to_vec(&want).unwrap()[..],
                    "{listener} {ip}"
                );
                assert_eq!(body_for(&s, ip), got.to_vec());
            }
        }
    }

    #[test]
    fn deltas_carry_only_the_change_and_give_way_to_big_ones() {
        let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        let v = |changed: usize| -> Snapshot {
            let routes: Vec<(&String, &str)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n, if i < changed { "new" } else { "old" }))
                .collect();
            snapshot("$(POD_IP):80", &routes)
        };
        let (old, one, most) = (v(0), v(1), v(7));
        let d = delta_body(&old, &one).expect("a delta for one route");
        let d = weir_config::parse_delta_json(&d).unwrap();
        assert_eq!(d.routes.len(), 1);
        assert_eq!(d.apply(&old).unwrap(), one);
        assert!(delta_body(&old, &most).is_none(), "7 of 10 routes: whole");
    }

    /// A stand-in dataplane on a real socket: answers `GET /backends` with its version,
    /// `PUT /config` with the body's version, and `PATCH /config` as told (applying the delta
    /// to what it holds when 200); records every method and body size.
    async fn fake_pod(
        patch_status: StatusCode,
    ) -> (
        u16,
        Arc<Mutex<Vec<(Method, usize)>>>,
        Arc<Mutex<Option<Snapshot>>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<(Method, usize)>>> = Default::default();
        let held: Arc<Mutex<Option<Snapshot>>> = Default::default();
        let (l, h) = (log.clone(), held.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (l, h) = (l.clone(), h.clone());
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (l, h) = (l.clone(), h.clone());
                    async move {
                        let method = req.method().clone();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        l.lock().unwrap().push((method.clone(), body.len()));
                        let mut held = h.lock().unwrap();
                        let version = held.as_ref().map(|s| s.version.clone());
                        let (status, v) = match (method, path.as_str()) {
                            (Method::GET, "/backends") => match version {
                                Some(v) => (
                                    StatusCode::OK,
                                    serde_json::json!({"version": v, "backends": {}}),
                                ),
                                None => (StatusCode::NOT_FOUND, serde_json::json!({})),
                            },
                            (Method::GET, "/config") => {
                                (StatusCode::NOT_FOUND, serde_json::json!({}))
                            }
                            (Method::PUT, "/config") => {
                                let s = weir_config::parse_json(&body).unwrap();
                                let v = s.version.clone();
                                *held = Some(s);
                                (StatusCode::OK, serde_json::json!({"version": v}))
                            }
                            (Method::PATCH, "/config") if patch_status == StatusCode::OK => {
                                let d = weir_config::parse_delta_json(&body).unwrap();
                                assert_eq!(Some(&d.base_version), version.as_ref());
                                let s = d.apply(held.as_ref().unwrap()).unwrap();
                                *held = Some(s);
                                (StatusCode::OK, serde_json::json!({"version": d.version}))
                            }
                            _ => (patch_status, serde_json::json!({"error": "test"})),
                        };
                        let body = Full::new(Bytes::from(serde_json::to_vec(&v).unwrap()));
                        let mut resp = http::Response::new(body);
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        (port, log, held)
    }

    /// Pushes v1 then v2 (one route changed) to one pod through [`run`]; returns the pod's
    /// request log and what it holds at the end.
    async fn push_two_versions(patch_status: StatusCode) -> (Vec<(Method, usize)>, Snapshot) {
        let (port, log, held) = fake_pod(patch_status).await;
        let cfg = PusherConfig {
            admin_port: port,
            concurrency: 2,
            verify_interval: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            token: TokenSource::None,
        };
        let routes: Vec<(String, String)> =
            (0..50).map(|i| (format!("r{i}"), "1".into())).collect();
        let v1 = snapshot("$(POD_IP):8080", &routes);
        let mut changed = routes.clone();
        changed[7].1 = "2".into();
        let v2 = snapshot("$(POD_IP):8080", &changed);
        let pod = PodTarget {
            key: "ns/p".into(),
            uid: "u".into(),
            ip: "127.0.0.1".into(),
            restarts: 0,
        };
        let (tx, rx) = watch::channel(Desired {
            leader: true,
            snapshot: Some(Arc::new(v1.clone())),
            pods: vec![pod.clone()],
        });
        let states: PodStates = Default::default();
        let progress = Arc::new(Notify::new());
        let task = tokio::spawn(run(cfg, rx, states.clone(), progress.clone()));
        let acked = |want: &str| {
            let (states, progress) = (states.clone(), progress.clone());
            let want = want.to_string();
            async move {
                loop {
                    let done = states
                        .lock()
                        .unwrap()
                        .get("ns/p")
                        .and_then(|s| s.acked.clone())
                        == Some(want.clone());
                    if done {
                        return;
                    }
                    // Woken by the pusher; the sleep only in case a wake-up came in between.
                    tokio::select! {
                        _ = progress.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        };
        let hang = Duration::from_secs(60);
        tokio::time::timeout(hang, acked(&v1.version))
            .await
            .expect("v1 acked");
        tx.send_modify(|d| d.snapshot = Some(Arc::new(v2.clone())));
        tokio::time::timeout(hang, acked(&v2.version))
            .await
            .expect("v2 acked");
        task.abort();
        let got = held.lock().unwrap().clone().unwrap();
        assert_eq!(got.listeners[0].address, "127.0.0.1:8080");
        let mut want = v2;
        want.listeners[0].address = "127.0.0.1:8080".into();
        assert_eq!(got, want);
        let log = log.lock().unwrap().clone();
        (log, got)
    }

    #[tokio::test]
    async fn a_pod_on_the_previous_version_gets_a_delta() {
        let (log, _) = push_two_versions(StatusCode::OK).await;
        let methods: Vec<&Method> = log.iter().map(|(m, _)| m).collect();
        assert_eq!(
            methods,
            [&Method::GET, &Method::GET, &Method::PUT, &Method::PATCH],
            "{log:?}"
        );
        let (put, patch) = (log[2].1, log[3].1);
        assert!(patch * 10 < put, "delta {patch} bytes vs snapshot {put}");
    }

    /// 409 (another base), 400 (a delta that does not fit) or 405 (a dataplane without
    /// PATCH): the whole snapshot follows at once.
    #[tokio::test]
    async fn a_refused_delta_falls_back_to_the_whole_snapshot() {
        for status in [
            StatusCode::CONFLICT,
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
        ] {
            let (log, _) = push_two_versions(status).await;
            let methods: Vec<&Method> = log.iter().map(|(m, _)| m).collect();
            assert_eq!(
                methods,
                [
                    &Method::GET,
                    &Method::GET,
                    &Method::PUT,
                    &Method::PATCH,
                    &Method::PUT
                ],
                "{status}: {log:?}"
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
