//! Layer 5: compiling a snapshot into rules, backends and listeners, and the state carried over
//! across reloads.

pub mod compile;
pub mod listener_routes;
pub mod pod_ip;
pub mod reuse;

pub use compile::*;
