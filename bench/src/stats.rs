//! Per-worker counters and latency histograms, merged into a [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::{Error, ErrorKind};

const KINDS: usize = ErrorKind::ALL.len();
const MAX_STATUS: usize = 1000;

/// Counters of one worker thread. Recording does not allocate.
#[derive(Clone, Debug)]
pub struct Stats {
    hist: Histogram<u64>,
    status: Vec<u64>,
    errors: [u64; KINDS],
    first_error: [Option<String>; KINDS],
    responses: u64,
    bytes: u64,
    connections: u64,
    retried: u64,
    last: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counters; latencies are tracked in microseconds from 1 µs to 1 h
    /// with 3 significant digits.
    pub fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            status: vec![0; MAX_STATUS],
            errors: [0; KINDS],
            first_error: Default::default(),
            responses: 0,
            retried: 0,
            bytes: 0,
            connections: 0,
            last: None,
        }
    }

    /// Records a completed response started at `start`.
    #[inline]
    pub fn record(&mut self, status: u16, body_bytes: u64, start: Instant) {
        let now = Instant::now();
        self.last = Some(now);
        let us = now
            .saturating_duration_since(start)
            .as_micros()
            .min(u64::MAX as u128) as u64;
        self.hist.saturating_record(us.max(1));
        if let Some(c) = self.status.get_mut(status as usize) {
            *c += 1;
        }
        self.responses += 1;
        self.bytes += body_bytes;
    }

    /// Records a failed request or connection attempt.
    pub fn record_error(&mut self, e: &Error) {
        self.last = Some(Instant::now());
        let i = e.kind().index();
        self.errors[i] += 1;
        if self.first_error[i].is_none() {
            self.first_error[i] = Some(e.to_string());
        }
    }

    /// Records an established connection.
    pub fn record_connection(&mut self) {
        self.connections += 1;
    }

    /// Records a request sent again on a new connection because the server provably did not
    /// process it (see `load.rs`); it is not an error, but it is reported.
    pub fn record_retry(&mut self) {
        self.retried += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        let _ = self.hist.add(&other.hist);
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        for i in 0..KINDS {
            self.errors[i] += other.errors[i];
            if self.first_error[i].is_none() {
                self.first_error[i].clone_from(&other.first_error[i]);
            }
        }
        self.responses += other.responses;
        self.retried += other.retried;
        self.bytes += other.bytes;
        self.connections += other.connections;
        self.last = self.last.max(other.last);
    }

    /// When the last request (or failure) was recorded.
    pub fn last(&self) -> Option<Instant> {
        self.last
    }

    /// Builds the final report.
    pub fn report(&self, meta: RunInfo, elapsed: Duration) -> Report {
        let status = self
            .status
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(s, c)| (s as u16, *c))
            .collect();
        let mut errors = BTreeMap::new();
        let mut first_errors = BTreeMap::new();
        for k in ErrorKind::ALL {
            errors.insert(k, self.errors[k.index()]);
            if let Some(m) = &self.first_error[k.index()] {
                first_errors.insert(k, m.clone());
            }
        }
        let h = &self.hist;
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                min_us: h.min(),
                mean_us: h.mean(),
                p50_us: h.value_at_quantile(0.50),
                p90_us: h.value_at_quantile(0.90),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
            }
        };
        Report {
            info: meta,
            elapsed,
            responses: self.responses,
            retried: self.retried,
            bytes: self.bytes,
            connections: self.connections,
            status,
            errors,
            first_errors,
            latency,
        }
    }
}

/// What was run (echoed in the report).
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The URL.
    pub url: String,
    /// `h1`, `h2` or `h3`.
    pub protocol: &'static str,
    /// Connections.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams: usize,
    /// Worker threads.
    pub threads: usize,
}

/// Latency percentiles in microseconds (all zero when nothing completed).
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Minimum.
    pub min_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

/// Result of a load run.
#[derive(Clone, Debug)]
pub struct Report {
    /// What was run.
    pub info: RunInfo,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Completed responses (any status).
    pub responses: u64,
    /// Requests retried on a new connection after the server closed an idle keep-alive
    /// connection or sent GOAWAY before the request was processed.
    pub retried: u64,
    /// Response body bytes read.
    pub bytes: u64,
    /// Connections established.
    pub connections: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures by kind (every kind present, possibly 0).
    pub errors: BTreeMap<ErrorKind, u64>,
    /// First error message seen of each kind.
    pub first_errors: BTreeMap<ErrorKind, String>,
    /// Latency of completed responses (request sent to body end).
    pub latency: Latency,
}

impl Report {
    /// Total failures.
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Failures of one kind.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }

    /// Completed responses per second.
    pub fn rps(&self) -> f64 {
        per_sec(self.responses, self.elapsed)
    }

    /// Body bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        per_sec(self.bytes, self.elapsed)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let status: serde_json::Map<String, serde_json::Value> = self
            .status
            .iter()
            .map(|(s, c)| (s.to_string(), (*c).into()))
            .collect();
        let mut errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(k, c)| (k.as_str().to_string(), (*c).into()))
            .collect();
        errors.insert("total".into(), self.total_errors().into());
        let first: serde_json::Map<String, serde_json::Value> = self
            .first_errors
            .iter()
            .map(|(k, m)| (k.as_str().to_string(), m.clone().into()))
            .collect();
        let l = &self.latency;
        serde_json::json!({
            "url": self.info.url,
            "protocol": self.info.protocol,
            "connections": self.info.connections,
            "streams": self.info.streams,
            "threads": self.info.threads,
            "connections_established": self.connections,
            "duration_s": self.elapsed.as_secs_f64(),
            "requests": self.responses + self.total_errors_excluding_connect(),
            "responses": self.responses,
            "retried": self.retried,
            "rps": self.rps(),
            "bytes": self.bytes,
            "bytes_per_s": self.bytes_per_sec(),
            "status": status,
            "errors": errors,
            "first_errors": first,
            "latency_us": {
                "min": l.min_us,
                "mean": l.mean_us,
                "p50": l.p50_us,
                "p90": l.p90_us,
                "p99": l.p99_us,
                "p99.9": l.p999_us,
                "max": l.max_us,
            },
        })
    }

    fn total_errors_excluding_connect(&self) -> u64 {
        self.total_errors() - self.errors_of(ErrorKind::Connect) - self.errors_of(ErrorKind::Tls)
    }

    /// The report as a human-readable table.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let i = &self.info;
        let _ = writeln!(s, "target      {} ({})", i.url, i.protocol);
        let _ = writeln!(
            s,
            "load        {} connections x {} streams, {} threads, {} connections established",
            i.connections, i.streams, i.threads, self.connections
        );
        let _ = writeln!(
            s,
            "finished    {} responses, {} errors in {:.3}s",
            self.responses,
            self.total_errors(),
            self.elapsed.as_secs_f64()
        );
        if self.retried > 0 {
            let _ = writeln!(
                s,
                "retried     {} (not processed by the server: idle keep-alive close or GOAWAY)",
                self.retried
            );
        }
        let _ = writeln!(s, "requests/s  {:.1}", self.rps());
        let _ = writeln!(
            s,
            "throughput  {}/s ({} body bytes)",
            human_bytes(self.bytes_per_sec()),
            self.bytes
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, min {})",
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            ms(l.mean_us as u64),
            ms(l.min_us)
        );
        let codes: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "status      {}",
            if codes.is_empty() {
                "-".to_string()
            } else {
                codes.join(", ")
            }
        );
        let errs: Vec<String> = self
            .errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(s, "errors      {}", errs.join(", "));
        for (k, m) in &self.first_errors {
            let _ = writeln!(s, "  first {k:<8} {m}");
        }
        s
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}
