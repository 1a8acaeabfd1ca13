//! URL parsing, address resolution and request templates.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use rustls::pki_types::ServerName;

use crate::error::{Error, Result};

/// Wire protocol to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (TLS with ALPN `http/1.1` for https URLs).
    H1,
    /// HTTP/2 (TLS with ALPN `h2` for https URLs, h2c prior knowledge for http URLs).
    H2,
    /// HTTP/3 over QUIC (always TLS, ALPN `h3`).
    H3,
}

impl Protocol {
    /// `h1`, `h2` or `h3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
            Protocol::H3 => "h3",
        }
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h1" | "http1" | "http/1.1" | "1.1" => Ok(Protocol::H1),
            "h2" | "http2" | "h2c" | "2" => Ok(Protocol::H2),
            "h3" | "http3" | "3" => Ok(Protocol::H3),
            _ => Err(Error::Input(format!(
                "unknown protocol {s:?} (expected h1, h2 or h3)"
            ))),
        }
    }
}

/// A parsed URL plus where to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// `true` for https URLs (always treated as TLS for h3).
    pub tls: bool,
    /// URL host without IPv6 brackets.
    pub host: String,
    /// Authority as written in the URL (`host[:port]`), used for Host / :authority.
    pub authority: Authority,
    /// Path and query (`/` when absent).
    pub path: PathAndQuery,
    /// Where to connect (`host:port` to resolve).
    pub connect: String,
    /// TLS server name (an IP address means no SNI is sent).
    pub server_name: ServerName<'static>,
}

impl Target {
    /// Parses `url` (http:// or https://). `connect_to` (`HOST:PORT`) overrides
    /// the address connected to; SNI and Host still come from the URL.
    pub fn parse(url: &str, connect_to: Option<&str>) -> Result<Target> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Input(format!("URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::Input(format!(
                    "URL {url:?}: scheme must be http or https"
                )))
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Error::Input(format!("URL {url:?}: no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let connect = match connect_to {
            Some(c) => c.to_string(),
            None if host.contains(':') => format!("[{host}]:{port}"),
            None => format!("{host}:{port}"),
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let server_name = crate::tls::server_name(&host)?;
        Ok(Target {
            tls,
            host,
            authority,
            path,
            connect,
            server_name,
        })
    }

    /// Resolves the connect address (blocking DNS lookup), first result.
    pub fn resolve(&self) -> Result<SocketAddr> {
        self.connect
            .to_socket_addrs()
            .map_err(|e| Error::Connect(format!("resolve {}: {e}", self.connect)))?
            .next()
            .ok_or_else(|| Error::Connect(format!("resolve {}: no address", self.connect)))
    }

    /// Resolves the connect address asynchronously, first result.
    pub async fn resolve_async(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host(self.connect.as_str())
            .await
            .map_err(|e| Error::Connect(format!("resolve {}: {e}", self.connect)))?
            .next()
            .ok_or_else(|| Error::Connect(format!("resolve {}: no address", self.connect)))
    }

    /// The server name as a string for QUIC (an IP literal means no SNI).
    pub fn server_name_str(&self) -> String {
        self.server_name.to_str().into_owned()
    }
}

/// A request prepared once and cheaply cloned for every request of a run:
/// the URI and body are reference-counted, the method is inline.
#[derive(Clone, Debug)]
pub struct Template {
    method: Method,
    origin: Uri,
    absolute: Uri,
    headers_h1: HeaderMap,
    headers: HeaderMap,
    body: Bytes,
}

impl Template {
    /// Whether the request may be sent again when the server provably did not process it.
    pub fn idempotent(&self) -> bool {
        self.method.is_idempotent()
    }

    /// Builds the template for `target` and `protocol`.
    pub fn new(
        target: &Target,
        protocol: Protocol,
        method: Method,
        extra: &HeaderMap,
        body: Bytes,
    ) -> Result<Template> {
        let scheme = if target.tls || protocol == Protocol::H3 {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let absolute = Uri::builder()
            .scheme(scheme)
            .authority(target.authority.clone())
            .path_and_query(target.path.clone())
            .build()
            .map_err(|e| Error::Input(format!("URL: {e}")))?;
        let origin = Uri::from(target.path.clone());
        let mut headers = extra.clone();
        if !body.is_empty() && !headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut headers_h1 = headers.clone();
        if !headers_h1.contains_key(HOST) {
            let host = HeaderValue::from_str(target.authority.as_str())
                .map_err(|e| Error::Input(format!("Host header: {e}")))?;
            headers_h1.insert(HOST, host);
        }
        // HTTP/2 and HTTP/3 carry the authority in :authority; a user-supplied
        // Host header is dropped there.
        headers.remove(HOST);
        Ok(Template {
            method,
            origin,
            absolute,
            headers_h1,
            headers,
            body,
        })
    }

    /// The shared request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// An HTTP/1.1 request (origin-form target and Host header).
    pub fn h1_request(&self) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.origin.clone();
        *r.headers_mut() = self.headers_h1.clone();
        r
    }

    /// An HTTP/2 request (absolute URI).
    pub fn h2_request(&self) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.absolute.clone();
        *r.headers_mut() = self.headers.clone();
        *r.version_mut() = http::Version::HTTP_2;
        r
    }

    /// An HTTP/3 request head; the body is sent separately.
    pub fn h3_request(&self) -> Request<()> {
        let mut r = Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.absolute.clone();
        *r.headers_mut() = self.headers.clone();
        *r.version_mut() = http::Version::HTTP_3;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hosts_send_no_sni_and_keep_brackets_for_connect() {
        let t = Target::parse("https://[::1]:8443/a?b=c", None).unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.connect, "[::1]:8443");
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));
        assert_eq!(t.path.as_str(), "/a?b=c");
        let t = Target::parse("http://127.0.0.1/", None).unwrap();
        assert_eq!(t.connect, "127.0.0.1:80");
        assert!(!t.tls);
    }

    #[test]
    fn dns_hosts_use_sni_and_connect_to_overrides_address() {
        let t = Target::parse("https://example.test/", Some("127.0.0.1:9443")).unwrap();
        assert!(matches!(t.server_name, ServerName::DnsName(_)));
        assert_eq!(t.connect, "127.0.0.1:9443");
        assert_eq!(t.server_name_str(), "example.test");
    }

    #[test]
    fn bad_urls_are_input_errors() {
        for u in ["ftp://x/", "/just/a/path", "http://"] {
            let e = Target::parse(u, None).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Other, "{u}: {e}");
        }
    }

    #[test]
    fn templates_set_host_for_h1_and_content_length_for_bodies() {
        let t = Target::parse("http://example.test:8080/x", None).unwrap();
        let mut extra = HeaderMap::new();
        extra.insert(HOST, HeaderValue::from_static("ignored-for-h2"));
        let tpl = Template::new(
            &t,
            Protocol::H2,
            Method::POST,
            &extra,
            Bytes::from_static(b"abc"),
        )
        .unwrap();
        let r1 = tpl.h1_request();
        assert_eq!(r1.uri(), "/x");
        assert_eq!(r1.headers()[HOST], "ignored-for-h2");
        assert_eq!(r1.headers()[CONTENT_LENGTH], "3");
        let r2 = tpl.h2_request();
        assert_eq!(r2.uri(), "http://example.test:8080/x");
        assert!(!r2.headers().contains_key(HOST));
        let tpl3 = Template::new(&t, Protocol::H3, Method::GET, &extra, Bytes::new()).unwrap();
        let r3 = tpl3.h3_request();
        assert_eq!(r3.uri().scheme_str(), Some("https"));
        assert!(!r3.headers().contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn protocol_names() {
        assert_eq!("h3".parse::<Protocol>().unwrap(), Protocol::H3);
        assert_eq!("H2".parse::<Protocol>().unwrap(), Protocol::H2);
        assert!("h4".parse::<Protocol>().is_err());
    }
}
