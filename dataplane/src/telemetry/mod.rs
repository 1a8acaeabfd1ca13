//! Layer 1: the metrics registry and its handles, request observation (access log, spans),
//! OTLP export and the telemetry sinks with their encoders.

pub mod backoff;
pub mod metrics;
pub mod observe;
pub mod otel;
pub mod shipper;
pub(crate) mod sink_h3;
pub mod sinkenc;
