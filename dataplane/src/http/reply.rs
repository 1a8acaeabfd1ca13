//! Replies the proxy makes itself (layer 0): every stage that answers a request locally
//! (limits, routing, policies, upstream errors) uses this, so none of them reaches up into the
//! pipeline for it.

use crate::http::body::{full, ProxyBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

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
