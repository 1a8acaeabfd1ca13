//! Weir dataplane: a reverse proxy serving a [`weir_config::Snapshot`].
//!
//! Parts: [`runtime`] compiles a snapshot into tables ([`router`], [`filters`], [`upstream`]
//! with [`health`], [`balancer`], [`breaker`] and [`retry`]);
//! [`proxy`] is the one request pipeline every listener uses; [`server`] owns listeners,
//! hot swaps and graceful shutdown; [`admin`] is the control API; [`echo`] is the demo backend.

pub mod admin;
pub mod balancer;
pub mod body;
pub mod breaker;
pub mod echo;
pub mod filters;
pub mod h3;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod shipper;
pub mod tls;
pub mod tracecontext;
pub mod upstream;
