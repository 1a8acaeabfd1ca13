//! One backoff policy for the telemetry loops, built on backon's exponential backoff: the waits
//! between the attempts of one send (`httpJson` batches, OTLP exports) and the pause after a
//! batch that could not be sent at all.
//!
//! Upstream request retries keep their own full-jitter backoff (`upstream::retry::backoff`):
//! its base and ceiling come from each route's config, and its wait must stay under that
//! ceiling, while backon's jitter adds up to one more delay on top.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// First wait between two attempts of one send.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts of one send.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// First pause after a batch that could not be sent.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause after batches that could not be sent.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The waits before attempts 2..=`attempts` of one send: 100 ms doubling to 2 s, each plus a
/// random jitter of up to half of it, so sinks that failed together do not retry together.
pub fn send_waits(attempts: u32) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(MAX_RETRY)
        .with_max_times(attempts.saturating_sub(1) as usize)
        .build()
        .map(|d| d + Duration::from_millis(fastrand::u64(0..=d.as_millis() as u64 / 2)))
}

/// The pause after a batch that could not be sent: 1 s, doubling to 30 s; a batch sent
/// starts over ([`Pause::reset`]).
pub struct Pause(ExponentialBackoff);

impl Default for Pause {
    fn default() -> Self {
        Pause(Self::policy())
    }
}

impl Pause {
    fn policy() -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(FIRST_PAUSE)
            .with_max_delay(MAX_PAUSE)
            .without_max_times()
            .build()
    }

    /// The next pause (the sequence never ends; the cap holds once reached).
    pub fn next_pause(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX_PAUSE)
    }

    /// A batch was sent: the next failure pauses [`FIRST_PAUSE`] again.
    pub fn reset(&mut self) {
        self.0 = Self::policy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_waits_double_up_to_their_cap_with_bounded_jitter() {
        let waits: Vec<Duration> = send_waits(7).collect();
        assert_eq!(waits.len(), 6);
        let base = [100u64, 200, 400, 800, 1600, 2000];
        for (w, b) in waits.iter().zip(base) {
            let b = Duration::from_millis(b);
            assert!(*w >= b && *w <= b + b / 2, "{w:?} for {b:?}");
        }
        assert_eq!(send_waits(1).count(), 0);
    }

    #[test]
    fn pause_doubles_to_its_cap_and_resets() {
        let mut p = Pause::default();
        let got: Vec<u64> = (0..7).map(|_| p.next_pause().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        p.reset();
        assert_eq!(p.next_pause(), FIRST_PAUSE);
    }
}
