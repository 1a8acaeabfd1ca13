//! Redirects (Gateway API `RequestRedirect`) and fixed direct responses.

use crate::http::body::{full, ProxyBody};
use crate::http::headers::prefix_matches;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use weir_config::{DirectResponse, RedirectPathType, RequestRedirect};

/// A compiled `redirect`.
#[derive(Debug)]
pub struct RedirectRt {
    cfg: RequestRedirect,
    /// The rule's `PathPrefix` values, longest first (for `ReplacePrefixMatch`).
    prefixes: Vec<String>,
}

/// What a redirect needs to know about the request.
pub struct RedirectInput<'a> {
    /// `http` or `https`: the scheme the client used.
    pub scheme: &'a str,
    /// Lowercase host without the port.
    pub host: &'a str,
    /// The port the client used (from the authority or Host header), if it gave one.
    pub port: Option<u16>,
    /// The normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl RedirectRt {
    pub fn new(cfg: &RequestRedirect, prefixes: Vec<String>) -> RedirectRt {
        let mut prefixes = prefixes;
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.trim_end_matches('/').len()));
        RedirectRt {
            cfg: cfg.clone(),
            prefixes,
        }
    }

    /// The `Location` for a request.
    pub fn location(&self, req: &RedirectInput<'_>) -> String {
        let scheme = self.cfg.scheme.as_deref().unwrap_or(req.scheme);
        let host = self.cfg.hostname.as_deref().unwrap_or(req.host);
        // Gateway API: an explicit port wins; else the scheme's well-known port when the scheme
        // is redirected; else the port the request came in on.
        let port = match (self.cfg.port, &self.cfg.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(s)) => Some(if s == "https" { 443 } else { 80 }),
            (None, None) => req.port,
        };
        let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
        let path = match &self.cfg.path {
            None => req.path.to_string(),
            Some(p) => match p.kind {
                RedirectPathType::ReplaceFullPath => p.value.clone(),
                RedirectPathType::ReplacePrefixMatch => {
                    match self.prefixes.iter().find(|x| prefix_matches(x, req.path)) {
                        Some(prefix) => {
                            let rest =
                                &req.path[prefix.trim_end_matches('/').len().min(req.path.len())..];
                            let base = p.value.trim_end_matches('/');
                            if rest.is_empty() {
                                if base.is_empty() {
                                    "/".to_string()
                                } else {
                                    base.to_string()
                                }
                            } else {
                                format!("{base}{rest}")
                            }
                        }
                        None => req.path.to_string(),
                    }
                }
            },
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    pub fn respond(&self, req: &RedirectInput<'_>) -> Response<ProxyBody> {
        let status = StatusCode::from_u16(self.cfg.status_code).unwrap_or(StatusCode::FOUND);
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = status;
        if let Ok(v) = HeaderValue::from_str(&self.location(req)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }
}

/// A compiled `directResponse`.
#[derive(Debug)]
pub struct DirectRt {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl DirectRt {
    pub fn new(cfg: &DirectResponse) -> DirectRt {
        DirectRt {
            status: StatusCode::from_u16(cfg.status).unwrap_or(StatusCode::OK),
            headers: cfg
                .headers
                .iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                    ))
                })
                .collect(),
            body: Bytes::from(cfg.body.clone().unwrap_or_default()),
        }
    }

    pub fn respond(&self) -> Response<ProxyBody> {
        let mut resp = Response::new(full(self.body.clone()));
        *resp.status_mut() = self.status;
        for (n, v) in &self.headers {
            resp.headers_mut().append(n.clone(), v.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::RedirectPath;

    fn input<'a>(scheme: &'a str, port: Option<u16>, path: &'a str) -> RedirectInput<'a> {
        RedirectInput {
            scheme,
            host: "a.example.com",
            port,
            path,
            query: Some("x=1"),
        }
    }

    fn rd(
        scheme: Option<&str>,
        port: Option<u16>,
        path: Option<(RedirectPathType, &str)>,
    ) -> RedirectRt {
        RedirectRt::new(
            &RequestRedirect {
                scheme: scheme.map(str::to_string),
                hostname: None,
                port,
                path: path.map(|(kind, v)| RedirectPath {
                    kind,
                    value: v.to_string(),
                }),
                status_code: 301,
            },
            vec!["/old".into(), "/old/deeper/".into()],
        )
    }

    #[test]
    fn locations() {
        use RedirectPathType::*;
        let cases = [
            (
                rd(Some("https"), None, None),
                input("http", Some(8080), "/p"),
                "https://a.example.com/p?x=1",
            ),
            (
                rd(None, None, None),
                input("http", Some(8080), "/p"),
                "http://a.example.com:8080/p?x=1",
            ),
            (
                rd(None, None, None),
                input("http", None, "/p"),
                "http://a.example.com/p?x=1",
            ),
            (
                rd(Some("http"), Some(8081), None),
                input("https", Some(8443), "/p"),
                "http://a.example.com:8081/p?x=1",
            ),
            (
                rd(None, None, Some((ReplaceFullPath, "/new"))),
                input("https", Some(443), "/p"),
                "https://a.example.com/new?x=1",
            ),
            (
                rd(None, None, Some((ReplacePrefixMatch, "/new"))),
                input("http", None, "/old/a/b"),
                "http://a.example.com/new/a/b?x=1",
            ),
            (
                rd(None, None, Some((ReplacePrefixMatch, "/new"))),
                input("http", None, "/old/deeper/z"),
                "http://a.example.com/new/z?x=1",
            ),
            (
                rd(None, None, Some((ReplacePrefixMatch, "/"))),
                input("http", None, "/old/a"),
                "http://a.example.com/a?x=1",
            ),
            (
                rd(None, None, Some((ReplacePrefixMatch, "/new"))),
                input("http", None, "/old"),
                "http://a.example.com/new?x=1",
            ),
        ];
        for (r, i, want) in cases {
            assert_eq!(r.location(&i), want, "{}", i.path);
        }
    }
}
