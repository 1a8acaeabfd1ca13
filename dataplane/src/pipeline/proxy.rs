//! The request pipeline shared by every front door (HTTP/1.1, HTTP/2, HTTP/3): trace context,
//! route, pick, transform, forward, respond; the exchange is measured and logged when its
//! response body ends (see [`crate::telemetry::observe`]).

use crate::http::body::{boxed, BoxError, ProxyBody};
use crate::http::headers::{forwarding, request_host, strip_hop_by_hop, Added, FieldsSeen, Host};
use crate::http::reply::{error_response, ErrorKind, ProxyError};
use crate::http::tracecontext::TraceContext;
use crate::policy::filters::rewrite_path;
use crate::policy::rule::Pick;
use crate::policy::rule::{RuleRt, Target};
use crate::policy::stages::{ReplyHook, StageInput};
use crate::runtime::compile::Runtime;
use crate::telemetry::hub::Telemetry;
use crate::telemetry::metrics::{self, RouteMetrics};
use crate::telemetry::observe::{CountingBody, Exchange, InFlightGuard, ObservedBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;
use weir_config::UpstreamProtocol;

// Moved to layer 0 (`crate::http`); re-exported here because tests and fuzz targets name them
// by their old paths.
pub use crate::http::conn::ConnInfo;
pub use crate::http::headers::normalize_path;

/// Serves one request against the current runtime: trace context, routing and forwarding,
/// then the response body is wrapped so the exchange is measured and logged when it ends.
/// `seen`: the fields of `req`'s map the pipeline asks about, when the front door noted them
/// as it parsed the head (HTTP/1.1); otherwise they are noted here, by one pass over the map.
pub async fn handle<B>(
    runtime: Option<Arc<Runtime>>,
    telemetry: &Arc<Telemetry>,
    conn: &ConnInfo,
    mut req: Request<B>,
    seen: Option<FieldsSeen>,
) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let protocol = metrics::protocol_index(req.version());
    let in_flight = InFlightGuard::new(protocol);
    let seen = seen.unwrap_or_else(|| FieldsSeen::of(req.headers()));
    // Read before any stage may change the map (the trace, the gRPC check).
    let mut trace = if seen.has(FieldsSeen::TRACEPARENT) {
        TraceContext::from_headers(req.headers())
    } else {
        TraceContext::start()
    };
    // Sampling (when spans are exported) sets the flags sent upstream.
    let mut span = telemetry.start_span(&mut trace);
    // The proxy's `traceparent` goes into the request's map only when something before the
    // upstream encoder may read it there (the runtime's routes say, decided when compiled),
    // or an exported span gives every upstream try its own (in the map, per try). Otherwise
    // the upstream leg writes it with the forwarding fields ([`Added`]): ~1,065 instructions
    // per request less (callgrind).
    let trace_in_map = span.is_some() || runtime.as_ref().is_none_or(|rt| rt.trace_in_map);
    if trace_in_map {
        trace.inject(req.headers_mut());
    }
    let method = req.method().clone();
    let (host, path) =
        if telemetry.access_log_enabled() || telemetry.shipping_logs() || span.is_some() {
            (request_host(&req), Some(req.uri().path().to_string()))
        } else {
            (None, None)
        };
    let mut bytes_in = None;
    let req = req.map(|b| {
        let (body, count) = CountingBody::new(b);
        bytes_in = count;
        body
    });
    let grpc = seen.has(FieldsSeen::CONTENT_TYPE) && crate::http::grpc::is_grpc(req.headers());
    // Borrowed, not copied into `forward`'s future: it keeps the request future (~8.5 KiB,
    // written into its heap block by `listen::recycled_in_place`) from growing further.
    let added_trace = (!trace_in_map).then_some(&trace);
    let out = forward(runtime, conn, req, seen, span.as_deref_mut(), added_trace).await;
    // The one place local replies are rendered: JSON, or a gRPC status for a gRPC client.
    // Checked here so a proxied response is not moved through `render`.
    let mut resp = out.response;
    if resp.extensions().get::<ProxyError>().is_some() {
        resp = crate::http::reply::render(resp, grpc);
    }
    // An upstream's Alt-Svc describes the upstream, not us; ours replaces it. Looked for by a
    // pass over the few names first: a hashed `remove` of a field that is nearly never there
    // cost ~89 instructions per request (callgrind).
    if resp.headers().keys().any(|n| *n == header::ALT_SVC) {
        resp.headers_mut().remove(header::ALT_SVC);
    }
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
        telemetry: telemetry.clone(),
    };
    Response::from_parts(parts, ObservedBody::new(body, exchange).boxed_unsync())
}

/// What forwarding produced, for metrics and the access log.
struct Outcome {
    response: Response<ProxyBody>,
    /// Handles of the (route, backend) pair; `-` for what is unknown.
    metrics: Arc<RouteMetrics>,
    /// The endpoint of the last upstream try.
    upstream: Option<http::uri::Authority>,
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

/// The request stages, in the order [`forward`] runs them. Each returns the request (or what
/// the next stage needs) or the reply to send instead; a new stage goes where its inputs exist
/// (README, "Where do I add X").
///
/// 1. [`admit`]: a config is loaded, the head is within the listener's limits, there is a host.
/// 2. route: the router picks the rule ([`crate::route::bodymatch::route`] reads the body only
///    when a body-field condition is reached).
/// 3. rule stages: the rule's ordered stages ([`crate::policy::stages::Stages::run`]: CORS,
///    rate limit, external auth, redirect / direct response, KairosDB), then the backend pick,
///    the body limit and the WebSocket handshake (rule protocol data, see
///    [`crate::policy::rule`]).
/// 4. [`upstream_request`]: path rewrite, hop-by-hop and forwarding headers, request filters.
/// 5. dispatch: [`crate::upstream::backend::BackendRt::dispatch`] (balancing, health, breaker,
///    concurrency limit, retries).
/// 6. [`respond`]: response filters, body-limit outcome, WebSocket switch, the stages' reply
///    hook (CORS headers).
async fn forward<B>(
    runtime: Option<Arc<Runtime>>,
    conn: &ConnInfo,
    req: Request<B>,
    mut seen: FieldsSeen,
    mut span: Option<&mut crate::telemetry::otel::RequestSpan>,
    trace: Option<&TraceContext>,
) -> Outcome
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // 1. Admit.
    let (rt, host) = match admit(runtime, conn, &req) {
        Ok(x) => x,
        Err(r) => return Outcome::local(r, metrics::metrics().no_route()),
    };
    // 2. Route, on the path with dot segments resolved, so `/api/../admin` can neither slip
    // past a `/api` prefix rule nor reach a backend that resolves it itself. The path is
    // borrowed from a clone of the URI (reference counts, no copy) as the request moves on;
    // a `String` of it was an allocation per request.
    let uri = req.uri().clone();
    let path = normalize_path(uri.path());
    let path: &str = &path;
    let host: &str = host.as_str();
    let route_start = span.as_ref().map(|s| s.now());
    let router = rt.router_for(&conn.listener);
    // A table without a body-field condition never reads the body: no future to await.
    let routed = if router.reads_body() {
        crate::route::bodymatch::route(router, host, path, req).await
    } else {
        crate::route::bodymatch::route_without_body(router, host, path, req)
    };
    let (rule, req) = match routed {
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
    // 3. Rule stages, in the rule's order (CORS, rate limit, external auth, redirect, direct
    // response, KairosDB). Boxed: its future (~6.5 KiB, for external auth and KairosDB)
    // would otherwise be part of every request's future, copied whole when an HTTP/3
    // request's future is boxed. Skipped (no box) when the rule has no stage.
    let (req, hook) = if rule.stages.is_empty() {
        (req, ReplyHook::NONE)
    } else {
        let input = StageInput {
            conn,
            host,
            path,
            timeout: rule.timeout,
        };
        match Box::pin(rule.stages.run(&input, req)).await {
            Ok((req, hook)) => {
                // A stage may have changed the map (external auth's allowed headers).
                seen = FieldsSeen::of(req.headers());
                (req, hook)
            }
            Err(r) => return Outcome::local(r, rule.no_backend_metrics.clone()),
        }
    };
    let rp = &rule.protocol;
    // Replies the proxy makes from here on carry what the stages add (CORS headers).
    let local = |mut r: Response<ProxyBody>, m: &Arc<RouteMetrics>| {
        hook.finish(&mut r);
        Outcome::local(r, m.clone())
    };
    let target = match rule.pick() {
        Pick::Backend(t) => t,
        Pick::Invalid(why) => {
            let r = error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorKind::InvalidBackend,
                why,
            );
            return local(r, &rule.no_backend_metrics);
        }
        Pick::None => {
            let r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::NoBackend,
                "route has no backend with weight",
            );
            return local(r, &rule.no_backend_metrics);
        }
    };
    let backend = &target.backend;
    let (mut req, body_trip) = match crate::http::limits::limit_body(rp.max_body, req) {
        Ok(r) => r,
        Err(r) => return local(r, &target.metrics),
    };
    let upstream_h2 = backend.config.protocol == UpstreamProtocol::H2c;
    let upgrade =
        match crate::policy::websocket::take(rp.websocket.as_ref(), upstream_h2, &mut req, seen) {
            Ok(u) => u,
            Err(r) => return local(r, &target.metrics),
        };

    // 4. The upstream request.
    let (mut parts, body) = req.into_parts();
    let mut added = Added::new();
    let (pq, version, mirror) = match upstream_request(
        &rule,
        target,
        conn,
        path,
        &mut parts,
        upgrade.as_ref(),
        trace,
        &mut added,
        &mut seen,
    ) {
        Ok(x) => x,
        Err(r) => return local(r, &target.metrics),
    };
    let timeout = rule
        .timeout
        .unwrap_or(backend.config.timeouts.request.get());
    let timeout = if seen.has(FieldsSeen::GRPC_TIMEOUT) {
        crate::http::grpc::deadline(&parts.headers, timeout)
    } else {
        timeout
    };
    // 5. Dispatch: balancing, health, breaker, concurrency limit, retries, credential.
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
            &added,
            body,
            timeout,
            span,
            rule.gateway.per_try_timeout,
        )
        .await;
    // 6. Respond.
    let resp = respond(&rule, target, sent.response, body_trip, upgrade, &hook);
    Outcome {
        response: resp,
        metrics: target.metrics.clone(),
        upstream: sent.upstream,
        attempts: sent.attempts,
    }
}

/// Stage 1: the runtime serving now and the request's host, or the reply when there is no
/// config yet, the head breaks the listener's limits, or there is no host.
// The Err is the reply itself, made on the rare path and moved out once; as the other
// stages that answer locally (limits::limit_body, websocket::take) do, it is not boxed.
#[allow(clippy::result_large_err)]
fn admit<B>(
    runtime: Option<Arc<Runtime>>,
    conn: &ConnInfo,
    req: &Request<B>,
) -> Result<(Arc<Runtime>, Host), Response<ProxyBody>> {
    let Some(rt) = runtime else {
        return Err(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NoConfig,
            "no configuration loaded yet",
        ));
    };
    if let Some(r) = crate::http::limits::check_head(&conn.limits, req) {
        return Err(r);
    }
    let Some(host) = Host::of(req) else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            ErrorKind::NoHost,
            "request has no Host",
        ));
    };
    Ok((rt, host))
}

/// Stage 4: turns the client's request head into the upstream's: rewritten path (with the
/// query), hop-by-hop headers removed, forwarding headers and `Host`, `TE: trailers` for h2c
/// gRPC, the rule's request filters, the WebSocket handshake headers. Returns the path and
/// query, the HTTP version to send and the request's mirror copies, or a `400 bad_path`
/// reply; the fields the proxy adds apart from the map go onto `added` ([`Added`]:
/// the forwarding headers and, when `trace` is given, `traceparent`, unless a filter or a
/// mirror must see them in it). `seen` is noted again from the map when filters changed it.
// The Err is the reply itself, made on the rare path and moved out once; as the other
// stages that answer locally (limits::limit_body, websocket::take) do, it is not boxed.
#[allow(clippy::result_large_err)]
// `added` and `trace` are the request's, passed in place (see `forwarding`), not a struct made
// for one call.
#[allow(clippy::too_many_arguments)]
fn upstream_request(
    rule: &RuleRt,
    target: &Target,
    conn: &ConnInfo,
    path: &str,
    parts: &mut http::request::Parts,
    upgrade: Option<&crate::policy::websocket::Upgrade>,
    trace: Option<&TraceContext>,
    added: &mut Added,
    seen: &mut FieldsSeen,
) -> Result<
    (
        PathAndQuery,
        Version,
        Option<crate::policy::mirror::Pending>,
    ),
    Response<ProxyBody>,
> {
    let backend = &target.backend;
    let path = match &rule.path {
        Some(rw) => std::borrow::Cow::Owned(rewrite_path(rw, path)),
        None => std::borrow::Cow::Borrowed(path),
    };
    let pq = match parts.uri.path_and_query() {
        // No rewrite and no dot segments (nearly every request): the request's own, already
        // parsed, goes upstream without another format and parse.
        Some(pq) if rule.path.is_none() && pq.path() == path => Ok(pq.clone()),
        _ => PathAndQuery::try_from(match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        }),
    };
    let pq = match pq {
        Ok(pq) => pq,
        Err(e) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                ErrorKind::BadPath,
                &e.to_string(),
            ));
        }
    };
    // The host the client asked for goes upstream unchanged. A request-target authority
    // (HTTP/2 and HTTP/3 :authority, HTTP/1.1 absolute-form) wins over the Host header, as it
    // does for routing (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let (host_value, host_in_place) = match parts.uri.authority() {
        Some(a) => {
            let a = a.as_str();
            let v = HeaderValue::from_str(a.rsplit_once('@').map_or(a, |(_, h)| h)).ok();
            (v, false)
        }
        None => {
            let mut all = parts.headers.get_all(header::HOST).iter();
            let first = all.next().cloned();
            (first, all.next().is_none())
        }
    };
    let h2 = backend.config.protocol == UpstreamProtocol::H2c;
    // Only an h2c upstream is sent `TE: trailers`; no lookup for the others.
    let wants_trailers = h2
        && parts
            .headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    let stripped = strip_hop_by_hop(&mut parts.headers);
    // The forwarding fields stay out of the map (the upstream codec writes them after the
    // request's own: ~830 instructions of hashed `insert`/`entry` per request saved,
    // BENCHMARKS.md "the headers the proxy adds"), unless the rule's or the backendRef's
    // request filters, or a mirror's copy, must see them there: then they go in here, as
    // they always did, so the filters see and change them as before.
    forwarding(conn, host_value.as_ref(), added);
    if let Some(t) = trace {
        added.set_trace(t.added());
    }
    let filtered = !rule.request_headers.is_empty()
        || !target.request_headers.is_empty()
        || !rule.gateway.mirrors.is_empty();
    if filtered {
        added.merge_into(&mut parts.headers);
        *added = Added::new();
    }
    // `hostRewrite` replaces the host sent upstream; X-Forwarded-Host keeps the client's.
    // A client's one `Host` header that is still there (no `Connection` header named it)
    // already is what goes upstream: not inserted again (~180 instructions per request).
    if let Some(h) = rule.gateway.host_rewrite.clone() {
        parts.headers.insert(header::HOST, h);
    } else if let Some(h) = host_value.filter(|_| stripped || !host_in_place) {
        parts.headers.insert(header::HOST, h);
    }
    if wants_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    rule.request_headers.apply(&mut parts.headers);
    // Copies see the request as the rule's filters made it, not the picked backendRef's
    // own filters; upgrades (WebSocket) are not mirrored.
    let mirror = match upgrade {
        None => crate::policy::mirror::Pending::new(
            &rule.gateway.mirrors,
            &parts.method,
            &parts.headers,
        ),
        Some(_) => None,
    };
    target.request_headers.apply(&mut parts.headers);
    if let Some(u) = upgrade {
        u.prepare(&mut parts.method, &mut parts.headers);
    }
    // What the stages after this one ask the map (`grpc-timeout`) may have been set by a
    // filter. An upgrade's `prepare` sets only the handshake's fields, asked about before.
    if filtered {
        *seen = FieldsSeen::of(&parts.headers);
    }
    let version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Ok((pq, version, mirror))
}

/// Stage 6: the client's response from what dispatch returned (the upstream's response with
/// hop-by-hop headers removed and the rule's response filters applied, or the proxy's own
/// reply), then the body limit's outcome, the WebSocket switch and what the rule's stages add
/// (CORS headers).
fn respond(
    rule: &RuleRt,
    target: &Target,
    sent: Result<Response<ProxyBody>, Response<ProxyBody>>,
    body_trip: Option<crate::http::limits::BodyTrip>,
    upgrade: Option<crate::policy::websocket::Upgrade>,
    hook: &ReplyHook<'_>,
) -> Response<ProxyBody> {
    let resp = match sent {
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
    hook.finish(&mut resp);
    resp
}
