//! Weir dataplane: a reverse proxy serving a [`weir_config::Snapshot`].
//!
//! Parts: [`runtime`] compiles a snapshot into tables ([`router`], [`filters`], [`upstream`]
//! with [`health`], [`balancer`], [`breaker`] and [`retry`]);
//! [`proxy`] is the one request pipeline every listener uses; [`server`] owns listeners,
//! hot swaps and graceful shutdown; [`admin`] is the control API; [`echo`] is the demo backend.

pub mod admin;
pub mod balancer;
pub mod body;
pub mod bodymatch;
pub mod breaker;
pub mod cors;
pub mod echo;
pub mod extauth;
pub mod fastfmt;
pub mod filters;
pub mod gateway;
pub mod grpc;
pub mod h3;
pub mod h3_websocket;
pub mod health;
pub mod kairos;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod observe;
pub mod otel;
pub mod pod_ip;
pub mod policy;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod ratelimit;
pub mod redirect;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod server;
pub mod shipper;
mod sink_h3;
pub mod sinkenc;
pub mod tls;
pub mod tracecontext;
pub mod ui;
pub mod upstream;
pub mod websocket;
