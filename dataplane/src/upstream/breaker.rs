//! Per-backend circuit breaker and the sliding-window counter it (and the retry budget) use.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use weir_config::CircuitBreaker;

/// Two counters over a sliding window made of 10 buckets.
#[derive(Debug)]
pub struct Window {
    bucket: Duration,
    origin: Instant,
    /// (bucket number, a, b)
    slots: [(u64, u64, u64); 10],
}

impl Window {
    pub fn new(span: Duration) -> Window {
        Window {
            bucket: (span / 10).max(Duration::from_millis(1)),
            origin: Instant::now(),
            slots: [(0, 0, 0); 10],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket.as_nanos().max(1))
            as u64
    }

    /// Adds to the counters of the current bucket.
    pub fn add(&mut self, now: Instant, a: u64, b: u64) {
        let n = self.index(now);
        let slot = &mut self.slots[(n % 10) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 += a;
        slot.2 += b;
    }

    /// Sums over the last 10 buckets.
    pub fn sum(&self, now: Instant) -> (u64, u64) {
        let n = self.index(now);
        self.slots
            .iter()
            .filter(|s| s.0 + 10 > n && s.0 <= n)
            .fold((0, 0), |acc, s| (acc.0 + s.1, acc.1 + s.2))
    }

    pub fn clear(&mut self) {
        self.slots = [(0, 0, 0); 10];
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
    HalfOpen,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::HalfOpen => "halfOpen",
        }
    }
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Bumped on every transition; outcomes of requests admitted under another generation
    /// are ignored.
    generation: u64,
    consecutive: u32,
    window: Window,
    open_until: Instant,
    probes_issued: u32,
    probe_successes: u32,
    times_opened: u64,
    opened_at: Option<std::time::SystemTime>,
}

/// Closed → open (consecutive failures or error ratio) → half-open probes → closed.
#[derive(Debug)]
pub struct Breaker {
    pub backend: String,
    cfg: CircuitBreaker,
    state: Mutex<State>,
}

/// Admission through the breaker. Report the result with [`Ticket::record`]; a ticket dropped
/// without a result (the client went away) frees its half-open probe slot.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    done: bool,
}

/// What `GET /backends` shows.
#[derive(Debug, Clone)]
pub struct BreakerView {
    pub mode: Mode,
    pub consecutive_failures: u32,
    pub window_requests: u64,
    pub window_failures: u64,
    pub times_opened: u64,
    pub opened_at: Option<std::time::SystemTime>,
}

impl Breaker {
    pub fn new(backend: &str, cfg: &CircuitBreaker) -> Breaker {
        Breaker {
            backend: backend.to_string(),
            cfg: cfg.clone(),
            state: Mutex::new(State {
                mode: Mode::Closed,
                generation: 0,
                consecutive: 0,
                window: Window::new(cfg.window.get()),
                open_until: Instant::now(),
                probes_issued: 0,
                probe_successes: 0,
                times_opened: 0,
                opened_at: None,
            }),
        }
    }

    pub fn config(&self) -> &CircuitBreaker {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a request through, or `None` while open (or half-open with every probe slot taken).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Ticket> {
        let mut st = self.lock();
        let now = Instant::now();
        if st.mode == Mode::Open && now >= st.open_until {
            st.mode = Mode::HalfOpen;
            st.generation += 1;
            st.probes_issued = 0;
            st.probe_successes = 0;
            tracing::info!(backend = %self.backend, "circuit breaker half-open: probing");
        }
        let probe = match st.mode {
            Mode::Closed => false,
            Mode::Open => return None,
            Mode::HalfOpen => {
                if st.probes_issued >= self.cfg.half_open_probes {
                    return None;
                }
                st.probes_issued += 1;
                true
            }
        };
        Some(Ticket {
            breaker: self.clone(),
            generation: st.generation,
            probe,
            done: false,
        })
    }

    fn open(&self, st: &mut State, now: Instant, why: &str) {
        st.mode = Mode::Open;
        st.generation += 1;
        st.open_until = now + self.cfg.open_duration.get();
        st.times_opened += 1;
        st.opened_at = Some(std::time::SystemTime::now());
        st.consecutive = 0;
        st.window.clear();
        tracing::warn!(backend = %self.backend, reason = why, open_for = ?self.cfg.open_duration.get(), "circuit breaker opened");
    }

    fn record(&self, t: &Ticket, failure: bool) {
        let mut st = self.lock();
        if st.generation != t.generation {
            return;
        }
        let now = Instant::now();
        match st.mode {
            Mode::Closed => {
                st.window.add(now, 1, u64::from(failure));
                if failure {
                    st.consecutive += 1;
                } else {
                    st.consecutive = 0;
                }
                let threshold = self.cfg.consecutive_failures;
                if threshold > 0 && st.consecutive >= threshold {
                    self.open(&mut st, now, "consecutive failures");
                    return;
                }
                if let Some(ratio) = self.cfg.error_ratio {
                    let (total, failed) = st.window.sum(now);
                    if total >= u64::from(self.cfg.min_requests)
                        && failed as f64 >= ratio * total as f64
                    {
                        self.open(&mut st, now, "error ratio");
                    }
                }
            }
            Mode::HalfOpen if t.probe => {
                if failure {
                    self.open(&mut st, now, "half-open probe failed");
                } else {
                    st.probe_successes += 1;
                    if st.probe_successes >= self.cfg.half_open_probes {
                        st.mode = Mode::Closed;
                        st.generation += 1;
                        st.consecutive = 0;
                        st.window.clear();
                        tracing::info!(backend = %self.backend, "circuit breaker closed");
                    }
                }
            }
            _ => {}
        }
    }

    fn release(&self, t: &Ticket) {
        let mut st = self.lock();
        if t.probe && st.generation == t.generation && st.mode == Mode::HalfOpen {
            st.probes_issued = st.probes_issued.saturating_sub(1);
        }
    }

    /// The state as last moved by a request (unlike [`Breaker::view`], an elapsed open period
    /// does not turn into half-open here).
    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Ends the open period now (tests).
    #[cfg(test)]
    fn expire_open(&self) {
        self.lock().open_until = Instant::now();
    }

    pub fn view(&self) -> BreakerView {
        let mut st = self.lock();
        let now = Instant::now();
        if st.mode == Mode::Open && now >= st.open_until {
            // Reported as half-open: the next request will probe.
            st.mode = Mode::HalfOpen;
            st.generation += 1;
            st.probes_issued = 0;
            st.probe_successes = 0;
        }
        let (total, failed) = st.window.sum(now);
        BreakerView {
            mode: st.mode,
            consecutive_failures: st.consecutive,
            window_requests: total,
            window_failures: failed,
            times_opened: st.times_opened,
            opened_at: st.opened_at,
        }
    }
}

impl Ticket {
    /// Reports the outcome of the request this ticket admitted.
    pub fn record(mut self, failure: bool) {
        self.done = true;
        self.breaker.record(&self, failure);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.release(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(consecutive: u32, ratio: Option<f64>, probes: u32) -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: consecutive,
            error_ratio: ratio,
            min_requests: 4,
            open_duration: weir_config::Duration::from_secs(3600),
            half_open_probes: probes,
            ..CircuitBreaker::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_probes() {
        let b = Arc::new(Breaker::new("t", &cfg(3, None, 2)));
        for _ in 0..2 {
            b.try_acquire().expect("closed").record(true);
        }
        b.try_acquire().expect("closed").record(false); // resets the run
        for _ in 0..2 {
            b.try_acquire().expect("closed").record(true);
        }
        assert_eq!(b.view().mode, Mode::Closed);
        b.try_acquire().expect("closed").record(true);
        assert_eq!(b.view().times_opened, 1);
        b.expire_open();
        // Half-open: two probe slots, a third request is refused.
        let p1 = b.try_acquire().expect("probe 1");
        let p2 = b.try_acquire().expect("probe 2");
        assert!(b.try_acquire().is_none(), "only two probes");
        drop(p2); // cancelled: frees its slot
        let p3 = b.try_acquire().expect("slot freed");
        p1.record(false);
        assert_eq!(b.view().mode, Mode::HalfOpen);
        p3.record(false);
        assert_eq!(b.view().mode, Mode::Closed);
    }

    #[test]
    fn failed_probe_reopens_and_ratio_trips() {
        let b = Arc::new(Breaker::new("t", &cfg(0, Some(0.5), 1)));
        // Ratio needs minRequests (4) first.
        b.try_acquire().expect("closed").record(true);
        b.try_acquire().expect("closed").record(true);
        b.try_acquire().expect("closed").record(false);
        assert_eq!(b.view().mode, Mode::Closed);
        b.try_acquire().expect("closed").record(false);
        assert_eq!(b.view().mode, Mode::Open, "2 of 4 failed");
        b.expire_open();
        b.try_acquire().expect("probe").record(true);
        assert!(b.try_acquire().is_none(), "re-opened");
        assert_eq!(b.view().times_opened, 2);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let b = Arc::new(Breaker::new("t", &cfg(1, None, 1)));
        let early = b.try_acquire().expect("closed");
        b.try_acquire().expect("closed").record(true);
        assert!(b.try_acquire().is_none());
        early.record(false); // admitted while closed; must not close the breaker
        assert_eq!(b.view().mode, Mode::Open);
    }

    #[test]
    fn window_forgets_old_buckets() {
        let mut w = Window::new(Duration::from_millis(100));
        let t0 = Instant::now();
        w.add(t0, 3, 1);
        assert_eq!(w.sum(t0), (3, 1));
        assert_eq!(w.sum(t0 + Duration::from_millis(200)), (0, 0));
    }
}
