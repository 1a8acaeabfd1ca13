//! Tracing settings of a snapshot: how requests are sampled and how the exported spans name
//! their service. Spans go to every `otlp` sink whose `signals` include `traces` (the default
//! for `otlp`), or, when no sink takes them, to the exporter the standard `OTEL_*` environment
//! variables describe (see the dataplane's `otel` module and README "Tracing").

use crate::error::Errors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `tracing:` in a snapshot. Every field is optional; unset ones fall back to the `OTEL_*`
/// environment of the dataplane, then to the OpenTelemetry defaults (parent-based, ratio 1).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingConfig {
    /// Share of new traces recorded, 0.0..=1.0 (trace-id ratio, as OpenTelemetry's
    /// `traceidratio` sampler). Overrides `OTEL_TRACES_SAMPLER_ARG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
    /// Follow the caller's sampled flag when the request has a valid `traceparent` (default
    /// `true`); the ratio then applies to new traces only. Overrides `OTEL_TRACES_SAMPLER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_based: Option<bool>,
    /// `service.name` of the exported spans, logs and metrics. Overrides `OTEL_SERVICE_NAME`
    /// (default `weir-dataplane`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// More resource attributes, merged over `OTEL_RESOURCE_ATTRIBUTES`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
}

/// How an `otlp` sink sends.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies, to `endpoint` + `/v1/traces|logs|metrics`.
    #[default]
    HttpProtobuf,
    /// OTLP/gRPC (HTTP/2; h2c for `http://`, ALPN h2 for `https://`).
    Grpc,
}

impl TracingConfig {
    pub(crate) fn validate(&self, errs: &mut Errors) {
        if let Some(r) = self.sampling_ratio {
            if !(0.0..=1.0).contains(&r) {
                errs.push("tracing.samplingRatio", "must be between 0 and 1");
            }
        }
        if let Some(s) = &self.service_name {
            if s.trim().is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
                errs.push(
                    "tracing.serviceName",
                    "must be 1 to 255 printable characters",
                );
            }
        }
        for (k, v) in &self.resource_attributes {
            if k.trim().is_empty() || k.len() > 255 || k.chars().any(char::is_control) {
                errs.push(
                    format!("tracing.resourceAttributes[{k:?}]"),
                    "key must be 1 to 255 printable characters",
                );
            } else if v.len() > 4096 {
                errs.push(
                    format!("tracing.resourceAttributes[{k:?}]"),
                    "value longer than 4096 bytes",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_yaml, SinkSignal, SinkType};

    #[test]
    fn tracing_section_and_traces_signal() {
        let s = parse_yaml(
            "tracing: {samplingRatio: 0.25, parentBased: false, serviceName: edge}\n\
             sinks:\n  o: {type: otlp, endpoint: \"http://127.0.0.1:4317\", protocol: grpc}\n\
             \x20 j: {type: httpJson, endpoint: \"http://127.0.0.1:1\"}\n",
        )
        .expect("parses");
        let t = s.tracing.as_ref().expect("tracing");
        assert_eq!(t.sampling_ratio, Some(0.25));
        assert_eq!(t.parent_based, Some(false));
        s.validate().expect("valid");
        assert!(s.sinks["o"].ships(SinkSignal::Traces));
        assert_eq!(s.sinks["o"].protocol, Some(crate::OtlpProtocol::Grpc));
        assert_eq!(s.sinks["j"].kind, SinkType::HttpJson);
        assert!(!s.sinks["j"].ships(SinkSignal::Traces));
    }

    #[test]
    fn invalid_tracing_rejected_with_paths() {
        let s = parse_yaml(
            "tracing: {samplingRatio: 1.5, serviceName: \"\"}\n\
             sinks:\n  j: {type: httpJson, endpoint: \"http://127.0.0.1:1\", signals: [traces], protocol: grpc}\n",
        )
        .expect("parses");
        let err = s.validate().expect_err("invalid").to_string();
        assert!(
            err.contains("tracing.samplingRatio: must be between 0 and 1"),
            "{err}"
        );
        assert!(err.contains("tracing.serviceName"), "{err}");
        assert!(err.contains("sinks[\"j\"].signals[0]"), "{err}");
        assert!(
            err.contains("sinks[\"j\"].protocol: only valid for type otlp"),
            "{err}"
        );
    }
}
