//! A rule's compiled protocol settings (`rules[].maxRequestBodyBytes`, `websocket`, `cors`);
//! see [`crate::http::limits`], [`crate::policy::websocket`] and [`crate::policy::cors`].

use crate::policy::cors::CorsRt;
use weir_config::{Rule, WebSocketConfig};

#[derive(Debug, Default)]
pub struct RuleProtocol {
    pub max_body: Option<u64>,
    pub websocket: Option<WebSocketConfig>,
    pub cors: Option<CorsRt>,
}

impl RuleProtocol {
    pub fn compile(rule: &Rule) -> RuleProtocol {
        RuleProtocol {
            max_body: rule.max_request_body_bytes,
            websocket: rule.websocket.clone(),
            cors: rule.cors.as_ref().map(CorsRt::compile),
        }
    }
}
