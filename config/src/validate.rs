//! Semantic validation: every problem, each with its field path.

use crate::error::{ConfigError, Errors};
use crate::model::*;
use std::collections::{BTreeSet, HashSet};

/// Regexes in configs are compiled with this size cap so a pasted monster cannot eat memory.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Snapshot {
    /// Checks everything that can be checked without touching the filesystem or network and
    /// returns all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Errors::default();
        if self.version.len() > 128 {
            errs.push("version", "longer than 128 characters");
        }
        validate_listeners(&self.listeners, &mut errs);
        for (name, backend) in &self.backends {
            validate_backend(name, backend, &mut errs);
        }
        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            if !route_names.insert(route.name.as_str()) {
                errs.push(
                    format!("{p}.name"),
                    format!("duplicate route name {:?}", route.name),
                );
            }
            validate_route(&p, route, self, &mut errs);
        }
        for (name, sink) in &self.sinks {
            validate_sink(name, sink, &mut errs);
        }
        if let Some(t) = &self.tracing {
            t.validate(&mut errs);
        }
        errs.into_result()
    }
}

fn validate_listeners(listeners: &[Listener], errs: &mut Errors) {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.is_empty() {
            errs.push(format!("{p}.name"), "must not be empty");
        } else if !names.insert(l.name.as_str()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        match l.address.parse::<std::net::SocketAddr>() {
            Ok(a) => {
                if !addrs.insert(a) {
                    errs.push(
                        format!("{p}.address"),
                        format!("{a} is used by another listener"),
                    );
                }
            }
            Err(_) => errs.push(
                format!("{p}.address"),
                format!("{:?} is not an ip:port socket address", l.address),
            ),
        }
        if let (ListenerProtocol::Http, Some(_)) = (&l.protocol, &l.http3) {
            errs.push(
                format!("{p}.http3"),
                "only valid with protocol https (HTTP/3 needs TLS)",
            );
        }
        crate::protocol::validate_limits(&format!("{p}.limits"), &l.limits, errs);
        if let Some(h) = &l.http3 {
            let hp = format!("{p}.http3");
            for (field, v) in [
                ("maxConnections", h.max_connections),
                ("maxConcurrentStreams", h.max_concurrent_streams),
                ("streamReceiveWindow", h.stream_receive_window),
                ("receiveWindow", h.receive_window),
                ("sendWindow", h.send_window),
            ] {
                if v == 0 {
                    errs.push(format!("{hp}.{field}"), "must be at least 1");
                }
            }
            if h.idle_timeout.get().is_zero() {
                errs.push(format!("{hp}.idleTimeout"), "must be greater than 0");
            }
            match &h.advertised_port {
                None => {}
                Some(AdvertisedPort::Number(n)) if (0..=65535).contains(n) => {}
                Some(AdvertisedPort::Word(w)) if w == "off" => {}
                Some(other) => errs.push(
                    format!("{hp}.advertisedPort"),
                    format!(
                        "{} is not a port: use 1-65535, or 0 or \"off\" to stop advertising HTTP/3",
                        match other {
                            AdvertisedPort::Number(n) => n.to_string(),
                            AdvertisedPort::Word(w) => format!("{w:?}"),
                        }
                    ),
                ),
            }
        }
        match (&l.protocol, &l.tls) {
            (ListenerProtocol::Http, Some(_)) => {
                errs.push(format!("{p}.tls"), "only valid with protocol https")
            }
            (ListenerProtocol::Https, Some(tls)) => {
                for (j, c) in tls.certificates.iter().enumerate() {
                    let cp = format!("{p}.tls.certificates[{j}]");
                    // Exactly one source: files, or inline PEM; each needs both halves.
                    let files = !c.cert_file.is_empty() || !c.key_file.is_empty();
                    let inline = c.cert_pem.is_some() || c.key_pem.is_some();
                    if files && inline {
                        errs.push(
                            cp.clone(),
                            "set either certFile + keyFile or certPem + keyPem, not both",
                        );
                    } else if inline {
                        for (field, v) in [("certPem", &c.cert_pem), ("keyPem", &c.key_pem)] {
                            if v.as_ref().is_none_or(|s| s.0.trim().is_empty()) {
                                errs.push(format!("{cp}.{field}"), "must not be empty");
                            }
                        }
                    } else {
                        if c.cert_file.is_empty() {
                            errs.push(format!("{cp}.certFile"), "must not be empty");
                        }
                        if c.key_file.is_empty() {
                            errs.push(format!("{cp}.keyFile"), "must not be empty");
                        }
                    }
                    for (k, h) in c.hostnames.iter().enumerate() {
                        if !is_valid_hostname_pattern(h) {
                            errs.push(
                                format!("{cp}.hostnames[{k}]"),
                                format!("{h:?} is not a hostname or *.wildcard"),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn validate_backend(name: &str, b: &Backend, errs: &mut Errors) {
    let p = format!("backends[{name:?}]");
    if !is_valid_name(name) {
        errs.push(
            p.clone(),
            "backend names use letters, digits, '-', '_', '.' and '/' only",
        );
    }
    let mut seen = HashSet::new();
    for (i, ep) in b.endpoints.iter().enumerate() {
        let ep_path = format!("{p}.endpoints[{i}]");
        if let Err(msg) = parse_host_port(&ep.address) {
            errs.push(
                ep_path.clone(),
                format!("{:?} is not a host:port ({msg})", ep.address),
            );
        } else if !seen.insert(ep.address.as_str()) {
            errs.push(
                ep_path.clone(),
                format!("duplicate endpoint {:?}", ep.address),
            );
        }
        if ep.weight == 0 {
            errs.push(
                format!("{ep_path}.weight"),
                "must be at least 1 (remove the endpoint instead)",
            );
        }
    }
    if b.timeouts.connect.get().is_zero() {
        errs.push(format!("{p}.timeouts.connect"), "must be greater than 0");
    }
    if b.timeouts.request.get().is_zero() {
        errs.push(format!("{p}.timeouts.request"), "must be greater than 0");
    }
    if let Some(hc) = &b.health_check {
        validate_health_check(&format!("{p}.healthCheck"), hc, errs);
    }
    if let Some(od) = &b.outlier_detection {
        validate_outlier(&format!("{p}.outlierDetection"), od, errs);
    }
    if b.load_balancer.ewma_decay.get().is_zero() {
        errs.push(
            format!("{p}.loadBalancer.ewmaDecay"),
            "must be greater than 0",
        );
    }
    if let Some(cb) = &b.circuit_breaker {
        validate_breaker(&format!("{p}.circuitBreaker"), cb, errs);
    }
    if b.max_concurrent_requests == Some(0) {
        errs.push(format!("{p}.maxConcurrentRequests"), "must be at least 1");
    }
    validate_retries(&format!("{p}.retries"), &b.retries, errs);
    if let Some(c) = &b.credential {
        let cp = format!("{p}.credential");
        match http::HeaderName::from_bytes(c.header.as_bytes()) {
            Err(_) => errs.push(
                format!("{cp}.header"),
                format!("{:?} is not a valid header name", c.header),
            ),
            Ok(n) if is_hop_by_hop(n.as_str()) || n == http::header::HOST => errs.push(
                format!("{cp}.header"),
                format!("{:?} cannot carry a credential", c.header),
            ),
            Ok(_) => {}
        }
        // Never echo the value: it is a secret.
        if c.value.is_empty() {
            errs.push(format!("{cp}.value"), "must not be empty");
        } else if http::HeaderValue::from_str(&c.value).is_err() {
            errs.push(
                format!("{cp}.value"),
                "not a valid header value (control characters or newlines?)",
            );
        }
    }
}

fn validate_health_check(p: &str, hc: &HealthCheck, errs: &mut Errors) {
    match (&hc.http, &hc.tcp) {
        (Some(_), Some(_)) => errs.push(p.to_string(), "set only one of http and tcp"),
        (None, None) => errs.push(p.to_string(), "set one of http and tcp"),
        _ => {}
    }
    if let Some(h) = &hc.http {
        if !h.path.starts_with('/') {
            errs.push(
                format!("{p}.http.path"),
                format!("{:?} must start with '/'", h.path),
            );
        } else if h.path.parse::<http::uri::PathAndQuery>().is_err() {
            errs.push(
                format!("{p}.http.path"),
                format!("{:?} is not a valid path", h.path),
            );
        }
        if h.expected_statuses.is_empty() {
            errs.push(
                format!("{p}.http.expectedStatuses"),
                "must list at least one status or range",
            );
        }
        if let Some(host) = &h.host {
            if host.is_empty() || http::HeaderValue::from_str(host).is_err() {
                errs.push(
                    format!("{p}.http.host"),
                    format!("{host:?} is not a valid Host header value"),
                );
            }
        }
    }
    for (field, d) in [("interval", hc.interval), ("timeout", hc.timeout)] {
        if d.get().is_zero() {
            errs.push(format!("{p}.{field}"), "must be greater than 0");
        }
    }
    for (field, v) in [
        ("unhealthyThreshold", hc.unhealthy_threshold),
        ("healthyThreshold", hc.healthy_threshold),
    ] {
        if v == 0 {
            errs.push(format!("{p}.{field}"), "must be at least 1");
        }
    }
}

fn validate_outlier(p: &str, od: &OutlierDetection, errs: &mut Errors) {
    if od.consecutive_5xx == 0
        && od.consecutive_gateway_errors == 0
        && od.consecutive_local_failures == 0
    {
        errs.push(
            p.to_string(),
            "every trigger is 0; set consecutive5xx, consecutiveGatewayErrors or consecutiveLocalFailures (or remove outlierDetection)",
        );
    }
    if od.base_ejection_time.get().is_zero() {
        errs.push(format!("{p}.baseEjectionTime"), "must be greater than 0");
    }
    if od.max_ejection_time < od.base_ejection_time {
        errs.push(
            format!("{p}.maxEjectionTime"),
            "must not be shorter than baseEjectionTime",
        );
    }
    if !(1..=100).contains(&od.max_ejection_percent) {
        errs.push(
            format!("{p}.maxEjectionPercent"),
            "must be between 1 and 100",
        );
    }
}

fn validate_breaker(p: &str, cb: &CircuitBreaker, errs: &mut Errors) {
    if cb.consecutive_failures == 0 && cb.error_ratio.is_none() {
        errs.push(
            p.to_string(),
            "no trigger: set consecutiveFailures above 0 or errorRatio (or remove circuitBreaker)",
        );
    }
    if let Some(r) = cb.error_ratio {
        if !(r > 0.0 && r <= 1.0) {
            errs.push(
                format!("{p}.errorRatio"),
                "must be greater than 0 and at most 1",
            );
        }
    }
    if cb.window.get() < std::time::Duration::from_secs(1) {
        errs.push(format!("{p}.window"), "must be at least 1s");
    }
    if cb.min_requests == 0 {
        errs.push(format!("{p}.minRequests"), "must be at least 1");
    }
    if cb.open_duration.get().is_zero() {
        errs.push(format!("{p}.openDuration"), "must be greater than 0");
    }
    if cb.half_open_probes == 0 {
        errs.push(format!("{p}.halfOpenProbes"), "must be at least 1");
    }
}

fn validate_retries(p: &str, r: &RetryPolicy, errs: &mut Errors) {
    if !(1..=10).contains(&r.attempts) {
        errs.push(format!("{p}.attempts"), "must be between 1 and 10");
    }
    if r.per_try_timeout.is_some_and(|t| t.get().is_zero()) {
        errs.push(format!("{p}.perTryTimeout"), "must be greater than 0");
    }
    if r.backoff.max < r.backoff.base {
        errs.push(
            format!("{p}.backoff.max"),
            "must not be shorter than backoff.base",
        );
    }
    let ratio = r.budget.ratio;
    if !(0.0..=1.0).contains(&ratio) {
        errs.push(format!("{p}.budget.ratio"), "must be between 0 and 1");
    }
}

fn validate_route(p: &str, route: &Route, snap: &Snapshot, errs: &mut Errors) {
    if route.name.is_empty() {
        errs.push(format!("{p}.name"), "must not be empty");
    }
    let mut hosts = BTreeSet::new();
    for (i, h) in route.hostnames.iter().enumerate() {
        if !is_valid_hostname_pattern(h) {
            errs.push(
                format!("{p}.hostnames[{i}]"),
                format!("{h:?} is not a hostname (api.example.com) or wildcard (*.example.com)"),
            );
        } else if !hosts.insert(h.to_ascii_lowercase()) {
            errs.push(
                format!("{p}.hostnames[{i}]"),
                format!("duplicate hostname {h:?}"),
            );
        }
    }
    let mut seen_listeners = HashSet::new();
    for (i, l) in route.listeners.iter().enumerate() {
        let lp = format!("{p}.listeners[{i}]");
        if !snap.listeners.iter().any(|x| x.name == *l) {
            errs.push(lp, format!("listener {l:?} is not defined in listeners"));
        } else if !seen_listeners.insert(l.as_str()) {
            errs.push(lp, format!("listener {l:?} is listed twice"));
        }
    }
    if route.rules.is_empty() {
        errs.push(format!("{p}.rules"), "a route needs at least one rule");
    }
    for (r, rule) in route.rules.iter().enumerate() {
        let rp = format!("{p}.rules[{r}]");
        for (m, mat) in rule.matches.iter().enumerate() {
            validate_match(&format!("{rp}.matches[{m}]"), mat, errs);
        }
        validate_filters(&format!("{rp}.filters"), &rule.filters, snap, errs);
        if rule.backend_refs.is_empty() && rule.redirect.is_none() && rule.direct_response.is_none()
        {
            errs.push(
                format!("{rp}.backendRefs"),
                "a rule needs at least one backendRef (or a redirect or directResponse)",
            );
        }
        let mut total: u64 = 0;
        for (b, br) in rule.backend_refs.iter().enumerate() {
            total += u64::from(br.weight);
            let bp = format!("{rp}.backendRefs[{b}]");
            match &br.invalid {
                // An unresolvable reference answers 500; its name is only a label then.
                Some(why) if why.trim().is_empty() => {
                    errs.push(format!("{bp}.invalid"), "must say why (not empty)")
                }
                Some(_) => {}
                None if !snap.backends.contains_key(&br.name) => errs.push(
                    format!("{bp}.name"),
                    format!("backend {:?} is not defined in backends", br.name),
                ),
                None => {}
            }
            validate_backend_ref_filters(&format!("{bp}.filters"), &br.filters, snap, errs);
        }
        if !rule.backend_refs.is_empty() && total == 0 {
            errs.push(
                format!("{rp}.backendRefs"),
                "weights add up to 0; at least one must be positive",
            );
        }
        if let Some(t) = rule.timeout {
            if t.get().is_zero() {
                errs.push(format!("{rp}.timeout"), "must be greater than 0");
            }
        }
        // `0s` is allowed: the Gateway API's way to turn the per-try limit off.
        if let (Some(t), Some(per_try)) = (rule.timeout, rule.backend_request_timeout) {
            if per_try > t {
                errs.push(
                    format!("{rp}.backendRequestTimeout"),
                    format!("{per_try} is longer than the rule's timeout {t}"),
                );
            }
        }
        crate::protocol::validate_rule_protocol(
            &rp,
            rule.max_request_body_bytes,
            rule.websocket.as_ref(),
            rule.cors.as_ref(),
            errs,
        );
        crate::policy::validate_rule_policies(
            &rp,
            rule.redirect.as_ref(),
            rule.direct_response.as_ref(),
            rule.rate_limit.as_ref(),
            rule.ext_auth.as_ref(),
            rule.kairos.as_ref(),
            !rule.backend_refs.is_empty(),
            !rule.matches.is_empty()
                && rule.matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_some_and(|p| p.kind == PathMatchType::PathPrefix)
                }),
            &snap.backends,
            errs,
        );
    }
    if let Some(rl) = &route.rate_limit {
        crate::policy::validate_rate_limit(&format!("{p}.rateLimit"), rl, errs);
    }
    if let Some(a) = &route.ext_auth {
        crate::policy::validate_ext_auth(&format!("{p}.extAuth"), a, errs);
    }
}

fn validate_match(p: &str, m: &Match, errs: &mut Errors) {
    if let Some(path) = &m.path {
        let pp = format!("{p}.path");
        let v = &path.value;
        match path.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !v.starts_with('/') {
                    errs.push(pp, format!("{v:?} must start with '/'"));
                } else if v.contains(['?', '#']) {
                    errs.push(pp, format!("{v:?} must not contain '?' or '#'"));
                }
            }
            PathMatchType::Wildcard => {
                if let Err(msg) = check_wildcard(v) {
                    errs.push(pp, format!("wildcard {v:?}: {msg}"));
                }
            }
            PathMatchType::RegularExpression => {
                if let Err(e) = compile_full_match(v) {
                    errs.push(pp, format!("regex does not compile: {e}"));
                }
            }
        }
    }
    if let Some(method) = &m.method {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
            errs.push(
                format!("{p}.method"),
                format!("{method:?} is not an HTTP method"),
            );
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        let hp = format!("{p}.headers[{i}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            errs.push(
                format!("{hp}.name"),
                format!("{:?} is not a valid header name", h.name),
            );
        }
        check_value_match(&hp, h, errs);
    }
    for (i, q) in m.query_params.iter().enumerate() {
        let qp = format!("{p}.queryParams[{i}]");
        if q.name.is_empty() {
            errs.push(format!("{qp}.name"), "must not be empty");
        }
        check_value_match(&qp, q, errs);
    }
    for (i, f) in m.fields.iter().enumerate() {
        crate::policy::validate_field_match(&format!("{p}.fields[{i}]"), f, errs);
    }
}

fn check_value_match(p: &str, m: &ValueMatch, errs: &mut Errors) {
    if m.kind == StringMatchType::RegularExpression {
        if let Err(e) = compile_full_match(&m.value) {
            errs.push(format!("{p}.value"), format!("regex does not compile: {e}"));
        }
    }
}

/// A backendRef's filters: header filters only (the Gateway API leaves the other kinds on a
/// backendRef implementation-specific, and none of them is implemented per backend here).
fn validate_backend_ref_filters(p: &str, f: &Filters, snap: &Snapshot, errs: &mut Errors) {
    validate_filters(p, f, snap, errs);
    for (field, set) in [
        ("path", f.path.is_some()),
        ("hostRewrite", f.host_rewrite.is_some()),
        ("mirrors", !f.mirrors.is_empty()),
    ] {
        if set {
            errs.push(
                format!("{p}.{field}"),
                "not supported on a backendRef: only requestHeaders and responseHeaders (put it in the rule's filters)",
            );
        }
    }
}

fn validate_filters(p: &str, f: &Filters, snap: &Snapshot, errs: &mut Errors) {
    for (which, hf) in [
        ("requestHeaders", &f.request_headers),
        ("responseHeaders", &f.response_headers),
    ] {
        for (op, list) in [("add", &hf.add), ("set", &hf.set)] {
            for (i, h) in list.iter().enumerate() {
                let hp = format!("{p}.{which}.{op}[{i}]");
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    errs.push(
                        format!("{hp}.name"),
                        format!("{:?} is not a valid header name", h.name),
                    );
                } else if is_hop_by_hop(&h.name) {
                    errs.push(
                        format!("{hp}.name"),
                        format!("{:?} is a hop-by-hop header and cannot be set", h.name),
                    );
                }
                if http::HeaderValue::from_str(&h.value).is_err() {
                    errs.push(
                        format!("{hp}.value"),
                        "not a valid header value (control characters?)",
                    );
                }
            }
        }
        for (i, name) in hf.remove.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errs.push(
                    format!("{p}.{which}.remove[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
    if let Some(h) = &f.host_rewrite {
        // A precise hostname (no wildcard), as the Gateway API's URLRewrite hostname.
        if h.starts_with('*') || !is_valid_hostname_pattern(h) {
            errs.push(
                format!("{p}.hostRewrite"),
                format!("{h:?} is not a hostname (api.example.com)"),
            );
        }
    }
    for (i, m) in f.mirrors.iter().enumerate() {
        let mp = format!("{p}.mirrors[{i}]");
        if !snap.backends.contains_key(&m.backend) {
            errs.push(
                format!("{mp}.backend"),
                format!("backend {:?} is not defined in backends", m.backend),
            );
        }
        if let Some(pc) = m.percent {
            if !(0.0..=100.0).contains(&pc) {
                errs.push(format!("{mp}.percent"), "must be between 0 and 100");
            }
        }
    }
    if let Some(rw) = &f.path {
        let rp = format!("{p}.path");
        let prefixes =
            rw.strip_prefix.is_some() || rw.replace_prefix.is_some() || rw.add_prefix.is_some();
        if !prefixes && rw.replace_full.is_none() {
            errs.push(
                rp.clone(),
                "set at least one of stripPrefix, replacePrefix, addPrefix, or replaceFull",
            );
        } else if prefixes && rw.replace_full.is_some() {
            errs.push(
                format!("{rp}.replaceFull"),
                "replaces the whole path: not together with stripPrefix, replacePrefix or addPrefix",
            );
        }
        let check = |field: String, v: &str, errs: &mut Errors| {
            if !v.starts_with('/') {
                errs.push(field, format!("{v:?} must start with '/'"));
            } else if v.contains(['?', '#']) {
                errs.push(field, format!("{v:?} must not contain '?' or '#'"));
            }
        };
        if let Some(v) = &rw.strip_prefix {
            check(format!("{rp}.stripPrefix"), v, errs);
        }
        if let Some(r) = &rw.replace_prefix {
            check(format!("{rp}.replacePrefix.from"), &r.from, errs);
            // Empty is allowed: the Gateway API's ReplacePrefixMatch "" (`/foo/bar` -> `/bar`).
            if !r.to.is_empty() {
                check(format!("{rp}.replacePrefix.to"), &r.to, errs);
            }
        }
        if let Some(v) = &rw.add_prefix {
            check(format!("{rp}.addPrefix"), v, errs);
        }
        if let Some(v) = &rw.replace_full {
            check(format!("{rp}.replaceFull"), v, errs);
        }
    }
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Compiles `pattern` so that it must match a whole string.
pub fn compile_full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

fn check_wildcard(v: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if v.contains(['?', '#']) {
        return Err("must not contain '?' or '#'".into());
    }
    let segs: Vec<&str> = v[1..].split('/').collect();
    if !segs.iter().any(|s| *s == "*" || *s == "**") {
        return Err("has no '*' or '**' segment; use type Exact or PathPrefix".into());
    }
    for (i, s) in segs.iter().enumerate() {
        if s.contains('*') && *s != "*" && *s != "**" {
            return Err(format!("segment {s:?}: '*' must be a whole segment"));
        }
        if *s == "**" && i + 1 != segs.len() {
            return Err("'**' is only allowed as the last segment".into());
        }
    }
    Ok(())
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// `api.example.com` or `*.example.com` (letters, digits, '-', labels of 1..=63 characters).
pub fn is_valid_hostname_pattern(h: &str) -> bool {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    is_dns_name(rest)
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Splits `host:port` (`[v6]:port` for IPv6) and checks both parts.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or("IPv6 addresses are written [addr]:port")?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "bad IPv6 address")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or("missing :port")?;
        if h.parse::<std::net::Ipv4Addr>().is_err() && !is_dns_name(h) {
            return Err("host is neither an IPv4 address nor a DNS name".into());
        }
        (h, p)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number 1-65535"))?;
    if port == 0 {
        return Err("port 0 is not allowed".into());
    }
    Ok((host.to_string(), port))
}

fn validate_sink(name: &str, sink: &Sink, errs: &mut Errors) {
    let p = format!("sinks[{name:?}]");
    let http_url = |field: &str, v: &str, errs: &mut Errors| match v.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() => {}
        _ => errs.push(
            format!("{p}.{field}"),
            format!("{v:?} is not an http(s)://host:port/path URL"),
        ),
    };
    if sink.endpoint.trim().is_empty() {
        errs.push(format!("{p}.endpoint"), "must not be empty");
    } else {
        match sink.kind {
            SinkType::HttpJson => http_url("endpoint", &sink.endpoint, errs),
            SinkType::Otlp => {
                if !(sink.endpoint.starts_with("http://") || sink.endpoint.starts_with("https://"))
                {
                    errs.push(
                        format!("{p}.endpoint"),
                        "must be an http:// or https:// URL",
                    );
                }
            }
            SinkType::Syslog => {
                if let Err(e) = parse_host_port(&sink.endpoint) {
                    errs.push(
                        format!("{p}.endpoint"),
                        format!("{:?} is not host:port ({e})", sink.endpoint),
                    );
                }
            }
        }
    }
    if let Some(m) = &sink.metrics_endpoint {
        if sink.kind != SinkType::HttpJson {
            errs.push(
                format!("{p}.metricsEndpoint"),
                "only valid for type httpJson",
            );
        } else {
            http_url("metricsEndpoint", m, errs);
        }
    }
    match sink.batch_size {
        Some(0) => errs.push(format!("{p}.batchSize"), "must be at least 1"),
        Some(n) if n > 100_000 => errs.push(format!("{p}.batchSize"), "must be at most 100000"),
        _ => {}
    }
    match sink.queue_size {
        Some(0) => errs.push(format!("{p}.queueSize"), "must be at least 1"),
        Some(n) if n > 1_000_000 => errs.push(format!("{p}.queueSize"), "must be at most 1000000"),
        _ => {}
    }
    if let Some(d) = sink.flush_interval {
        if d.get() < std::time::Duration::from_millis(10) {
            errs.push(format!("{p}.flushInterval"), "must be at least 10ms");
        }
    }
    if let Some(d) = sink.timeout {
        if d.get().is_zero() {
            errs.push(format!("{p}.timeout"), "must be more than 0");
        }
    }
    if let Some(sig) = &sink.signals {
        if sig.is_empty() {
            errs.push(
                format!("{p}.signals"),
                "must name at least one of logs, metrics",
            );
        }
        for (i, s) in sig.iter().enumerate() {
            if sig[..i].contains(s) {
                errs.push(
                    format!("{p}.signals[{i}]"),
                    format!("{s:?} is listed twice"),
                );
            }
            if sink.kind == SinkType::Syslog && *s == SinkSignal::Metrics {
                errs.push(format!("{p}.signals[{i}]"), "syslog sinks ship logs only");
            }
            if sink.kind != SinkType::Otlp && *s == SinkSignal::Traces {
                errs.push(format!("{p}.signals[{i}]"), "only otlp sinks ship traces");
            }
        }
    }
    let only = |field: &str, set: bool, kind: SinkType, errs: &mut Errors| {
        if set && sink.kind != kind {
            errs.push(
                format!("{p}.{field}"),
                format!(
                    "only valid for type {}",
                    match kind {
                        SinkType::Syslog => "syslog",
                        SinkType::HttpJson => "httpJson",
                        SinkType::Otlp => "otlp",
                    }
                ),
            );
        }
    };
    // HTTP settings: httpJson and otlp.
    let http_only = |field: &str, set: bool, errs: &mut Errors| {
        if set && sink.kind == SinkType::Syslog {
            errs.push(
                format!("{p}.{field}"),
                "only valid for types httpJson and otlp",
            );
        }
    };
    http_only("apiKey", sink.api_key.is_some(), errs);
    http_only("apiKeyHeader", sink.api_key_header.is_some(), errs);
    if let Some(t) = sink.transport {
        let ok = match sink.kind {
            SinkType::Syslog => matches!(t, SinkTransport::Udp | SinkTransport::Tcp),
            SinkType::HttpJson => matches!(t, SinkTransport::Http | SinkTransport::Http3),
            SinkType::Otlp => false,
        };
        if !ok {
            errs.push(
                format!("{p}.transport"),
                "syslog sinks take udp or tcp, httpJson sinks http or http3, otlp none",
            );
        } else if t == SinkTransport::Http3
            && !(sink.endpoint.starts_with("https://")
                && sink.metrics_endpoint().starts_with("https://"))
        {
            errs.push(
                format!("{p}.transport"),
                "http3 needs https:// endpoints (QUIC always uses TLS)",
            );
        }
    }
    only("facility", sink.facility.is_some(), SinkType::Syslog, errs);
    http_only("caFile", sink.ca_file.is_some(), errs);
    if sink.ca_file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        errs.push(format!("{p}.caFile"), "must not be empty");
    }
    http_only("tlsVerify", sink.tls_verify.is_some(), errs);
    if sink.tls_verify == Some(false)
        && sink.kind != SinkType::Syslog
        && (sink.endpoint.starts_with("http://") || sink.metrics_endpoint().starts_with("http://"))
    {
        errs.push(
            format!("{p}.tlsVerify"),
            "false is only valid with https:// endpoints",
        );
    }
    only("appName", sink.app_name.is_some(), SinkType::Syslog, errs);
    only("protocol", sink.protocol.is_some(), SinkType::Otlp, errs);
    if let Some(h) = &sink.api_key_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errs.push(
                format!("{p}.apiKeyHeader"),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    if let Some(k) = &sink.api_key {
        if http::HeaderValue::from_str(&k.0).is_err() {
            errs.push(
                format!("{p}.apiKey"),
                "contains characters not allowed in a header value",
            );
        }
    }
    if let Some(f) = sink.facility {
        if f > 23 {
            errs.push(format!("{p}.facility"), "must be 0..=23");
        }
    }
    // RFC 5424 HOSTNAME (255) and APP-NAME (48): printable US-ASCII, no spaces.
    let printable = |field: &str, v: &Option<String>, max: usize, errs: &mut Errors| {
        if let Some(v) = v {
            if v.is_empty() || v.len() > max || !v.bytes().all(|b| (33..=126).contains(&b)) {
                errs.push(
                    format!("{p}.{field}"),
                    format!("must be 1..={max} printable ASCII characters without spaces"),
                );
            }
        }
    };
    printable("sourceName", &sink.source_name, 255, errs);
    printable("appName", &sink.app_name, 48, errs);
}

#[cfg(test)]
mod sink_tests {
    use crate::*;

    #[test]
    fn sink_defaults_redaction_and_stable_hashes() {
        let base = "listeners: []\nsinks:\n  k: { type: httpJson, endpoint: \"http://kk:8080/ingest\", batchSize: 5 }\n";
        let snap = load(base.as_bytes()).expect("valid");
        let s = &snap.sinks["k"];
        // Unset fields are not serialized, so configs written before them hash the same.
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains(r#""sinks":{"k":{"type":"httpJson","endpoint":"http://kk:8080/ingest","batchSize":5}}"#), "{json}");
        assert_eq!(s.batch_size(), 5);
        assert_eq!(s.queue_size(), Sink::DEFAULT_QUEUE_SIZE);
        assert_eq!(s.flush_interval(), std::time::Duration::from_secs(5));
        assert_eq!(s.api_key_header(), "X-API-Key");
        assert_eq!(s.metrics_endpoint(), "http://kk:8080/ingest");
        assert!(s.ships(SinkSignal::Logs) && s.ships(SinkSignal::Metrics));
        let sl = Sink::new(SinkType::Syslog, "logs:514");
        assert!(!sl.ships(SinkSignal::Metrics));
        assert_eq!(sl.transport(), SyslogTransport::Udp);
        assert_eq!(sl.facility(), 16);

        let with_key = load(
            b"sinks:\n  k: { type: httpJson, endpoint: \"http://kk/\", apiKey: s3cret, signals: [logs] }\n",
        )
        .expect("valid");
        assert!(!format!("{with_key:?}").contains("s3cret"));
        let shown = serde_json::to_string(&with_key.redacted()).unwrap();
        assert!(
            !shown.contains("s3cret") && shown.contains(REDACTED),
            "{shown}"
        );
        assert_ne!(with_key.content_hash(), with_key.redacted().content_hash());
    }

    #[test]
    fn sink_errors_name_their_fields() {
        let e = load(
            br#"sinks:
  h: { type: httpJson, endpoint: "https://kk/", caFile: "", metricsEndpoint: "nope", apiKeyHeader: "bad header", transport: tcp, flushInterval: 1ms, timeout: 0s, signals: [] }
  s: { type: syslog, endpoint: "logs:514", appName: "has space", sourceName: "", facility: 24, signals: [logs, logs] }
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|f| f.path.as_str()).collect();
        for p in [
            r#"sinks["h"].metricsEndpoint"#,
            r#"sinks["h"].apiKeyHeader"#,
            r#"sinks["h"].caFile"#,
            r#"sinks["h"].transport"#,
            r#"sinks["h"].flushInterval"#,
            r#"sinks["h"].timeout"#,
            r#"sinks["h"].signals"#,
            r#"sinks["s"].appName"#,
            r#"sinks["s"].sourceName"#,
            r#"sinks["s"].facility"#,
            r#"sinks["s"].signals[1]"#,
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let unknown =
            load(b"sinks:\n  k: { type: syslog, endpoint: \"a:1\", colour: red }\n").unwrap_err();
        assert_eq!(
            unknown.errors[0].path, r#"sinks["k"].colour"#,
            "{unknown:?}"
        );
    }
}
