//! The custom resources (`weir.dev/v1alpha1`): `ProxyRoute`, `Backend`, `TelemetrySink`.
//!
//! Specs follow the config contract (`weir_config::Snapshot`); the operator's compile step
//! ([`crate::compile`]) turns them into one snapshot. Settings that are the contract's own
//! (Backend resilience settings, the TelemetrySink spec, newer rule fields) take their schema
//! from the contract types (`weir-config` feature `schema`, see `contract`) and stay plain
//! JSON in Rust, parsed by the contract at compile time. Doc comments here and in the contract
//! become the CRD schema descriptions (`kubectl explain`), so every field has one.

// The `printcolumn(...)` lists of the kube derive repeat `type_ = "string"`, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// TLS certificates for this route's hostnames, served by every `https` listener (SNI
    /// picks them by `hostnames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// Rate limit shared by every rule of the route that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::RateLimit>")]
    pub rate_limit: Option<serde_json::Value>,
    /// External authorization for every rule of the route that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::ExtAuth>")]
    pub ext_auth: Option<serde_json::Value>,
    // --- Sidecar attachment (issue #21, part 2) ---
    /// Attaches the route to workloads instead of the shared dataplane fleet: the sidecars of
    /// the pods in the route's namespace whose labels match serve it on their outbound
    /// listener (`127.0.0.1:<outbound port>`, which the application calls). Such a route is
    /// not part of the fleet's snapshot. Unset: the route is served by the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Attaches the route to the pods of workloads in the route's namespace: a Deployment,
    /// StatefulSet or DaemonSet (group `apps`) by its `spec.selector` (`matchLabels` and
    /// `matchExpressions`), a Service (core group, `group` empty or unset) by its
    /// `spec.selector`. Their pods' sidecars serve the route as with `workloadSelector`; each
    /// ref reports `ResolvedRefs` in `status.workloads.targetRefs`. Set this or
    /// `workloadSelector`, not both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<WorkloadRef>,
}

/// A workload in the route's namespace whose pods serve the route.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// API group: `apps` for Deployment, StatefulSet and DaemonSet; empty or unset for Service
    /// (the core group).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    pub group: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet` or `Service` (others are reported as
    /// `UnsupportedKind`).
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// The object's name, in the route's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Pods (in the route's namespace) whose sidecars serve an attached route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Every label must be present with this value on the pod. Must not be empty (an empty
    /// selector would attach the route to every injected pod of the namespace by accident).
    #[schemars(length(min = 1))]
    pub match_labels: BTreeMap<String, String>,
}

/// Where a ProxyRoute with `spec.workloadSelector` is attached, and whether it is served.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadAttachmentStatus {
    /// `Attached` (the route is in the snapshot of at least one selected pod, or why not:
    /// `NoMatchingPods`, `Invalid`), `Conflicted` (on some pods another attached route claims
    /// the same host and match; the older route keeps it, reason `RouteConflict`, the message
    /// names the field path and the other route), `Programmed` (every selected pod's sidecar
    /// runs its snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods (`name`) whose sidecar snapshot contains the route, sorted; at most 50 listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Selected pods whose snapshot contains the route.
    #[serde(default)]
    pub attached_pods: u32,
    /// Of those, pods whose sidecar acknowledged that snapshot.
    #[serde(default)]
    pub programmed_pods: u32,
    /// Pods where the route lost a conflict (`name`), sorted; at most 50 listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicted_pods: Vec<String>,
    /// One entry per `spec.targetRefs[i]`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRefStatus>,
}

/// How one `spec.targetRefs[i]` resolved.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRefStatus {
    /// The ref as written.
    #[serde(flatten)]
    pub target: WorkloadRef,
    /// `ResolvedRefs`: `True` when the target exists and selects pods with the sidecar;
    /// `False` with `TargetNotFound`, `UnsupportedKind`, `InvalidSelector` or `NoPods` (the
    /// message names the field path, `spec.targetRefs[i]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods with the sidecar that the target selects.
    #[serde(default)]
    pub selected_pods: u32,
    /// Of those, pods whose snapshot contains the route.
    #[serde(default)]
    pub attached_pods: u32,
}

/// TLS certificates of a route.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// Secrets of type `kubernetes.io/tls` (keys `tls.crt`, `tls.key`) in the route's
    /// namespace. A missing Secret or key is reported in `ResolvedRefs`; the route keeps
    /// serving with the other certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretRef>,
}

/// A Secret in the referencing object's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
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
    /// Weighted Backends; one is picked per request in proportion to its weight. Empty only
    /// with `redirect` or `directResponse`.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Overrides the Backend's request timeout for this rule (e.g. `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    // The fields below are the contract's (`weir_config::Rule`), schema included; compile
    // passes them through unchanged.
    /// Largest request body, bytes: `413` up front from `Content-Length`, or when a streamed
    /// body grows past it. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_request_body_bytes: Option<u64>,
    /// WebSocket switch and tunnel idle timeout. Absent: allowed, defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::WebSocketConfig>")]
    pub websocket: Option<serde_json::Value>,
    /// CORS policy; preflights are answered by the proxy. Absent: no CORS handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::CorsPolicy>")]
    pub cors: Option<serde_json::Value>,
    /// Answer with a redirect instead of forwarding (no backendRefs then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::RequestRedirect>")]
    pub redirect: Option<serde_json::Value>,
    /// Answer with a fixed response instead of forwarding (no backendRefs then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::DirectResponse>")]
    pub direct_response: Option<serde_json::Value>,
    /// Token-bucket rate limit of this rule (replaces the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::RateLimit>")]
    pub rate_limit: Option<serde_json::Value>,
    /// External authorization webhook of this rule (replaces the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::ExtAuth>")]
    pub ext_auth: Option<serde_json::Value>,
    /// KairosDB query mode (metric-name routing, split and merge). `metricRoutes[].backend`
    /// names a Backend in the route's namespace (or `namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::Kairos>")]
    pub kairos: Option<serde_json::Value>,
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
    /// Values from a header or a JSON body field (metric-name routing), all must hold: each
    /// `{header | jsonPath, type, value, maxBodyBytes, onBodyError}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<Vec<weir_config::FieldMatch>>")]
    pub fields: Option<serde_json::Value>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared: `Exact` (whole path), `PathPrefix` (segment-aware prefix, the
    /// default), `Wildcard` (`*` = one segment, trailing `**` = any remainder) or
    /// `RegularExpression` (must match the whole path).
    #[serde(rename = "type", default)]
    pub kind: weir_config::PathMatchType,
    /// The path, pattern or regular expression.
    #[schemars(length(min = 1))]
    pub value: String,
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
    pub kind: weir_config::StringMatchType,
    /// The value or regular expression.
    pub value: String,
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
    /// Set for routes with `spec.workloadSelector` (written by the workload controller under
    /// its own field manager; the fleet fields above stay unset for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadAttachmentStatus>,
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
    pub protocol: weir_config::UpstreamProtocol,
    /// Connect and request timeouts (`connect`, default `2s`; `request`, default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::BackendTimeouts>")]
    pub timeouts: Option<serde_json::Value>,
    /// Upstream connection pool settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::PoolConfig>")]
    pub pool: Option<serde_json::Value>,
    /// Active health checks per endpoint (`http: {path, expectedStatuses}` or `tcp: {}`,
    /// `interval`, `timeout`, `unhealthyThreshold`, `healthyThreshold`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::HealthCheck>")]
    pub health_check: Option<serde_json::Value>,
    /// Passive outlier detection: endpoints failing in a row are ejected for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::OutlierDetection>")]
    pub outlier_detection: Option<serde_json::Value>,
    /// How requests are spread over endpoints (default `p2cEwma`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::LoadBalancer>")]
    pub load_balancer: Option<serde_json::Value>,
    /// Circuit breaker over the whole Backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::CircuitBreaker>")]
    pub circuit_breaker: Option<serde_json::Value>,
    /// Retry policy (absent: up to 2 attempts under a 20 % budget; `{attempts: 1}` = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "contract::<weir_config::RetryPolicy>")]
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
    /// A header set on every request sent to this Backend (replacing any value the client
    /// sent), its value read from a Secret in the Backend's namespace, e.g.
    /// `{header: authorization, secretKeyRef: {name: api-token, key: header}}` where the key
    /// holds `Bearer abc…`. Rotating the Secret re-programs the dataplanes; the value never
    /// shows in status, events, logs or `GET /config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRef>,
}

/// A header whose value comes from a Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// Header name, e.g. `authorization`.
    #[schemars(regex(pattern = HEADER_NAME_PATTERN))]
    pub header: String,
    /// The Secret key holding the header value.
    pub secret_key_ref: SecretKeyRef,
}

/// The schema of a contract type (`weir_config`, feature `schema`), for settings the operator
/// passes to the dataplane config unchanged. The Rust field stays a plain JSON value so one
/// object the contract rejects (a status range out of bounds, ...) is reported in its own
/// status with the field path instead of failing the whole watch.
fn contract<T: JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = g.subschema_for::<T>();
    strip_defaults(&mut schema);
    schema
}

/// Drops `default`s (absent = the dataplane's default; the API server would otherwise write
/// every default into stored objects), `title` noise and `null` enum values.
fn strip_defaults(schema: &mut schemars::Schema) {
    // `props`: `v` is a `properties` map, whose keys are field names, not keywords.
    fn walk(v: &mut serde_json::Value, props: bool) {
        match v {
            serde_json::Value::Object(m) => {
                if !props {
                    m.remove("default");
                    m.remove("title");
                    // Unknown fields are pruned by the API server; `false` on an empty struct
                    // (`tcp: {}`) is not structural-schema style.
                    if m.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
                        m.remove("additionalProperties");
                    }
                    // `Option<enum>`: `nullable: true` says it; Kubernetes rejects `null` in `enum`.
                    if let Some(serde_json::Value::Array(e)) = m.get_mut("enum") {
                        e.retain(|v| !v.is_null());
                    }
                }
                for (k, c) in m.iter_mut() {
                    walk(c, !props && k == "properties");
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|c| walk(c, false)),
            _ => {}
        }
    }
    if let Some(m) = schema.as_object_mut() {
        let mut v = serde_json::Value::Object(std::mem::take(m));
        walk(&mut v, false);
        if let serde_json::Value::Object(back) = v {
            *m = back;
        }
    }
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
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub kind: weir_config::SinkType,
    /// URL (`otlp`, `httpJson`) or `host:port` (`syslog`).
    pub endpoint: String,
    /// `httpJson`: the API key, read from a Secret in the sink's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// `otlp` sinks that ship `traces`: the snapshot's `tracing` section (sampling ratio,
    /// parent-based sampling, service name, resource attributes), which applies to every
    /// pod. When several sinks set it, the oldest sink wins and the others report
    /// `TracingApplied=False` (reason `Conflicted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<weir_config::TracingConfig>,
    /// Every other setting of the dataplane config's `sinks.<name>` (batchSize, flushInterval,
    /// queueSize, timeout, signals, apiKeyHeader, ...), passed through and validated by the
    /// contract.
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The schema of the contract's `Sink` (descriptions, enums, patterns), with `apiKey`
/// replaced by `apiKeySecretRef`: the spec is the contract's sink plus a Secret reference.
impl JsonSchema for TelemetrySinkSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TelemetrySinkSpec".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = contract::<weir_config::Sink>(g);
        let mut secret_ref = g.subschema_for::<SecretKeyRef>().to_value();
        if let Some(o) = secret_ref.as_object_mut() {
            o.insert(
                "description".into(),
                "`httpJson`: the API key, read from a Secret in the sink's namespace.".into(),
            );
        }
        if let Some(o) = schema.as_object_mut() {
            o.insert(
                "description".into(),
                "Where telemetry goes besides the local `/metrics`: every dataplane pod runs one \
                 shipper per sink (bounded queue, batches, retries; when the queue is full, items \
                 are dropped and counted). Every field but `type` and `endpoint` is optional."
                    .into(),
            );
        }
        if let Some(props) = schema
            .as_object_mut()
            .and_then(|o| o.get_mut("properties"))
            .and_then(|p| p.as_object_mut())
        {
            if let Some(t) = props.get_mut("type").and_then(|t| t.as_object_mut()) {
                t.insert(
                    "description".into(),
                    "`otlp`, `httpJson` or `syslog`.".into(),
                );
            }
            props.remove("apiKey");
            props.insert("apiKeySecretRef".into(), secret_ref);
            let mut tracing = contract::<weir_config::TracingConfig>(g).to_value();
            if let Some(o) = tracing.as_object_mut() {
                o.insert(
                    "description".into(),
                    "`otlp` sinks that ship `traces`: the snapshot's `tracing` section (sampling \
                     ratio, parent-based sampling, service name, resource attributes) for every \
                     pod. When several sinks set it, the oldest wins and the others report \
                     `TracingApplied=False` (reason `Conflicted`)."
                        .into(),
                );
                if let Some(r) = o
                    .get_mut("properties")
                    .and_then(|p| p.get_mut("samplingRatio"))
                    .and_then(|r| r.as_object_mut())
                {
                    r.insert("minimum".into(), 0.into());
                    r.insert("maximum".into(), 1.into());
                }
            }
            props.insert("tracing".into(), tracing);
        }
        schema
    }
}

/// A key of a Secret in the referencing object's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the operator and the pods saw of a TelemetrySink.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySinkStatus {
    /// `Ready`: valid, Secret references resolved and in the running snapshot of every ready
    /// pod; `ResolvedRefs` when the sink references a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Items shipped, summed over the ready pods (refreshed at most once per
    /// `--sink-status-interval` while it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped: Option<u64>,
    /// Items dropped (queue full), summed over the ready pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Items whose sending failed after retries, summed over the ready pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    /// The latest successful send by any pod (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
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
    let mut crds = vec![ProxyRoute::crd(), Backend::crd(), TelemetrySink::crd()];
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            if let Some(schema) = v
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                drop_nullable(schema);
            }
        }
    }
    crds
}

/// Removes `nullable: true` (what `Option` fields get): the API server prunes a `null` given
/// for a non-nullable field anyway, and the OpenAPI v2 it publishes drops the type and fields of
/// nullable properties, so `kubectl explain` would show them as `<>` without their fields.
fn drop_nullable(
    s: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    s.nullable = None;
    for p in s.properties.iter_mut().flat_map(|m| m.values_mut()) {
        drop_nullable(p);
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(i)) => drop_nullable(i),
        Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(drop_nullable),
        None => {}
    }
    for sub in [&mut s.any_of, &mut s.one_of, &mut s.all_of]
        .into_iter()
        .flatten()
    {
        sub.iter_mut().for_each(drop_nullable);
    }
}

/// The CRD files `crdgen` writes: `(file name, YAML)`.
pub fn render() -> Vec<(String, String)> {
    all()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            let yaml = yaml_serde::to_string(&crd).expect("CRDs serialize to YAML");
            (
                name,
                format!("# Generated by `weir-operator crdgen` (make crds). Do not edit.\n{yaml}"),
            )
        })
        .collect()
}
