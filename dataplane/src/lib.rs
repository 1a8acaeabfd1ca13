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

// The modules' paths before they moved into layer folders.
pub use self::http::{body, fastfmt, grpc, limits, tls, tracecontext};
pub use listen::{h3, h3_websocket};
pub use pipeline::proxy;
pub use policy::{cors, extauth, filters, kairos, protocol, ratelimit, redirect, websocket};
pub use route::{bodymatch, router};
pub use runtime::pod_ip;
pub(crate) use telemetry::sink_h3;
pub use telemetry::{metrics, observe, otel, shipper, sinkenc};
pub use upstream::{balancer, breaker, health, pool, retry};
