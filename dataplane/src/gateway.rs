//! Dataplane side of the contract fields the Gateway API needs (listener-bound routes,
//! ReplaceFullPath, hostname rewrite, per-backendRef filters, invalid backendRefs, per-try
//! timeouts, request mirrors).

use crate::filters::RuleRt;
use crate::router::Router;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::{ConfigError, Errors, Rule, Snapshot};

/// What a rule does for the Gateway API beyond the ProxyRoute filters.
#[derive(Debug, Default)]
pub struct RuleGateway {
    /// `filters.hostRewrite`: the `Host` sent upstream.
    pub host_rewrite: Option<HeaderValue>,
}

impl RuleGateway {
    pub fn compile(rule: &Rule) -> RuleGateway {
        RuleGateway {
            // Validation checked it is a hostname, so it is a valid header value.
            host_rewrite: rule
                .filters
                .host_rewrite
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
        }
    }
}

/// One router per listener when some route is bound to listeners (`routes[].listeners`), each
/// built from the routes served there; empty when no route is bound, and the one router of
/// every route serves all listeners (no extra tables for configs that do not use this).
///
/// Separate tables rather than a listener check per candidate: a route bound elsewhere must
/// not shadow the candidates behind it, and lookups stay what they were.
pub fn listener_routers(
    snap: &Snapshot,
    rules: &[Vec<Arc<RuleRt>>],
) -> Result<HashMap<String, Router>, ConfigError> {
    let mut out = HashMap::new();
    if snap.routes.iter().all(|r| r.listeners.is_empty()) {
        return Ok(out);
    }
    for l in &snap.listeners {
        let (routes, rules): (Vec<_>, Vec<_>) = snap
            .routes
            .iter()
            .zip(rules)
            .filter(|(route, _)| route.listeners.is_empty() || route.listeners.contains(&l.name))
            .map(|(route, rules)| (route.clone(), rules.clone()))
            .unzip();
        // Declaration order is kept, so precedence ties break as in the full table.
        out.insert(l.name.clone(), Router::build(&routes, &rules)?);
    }
    Ok(out)
}

/// Rejects, with their field paths, the fields this dataplane does not serve yet: a config
/// that uses them is refused whole rather than served without them.
pub fn reject_unimplemented(snap: &Snapshot, errs: &mut Errors) {
    const WHY: &str = "not implemented by this dataplane version";
    for (i, route) in snap.routes.iter().enumerate() {
        for (r, rule) in route.rules.iter().enumerate() {
            let rp = format!("routes[{i}].rules[{r}]");
            if rule.backend_request_timeout.is_some() {
                errs.push(format!("{rp}.backendRequestTimeout"), WHY);
            }
            let f = &rule.filters;
            if !f.mirrors.is_empty() {
                errs.push(format!("{rp}.filters.mirrors"), WHY);
            }
            for (b, br) in rule.backend_refs.iter().enumerate() {
                if br.invalid.is_some() {
                    errs.push(format!("{rp}.backendRefs[{b}].invalid"), WHY);
                }
            }
        }
    }
}
