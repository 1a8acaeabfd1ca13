//! The request pipeline shared by every front door (HTTP/1.1, HTTP/2, HTTP/3): trace context,
//! route, pick, transform, forward, respond; the exchange is measured and logged when its
//! response body ends (see [`crate::observe`]).

use crate::body::{boxed, full, BoxError, ProxyBody};
use crate::filters::rewrite_path;
use crate::metrics::{self, RouteMetrics};
use crate::observe::{access_log_enabled, CountingBody, Exchange, InFlightGuard, ObservedBody};
use crate::runtime::Runtime;
use crate::tracecontext::TraceContext;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use weir_config::UpstreamProtocol;

/// What the proxy knows about the client connection a request came in on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub listener: Arc<str>,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// `Alt-Svc` advertising HTTP/3, set on TLS TCP listeners whose port also serves QUIC.
    pub alt_svc: Option<HeaderValue>,
    /// The listener's request limits (URI length, header count and size).
    pub limits: crate::limits::RequestLimits,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Marks a reply the proxy made itself (as a response extension); the value is its `error`
/// code, counted by `weir_proxy_errors_total{kind}` and logged as the access log's `error`.
#[derive(Debug, Clone, Copy)]
pub struct ProxyError(pub &'static str);

/// A JSON error reply made by the proxy itself.
pub fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({ "status": status.as_u16(), "error": code, "message": message });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.extensions_mut().insert(ProxyError(code));
    resp
}

/// The request's host, lowercase and without a port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit_once('@').map_or(raw, |(_, h)| h);
    let host = if let Some(v6) = raw.strip_prefix('[') {
        &raw[..v6.find(']').map_or(raw.len(), |i| i + 2)]
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.to_ascii_lowercase())
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, also treating `%2e`/`%2E` as a dot. Paths without
/// dot segments (nearly all) are returned as they are, without copying.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let is_dot = |seg: &str| seg == "." || seg.eq_ignore_ascii_case("%2e");
    let is_dotdot = |seg: &str| {
        seg == ".."
            || seg.eq_ignore_ascii_case("%2e%2e")
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
    };
    if !path.split('/').any(|s| is_dot(s) || is_dotdot(s)) {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segs.iter().enumerate() {
        if is_dot(seg) {
            trailing_slash = i == last;
        } else if is_dotdot(seg) {
            out.pop();
            trailing_slash = i == last;
        } else {
            out.push(seg);
            trailing_slash = false;
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    std::borrow::Cow::Owned(s)
}

/// Removes hop-by-hop headers, including the ones a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names beats nine hashed removals.
    let is_hop = |n: &HeaderName| {
        *n == header::CONNECTION
            || *n == KEEP_ALIVE
            || *n == PROXY_CONNECTION
            || *n == header::PROXY_AUTHENTICATE
            || *n == header::PROXY_AUTHORIZATION
            || *n == header::TE
            || *n == header::TRAILER
            || *n == header::TRANSFER_ENCODING
            || *n == header::UPGRADE
    };
    if !headers.keys().any(is_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(n);
    }
}

/// Sets `X-Forwarded-For/Proto/Host` and `Forwarded` (also used by [`crate::kairos`]).
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    host_header: Option<&HeaderValue>,
) {
    use crate::fastfmt::{append_to_list, push_ip};
    let ip = conn.remote.ip();
    // Built in one buffer each, without `format!` (this ran at ~13% of a request's
    // instructions when it collected and joined `Vec<String>`s); one hashed lookup per header,
    // and room for the four made at most once.
    headers.reserve(4);
    append_to_list(headers, &X_FORWARDED_FOR, 16, |s| push_ip(s, ip));
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(conn.scheme),
    );
    if let Some(h) = host_header {
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    append_to_list(headers, &FORWARDED, 64, |fwd| {
        fwd.push_str("for=");
        if ip.is_ipv6() {
            fwd.push_str("\"[");
            push_ip(fwd, ip);
            fwd.push_str("]\"");
        } else {
            push_ip(fwd, ip);
        }
        fwd.push_str(";proto=");
        fwd.push_str(conn.scheme);
        if let Some(h) = host_header.and_then(|h| h.to_str().ok()) {
            if h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                fwd.push_str(";host=\"");
                fwd.push_str(h);
                fwd.push('"');
            }
        }
    });
}

/// Serves one request against the current runtime: trace context, routing and forwarding,
/// then the response body is wrapped so the exchange is measured and logged when it ends.
pub async fn handle<B>(
    runtime: Option<Arc<Runtime>>,
    conn: &ConnInfo,
    mut req: Request<B>,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let protocol = metrics::protocol_index(req.version());
    let in_flight = InFlightGuard::new(protocol);
    let mut trace = TraceContext::from_headers(req.headers());
    // Sampling (when spans are exported) sets the flags sent upstream.
    let mut span = crate::otel::start(&mut trace);
    trace.inject(req.headers_mut());
    let method = req.method().clone();
    let (host, path) = if access_log_enabled() || crate::shipper::shipping_logs() || span.is_some()
    {
        (request_host(&req), Some(req.uri().path().to_string()))
    } else {
        (None, None)
    };
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req = req.map(|b| CountingBody::new(b, bytes_in.clone()));
    let grpc = crate::grpc::is_grpc(req.headers());
    let out = forward(runtime, conn, req, span.as_deref_mut()).await;
    let mut resp = out.response;
    if grpc {
        resp = crate::grpc::local_error(resp);
    }
    // An upstream's Alt-Svc describes the upstream, not us; ours replaces it.
    resp.headers_mut().remove(header::ALT_SVC);
    if let Some(v) = &conn.alt_svc {
        resp.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    let (parts, body) = resp.into_parts();
    let exchange = Exchange {
        start,
        protocol,
        method,
        listener: conn.listener.clone(),
        client: conn.remote,
        host,
        path,
        status: parts.status.as_u16(),
        metrics: out.metrics,
        upstream: out.upstream,
        attempts: out.attempts,
        error: parts.extensions.get::<ProxyError>().map(|e| e.0),
        trace,
        span,
        bytes_in,
        in_flight,
    };
    Response::from_parts(parts, ObservedBody::new(body, exchange).boxed_unsync())
}

/// What forwarding produced, for metrics and the access log.
struct Outcome {
    response: Response<ProxyBody>,
    /// Handles of the (route, backend) pair; `-` for what is unknown.
    metrics: Arc<RouteMetrics>,
    /// The endpoint of the last upstream try.
    upstream: Option<String>,
    /// Upstream tries, retries included.
    attempts: u32,
}

impl Outcome {
    fn local(response: Response<ProxyBody>, metrics: Arc<RouteMetrics>) -> Outcome {
        Outcome {
            response,
            metrics,
            upstream: None,
            attempts: 0,
        }
    }
}

async fn forward<B>(
    runtime: Option<Arc<Runtime>>,
    conn: &ConnInfo,
    req: Request<B>,
    mut span: Option<&mut crate::otel::RequestSpan>,
) -> Outcome
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(rt) = runtime else {
        let r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_config",
            "no configuration loaded yet",
        );
        return Outcome::local(r, metrics::metrics().no_route());
    };
    if let Some(r) = crate::limits::check_head(&conn.limits, &req) {
        return Outcome::local(r, metrics::metrics().no_route());
    }
    let Some(host) = request_host(&req) else {
        let r = error_response(StatusCode::BAD_REQUEST, "no_host", "request has no Host");
        return Outcome::local(r, metrics::metrics().no_route());
    };
    // Route on, and forward, the path with dot segments resolved, so `/api/../admin` can
    // neither slip past a `/api` prefix rule nor reach a backend that resolves it itself.
    let path = normalize_path(req.uri().path()).into_owned();
    let route_start = span.as_ref().map(|s| s.now());
    // Reads the body only when a body-field match is reached (see crate::bodymatch).
    let (rule, req) =
        match crate::bodymatch::route(rt.router_for(&conn.listener), &host, &path, req).await {
            Ok(x) => x,
            Err(r) => return Outcome::local(r, metrics::metrics().no_route()),
        };
    if let (Some(s), Some(t)) = (span.as_deref_mut(), route_start) {
        s.route_selected(t, rule.is_some());
    }
    let Some(rule) = rule else {
        let msg = format!("no route for host {host:?} and path {path:?}");
        let r = error_response(StatusCode::NOT_FOUND, "no_route", &msg);
        return Outcome::local(r, metrics::metrics().no_route());
    };
    // CORS preflights are answered before auth and rate limits (browsers send no credentials).
    if let Some(r) = crate::cors::preflight(rule.protocol.cors.as_ref(), &req) {
        return Outcome::local(r, rule.no_backend_metrics.clone());
    }
    // Protocol hooks: body limit, WebSocket handshake, CORS headers (see their modules).
    let rp = &rule.protocol;
    // Replies the proxy makes from here on (429, auth denials, redirects, 413, …) carry the
    // CORS headers too, so browsers can read them (as Envoy does for local replies).
    let cors_origin = crate::cors::allowed_origin(rp.cors.as_ref(), &req);
    let local = |mut r: Response<ProxyBody>, m: &Arc<RouteMetrics>| {
        crate::cors::decorate(rp.cors.as_ref(), cors_origin.clone(), &mut r);
        Outcome::local(r, m.clone())
    };
    // Rate limit, external auth, redirect / direct response, KairosDB (crate::policy).
    // Boxed: its future (~6.5 KiB, for external auth and KairosDB) would otherwise be part of
    // every request's future, copied whole when an HTTP/3 request's future is boxed.
    let req = match &rule.policy {
        None => req,
        Some(p) => match Box::pin(p.apply(conn, &host, &path, rule.timeout, req)).await {
            Ok(req) => req,
            Err(r) => return local(r, &rule.no_backend_metrics),
        },
    };
    let target = match rule.pick() {
        crate::gateway::Pick::Backend(t) => t,
        crate::gateway::Pick::Invalid(why) => {
            let r = error_response(StatusCode::INTERNAL_SERVER_ERROR, "invalid_backend", why);
            return local(r, &rule.no_backend_metrics);
        }
        crate::gateway::Pick::None => {
            let r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_backend",
                "route has no backend with weight",
            );
            return local(r, &rule.no_backend_metrics);
        }
    };
    let backend = &target.backend;
    let (mut req, body_trip) = match crate::limits::limit_body(rp.max_body, req) {
        Ok(r) => r,
        Err(r) => return local(r, &target.metrics),
    };
    let upstream_h2 = backend.config.protocol == UpstreamProtocol::H2c;
    let upgrade = match crate::websocket::take(rp.websocket.as_ref(), upstream_h2, &mut req) {
        Ok(u) => u,
        Err(r) => return local(r, &target.metrics),
    };

    let (mut parts, body) = req.into_parts();
    let path = match &rule.path {
        Some(rw) => rewrite_path(rw, &path),
        None => path,
    };
    let pq = match parts.uri.path_and_query() {
        // No rewrite and no dot segments (nearly every request): the request's own, already
        // parsed, goes upstream without another format and parse.
        Some(pq) if rule.path.is_none() && pq.path() == path => Ok(pq.clone()),
        _ => PathAndQuery::try_from(match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        }),
    };
    let pq = match pq {
        Ok(pq) => pq,
        Err(e) => {
            let r = error_response(StatusCode::BAD_REQUEST, "bad_path", &e.to_string());
            return local(r, &target.metrics);
        }
    };
    // The host the client asked for goes upstream unchanged. A request-target authority
    // (HTTP/2 and HTTP/3 :authority, HTTP/1.1 absolute-form) wins over the Host header, as it
    // does for routing (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let host_value = match parts.uri.authority() {
        Some(a) => {
            let a = a.as_str();
            HeaderValue::from_str(a.rsplit_once('@').map_or(a, |(_, h)| h)).ok()
        }
        None => parts.headers.get(header::HOST).cloned(),
    };
    let wants_trailers = parts
        .headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding(&mut parts.headers, conn, host_value.as_ref());
    // `hostRewrite` replaces the host sent upstream; X-Forwarded-Host keeps the client's.
    if let Some(h) = rule.gateway.host_rewrite.clone().or(host_value) {
        parts.headers.insert(header::HOST, h);
    }
    let h2 = backend.config.protocol == UpstreamProtocol::H2c;
    if h2 && wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    rule.request_headers.apply(&mut parts.headers);
    // Copies see the request as the rule's filters made it, not the picked backendRef's
    // own filters; upgrades (WebSocket) are not mirrored.
    let mirror = match &upgrade {
        None => crate::mirror::Pending::new(&rule.gateway.mirrors, &parts.method, &parts.headers),
        Some(_) => None,
    };
    target.request_headers.apply(&mut parts.headers);
    if let Some(u) = &upgrade {
        u.prepare(&mut parts.method, &mut parts.headers);
    }
    let version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let timeout = rule
        .timeout
        .unwrap_or(backend.config.timeouts.request.get());
    let timeout = crate::grpc::deadline(&parts.headers, timeout);
    // Balancing, health, breaker, concurrency limit, retries, credential: see upstream.rs.
    let body = match mirror {
        None => boxed(body),
        Some(m) => m.start(pq.clone(), boxed(body)),
    };
    let sent = backend
        .dispatch_per_try(
            parts.method,
            pq,
            version,
            parts.headers,
            body,
            timeout,
            span,
            rule.gateway.per_try_timeout,
        )
        .await;
    let resp = match sent.response {
        Err(local) => local,
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            rule.response_headers.apply(&mut parts.headers);
            target.response_headers.apply(&mut parts.headers);
            Response::from_parts(parts, body)
        }
    };
    let mut resp = match body_trip {
        Some(t) => t.outcome(resp),
        None => resp,
    };
    if let Some(u) = upgrade {
        resp = u.finish(resp);
    }
    crate::cors::decorate(rp.cors.as_ref(), cors_origin, &mut resp);
    Outcome {
        response: resp,
        metrics: target.metrics.clone(),
        upstream: sent.upstream,
        attempts: sent.attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        let r = |h: &str| Request::builder().header("host", h).body(()).unwrap();
        assert_eq!(
            request_host(&r("Example.COM:8080")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(&r("[::1]:8080")).as_deref(), Some("[::1]"));
        assert_eq!(
            request_host(&r("api.example.com")).as_deref(),
            Some("api.example.com")
        );
        let abs = Request::builder()
            .uri("https://h2.example.com:8443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&abs).as_deref(), Some("h2.example.com"));
    }

    #[test]
    fn dot_segments_resolved() {
        for (input, want) in [
            ("/api/users", "/api/users"),
            ("/api/../admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E./admin/", "/admin/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/", "/"),
            ("/a//b", "/a//b"),
            ("/a/..b/c", "/a/..b/c"),
        ] {
            assert_eq!(normalize_path(input), want, "{input}");
        }
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
