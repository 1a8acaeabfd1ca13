//! What the proxy knows about the client connection a request came in on (layer 0: every
//! layer above may read it, it reads nothing above it).

use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

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
    pub limits: crate::http::limits::RequestLimits,
}
