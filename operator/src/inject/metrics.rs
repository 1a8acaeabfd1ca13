//! The injector's metrics (Prometheus text, appended to the operator's `/metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct InjectorMetrics {
    pub injected: AtomicU64,
    pub skipped: AtomicU64,
    pub denied: AtomicU64,
    pub errors: AtomicU64,
    /// Pods that should carry the sidecar and do not (set by [`super::audit`]).
    pub missed_pods: AtomicU64,
    /// Audit passes that failed to list pods or namespaces.
    pub audit_errors: AtomicU64,
}

pub static INJECTOR: InjectorMetrics = InjectorMetrics {
    injected: AtomicU64::new(0),
    skipped: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    missed_pods: AtomicU64::new(0),
    audit_errors: AtomicU64::new(0),
};

/// Empty until the injector runs, so operators without it expose nothing new.
pub fn render() -> String {
    let m = &INJECTOR;
    let mut o = String::new();
    let n = "weir_injector_admissions_total";
    let _ = writeln!(
        o,
        "# HELP {n} Pod admissions the sidecar injector answered, by result.\n# TYPE {n} counter"
    );
    for (result, v) in [
        ("injected", &m.injected),
        ("skipped", &m.skipped),
        ("denied", &m.denied),
        ("error", &m.errors),
    ] {
        let _ = writeln!(o, "{n}{{result=\"{result}\"}} {}", v.load(Relaxed));
    }
    let n = "weir_injector_missed_pods";
    let _ = writeln!(
        o,
        "# HELP {n} Running pods that asked for the Weir sidecar (namespace or pod label) and were created without it: the injector was unreachable or failed, and failurePolicy Ignore admitted them.\n# TYPE {n} gauge\n{n} {}",
        m.missed_pods.load(Relaxed)
    );
    let n = "weir_injector_audit_errors_total";
    let _ = writeln!(
        o,
        "# HELP {n} Audit passes that could not list namespaces or pods.\n# TYPE {n} counter\n{n} {}",
        m.audit_errors.load(Relaxed)
    );
    o
}

/// Set once the injector is started; `/metrics` shows its series only then.
pub static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What the operator's `/metrics` appends.
pub fn render_if_enabled() -> String {
    if ENABLED.load(Relaxed) {
        render()
    } else {
        String::new()
    }
}
