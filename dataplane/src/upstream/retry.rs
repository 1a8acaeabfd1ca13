//! Retry helpers: the replayable request body, the retry budget, backoff, idempotency.

use crate::http::body::{BoxError, ProxyBody};
use crate::upstream::breaker::Window;
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use weir_config::{Backoff, RetryBudget};

/// Request bodies are kept for a replay up to this many bytes while being sent.
pub const REPLAY_BUFFER_CAP: usize = 64 * 1024;

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full jitter: a random wait in `[0, min(max, base × 2^(retry-1))]`.
pub fn backoff(cfg: &Backoff, retry: u32) -> Duration {
    let ceiling = cfg
        .base
        .get()
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(cfg.max.get());
    let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// Finagle-style budget over a 10 s window: retries ≤ minPerSecond × 10 + ratio × requests.
#[derive(Debug)]
pub struct Budget {
    cfg: RetryBudget,
    /// (requests, retries)
    window: Mutex<Window>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl Budget {
    pub fn new(cfg: RetryBudget) -> Budget {
        Budget {
            cfg,
            window: Mutex::new(Window::new(BUDGET_WINDOW)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an original request.
    pub fn deposit(&self) {
        self.lock().add(Instant::now(), 1, 0);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let mut w = self.lock();
        let now = Instant::now();
        let (requests, retries) = w.sum(now);
        let allowed = f64::from(self.cfg.min_per_second) * BUDGET_WINDOW.as_secs_f64()
            + self.cfg.ratio * requests as f64;
        if (retries as f64) < allowed.floor() {
            w.add(now, 0, 1);
            true
        } else {
            false
        }
    }

    /// (requests, retries) in the window.
    pub fn usage(&self) -> (u64, u64) {
        self.lock().sum(Instant::now())
    }
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

struct Shared {
    inner: Option<ProxyBody>,
    kept: Vec<Kept>,
    kept_bytes: usize,
    /// More than the cap went out: what was sent can no longer be replayed.
    overflow: bool,
    failed: bool,
    /// Attempt number allowed to read; older attempts get an error.
    current: u64,
}

/// A request body that can be sent again: frames are kept (up to
/// [`REPLAY_BUFFER_CAP`]) as they are sent, and a new attempt replays them before reading on.
/// A body that was never read (a connect error) is always replayable, whatever its size.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

impl Replay {
    pub fn new(body: ProxyBody) -> Replay {
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(body),
                kept: Vec::new(),
                kept_bytes: 0,
                overflow: false,
                failed: false,
                current: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another attempt can send the whole body again.
    pub fn replayable(&self) -> bool {
        let s = self.lock();
        !s.overflow && !s.failed
    }

    /// The body for the next attempt; earlier attempts' bodies stop yielding.
    pub fn attempt(&self) -> ProxyBody {
        let mut s = self.lock();
        s.current += 1;
        AttemptBody {
            replay: self.clone(),
            id: s.current,
            pos: 0,
        }
        .boxed_unsync()
    }
}

struct AttemptBody {
    replay: Replay,
    id: u64,
    pos: usize,
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.replay.lock();
        if s.current != this.id {
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        if this.pos < s.kept.len() {
            let f = match &s.kept[this.pos] {
                Kept::Data(b) => Frame::data(b.clone()),
                Kept::Trailers(t) => Frame::trailers(t.clone()),
            };
            this.pos += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                s.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if !s.overflow {
                    if let Some(d) = frame.data_ref() {
                        s.kept_bytes += d.len();
                        if s.kept_bytes > REPLAY_BUFFER_CAP {
                            s.overflow = true;
                            s.kept = Vec::new();
                        } else {
                            s.kept.push(Kept::Data(d.clone()));
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        s.kept.push(Kept::Trailers(t.clone()));
                    }
                    this.pos = s.kept.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.replay.lock();
        self.pos >= s.kept.len() && s.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.replay.lock();
        let kept: u64 = s.kept[self.pos.min(s.kept.len())..]
            .iter()
            .map(|k| match k {
                Kept::Data(b) => b.len() as u64,
                Kept::Trailers(_) => 0,
            })
            .sum();
        match &s.inner {
            None => SizeHint::with_exact(kept),
            Some(b) => {
                let h = b.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + kept);
                if let Some(u) = h.upper() {
                    out.set_upper(u + kept);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::{boxed, full};
    use futures_util::stream;
    use http_body_util::StreamBody;

    async fn collect(b: ProxyBody) -> Result<Vec<u8>, BoxError> {
        Ok(b.collect().await?.to_bytes().to_vec())
    }

    fn chunks(parts: Vec<Vec<u8>>) -> ProxyBody {
        let s = stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from(p)))),
        );
        boxed(StreamBody::new(s))
    }

    #[tokio::test]
    async fn small_body_replays_whole() {
        let r = Replay::new(chunks(vec![b"ab".to_vec(), b"cd".to_vec()]));
        let mut first = r.attempt();
        // The first attempt dies after one frame.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        assert!(r.replayable());
        let second = r.attempt();
        assert!(first.frame().await.unwrap().is_err(), "superseded");
        assert_eq!(collect(second).await.unwrap(), b"abcd");
        assert_eq!(collect(r.attempt()).await.unwrap(), b"abcd", "third time");
    }

    #[tokio::test]
    async fn unread_large_body_is_replayable_read_one_is_not() {
        let big = vec![7u8; REPLAY_BUFFER_CAP + 1];
        let r = Replay::new(full(big.clone()));
        let untouched = r.attempt();
        drop(untouched); // connect error: never read
        assert!(r.replayable());
        assert_eq!(collect(r.attempt()).await.unwrap().len(), big.len());
        assert!(!r.replayable(), "more than the cap went out");
    }

    #[tokio::test]
    async fn empty_body_ends_at_once() {
        let r = Replay::new(crate::http::body::empty());
        let a = r.attempt();
        assert!(a.is_end_stream());
        assert_eq!(a.size_hint().exact(), Some(0));
    }

    #[test]
    fn budget_caps_retries() {
        let b = Budget::new(RetryBudget {
            ratio: 0.5,
            min_per_second: 0,
        });
        for _ in 0..10 {
            b.deposit();
        }
        let granted = (0..20).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 5);
        let floor = Budget::new(RetryBudget {
            ratio: 0.0,
            min_per_second: 1,
        });
        assert_eq!((0..50).filter(|_| floor.withdraw()).count(), 10);
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let cfg = Backoff {
            base: weir_config::Duration::from_millis(10),
            max: weir_config::Duration::from_millis(50),
        };
        for retry in 1..8 {
            let ceiling = Duration::from_millis((10u64 << (retry - 1)).min(50));
            for _ in 0..50 {
                assert!(backoff(&cfg, retry) <= ceiling);
            }
        }
        assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
    }
}
