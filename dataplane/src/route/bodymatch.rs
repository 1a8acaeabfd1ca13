//! Field matches (metric-name routing): a value from a header or a JSON body field.
//!
//! The router walks its candidates in precedence order. A candidate whose other conditions hold
//! and that needs a body field makes the walk stop with [`Verdict::NeedBody`]; only then is the
//! body read (up to the router's largest `maxBodyBytes`) and the walk done again with it. So
//! requests that are decided before any body-matching candidate keep streaming. The bytes read
//! are replayed upstream unchanged, followed by whatever was not read ([`Replay`]).

use crate::http::body::{BoxError, ProxyBody};
use crate::http::reply::ErrorKind;
use crate::policy::rule::RuleRt;
use crate::route::router::{RequestView, Router};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use regex::Regex;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use weir_config::{
    compile_full_match, parse_json_path, BodyErrorAction, FieldMatch, JsonStep, StringMatchType,
};

/// A compiled `fields[]` entry.
#[derive(Debug)]
pub struct FieldCond {
    header: Option<HeaderName>,
    path: Option<Vec<JsonStep>>,
    exact: Option<String>,
    regex: Option<Regex>,
    max: usize,
    reject: bool,
}

impl FieldCond {
    pub fn new(f: &FieldMatch) -> Result<FieldCond, String> {
        let (exact, regex) = match f.kind {
            StringMatchType::Exact => (Some(f.value.clone()), None),
            StringMatchType::RegularExpression => (
                None,
                Some(
                    compile_full_match(&f.value)
                        .map_err(|e| format!("regex does not compile: {e}"))?,
                ),
            ),
        };
        Ok(FieldCond {
            header: match &f.header {
                Some(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string())?),
                None => None,
            },
            path: f.json_path.as_deref().map(parse_json_path).transpose()?,
            exact,
            regex,
            max: f.max_body_bytes as usize,
            reject: f.on_body_error == BodyErrorAction::Reject,
        })
    }

    /// Body bytes this condition may read (0 when it never reads the body).
    pub fn body_cap(&self) -> usize {
        if self.path.is_some() {
            self.max
        } else {
            0
        }
    }

    /// Whether this condition may read the body (a JSON path): only then does a lookup ask
    /// for it ([`Verdict::NeedBody`]).
    pub fn reads_body(&self) -> bool {
        self.path.is_some()
    }

    /// The request header this condition reads, if any.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    fn value_matches(&self, v: &str) -> bool {
        match (&self.exact, &self.regex) {
            (Some(e), _) => e == v,
            (None, Some(r)) => r.is_match(v),
            (None, None) => false,
        }
    }
}

/// A request body read for matching.
#[derive(Debug)]
pub struct BodyView {
    pub bytes: Bytes,
    /// False when the body went on past what was read.
    pub complete: bool,
    json: OnceLock<Option<serde_json::Value>>,
}

impl BodyView {
    pub fn new(bytes: Bytes, complete: bool) -> BodyView {
        BodyView {
            bytes,
            complete,
            json: OnceLock::new(),
        }
    }

    fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.bytes).ok())
            .as_ref()
    }
}

/// How a candidate's field conditions came out.
#[derive(Debug)]
pub enum Verdict {
    Yes,
    No,
    NeedBody,
    /// `onBodyError: reject`: answer this status, error code and message.
    Reject(StatusCode, ErrorKind, String),
}

/// Scalars as their text (strings without quotes); objects, arrays and null are no value.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first scalar `steps` reach in `v`, in document order.
pub fn first_value(v: &serde_json::Value, steps: &[JsonStep]) -> Option<String> {
    let Some((step, rest)) = steps.split_first() else {
        return scalar(v);
    };
    match step {
        JsonStep::Key(k) => first_value(v.get(k)?, rest),
        JsonStep::Index(i) => first_value(v.get(*i)?, rest),
        JsonStep::Each => v.as_array()?.iter().find_map(|e| first_value(e, rest)),
    }
}

/// Evaluates every field condition (AND) of one candidate.
pub fn eval(fields: &[FieldCond], headers: &HeaderMap, body: Option<&BodyView>) -> Verdict {
    for f in fields {
        // The header, when configured and present, wins over the body (as the Kairos proxy).
        if let Some(v) = f.header.as_ref().and_then(|h| headers.get(h)) {
            match v.to_str() {
                Ok(s) if f.value_matches(s) => continue,
                _ => return Verdict::No,
            }
        }
        let Some(path) = &f.path else {
            return Verdict::No;
        };
        let Some(body) = body else {
            return Verdict::NeedBody;
        };
        let fail = |status: StatusCode, code: ErrorKind, msg: String| {
            if f.reject {
                Verdict::Reject(status, code, msg)
            } else {
                Verdict::No
            }
        };
        if !body.complete || body.bytes.len() > f.max {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::BodyTooLarge,
                format!(
                    "routing reads at most {} body bytes and this body is larger",
                    f.max
                ),
            );
        }
        let Some(json) = body.json() else {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorKind::BodyNotJson,
                "routing needs a JSON body and this one does not parse".into(),
            );
        };
        match first_value(json, path) {
            Some(v) if f.value_matches(&v) => {}
            Some(_) => return Verdict::No,
            None => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BodyNotJson,
                    "routing needs a JSON body field that this body does not have".into(),
                )
            }
        }
    }
    Verdict::Yes
}

pin_project_lite::pin_project! {
    /// Bytes already read, then the rest of the original body.
    pub struct Replay<B> {
        prefix: Option<Bytes>,
        #[pin]
        rest: Rest<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = RestProj]
    enum Rest<B> {
        /// Never read from: the original body in place (no allocation).
        Inline { #[pin] body: B },
        /// Partly read while routing.
        Boxed { body: Pin<Box<B>> },
        Done,
    }
}

impl<B> Replay<B> {
    /// The original body, untouched.
    pub fn passthrough(body: B) -> Replay<B> {
        Replay {
            prefix: None,
            rest: Rest::Inline { body },
        }
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take() {
            if !p.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(p))));
            }
        }
        match this.rest.project() {
            RestProj::Inline { body } => body.poll_frame(cx).map_err(Into::into),
            RestProj::Boxed { body } => body.as_mut().poll_frame(cx).map_err(Into::into),
            RestProj::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(|p| p.is_empty())
            && match &self.rest {
                Rest::Inline { body } => body.is_end_stream(),
                Rest::Boxed { body } => body.is_end_stream(),
                Rest::Done => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let h = match &self.rest {
            Rest::Inline { body } => body.size_hint(),
            Rest::Boxed { body } => body.size_hint(),
            Rest::Done => SizeHint::with_exact(0),
        };
        // Upper first: `set_lower` asserts lower <= upper.
        let mut out = SizeHint::new();
        if let Some(u) = h.upper() {
            out.set_upper(u + p);
        }
        out.set_lower(h.lower() + p);
        out
    }
}

/// Reads up to `cap` bytes (a little more when a frame straddles it). Returns the bytes and,
/// when the body did not end, the rest of it.
pub async fn read_prefix<B>(
    mut body: Pin<Box<B>>,
    cap: usize,
) -> Result<(Bytes, Option<Pin<Box<B>>>), BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    while buf.len() <= cap {
        match body.frame().await {
            None => return Ok((buf.freeze(), None)),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
    Ok((buf.freeze(), Some(body)))
}

/// What [`route`] gives: the rule (none: 404) and the request, or a reply to send instead.
pub type Routed<B> = Result<(Option<Arc<RuleRt>>, Request<Replay<B>>), Response<ProxyBody>>;

/// Routes a request, reading its body only when a candidate needs a body field. Returns the
/// rule (or none: 404) and the request with a body that replays what was read; or a reply
/// (`onBodyError: reject`, unreadable body).
pub async fn route<B>(router: &Router, host: &str, path: &str, req: Request<B>) -> Routed<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let verdict = match lookup_without_body(router, host, path, &req) {
        crate::route::router::Lookup::NeedBody => {
            let (parts, body) = req.into_parts();
            let (bytes, rest) = match read_prefix(Box::pin(body), router.body_cap()).await {
                Ok(x) => x,
                Err(e) => {
                    return Err(crate::http::reply::error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorKind::BodyNotJson,
                        &format!("reading the request body failed: {e}"),
                    ))
                }
            };
            let view = BodyView::new(bytes.clone(), rest.is_none());
            let second = router.lookup(&RequestView {
                host,
                method: &parts.method,
                path,
                query: parts.uri.query(),
                headers: &parts.headers,
                body: Some(&view),
            });
            let req = Request::from_parts(
                parts,
                Replay {
                    prefix: Some(bytes),
                    rest: match rest {
                        Some(body) => Rest::Boxed { body },
                        None => Rest::Done,
                    },
                },
            );
            return finish(second, req);
        }
        other => other,
    };
    finish(verdict, req.map(Replay::passthrough))
}

/// [`route`] for a router that never needs the body ([`Router::reads_body`] false): one
/// lookup, no future. Awaiting `route` for such a table cost ~350 instructions per request
/// plus ~200 of memcpy moving its state (callgrind, BENCHMARKS.md "the request side, fifth
/// pass"); a `NeedBody` (impossible then) is no route, as after a body read.
// The error is the reply itself, moved once per request that gets one.
#[allow(clippy::result_large_err)]
pub fn route_without_body<B>(
    router: &Router,
    host: &str,
    path: &str,
    req: Request<B>,
) -> Routed<B> {
    let verdict = lookup_without_body(router, host, path, &req);
    finish(verdict, req.map(Replay::passthrough))
}

/// The lookup on what arrived before the body: the request line and the fields.
fn lookup_without_body<B>(
    router: &Router,
    host: &str,
    path: &str,
    req: &Request<B>,
) -> crate::route::router::Lookup {
    router.lookup(&RequestView {
        host,
        method: req.method(),
        path,
        query: req.uri().query(),
        headers: req.headers(),
        body: None,
    })
}

// The error is the reply itself, moved once per request that gets one.
#[allow(clippy::result_large_err)]
fn finish<B>(l: crate::route::router::Lookup, req: Request<Replay<B>>) -> Routed<B> {
    use crate::route::router::Lookup;
    match l {
        Lookup::Rule(r) => Ok((Some(r), req)),
        Lookup::None | Lookup::NeedBody => Ok((None, req)),
        Lookup::Reject(status, code, msg) => {
            Err(crate::http::reply::error_response(status, code, &msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn first_values() {
        let p = |s: &str| parse_json_path(s).unwrap();
        let v = json!({"metrics": [{"tags": {}}, {"name": "cpu"}, {"name": "mem"}], "metric": "m", "n": 5});
        assert_eq!(
            first_value(&v, &p("metrics[].name")).as_deref(),
            Some("cpu")
        );
        assert_eq!(
            first_value(&v, &p("metrics[2].name")).as_deref(),
            Some("mem")
        );
        assert_eq!(first_value(&v, &p("metric")).as_deref(), Some("m"));
        assert_eq!(first_value(&v, &p("n")).as_deref(), Some("5"));
        assert_eq!(first_value(&v, &p("metrics")), None);
        assert_eq!(first_value(&v, &p("nope.x")), None);
    }
}
