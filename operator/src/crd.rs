//! The custom resources (`weir.dev/v1alpha1`): `ProxyRoute`, `Backend`, `TelemetrySink`.
//!
//! Specs mirror the config contract (`weir_config::Snapshot`) closely; the operator's compile
//! step ([`crate::compile`]) turns them into one snapshot. Doc comments here become the CRD
//! schema descriptions (`kubectl explain`), so every field has one.

// The `printcolumn(...)` lists of the kube derive repeat `type_ = "string"`, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration such as `500ms`, `2s` or `1m30s`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";
/// `api.example.com` or `*.example.com`.
pub const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$";
/// An HTTP header name (RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$";

// ---------------------------------------------------------------------------------------------
// ProxyRoute
// ---------------------------------------------------------------------------------------------

/// Routes requests for a set of hostnames to Backends, rule by rule.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "ProxyRoute",
    namespaced,
    status = "ProxyRouteStatus",
    shortname = "pr",
    shortname = "wroute",
    category = "weir",
    doc = "Routes requests for a set of hostnames to Backends: ordered rules of matches, filters and weighted backendRefs.",
    printcolumn(
        name = "Hosts",
        type_ = "string",
        json_path = ".spec.hostnames",
        description = "Hostnames served (empty: every host)"
    ),
    printcolumn(
        name = "Backends",
        type_ = "string",
        json_path = ".status.backends",
        description = "Backends referenced by the rules"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status",
        description = "Every ready dataplane pod runs this generation"
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = ".status.healthy",
        description = "Healthy/total endpoints behind the route"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRouteSpec {
    /// Hostnames this route serves: exact (`api.example.com`) or wildcard (`*.example.com`, one
    /// or more labels). Empty means every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HOSTNAME_PATTERN)))]
    pub hostnames: Vec<String>,
    /// Ordered rules. A request goes to the first matching rule by the documented precedence
    /// (path kind and length, method, header/query counts, then declaration order).
    #[schemars(length(min = 1))]
    pub rules: Vec<RouteRule>,
}

/// One rule: when any of its matches holds, apply the filters and send the request to one of
/// the backendRefs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Any one of these matches selects the rule (OR); within one match every condition must
    /// hold (AND). No matches means the rule matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Request and response transforms applied when this rule is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<RouteFilters>,
    /// Weighted Backends; one is picked per request in proportion to its weight.
    #[schemars(length(min = 1))]
    pub backend_refs: Vec<BackendRef>,
    /// Overrides the Backend's request timeout for this rule (e.g. `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
}

/// Conditions on a request; all of them must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Condition on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z]+$"))]
    pub method: Option<String>,
    /// Conditions on request headers (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Conditions on query parameters (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared: `Exact` (whole path), `PathPrefix` (segment-aware prefix, the
    /// default), `Wildcard` (`*` = one segment, trailing `**` = any remainder) or
    /// `RegularExpression` (must match the whole path).
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path, pattern or regular expression.
    #[schemars(length(min = 1))]
    pub value: String,
}

/// How a path is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    Wildcard,
    RegularExpression,
}

/// A condition on a named header or query parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// Header or query parameter name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Exact` (default) or `RegularExpression` (must match the whole value).
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    /// The value or regular expression.
    pub value: String,
}

/// How a header or query value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum StringMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// Transforms applied when a rule is selected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilters {
    /// Applied to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderFilter>,
    /// Applied to the response before it goes back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderFilter>,
    /// Path rewrite, applied in order: stripPrefix, replacePrefix, addPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// Header edits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderFilter {
    /// Headers appended (existing values are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Headers set, replacing any existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = HEADER_NAME_PATTERN)))]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name.
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Path rewrite; at least one of the three fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathRewrite {
    /// Removed from the front of the path when present (segment-aware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub strip_prefix: Option<String>,
    /// Replaces a leading prefix (segment-aware) with another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<PrefixReplace>,
    /// Put in front of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub add_prefix: Option<String>,
}

/// Replace one leading path prefix with another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixReplace {
    /// The prefix to replace (segment-aware).
    #[schemars(regex(pattern = r"^/"))]
    pub from: String,
    /// What to put instead.
    #[schemars(regex(pattern = r"^/"))]
    pub to: String,
}

/// A reference to a Backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Name of the Backend.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Backend; defaults to the route's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Relative weight (default 1); 0 takes the Backend out of rotation for this rule.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// What the operator saw and did with a ProxyRoute.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRouteStatus {
    /// `Accepted` (the spec is valid; otherwise the message names the field path),
    /// `ResolvedRefs` (every backendRef exists), `Programmed` (every ready dataplane pod runs
    /// a snapshot containing this generation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Dataplane pods running a snapshot that contains this generation.
    #[serde(default)]
    pub programmed_pods: u32,
    /// Ready dataplane pods.
    #[serde(default)]
    pub ready_pods: u32,
    /// Backends referenced by the rules (`ns/name`, comma separated), for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<String>,
    /// Healthy/total endpoints behind the route as `x/y` (`?/y` until pods report health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<String>,
    /// Endpoints behind the route (sum over referenced Backends).
    #[serde(default)]
    pub total_endpoints: u32,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// A set of upstream endpoints and how to talk to them.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "Backend",
    namespaced,
    status = "BackendStatus",
    shortname = "wbe",
    category = "weir",
    doc = "A set of upstream endpoints (static host:port list, or a Service port resolved through its EndpointSlices) and how to talk to them.",
    printcolumn(
        name = "Endpoints",
        type_ = "string",
        json_path = ".status.endpointsSummary",
        description = "Healthy/total endpoints"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Has endpoints and is in the running snapshot"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// Static endpoints (`host:port`). Exactly one of `endpoints` and `service` must be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<StaticEndpoint>,
    /// A Service in the Backend's namespace whose ready EndpointSlice addresses are the
    /// endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Protocol spoken to the endpoints: `http1` (default) or `h2c` (HTTP/2 prior knowledge).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect and request timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<BackendTimeouts>,
    /// Upstream connection pool settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolConfig>,
    /// Active health checks per endpoint (`http: {path, expectedStatuses}` or `tcp: {}`,
    /// `interval`, `timeout`, `unhealthyThreshold`, `healthyThreshold`, ...). Same shape as the
    /// dataplane config's `backends.<name>.healthCheck`; validated by the operator, errors are
    /// reported in status with their path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "passthrough_object")]
    pub health_check: Option<serde_json::Value>,
    /// Passive outlier detection. Same shape as the dataplane config's
    /// `backends.<name>.outlierDetection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "passthrough_object")]
    pub outlier_detection: Option<serde_json::Value>,
    /// How requests are spread over endpoints. Same shape as the dataplane config's
    /// `backends.<name>.loadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "passthrough_object")]
    pub load_balancer: Option<serde_json::Value>,
    /// Circuit breaker over the whole Backend. Same shape as the dataplane config's
    /// `backends.<name>.circuitBreaker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "passthrough_object")]
    pub circuit_breaker: Option<serde_json::Value>,
    /// Retry policy. Same shape as the dataplane config's `backends.<name>.retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "passthrough_object")]
    pub retries: Option<serde_json::Value>,
    /// Requests in flight to this Backend at once, per dataplane pod; more wait up to
    /// `queueTimeout`, then get 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_requests: Option<u32>,
    /// How long a request waits for a `maxConcurrentRequests` slot (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub queue_timeout: Option<String>,
}

/// Schema for settings passed through to the dataplane config unchanged (validated by the
/// operator with the contract's own rules).
fn passthrough_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One static endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticEndpoint {
    /// `host:port` (`[v6]:port` for IPv6).
    #[schemars(regex(pattern = r"^(\[[0-9a-fA-F:.]+\]|[-a-zA-Z0-9.]+):[0-9]{1,5}$"))]
    pub address: String,
    /// Relative weight (default 1).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000000))]
    pub weight: u32,
}

/// A Service port whose endpoints come from the Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Service name (same namespace as the Backend).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Service port (`spec.ports[].port`); its target port on each ready endpoint is used.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Protocol spoken to the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

/// Upstream timeouts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendTimeouts {
    /// TCP connect timeout per attempt (default `2s`); exceeded gives 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect: Option<String>,
    /// From sending the request until the response headers arrive (default `30s`); exceeded
    /// gives 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request: Option<String>,
}

/// Upstream connection pool.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_idle_per_endpoint: Option<u32>,
    /// How long an idle upstream connection is kept (default `90s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
}

/// What the operator and the dataplane pods saw of a Backend.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `Ready` (valid, has endpoints, in the running snapshot) and `Degraded` (some endpoints
    /// unhealthy, once pods report health).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Resolved endpoints and their health as the pods see them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
    /// Endpoints reported healthy by the pods (absent until pods report health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_endpoints: Option<u32>,
    /// Resolved endpoints.
    #[serde(default)]
    pub total_endpoints: u32,
    /// `healthy/total` for `kubectl get` (`?/total` until pods report health).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_summary: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One resolved endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `host:port`.
    pub address: String,
    /// Healthy as seen by the pods; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Why it is unhealthy, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Pods that reported on this endpoint, as `n/m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// TelemetrySink
// ---------------------------------------------------------------------------------------------

/// Where dataplane logs, metrics and traces are shipped besides the local `/metrics`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "TelemetrySink",
    namespaced,
    status = "TelemetrySinkStatus",
    shortname = "wsink",
    category = "weir",
    doc = "Where dataplane logs, metrics and traces are shipped besides the local /metrics.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Sink type"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Valid and in the running snapshot"
    ),
    printcolumn(
        name = "Shipped",
        type_ = "integer",
        json_path = ".status.shipped",
        description = "Items shipped, summed over pods"
    ),
    printcolumn(
        name = "Dropped",
        type_ = "integer",
        json_path = ".status.dropped",
        description = "Items dropped, summed over pods"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySinkSpec {
    /// `otlp`, `httpJson` or `syslog`.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// URL (`otlp`, `httpJson`) or `host:port` (`syslog`).
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// Items per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: Option<u32>,
    /// Longest time an item waits before its batch is sent (e.g. `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub flush_interval: Option<String>,
}

/// Sink type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SinkType {
    Otlp,
    HttpJson,
    Syslog,
}

/// What the operator and the pods saw of a TelemetrySink.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySinkStatus {
    /// `Ready`: valid and in the running snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Items shipped, summed over pods (reported once the observability work lands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped: Option<u64>,
    /// Items dropped, summed over pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

/// A status condition (same shape as `metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable details.
    pub message: String,
}

/// The three CRDs.
pub fn all(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![ProxyRoute::crd(), Backend::crd(), TelemetrySink::crd()]
}

/// The CRD files `crdgen` writes: `(file name, YAML)`.
pub fn render() -> Vec<(String, String)> {
    all()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = serde_yaml_ng::to_string(&crd).expect("CRDs serialize to YAML");
            (
                name,
                format!("# Generated by `weir-operator crdgen` (make crds). Do not edit.\n{yaml}"),
            )
        })
        .collect()
}
