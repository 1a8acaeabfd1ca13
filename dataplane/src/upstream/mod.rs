//! Layer 2: backends and their endpoints, connection pool, balancers, health, circuit breaker
//! and retries. Upstream exports its own gauges ([`backend::export_gauges`]).

pub mod backend;
pub mod balancer;
pub mod breaker;
pub mod endpoint;
pub mod h1;
pub mod health;
pub mod pool;
pub mod retry;

pub use backend::*;
