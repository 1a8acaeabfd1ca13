//! Operator metrics in the Prometheus text format on `/metrics`, plus `/healthz` and
//! `/readyz` probes and the status page `/ui`, on `--metrics-address`. The families live in a
//! `prometheus` registry, the same metrics stack as the dataplane's: one text encoder (label
//! escaping included) and the standard `process_*` metrics.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::LazyLock;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// `result` values of `weir_operator_pushes_total`, all exported from the start (at 0) so
/// `rate()` and the chart's alerts see every series before the first push.
const PUSH_RESULTS: [&str; 3] = ["ok", "rejected", "error"];

pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounter,
    reconcile_duration: Histogram,
    pub push_ok: IntCounter,
    pub push_rejected: IntCounter,
    pub push_error: IntCounter,
    /// `weir_operator_push_bytes_total{kind}`: `full` (`PUT /config`) or `delta` (`PATCH`).
    pub push_bytes: IntCounterVec,
    pub status_writes: IntCounter,
    pub status_write_errors: IntCounter,
    pub configmap_writes: IntCounter,
    pub pods_ready: IntGauge,
    pub pods_programmed: IntGauge,
    pub routes_invalid: IntGauge,
    pub leader: IntGauge,
    /// `weir_operator_errors_total{kind}`: see [`crate::error::Error::kind`].
    pub errors: IntCounterVec,
    /// Readiness (`/readyz`), not a metric.
    pub synced: AtomicBool,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "cannot register a metric family");
    }
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        r,
        IntCounter::new(name, help).expect("valid metric definition"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        r,
        IntGauge::new(name, help).expect("valid metric definition"),
    )
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let reconcile_duration = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "weir_operator_reconcile_duration_seconds",
                    "Time to compile and write one reconcile.",
                )
                .buckets(BUCKETS.to_vec()),
            )
            .expect("valid metric definition"),
        );
        let pushes = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "weir_operator_pushes_total",
                    "Config pushes (PUT or PATCH /config) to dataplane pods by result.",
                ),
                &["result"],
            )
            .expect("valid metric definition"),
        );
        let [push_ok, push_rejected, push_error] =
            PUSH_RESULTS.map(|res| pushes.with_label_values(&[res]));
        let push_bytes = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "weir_operator_push_bytes_total",
                    "Bytes of config sent to dataplane pods: kind full (PUT /config, the whole snapshot) or delta (PATCH /config).",
                ),
                &["kind"],
            )
            .expect("valid metric definition"),
        );
        for kind in ["full", "delta"] {
            push_bytes.with_label_values(&[kind]);
        }
        let errors = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "weir_operator_errors_total",
                    "Operator errors by kind (one kind per variant of the operator's error type).",
                ),
                &["kind"],
            )
            .expect("valid metric definition"),
        );
        for kind in crate::error::Error::KINDS {
            errors.with_label_values(&[kind]);
        }
        let m = Metrics {
            reconciles: counter(&r, "weir_operator_reconciles_total", "Reconciles run."),
            reconcile_duration,
            push_ok,
            push_rejected,
            push_error,
            push_bytes,
            status_writes: counter(
                &r,
                "weir_operator_status_writes_total",
                "Status patches sent.",
            ),
            status_write_errors: counter(
                &r,
                "weir_operator_status_write_errors_total",
                "Status patches that failed.",
            ),
            configmap_writes: counter(
                &r,
                "weir_operator_configmap_writes_total",
                "Writes of the last-known-good snapshot (a Secret since the snapshot holds credentials; the name is kept for dashboards).",
            ),
            pods_ready: gauge(&r, "weir_operator_pods_ready", "Ready dataplane pods."),
            pods_programmed: gauge(
                &r,
                "weir_operator_pods_programmed",
                "Ready dataplane pods running the current snapshot.",
            ),
            routes_invalid: gauge(
                &r,
                "weir_operator_routes_invalid",
                "ProxyRoutes left out of the snapshot.",
            ),
            leader: gauge(
                &r,
                "weir_operator_leader",
                "1 when this replica holds the Lease.",
            ),
            errors,
            synced: AtomicBool::new(false),
            registry: r,
        };
        #[cfg(target_os = "linux")]
        if let Err(e) = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::error!(error = %e, "cannot register the process metrics");
        }
        m
    }

    pub fn observe_reconcile(&self, d: std::time::Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot encode the metrics");
                String::new()
            })
    }
}

/// The status page, uncached (its CSP is a `<meta>` in the document).
fn page(html: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
    let h = r.headers_mut();
    for (k, v) in [
        (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (http::header::CACHE_CONTROL, "no-store"),
        (http::header::REFERRER_POLICY, "no-referrer"),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, http::HeaderValue::from_static(v));
    }
    r
}

/// Serves `/metrics`, `/healthz`, `/readyz` (ready once the caches synced) and the status page
/// (`/ui`, `/ui/state`, see [`crate::ui`]) until dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/ui" => return Ok(page(crate::ui::PAGE)),
                        "/ui/state" => {
                            let mut body =
                                serde_json::to_vec(&crate::ui::state()).unwrap_or_default();
                            body.push(b'\n');
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            return Ok(r);
                        }
                        "/metrics" => (
                            StatusCode::OK,
                            METRICS.render() + &crate::inject::metrics::render_if_enabled(),
                        ),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        "/readyz" if METRICS.synced.load(Relaxed) => {
                            (StatusCode::OK, "ready\n".to_string())
                        }
                        "/readyz" => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "caches not synced\n".to_string(),
                        ),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(r)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        METRICS.observe_reconcile(std::time::Duration::from_millis(3));
        let t = METRICS.render();
        assert!(t.contains("weir_operator_reconcile_duration_seconds_bucket{le=\"0.005\"} "));
        assert!(t.contains("weir_operator_pushes_total{result=\"ok\"} "));
        assert!(t.contains("# TYPE weir_operator_leader gauge"));
    }

    /// Every family the hand-written exposition had keeps its name and type (dashboards,
    /// alerts and chart-check read them), every push result is there before the first push,
    /// and the process metrics come along.
    #[test]
    fn keeps_every_family_and_adds_process_metrics() {
        let t = METRICS.render();
        for (name, kind) in [
            ("weir_operator_reconcile_duration_seconds", "histogram"),
            ("weir_operator_reconciles_total", "counter"),
            ("weir_operator_pushes_total", "counter"),
            ("weir_operator_status_writes_total", "counter"),
            ("weir_operator_status_write_errors_total", "counter"),
            ("weir_operator_configmap_writes_total", "counter"),
            ("weir_operator_pods_ready", "gauge"),
            ("weir_operator_pods_programmed", "gauge"),
            ("weir_operator_routes_invalid", "gauge"),
            ("weir_operator_leader", "gauge"),
            ("weir_operator_errors_total", "counter"),
        ] {
            assert!(
                t.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}:\n{t}"
            );
        }
        for r in PUSH_RESULTS {
            assert!(t.contains(&format!("weir_operator_pushes_total{{result=\"{r}\"}} ")));
        }
        assert!(t.contains("weir_operator_reconcile_duration_seconds_bucket{le=\"+Inf\"} "));
        #[cfg(target_os = "linux")]
        assert!(
            t.contains("# TYPE process_resident_memory_bytes gauge"),
            "{t}"
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        if std::env::var("WEIR_SKIP_PROMTOOL").as_deref() == Ok("1") {
            eprintln!("WEIR_SKIP_PROMTOOL=1: skipping the promtool check");
            return;
        }
        use std::io::Write;
        METRICS.observe_reconcile(std::time::Duration::from_millis(30));
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            panic!(
                "promtool not found: install Debian's `prometheus` package (scripts/ensure-deps.sh \
                 does), or set WEIR_SKIP_PROMTOOL=1 to skip this test"
            );
        };
        let text = METRICS.render();
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
