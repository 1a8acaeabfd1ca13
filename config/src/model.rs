//! The `Snapshot` type: everything a dataplane pod needs to serve, fully resolved.
//!
//! Field names are camelCase like Kubernetes resources; unknown fields are rejected everywhere.

use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One complete, resolved dataplane configuration. The standalone YAML file and the body of
/// `PUT /config` are both this type.
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
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Backends by name, with resolved endpoints.
    #[serde(default)]
    pub backends: BTreeMap<String, Backend>,
    /// Telemetry sinks by name (shipping lands with the observability issue; the contract is here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, Sink>,
}

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http3Config {
    /// Serve HTTP/3 on UDP at the listener's address (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `ma` of the `Alt-Svc: h3=":port"` header added on the TCP side (default 24h).
    #[serde(default = "default_alt_svc_max_age")]
    pub alt_svc_max_age: Duration,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; the first is the default (no SNI or no SNI match), the others are chosen
    /// when the client's SNI matches one of their `hostnames`.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Certificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// SNI names this certificate serves (exact or `*.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

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
}

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
    /// Weighted backends; one is picked per request in proportion to its weight.
    pub backend_refs: Vec<BackendRef>,
    /// Overrides the backend's request timeout for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StringMatchType {
    #[default]
    Exact,
    /// Must match the whole value.
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filters {
    /// Applied to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "HeaderFilter::is_empty")]
    pub request_headers: HeaderFilter,
    /// Applied to the response before it goes back to the client.
    #[serde(default, skip_serializing_if = "HeaderFilter::is_empty")]
    pub response_headers: HeaderFilter,
    /// Path rewrite, applied in order: stripPrefix, replacePrefix, addPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty() && self.response_headers.is_empty() && self.path.is_none()
    }
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixReplace {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// Name of a backend in `backends`.
    pub name: String,
    /// Relative weight; 0 takes the backend out of rotation for this rule.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint (default 128).
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

/// Where telemetry goes besides the local `/metrics`. The dataplane validates sinks; shipping
/// them is the observability issue's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// URL (`otlp`, `httpJson`) or `host:port` (`syslog`).
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkType {
    Otlp,
    HttpJson,
    Syslog,
}
