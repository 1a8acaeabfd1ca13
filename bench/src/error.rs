//! Error type shared by the clients, the load driver and the test server.

use std::fmt;

/// The coarse class of a failure, as counted in a load report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// TCP connect or QUIC connection establishment failed (refused, unreachable, ...).
    Connect,
    /// TLS handshake failed (certificate, ALPN, protocol alert).
    Tls,
    /// The peer reset the stream (HTTP/2 RST_STREAM, HTTP/3 RESET_STREAM) or, for
    /// HTTP/1.1, closed the connection before the message was complete.
    Reset,
    /// A timeout elapsed (request timeout, QUIC idle timeout).
    Timeout,
    /// Anything else: protocol violations, connection lost, invalid input.
    Other,
}

impl ErrorKind {
    /// All kinds, in report order.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Reset,
        ErrorKind::Timeout,
        ErrorKind::Other,
    ];

    /// Stable lower-case name (used as JSON key).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the `weir_bench` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connection establishment failed.
    #[error("connect: {0}")]
    Connect(String),
    /// TLS handshake or configuration failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The stream was reset by the peer (or the body was cut short).
    #[error("stream reset: {0}")]
    Reset(String),
    /// A timeout elapsed.
    #[error("timeout: {0}")]
    Timeout(String),
    /// Invalid input (URL, header, file, option).
    #[error("invalid input: {0}")]
    Input(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The class of this error, as counted in reports.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connect(_) => ErrorKind::Connect,
            Error::Tls(_) => ErrorKind::Tls,
            Error::Reset(_) => ErrorKind::Reset,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Input(_) | Error::Other(_) => ErrorKind::Other,
        }
    }

    /// Classifies a hyper error (HTTP/1.1 or HTTP/2 client side).
    pub(crate) fn from_hyper(e: hyper::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout(e.to_string());
        }
        let msg = error_chain(&e);
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(h2e) = s.downcast_ref::<h2::Error>() {
                if h2e.is_reset() || h2e.is_go_away() || h2e.reason().is_some() {
                    return Error::Reset(msg);
                }
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::UnexpectedEof
                    | K::ConnectionReset
                    | K::BrokenPipe
                    | K::ConnectionAborted => return Error::Reset(msg),
                    K::TimedOut => return Error::Timeout(msg),
                    _ => {}
                }
            }
            src = s.source();
        }
        if e.is_incomplete_message() {
            return Error::Reset(msg);
        }
        Error::Other(msg)
    }

    /// Classifies an h3 stream error.
    pub(crate) fn from_h3_stream(e: h3::error::StreamError) -> Error {
        use h3::error::StreamError;
        let msg = e.to_string();
        match &e {
            StreamError::RemoteTerminate { .. } => Error::Reset(msg),
            StreamError::ConnectionError { 0: c, .. } if conn_timeout(c) => Error::Timeout(msg),
            _ => Error::Other(msg),
        }
    }

    /// Classifies an h3 connection error.
    pub(crate) fn from_h3_conn(e: h3::error::ConnectionError) -> Error {
        let msg = e.to_string();
        if conn_timeout(&e) {
            Error::Timeout(msg)
        } else {
            Error::Other(msg)
        }
    }

    /// Classifies a failed QUIC handshake.
    pub(crate) fn from_quic_connect(e: quinn::ConnectionError) -> Error {
        use quinn::ConnectionError as C;
        let msg = e.to_string();
        match &e {
            C::TransportError(t) if is_crypto(t.code) => Error::Tls(msg),
            C::ConnectionClosed(c) if is_crypto(c.error_code) => Error::Tls(msg),
            C::TimedOut => Error::Connect(format!("QUIC handshake timed out ({msg})")),
            _ => Error::Connect(msg),
        }
    }
}

fn conn_timeout(e: &h3::error::ConnectionError) -> bool {
    use h3::error::ConnectionError;
    use h3::quic::ConnectionErrorIncoming;
    matches!(
        e,
        ConnectionError::Timeout { .. }
            | ConnectionError::Remote {
                0: ConnectionErrorIncoming::Timeout,
                ..
            }
    )
}

/// QUIC transport error codes 0x100..=0x1ff carry a TLS alert.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// `e: cause: cause` rendering of an error and its sources.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
