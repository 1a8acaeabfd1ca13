//! Layer 1: the metrics registry and its handles, request observation (access log, spans), and
//! the telemetry sinks with their encoders.
//!
//! Inside, imports go one way: `event` (what the request path captures) ← `sink` (the kinds,
//! their transports and encoders) ← `otel` (sampler, `OTEL_*` exporter) ← `hub` (the
//! [`hub::Telemetry`] handle) ← `observe` (the request path's end); `metrics` reads the sinks'
//! counters.

pub mod backoff;
pub mod event;
pub mod hub;
pub mod metrics;
pub mod observe;
pub mod otel;
pub mod sink;
