//! Load balancing policies over a backend's endpoints: round robin, least outstanding
//! requests, smooth weighted round robin, and power of two choices over peak-EWMA latency.
//!
//! Every pick takes an eligibility predicate (available, not tried yet) so the caller decides
//! what is in rotation; the policies only choose among eligible endpoints.

use crate::upstream::endpoint::EndpointRt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use weir_config::{LoadBalancer, LoadBalancerType};

#[derive(Debug)]
pub struct Balancer {
    pub kind: LoadBalancerType,
    decay: Duration,
    next: AtomicUsize,
    /// Smooth WRR's current weights, one per endpoint.
    current: Mutex<Vec<i64>>,
}

impl Balancer {
    pub fn new(cfg: &LoadBalancer, endpoints: usize) -> Balancer {
        Balancer {
            kind: cfg.kind,
            decay: cfg.ewma_decay.get(),
            // Start rotations at a random place so many pods do not move in lockstep.
            next: AtomicUsize::new(if endpoints > 1 {
                fastrand::usize(0..endpoints)
            } else {
                0
            }),
            current: Mutex::new(vec![0; endpoints]),
        }
    }

    #[inline]
    pub fn ewma_decay(&self) -> Duration {
        self.decay
    }

    /// Index of the chosen endpoint among `eps`, `None` when none is eligible.
    #[inline]
    pub fn pick(&self, eps: &[EndpointRt], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = eps.len();
        match n {
            0 => return None,
            // Every policy picks the one endpoint when it is eligible, and nothing a later
            // pick reads depends on this one (the rotation counter only ever counts modulo
            // the eligible endpoints, one here; smooth WRR's weight returns to 0): two passes
            // of the predicate and the policy's bookkeeping cost ~110 instructions per
            // request (callgrind).
            1 => return eligible(0).then_some(0),
            _ => {}
        }
        match self.kind {
            LoadBalancerType::RoundRobin => {
                // The k-th eligible endpoint, so skipping one spreads its share evenly.
                let count = (0..n).filter(|&i| eligible(i)).count();
                if count == 0 {
                    return None;
                }
                let k = self.next.fetch_add(1, Ordering::Relaxed) % count;
                (0..n).filter(|&i| eligible(i)).nth(k)
            }
            LoadBalancerType::LeastRequest => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, u64, u64)> = None; // (index, in-flight, weight)
                for k in 0..n {
                    let i = (start + k) % n;
                    if !eligible(i) {
                        continue;
                    }
                    let load = eps[i].state.in_flight();
                    let w = u64::from(eps[i].weight.max(1));
                    // load_i / w_i < load_b / w_b, without division; first wins ties.
                    if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                        best = Some((i, load, w));
                    }
                }
                best.map(|b| b.0)
            }
            LoadBalancerType::WeightedRoundRobin => {
                let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
                if cur.len() != n {
                    *cur = vec![0; n];
                }
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !eligible(i) {
                        continue;
                    }
                    let w = i64::from(eps[i].weight.max(1));
                    cur[i] += w;
                    total += w;
                    if best.is_none_or(|b| cur[i] > cur[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                cur[b] -= total;
                Some(b)
            }
            LoadBalancerType::P2cEwma => {
                let count = (0..n).filter(|&i| eligible(i)).count();
                let nth = |k: usize| (0..n).filter(|&i| eligible(i)).nth(k);
                match count {
                    0 => None,
                    1 => nth(0),
                    _ => {
                        let a = fastrand::usize(0..count);
                        let mut b = fastrand::usize(0..count - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (nth(a)?, nth(b)?);
                        let cost = |i: usize| {
                            eps[i].state.ewma_cost(self.decay) / f64::from(eps[i].weight.max(1))
                        };
                        Some(if cost(b) < cost(a) { b } else { a })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::EndpointState;
    use std::sync::Arc;

    fn eps(weights: &[u32]) -> Vec<EndpointRt> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let authority: http::uri::Authority =
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                EndpointRt {
                    weight: *w,
                    state: Arc::new(EndpointState::new(authority.clone(), None, false)),
                    authority,
                }
            })
            .collect()
    }

    fn lb(kind: LoadBalancerType, n: usize) -> Balancer {
        Balancer::new(
            &LoadBalancer {
                kind,
                ..LoadBalancer::default()
            },
            n,
        )
    }

    #[test]
    fn round_robin_skips_ineligible() {
        let e = eps(&[1, 1, 1]);
        let b = lb(LoadBalancerType::RoundRobin, 3);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[b.pick(&e, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [15, 0, 15]);
        assert_eq!(b.pick(&e, |_| false), None);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let e = eps(&[5, 1, 1]);
        let b = lb(LoadBalancerType::WeightedRoundRobin, 3);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(&e, |_| true).unwrap()).collect();
        // nginx's example: a a b a c a a (weights 5,1,1).
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_request_prefers_idle_and_respects_weights() {
        let e = eps(&[1, 1, 2]);
        let b = lb(LoadBalancerType::LeastRequest, 3);
        let _g0 = e[0].state.start();
        let _g2 = e[2].state.start();
        assert_eq!(b.pick(&e, |_| true), Some(1));
        let _g1 = e[1].state.start();
        // 1/1, 1/1, 1/2: the weight-2 endpoint is least loaded.
        assert_eq!(b.pick(&e, |_| true), Some(2));
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let e = eps(&[1, 1]);
        let b = lb(LoadBalancerType::P2cEwma, 2);
        e[0].state
            .observe_latency(Duration::from_millis(500), false, b.ewma_decay());
        e[1].state
            .observe_latency(Duration::from_millis(5), false, b.ewma_decay());
        for _ in 0..20 {
            assert_eq!(b.pick(&e, |_| true), Some(1));
        }
        assert_eq!(b.pick(&e, |i| i == 0), Some(0), "only one eligible");
    }
}
