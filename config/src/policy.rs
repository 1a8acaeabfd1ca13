//! Policy types of routes and rules: redirects and direct responses, rate limits, external
//! authorization, body-field (metric-name) matches and the KairosDB query mode, with their
//! validation (called from `validate.rs`).

use crate::duration::Duration;
use crate::error::Errors;
use crate::model::{HeaderValue, StringMatchType};
use crate::validate::{compile_full_match, is_hop_by_hop};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Redirects and direct responses

/// Answers with a redirect instead of forwarding (Gateway API `RequestRedirect` semantics):
/// every unset part is taken from the request.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`; default the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Default the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Default: the well-known port of `scheme` when it is set, else the port the client used.
    /// 80 with http and 443 with https are left out of `Location`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default the request's path (the query string is always kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RedirectPath>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

fn default_redirect_status() -> u16 {
    302
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectPath {
    #[serde(rename = "type")]
    pub kind: RedirectPathType,
    pub value: String,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectPathType {
    /// The whole path becomes `value`.
    ReplaceFullPath,
    /// The `PathPrefix` the request matched is replaced by `value` (the rule's matches must
    /// all be `PathPrefix`).
    ReplacePrefixMatch,
}

/// Answers with a fixed response instead of forwarding.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    /// 200..=599.
    pub status: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValue>,
    /// Sent as is (at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Rate limits

/// A token bucket per key (GCRA): `requestsPerUnit` per `unit`, bursts of up to `burst`.
/// Over the limit: `429` with `Retry-After`. Buckets live in memory per dataplane pod; a config
/// reload keeps them while this limit's settings are unchanged (a changed limit starts full).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_unit: u32,
    /// `second` (default), `minute` or `hour`.
    #[serde(default)]
    pub unit: RateUnit,
    /// Bucket size; default `requestsPerUnit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// What a bucket belongs to (default: the client IP).
    #[serde(default)]
    pub key: RateLimitKey,
    /// Buckets kept at most (default 100000). Full buckets are dropped first (losing nothing);
    /// when the table is still full, new keys share one overflow bucket.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
}

impl RateLimit {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_unit)
    }
}

fn default_max_keys() -> u32 {
    100_000
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateUnit {
    #[default]
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
        })
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitKey {
    /// `clientIp` (default) or `header`.
    #[serde(rename = "type", default)]
    pub kind: RateLimitKeyType,
    /// For `header`: its name (requests without it share one bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// For `clientIp`: proxies in front of Weir whose `X-Forwarded-For` entries are trusted.
    /// 0 (default): the peer address. N: the N-th address from the right of
    /// `X-Forwarded-For` (the peer address when there are fewer), as Envoy's
    /// `xff_num_trusted_hops`.
    #[serde(default)]
    pub trusted_hops: u32,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKeyType {
    #[default]
    ClientIp,
    Header,
}

// ---------------------------------------------------------------------------------------------
// External authorization

/// Asks an HTTP webhook before forwarding (Envoy `ext_authz` HTTP service semantics): the
/// webhook gets the request's method, `pathPrefix` + path and query, and the headers in
/// `allowedRequestHeaders`, with no body. 2xx allows (headers named in
/// `allowedUpstreamHeaders` are copied to the upstream request); 5xx, a timeout or a
/// connection failure is a failure (see `failureMode`); any other status denies, and the
/// client gets the webhook's status, body and the headers in `allowedClientHeaders`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtAuth {
    /// `http://host:port` or `https://host:port` (optionally with a path prefix).
    pub url: String,
    /// For an `https://` url: PEM file of the CA certificates the webhook's certificate is
    /// checked against (default: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Per call (default 200ms, as Envoy).
    #[serde(default = "default_auth_timeout")]
    pub timeout: Duration,
    /// Client headers sent to the webhook (case-insensitive; default `authorization`, `cookie`).
    #[serde(default = "default_auth_request_headers")]
    pub allowed_request_headers: Vec<String>,
    /// Webhook response headers copied to the upstream request on allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstream_headers: Vec<String>,
    /// Webhook response headers copied to the client on deny (default `www-authenticate`,
    /// `location`, `set-cookie`, `content-type`).
    #[serde(default = "default_auth_client_headers")]
    pub allowed_client_headers: Vec<String>,
    /// When the webhook fails or its breaker is open: `failClosed` (default: answer
    /// `statusOnError`) or `failOpen` (forward, with `x-weir-auth-failure-mode-allowed: true`).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Status of fail-closed replies (default 403, as Envoy).
    #[serde(default = "default_status_on_error")]
    pub status_on_error: u16,
    /// Decision cache keyed by method, path and the sent headers. Absent: no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<AuthCache>,
    /// Breaker around the webhook. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<AuthBreaker>,
}

fn default_auth_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_auth_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_auth_client_headers() -> Vec<String> {
    ["www-authenticate", "location", "set-cookie", "content-type"]
        .map(String::from)
        .to_vec()
}
fn default_status_on_error() -> u16 {
    403
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    #[default]
    FailClosed,
    FailOpen,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthCache {
    /// How long a decision (allow or deny) is reused (default 10s).
    #[serde(default = "default_cache_ttl")]
    pub ttl: Duration,
    /// Decisions kept at most (default 10000); the oldest go first.
    #[serde(default = "default_cache_entries")]
    pub max_entries: u32,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_cache_entries() -> u32 {
    10_000
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthBreaker {
    /// Consecutive webhook failures that open the breaker (default 5).
    #[serde(default = "default_auth_breaker_failures")]
    pub consecutive_failures: u32,
    /// How long it stays open before one probe call is let through (default 10s).
    #[serde(default = "default_auth_open_for")]
    pub open_for: Duration,
}

fn default_auth_breaker_failures() -> u32 {
    5
}
fn default_auth_open_for() -> Duration {
    Duration::from_secs(10)
}

// ---------------------------------------------------------------------------------------------
// Body-field and metric-name matches

/// A value extracted from the request, compared exactly or by regex. `header` (any case) is
/// looked at first; without it (or when the request lacks that header) the first value the
/// JSON `jsonPath` reaches in the body is used. Only matches with `jsonPath` make the proxy
/// read the body, up to `maxBodyBytes`, and it is forwarded upstream byte for byte.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FieldMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Dot-separated keys; `[]` after a key walks every element of an array, `[N]` one
    /// element: `metric`, `metricName`, `metrics[].name`, `a.b[0].c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub value: String,
    /// Body bytes read at most (default 64 KiB, at most 16 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    /// What a body over `maxBodyBytes`, not JSON, or without the field does: `noMatch`
    /// (default: this match fails, routing goes on) or `reject` (413 over the cap,
    /// 400 otherwise).
    #[serde(default)]
    pub on_body_error: BodyErrorAction,
}

fn default_max_body() -> u32 {
    64 * 1024
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BodyErrorAction {
    #[default]
    NoMatch,
    Reject,
}

/// A parsed `jsonPath`: keys and array steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonStep {
    Key(String),
    Each,
    Index(usize),
}

/// Parses `metrics[].name`, `a.b[2].c`, `metric` into steps.
pub fn parse_json_path(path: &str) -> Result<Vec<JsonStep>, String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (steps.is_empty() || rest.is_empty()) {
            return Err(format!("empty key in {path:?}"));
        }
        if !key.is_empty() {
            steps.push(JsonStep::Key(key.to_string()));
        }
        while !rest.is_empty() {
            let close = rest
                .find(']')
                .ok_or_else(|| format!("unclosed '[' in {path:?}"))?;
            let inner = &rest[1..close];
            if inner.is_empty() {
                steps.push(JsonStep::Each);
            } else {
                let n = inner
                    .parse()
                    .map_err(|_| format!("[{inner}] is not [] or [N] in {path:?}"))?;
                steps.push(JsonStep::Index(n));
            }
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("unexpected {rest:?} after ']' in {path:?}"));
            }
        }
    }
    Ok(steps)
}

// ---------------------------------------------------------------------------------------------
// KairosDB

/// KairosDB query handling on a rule (for `POST /api/v1/datapoints/query` and
/// `/api/v1/datapoints/query/tags`): each metric name is routed by `metricRoutes` (first
/// match wins, else the rule's first backendRef).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kairos {
    pub mode: KairosMode,
    pub metric_routes: Vec<MetricRoute>,
    /// `multi`: backend requests in flight at once per query (default 4).
    #[serde(default = "default_kairos_concurrency")]
    pub max_concurrency: u32,
    /// `multi`: limit per backend request (default: the rule's timeout or the backend's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<Duration>,
    /// `multi`: when a backend fails, answer with the others' results (the failed metrics get
    /// empty results and `x-weir-partial` names them) instead of a 502.
    #[serde(default)]
    pub allow_partial: bool,
    /// Query bytes read at most (default 1 MiB).
    #[serde(default = "default_kairos_body")]
    pub max_body_bytes: u32,
}

fn default_kairos_concurrency() -> u32 {
    4
}
fn default_kairos_body() -> u32 {
    1 << 20
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KairosMode {
    /// The backend of the first metric (or of the `X-METRICNAME` header) gets the query as is.
    Simple,
    /// Metrics are split by backend, queried in parallel and merged in the original order.
    Multi,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricRoute {
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    /// Metric name (Exact) or pattern (RegularExpression, whole name).
    pub value: String,
    /// A backend in `backends`.
    pub backend: String,
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Checks a rule's policy fields. `backends` are the defined backend names; `all_prefix` says
/// whether the rule has matches and every one is a `PathPrefix`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn validate_rule_policies(
    rp: &str,
    redirect: Option<&RequestRedirect>,
    direct: Option<&DirectResponse>,
    rate_limit: Option<&RateLimit>,
    ext_auth: Option<&ExtAuth>,
    kairos: Option<&Kairos>,
    has_backends: bool,
    all_prefix: bool,
    backends: &BTreeMap<String, crate::model::Backend>,
    errs: &mut Errors,
) {
    let actions = [redirect.is_some(), direct.is_some(), kairos.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if actions > 1 {
        errs.push(
            rp.to_string(),
            "set at most one of redirect, directResponse and kairos",
        );
    }
    if (redirect.is_some() || direct.is_some()) && has_backends {
        errs.push(
            format!("{rp}.backendRefs"),
            "a rule with redirect or directResponse has no backendRefs",
        );
    }
    if let Some(r) = redirect {
        validate_redirect(&format!("{rp}.redirect"), r, all_prefix, errs);
    }
    if let Some(d) = direct {
        validate_direct(&format!("{rp}.directResponse"), d, errs);
    }
    if let Some(rl) = rate_limit {
        validate_rate_limit(&format!("{rp}.rateLimit"), rl, errs);
    }
    if let Some(a) = ext_auth {
        validate_ext_auth(&format!("{rp}.extAuth"), a, errs);
    }
    if let Some(k) = kairos {
        validate_kairos(&format!("{rp}.kairos"), k, backends, errs);
    }
}

fn validate_redirect(p: &str, r: &RequestRedirect, all_prefix: bool, errs: &mut Errors) {
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            errs.push(format!("{p}.scheme"), format!("{s:?} is not http or https"));
        }
    }
    if let Some(h) = &r.hostname {
        if !crate::validate::is_valid_hostname_pattern(h) || h.starts_with('*') {
            errs.push(format!("{p}.hostname"), format!("{h:?} is not a hostname"));
        }
    }
    if r.port == Some(0) {
        errs.push(format!("{p}.port"), "must be 1-65535");
    }
    if let Some(path) = &r.path {
        let v = &path.value;
        if !v.starts_with('/') {
            errs.push(
                format!("{p}.path.value"),
                format!("{v:?} must start with '/'"),
            );
        } else if v.contains(['?', '#']) || v.parse::<http::uri::PathAndQuery>().is_err() {
            errs.push(
                format!("{p}.path.value"),
                format!("{v:?} is not a valid path"),
            );
        }
        if path.kind == RedirectPathType::ReplacePrefixMatch && !all_prefix {
            errs.push(
                format!("{p}.path.type"),
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
            );
        }
    }
    if ![301, 302, 303, 307, 308].contains(&r.status_code) {
        errs.push(
            format!("{p}.statusCode"),
            "must be one of 301, 302, 303, 307, 308",
        );
    }
}

fn validate_direct(p: &str, d: &DirectResponse, errs: &mut Errors) {
    if !(200..=599).contains(&d.status) {
        errs.push(format!("{p}.status"), "must be 200-599");
    }
    check_headers(&format!("{p}.headers"), &d.headers, errs);
    if d.body.as_ref().is_some_and(|b| b.len() > 64 * 1024) {
        errs.push(format!("{p}.body"), "must be at most 64 KiB");
    }
}

fn check_headers(p: &str, headers: &[HeaderValue], errs: &mut Errors) {
    for (i, h) in headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() || is_hop_by_hop(&h.name) {
            errs.push(
                format!("{p}[{i}].name"),
                format!("{:?} is not a header name that can be set", h.name),
            );
        }
        if http::HeaderValue::from_str(&h.value).is_err() {
            errs.push(format!("{p}[{i}].value"), "not a valid header value");
        }
    }
}

fn check_header_names(p: &str, names: &[String], errs: &mut Errors) {
    for (i, n) in names.iter().enumerate() {
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            errs.push(
                format!("{p}[{i}]"),
                format!("{n:?} is not a valid header name"),
            );
        }
    }
}

pub(crate) fn validate_rate_limit(p: &str, rl: &RateLimit, errs: &mut Errors) {
    if rl.requests_per_unit == 0 {
        errs.push(format!("{p}.requestsPerUnit"), "must be > 0");
    }
    if rl.burst == Some(0) {
        errs.push(format!("{p}.burst"), "must be > 0");
    }
    if rl.max_keys == 0 || rl.max_keys > 10_000_000 {
        errs.push(format!("{p}.maxKeys"), "must be 1-10000000");
    }
    match rl.key.kind {
        RateLimitKeyType::Header => match &rl.key.header {
            None => errs.push(format!("{p}.key.header"), "required for type header"),
            Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => errs.push(
                format!("{p}.key.header"),
                format!("{h:?} is not a valid header name"),
            ),
            Some(_) => {}
        },
        RateLimitKeyType::ClientIp => {
            if rl.key.header.is_some() {
                errs.push(format!("{p}.key.header"), "only valid for type header");
            }
        }
    }
    if rl.key.trusted_hops > 16 {
        errs.push(format!("{p}.key.trustedHops"), "must be at most 16");
    }
}

pub(crate) fn validate_ext_auth(p: &str, a: &ExtAuth, errs: &mut Errors) {
    match a.url.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && u.query().is_none() =>
        {
            if a.ca_file.is_some() && u.scheme_str() != Some("https") {
                errs.push(format!("{p}.caFile"), "only valid with an https:// url");
            }
        }
        _ => errs.push(
            format!("{p}.url"),
            format!("{:?} is not an http(s)://host:port[/prefix] URL", a.url),
        ),
    }
    if a.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        errs.push(format!("{p}.caFile"), "must not be empty");
    }
    if a.timeout.get().is_zero() {
        errs.push(format!("{p}.timeout"), "must be greater than 0");
    }
    check_header_names(
        &format!("{p}.allowedRequestHeaders"),
        &a.allowed_request_headers,
        errs,
    );
    check_header_names(
        &format!("{p}.allowedUpstreamHeaders"),
        &a.allowed_upstream_headers,
        errs,
    );
    check_header_names(
        &format!("{p}.allowedClientHeaders"),
        &a.allowed_client_headers,
        errs,
    );
    if !(200..=599).contains(&a.status_on_error) {
        errs.push(format!("{p}.statusOnError"), "must be 200-599");
    }
    if let Some(c) = &a.cache {
        if c.ttl.get().is_zero() {
            errs.push(format!("{p}.cache.ttl"), "must be greater than 0");
        }
        if c.max_entries == 0 || c.max_entries > 10_000_000 {
            errs.push(format!("{p}.cache.maxEntries"), "must be 1-10000000");
        }
    }
    if let Some(b) = &a.circuit_breaker {
        if b.consecutive_failures == 0 {
            errs.push(
                format!("{p}.circuitBreaker.consecutiveFailures"),
                "must be > 0",
            );
        }
        if b.open_for.get().is_zero() {
            errs.push(
                format!("{p}.circuitBreaker.openFor"),
                "must be greater than 0",
            );
        }
    }
}

pub(crate) fn validate_field_match(p: &str, f: &FieldMatch, errs: &mut Errors) {
    if f.header.is_none() && f.json_path.is_none() {
        errs.push(p.to_string(), "set header, jsonPath or both");
    }
    if let Some(h) = &f.header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(
                format!("{p}.header"),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    if let Some(jp) = &f.json_path {
        if let Err(e) = parse_json_path(jp) {
            errs.push(format!("{p}.jsonPath"), e);
        }
    }
    if f.kind == StringMatchType::RegularExpression {
        if let Err(e) = compile_full_match(&f.value) {
            errs.push(format!("{p}.value"), format!("regex does not compile: {e}"));
        }
    }
    if f.max_body_bytes == 0 || f.max_body_bytes > 16 << 20 {
        errs.push(format!("{p}.maxBodyBytes"), "must be 1-16777216");
    }
}

fn validate_kairos(
    p: &str,
    k: &Kairos,
    backends: &BTreeMap<String, crate::model::Backend>,
    errs: &mut Errors,
) {
    if k.metric_routes.is_empty() {
        errs.push(format!("{p}.metricRoutes"), "must list at least one route");
    }
    for (i, m) in k.metric_routes.iter().enumerate() {
        let mp = format!("{p}.metricRoutes[{i}]");
        if m.kind == StringMatchType::RegularExpression {
            if let Err(e) = compile_full_match(&m.value) {
                errs.push(
                    format!("{mp}.value"),
                    format!("regex does not compile: {e}"),
                );
            }
        }
        if !backends.contains_key(&m.backend) {
            errs.push(
                format!("{mp}.backend"),
                format!("backend {:?} is not defined in backends", m.backend),
            );
        }
    }
    if k.max_concurrency == 0 || k.max_concurrency > 256 {
        errs.push(format!("{p}.maxConcurrency"), "must be 1-256");
    }
    if k.backend_timeout.is_some_and(|t| t.get().is_zero()) {
        errs.push(format!("{p}.backendTimeout"), "must be greater than 0");
    }
    if k.max_body_bytes == 0 || k.max_body_bytes > 64 << 20 {
        errs.push(format!("{p}.maxBodyBytes"), "must be 1-67108864");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        use JsonStep::*;
        assert_eq!(
            parse_json_path("metrics[].name").unwrap(),
            vec![Key("metrics".into()), Each, Key("name".into())]
        );
        assert_eq!(
            parse_json_path("metric").unwrap(),
            vec![Key("metric".into())]
        );
        assert_eq!(
            parse_json_path("a.b[2][].c").unwrap(),
            vec![
                Key("a".into()),
                Key("b".into()),
                Index(2),
                Each,
                Key("c".into())
            ]
        );
        for bad in ["", "a..b", "a[", "a[x]", "a[]b", ".a"] {
            assert!(parse_json_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_errors_name_their_fields() {
        let e = crate::load(
            br#"
backends:
  b: { endpoints: ["127.0.0.1:1"] }
routes:
  - name: r
    rateLimit: { requestsPerUnit: 0 }
    extAuth: { url: "http://auth:8080", caFile: /etc/ca.pem }
    rules:
      - matches: [{ path: { type: Exact, value: /x }, fields: [{ jsonPath: "a[", value: x }, { value: y }] }]
        redirect: { scheme: ftp, statusCode: 200, path: { type: ReplacePrefixMatch, value: /y } }
        backendRefs: [{ name: b }]
      - rateLimit: { requestsPerUnit: 0, burst: 0, key: { type: header } }
        extAuth: { url: "ftp://auth/", timeout: 0s, cache: { ttl: 0s }, circuitBreaker: { consecutiveFailures: 0 } }
        backendRefs: [{ name: b }]
      - directResponse: { status: 99, headers: [{ name: "bad name", value: v }] }
      - kairos: { mode: multi, metricRoutes: [{ value: "(", type: RegularExpression, backend: nope }], maxConcurrency: 0 }
        backendRefs: [{ name: b }]
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|f| f.path.as_str()).collect();
        for p in [
            "routes[0].rateLimit.requestsPerUnit",
            "routes[0].extAuth.caFile",
            "routes[0].rules[0].matches[0].fields[0].jsonPath",
            "routes[0].rules[0].matches[0].fields[1]",
            "routes[0].rules[0].backendRefs",
            "routes[0].rules[0].redirect.scheme",
            "routes[0].rules[0].redirect.statusCode",
            "routes[0].rules[0].redirect.path.type",
            "routes[0].rules[1].rateLimit.requestsPerUnit",
            "routes[0].rules[1].rateLimit.burst",
            "routes[0].rules[1].rateLimit.key.header",
            "routes[0].rules[1].extAuth.url",
            "routes[0].rules[1].extAuth.timeout",
            "routes[0].rules[1].extAuth.cache.ttl",
            "routes[0].rules[1].extAuth.circuitBreaker.consecutiveFailures",
            "routes[0].rules[2].directResponse.status",
            "routes[0].rules[2].directResponse.headers[0].name",
            "routes[0].rules[3].kairos.metricRoutes[0].value",
            "routes[0].rules[3].kairos.metricRoutes[0].backend",
            "routes[0].rules[3].kairos.maxConcurrency",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        // A redirect-only rule needs no backendRefs.
        crate::load(
            br#"
routes:
  - name: r
    rules:
      - matches: [{ path: { value: /old } }]
        redirect: { scheme: https, path: { type: ReplacePrefixMatch, value: /new }, statusCode: 301 }
      - directResponse: { status: 200, body: ok }
      - extAuth: { url: "https://auth.example:8443/check", caFile: /etc/ca.pem }
        directResponse: { status: 200 }
"#,
        )
        .expect("valid");
    }
}
