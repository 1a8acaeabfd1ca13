//! One endpoint of a backend (address, weight, shared state) and the IO of a connection to
//! it, which counts the endpoint's open connections. Apart from `backend.rs` so the balancer
//! and the pool, which `backend.rs` uses, need not import it back.

use crate::upstream::health::EndpointState;
use http::uri::Authority;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// One endpoint of a backend as this config version sees it.
#[derive(Debug)]
pub struct EndpointRt {
    pub authority: Authority,
    pub weight: u32,
    /// Health, ejection, in-flight and latency; carried over reloads (see [`crate::upstream::backend::BackendRt::new`]).
    pub state: Arc<EndpointState>,
}

/// An upstream connection's IO; counts itself out of its endpoint's open connections when the
/// connection (its hyper task, after the pool let it go or the peer closed it) drops it.
pub struct CountedIo {
    io: TokioIo<tokio::net::TcpStream>,
    open: Arc<AtomicU64>,
}

impl CountedIo {
    /// Wraps a connection already counted into `open` (the h2c client's connector counts it).
    pub fn new_counted(io: TokioIo<tokio::net::TcpStream>, open: Arc<AtomicU64>) -> CountedIo {
        CountedIo { io, open }
    }

    /// The socket itself, for the HTTP/1.1 codec (`h1.rs`), which reads and writes it with
    /// tokio's own calls.
    pub fn stream_mut(&mut self) -> &mut tokio::net::TcpStream {
        self.io.inner_mut()
    }

    /// Counts a new connection into `open` (and out again when dropped).
    pub fn new(stream: tokio::net::TcpStream, open: Arc<AtomicU64>) -> CountedIo {
        open.fetch_add(1, Ordering::Relaxed);
        CountedIo {
            io: TokioIo::new(stream),
            open,
        }
    }
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::rt::Read for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
