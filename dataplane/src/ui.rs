//! The status page on the admin listener: `GET /ui` serves one self-contained HTML document
//! (markup, script and style in `ui/common.html` + `ui/status.html`, compiled into the binary); the page reads
//! `GET /ui/state` with the admin token every few seconds.
//!
//! The page holds no data itself, so it is served without the token; everything it shows
//! comes from `/ui/state`, which needs the token like the rest of the admin API.
//!
//! Charts are computed in the browser from the cumulative counters of successive polls, not
//! from a history kept here: the dataplane does no work and holds no memory for the page while
//! nobody has it open, at the price of charts that start when the page is opened.

use crate::runtime::compile::Runtime;
use crate::telemetry::metrics::{metrics, LATENCY_BOUNDS};
use weir_config::AdvertisedPort;

/// The page: HTML, script and style in one document (no external assets; its
/// `Content-Security-Policy` forbids loading any). `ui/common.html` holds the
/// head, style and DOM helpers shared with the operator's page.
pub const PAGE: &str = concat!(
    include_str!("ui/common.html"),
    include_str!("ui/status.html")
);

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What the admin API already computes for its own endpoints, handed in so that this module
/// renders and never calls back up into `admin` (which routes to it).
pub struct RuntimeView<'a> {
    pub rt: &'a Runtime,
    /// `GET /health`'s verdict.
    pub health: &'static str,
    /// `GET /backends`'s document.
    pub backends: serde_json::Value,
}

/// The `GET /ui/state` document: everything the page shows, in one poll.
/// `sinks`: the sinks' report (`GET /sinks`).
pub fn state(view: Option<RuntimeView<'_>>, sinks: serde_json::Value) -> serde_json::Value {
    let now = rfc3339(std::time::SystemTime::now());
    let totals = metrics().route_totals();
    let Some(RuntimeView {
        rt,
        health,
        backends,
    }) = view
    else {
        return serde_json::json!({
            "now": now,
            "version": null,
            "routeTotals": totals,
            "latencyBounds": LATENCY_BOUNDS,
            "sinks": sinks["sinks"],
        });
    };
    let listeners: Vec<serde_json::Value> = rt
        .listeners
        .iter()
        .map(|l| {
            let advertised = l.quic.as_ref().and_then(|q| {
                AdvertisedPort::resolve(q.settings.advertised_port.as_ref(), l.address.port())
            });
            serde_json::json!({
                "name": l.name,
                "address": l.address.to_string(),
                "protocol": l.protocol,
                "http3": l.quic.is_some(),
                "advertisedPort": advertised,
                "altSvc": l.alt_svc.as_ref().and_then(|v| v.to_str().ok()),
            })
        })
        .collect();
    // Routes as configured, with credentials (ext-auth headers and the like) blanked.
    let redacted = rt.snapshot.redacted();
    let routes: Vec<&weir_config::Route> = redacted.routes.iter().map(|r| &**r).collect();
    serde_json::json!({
        "now": now,
        "version": rt.version,
        "appliedAt": rfc3339(rt.applied_at),
        "health": health,
        "listeners": listeners,
        "routes": routes,
        "backends": backends["backends"],
        "routeTotals": totals,
        "latencyBounds": LATENCY_BOUNDS,
        "sinks": sinks["sinks"],
    })
}
