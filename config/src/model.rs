//! The `Snapshot` type: everything a dataplane pod needs to serve, fully resolved.
//!
//! Field names are camelCase like Kubernetes resources; unknown fields are rejected everywhere.

use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// True when `a` and `b` are the same route: the same `Arc` (shared between versions, no
/// comparison), or equal values.
pub fn same_route(a: &Arc<Route>, b: &Arc<Route>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Serde for `Vec<Arc<T>>` as a plain JSON array of `T` (serde's `rc` feature would change
/// every crate's serde build for this one field); field paths of errors are kept.
pub(crate) mod shared {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer, T: Serialize>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| &**x))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Ok(Vec::<T>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    /// The same for one `Arc<T>`.
    pub mod one {
        use super::*;

        pub fn serialize<S: Serializer, T: Serialize>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
            (**v).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
            d: D,
        ) -> Result<Arc<T>, D::Error> {
            T::deserialize(d).map(Arc::new)
        }
    }
}

/// One complete, resolved dataplane configuration. The standalone YAML file and the body of
/// `PUT /config` are both this type.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    /// Free-form version label. When empty, the dataplane uses the content hash
    /// ([`Snapshot::content_hash`]) as the version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Sockets to accept client traffic on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Routes, in declaration order (declaration order breaks precedence ties).
    ///
    /// Each route is an `Arc` so that versions share the routes they have in common: a delta
    /// ([`crate::Delta::apply`]) makes the next version of a 10,000-route snapshot by copying
    /// 10,000 pointers, not 10,000 routes, and a route that is the same `Arc` in two versions
    /// is unchanged without comparing it ([`same_route`]). Measured: copying, comparing and
    /// freeing the unchanged routes were ~50% of a dataplane's one-route `PATCH` at 10,000
    /// routes (BENCHMARKS.md, "the full 10,000 × 50 run"). The JSON form is unchanged.
    #[serde(default, with = "shared")]
    #[cfg_attr(feature = "schema", schemars(with = "Vec<Route>"))]
    pub routes: Vec<Arc<Route>>,
    /// Backends by name, with resolved endpoints.
    #[serde(default)]
    pub backends: BTreeMap<String, Backend>,
    /// Telemetry sinks by name (shipping lands with the observability issue; the contract is here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, Sink>,
    /// Request tracing: sampling and service name of the spans exported to `otlp` sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::TracingConfig>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs.
    pub name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8443`.
    pub address: String,
    /// `http` (HTTP/1.1 and h2c, detected per connection) or `https` (TLS with ALPN h2/http1.1).
    pub protocol: ListenerProtocol,
    /// TLS settings, only for `https`. Without certificates a self-signed one is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// HTTP/3 on the same port number over UDP, only for `https`; on by default there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http3: Option<Http3Config>,
    /// Request limits (header size/count, URI length, header and idle timeouts).
    #[serde(default, skip_serializing_if = "crate::ListenerLimits::is_default")]
    pub limits: crate::ListenerLimits,
}

impl Listener {
    /// The HTTP/3 settings in force: `None` when HTTP/3 is off for this listener.
    pub fn http3_settings(&self) -> Option<Http3Config> {
        match (self.protocol, &self.http3) {
            (ListenerProtocol::Https, None) => Some(Http3Config::default()),
            (ListenerProtocol::Https, Some(h)) if h.enabled => Some(h.clone()),
            _ => None,
        }
    }
}

/// QUIC + HTTP/3 settings of an `https` listener.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http3Config {
    /// Serve HTTP/3 on UDP at the listener's address (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `ma` of the `Alt-Svc: h3=":port"` header added on the TCP side (default 24h).
    #[serde(default = "default_alt_svc_max_age")]
    pub alt_svc_max_age: Duration,
    /// The port `Alt-Svc` names: the UDP port clients reach this listener on. Defaults to the
    /// listener's own port; behind a Service or load balancer that maps 443 to 8443 it must be
    /// the outside port (443), or browsers try a port nothing answers on and stay on HTTP/2.
    /// `0` or `"off"` stops advertising (HTTP/3 is still served, for clients that know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<AdvertisedPort>,
    /// Concurrent QUIC connections accepted; more are refused (default 10000).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Concurrent request streams per connection (default 256).
    #[serde(default = "default_max_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed (default 30s).
    #[serde(default = "default_quic_idle")]
    pub idle_timeout: Duration,
    /// Flow-control window per stream, bytes (default 1 MiB).
    #[serde(default = "default_stream_window")]
    pub stream_receive_window: u32,
    /// Flow-control window per connection, bytes (default 8 MiB).
    #[serde(default = "default_conn_window")]
    pub receive_window: u32,
    /// Bytes in flight per connection before sending waits (default 8 MiB).
    #[serde(default = "default_conn_window")]
    pub send_window: u32,
    /// Requested UDP socket receive buffer, bytes (default 4 MiB; the kernel may cap it,
    /// see net.core.rmem_max — a warning is logged then).
    #[serde(default = "default_udp_buffer")]
    pub udp_receive_buffer: u32,
    /// Requested UDP socket send buffer, bytes (default 4 MiB; see net.core.wmem_max).
    #[serde(default = "default_udp_buffer")]
    pub udp_send_buffer: u32,
}

impl Default for Http3Config {
    fn default() -> Self {
        Http3Config {
            enabled: true,
            alt_svc_max_age: default_alt_svc_max_age(),
            advertised_port: None,
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_streams(),
            idle_timeout: default_quic_idle(),
            stream_receive_window: default_stream_window(),
            receive_window: default_conn_window(),
            send_window: default_conn_window(),
            udp_receive_buffer: default_udp_buffer(),
            udp_send_buffer: default_udp_buffer(),
        }
    }
}

/// `listeners[].http3.advertisedPort` as written: a number or a word. Kept as written so that
/// `validate()` can name the field when it is out of range or an unknown word (a typed `u16`
/// would fail in serde with a message that has no field path).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdvertisedPort {
    /// `1`–`65535`, or `0` for off.
    Number(i64),
    /// `"off"`.
    Word(String),
}

impl AdvertisedPort {
    /// The port to advertise for a listener bound to `listener_port`: `None` when advertising
    /// is off or the value is invalid (which `validate()` reports).
    pub fn resolve(value: Option<&AdvertisedPort>, listener_port: u16) -> Option<u16> {
        match value {
            None => Some(listener_port),
            Some(AdvertisedPort::Number(n)) => u16::try_from(*n).ok().filter(|p| *p != 0),
            Some(AdvertisedPort::Word(_)) => None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_alt_svc_max_age() -> Duration {
    Duration::from_secs(86400)
}
fn default_max_connections() -> u32 {
    10_000
}
fn default_max_streams() -> u32 {
    256
}
fn default_quic_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_stream_window() -> u32 {
    1 << 20
}
fn default_conn_window() -> u32 {
    8 << 20
}
fn default_udp_buffer() -> u32 {
    4 << 20
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Http,
    Https,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; the first is the default (no SNI or no SNI match), the others are chosen
    /// when the client's SNI matches one of their `hostnames`.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    /// PEM file with the certificate chain, leaf first. Set either `certFile` + `keyFile` or
    /// `certPem` + `keyPem`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_file: String,
    /// The certificate chain as PEM text, inline (the operator fills it from a TLS Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<SecretString>,
    /// The private key as PEM text, inline; `Debug` and `GET /config` never show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<SecretString>,
    /// SNI names this certificate serves (exact or `*.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Unique name; shows in logs and error bodies.
    pub name: String,
    /// Hostnames this route serves: exact (`api.example.com`) or wildcard (`*.example.com`,
    /// one or more labels). Empty means every host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules; see the README for match precedence.
    pub rules: Vec<Rule>,
    /// Rate limit shared by every rule of the route that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::RateLimit>,
    /// External authorization for every rule of the route that has none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<crate::ExtAuth>,
    /// Names of the snapshot `listeners` this route is served on. Empty means every listener.
    /// (A Gateway API route attached to a Gateway's HTTP listener only must not answer on its
    /// HTTPS listener.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Any one of these matches selects the rule (OR); within one match every condition must
    /// hold (AND). No matches means the rule matches every request.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// Request/response transforms applied when this rule is selected.
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    /// Weighted backends; one is picked per request in proportion to its weight. Empty only
    /// with `redirect` or `directResponse`.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Overrides the backend's request timeout for this rule: the whole request, retries
    /// included (Gateway API `timeouts.request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Limit of each upstream try of this rule, retries each getting their own (Gateway API
    /// `timeouts.backendRequest`); replaces the backend's `retries.perTryTimeout`. `0s` turns
    /// the per-try limit off for this rule. Exceeded gives 504. At most `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_timeout: Option<Duration>,
    /// Largest request body, bytes: `413` up front from `Content-Length`, or when a streamed
    /// body grows past it. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// WebSocket switch and tunnel idle timeout. Absent: allowed, defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<crate::WebSocketConfig>,
    /// CORS policy; preflights are answered by the proxy. Absent: no CORS handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<crate::CorsPolicy>,
    /// Answer with a redirect instead of forwarding (no backendRefs then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<crate::RequestRedirect>,
    /// Answer with a fixed response instead of forwarding (no backendRefs then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<crate::DirectResponse>,
    /// Token-bucket rate limit of this rule (replaces the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::RateLimit>,
    /// External authorization webhook of this rule (replaces the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<crate::ExtAuth>,
    /// KairosDB query mode (metric-name routing, split and merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kairos: Option<crate::Kairos>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    /// Values from a header or a JSON body field (metric-name routing); see `FieldMatch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<crate::FieldMatch>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value on a segment boundary (`/api` matches `/api/x`, not `/apix`).
    #[default]
    PathPrefix,
    /// Segment pattern: `*` matches exactly one segment, a trailing `**` any remainder.
    Wildcard,
    /// A regular expression (Rust `regex` syntax) that must match the whole path.
    RegularExpression,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub value: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StringMatchType {
    #[default]
    Exact,
    /// Must match the whole value.
    RegularExpression,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filters {
    /// Applied to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// Applied to the response before it goes back to the client.
    #[serde(default, skip_serializing_if = "HeaderFilter::is_empty")]
    pub response_headers: HeaderFilter,
    /// Path rewrite, applied in order: stripPrefix, replacePrefix, addPrefix; or replaceFull
    /// alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// The host sent upstream (`Host` / `:authority`) instead of the client's (Gateway API
    /// URLRewrite `hostname`). `X-Forwarded-Host` still carries the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Copies of the request sent to other backends, fire-and-forget (Gateway API
    /// RequestMirror): their responses are discarded, and they never delay or fail the
    /// request itself. The request filters above apply to the copies too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.path.is_none()
            && self.host_rewrite.is_none()
            && self.mirrors.is_empty()
    }
}

/// A request mirror: a copy of a share of the requests goes to `backend`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Name of a backend in `backends`.
    pub backend: String,
    /// Share of the requests mirrored, 0-100 (fractions allowed, e.g. `0.5`). Absent: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderFilter {
    /// Appended (existing values are kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Replaces any existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderFilter {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewrite {
    /// Removed from the front of the path when present (segment-aware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Replaces a leading prefix (segment-aware) with another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<PrefixReplace>,
    /// Put in front of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<String>,
    /// Replaces the whole path (the query is kept); Gateway API ReplaceFullPath. Not together
    /// with the other three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full: Option<String>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixReplace {
    pub from: String,
    /// The replacement; empty or `/` removes the prefix (`/foo/bar` -> `/bar`).
    pub to: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// Name of a backend in `backends` (free text when `invalid` is set).
    pub name: String,
    /// Relative weight; 0 takes the backend out of rotation for this rule.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Header filters applied after the rule's when this backend is picked (only
    /// `requestHeaders` and `responseHeaders`).
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
    /// Why this reference could not be resolved (set by the operator for a Gateway API
    /// backendRef to a missing Service, an unknown kind, or a namespace no ReferenceGrant
    /// allows). Requests picked for it, in proportion to its weight, get `500` with this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

fn default_weight() -> u32 {
    1
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Resolved endpoints: `host:port` strings or `{address, weight}` objects.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Protocol spoken to the endpoints: `http1` (default) or `h2c` (HTTP/2 prior knowledge).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub timeouts: BackendTimeouts,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Active health checks per endpoint. Absent: no active checks (every endpoint counts as
    /// healthy unless passive outlier detection ejects it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection (ejection on consecutive failures). Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How requests are spread over the available endpoints (default `p2cEwma`).
    #[serde(default, skip_serializing_if = "LoadBalancer::is_default")]
    pub load_balancer: LoadBalancer,
    /// Circuit breaker over the whole backend. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Requests in flight to this backend at once (from this dataplane pod). More wait up to
    /// `queueTimeout`, then get `503 backend_overloaded`. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u32>,
    /// How long a request waits for a `maxConcurrentRequests` slot (default 1s; `0s` = never
    /// wait).
    #[serde(
        default = "default_queue_timeout",
        skip_serializing_if = "is_default_queue_timeout"
    )]
    pub queue_timeout: Duration,
    /// Retries. Absent: the default policy (up to 2 attempts; connect errors are retried for
    /// every method, connection resets for idempotent ones; under a 20 % budget). Write
    /// `retries: { attempts: 1 }` to turn retries off.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retries: RetryPolicy,
    /// A header set on every request sent to this backend (e.g. `Authorization: Bearer …`).
    /// The value is never shown by `GET /config` or written to logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}
fn is_default_queue_timeout(d: &Duration) -> bool {
    *d == default_queue_timeout()
}

/// Active health checking of every endpoint of a backend.
///
/// Endpoints start healthy (so a new config serves at once). `unhealthyThreshold` consecutive
/// failed checks take an endpoint out of rotation, `healthyThreshold` consecutive passed checks
/// bring it back. A check fails when it times out, cannot connect, or (HTTP) answers a status
/// outside `expectedStatuses`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP check (a `GET`, over the backend's protocol). Exactly one of `http` and `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// TCP check: passes when a connection opens. Exactly one of `http` and `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between checks of one endpoint (default 5s).
    #[serde(default = "default_hc_interval")]
    pub interval: Duration,
    /// A random extra wait in `[0, jitter]` added to every interval, so checks of many
    /// endpoints and pods spread out (default 500ms).
    #[serde(default = "default_hc_jitter")]
    pub jitter: Duration,
    /// A check not finished within this long fails (default 1s).
    #[serde(default = "default_hc_timeout")]
    pub timeout: Duration,
    /// Consecutive failed checks that take a healthy endpoint out of rotation (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that bring an unhealthy endpoint back (default 2).
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// When every endpoint is unhealthy: `false` (default) fails requests fast with
    /// `503 no_healthy_endpoint`; `true` sends them to all endpoints as if healthy (Envoy's
    /// "panic mode"), on the theory that checks can be wrong and trying beats certain failure.
    #[serde(default)]
    pub panic_mode: bool,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_jitter() -> Duration {
    Duration::from_millis(500)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path (and query) requested (default `/healthz`).
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Statuses that pass, as `"200"` or `"200-299"` (default `["200-299"]`).
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
    /// `Host` header sent (default: the endpoint's `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Default for HttpHealthCheck {
    fn default() -> Self {
        HttpHealthCheck {
            path: default_hc_path(),
            expected_statuses: default_expected_statuses(),
            host: None,
        }
    }
}

fn default_hc_path() -> String {
    "/healthz".into()
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange { from: 200, to: 299 }]
}

/// TCP connect check; no settings yet (written `tcp: {}`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// An inclusive range of HTTP statuses, written `"200-299"`, `"204"` or `204`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

impl std::str::FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let one = |t: &str| -> Result<u16, String> {
            let v: u16 = t
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a status or a range like \"200-299\""))?;
            if !(100..=599).contains(&v) {
                return Err(format!("status {v} is outside 100-599"));
            }
            Ok(v)
        };
        let (from, to) = match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let v = one(s)?;
                (v, v)
            }
        };
        if from > to {
            return Err(format!("range {s:?} is empty (from > to)"));
        }
        Ok(StatusRange { from, to })
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a status like 200 or a range like \"200-299\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Passive outlier detection, after Envoy's: an endpoint that fails this many times in a row
/// is ejected (out of rotation) for `baseEjectionTime × 2^(n-1)` (n = its ejection count,
/// capped at `maxEjectionTime`; n goes down by one for every `maxEjectionTime` without an
/// ejection), then rejoins. At most `maxEjectionPercent` of the endpoints (but always at
/// least one) are ejected at once. A threshold of 0 turns that trigger off.
///
/// "Local failures" are the ones where the endpoint gave no response: connect errors,
/// connection resets, timeouts.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or local failures (default 5).
    #[serde(default = "default_consecutive_5xx", rename = "consecutive5xx")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 responses or local failures (default 0: off).
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Consecutive local failures: connect errors, resets, timeouts (default 3).
    #[serde(default = "default_consecutive_local")]
    pub consecutive_local_failures: u32,
    /// First ejection's length (default 30s).
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Duration,
    /// Longest ejection (default 5m).
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Duration,
    /// Share of endpoints that may be ejected at once, 1-100 (default 50); at least one
    /// endpoint may always be ejected.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: default_consecutive_5xx(),
            consecutive_gateway_errors: 0,
            consecutive_local_failures: default_consecutive_local(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_consecutive_local() -> u32 {
    3
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// The balancing policy of a backend.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// `p2cEwma` (default), `roundRobin`, `leastRequest` or `weightedRoundRobin`.
    #[serde(rename = "type", default)]
    pub kind: LoadBalancerType,
    /// How fast the latency estimate of `p2cEwma` forgets (default 10s, as in Linkerd).
    #[serde(default = "default_ewma_decay")]
    pub ewma_decay: Duration,
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer {
            kind: LoadBalancerType::default(),
            ewma_decay: default_ewma_decay(),
        }
    }
}

impl LoadBalancer {
    pub fn is_default(&self) -> bool {
        *self == LoadBalancer::default()
    }
}

fn default_ewma_decay() -> Duration {
    Duration::from_secs(10)
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancerType {
    /// Power of two choices over peak-EWMA latency (Linkerd's default): two random available
    /// endpoints, the one with the lower `latency × (in-flight + 1) / weight` wins. Adapts to
    /// slow and overloaded endpoints without configuration.
    #[default]
    P2cEwma,
    /// Strict rotation over the available endpoints; weights are ignored.
    RoundRobin,
    /// The endpoint with the fewest requests in flight (divided by its weight); ties rotate.
    LeastRequest,
    /// Smooth weighted round robin (nginx's): shares follow the weights, evenly interleaved.
    WeightedRoundRobin,
}

/// A circuit breaker over the whole backend: closed (normal) → open (every request gets
/// `503 circuit_open` at once) → after `openDuration`, half-open (up to `halfOpenProbes`
/// requests go through; all succeed → closed, any fails → open again).
///
/// Failures are 5xx responses and local failures (connect errors, resets, timeouts).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Opens after this many failures in a row (default 5; 0 = this trigger off).
    #[serde(default = "default_cb_consecutive")]
    pub consecutive_failures: u32,
    /// Opens when the failed share of the requests in `window` reaches this (0 < r <= 1);
    /// absent = this trigger off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// Sliding window for `errorRatio` (default 10s).
    #[serde(default = "default_cb_window")]
    pub window: Duration,
    /// `errorRatio` is only judged with at least this many requests in the window (default 20).
    #[serde(default = "default_cb_min_requests")]
    pub min_requests: u32,
    /// How long the breaker stays open before probing (default 10s).
    #[serde(default = "default_cb_open")]
    pub open_duration: Duration,
    /// Requests let through while half-open; all must succeed to close (default 1).
    #[serde(default = "default_cb_probes")]
    pub half_open_probes: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            consecutive_failures: default_cb_consecutive(),
            error_ratio: None,
            window: default_cb_window(),
            min_requests: default_cb_min_requests(),
            open_duration: default_cb_open(),
            half_open_probes: default_cb_probes(),
        }
    }
}

fn default_cb_consecutive() -> u32 {
    5
}
fn default_cb_window() -> Duration {
    Duration::from_secs(10)
}
fn default_cb_min_requests() -> u32 {
    20
}
fn default_cb_open() -> Duration {
    Duration::from_secs(10)
}
fn default_cb_probes() -> u32 {
    1
}

/// When and how a request is tried again on another endpoint.
///
/// A request is retried only when it is safe: the connection to the endpoint could not be
/// opened (the request provably never left), or the method is idempotent (GET, HEAD, OPTIONS,
/// PUT, DELETE, TRACE). Its body must also still be replayable: bodies are kept while sent up
/// to 64 KiB; a larger body cannot be replayed (except after a connect error, when none of it
/// was sent). Every retry also needs the budget's consent. Retries go to an endpoint not tried
/// yet when there is one, after an exponential backoff with full jitter. The whole exchange
/// (all tries and backoffs) must get response headers within the request timeout (the rule's
/// `timeout` or `timeouts.request`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included (default 2; 1 = no retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Which failures are retried.
    #[serde(default)]
    pub retry_on: RetryOn,
    /// Limit for one try (default: none, only the request timeout). A try that exceeds it is
    /// a `timeout` failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: default_attempts(),
            retry_on: RetryOn::default(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
        }
    }
}

impl RetryPolicy {
    pub fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }
}

fn default_attempts() -> u32 {
    2
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryOn {
    /// The connection could not be opened (refused, unreachable, connect timeout); any method
    /// (default true).
    #[serde(default = "default_true")]
    pub connect_error: bool,
    /// The connection broke before a response arrived; idempotent methods only (default true).
    #[serde(default = "default_true")]
    pub reset: bool,
    /// The try exceeded `perTryTimeout`; idempotent methods only (default false).
    #[serde(default)]
    pub timeout: bool,
    /// Response statuses that are retried, e.g. `[502, 503]` or `["500-599"]`; idempotent
    /// methods only (default none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<StatusRange>,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect_error: true,
            reset: true,
            timeout: false,
            statuses: Vec::new(),
        }
    }
}

/// Exponential backoff with full jitter: before retry n (1-based) wait a random time in
/// `[0, min(max, base × 2^(n-1))]`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// Default 25ms.
    #[serde(default = "default_backoff_base")]
    pub base: Duration,
    /// Default 250ms.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

/// Retry budget (Finagle/Linkerd style) so retries cannot multiply load during an outage:
/// over the last 10 seconds, retries may be at most `minPerSecond × 10 + ratio × requests`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per original request, 0-1 (default 0.2).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second, whatever the traffic (default 10).
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}

/// A header injected into every upstream request of a backend; replaces any value the client
/// sent. The operator fills `value` from a Secret. `Debug` and `GET /config` never show it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credential {
    /// Header name, e.g. `authorization`.
    pub header: String,
    /// Header value, e.g. `Bearer abc…`.
    pub value: String,
}

/// What `GET /config` and logs show instead of a credential value.
pub const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .field("value", &REDACTED)
            .finish()
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTimeouts {
    /// TCP connect timeout per attempt (default 2s); exceeded gives 502.
    #[serde(default = "default_connect_timeout")]
    pub connect: Duration,
    /// Time from sending the request until the response headers arrive (default 30s);
    /// exceeded gives 504.
    #[serde(default = "default_request_timeout")]
    pub request: Duration,
}

impl Default for BackendTimeouts {
    fn default() -> Self {
        BackendTimeouts {
            connect: default_connect_timeout(),
            request: default_request_timeout(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint once a burst is over (default 128): more
    /// are closed after going unused for 1 s, not as soon as they turn idle.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// How long an idle upstream connection is kept (default 90s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

fn default_max_idle() -> usize {
    128
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

/// An upstream endpoint. Deserializes from `"host:port"` or `{address: "host:port", weight: 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: String,
    #[serde(skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Self {
        Endpoint {
            address: address.into(),
            weight: 1,
        }
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a \"host:port\" string or a map with address and weight")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint::new(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Endpoint, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(Endpoint {
                    address: f.address,
                    weight: f.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Where telemetry goes besides the local `/metrics`: the dataplane runs one shipper per sink
/// (bounded queue, batches, retries; when the queue is full, items are dropped and counted).
/// Every field but `type` and `endpoint` is optional; the `default_*` functions give the values
/// in force.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// URL (`otlp`, `httpJson`: `http(s)://host:port/path`) or `host:port` (`syslog`).
    pub endpoint: String,
    /// Items per batch (`httpJson`; default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// A batch is sent when it is full or when its oldest item is this old (default 5s); also
    /// the metrics period of `httpJson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Duration>,
    /// Items waiting to be shipped (default 10000); when full, new items are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<usize>,
    /// Per-attempt timeout of a send (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What to ship (default: `logs` and `metrics` for `httpJson`, `logs` for `syslog`, all
    /// three for `otlp`; `traces` is for `otlp` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<Vec<SinkSignal>>,
    /// `httpJson`, `otlp`: API key sent in `apiKeyHeader` (for an OTLP collector e.g.
    /// `apiKeyHeader: authorization`, `apiKey: Bearer …`). The operator fills it from a Secret;
    /// `Debug` and `GET /config` never show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretString>,
    /// `httpJson`, `otlp`: header carrying `apiKey` (default `X-API-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_header: Option<String>,
    /// `httpJson`, `otlp` over https: PEM file of the CAs to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `httpJson`, `otlp` over https: `false` skips certificate verification (any certificate
    /// is accepted; handshake signatures are still checked). Default `true`. For test
    /// collectors only: a warning is logged when the sink starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// `httpJson`: where metric batches go (default: `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// `service.name` of log documents, and syslog HOSTNAME (default `weir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// `syslog`: `udp` (default; one message per datagram) or `tcp` (octet counting).
    /// `httpJson`: `http` (default; HTTP/1.1 over TCP, TLS for `https://`) or `http3` (QUIC +
    /// HTTP/3, `https://` endpoints only; one connection kept, reconnected after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<SinkTransport>,
    /// `syslog`: facility number 0..=23 (default 16, local0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<u8>,
    /// `syslog`: APP-NAME (default `weir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// `otlp`: `httpProtobuf` (default; POST to `endpoint` + `/v1/<signal>`) or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::OtlpProtocol>,
}

impl Sink {
    pub const DEFAULT_BATCH_SIZE: usize = 500;
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_QUEUE_SIZE: usize = 10_000;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_API_KEY_HEADER: &'static str = "X-API-Key";
    pub const DEFAULT_SOURCE_NAME: &'static str = "weir";
    pub const DEFAULT_FACILITY: u8 = 16;
    pub const DEFAULT_APP_NAME: &'static str = "weir";

    /// A sink with every optional field unset (their defaults apply).
    pub fn new(kind: SinkType, endpoint: impl Into<String>) -> Sink {
        Sink {
            kind,
            endpoint: endpoint.into(),
            batch_size: None,
            flush_interval: None,
            queue_size: None,
            timeout: None,
            signals: None,
            api_key: None,
            api_key_header: None,
            ca_file: None,
            tls_verify: None,
            metrics_endpoint: None,
            source_name: None,
            transport: None,
            facility: None,
            app_name: None,
            protocol: None,
        }
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(Self::DEFAULT_BATCH_SIZE)
    }
    pub fn flush_interval(&self) -> std::time::Duration {
        self.flush_interval
            .unwrap_or(Self::DEFAULT_FLUSH_INTERVAL)
            .get()
    }
    pub fn queue_size(&self) -> usize {
        self.queue_size.unwrap_or(Self::DEFAULT_QUEUE_SIZE)
    }
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT).get()
    }
    pub fn api_key_header(&self) -> &str {
        self.api_key_header
            .as_deref()
            .unwrap_or(Self::DEFAULT_API_KEY_HEADER)
    }
    pub fn source_name(&self) -> &str {
        self.source_name
            .as_deref()
            .unwrap_or(Self::DEFAULT_SOURCE_NAME)
    }
    pub fn app_name(&self) -> &str {
        self.app_name.as_deref().unwrap_or(Self::DEFAULT_APP_NAME)
    }
    pub fn facility(&self) -> u8 {
        self.facility.unwrap_or(Self::DEFAULT_FACILITY)
    }
    /// `transport`, else `udp` for `syslog` and `http` for the others.
    pub fn transport(&self) -> SinkTransport {
        self.transport.unwrap_or(match self.kind {
            SinkType::Syslog => SinkTransport::Udp,
            _ => SinkTransport::Http,
        })
    }
    pub fn metrics_endpoint(&self) -> &str {
        self.metrics_endpoint.as_deref().unwrap_or(&self.endpoint)
    }
    /// Whether server certificates are verified (`tlsVerify`, default `true`).
    pub fn tls_verify(&self) -> bool {
        self.tls_verify.unwrap_or(true)
    }
    /// Whether `signal` is shipped (explicit `signals`, else the type's default).
    pub fn ships(&self, signal: SinkSignal) -> bool {
        match &self.signals {
            Some(v) => v.contains(&signal),
            None => match self.kind {
                SinkType::Syslog => signal == SinkSignal::Logs,
                SinkType::HttpJson => signal != SinkSignal::Traces,
                SinkType::Otlp => true,
            },
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkType {
    Otlp,
    HttpJson,
    Syslog,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkSignal {
    Logs,
    Metrics,
    /// Request spans (`otlp` sinks only).
    Traces,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkTransport {
    /// `syslog`
    Udp,
    /// `syslog`
    Tcp,
    /// `httpJson`: HTTP/1.1 (TLS for `https://`).
    Http,
    /// `httpJson`: HTTP/3 over QUIC.
    Http3,
}

/// The former name of [`SinkTransport`].
pub type SyslogTransport = SinkTransport;

/// A secret string (API keys): serialized as is, but `Debug` shows [`REDACTED`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}
