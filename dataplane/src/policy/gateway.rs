//! Per-rule settings of the contract fields the Gateway API needs: hostname rewrite,
//! per-try timeouts, request mirrors ([`super::mirror`]) and invalid backendRefs in the
//! weighted choice. Listener-bound routes are in `runtime::listener_routes`; ReplaceFullPath
//! in [`crate::policy::filters::rewrite_path`]; per-backendRef header filters on
//! [`crate::policy::filters::Target`].

use crate::policy::filters::{RuleRt, Target};
use crate::upstream::backend::BackendRt;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::Rule;

/// What a rule does for the Gateway API beyond the ProxyRoute filters.
#[derive(Debug, Default)]
pub struct RuleGateway {
    /// `filters.hostRewrite`: the `Host` sent upstream.
    pub host_rewrite: Option<HeaderValue>,
    /// `backendRequestTimeout`: the limit of each upstream try (`0` = none), instead of the
    /// backend's `retries.perTryTimeout`.
    pub per_try_timeout: Option<std::time::Duration>,
    /// `filters.mirrors`.
    pub mirrors: Vec<Arc<crate::policy::mirror::MirrorRt>>,
    /// `backendRefs[]` with `invalid` set, in the same cumulative weight space as
    /// [`RuleRt::backends`].
    pub invalid: Vec<InvalidRef>,
}

/// A backendRef the operator could not resolve: requests picked for it get 500.
#[derive(Debug)]
pub struct InvalidRef {
    /// Cumulative weight up to and including this entry (see [`crate::policy::filters::Target`]).
    pub cum: u64,
    pub reason: Arc<str>,
}

impl InvalidRef {
    pub fn new(cum: u64, reason: &str) -> InvalidRef {
        InvalidRef {
            cum,
            reason: reason.into(),
        }
    }
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

impl RuleGateway {
    pub fn compile(
        route: &str,
        rule: &Rule,
        invalid: Vec<InvalidRef>,
        backends: &HashMap<String, Arc<BackendRt>>,
    ) -> RuleGateway {
        RuleGateway {
            invalid,
            mirrors: (rule.filters.mirrors.iter())
                .filter_map(|m| crate::policy::mirror::MirrorRt::compile(route, m, backends))
                .collect(),
            per_try_timeout: rule.backend_request_timeout.map(|t| t.get()),
            // Validation checked it is a hostname, so it is a valid header value.
            host_rewrite: rule
                .filters
                .host_rewrite
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
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
