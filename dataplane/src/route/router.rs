//! Request routing, compiled per host from the snapshot's routes.
//!
//! # Precedence (deterministic)
//!
//! A request's candidates are the rules of every route whose hostnames match its host (routes
//! without hostnames match every host). Each `match` of a rule is one entry; entries are tried in
//! this order and the first whose conditions all hold wins:
//!
//! 1. hostname: exact beats wildcard, a longer wildcard suffix beats a shorter one, routes
//!    without hostnames come last;
//! 2. path: `Exact`, then `Wildcard` (more literal characters first), then `PathPrefix` (longer
//!    prefix first), then `RegularExpression`, then entries with no path condition;
//! 3. entries with a method condition before those without;
//! 4. more header conditions first, then more query conditions first, then more `fields`
//!    conditions (header or JSON body values) first;
//! 5. declaration order: route index, rule index, match index.
//!
//! `fields` conditions are checked last within an entry, and an entry that needs a body field
//! is only reached when every entry before it failed: then the body is read once (see
//! [`crate::route::bodymatch`]) and the walk resumes from the start with it. Entries decided before
//! any body-matching entry never buffer the body.

use crate::policy::rule::RuleRt;
use http::{HeaderMap, Method};
use regex::Regex;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::{
    compile_full_match, ConfigError, Errors, Match, PathMatchType, Route, StringMatchType,
    ValueMatch,
};

#[derive(Debug)]
enum PathCond {
    Any,
    Exact(String),
    Prefix(String),
    /// Segments: `None` is `*`; `tail` is a trailing `**`.
    Wildcard {
        segs: Vec<Option<String>>,
        tail: bool,
    },
    Regex(Regex),
}

impl PathCond {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathCond::Any => true,
            PathCond::Exact(v) => path == v,
            PathCond::Prefix(p) => prefix_matches(p, path),
            PathCond::Wildcard { segs, tail } => {
                let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
                for seg in segs {
                    match (parts.next(), seg) {
                        (Some(part), None) if !part.is_empty() => {}
                        (Some(part), Some(lit)) if part == lit => {}
                        _ => return false,
                    }
                }
                *tail || parts.next().is_none()
            }
            PathCond::Regex(re) => re.is_match(path),
        }
    }
}

// Lives in layer 0 so redirects (a policy, below the router) share it.
pub use crate::http::headers::prefix_matches;

#[derive(Debug)]
enum ValueCond {
    Exact(String),
    Regex(Regex),
}

impl ValueCond {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueCond::Exact(e) => e == v,
            ValueCond::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
struct Entry {
    cond: Arc<MatchCond>,
    rule: Arc<RuleRt>,
}

/// What the router looks at in a request.
pub struct RequestView<'a> {
    pub host: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The body read so far, once an entry needed a body field.
    pub body: Option<&'a crate::route::bodymatch::BodyView>,
}

/// The outcome of [`Router::lookup`].
#[derive(Debug)]
pub enum Lookup {
    Rule(Arc<RuleRt>),
    /// No entry matched (404).
    None,
    /// An entry needs a JSON body field; look up again with `body` set.
    NeedBody,
    /// A `fields` condition with `onBodyError: reject` rejected the body.
    Reject(http::StatusCode, crate::http::reply::ErrorKind, String),
}

impl MatchCond {
    fn matches(&self, req: &RequestView<'_>, query: &mut Option<Vec<(String, String)>>) -> bool {
        if let Some(m) = &self.method {
            if m != req.method {
                return false;
            }
        }
        if !self.path.matches(req.path) {
            return false;
        }
        for (name, cond) in &self.headers {
            let any = req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().map(|s| cond.matches(s)).unwrap_or(false));
            if !any {
                return false;
            }
        }
        if !self.query.is_empty() {
            let parsed = query.get_or_insert_with(|| {
                req.query
                    .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                    .unwrap_or_default()
            });
            for (name, cond) in &self.query {
                if !parsed.iter().any(|(k, v)| k == name && cond.matches(v)) {
                    return false;
                }
            }
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPattern<'a> {
    Exact(&'a str),
    /// Suffix including the leading dot: `.example.com`.
    Wildcard(&'a str),
    Any,
}

impl HostPattern<'_> {
    fn covers_host(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
            HostPattern::Any => true,
        }
    }
    /// Smaller sorts first.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (0, 0),
            HostPattern::Wildcard(s) => (1, usize::MAX - s.len()),
            HostPattern::Any => (2, 0),
        }
    }
}

type Group = Arc<Vec<Entry>>;

/// The compiled matches of one rule, with their index in the rule.
type MatchesOfRule = Vec<(usize, Arc<MatchCond>)>;

/// Routing tables: a precomputed, ordered candidate list per distinct host pattern.
#[derive(Debug, Default)]
pub struct Router {
    /// `Arc<str>` keys: a reload that reuses this table copies it (10,000 entries at 10,000
    /// routes), and copying a key is then a reference count, not an allocation.
    exact: HashMap<Arc<str>, Group>,
    /// (suffix with leading dot, group), longest suffix first.
    wildcard: Vec<(String, Group)>,
    any: Option<Group>,
    /// Largest `maxBodyBytes` of the `fields` conditions that read the body.
    body_cap: usize,
    /// Some `fields` condition reads the body: without one a lookup never needs it, and the
    /// pipeline routes without the body-reading future ([`crate::route::bodymatch::route`]).
    reads_body: bool,
}

/// The compiled `matches` of one route, per rule (`[(match index, condition)]`): the part of
/// a route the router builds its tables from. Kept across reloads with the route's rules while
/// the route is unchanged (see [`crate::runtime::compile`]), so its regexes are not compiled
/// again.
#[derive(Debug, Default)]
pub struct RouteConds(Vec<MatchesOfRule>);

impl RouteConds {
    /// Compiles the matches of `route`, the route at index `ri` (for the error paths).
    pub fn compile(ri: usize, route: &Route, errs: &mut Errors) -> RouteConds {
        let mut per_rule = Vec::new();
        for (ui, rule) in route.rules.iter().enumerate() {
            let mut per_match = Vec::new();
            if rule.matches.is_empty() {
                per_match.push((0, Arc::new(MatchCond::any())));
            }
            for (mi, m) in rule.matches.iter().enumerate() {
                let p = format!("routes[{ri}].rules[{ui}].matches[{mi}]");
                if let Some(c) = MatchCond::new(&p, m, errs) {
                    per_match.push((mi, Arc::new(c)));
                }
            }
            per_rule.push(per_match);
        }
        RouteConds(per_rule)
    }

    /// Whether a condition reads the request header `name` (a `headers` match, or a `fields`
    /// match's header).
    pub fn reads_header(&self, name: &http::HeaderName) -> bool {
        self.0.iter().flatten().any(|(_, c)| {
            c.headers.iter().any(|(n, _)| n == name)
                || c.fields.iter().any(|f| f.header() == Some(name))
        })
    }
}

/// What [`Router::assemble`] may take from the router of the previous version: every table
/// but the exact hosts in `hosts` (lowercase), which are built again.
///
/// The caller vouches that this is sound: every route whose compiled form is new or gone
/// (changed, added, removed) has only exact hostnames, all of them in `hosts`; every other
/// route kept its compiled rules and conditions (the same `Arc`s) and its order relative to
/// the others. Then wildcard and catch-all tables, and the exact tables of other hosts, hold
/// exactly what a full build would put there.
#[derive(Clone, Copy)]
pub struct Reuse<'a> {
    pub prev: &'a Router,
    pub hosts: &'a std::collections::HashSet<String>,
}

/// A group holds every entry that can serve the hosts of one pattern (`members`: the
/// patterns covering them, with their route), in precedence order.
fn build_group<U: AsRef<[Arc<RuleRt>]>>(
    members: &[(usize, HostPattern<'_>)],
    conds: &[&[MatchesOfRule]],
    rules: &[U],
) -> Group {
    let mut cands = Vec::new();
    for (ri, pat) in members {
        for (ui, per_match) in conds[*ri].iter().enumerate() {
            for (mi, cond) in per_match {
                let (a, b, c, d, e) = cond.key();
                cands.push((
                    (pat.rank(), a, b, c, d, e, (*ri, ui, *mi)),
                    cond,
                    &rules[*ri].as_ref()[ui],
                ));
            }
        }
    }
    cands.sort_by_key(|c| c.0);
    // A route with two patterns covering the same host shows up twice; keep the first.
    let mut seen = std::collections::HashSet::new();
    let entries = cands
        .into_iter()
        .filter(|c| seen.insert(c.0 .6))
        .map(|(_, cond, rule)| Entry {
            cond: cond.clone(),
            rule: rule.clone(),
        })
        .collect();
    Arc::new(entries)
}

impl Router {
    /// Compiles routes; `rules[route][rule]` are the already-compiled rule actions.
    pub fn build<R: Borrow<Route>>(
        routes: &[R],
        rules: &[Vec<Arc<RuleRt>>],
    ) -> Result<Router, ConfigError> {
        let mut errs = Errors::default();
        let conds: Vec<Arc<RouteConds>> = routes
            .iter()
            .enumerate()
            .map(|(ri, route)| Arc::new(RouteConds::compile(ri, route.borrow(), &mut errs)))
            .collect();
        errs.into_result()?;
        Ok(Router::assemble(routes, &conds, rules, None))
    }

    /// The tables of `routes` from their compiled conditions and rules (`conds[route]`,
    /// `rules[route][rule]`), taking what `reuse` allows from the previous router.
    pub fn assemble<R: Borrow<Route>, U: AsRef<[Arc<RuleRt>]>>(
        routes: &[R],
        conds: &[Arc<RouteConds>],
        rules: &[U],
        reuse: Option<Reuse<'_>>,
    ) -> Router {
        let conds: Vec<&[MatchesOfRule]> = conds.iter().map(|c| c.0.as_slice()).collect();
        let body_cap = conds
            .iter()
            .flat_map(|c| c.iter())
            .flatten()
            .flat_map(|(_, c)| c.fields.iter())
            .map(|f| f.body_cap())
            .max()
            .unwrap_or(0);
        let reads_body = conds
            .iter()
            .flat_map(|c| c.iter())
            .flatten()
            .flat_map(|(_, c)| c.fields.iter())
            .any(|f| f.reads_body());
        // A scan of every hostname per changed host is O(routes x changed hosts): only for a
        // few hosts; more (a burst of added routes) index every hostname first, below.
        const SCAN_MAX_HOSTS: usize = 8;
        if let Some(reuse) = reuse.filter(|r| r.hosts.len() <= SCAN_MAX_HOSTS) {
            // Only the exact hosts of changed routes: a one-route change at 10,000 routes
            // builds one group instead of 10,000 (and frees one, not 10,000, of the old).
            // The patterns covering such a host are found by one scan of the hostnames
            // without allocating (lowering and indexing every hostname, as the full build
            // does, was most of what a reused reload spent here).
            let mut router = Router {
                body_cap,
                reads_body,
                exact: reuse.prev.exact.clone(),
                wildcard: reuse.prev.wildcard.clone(),
                any: reuse.prev.any.clone(),
            };
            for h in reuse.hosts {
                let mut members: Vec<(usize, HostPattern<'_>)> = Vec::new();
                let mut named = false;
                for (ri, route) in routes.iter().enumerate() {
                    let route: &Route = route.borrow();
                    if route.hostnames.is_empty() {
                        members.push((ri, HostPattern::Any));
                    }
                    for hn in &route.hostnames {
                        match hn.strip_prefix('*') {
                            // The same test as `covering` below: `h` is longer and ends
                            // with the suffix (ranks depend on the suffix length only).
                            Some(sfx) => {
                                let (hb, sb) = (h.as_bytes(), sfx.as_bytes());
                                if hb.len() > sb.len()
                                    && hb[hb.len() - sb.len()..].eq_ignore_ascii_case(sb)
                                {
                                    members.push((ri, HostPattern::Wildcard(sfx)));
                                }
                            }
                            None if hn.eq_ignore_ascii_case(h) => {
                                named = true;
                                members.push((ri, HostPattern::Exact(hn)));
                            }
                            None => {}
                        }
                    }
                }
                match named {
                    true => {
                        let group = build_group(&members, &conds, rules);
                        router.exact.insert(h.as_str().into(), group);
                    }
                    // No route names it any more: its requests fall to the wildcards.
                    false => {
                        router.exact.remove(h.as_str());
                    }
                }
            }
            return router;
        }
        let lowered: Vec<Vec<String>> = routes
            .iter()
            .map(|r| {
                let r: &Route = r.borrow();
                r.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect()
            })
            .collect();
        let mut patterns: Vec<(usize, HostPattern)> = Vec::new();
        for (ri, hosts) in lowered.iter().enumerate() {
            if hosts.is_empty() {
                patterns.push((ri, HostPattern::Any));
            }
            for h in hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => patterns.push((ri, HostPattern::Wildcard(suffix))),
                    None => patterns.push((ri, HostPattern::Exact(h))),
                }
            }
        }

        // Which patterns cover a host or a wildcard: looked up, not scanned. Scanning every
        // pattern for every distinct host made this O(hosts x patterns): 10,000 routes with
        // one exact host each were 10^8 comparisons per compile, most of a reload's time.
        let mut exact_pats: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut wild_pats: HashMap<&str, Vec<usize>> = HashMap::new();
        // Suffixes without the leading dot (never from a validated config): scanned.
        let mut odd_wild_pats: Vec<usize> = Vec::new();
        let mut any_pats: Vec<usize> = Vec::new();
        for (pi, (_, pat)) in patterns.iter().enumerate() {
            match *pat {
                HostPattern::Exact(h) => exact_pats.entry(h).or_default().push(pi),
                HostPattern::Wildcard(s) if s.starts_with('.') => {
                    wild_pats.entry(s).or_default().push(pi)
                }
                HostPattern::Wildcard(_) => odd_wild_pats.push(pi),
                HostPattern::Any => any_pats.push(pi),
            }
        }
        // The wildcard patterns (and `Any`) covering `name`: those whose suffix is a dot-suffix
        // of it. A host needs the suffix to be shorter than itself; a wildcard's own suffix
        // (`.a.b`) covers it.
        let covering = |name: &str, host: bool| -> Vec<usize> {
            let mut out: Vec<usize> = name
                .match_indices('.')
                .filter(|(i, _)| !host || *i > 0)
                .filter_map(|(i, _)| wild_pats.get(&name[i..]))
                .flatten()
                .copied()
                .collect();
            out.extend(
                odd_wild_pats
                    .iter()
                    .copied()
                    .filter(|pi| match patterns[*pi].1 {
                        HostPattern::Wildcard(o) => {
                            (!host || name.len() > o.len()) && name.ends_with(o)
                        }
                        _ => false,
                    }),
            );
            out.extend(any_pats.iter().copied());
            out
        };
        let group_of = |members: Vec<usize>| -> Group {
            let members: Vec<(usize, HostPattern)> =
                members.iter().map(|pi| patterns[*pi]).collect();
            build_group(&members, &conds, rules)
        };

        if let Some(reuse) = reuse {
            // Many changed hosts: the previous tables but theirs, from the index.
            let mut router = Router {
                body_cap,
                reads_body,
                exact: reuse.prev.exact.clone(),
                wildcard: reuse.prev.wildcard.clone(),
                any: reuse.prev.any.clone(),
            };
            for h in reuse.hosts {
                match exact_pats.get(h.as_str()) {
                    Some(members) => {
                        let mut members = members.clone();
                        members.extend(covering(h, true));
                        router.exact.insert(h.as_str().into(), group_of(members));
                    }
                    // No route names it any more: its requests fall to the wildcards.
                    None => {
                        router.exact.remove(h.as_str());
                    }
                }
            }
            return router;
        }
        let mut router = Router {
            body_cap,
            reads_body,
            ..Router::default()
        };
        let mut wildcards_seen = std::collections::HashSet::new();
        for (_, pat) in &patterns {
            match *pat {
                HostPattern::Exact(h) if !router.exact.contains_key(h) => {
                    let mut members = exact_pats.get(h).cloned().unwrap_or_default();
                    members.extend(covering(h, true));
                    router.exact.insert(h.into(), group_of(members));
                }
                HostPattern::Wildcard(s) if !wildcards_seen.contains(s) => {
                    // Hosts under `*.a.b` are also under every wildcard whose suffix ends `s`.
                    wildcards_seen.insert(s);
                    router
                        .wildcard
                        .push((s.to_string(), group_of(covering(s, false))));
                }
                HostPattern::Any if router.any.is_none() => {
                    router.any = Some(group_of(any_pats.clone()));
                }
                _ => {}
            }
        }
        router
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        router
    }

    /// The rule for a request, or `None` (404). `host` must be lowercase without a port.
    /// Entries that need a body field do not match here; see [`Router::lookup`].
    pub fn find(&self, req: &RequestView<'_>) -> Option<Arc<RuleRt>> {
        match self.lookup(req) {
            Lookup::Rule(r) => Some(r),
            _ => None,
        }
    }

    /// Body bytes a lookup may need (the largest `maxBodyBytes` of body-field conditions).
    pub fn body_cap(&self) -> usize {
        self.body_cap
    }

    /// Whether a lookup may need the body ([`Lookup::NeedBody`]).
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Like [`Router::find`], and says when a body field is needed to go on.
    pub fn lookup(&self, req: &RequestView<'_>) -> Lookup {
        let group = self.exact.get(req.host).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| HostPattern::Wildcard(suffix).covers_host(req.host))
                .map(|(_, g)| g)
                .or(self.any.as_ref())
        });
        let Some(group) = group else {
            return Lookup::None;
        };
        let mut query = None;
        for e in group.iter() {
            if !e.cond.matches(req, &mut query) {
                continue;
            }
            if e.cond.fields.is_empty() {
                return Lookup::Rule(e.rule.clone());
            }
            match crate::route::bodymatch::eval(&e.cond.fields, req.headers, req.body) {
                crate::route::bodymatch::Verdict::Yes => return Lookup::Rule(e.rule.clone()),
                crate::route::bodymatch::Verdict::No => {}
                crate::route::bodymatch::Verdict::NeedBody => return Lookup::NeedBody,
                crate::route::bodymatch::Verdict::Reject(s, c, m) => {
                    return Lookup::Reject(s, c, m)
                }
            }
        }
        Lookup::None
    }
}

/// One compiled `match`: its conditions plus what precedence needs to know about them.
#[derive(Debug)]
struct MatchCond {
    /// 0 Exact, 1 Wildcard, 2 PathPrefix, 3 RegularExpression, 4 none.
    path_kind: u8,
    /// Literal characters in the path condition (longer sorts first).
    path_len: usize,
    path: PathCond,
    method: Option<Method>,
    headers: Vec<(http::HeaderName, ValueCond)>,
    query: Vec<(String, ValueCond)>,
    fields: Vec<crate::route::bodymatch::FieldCond>,
}

impl MatchCond {
    fn any() -> Self {
        MatchCond {
            path_kind: 4,
            path_len: 0,
            path: PathCond::Any,
            method: None,
            headers: vec![],
            query: vec![],
            fields: vec![],
        }
    }

    fn new(p: &str, m: &Match, errs: &mut Errors) -> Option<Self> {
        let before = errs.0.len();
        let (path_kind, path_len, path) = match &m.path {
            None => (4, 0, PathCond::Any),
            Some(pm) => match pm.kind {
                PathMatchType::Exact => (0, pm.value.len(), PathCond::Exact(pm.value.clone())),
                PathMatchType::Wildcard => {
                    let body = pm.value.strip_prefix('/').unwrap_or(&pm.value);
                    let mut segs: Vec<&str> = body.split('/').collect();
                    let tail = segs.last() == Some(&"**");
                    if tail {
                        segs.pop();
                    }
                    let literal = segs.iter().filter(|s| **s != "*").map(|s| s.len()).sum();
                    let segs = segs
                        .into_iter()
                        .map(|s| (s != "*").then(|| s.to_string()))
                        .collect();
                    (1, literal, PathCond::Wildcard { segs, tail })
                }
                PathMatchType::PathPrefix => (
                    2,
                    pm.value.trim_end_matches('/').len(),
                    PathCond::Prefix(pm.value.clone()),
                ),
                PathMatchType::RegularExpression => match compile_full_match(&pm.value) {
                    Ok(r) => (3, 0, PathCond::Regex(r)),
                    Err(e) => {
                        errs.push(format!("{p}.path"), format!("regex does not compile: {e}"));
                        (3, 0, PathCond::Any)
                    }
                },
            },
        };
        let method = m
            .method
            .as_ref()
            .and_then(|s| Method::from_bytes(s.as_bytes()).ok());
        let mut value = |field: String, v: &ValueMatch| match v.kind {
            StringMatchType::Exact => Some(ValueCond::Exact(v.value.clone())),
            StringMatchType::RegularExpression => match compile_full_match(&v.value) {
                Ok(r) => Some(ValueCond::Regex(r)),
                Err(e) => {
                    errs.push(field, format!("regex does not compile: {e}"));
                    None
                }
            },
        };
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let cond = value(format!("{p}.headers[{i}].value"), h);
            if let (Ok(name), Some(cond)) = (http::HeaderName::from_bytes(h.name.as_bytes()), cond)
            {
                headers.push((name, cond));
            }
        }
        let mut query = Vec::new();
        for (i, q) in m.query_params.iter().enumerate() {
            if let Some(cond) = value(format!("{p}.queryParams[{i}].value"), q) {
                query.push((q.name.clone(), cond));
            }
        }
        let mut fields = Vec::new();
        for (i, f) in m.fields.iter().enumerate() {
            match crate::route::bodymatch::FieldCond::new(f) {
                Ok(c) => fields.push(c),
                Err(e) => errs.push(format!("{p}.fields[{i}]"), e),
            }
        }
        (errs.0.len() == before).then_some(MatchCond {
            path_kind,
            path_len,
            path,
            method,
            headers,
            query,
            fields,
        })
    }

    fn key(&self) -> (u8, usize, u8, usize, usize) {
        (
            self.path_kind,
            usize::MAX - self.path_len,
            u8::from(self.method.is_none()),
            usize::MAX - self.headers.len(),
            // Query conditions, then `fields` conditions, in one key: more query conditions
            // first, then more fields conditions.
            usize::MAX - ((self.query.len() << 16) | self.fields.len().min(0xffff)),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::runtime::compile;
    use http::{HeaderMap, HeaderValue, Method};

    const ROUTES: &str = r#"
backends:
  b: { endpoints: ["127.0.0.1:1"] }
routes:
  - name: any
    rules:
      - backendRefs: [{ name: b }]                                           # any#0
      - matches: [{ path: { type: PathPrefix, value: /api } }]
        backendRefs: [{ name: b }]                                           # any#1
      - matches: [{ path: { type: PathPrefix, value: /api/v1 } }]
        backendRefs: [{ name: b }]                                           # any#2
      - matches: [{ path: { type: Exact, value: /api/v1/users } }]
        backendRefs: [{ name: b }]                                           # any#3
      - matches: [{ path: { type: Wildcard, value: "/api/*/items" } }]
        backendRefs: [{ name: b }]                                           # any#4
      - matches: [{ path: { type: RegularExpression, value: "/api/[0-9]+" } }]
        backendRefs: [{ name: b }]                                           # any#5
      - matches: [{ path: { type: PathPrefix, value: /api }, method: POST }]
        backendRefs: [{ name: b }]                                           # any#6
      - matches:
          - path: { type: PathPrefix, value: /api }
            headers: [{ name: x-canary, value: "yes" }]
        backendRefs: [{ name: b }]                                           # any#7
      - matches:
          - path: { type: PathPrefix, value: /api }
            queryParams: [{ name: debug, value: "1|true", type: RegularExpression }]
        backendRefs: [{ name: b }]                                           # any#8
      - matches: [{ path: { type: Wildcard, value: "/files/**" } }]
        backendRefs: [{ name: b }]                                           # any#9
  - name: exact
    hostnames: [shop.example.com]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /cart } }]
        backendRefs: [{ name: b }]                                           # exact#0
  - name: wild
    hostnames: ["*.example.com"]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /cart } }]
        backendRefs: [{ name: b }]                                           # wild#0
      - matches: [{ path: { type: PathPrefix, value: /wild } }]
        backendRefs: [{ name: b }]                                           # wild#1
  - name: deeper
    hostnames: ["*.eu.example.com"]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /cart } }]
        backendRefs: [{ name: b }]                                           # deeper#0
  - name: later
    rules:
      - matches: [{ path: { type: PathPrefix, value: /api } }]
        backendRefs: [{ name: b }]                                           # never: same key as any#1, declared later
"#;

    fn find(
        rt: &crate::runtime::compile::Runtime,
        host: &str,
        method: &str,
        uri: &str,
        hdrs: &[(&str, &str)],
    ) -> String {
        let uri: http::Uri = uri.parse().unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in hdrs {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let view = super::RequestView {
            host,
            method: &method,
            path: uri.path(),
            query: uri.query(),
            headers: &headers,
            body: None,
        };
        match rt.router.find(&view) {
            Some(r) => format!("{}#{}", r.route, r.rule_index),
            None => "404".into(),
        }
    }

    #[test]
    fn precedence_table() {
        let snap = weir_config::load(ROUTES.as_bytes()).unwrap();
        let rt = compile(snap, None).unwrap();
        type Row<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let table: &[Row] = &[
            ("x.test", "GET", "/", &[], "any#0"),
            ("x.test", "GET", "/apix", &[], "any#0"),
            ("x.test", "GET", "/api", &[], "any#1"),
            ("x.test", "GET", "/api/", &[], "any#1"),
            ("x.test", "GET", "/api/v1", &[], "any#2"),
            ("x.test", "GET", "/api/v1/users", &[], "any#3"),
            ("x.test", "GET", "/api/v1/users/7", &[], "any#2"),
            ("x.test", "GET", "/api/v2/items", &[], "any#4"),
            ("x.test", "GET", "/api/v1/items", &[], "any#4"),
            ("x.test", "GET", "/api/v2/items/3", &[], "any#1"),
            ("x.test", "GET", "/api/42", &[], "any#1"), // prefix outranks regex
            ("x.test", "POST", "/api/x", &[], "any#6"),
            ("x.test", "GET", "/api/x", &[("x-canary", "yes")], "any#7"),
            ("x.test", "POST", "/api/x", &[("x-canary", "yes")], "any#6"), // method before headers
            ("x.test", "GET", "/api/x", &[("x-canary", "no")], "any#1"),
            ("x.test", "GET", "/api/x?debug=true", &[], "any#8"),
            ("x.test", "GET", "/api/x?debug=2", &[], "any#1"),
            ("x.test", "GET", "/files", &[], "any#9"),
            ("x.test", "GET", "/files/a/b/c", &[], "any#9"),
            ("shop.example.com", "GET", "/cart/1", &[], "exact#0"),
            ("shop.example.com", "GET", "/wild", &[], "wild#1"),
            ("shop.example.com", "GET", "/api", &[], "any#1"),
            ("a.example.com", "GET", "/cart", &[], "wild#0"),
            ("a.b.example.com", "GET", "/cart", &[], "wild#0"),
            ("x.eu.example.com", "GET", "/cart", &[], "deeper#0"),
            ("x.eu.example.com", "GET", "/wild", &[], "wild#1"),
            ("example.com", "GET", "/cart", &[], "any#0"),
        ];
        for (host, method, uri, hdrs, want) in table {
            assert_eq!(
                &find(&rt, host, method, uri, hdrs),
                want,
                "{method} {host}{uri} {hdrs:?}"
            );
        }
    }

    /// Many routes with exact, nested wildcard and catch-all hostnames: every lookup picks
    /// what a scan of every pattern would (the tables are built from an index since the
    /// scan was quadratic): the most specific covering pattern, then declaration order.
    #[test]
    fn host_index_agrees_with_a_scan_of_every_pattern() {
        let suffixes = ["example.com", "eu.example.com", "b.eu.example.com", "test"];
        let mut routes = Vec::new();
        let mut patterns: Vec<Vec<String>> = Vec::new();
        for i in 0..120 {
            let sfx = suffixes[i % suffixes.len()];
            let hosts: Vec<String> = match i % 5 {
                0 => vec![format!("*.{sfx}")],
                1 => vec![format!("h{}.{sfx}", i % 7), format!("*.{sfx}")],
                2 => vec![],
                _ => vec![format!("h{}.{sfx}", i % 11)],
            };
            routes.push(
                serde_json::json!({"name": format!("r{i}"), "hostnames": hosts,
                "rules": [{"backendRefs": [{"name": "b"}]}]}),
            );
            patterns.push(hosts);
        }
        let snap = serde_json::json!({"backends": {"b": {"endpoints": ["127.0.0.1:1"]}},
            "routes": routes});
        let rt = compile(
            weir_config::load(snap.to_string().as_bytes()).unwrap(),
            None,
        )
        .unwrap();
        // Rank of the best pattern of a route covering `host`: exact 0, then longer
        // wildcards first, catch-all last.
        let rank = |pats: &[String], host: &str| -> Option<(u8, usize)> {
            if pats.is_empty() {
                return Some((2, 0));
            }
            pats.iter()
                .filter_map(|p| match p.strip_prefix('*') {
                    Some(sfx) if host.len() > sfx.len() && host.ends_with(sfx) => {
                        Some((1, usize::MAX - sfx.len()))
                    }
                    None if p == host => Some((0, 0)),
                    _ => None,
                })
                .min()
        };
        let mut hosts: Vec<String> = vec!["nothing.else".into(), "example.com".into()];
        for sfx in suffixes {
            for n in 0..12 {
                hosts.push(format!("h{n}.{sfx}"));
                hosts.push(format!("x.h{n}.{sfx}"));
            }
        }
        for host in &hosts {
            let want = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((rank(p, host)?, i)))
                .min()
                .map_or("404".to_string(), |(_, i)| format!("r{i}#0"));
            assert_eq!(find(&rt, host, "GET", "/", &[]), want, "{host}");
        }
    }

    #[test]
    fn no_catch_all_gives_404() {
        let snap = weir_config::load(
            b"backends: { b: { endpoints: [\"127.0.0.1:1\"] } }\nroutes:\n  - name: r\n    hostnames: [a.test]\n    rules: [{ backendRefs: [{ name: b }] }]\n",
        )
        .unwrap();
        let rt = compile(snap, None).unwrap();
        assert_eq!(find(&rt, "a.test", "GET", "/x", &[]), "r#0");
        assert_eq!(find(&rt, "b.test", "GET", "/x", &[]), "404");
    }
}
