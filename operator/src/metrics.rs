//! Operator metrics in the Prometheus text format on `/metrics`, plus `/healthz` and
//! `/readyz` probes and the status page `/ui`, on `--metrics-address`. Plain atomics: a handful of counters does not
//! need a metrics library.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

pub struct Metrics {
    pub reconciles: AtomicU64,
    reconcile_buckets: [AtomicU64; BUCKETS.len()],
    reconcile_micros_sum: AtomicU64,
    pub push_ok: AtomicU64,
    pub push_rejected: AtomicU64,
    pub push_error: AtomicU64,
    pub status_writes: AtomicU64,
    pub status_write_errors: AtomicU64,
    pub configmap_writes: AtomicU64,
    pub pods_ready: AtomicU64,
    pub pods_programmed: AtomicU64,
    pub routes_invalid: AtomicU64,
    pub leader: AtomicBool,
    pub synced: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);

pub static METRICS: Metrics = Metrics {
    reconciles: ZERO,
    reconcile_buckets: [ZERO; BUCKETS.len()],
    reconcile_micros_sum: ZERO,
    push_ok: ZERO,
    push_rejected: ZERO,
    push_error: ZERO,
    status_writes: ZERO,
    status_write_errors: ZERO,
    configmap_writes: ZERO,
    pods_ready: ZERO,
    pods_programmed: ZERO,
    routes_invalid: ZERO,
    leader: AtomicBool::new(false),
    synced: AtomicBool::new(false),
};

impl Metrics {
    pub fn observe_reconcile(&self, d: std::time::Duration) {
        self.reconciles.fetch_add(1, Relaxed);
        self.reconcile_micros_sum
            .fetch_add(d.as_micros() as u64, Relaxed);
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.reconcile_buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let g = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let n = "weir_operator_reconcile_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {n} Time to compile and write one reconcile.\n# TYPE {n} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{n}_bucket{{le=\"{b}\"}} {}",
                self.reconcile_buckets[i].load(Relaxed)
            );
        }
        let count = self.reconciles.load(Relaxed);
        let _ = writeln!(o, "{n}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "{n}_sum {}",
            self.reconcile_micros_sum.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{n}_count {count}");
        c(
            &mut o,
            "weir_operator_reconciles_total",
            "Reconciles run.",
            count,
        );
        let p = "weir_operator_pushes_total";
        let _ = writeln!(
            o,
            "# HELP {p} PUT /config calls to dataplane pods by result.\n# TYPE {p} counter"
        );
        for (r, v) in [
            ("ok", &self.push_ok),
            ("rejected", &self.push_rejected),
            ("error", &self.push_error),
        ] {
            let _ = writeln!(o, "{p}{{result=\"{r}\"}} {}", v.load(Relaxed));
        }
        c(
            &mut o,
            "weir_operator_status_writes_total",
            "Status patches sent.",
            self.status_writes.load(Relaxed),
        );
        c(
            &mut o,
            "weir_operator_status_write_errors_total",
            "Status patches that failed.",
            self.status_write_errors.load(Relaxed),
        );
        c(
            &mut o,
            "weir_operator_configmap_writes_total",
            "Writes of the last-known-good snapshot (a Secret since the snapshot holds credentials; the name is kept for dashboards).",
            self.configmap_writes.load(Relaxed),
        );
        g(
            &mut o,
            "weir_operator_pods_ready",
            "Ready dataplane pods.",
            self.pods_ready.load(Relaxed),
        );
        g(
            &mut o,
            "weir_operator_pods_programmed",
            "Ready dataplane pods running the current snapshot.",
            self.pods_programmed.load(Relaxed),
        );
        g(
            &mut o,
            "weir_operator_routes_invalid",
            "ProxyRoutes left out of the snapshot.",
            self.routes_invalid.load(Relaxed),
        );
        g(
            &mut o,
            "weir_operator_leader",
            "1 when this replica holds the Lease.",
            self.leader.load(Relaxed) as u64,
        );
        o
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
}
