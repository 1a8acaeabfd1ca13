//! Weir dataplane: a reverse proxy serving a [`weir_config::Snapshot`].
//!
//! Parts: [`runtime`] compiles a snapshot into tables ([`router`], [`filters`], [`upstream`]
//! with [`health`], [`balancer`], [`breaker`] and [`retry`]);
//! [`proxy`] is the one request pipeline every listener uses; [`server`] owns listeners,
//! hot swaps and graceful shutdown; [`admin`] is the control API; [`echo`] is the demo backend.

pub mod admin;
pub mod echo;
pub mod http;
pub mod listen;
pub mod pipeline;
pub mod policy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod ui;
pub mod upstream;

// Paths that integration tests, benches and fuzz targets name (from before the modules moved
// into layer folders).
pub use self::http::tracecontext;
pub use listen::h3;
pub use pipeline::proxy;
pub use policy::{kairos, ratelimit};
pub use route::{bodymatch, router};
