//! `weir-bench`: HTTP/1.1, HTTP/2 and HTTP/3 load driver, one-shot client and
//! a minimal fixed-response server, for Weir.
//!
//! The pieces are usable from other crates' tests:
//! - [`h3client`]: a small HTTP/3 client ([`h3client::connect`]).
//! - [`load::run`]: the load driver, returning a [`stats::Report`].
//! - [`oneshot::run`]: one request, head and body written out.
//! - [`server::start`]: the fixed-response server (h1, h2c, TLS, h3; `?bytes=N` bodies).
//! - [`bulk::run`]: one timed large HTTP/3 download or upload.
//! - [`hold::run`]: N idle HTTP/3 connections held open.

pub mod bulk;
pub mod error;
pub mod h1client;
pub mod h2client;
pub mod h3client;
pub mod hold;
pub mod load;
pub mod oneshot;
pub mod server;
pub mod stats;
pub mod target;
pub mod tls;

pub use error::{Error, ErrorKind, Result};
pub use load::LoadConfig;
pub use target::Protocol;
pub use tls::Trust;
