//! Layer 0: HTTP building blocks every other layer may use (body types, local replies,
//! header and path helpers, connection info). Nothing here imports from a layer above.

pub mod conn;
pub mod headers;
pub mod reply;
