//! Layer 0: HTTP building blocks every other layer may use (body types, local replies,
//! header and path helpers, connection info, trace context, request limits, TLS material,
//! gRPC framing of local replies). Nothing here imports from a layer above.

pub mod body;
pub mod conn;
pub mod fastfmt;
pub mod grpc;
pub mod headers;
pub mod limits;
pub mod reply;
pub mod tls;
pub mod tracecontext;
