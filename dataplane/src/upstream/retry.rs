//! Retry helpers: the replayable request body, the retry budget, backoff, idempotency.

use crate::http::body::{BoxError, ProxyBody};
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
///
/// Every request deposits, so that side takes no lock: each of the window's 10 one-second
/// buckets is one atomic word (bucket number, count), bumped by compare-and-swap. The mutex
/// it replaced, with the `u128` division of the bucket number, cost ~175 instructions per
/// request (callgrind); the counts are the same. A withdrawal (a retry, rare) still checks and
/// takes under a lock, so two retries cannot both take the last one.
#[derive(Debug)]
pub struct Budget {
    cfg: RetryBudget,
    requests: Buckets,
    retries: Buckets,
    withdrawing: Mutex<()>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUCKETS: usize = 10;

/// A count over a sliding window of [`BUCKETS`] buckets, each an atomic word: the bucket
/// number in the high 32 bits, its count in the low 32 (saturating).
#[derive(Debug)]
struct Buckets {
    origin: Instant,
    bucket_ns: u64,
    slots: [AtomicU64; BUCKETS],
}

impl Buckets {
    fn new(origin: Instant, span: Duration) -> Buckets {
        let bucket = (span / BUCKETS as u32).max(Duration::from_millis(1));
        Buckets {
            origin,
            bucket_ns: u64::try_from(bucket.as_nanos()).unwrap_or(u64::MAX),
            slots: Default::default(),
        }
    }

    /// The bucket number of `now` (32 bits: 136 years of one-second buckets).
    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        let ns = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        (ns / self.bucket_ns) & u64::from(u32::MAX)
    }

    fn add(&self, now: Instant) {
        let n = self.index(now);
        let slot = &self.slots[(n % BUCKETS as u64) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 32 == n {
                // Saturates rather than carrying into the bucket number.
                v + u64::from(v & u64::from(u32::MAX) != u64::from(u32::MAX))
            } else {
                (n << 32) | 1
            })
        });
    }

    /// The counts of the last [`BUCKETS`] buckets.
    fn sum(&self, now: Instant) -> u64 {
        let n = self.index(now);
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|v| {
                v & u64::from(u32::MAX) != 0 && v >> 32 <= n && (v >> 32) + (BUCKETS as u64) > n
            })
            .map(|v| v & u64::from(u32::MAX))
            .sum()
    }
}

impl Budget {
    pub fn new(cfg: RetryBudget) -> Budget {
        let origin = Instant::now();
        Budget {
            cfg,
            requests: Buckets::new(origin, BUDGET_WINDOW),
            retries: Buckets::new(origin, BUDGET_WINDOW),
            withdrawing: Mutex::new(()),
        }
    }

    /// Counts an original request.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Counts an original request that started at `now` (the caller's clock reading).
    #[inline]
    pub fn deposit_at(&self, now: Instant) {
        self.requests.add(now);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let _one_at_a_time = self.withdrawing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (requests, retries) = (self.requests.sum(now), self.retries.sum(now));
        let allowed = f64::from(self.cfg.min_per_second) * BUDGET_WINDOW.as_secs_f64()
            + self.cfg.ratio * requests as f64;
        if (retries as f64) < allowed.floor() {
            self.retries.add(now);
            true
        } else {
            false
        }
    }

    /// (requests, retries) in the window.
    pub fn usage(&self) -> (u64, u64) {
        let now = Instant::now();
        (self.requests.sum(now), self.retries.sum(now))
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
    fn budget_counts_every_concurrent_deposit() {
        // The lock-free deposits lose none, whichever thread wins each compare-and-swap.
        let b = Arc::new(Budget::new(RetryBudget {
            ratio: 0.001,
            min_per_second: 0,
        }));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| b.deposit()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.usage(), (40_000, 0));
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 40);
        assert_eq!(b.usage(), (40_000, 40));
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
