//! Layer 3: per-rule stages (CORS, rate limit, external auth, redirect and direct response,
//! KairosDB: [`stages`]) and the rule protocol data (body limit, WebSocket, header/path
//! transforms, Gateway API host rewrite and mirrors). What goes where: [`rule`].

pub mod cors;
pub mod extauth;
pub mod filters;
pub mod gateway;
pub mod kairos;
pub mod mirror;
pub mod protocol;
pub mod ratelimit;
pub mod redirect;
pub mod rule;
pub mod stages;
pub mod websocket;

pub use stages::*;
