//! The admin listener: probes, `/drained` (the app's preStop hook), `/health`, `/metrics`, config read/replace, `/backends`,
//! `/sinks`, `/logging`, the status page `/ui` and its data `/ui/state`. Everything but the
//! probes, `/health`, `/metrics` and the page itself (which holds no data) needs the bearer
//! token when one is configured.

use crate::http::body::{full, ProxyBody};
use crate::runtime::compile::Runtime;
use crate::server::Dataplane;
use crate::upstream::backend::BackendRt;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// `GET /drained` gives up after this long unless `timeout=` says otherwise.
const DRAINED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long `GET /drained` waits for the shutdown to begin at all.
const DRAINED_START_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest config body `PUT /config` accepts.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;

/// Replaces the log filter at runtime (an `EnvFilter` directive such as `debug` or
/// `info,weir::access=off`); returns why a directive was refused.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Admin {
    pub dataplane: Arc<Dataplane>,
    pub token: Option<String>,
    /// `PUT /logging?level=` support; `None` answers 501.
    pub log_filter: Option<SetLogFilter>,
    /// The log filter in force, as last set.
    pub log_level: std::sync::Mutex<String>,
}

/// Serves the admin API until `stop` resolves, then stops accepting and lets the responses
/// under way be written (above all a `/drained` answer, which comes just before the process
/// exits) for up to `finish`.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    stop: impl std::future::Future<Output = ()>,
    finish: std::time::Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(finish, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?finish, "admin connections still open at exit");
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, s: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(s));
    *r.status_mut() = status;
    r
}

/// `GET /ui`: the status page, uncached (its CSP is a `<meta>` in the document).
fn ui_page() -> Response<ProxyBody> {
    let mut r = Response::new(full(crate::ui::PAGE));
    for (k, v) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        r.headers_mut()
            .insert(k, header::HeaderValue::from_static(v));
    }
    r
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| token_matches(given.trim().as_bytes(), token.as_bytes()))
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/healthz" => return text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                return if self.dataplane.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else if self.dataplane.is_shutting_down() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n")
                };
            }
            "/health" => return self.health(),
            // Unauthenticated like the probes: the kubelet calls it (an httpGet preStop hook
            // on the app container), it changes nothing and tells no more than `/readyz`.
            "/drained" => return self.drained(&req).await,
            "/ui" => return ui_page(),
            "/metrics" => {
                let rt = self.dataplane.runtime();
                let state = rt
                    .as_deref()
                    .map(|r| r as &dyn crate::telemetry::metrics::StateSource);
                let sinks = self.dataplane.telemetry().sink_handles();
                let body = crate::telemetry::metrics::metrics().render(state, &sinks);
                let mut r = Response::new(full(Bytes::from(body)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        crate::telemetry::metrics::Metrics::content_type(),
                    ),
                );
                return r;
            }
            _ => {}
        }
        if !self.authorized(&req) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "message": "send Authorization: Bearer <admin token>"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/config") => match self.dataplane.runtime() {
                Some(rt) => json(
                    StatusCode::OK,
                    // Credential values never leave the process.
                    serde_json::json!({ "version": rt.version, "snapshot": rt.snapshot.redacted() }),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "no_config", "message": "no configuration loaded yet"}),
                ),
            },
            (Method::PUT, "/config") | (Method::POST, "/config") => self.put_config(req).await,
            (Method::PATCH, "/config") => self.patch_config(req).await,
            (Method::GET, "/backends") => match self.dataplane.runtime() {
                Some(rt) => json(StatusCode::OK, backends_json(&rt)),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "no_config", "message": "no configuration loaded yet"}),
                ),
            },
            (Method::GET, "/sinks") => {
                json(StatusCode::OK, self.dataplane.telemetry().sink_report())
            }
            (Method::GET, "/ui/state") => {
                let rt = self.dataplane.runtime();
                let view = rt.as_deref().map(|rt| crate::ui::RuntimeView {
                    rt,
                    health: health_summary(rt).status,
                    backends: backends_json(rt),
                });
                let mut r = json(
                    StatusCode::OK,
                    crate::ui::state(view, self.dataplane.telemetry().sink_report()),
                );
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
                r
            }
            (Method::GET, "/logging") => self.logging_json(),
            (Method::PUT, "/logging") | (Method::POST, "/logging") => self.set_logging(&req),
            (_, "/logging") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "message": "use GET or PUT"}),
            ),
            (_, "/config") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "message": "use GET, PUT or PATCH"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": format!("no admin endpoint {path}")}),
            ),
        }
    }

    /// `GET /drained?timeout=<duration>&start_within=<duration>`: answers once this process
    /// has drained after its SIGTERM (200, `drained`), so a preStop hook on the app holds the
    /// app's own SIGTERM until the sidecar no longer has requests for it. If no shutdown begins
    /// within `start_within` (default 5s) only the app is being stopped (a liveness restart),
    /// and it answers 200 `serving` rather than hold the app for a drain that is not coming.
    /// After `timeout` (default 30s) it answers 503 `draining`.
    async fn drained(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let mut timeout = DRAINED_TIMEOUT;
        let mut start_within = DRAINED_START_WITHIN;
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            let slot = match &*k {
                "timeout" => &mut timeout,
                "start_within" => &mut start_within,
                _ => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "bad_request", "message": format!("unknown parameter {k:?} (use timeout, start_within)")}),
                    )
                }
            };
            match v.parse::<weir_config::Duration>() {
                Ok(d) => *slot = d.get(),
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "bad_request", "message": format!("query parameter {k}: {v:?}: {e}")}),
                    )
                }
            }
        }
        let mut phase = self.dataplane.drain_phase();
        let wait = async {
            // The kubelet sends the sidecar its SIGTERM as it runs the app's hook, so a
            // shutdown that has not begun within `start_within` is not coming.
            let began = tokio::time::timeout(
                start_within,
                phase.wait_for(|p| *p != crate::server::DrainPhase::Serving),
            )
            .await
            .is_ok();
            if !began {
                return "serving";
            }
            // A closed channel means the dataplane is gone: nothing left to wait for.
            let _ = phase
                .wait_for(|p| *p == crate::server::DrainPhase::Drained)
                .await
                .is_ok();
            "drained"
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(state) => {
                tracing::info!(state, "drain wait answered");
                json(StatusCode::OK, serde_json::json!({ "state": state }))
            }
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "drain wait timed out, the sidecar is still draining"
                );
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"state": "draining", "message": format!("still draining after {timeout:?}")}),
                )
            }
        }
    }

    fn logging_json(&self) -> Response<ProxyBody> {
        let level = self.log_level.lock().map(|l| l.clone()).unwrap_or_default();
        json(
            StatusCode::OK,
            serde_json::json!({ "level": level, "accessLog": self.dataplane.telemetry().access_log_enabled() }),
        )
    }

    /// `PUT /logging?level=<EnvFilter directive>&access=on|off`: either or both.
    fn set_logging(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let bad = |msg: String| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "bad_request", "message": msg}),
            )
        };
        let mut level = None;
        let mut access = None;
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "level" => level = Some(v.into_owned()),
                "access" => {
                    access = Some(match &*v {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => return bad(format!("access must be on or off, not {v:?}")),
                    })
                }
                _ => return bad(format!("unknown parameter {k:?} (use level, access)")),
            }
        }
        if level.is_none() && access.is_none() {
            return bad("give level=<filter> and/or access=on|off".into());
        }
        if let Some(level) = level {
            let Some(set) = &self.log_filter else {
                return json(
                    StatusCode::NOT_IMPLEMENTED,
                    serde_json::json!({"error": "not_supported", "message": "the log level cannot be changed in this process"}),
                );
            };
            if let Err(e) = set(&level) {
                return bad(format!("invalid log filter {level:?}: {e}"));
            }
            tracing::info!(level = %level, "log filter changed via the admin API");
            if let Ok(mut l) = self.log_level.lock() {
                *l = level;
            }
        }
        if let Some(on) = access {
            self.dataplane.telemetry().set_access_log(on);
            tracing::info!(access_log = on, "access log switched via the admin API");
        }
        self.logging_json()
    }

    /// `/health`: counts only (no names), so it is safe without the token.
    fn health(&self) -> Response<ProxyBody> {
        let Some(rt) = self.dataplane.runtime() else {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "unhealthy", "reason": "no configuration loaded", "healthy_backends": 0, "total_backends": 0}),
            );
        };
        let h = health_summary(&rt);
        let status = if h.status == "unhealthy" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json(
            status,
            serde_json::json!({
                "status": h.status,
                "healthy_backends": h.healthy,
                "degraded_backends": h.degraded,
                "unhealthy_backends": h.unhealthy,
                "total_backends": h.total,
                "version": rt.version,
            }),
        )
    }

    async fn put_config(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let body = match read_config_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        // Parsed only: `apply` validates (every PUT used to be validated twice).
        let started = std::time::Instant::now();
        let parsed = weir_config::parse_json_or_yaml(&body);
        tracing::debug!(
            bytes = body.len(),
            parse_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "PUT /config parsed"
        );
        let result = match parsed {
            Ok(snap) => self.dataplane.apply(snap).await,
            Err(e) => {
                crate::telemetry::metrics::metrics().config_applied(Err(()));
                Err(e)
            }
        };
        self.applied(result, "PUT")
    }

    /// `PATCH /config`: a [`weir_config::Delta`] against the running version. 409 when the
    /// pod runs another version (the sender then PUTs the whole snapshot), 400 when the delta
    /// does not fit its base, 422 (as for `PUT`) when the result is invalid.
    async fn patch_config(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let body = match read_config_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let delta = match weir_config::parse_delta_json(&body) {
            Ok(d) => d,
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "bad_delta", "errors": e.errors}),
                )
            }
        };
        match self.dataplane.apply_delta(&delta).await {
            Ok(version) => self.applied(Ok(version), "PATCH"),
            Err(crate::server::DeltaRejected::Invalid(e)) => self.applied(Err(e), "PATCH"),
            Err(crate::server::DeltaRejected::BaseMismatch { current }) => {
                tracing::info!(base = %delta.base_version, current = ?current, "PATCH /config for another base version");
                json(
                    StatusCode::CONFLICT,
                    serde_json::json!({
                        "error": "base_version_mismatch",
                        "message": format!("the delta is against {}, this pod runs {}", delta.base_version, current.as_deref().unwrap_or("no config")),
                        "currentVersion": current,
                    }),
                )
            }
            Err(crate::server::DeltaRejected::Delta(e)) => {
                tracing::warn!(
                    "PATCH /config does not fit version {}:\n{e}",
                    delta.base_version
                );
                json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "bad_delta", "errors": e.errors}),
                )
            }
        }
    }

    /// The answer to a `PUT` or `PATCH`: 200 with the version, or 422 with every error.
    fn applied(
        &self,
        result: Result<String, weir_config::ConfigError>,
        method: &str,
    ) -> Response<ProxyBody> {
        match result {
            Ok(version) => json(StatusCode::OK, serde_json::json!({ "version": version })),
            Err(e) => {
                tracing::warn!(
                    errors = e.errors.len(),
                    "rejected config from {method} /config:\n{e}"
                );
                let current = self.dataplane.runtime().map(|rt| rt.version.clone());
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "errors": e.errors, "currentVersion": current }),
                )
            }
        }
    }
}

/// The body of a `PUT` or `PATCH /config`, at most [`MAX_CONFIG_BYTES`]; or the error answer.
async fn read_config_body(req: Request<Incoming>) -> Result<Bytes, Response<ProxyBody>> {
    match Limited::new(req.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (status, msg) = if too_big {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("config larger than {MAX_CONFIG_BYTES} bytes"),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
            };
            Err(json(
                status,
                serde_json::json!({"error": "bad_body", "message": msg}),
            ))
        }
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A backend's state for `/health`: `healthy` (every endpoint available), `degraded` (some),
/// `unhealthy` (none, no endpoints, or its circuit breaker is open).
fn backend_status(b: &BackendRt) -> (&'static str, usize) {
    let available = b.available_endpoints();
    let open = b
        .breaker_view()
        .is_some_and(|v| v.mode == crate::upstream::breaker::Mode::Open);
    let status = if available == 0 || open {
        "unhealthy"
    } else if available < b.endpoints.len() {
        "degraded"
    } else {
        "healthy"
    };
    (status, available)
}

pub struct HealthSummary {
    pub status: &'static str,
    pub healthy: usize,
    pub degraded: usize,
    pub unhealthy: usize,
    pub total: usize,
}

/// Overall: `healthy` when every backend is, `unhealthy` when there are backends and none can
/// serve, `degraded` otherwise.
pub fn health_summary(rt: &Runtime) -> HealthSummary {
    let mut s = HealthSummary {
        status: "healthy",
        healthy: 0,
        degraded: 0,
        unhealthy: 0,
        total: rt.backends.len(),
    };
    for b in rt.backends.values() {
        match backend_status(b).0 {
            "healthy" => s.healthy += 1,
            "degraded" => s.degraded += 1,
            _ => s.unhealthy += 1,
        }
    }
    s.status = if s.unhealthy + s.degraded == 0 {
        "healthy"
    } else if s.healthy + s.degraded == 0 {
        "unhealthy"
    } else {
        "degraded"
    };
    s
}

/// The `GET /backends` document (shape documented in the README).
pub fn backends_json(rt: &Runtime) -> serde_json::Value {
    let mut names: Vec<&String> = rt.backends.keys().collect();
    names.sort();
    let mut out = serde_json::Map::new();
    for name in names {
        let b = &rt.backends[name];
        let (status, available) = backend_status(b);
        let endpoints: Vec<serde_json::Value> = b
            .endpoints
            .iter()
            .map(|ep| {
                let v = ep.state.view();
                let last_check = v.checks.last.as_ref().map(|c| {
                    serde_json::json!({
                        "result": if c.ok { "success" } else { "failure" },
                        "at": rfc3339(c.at),
                        "detail": c.detail,
                    })
                });
                let active = b.config.health_check.is_some();
                serde_json::json!({
                    "address": ep.authority.as_str(),
                    "weight": ep.weight,
                    "available": v.healthy && v.ejected_until.is_none(),
                    "healthy": v.healthy,
                    "activeCheck": if active { serde_json::json!({
                        "lastCheck": last_check,
                        "consecutiveSuccesses": v.checks.consecutive_successes,
                        "consecutiveFailures": v.checks.consecutive_failures,
                        "checksPassed": v.checks.passed,
                        "checksFailed": v.checks.failed,
                        "transitions": v.checks.transitions,
                    }) } else { serde_json::Value::Null },
                    "ejectedUntil": v.ejected_until.map(rfc3339),
                    "ejections": v.ejections,
                    "inFlight": v.in_flight,
                    "requests": v.requests,
                    "connectionsCreated": b.connections_created(&ep.authority),
                    "connectionsOpen": b.connections_open(&ep.authority),
                    "latencyEwmaMs": (v.ewma_ms * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let breaker = b.breaker_view().map(|v| {
            serde_json::json!({
                "state": v.mode.as_str(),
                "consecutiveFailures": v.consecutive_failures,
                "windowRequests": v.window_requests,
                "windowFailures": v.window_failures,
                "timesOpened": v.times_opened,
                "openedAt": v.opened_at.map(rfc3339),
            })
        });
        let (requests, retries) = b.budget_usage();
        let concurrency = b
            .concurrency()
            .map(|(in_use, max)| serde_json::json!({ "inUse": in_use, "max": max }));
        out.insert(
            name.clone(),
            serde_json::json!({
                "status": status,
                "loadBalancer": b.balancer_name(),
                "healthyEndpoints": available,
                "totalEndpoints": b.endpoints.len(),
                "circuitBreaker": breaker,
                "concurrency": concurrency,
                "retryBudget": { "requests": requests, "retries": retries, "window": "10s" },
                "endpoints": endpoints,
            }),
        );
    }
    serde_json::json!({ "version": rt.version, "backends": out })
}
