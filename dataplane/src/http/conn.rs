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
    /// The client's address as `X-Forwarded-For` carries it, made once per connection
    /// (a value per request cost ~250 instructions and an allocation, callgrind).
    pub forwarded_for: HeaderValue,
    /// `for=<address>;proto=<scheme>`, the start of the `Forwarded` element this hop adds.
    pub forwarded: HeaderValue,
}

impl ConnInfo {
    /// What a listener knows about a connection it accepted from `remote`.
    pub fn new(
        remote: SocketAddr,
        listener: Arc<str>,
        scheme: &'static str,
        alt_svc: Option<HeaderValue>,
        limits: crate::http::limits::RequestLimits,
    ) -> ConnInfo {
        let (forwarded_for, forwarded) =
            crate::http::headers::connection_forwarding(remote, scheme);
        ConnInfo {
            remote,
            listener,
            scheme,
            alt_svc,
            limits,
            forwarded_for,
            forwarded,
        }
    }
}
