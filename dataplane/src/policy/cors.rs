//! CORS per rule (`rules[].cors`): preflights are answered by the proxy, actual requests from
//! an allowed origin get `Access-Control-Allow-Origin` (and friends) added to the upstream's
//! response. Requests from other origins pass through without CORS headers, so the browser
//! blocks them (as Envoy and Traefik do).

use crate::http::body::ProxyBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use weir_config::{CorsPolicy, StringMatchType};

#[derive(Debug)]
enum Origin {
    Any,
    Exact(String),
    Regex(regex::Regex),
}

/// A compiled [`CorsPolicy`].
#[derive(Debug)]
pub struct CorsRt {
    origins: Vec<Origin>,
    methods: HeaderValue,
    /// `None`: mirror what the preflight asks for (`*` configured).
    allow_headers: Option<HeaderValue>,
    any_headers: bool,
    /// `*` configured: the preflight's method is echoed (a credentialed request takes `*` as
    /// a literal method name, Fetch §3.2.5).
    any_methods: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn join(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(", ")).ok()
}

impl CorsRt {
    /// Validation already checked the policy; what does not compile is left out.
    pub fn compile(p: &CorsPolicy) -> CorsRt {
        let origins = p
            .allow_origins
            .iter()
            .filter_map(|o| match o.kind {
                StringMatchType::Exact if o.value == "*" => Some(Origin::Any),
                StringMatchType::Exact => Some(Origin::Exact(o.value.to_ascii_lowercase())),
                StringMatchType::RegularExpression => weir_config::compile_full_match(&o.value)
                    .ok()
                    .map(Origin::Regex),
            })
            .collect();
        let methods = if p.allow_methods.is_empty() {
            HeaderValue::from_static("GET, HEAD, POST")
        } else {
            join(&p.allow_methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST"))
        };
        let any_headers = p.allow_headers.iter().any(|h| h == "*");
        CorsRt {
            origins,
            methods,
            allow_headers: join(&p.allow_headers),
            any_headers,
            any_methods: p.allow_methods.iter().any(|m| m == "*"),
            expose: join(&p.expose_headers),
            credentials: p.allow_credentials,
            max_age: p
                .max_age
                .and_then(|d| HeaderValue::from_str(&d.get().as_secs().to_string()).ok()),
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request's `Origin`, if it is allowed.
    fn allow_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let o = origin.to_str().ok()?;
        let allowed = self.origins.iter().any(|m| match m {
            Origin::Any => true,
            Origin::Exact(e) => e.eq_ignore_ascii_case(o),
            Origin::Regex(r) => r.is_match(o),
        });
        if !allowed {
            return None;
        }
        // With credentials the origin must be echoed; a lone `*` answers `*`, except to a
        // request that carries credentials itself (`Authorization`, `Cookie`), which browsers
        // refuse `*` for (the Gateway API CORS conformance test checks the echo).
        let credentialed =
            headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE);
        let any_only = !self.credentials
            && !credentialed
            && self.origins.iter().any(|m| matches!(m, Origin::Any))
            && self.origins.len() == 1;
        Some(if any_only {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        })
    }
}

/// The answer to a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`) on a rule with a policy; `None` for any other request.
/// Called from the rule's CORS stage ([`crate::policy::stages::Stage::Cors`]), the one place
/// CORS is handled.
pub fn preflight<B>(cors: &CorsRt, req: &Request<B>) -> Option<Response<ProxyBody>> {
    let h = req.headers();
    if req.method() != Method::OPTIONS
        || !h.contains_key(header::ORIGIN)
        || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    // 200, not 204: both are "ok" to a browser (Fetch), and the Gateway API CORS conformance
    // test (v1.6) accepts only 200 for most of its preflights (Envoy answers 200 too).
    let mut resp = Response::new(crate::http::body::empty());
    *resp.status_mut() = StatusCode::OK;
    let out = resp.headers_mut();
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = cors.allow_origin(h) else {
        // Not allowed: no CORS headers, the browser fails the preflight.
        return Some(resp);
    };
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    let methods = match h.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
        Some(asked) if cors.any_methods => asked.clone(),
        _ => cors.methods.clone(),
    };
    out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    let asked = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let allow_headers = if cors.any_headers {
        asked
    } else {
        cors.allow_headers.clone()
    };
    if let Some(v) = allow_headers {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if cors.credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &cors.max_age {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    // Browsers read it from the actual response only, but the Gateway API CORS conformance
    // test (v1.6) expects the preflight to carry it too; it costs one header.
    if let Some(v) = &cors.expose {
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
    Some(resp)
}

/// What [`decorate`] needs from the request: the allowed origin's header value.
pub fn allowed_origin<B>(cors: &CorsRt, req: &Request<B>) -> Option<HeaderValue> {
    cors.allow_origin(req.headers())
}

/// Adds the CORS response headers for an allowed origin (upstream's own CORS headers are
/// replaced, so the policy is the single source of truth).
pub fn decorate(cors: &CorsRt, origin: HeaderValue, resp: &mut Response<ProxyBody>) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(v) = &cors.expose {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}
