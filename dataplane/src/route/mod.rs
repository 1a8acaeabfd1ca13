//! Layer 4: the router (host, path, header and body-field conditions) and body-field matching.

pub mod bodymatch;
pub mod router;
