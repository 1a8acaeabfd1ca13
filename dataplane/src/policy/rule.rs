//! A compiled rule: what a matched rule does to a request, and the weighted choice of its
//! backendRefs.
//!
//! # What goes where
//!
//! - [`Stages`](crate::policy::stages::Stages) (`stages`): everything that may answer the
//!   request in place of a backend, before one is picked — CORS, rate limit, external auth,
//!   redirect, direct response, KairosDB. Run in order by the pipeline; empty (and free) for
//!   a plain forwarding rule.
//! - [`RuleProtocol`](crate::policy::protocol::RuleProtocol) (`protocol`): how the exchange
//!   with the picked backend is shaped — body limit, WebSocket switch. They need the picked
//!   backend or wrap the body, so they run after the pick.
//! - [`RuleGateway`](crate::policy::gateway::RuleGateway) (`gateway`): Gateway API data of the
//!   upstream request — host rewrite, per-try timeout, mirrors, invalid backendRefs.
//! - The fields of [`RuleRt`] itself: backends and weights, header filters
//!   ([`crate::policy::filters`]), path rewrite, timeout, metric handles.

use crate::policy::filters::HeaderOps;
use crate::telemetry::metrics::RouteMetrics;
use crate::upstream::backend::BackendRt;
use std::sync::Arc;
use std::time::Duration;
use weir_config::PathRewrite;

/// Everything a matched rule does to a request.
#[derive(Debug)]
pub struct RuleRt {
    pub route: Arc<str>,
    pub rule_index: usize,
    /// Entries with weight 0 are left out.
    pub backends: Vec<Target>,
    /// Metric handles for requests this rule could not send to a backend.
    pub no_backend_metrics: Arc<RouteMetrics>,
    pub total_weight: u64,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub path: Option<PathRewrite>,
    pub timeout: Option<Duration>,
    /// Body limit, WebSocket switch.
    pub protocol: crate::policy::protocol::RuleProtocol,
    /// CORS, rate limit, external auth, redirect / direct response, KairosDB mode, in the
    /// order they run; empty when the rule has none.
    pub stages: crate::policy::stages::Stages,
    /// Host rewrite, per-try timeout, mirrors, invalid backendRefs (see [`crate::policy::gateway`]).
    pub gateway: crate::policy::gateway::RuleGateway,
}

/// One weighted backend of a rule.
#[derive(Debug)]
pub struct Target {
    pub backend: Arc<BackendRt>,
    /// Cumulative weight up to and including this entry.
    pub cum: u64,
    /// Request metric handles of this (route, backend) pair.
    pub metrics: Arc<RouteMetrics>,
    /// The backendRef's own header filters, applied after the rule's.
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// The outcome of the weighted choice of a rule's backendRefs.
#[derive(Debug)]
pub enum Pick<'a> {
    Backend(&'a Target),
    /// An invalid backendRef was picked; the reason.
    Invalid(&'a str),
    /// Every weight is 0.
    None,
}

impl RuleRt {
    /// Picks a backendRef in proportion to the weights, invalid ones included.
    pub fn pick(&self) -> Pick<'_> {
        if self.total_weight == 0 {
            return Pick::None;
        }
        let x = if self.backends.len() + self.gateway.invalid.len() == 1 {
            0
        } else {
            fastrand::u64(0..self.total_weight)
        };
        self.pick_at(x)
    }

    /// The entry whose share of `0..total_weight` holds `x`.
    fn pick_at(&self, x: u64) -> Pick<'_> {
        // Both lists are in declaration order with rising `cum`: the entry picked is the one
        // with the smallest `cum` above `x` across the two.
        let target = self.backends.iter().find(|t| x < t.cum);
        let invalid = self.gateway.invalid.iter().find(|i| x < i.cum);
        match (target, invalid) {
            (Some(t), Some(i)) if i.cum < t.cum => Pick::Invalid(&i.reason),
            (Some(t), _) => Pick::Backend(t),
            (None, Some(i)) => Pick::Invalid(&i.reason),
            (None, None) => Pick::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pick;
    use http::{HeaderMap, Method};

    /// Valid and invalid refs share one weight space, in declaration order.
    #[test]
    fn weights_cover_valid_and_invalid_refs_in_order() {
        let snap = weir_config::load(
            br#"
backends: { a: { endpoints: ["127.0.0.1:1"] }, b: { endpoints: ["127.0.0.1:2"] } }
routes:
  - name: r
    rules:
      - backendRefs:
          - { name: a, weight: 1 }
          - { name: gone, weight: 2, invalid: "not found" }
          - { name: b, weight: 0 }
          - { name: b, weight: 3 }
          - { name: a, weight: 0, invalid: "zero" }
"#,
        )
        .expect("valid");
        let rt = crate::runtime::compile(snap, None).expect("compiles");
        let headers = HeaderMap::new();
        let rule = rt
            .router
            .find(&crate::route::router::RequestView {
                host: "x",
                method: &Method::GET,
                path: "/",
                query: None,
                headers: &headers,
                body: None,
            })
            .expect("the rule");
        assert_eq!(rule.total_weight, 6);
        let name = |x| match rule.pick_at(x) {
            Pick::Backend(t) => t.backend.name.to_string(),
            Pick::Invalid(why) => format!("invalid: {why}"),
            Pick::None => "none".into(),
        };
        let got: Vec<String> = (0..6).map(name).collect();
        assert_eq!(
            got,
            [
                "a",
                "invalid: not found",
                "invalid: not found",
                "b",
                "b",
                "b"
            ]
        );
    }
}
