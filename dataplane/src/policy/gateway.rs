//! Per-rule settings of the contract fields the Gateway API needs: hostname rewrite,
//! per-try timeouts, request mirrors ([`super::mirror`]) and invalid backendRefs in the
//! weighted choice. Listener-bound routes are in `runtime::listener_routes`; ReplaceFullPath
//! in [`crate::policy::filters::rewrite_path`]; per-backendRef header filters on
//! [`crate::policy::rule::Target`].

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
    /// [`crate::policy::rule::RuleRt::backends`].
    pub invalid: Vec<InvalidRef>,
}

/// A backendRef the operator could not resolve: requests picked for it get 500.
#[derive(Debug)]
pub struct InvalidRef {
    /// Cumulative weight up to and including this entry (see [`crate::policy::rule::Target`]).
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
