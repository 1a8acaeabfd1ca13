//! Protocol settings: listener request limits, per-rule request body limit, WebSocket switch and
//! CORS policy — with their validation.

use crate::duration::Duration;
use crate::error::Errors;
use crate::model::StringMatchType;
use crate::validate::compile_full_match;
use serde::{Deserialize, Serialize};

/// Request limits of a listener (`listeners[].limits`), enforced on HTTP/1.1, HTTP/2 and
/// HTTP/3 alike. Defaults follow Envoy/Traefik: 60 KiB of headers, 100 headers, 8 KiB URI,
/// 10 s to send the request headers, 5 min without traffic closes a connection.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerLimits {
    /// Largest request header section (names + values, request line included), bytes;
    /// larger gets `431` (default 61440).
    #[serde(default = "default_header_bytes")]
    pub max_request_header_bytes: u32,
    /// Most request header fields; more gets `431` (default 100).
    #[serde(default = "default_headers")]
    pub max_request_headers: u32,
    /// Longest request target (path + query), bytes; longer gets `414` (default 8192).
    #[serde(default = "default_uri_bytes")]
    pub max_uri_bytes: u32,
    /// Slowloris guard (default 10s): an HTTP/1.1 client must send each request's header
    /// section within it, an HTTP/2 connection must complete its first request head within
    /// it, an HTTP/3 request stream its HEADERS frame; otherwise the connection (HTTP/3: the
    /// stream) is dropped.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (default 5m).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_request_header_bytes: default_header_bytes(),
            max_request_headers: default_headers(),
            max_uri_bytes: default_uri_bytes(),
            header_read_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl ListenerLimits {
    pub fn is_default(&self) -> bool {
        *self == ListenerLimits::default()
    }
}

fn default_header_bytes() -> u32 {
    60 * 1024
}
fn default_headers() -> u32 {
    100
}
fn default_uri_bytes() -> u32 {
    8 * 1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
fn default_ws_idle() -> Duration {
    Duration::from_secs(300)
}

/// WebSocket handling of a rule (`rules[].websocket`). Absent: WebSockets allowed with the
/// defaults (as Traefik does).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept WebSocket handshakes (HTTP/1.1 `Upgrade: websocket`, HTTP/2 and HTTP/3 extended
    /// CONNECT) on this rule; when false they get `403` (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A tunnel with no bytes either way for this long is closed (default 5m).
    #[serde(default = "default_ws_idle")]
    pub idle_timeout: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            idle_timeout: default_ws_idle(),
        }
    }
}

/// One allowed CORS origin: exact (`https://app.example.com`, or `*` for any) or a regular
/// expression that must match the whole `Origin` value.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OriginMatch {
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub value: String,
}

/// CORS policy of a rule (`rules[].cors`): preflights (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) are answered by the proxy; other requests from an allowed
/// origin get the `Access-Control-Allow-*` headers added to the upstream's response.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Origins allowed; a request from any other origin gets no CORS headers.
    #[serde(default)]
    pub allow_origins: Vec<OriginMatch>,
    /// Methods a preflight may ask for (default `GET, HEAD, POST`); `*` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; `*` allows any (default none beyond the
    /// CORS-safelisted ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (not allowed with an exact `*` origin).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// Checks `listeners[i].limits`.
pub fn validate_limits(p: &str, l: &ListenerLimits, errs: &mut Errors) {
    if l.max_request_header_bytes < 1024 {
        errs.push(
            format!("{p}.maxRequestHeaderBytes"),
            "must be at least 1024",
        );
    }
    if l.max_request_headers == 0 {
        errs.push(format!("{p}.maxRequestHeaders"), "must be at least 1");
    }
    if l.max_uri_bytes < 16 {
        errs.push(format!("{p}.maxUriBytes"), "must be at least 16");
    }
    if l.header_read_timeout.get().is_zero() {
        errs.push(format!("{p}.headerReadTimeout"), "must be greater than 0");
    }
    if l.idle_timeout.get().is_zero() {
        errs.push(format!("{p}.idleTimeout"), "must be greater than 0");
    }
}

/// Checks the protocol fields of rule `p` (`routes[i].rules[j]`).
pub fn validate_rule_protocol(
    p: &str,
    max_body: Option<u64>,
    ws: Option<&WebSocketConfig>,
    cors: Option<&CorsPolicy>,
    errs: &mut Errors,
) {
    if max_body == Some(0) {
        errs.push(format!("{p}.maxRequestBodyBytes"), "must be greater than 0");
    }
    if let Some(ws) = ws {
        if ws.idle_timeout.get().is_zero() {
            errs.push(
                format!("{p}.websocket.idleTimeout"),
                "must be greater than 0",
            );
        }
    }
    if let Some(c) = cors {
        validate_cors(&format!("{p}.cors"), c, errs);
    }
}

fn validate_cors(p: &str, c: &CorsPolicy, errs: &mut Errors) {
    if c.allow_origins.is_empty() {
        errs.push(
            format!("{p}.allowOrigins"),
            "list at least one origin (or \"*\")",
        );
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = format!("{p}.allowOrigins[{i}].value");
        match o.kind {
            StringMatchType::Exact => {
                if o.value == "*" {
                    if c.allow_credentials {
                        errs.push(
                            op,
                            "\"*\" cannot be combined with allowCredentials (browsers reject it); list the origins",
                        );
                    }
                } else if !is_origin(&o.value) {
                    errs.push(
                        op,
                        format!(
                            "{:?} is not an origin (scheme://host[:port], no path)",
                            o.value
                        ),
                    );
                }
            }
            StringMatchType::RegularExpression => {
                if let Err(e) = compile_full_match(&o.value) {
                    errs.push(op, format!("regex does not compile: {e}"));
                }
            }
        }
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if m != "*" && http::Method::from_bytes(m.as_bytes()).is_err() {
            errs.push(
                format!("{p}.allowMethods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(
                    format!("{p}.{field}[{i}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
    }
}

fn is_origin(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
}

#[cfg(test)]
mod tests {
    use crate::Snapshot;

    fn errors(yaml: &str) -> Vec<String> {
        let snap: Snapshot = crate::parse_yaml(yaml).expect("parses");
        match snap.validate() {
            Ok(()) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_and_round_trip() {
        let snap = crate::parse_yaml(
            r#"
listeners: [{ name: l, address: "127.0.0.1:1", protocol: http, limits: { maxUriBytes: 100 } }]
"#,
        )
        .expect("parses");
        let l = snap.listeners[0].limits.clone();
        assert_eq!(l.max_uri_bytes, 100);
        assert_eq!(l.max_request_header_bytes, 61440);
        assert_eq!(l.max_request_headers, 100);
        assert_eq!(l.header_read_timeout.get().as_secs(), 10);
        snap.validate().expect("valid");
    }

    #[test]
    fn bad_values_name_their_fields() {
        let errs = errors(
            r#"
listeners:
  - name: l
    address: "127.0.0.1:1"
    protocol: http
    limits: { maxRequestHeaderBytes: 10, maxRequestHeaders: 0, maxUriBytes: 1, headerReadTimeout: 0s, idleTimeout: 0s }
backends: { b: { endpoints: ["127.0.0.1:2"] } }
routes:
  - name: r
    rules:
      - backendRefs: [{ name: b }]
        maxRequestBodyBytes: 0
        websocket: { idleTimeout: 0s }
        cors:
          allowOrigins: [{ value: "*" }, { value: "https://a.example/x" }, { type: RegularExpression, value: "(" }]
          allowCredentials: true
          allowMethods: ["G T"]
          allowHeaders: ["bad header"]
          exposeHeaders: ["x-ok", "no:colon"]
"#,
        );
        let want = [
            "listeners[0].limits.maxRequestHeaderBytes",
            "listeners[0].limits.maxRequestHeaders",
            "listeners[0].limits.maxUriBytes",
            "listeners[0].limits.headerReadTimeout",
            "listeners[0].limits.idleTimeout",
            "routes[0].rules[0].maxRequestBodyBytes",
            "routes[0].rules[0].websocket.idleTimeout",
            "routes[0].rules[0].cors.allowOrigins[0].value",
            "routes[0].rules[0].cors.allowOrigins[1].value",
            "routes[0].rules[0].cors.allowOrigins[2].value",
            "routes[0].rules[0].cors.allowMethods[0]",
            "routes[0].rules[0].cors.allowHeaders[0]",
            "routes[0].rules[0].cors.exposeHeaders[1]",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(&format!("{w}:"))),
                "no error for {w} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }
}
