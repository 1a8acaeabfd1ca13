//! Routes bound to listeners (`routes[].listeners`): one routing table per listener.

use crate::policy::rule::RuleRt;
use crate::route::router::Router;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::{ConfigError, Snapshot};

/// One router per listener when some route is bound to listeners (`routes[].listeners`), each
/// built from the routes served there; empty when no route is bound, and the one router of
/// every route serves all listeners (no extra tables for configs that do not use this).
///
/// Separate tables rather than a listener check on every candidate: lookups stay what they
/// were, and a route bound elsewhere is simply absent, never shadowing the candidates behind it.
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
