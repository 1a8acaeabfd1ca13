//! Weir dataplane: a reverse proxy serving a [`weir_config::Snapshot`].
//!
//! # Layers
//!
//! The modules sit in folders ordered in layers. A module imports (`crate::…`) only from its own
//! folder or from a lower layer, never from a layer above; `tests/layers.rs` reads the list
//! below (this list is the one place the order is written) and fails on any import that breaks
//! it. Test modules (`#[cfg(test)]`) are exempt.
//!
//! <!-- layers: begin -->
//! - 0 `http`: body types, local replies ([`http::reply`]), header and path helpers, connection
//!   info, trace context, request limits, TLS material, gRPC framing of local replies
//! - 1 `telemetry`: metrics registry and handles, the `Telemetry` handle, observation (access
//!   log, spans), sampling and OTLP export, sinks (one file per kind)
//! - 2 `upstream`: backends, endpoints, pool, balancers, health, breaker, retry; exports its
//!   own gauges
//! - 3 `policy`: per-rule stages (rate limit, external auth, redirect and direct response,
//!   KairosDB, CORS, WebSocket, header/path transforms) and the per-rule settings
//! - 4 `route`: the router and body-field conditions
//! - 5 `runtime`: compiling a snapshot into rules, backends and listeners; reload carry-over
//! - 6 `pipeline`: [`pipeline::proxy::handle`], the request path every front door uses
//! - 7 `listen`: the front doors (TCP plain/TLS, QUIC/HTTP-3, HTTP/3 WebSocket) and their
//!   [`listen::live::Live`] handle
//! - 8 `server` `admin` `ui`: the running dataplane (binding listeners, reload, shutdown), the
//!   admin API and status page (the demo backend is the `weir-echo` binary, `src/bin/weir-echo`)
//! <!-- layers: end -->

pub mod admin;
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
