//! A rule's policies, applied after routing and before a backend is picked, in this order:
//! rate limit (429), external authorization (deny / fail closed), then the rule's action when
//! it is not forwarding: redirect, direct response, or KairosDB query handling.

use crate::http::body::{BoxError, ProxyBody};
use crate::http::conn::ConnInfo;
use crate::http::reply::{error_response, ErrorKind};
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

/// The compiled policies of one rule.
#[derive(Debug, Default)]
pub struct PolicyRt {
    rate_limit: Option<Arc<RateLimiter>>,
    ext_auth: Option<Arc<ExtAuthRt>>,
    redirect: Option<RedirectRt>,
    direct: Option<DirectRt>,
    kairos: Option<KairosRt>,
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

    /// The policies of `rule`, or `None` when it has none (the common case: no cost).
    pub fn for_rule(
        &self,
        index: usize,
        rule: &Rule,
        backends: &HashMap<String, Arc<BackendRt>>,
        carry: &mut PolicyCarry<'_>,
    ) -> Option<Arc<PolicyRt>> {
        let scope = || (self.name.clone(), Some(index));
        let p = PolicyRt {
            rate_limit: match &rule.rate_limit {
                Some(r) => Some(carry.limiter(scope(), r)),
                None => self.rate_limit.clone(),
            },
            ext_auth: match &rule.ext_auth {
                Some(a) => Some(carry.auth(scope(), a)),
                None => self.ext_auth.clone(),
            },
            redirect: rule.redirect.as_ref().map(|r| {
                let prefixes = rule
                    .matches
                    .iter()
                    .filter_map(|m| m.path.as_ref())
                    .filter(|p| p.kind == PathMatchType::PathPrefix)
                    .map(|p| p.value.clone())
                    .collect();
                RedirectRt::new(r, prefixes)
            }),
            direct: rule.direct_response.as_ref().map(DirectRt::new),
            kairos: rule
                .kairos
                .as_ref()
                .map(|k| KairosRt::new(k, rule, backends)),
        };
        let none = p.rate_limit.is_none()
            && p.ext_auth.is_none()
            && p.redirect.is_none()
            && p.direct.is_none()
            && p.kairos.is_none();
        (!none).then(|| Arc::new(p))
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

impl PolicyRt {
    /// Applies the policies: `Ok` gives the request back to be forwarded (possibly with
    /// headers added), `Err` is the reply to send instead.
    pub async fn apply<B>(
        &self,
        conn: &ConnInfo,
        host: &str,
        path: &str,
        timeout: Option<std::time::Duration>,
        mut req: Request<B>,
    ) -> Result<Request<B>, Response<ProxyBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(rl) = &self.rate_limit {
            if let Decision::Limited { retry_after_secs } =
                rl.check(conn.remote.ip(), req.headers())
            {
                let mut r = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorKind::RateLimited,
                    &format!("rate limit exceeded; retry in {retry_after_secs}s"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return Err(r);
            }
        }
        if let Some(auth) = &self.ext_auth {
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            match auth.check(req.method(), &pq, host, req.headers()).await {
                AuthOutcome::Respond(r) => return Err(r),
                AuthOutcome::Allow(headers) => {
                    for (n, v) in headers {
                        req.headers_mut().insert(n, v);
                    }
                }
            }
        }
        if let Some(r) = &self.redirect {
            return Err(r.respond(&RedirectInput {
                scheme: conn.scheme,
                host,
                port: request_port(&req),
                path,
                query: req.uri().query(),
            }));
        }
        if let Some(d) = &self.direct {
            return Err(d.respond());
        }
        if let Some(k) = &self.kairos {
            return Err(k.handle(conn, path, timeout, req).await);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> Route {
        let snap = weir_config::load(yaml.as_bytes()).expect("valid config");
        snap.routes[0].clone()
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
            let p = rp
                .for_rule(0, &r.rules[0], &HashMap::new(), &mut carry)
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
        assert!(same(&p1.rate_limit, &p2.rate_limit));
        assert!(Arc::ptr_eq(
            rp1.ext_auth.as_ref().expect("auth"),
            rp2.ext_auth.as_ref().expect("auth")
        ));
        // The route-wide limit changes: it starts fresh; the rule's own and the auth are kept.
        let r3 = route(&yaml(6));
        let (rp3, p3, _) = compile(&r3, Some(&s2));
        assert!(!same(&rp2.rate_limit, &rp3.rate_limit));
        assert!(same(&p2.rate_limit, &p3.rate_limit));
        assert!(Arc::ptr_eq(
            rp2.ext_auth.as_ref().expect("auth"),
            rp3.ext_auth.as_ref().expect("auth")
        ));
        // Without a previous state everything is new.
        let (rp4, _, _) = compile(&r1, None);
        assert!(!same(&rp1.rate_limit, &rp4.rate_limit));
    }
}
