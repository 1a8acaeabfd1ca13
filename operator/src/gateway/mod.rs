//! The Gateway API front end (`gateway.networking.k8s.io`, standard channel v1.6): the
//! second input beside ProxyRoute/Backend, compiled into the same `Snapshot`.
//!
//! - [`types`]: hand-written Rust types of the subset Weir reads and writes.
//! - [`compile`]: the pure compile step and the status of every owned object.
//! - [`runtime`]: CRD discovery, watches, the inputs from their stores, the status writer.

pub mod compile;
pub mod runtime;
pub mod types;

pub use compile::{
    compile_gateway_api, FleetPort, GatewayCompiled, GatewayInputs, CONTROLLER_NAME,
};
pub use runtime::{GatewayApi, GatewaySettings};
