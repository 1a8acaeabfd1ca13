//! Replies the proxy makes itself (layer 0): every stage that answers a request locally
//! (limits, routing, policies, upstream errors) uses this, so none of them reaches up into the
//! pipeline for it.
//!
//! One typed error: [`ErrorKind`] is the `error` code of the JSON body, the `kind` label of
//! `weir_proxy_errors_total` (its discriminant is the metric index, no string search) and, with
//! the reply's status, the gRPC status a gRPC client gets instead ([`ErrorKind::grpc_code`]).
//!
//! Rendered once: [`error_response`] makes the reply's head (status, kind, message) with no
//! body; [`render`], called once by the pipeline for every response, writes it as the JSON
//! body or, for a gRPC request, as a trailers-only gRPC status — one place that turns errors
//! into replies, so a gRPC client's reply is not a JSON body made and thrown away.

use crate::http::body::{empty, full, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// gRPC status codes a local reply can map to (see [`ErrorKind::grpc_code`]).
pub mod grpc_code {
    pub const UNKNOWN: u8 = 2;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// Declares [`ErrorKind`] with its codes in one list, so a code, its variant and its metric
/// index cannot drift apart.
macro_rules! error_kinds {
    ($($(#[$doc:meta])* $variant:ident = $code:literal,)*) => {
        /// Why the proxy answered a request itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorKind {
            /// Every kind, in metric-index order.
            pub const ALL: [ErrorKind; [$($code),*].len()] = [$(ErrorKind::$variant,)*];
            /// The `error` codes, in metric-index order (the `kind` label values).
            pub const CODES: [&'static str; [$($code),*].len()] = [$($code,)*];
        }
    };
}

error_kinds! {
    NoConfig = "no_config",
    NoHost = "no_host",
    NoRoute = "no_route",
    NoBackend = "no_backend",
    BadPath = "bad_path",
    NoEndpoint = "no_endpoint",
    NoHealthyEndpoint = "no_healthy_endpoint",
    CircuitOpen = "circuit_open",
    BackendOverloaded = "backend_overloaded",
    UpstreamConnectError = "upstream_connect_error",
    UpstreamError = "upstream_error",
    UpstreamTimeout = "upstream_timeout",
    /// An upstream body that failed midway (counted; the reply was already under way).
    UpstreamBodyError = "upstream_body_error",
    // Limits and WebSockets (limits.rs, websocket.rs).
    UriTooLong = "uri_too_long",
    TooManyHeaders = "too_many_headers",
    HeadersTooLarge = "headers_too_large",
    BodyTooLarge = "body_too_large",
    WebsocketDisabled = "websocket_disabled",
    WebsocketUnsupported = "websocket_unsupported",
    WebsocketNotUpgraded = "websocket_not_upgraded",
    // Policies (ratelimit.rs, extauth.rs, bodymatch.rs, kairos.rs).
    RateLimited = "rate_limited",
    ExtAuthDenied = "ext_auth_denied",
    ExtAuthError = "ext_auth_error",
    BodyNotJson = "body_not_json",
    KairosError = "kairos_error",
    /// Gateway API: a backendRef the operator could not resolve (500; gRPC UNAVAILABLE).
    InvalidBackend = "invalid_backend",
}

impl ErrorKind {
    /// The `error` code (JSON body, access log, metric label).
    pub const fn code(self) -> &'static str {
        Self::CODES[self as usize]
    }

    /// The index of this kind in `weir_proxy_errors_total`'s per-route handles.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kind whose code is `code`.
    pub fn from_code(code: &str) -> Option<ErrorKind> {
        Self::CODES
            .iter()
            .position(|c| *c == code)
            .map(|i| Self::ALL[i])
    }

    /// The gRPC status for a reply of this kind sent with `status`.
    pub fn grpc_code(self, status: StatusCode) -> u8 {
        use grpc_code as code;
        if self == ErrorKind::UpstreamTimeout {
            return code::DEADLINE_EXCEEDED;
        }
        // GRPCRoute: requests picked for an invalid backendRef get UNAVAILABLE (HTTP: 500).
        if self == ErrorKind::InvalidBackend {
            return code::UNAVAILABLE;
        }
        match status.as_u16() {
            400 => code::INTERNAL,
            401 => code::UNAUTHENTICATED,
            403 => code::PERMISSION_DENIED,
            404 => code::UNIMPLEMENTED,
            413 | 414 | 431 => code::RESOURCE_EXHAUSTED,
            504 => code::DEADLINE_EXCEEDED,
            429 | 502 | 503 => code::UNAVAILABLE,
            _ => code::UNKNOWN,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Marks a reply the proxy made itself (as a response extension): its kind, counted by
/// `weir_proxy_errors_total{kind}` and logged as the access log's `error`.
#[derive(Debug, Clone, Copy)]
pub struct ProxyError(pub ErrorKind);

/// The message of an error reply not rendered yet (see [`render`]); taken out when it is.
#[derive(Debug, Clone)]
struct Unrendered(Box<str>);

/// An error reply made by the proxy itself: its status and kind now, its body when
/// [`render`] knows whether the client speaks gRPC (JSON otherwise). Stages may add headers
/// (`Retry-After`, CORS) in between.
pub fn error_response(status: StatusCode, kind: ErrorKind, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    let ext = resp.extensions_mut();
    ext.insert(ProxyError(kind));
    ext.insert(Unrendered(message.into()));
    resp
}

/// Renders a reply the proxy made itself, once, for the client that gets it: for a gRPC
/// request (`grpc`) every non-2xx local reply becomes a trailers-only gRPC status; otherwise
/// an [`error_response`] gets its JSON body
/// (`{"status", "error", "message"}`). Upstream responses and local replies that carry their
/// own body (external auth denials, KairosDB errors) are left as they are for HTTP clients.
pub fn render(mut resp: Response<ProxyBody>, grpc: bool) -> Response<ProxyBody> {
    let Some(err) = resp.extensions().get::<ProxyError>().copied() else {
        return resp;
    };
    let status = resp.status();
    if grpc && !status.is_success() && !status.is_informational() {
        return grpc_status_reply(resp, err.0);
    }
    let Some(Unrendered(message)) = resp.extensions_mut().remove::<Unrendered>() else {
        return resp;
    };
    let body = serde_json::json!({
        "status": status.as_u16(),
        "error": err.0.code(),
        "message": &*message,
    });
    *resp.body_mut() = full(Bytes::from(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A reply the proxy made itself (of `kind`) as a trailers-only gRPC response (HTTP 200,
/// `grpc-status` and `grpc-message` headers, no body), for a gRPC request.
fn grpc_status_reply(resp: Response<ProxyBody>, kind: ErrorKind) -> Response<ProxyBody> {
    let status = resp.status();
    let (parts, _) = resp.into_parts();
    let mut out = Response::new(empty());
    *out.extensions_mut() = parts.extensions;
    let h = out.headers_mut();
    // Headers the proxy or route added (Alt-Svc, CORS, …) stay.
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            h.append(k.clone(), v.clone());
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(kind.grpc_code(status))),
    );
    let msg = format!("weir: {} ({})", kind, status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&msg) {
        h.insert(HeaderName::from_static("grpc-message"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local reply rendered for a gRPC request.
    fn local_error(resp: Response<ProxyBody>) -> Response<ProxyBody> {
        render(resp, true)
    }

    #[test]
    fn codes_round_trip_and_index_in_order() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(ErrorKind::from_code(k.code()), Some(*k));
            assert_eq!(k.to_string(), ErrorKind::CODES[i]);
        }
        assert_eq!(ErrorKind::from_code("nope"), None);
    }

    /// An HTTP client gets the JSON body, made when the reply is rendered, with the headers
    /// stages added in between; a gRPC client the status alone, the same headers kept.
    #[tokio::test]
    async fn rendered_once_as_json_or_grpc() {
        use http_body_util::BodyExt;
        let reply = || {
            let mut r = error_response(StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited, "m");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(3));
            r
        };
        let r = render(reply(), false);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"status": 429, "error": "rate_limited", "message": "m"})
        );
        let r = render(reply(), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(r.extensions().get::<ProxyError>().is_some());
        let body = r.into_body().collect().await.expect("body").to_bytes();
        assert!(body.is_empty());
        // Not the proxy's own reply: untouched.
        let mut upstream = Response::new(full(Bytes::from_static(b"x")));
        *upstream.status_mut() = StatusCode::BAD_GATEWAY;
        let r = render(upstream, true);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn proxy_errors_become_grpc_statuses() {
        let r = local_error(error_response(
            StatusCode::NOT_FOUND,
            ErrorKind::NoRoute,
            "x",
        ));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        let r = local_error(error_response(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::UpstreamTimeout,
            "x",
        ));
        assert_eq!(r.headers()["grpc-status"], "4");
        let r = local_error(error_response(
            StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamConnectError,
            "x",
        ));
        assert_eq!(r.headers()["grpc-status"], "14");
    }
}
