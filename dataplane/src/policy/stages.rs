//! A rule's stages: what may answer a request in place of a backend, run after routing and
//! before a backend is picked, in this order: CORS (preflight answers; the CORS headers of
//! every later reply), rate limit (429), external authorization (deny / fail closed), then
//! the rule's action when it is not forwarding: redirect, direct response, or KairosDB query
//! handling. What is a stage and what is rule protocol data: [`crate::policy::rule`].
//!
//! A new stage is a [`Stage`] variant (its settings compiled in [`RoutePolicy::for_rule`], in
//! its place in the order) and an arm in [`Stages::run`]. A plain forwarding rule has no
//! stages; the pipeline then skips [`Stages::run`] (and its boxed future) altogether.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::conn::ConnInfo;
use crate::http::reply::{error_response, ErrorKind};
use crate::policy::cors::CorsRt;
use crate::policy::extauth::{ExtAuthRt, Outcome as AuthOutcome};
use crate::policy::kairos::KairosRt;
use crate::policy::ratelimit::{Decision, RateLimiter};
use crate::policy::redirect::{DirectRt, RedirectInput, RedirectRt};
use crate::upstream::backend::BackendRt;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::{ExtAuth, PathMatchType, RateLimit, Route, Rule};

/// Where a rate limit or auth config sits: route name and rule index (`None`: route-wide).
type Scope = (String, Option<usize>);

/// Rate-limit buckets and ext-auth runtimes (decision cache, breaker) of one config version,
/// with the config each was built from, so a reload that leaves a policy unchanged keeps its
/// state (as unchanged backends keep their pools), and a changed policy starts fresh.
#[derive(Debug, Default)]
pub struct PolicyState {
    limiters: HashMap<Scope, (RateLimit, Arc<RateLimiter>)>,
    auths: HashMap<Scope, (ExtAuth, Arc<ExtAuthRt>)>,
}

/// Builds the next [`PolicyState`] while a snapshot compiles, reusing `prev`'s entries whose
/// config is equal.
#[derive(Debug, Default)]
pub struct PolicyCarry<'a> {
    prev: Option<&'a PolicyState>,
    next: PolicyState,
}

impl<'a> PolicyCarry<'a> {
    pub fn new(prev: Option<&'a PolicyState>) -> PolicyCarry<'a> {
        PolicyCarry {
            prev,
            next: PolicyState::default(),
        }
    }

    /// The state the compiled runtime keeps.
    pub fn finish(self) -> PolicyState {
        self.next
    }

    /// Carries the rate-limit and ext-auth state of `route` into the next version, as
    /// compiling it would ([`RoutePolicy::new`], [`RoutePolicy::for_rule`]); for a route whose
    /// compiled rules are kept (unchanged), so the state they hold stays carried on.
    pub fn keep_route(&mut self, route: &Route) {
        if let Some(r) = &route.rate_limit {
            self.limiter((route.name.clone(), None), r);
        }
        if let Some(a) = &route.ext_auth {
            self.auth((route.name.clone(), None), a);
        }
        for (i, rule) in route.rules.iter().enumerate() {
            if let Some(r) = &rule.rate_limit {
                self.limiter((route.name.clone(), Some(i)), r);
            }
            if let Some(a) = &rule.ext_auth {
                self.auth((route.name.clone(), Some(i)), a);
            }
        }
    }

    fn limiter(&mut self, scope: Scope, cfg: &RateLimit) -> Arc<RateLimiter> {
        let rt = match self.prev.and_then(|p| p.limiters.get(&scope)) {
            Some((c, rt)) if c == cfg => rt.clone(),
            _ => Arc::new(RateLimiter::new(&scope.0, cfg)),
        };
        self.next.limiters.insert(scope, (cfg.clone(), rt.clone()));
        rt
    }

    fn auth(&mut self, scope: Scope, cfg: &ExtAuth) -> Arc<ExtAuthRt> {
        let rt = match self.prev.and_then(|p| p.auths.get(&scope)) {
            Some((c, rt)) if c == cfg => rt.clone(),
            _ => Arc::new(ExtAuthRt::new(&scope.0, cfg)),
        };
        self.next.auths.insert(scope, (cfg.clone(), rt.clone()));
        rt
    }
}

/// Route-wide policies, shared by the rules that have none of their own.
pub struct RoutePolicy {
    name: String,
    rate_limit: Option<Arc<RateLimiter>>,
    ext_auth: Option<Arc<ExtAuthRt>>,
}

impl RoutePolicy {
    pub fn new(route: &Route, carry: &mut PolicyCarry<'_>) -> RoutePolicy {
        let scope = || (route.name.clone(), None);
        RoutePolicy {
            name: route.name.clone(),
            rate_limit: route.rate_limit.as_ref().map(|r| carry.limiter(scope(), r)),
            ext_auth: route.ext_auth.as_ref().map(|a| carry.auth(scope(), a)),
        }
    }

    /// The stages of `rule`, in the order they run; empty when it has none (the common
    /// case: no cost).
    pub fn for_rule(
        &self,
        index: usize,
        rule: &Rule,
        backends: &HashMap<String, Arc<BackendRt>>,
        carry: &mut PolicyCarry<'_>,
    ) -> Stages {
        let scope = || (self.name.clone(), Some(index));
        let rate_limit = match &rule.rate_limit {
            Some(r) => Some(carry.limiter(scope(), r)),
            None => self.rate_limit.clone(),
        };
        let ext_auth = match &rule.ext_auth {
            Some(a) => Some(carry.auth(scope(), a)),
            None => self.ext_auth.clone(),
        };
        let redirect = rule.redirect.as_ref().map(|r| {
            let prefixes = rule
                .matches
                .iter()
                .filter_map(|m| m.path.as_ref())
                .filter(|p| p.kind == PathMatchType::PathPrefix)
                .map(|p| p.value.clone())
                .collect();
            RedirectRt::new(r, prefixes)
        });
        // The order they run in. CORS first: preflights are answered before auth and rate
        // limits (browsers send no credentials with them).
        let list: Vec<Stage> = [
            rule.cors.as_ref().map(|c| Stage::Cors(CorsRt::compile(c))),
            rate_limit.map(Stage::RateLimit),
            ext_auth.map(Stage::ExtAuth),
            redirect.map(Stage::Redirect),
            rule.direct_response
                .as_ref()
                .map(|d| Stage::Direct(DirectRt::new(d))),
            rule.kairos
                .as_ref()
                .map(|k| Stage::Kairos(KairosRt::new(k, rule, backends))),
        ]
        .into_iter()
        .flatten()
        .collect();
        Stages {
            list: list.into_boxed_slice(),
        }
    }
}

/// The port in a request's authority or Host header.
fn request_port<B>(req: &Request<B>) -> Option<u16> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let after = match raw.rfind(']') {
        Some(i) => &raw[i + 1..],
        None => raw,
    };
    after.rsplit_once(':')?.1.parse().ok()
}

/// One per-rule stage. An enum, so running the list is a `match` per stage, statically
/// dispatched (no `Box<dyn>` per request).
#[derive(Debug)]
pub enum Stage {
    /// `cors`: answers preflights; the CORS headers of later replies come from [`ReplyHook`].
    Cors(CorsRt),
    /// `rateLimit` (the rule's, or the route's): 429 with `Retry-After`.
    RateLimit(Arc<RateLimiter>),
    /// `extAuth` (the rule's, or the route's): deny / fail closed, or headers added.
    ExtAuth(Arc<ExtAuthRt>),
    /// `redirect`: always answers.
    Redirect(RedirectRt),
    /// `directResponse`: always answers.
    Direct(DirectRt),
    /// `kairos`: answers with the KairosDB query's result.
    Kairos(KairosRt),
}

/// A rule's stages, in the order they run.
#[derive(Debug, Default)]
pub struct Stages {
    list: Box<[Stage]>,
}

/// What the request's inputs to the stages are besides the request itself.
pub struct StageInput<'a> {
    pub conn: &'a ConnInfo,
    pub host: &'a str,
    /// The normalized path the rule was routed on.
    pub path: &'a str,
    /// The rule's timeout (KairosDB's backend requests).
    pub timeout: Option<std::time::Duration>,
}

/// What the stages do to the replies that follow them (local or the upstream's): the CORS
/// headers of an allowed origin. [`ReplyHook::NONE`] for a rule without stages.
#[derive(Debug, Default)]
pub struct ReplyHook<'a> {
    cors: Option<(&'a CorsRt, HeaderValue)>,
}

impl ReplyHook<'_> {
    pub const NONE: ReplyHook<'static> = ReplyHook { cors: None };

    /// Adds what the stages add to every reply after them.
    pub fn finish(&self, resp: &mut Response<ProxyBody>) {
        if let Some((cors, origin)) = &self.cors {
            crate::policy::cors::decorate(cors, origin.clone(), resp);
        }
    }
}

impl Stages {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a stage may read any request header: rate-limit keys, external
    /// authorization (forwarded headers, cache key), KairosDB (the request it forwards).
    /// CORS (`Origin`, `Access-Control-Request-*`), redirects (`Host`) and direct responses
    /// read none of the fields the proxy itself adds (`traceparent`, `tracestate`).
    pub fn reads_request_headers(&self) -> bool {
        self.list.iter().any(|s| {
            matches!(
                s,
                Stage::RateLimit(_) | Stage::ExtAuth(_) | Stage::Kairos(_)
            )
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stage> {
        self.list.iter()
    }

    /// Runs the stages in order: `Ok` gives the request back to be forwarded (possibly with
    /// headers added) and the hook for the replies that follow; `Err` is the reply to send
    /// instead, already finished by the hook.
    pub async fn run<B>(
        &self,
        input: &StageInput<'_>,
        mut req: Request<B>,
    ) -> Result<(Request<B>, ReplyHook<'_>), Response<ProxyBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut hook = ReplyHook::default();
        for stage in self.list.iter() {
            let r = match stage {
                Stage::Cors(c) => {
                    // A preflight's answer carries its own CORS headers (or none).
                    if let Some(r) = crate::policy::cors::preflight(c, &req) {
                        return Err(r);
                    }
                    // Replies from here on (429, auth denials, redirects, 413, …) carry the
                    // CORS headers too, so browsers can read them (as Envoy does for local
                    // replies).
                    hook.cors = crate::policy::cors::allowed_origin(c, &req).map(|o| (c, o));
                    continue;
                }
                Stage::RateLimit(rl) => match rl.check(input.conn.remote.ip(), req.headers()) {
                    Decision::Limited { retry_after_secs } => rate_limited(retry_after_secs),
                    _ => continue,
                },
                Stage::ExtAuth(auth) => {
                    let pq = match req.uri().query() {
                        Some(q) => format!("{}?{q}", input.path),
                        None => input.path.to_string(),
                    };
                    match auth
                        .check(req.method(), &pq, input.host, req.headers())
                        .await
                    {
                        AuthOutcome::Respond(r) => r,
                        AuthOutcome::Allow(headers) => {
                            for (n, v) in headers {
                                req.headers_mut().insert(n, v);
                            }
                            continue;
                        }
                    }
                }
                Stage::Redirect(r) => r.respond(&RedirectInput {
                    scheme: input.conn.scheme,
                    host: input.host,
                    port: request_port(&req),
                    path: input.path,
                    query: req.uri().query(),
                }),
                Stage::Direct(d) => d.respond(),
                Stage::Kairos(k) => k.handle(input.conn, input.path, input.timeout, req).await,
            };
            let mut r = r;
            hook.finish(&mut r);
            return Err(r);
        }
        Ok((req, hook))
    }
}

/// The 429 of a rate limit, with `Retry-After`.
fn rate_limited(retry_after_secs: u64) -> Response<ProxyBody> {
    let mut r = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::RateLimited,
        &format!("rate limit exceeded; retry in {retry_after_secs}s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Stages {
        fn rate_limit(&self) -> Option<Arc<RateLimiter>> {
            self.iter().find_map(|s| match s {
                Stage::RateLimit(r) => Some(r.clone()),
                _ => None,
            })
        }
    }

    fn route(yaml: &str) -> Route {
        let snap = weir_config::load(yaml.as_bytes()).expect("valid config");
        (*snap.routes[0]).clone()
    }

    #[test]
    fn unchanged_policies_are_carried_over() {
        let yaml = |burst: u32| {
            format!(
                r#"
routes:
  - name: r
    rateLimit: {{ requestsPerUnit: 1, burst: {burst} }}
    extAuth: {{ url: "http://127.0.0.1:9" }}
    rules:
      - rateLimit: {{ requestsPerUnit: 2 }}
        directResponse: {{ status: 200 }}
"#
            )
        };
        let compile = |r: &Route, prev: Option<&PolicyState>| {
            let mut carry = PolicyCarry::new(prev);
            let rp = RoutePolicy::new(r, &mut carry);
            let p = Some(rp.for_rule(0, &r.rules[0], &HashMap::new(), &mut carry))
                .filter(|s| !s.is_empty())
                .expect("policies");
            (rp, p, carry.finish())
        };
        let r1 = route(&yaml(5));
        let (rp1, p1, s1) = compile(&r1, None);
        let (rp2, p2, s2) = compile(&r1, Some(&s1));
        let same = |a: &Option<Arc<RateLimiter>>, b: &Option<Arc<RateLimiter>>| {
            Arc::ptr_eq(a.as_ref().expect("limiter"), b.as_ref().expect("limiter"))
        };
        assert!(same(&rp1.rate_limit, &rp2.rate_limit));
        assert!(same(&p1.rate_limit(), &p2.rate_limit()));
        assert!(Arc::ptr_eq(
            rp1.ext_auth.as_ref().expect("auth"),
            rp2.ext_auth.as_ref().expect("auth")
        ));
        // The route-wide limit changes: it starts fresh; the rule's own and the auth are kept.
        let r3 = route(&yaml(6));
        let (rp3, p3, _) = compile(&r3, Some(&s2));
        assert!(!same(&rp2.rate_limit, &rp3.rate_limit));
        assert!(same(&p2.rate_limit(), &p3.rate_limit()));
        assert!(Arc::ptr_eq(
            rp2.ext_auth.as_ref().expect("auth"),
            rp3.ext_auth.as_ref().expect("auth")
        ));
        // Without a previous state everything is new.
        let (rp4, _, _) = compile(&r1, None);
        assert!(!same(&rp1.rate_limit, &rp4.rate_limit));
    }
}
