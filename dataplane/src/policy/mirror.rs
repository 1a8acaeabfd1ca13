//! Request mirroring (`filters.mirrors`, Gateway API RequestMirror): a copy of the request,
//! after the rule's request filters, goes to another backend, fire-and-forget.
//!
//! The copy never delays or fails the request itself:
//! - a request without a body is copied before it is forwarded; one with a body is copied
//!   once the client's body has been read through (the bytes are kept as they stream by, up
//!   to [`MAX_BODY`]; a larger body, or one that breaks off, is not mirrored);
//! - copies run in their own tasks, at most [`MAX_IN_FLIGHT`] per process; more are dropped;
//! - the mirror backend's response is read and discarded;
//! - every copy is counted in `weir_mirror_requests_total{route,backend,result}`: `sent` (an
//!   answer came back, any status), `failed` (none did: connect error, timeout, no endpoint),
//!   `dropped` (not sent: too many in flight, body too large or incomplete).

use crate::http::body::{BoxError, ProxyBody};
use crate::upstream::backend::BackendRt;
use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::{IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use weir_config::{Mirror, UpstreamProtocol};

/// Mirror copies in flight at once in this process; more are dropped.
pub const MAX_IN_FLIGHT: usize = 256;
/// Largest request body a copy carries; a request with a larger one is not mirrored.
pub const MAX_BODY: usize = 64 * 1024;

/// One compiled `filters.mirrors[]` entry.
#[derive(Debug)]
pub struct MirrorRt {
    backend: Arc<BackendRt>,
    /// Share of requests mirrored, 0..=100.
    percent: f64,
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
}

impl MirrorRt {
    /// `None` when the backend is unknown (validation reported it already).
    pub fn compile(
        route: &str,
        m: &Mirror,
        backends: &HashMap<String, Arc<BackendRt>>,
    ) -> Option<Arc<MirrorRt>> {
        let backend = backends.get(&m.backend)?.clone();
        let counter =
            |result: &str| requests_total().with_label_values(&[route, m.backend.as_str(), result]);
        Some(Arc::new(MirrorRt {
            backend,
            percent: m.percent.unwrap_or(100.0),
            sent: counter("sent"),
            failed: counter("failed"),
            dropped: counter("dropped"),
        }))
    }

    fn chosen(&self) -> bool {
        // `f64()` is in [0, 1): 100 always mirrors, 0 never does.
        self.percent >= 100.0 || fastrand::f64() * 100.0 < self.percent
    }
}

fn requests_total() -> &'static IntCounterVec {
    static F: OnceLock<IntCounterVec> = OnceLock::new();
    F.get_or_init(|| {
        let c = IntCounterVec::new(
            prometheus::Opts::new(
                "weir_mirror_requests_total",
                "Mirrored request copies (filters.mirrors) by result: sent (an answer came back), failed (none did), dropped (not sent: too many in flight, body too large or incomplete).",
            ),
            &["route", "backend", "result"],
        )
        .expect("valid metric definition");
        if let Err(e) = crate::telemetry::metrics::metrics()
            .registry
            .register(Box::new(c.clone()))
        {
            tracing::error!(error = %e, "cannot register a metric family");
        }
        c
    })
}

fn in_flight() -> &'static Arc<Semaphore> {
    static S: OnceLock<Arc<Semaphore>> = OnceLock::new();
    S.get_or_init(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
}

/// The copies one request will send, with the request head as the mirrors see it.
pub struct Pending {
    mirrors: Vec<Arc<MirrorRt>>,
    method: Method,
    headers: HeaderMap,
}

impl Pending {
    /// Rolls each mirror's percentage; `None` when no copy is to be made (the common case
    /// costs no allocation). `headers` are taken after the rule's request filters, before
    /// anything specific to the backend picked for the request itself.
    pub fn new(mirrors: &[Arc<MirrorRt>], method: &Method, headers: &HeaderMap) -> Option<Pending> {
        if mirrors.is_empty() {
            return None;
        }
        let chosen: Vec<Arc<MirrorRt>> = mirrors.iter().filter(|m| m.chosen()).cloned().collect();
        (!chosen.is_empty()).then(|| Pending {
            mirrors: chosen,
            method: method.clone(),
            headers: headers.clone(),
        })
    }

    /// Sends the copies now when the request has no body, or wraps `body` so they go out when
    /// it has been read through. Returns the body to forward.
    pub fn start(self, pq: PathAndQuery, body: ProxyBody) -> ProxyBody {
        if body.is_end_stream() {
            self.fire(pq, Bytes::new());
            return body;
        }
        if body
            .size_hint()
            .exact()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            self.drop_all("request body larger than the mirror cap");
            return body;
        }
        crate::http::body::boxed(Tee {
            inner: body,
            buf: BytesMut::new(),
            pending: Some((self, pq)),
        })
    }

    fn drop_all(self, why: &'static str) {
        for m in &self.mirrors {
            m.dropped.inc();
        }
        tracing::debug!(target: "weir::mirror", reason = why, copies = self.mirrors.len(), "request not mirrored");
    }

    fn fire(self, pq: PathAndQuery, body: Bytes) {
        for m in self.mirrors {
            let Ok(permit) = in_flight().clone().try_acquire_owned() else {
                m.dropped.inc();
                tracing::debug!(target: "weir::mirror", backend = %m.backend.name, "mirror copy dropped: too many in flight");
                continue;
            };
            let (method, pq, headers, body) = (
                self.method.clone(),
                pq.clone(),
                self.headers.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                send(&m, method, pq, headers, body).await;
            });
        }
    }
}

/// Sends one copy and reads its answer to the end (so a pooled connection can be reused),
/// then discards it.
async fn send(m: &MirrorRt, method: Method, pq: PathAndQuery, headers: HeaderMap, body: Bytes) {
    let b = &m.backend;
    let version = match b.config.protocol {
        UpstreamProtocol::H2c => Version::HTTP_2,
        UpstreamProtocol::Http1 => Version::HTTP_11,
    };
    let timeout = b.config.timeouts.request.get();
    let sent = b
        .dispatch(
            method,
            pq,
            version,
            headers,
            crate::http::body::full(body),
            timeout,
            None,
        )
        .await;
    match sent.response {
        Ok(resp) => {
            m.sent.inc();
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let drained = tokio::time::timeout(timeout, async {
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
            })
            .await;
            tracing::debug!(target: "weir::mirror", backend = %b.name, status, drained = drained.is_ok(), "mirror copy answered");
        }
        Err(local) => {
            m.failed.inc();
            tracing::debug!(target: "weir::mirror", backend = %b.name, status = local.status().as_u16(), "mirror copy failed");
        }
    }
}

/// The request body on its way upstream, kept (up to [`MAX_BODY`]) for the copies, which go
/// out when it ends. Frames pass through untouched and unbuffered.
struct Tee {
    inner: ProxyBody,
    buf: BytesMut,
    pending: Option<(Pending, PathAndQuery)>,
}

impl Tee {
    /// The body ended: the copies go out with what was kept.
    fn finish(&mut self) {
        if let Some((p, pq)) = self.pending.take() {
            p.fire(pq, std::mem::take(&mut self.buf).freeze());
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(_)) = (frame.data_ref(), &this.pending) {
                    if this.buf.len() + data.len() > MAX_BODY {
                        if let Some((p, _)) = this.pending.take() {
                            p.drop_all("request body larger than the mirror cap");
                        }
                        this.buf = BytesMut::new();
                    } else {
                        this.buf.extend_from_slice(data);
                    }
                }
                // hyper stops polling once the body says it has ended, so the end is seen
                // here rather than as a final `None`.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some((p, _)) = this.pending.take() {
                    p.drop_all("request body broke off");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The body was not read through (the upstream answered early, the client went away):
        // there is no complete request to copy.
        if let Some((p, _)) = self.pending.take() {
            p.drop_all("request body not read to its end");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(percent: f64) -> MirrorRt {
        let backend = BackendRt::new(
            "m",
            &weir_config::Backend {
                endpoints: vec![weir_config::Endpoint::new("127.0.0.1:1")],
                ..serde_json::from_str("{}").expect("defaults")
            },
            None,
        )
        .expect("backend");
        let c = || IntCounter::new("x", "x").expect("counter");
        MirrorRt {
            backend: Arc::new(backend),
            percent,
            sent: c(),
            failed: c(),
            dropped: c(),
        }
    }

    #[test]
    fn percent_is_the_share_of_requests_mirrored() {
        let n = 20_000;
        let count = |p: f64| {
            let m = mirror(p);
            (0..n).filter(|_| m.chosen()).count()
        };
        assert_eq!(count(0.0), 0);
        assert_eq!(count(100.0), n);
        // Binomial(20000, 0.2): mean 4000, sd 57; the bounds are over 17 sd away.
        let twenty = count(20.0);
        assert!((3000..=5000).contains(&twenty), "{twenty}");
        let half_percent = count(0.5);
        assert!((20..=250).contains(&half_percent), "{half_percent}");
    }
}
