//! Dataplane side of the contract fields the Gateway API needs (listener-bound routes,
//! ReplaceFullPath, hostname rewrite, per-backendRef filters, invalid backendRefs, per-try
//! timeouts, request mirrors).

use weir_config::{Errors, Snapshot};

/// Rejects, with their field paths, the fields this dataplane does not serve yet: a config
/// that uses them is refused whole rather than served without them.
pub fn reject_unimplemented(snap: &Snapshot, errs: &mut Errors) {
    const WHY: &str = "not implemented by this dataplane version";
    for (i, route) in snap.routes.iter().enumerate() {
        if !route.listeners.is_empty() {
            errs.push(format!("routes[{i}].listeners"), WHY);
        }
        for (r, rule) in route.rules.iter().enumerate() {
            let rp = format!("routes[{i}].rules[{r}]");
            if rule.backend_request_timeout.is_some() {
                errs.push(format!("{rp}.backendRequestTimeout"), WHY);
            }
            let f = &rule.filters;
            if f.path.as_ref().is_some_and(|p| p.replace_full.is_some()) {
                errs.push(format!("{rp}.filters.path.replaceFull"), WHY);
            }
            if f.host_rewrite.is_some() {
                errs.push(format!("{rp}.filters.hostRewrite"), WHY);
            }
            if !f.mirrors.is_empty() {
                errs.push(format!("{rp}.filters.mirrors"), WHY);
            }
            for (b, br) in rule.backend_refs.iter().enumerate() {
                if !br.filters.is_empty() {
                    errs.push(format!("{rp}.backendRefs[{b}].filters"), WHY);
                }
                if br.invalid.is_some() {
                    errs.push(format!("{rp}.backendRefs[{b}].invalid"), WHY);
                }
            }
        }
    }
}
