//! A rule's compiled protocol settings (`rules[].maxRequestBodyBytes`, `websocket`): rule
//! protocol data, not stages — they shape the exchange with the backend once it is picked
//! (see [`crate::policy::rule`], [`crate::http::limits`] and [`crate::policy::websocket`]).

use weir_config::{Rule, WebSocketConfig};

#[derive(Debug, Default)]
pub struct RuleProtocol {
    pub max_body: Option<u64>,
    pub websocket: Option<WebSocketConfig>,
}

impl RuleProtocol {
    pub fn compile(rule: &Rule) -> RuleProtocol {
        RuleProtocol {
            max_body: rule.max_request_body_bytes,
            websocket: rule.websocket.clone(),
        }
    }
}
