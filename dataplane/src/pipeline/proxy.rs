//! The request pipeline shared by every front door (HTTP/1.1, HTTP/2, HTTP/3): trace context,
//! route, pick, transform, forward, respond; the exchange is measured and logged when its
//! response body ends (see [`crate::telemetry::observe`]).

use crate::http::body::{boxed, BoxError, ProxyBody};
use crate::http::headers::{add_forwarding, request_host, strip_hop_by_hop};
use crate::http::reply::{error_response, ErrorKind, ProxyError};
use crate::http::tracecontext::TraceContext;
use crate::policy::filters::rewrite_path;
use crate::runtime::compile::Runtime;
use crate::telemetry::metrics::{self, RouteMetrics};
use crate::telemetry::observe::{
    access_log_enabled, CountingBody, Exchange, InFlightGuard, ObservedBody,
};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use weir_config::UpstreamProtocol;

// Moved to layer 0 (`crate::http`); re-exported here because tests and fuzz targets name them
// by their old paths.
pub use crate::http::conn::ConnInfo;
pub use crate::http::headers::normalize_path;

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
    let mut span = crate::telemetry::otel::start(&mut trace);
    trace.inject(req.headers_mut());
    let method = req.method().clone();
    let (host, path) =
        if access_log_enabled() || crate::telemetry::shipper::shipping_logs() || span.is_some() {
            (request_host(&req), Some(req.uri().path().to_string()))
        } else {
            (None, None)
        };
    let bytes_in = Arc::new(AtomicU64::new(0));
    let req = req.map(|b| CountingBody::new(b, bytes_in.clone()));
    let grpc = crate::http::grpc::is_grpc(req.headers());
    let out = forward(runtime, conn, req, span.as_deref_mut()).await;
    let mut resp = out.response;
    if grpc {
        resp = crate::http::grpc::local_error(resp);
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
    mut span: Option<&mut crate::telemetry::otel::RequestSpan>,
) -> Outcome
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Some(rt) = runtime else {
        let r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NoConfig,
            "no configuration loaded yet",
        );
        return Outcome::local(r, metrics::metrics().no_route());
    };
    if let Some(r) = crate::http::limits::check_head(&conn.limits, &req) {
        return Outcome::local(r, metrics::metrics().no_route());
    }
    let Some(host) = request_host(&req) else {
        let r = error_response(
            StatusCode::BAD_REQUEST,
            ErrorKind::NoHost,
            "request has no Host",
        );
        return Outcome::local(r, metrics::metrics().no_route());
    };
    // Route on, and forward, the path with dot segments resolved, so `/api/../admin` can
    // neither slip past a `/api` prefix rule nor reach a backend that resolves it itself.
    let path = normalize_path(req.uri().path()).into_owned();
    let route_start = span.as_ref().map(|s| s.now());
    // Reads the body only when a body-field match is reached (see crate::route::bodymatch).
    let (rule, req) = match crate::route::bodymatch::route(&rt.router, &host, &path, req).await {
        Ok(x) => x,
        Err(r) => return Outcome::local(r, metrics::metrics().no_route()),
    };
    if let (Some(s), Some(t)) = (span.as_deref_mut(), route_start) {
        s.route_selected(t, rule.is_some());
    }
    let Some(rule) = rule else {
        let msg = format!("no route for host {host:?} and path {path:?}");
        let r = error_response(StatusCode::NOT_FOUND, ErrorKind::NoRoute, &msg);
        return Outcome::local(r, metrics::metrics().no_route());
    };
    // CORS preflights are answered before auth and rate limits (browsers send no credentials).
    if let Some(r) = crate::policy::cors::preflight(rule.protocol.cors.as_ref(), &req) {
        return Outcome::local(r, rule.no_backend_metrics.clone());
    }
    // Protocol hooks: body limit, WebSocket handshake, CORS headers (see their modules).
    let rp = &rule.protocol;
    // Replies the proxy makes from here on (429, auth denials, redirects, 413, …) carry the
    // CORS headers too, so browsers can read them (as Envoy does for local replies).
    let cors_origin = crate::policy::cors::allowed_origin(rp.cors.as_ref(), &req);
    let local = |mut r: Response<ProxyBody>, m: &Arc<RouteMetrics>| {
        crate::policy::cors::decorate(rp.cors.as_ref(), cors_origin.clone(), &mut r);
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
    let Some(target) = rule.pick_backend() else {
        let r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NoBackend,
            "route has no backend with weight",
        );
        return local(r, &rule.no_backend_metrics);
    };
    let backend = &target.backend;
    let (mut req, body_trip) = match crate::http::limits::limit_body(rp.max_body, req) {
        Ok(r) => r,
        Err(r) => return local(r, &target.metrics),
    };
    let upstream_h2 = backend.config.protocol == UpstreamProtocol::H2c;
    let upgrade = match crate::policy::websocket::take(rp.websocket.as_ref(), upstream_h2, &mut req)
    {
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
            let r = error_response(StatusCode::BAD_REQUEST, ErrorKind::BadPath, &e.to_string());
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
    if let Some(h) = host_value {
        parts.headers.insert(header::HOST, h);
    }
    let h2 = backend.config.protocol == UpstreamProtocol::H2c;
    if h2 && wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    rule.request_headers.apply(&mut parts.headers);
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
    let timeout = crate::http::grpc::deadline(&parts.headers, timeout);
    // Balancing, health, breaker, concurrency limit, retries, credential: see upstream.rs.
    let sent = backend
        .dispatch(
            parts.method,
            pq,
            version,
            parts.headers,
            boxed(body),
            timeout,
            span,
        )
        .await;
    let resp = match sent.response {
        Err(local) => local,
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            rule.response_headers.apply(&mut parts.headers);
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
    crate::policy::cors::decorate(rp.cors.as_ref(), cors_origin, &mut resp);
    Outcome {
        response: resp,
        metrics: target.metrics.clone(),
        upstream: sent.upstream,
        attempts: sent.attempts,
    }
}
