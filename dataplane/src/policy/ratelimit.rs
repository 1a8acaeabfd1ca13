//! Token-bucket rate limits keyed by client IP or a header, as GCRA (one `u64` per key).
//!
//! A bucket of `burst` tokens refilled at `rate` per unit is the same as GCRA with emission
//! interval `T = unit / rate` and tolerance `burst × T`: each key keeps only its theoretical
//! arrival time (TAT). A request at `now` is allowed when `max(TAT, now) + T - now <= burst × T`
//! and then moves TAT there. Integer nanoseconds, so counts are exact.
//!
//! Memory is bounded: the table is split into shards of at most `maxKeys / SHARDS` entries.
//! A key whose TAT is in the past has a full bucket, so dropping it changes nothing; a full
//! shard first drops those (at most once per `T`, and per 10ms, per shard). If the shard is still full, the
//! new key is charged to the shard's overflow bucket (shared by every key that did not fit),
//! so a flood of distinct keys can neither grow memory nor reset the buckets of known keys.

use http::{HeaderMap, HeaderName};
use prometheus::IntCounterVec;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;
use weir_config::{RateLimit, RateLimitKeyType};

const SHARDS: usize = 16;

#[derive(Debug)]
struct Shard {
    tats: HashMap<u64, u64>,
    overflow_tat: u64,
    last_purge: u64,
}

/// One compiled `rateLimit`: its bucket table.
#[derive(Debug)]
pub struct RateLimiter {
    /// Emission interval, ns.
    interval: u64,
    /// `burst × interval`, ns.
    tolerance: u64,
    burst: u32,
    per_shard: usize,
    key: KeyRule,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    /// `weir_rate_limited_total{route}` for this limiter.
    limited: prometheus::IntCounter,
    overflowed: prometheus::IntCounter,
}

#[derive(Debug)]
enum KeyRule {
    ClientIp { trusted_hops: usize },
    Header(HeaderName),
}

/// The outcome of [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        remaining: u32,
    },
    /// Retry after this many whole seconds (at least 1).
    Limited {
        retry_after_secs: u64,
    },
}

fn families() -> &'static (IntCounterVec, IntCounterVec) {
    static F: OnceLock<(IntCounterVec, IntCounterVec)> = OnceLock::new();
    F.get_or_init(|| {
        let r = &crate::telemetry::metrics::metrics().registry;
        let mk = |name: &str, help: &str| {
            let c = IntCounterVec::new(prometheus::Opts::new(name, help), &["route"])
                .expect("valid metric definition");
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!(error = %e, "cannot register a metric family");
            }
            c
        };
        (
            mk(
                "weir_rate_limited_total",
                "Requests answered 429 by a rate limit.",
            ),
            mk(
                "weir_rate_limit_overflow_total",
                "Requests whose key found its rate-limit table full and was charged to the shared overflow bucket.",
            ),
        )
    })
}

impl RateLimiter {
    /// `route` labels the metrics.
    pub fn new(route: &str, cfg: &RateLimit) -> RateLimiter {
        let unit = cfg.unit.duration().as_nanos() as u64;
        let interval = (unit / u64::from(cfg.requests_per_unit.max(1))).max(1);
        let burst = cfg.burst().max(1);
        let key = match cfg.key.kind {
            RateLimitKeyType::ClientIp => KeyRule::ClientIp {
                trusted_hops: cfg.key.trusted_hops as usize,
            },
            RateLimitKeyType::Header => KeyRule::Header(
                cfg.key
                    .header
                    .as_deref()
                    .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                    .unwrap_or(HeaderName::from_static("x-rate-limit-key")),
            ),
        };
        let (limited, overflowed) = families();
        RateLimiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            burst,
            per_shard: (cfg.max_keys as usize).div_ceil(SHARDS).max(1),
            key,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tats: HashMap::new(),
                        overflow_tat: 0,
                        last_purge: 0,
                    })
                })
                .collect(),
            hasher: Default::default(),
            epoch: Instant::now(),
            limited: limited.with_label_values(&[route]),
            overflowed: overflowed.with_label_values(&[route]),
        }
    }

    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Checks (and charges) one request from `peer` with `headers`.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Decision {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let d = match &self.key {
            KeyRule::ClientIp { trusted_hops } => {
                let ip = client_ip(peer, headers, *trusted_hops);
                self.check_key(self.hasher.hash_one(ip), now)
            }
            KeyRule::Header(name) => {
                let v = headers.get(name).map(|v| v.as_bytes()).unwrap_or(b"");
                self.check_key(self.hasher.hash_one(v), now)
            }
        };
        if matches!(d, Decision::Limited { .. }) {
            self.limited.inc();
        }
        d
    }

    /// Checks one key (a hash) at `now` (ns since the limiter started).
    pub fn check_key(&self, key: u64, now: u64) -> Decision {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *s;
        if !s.tats.contains_key(&key) && s.tats.len() >= self.per_shard {
            if now.saturating_sub(s.last_purge) >= self.interval.max(10_000_000) {
                s.last_purge = now;
                s.tats.retain(|_, tat| *tat > now);
            }
            if s.tats.len() >= self.per_shard {
                self.overflowed.inc();
                return self.gcra(&mut s.overflow_tat, now);
            }
        }
        let tat = s.tats.entry(key).or_insert(0);
        self.gcra(tat, now)
    }

    fn gcra(&self, tat: &mut u64, now: u64) -> Decision {
        let new_tat = (*tat).max(now) + self.interval;
        let ahead = new_tat - now;
        if ahead > self.tolerance {
            let wait = ahead - self.tolerance;
            Decision::Limited {
                retry_after_secs: wait.div_ceil(1_000_000_000).max(1),
            }
        } else {
            *tat = new_tat;
            Decision::Allowed {
                remaining: ((self.tolerance - ahead) / self.interval) as u32,
            }
        }
    }

    /// Keys held now (for tests and the memory figure).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tats.len())
            .sum()
    }
}

/// The client address: the peer, or with `trusted_hops` N > 0 the N-th `X-Forwarded-For`
/// address from the right (the peer when there are fewer or it does not parse).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let mut addrs: Vec<&str> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        addrs.extend(s.split(',').map(str::trim));
    }
    addrs
        .len()
        .checked_sub(trusted_hops)
        .and_then(|i| addrs[i].parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::{RateLimitKey, RateUnit};

    fn limiter(rate: u32, burst: u32, max_keys: u32) -> RateLimiter {
        RateLimiter::new(
            "t",
            &RateLimit {
                requests_per_unit: rate,
                unit: RateUnit::Second,
                burst: Some(burst),
                key: RateLimitKey::default(),
                max_keys,
            },
        )
    }

    #[test]
    fn burst_then_refill_exactly() {
        let l = limiter(10, 5, 100);
        let t0 = 1_000_000_000;
        let allowed = (0..20)
            .filter(|_| matches!(l.check_key(1, t0), Decision::Allowed { .. }))
            .count();
        assert_eq!(allowed, 5);
        // One token every 100ms: 99ms later still limited, 100ms later one more.
        assert!(matches!(
            l.check_key(1, t0 + 99_000_000),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            l.check_key(1, t0 + 100_000_000),
            Decision::Allowed { remaining: 0 }
        ));
        // Another key has its own bucket.
        assert_eq!(l.check_key(2, t0), Decision::Allowed { remaining: 4 });
    }

    #[test]
    fn retry_after_rounds_up() {
        let l = RateLimiter::new(
            "t",
            &RateLimit {
                requests_per_unit: 1,
                unit: RateUnit::Minute,
                burst: None,
                key: RateLimitKey::default(),
                max_keys: 10,
            },
        );
        assert!(matches!(l.check_key(7, 0), Decision::Allowed { .. }));
        assert_eq!(
            l.check_key(7, 0),
            Decision::Limited {
                retry_after_secs: 60
            }
        );
    }

    #[test]
    fn table_is_bounded_and_full_buckets_are_dropped() {
        let l = limiter(1, 1, 160);
        for k in 0..10_000u64 {
            let _ = l.check_key(k, 0);
        }
        assert!(l.keys() <= 160, "{}", l.keys());
        // A known key keeps its (empty) bucket despite the flood.
        let known = (0..10_000u64)
            .find(|k| {
                l.shards[(*k as usize) % SHARDS]
                    .lock()
                    .unwrap()
                    .tats
                    .contains_key(k)
            })
            .unwrap();
        assert!(matches!(l.check_key(known, 0), Decision::Limited { .. }));
        // Two seconds later every bucket is full again, so they can all be dropped.
        let _ = l.check_key(99_999, 2_000_000_000);
        assert!(l.keys() <= 160);
    }

    #[test]
    fn xff_hops() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        assert_eq!(client_ip(peer, &h, 0), peer);
        assert_eq!(client_ip(peer, &h, 1).to_string(), "3.3.3.3");
        assert_eq!(client_ip(peer, &h, 3).to_string(), "1.1.1.1");
        assert_eq!(client_ip(peer, &h, 4), peer);
    }
}
