//! Routes bound to listeners (`routes[].listeners`): one routing table per listener.

use crate::route::router::Router;
use crate::runtime::compile::CompiledRoute;
use std::collections::HashMap;
use weir_config::Snapshot;

/// One router per listener when some route is bound to listeners (`routes[].listeners`), each
/// built from the routes served there; empty when no route is bound, and the one router of
/// every route serves all listeners (no extra tables for configs that do not use this).
///
/// Separate tables rather than a listener check on every candidate: lookups stay what they
/// were, and a route bound elsewhere is simply absent, never shadowing the candidates behind it.
pub fn listener_routers(snap: &Snapshot, compiled: &[CompiledRoute]) -> HashMap<String, Router> {
    let mut out = HashMap::new();
    if snap.routes.iter().all(|r| r.listeners.is_empty()) {
        return out;
    }
    for l in &snap.listeners {
        let mut routes = Vec::new();
        let mut conds = Vec::new();
        let mut rules = Vec::new();
        for (route, c) in snap.routes.iter().zip(compiled) {
            if route.listeners.is_empty() || route.listeners.contains(&l.name) {
                routes.push(route.clone());
                conds.push(c.conds.clone());
                rules.push(c.rules.clone());
            }
        }
        // Declaration order is kept, so precedence ties break as in the full table.
        out.insert(
            l.name.clone(),
            Router::assemble(&routes, &conds, &rules, None),
        );
    }
    out
}
