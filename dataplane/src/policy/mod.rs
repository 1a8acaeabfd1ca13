//! Layer 3: per-rule stages (rate limit, external auth, redirect and direct response, KairosDB,
//! CORS, body limit, WebSocket, header/path transforms) and the per-rule settings they read.

pub mod cors;
pub mod extauth;
pub mod filters;
pub mod gateway;
pub mod kairos;
pub mod mirror;
pub mod protocol;
pub mod ratelimit;
pub mod redirect;
pub mod stages;
pub mod websocket;

pub use stages::*;
