//! Observability on real sockets: `/metrics` after traffic over HTTP/1.1, h2c and HTTP/3
//! (exact counts by label), error kinds, the endpoint health gauge, config info and reloads,
//! `promtool check metrics` on a scrape taken under load, W3C trace context towards the
//! upstream, access log lines, and runtime log level / access log switches.
//!
//! Waits have only the hang guard as a deadline; assertions are on counts and values.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_bench::h3client;

// ---------------------------------------------------------------------------------------------
// Scrapes

/// One parsed text exposition.
struct Scrape {
    text: String,
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "label value not quoted in {s:?}");
        let mut val = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 2;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &after[end..];
    }
    out
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').expect("series line has a value");
            let value: f64 = value.parse().expect("numeric sample value");
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n.to_string(), parse_labels(l.trim_end_matches('}'))),
                None => (head.to_string(), BTreeMap::new()),
            };
            series.push((name, labels, value));
        }
        Scrape { text, series }
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.series.iter().filter_map(move |(n, l, v)| {
            (n == name
                && labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want)))
            .then_some(*v)
        })
    }

    /// Sum over the series of `name` carrying all of `labels` (0 when none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }
}

async fn scrape(dp: &Dataplane) -> Scrape {
    let r = get(&client(), &dp.admin_url("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    Scrape::parse(String::from_utf8(r.body.to_vec()).expect("UTF-8 exposition"))
}

/// Scrapes until no request is in flight (every exchange has been counted).
async fn scrape_idle(dp: &Dataplane) -> Scrape {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let s = scrape(dp).await;
        if s.has("weir_requests_in_flight", &[]) && s.sum("weir_requests_in_flight", &[]) == 0.0 {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests still in flight:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scrapes until `cond` holds.
async fn scrape_until(dp: &Dataplane, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let s = scrape(dp).await;
        if cond(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what}; last scrape:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// A plain listener on `http`, an https (TCP + QUIC) one on `https`; route `api` (/api → echo
/// `a`), route `broken` (/broken → a closed port); nothing else matches.
fn config(version: &str, http: u16, https: u16, a: SocketAddr, dead: SocketAddr) -> String {
    format!(
        r#"version: {version}
listeners:
  - {{ name: plain, address: "127.0.0.1:{http}", protocol: http }}
  - {{ name: secure, address: "127.0.0.1:{https}", protocol: https }}
backends:
  a: {{ endpoints: ["{a}"] }}
  dead: {{ endpoints: ["{dead}"] }}
routes:
  - name: api
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]
        backendRefs: [{{ name: a }}]
  - name: broken
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /broken }} }}]
        backendRefs: [{{ name: dead }}]
"#
    )
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

async fn h3(port: u16) -> h3client::H3Conn {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::time::timeout(HANG_GUARD, h3client::connect(addr, None, true))
        .await
        .expect("connect hang")
        .expect("HTTP/3 connect")
}

fn series<'a>(pairs: &'a [(&'a str, &'a str)]) -> &'a [(&'a str, &'a str)] {
    pairs
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_count_every_protocol_exactly() {
    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dp = Dataplane::start(&config("obs-1", http, https, a, closed_port())).await;
    let base = format!("http://127.0.0.1:{http}");

    // HTTP/1.1: 3 GETs and a POST with a 1000-byte body; a 404; a 502.
    let c1 = client();
    let mut h1_out = 0u64;
    for _ in 0..3 {
        let r = get(&c1, &format!("{base}/api/x")).await;
        assert_eq!(r.status, StatusCode::OK);
        h1_out += r.body.len() as u64;
    }
    let post = Request::post(format!("{base}/api/upload"))
        .body(full(vec![b'x'; 1000]))
        .unwrap();
    let r = send(&c1, post).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["bodyBytes"], 1000);
    h1_out += r.body.len() as u64;
    let r = get(&c1, &format!("{base}/nope")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&c1, &format!("{base}/broken")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "upstream_connect_error");

    // h2c: 2 GETs.
    let c2 = h2c_client();
    for _ in 0..2 {
        let r = get(&c2, &format!("{base}/api/h2")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, http::Version::HTTP_2);
    }

    // HTTP/3: 4 GETs on one connection.
    let conn = h3(https).await;
    let mut h3_out = 0u64;
    for _ in 0..4 {
        let r = conn
            .request(
                Request::get(format!("https://127.0.0.1:{https}/api/h3"))
                    .body(Bytes::new())
                    .unwrap(),
            )
            .await
            .expect("h3 request");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.end.is_clean());
        h3_out += r.body.len() as u64;
    }

    let s = scrape_idle(&dp).await;
    let req = |method, class, protocol, route, backend| {
        s.sum(
            "weir_requests_total",
            &[
                ("route", route),
                ("backend", backend),
                ("method", method),
                ("status_class", class),
                ("protocol", protocol),
            ],
        )
    };
    assert_eq!(req("GET", "2xx", "h1", "api", "a"), 3.0, "{}", s.text);
    assert_eq!(req("POST", "2xx", "h1", "api", "a"), 1.0);
    assert_eq!(req("GET", "2xx", "h2", "api", "a"), 2.0);
    assert_eq!(req("GET", "2xx", "h3", "api", "a"), 4.0);
    assert_eq!(req("GET", "4xx", "h1", "-", "-"), 1.0);
    assert_eq!(req("GET", "5xx", "h1", "broken", "dead"), 1.0);
    assert_eq!(s.sum("weir_requests_total", &[]), 12.0, "{}", s.text);

    let err = |route, backend, kind| {
        s.sum(
            "weir_proxy_errors_total",
            &[("route", route), ("backend", backend), ("kind", kind)],
        )
    };
    assert_eq!(err("-", "-", "no_route"), 1.0);
    assert_eq!(err("broken", "dead", "upstream_connect_error"), 1.0);
    assert_eq!(s.sum("weir_proxy_errors_total", &[]), 2.0);

    let api = |p| [("route", "api"), ("backend", "a"), ("protocol", p)];
    assert_eq!(
        s.sum("weir_request_duration_seconds_count", &api("h1")),
        4.0
    );
    assert_eq!(s.sum("weir_request_body_bytes_sum", &api("h1")), 1000.0);
    assert_eq!(s.sum("weir_request_body_bytes_count", &api("h3")), 4.0);
    assert_eq!(
        s.sum("weir_response_body_bytes_sum", &api("h1")),
        h1_out as f64
    );
    assert_eq!(
        s.sum("weir_response_body_bytes_sum", &api("h3")),
        h3_out as f64
    );
    assert_eq!(
        s.sum(
            "weir_upstream_response_duration_seconds_count",
            &[("backend", "a")]
        ),
        10.0
    );
    assert_eq!(
        s.sum(
            "weir_backend_endpoint_requests_total",
            &[("backend", "a"), ("endpoint", &a.to_string())]
        ),
        10.0
    );

    // Connections: one QUIC connection with a successful handshake; TCP ones counted.
    let quic = series(&[("listener", "secure"), ("transport", "quic")]);
    assert_eq!(s.sum("weir_downstream_connections_total", quic), 1.0);
    assert_eq!(s.sum("weir_downstream_connections_active", quic), 1.0);
    assert_eq!(
        s.sum(
            "weir_tls_handshakes_total",
            &[
                ("listener", "secure"),
                ("transport", "quic"),
                ("result", "success")
            ]
        ),
        1.0
    );
    assert!(
        s.sum(
            "weir_downstream_connections_total",
            &[("listener", "plain"), ("transport", "tcp")]
        ) >= 2.0
    );
    assert_eq!(s.sum("weir_config_info", &[("version", "obs-1")]), 1.0);
    assert_eq!(
        s.sum("weir_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert!(s.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert!(s.sum("process_open_fds", &[]) > 0.0);
    // No raw paths or client addresses anywhere in the labels.
    assert!(!s.text.contains("/api/x") && !s.text.contains("/nope"));
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_health_gauge_follows_active_checks() {
    let a = echo("a").await;
    let port = free_port();
    let cfg = format!(
        r#"listeners: [{{ name: plain, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  a:
    endpoints: ["{a}"]
    healthCheck: {{ http: {{ path: /healthz }}, interval: 20ms, jitter: 0s, unhealthyThreshold: 1, healthyThreshold: 1 }}
routes: [{{ name: r, rules: [{{ backendRefs: [{{ name: a }}] }}] }}]
"#
    );
    let dp = Dataplane::start(&cfg).await;
    let ep = a.to_string();
    let labels = [("backend", "a"), ("endpoint", ep.as_str())];
    scrape_until(&dp, "a passed check", |s| {
        s.sum("weir_backend_endpoint_healthy", &labels) == 1.0
            && s.sum(
                "weir_backend_health_checks_total",
                &[labels[0], labels[1], ("result", "success")],
            ) >= 1.0
    })
    .await;

    let c = client();
    let r = get(&c, &format!("http://{a}/?set_healthy=0")).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = scrape_until(&dp, "the endpoint unhealthy", |s| {
        s.sum("weir_backend_endpoint_healthy", &labels) == 0.0
    })
    .await;
    assert_eq!(s.sum("weir_backend_endpoint_available", &labels), 0.0);
    assert!(
        s.sum(
            "weir_backend_health_checks_total",
            &[labels[0], labels[1], ("result", "failure")]
        ) >= 1.0
    );
    // Traffic now fails with no_healthy_endpoint, counted by kind.
    let r = get(&c, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let s = scrape_idle(&dp).await;
    assert_eq!(
        s.sum(
            "weir_proxy_errors_total",
            &[
                ("route", "r"),
                ("backend", "a"),
                ("kind", "no_healthy_endpoint")
            ]
        ),
        1.0
    );

    let r = get(&c, &format!("http://{a}/?set_healthy=1")).await;
    assert_eq!(r.status, StatusCode::OK);
    scrape_until(&dp, "the endpoint healthy again", |s| {
        s.sum("weir_backend_endpoint_healthy", &labels) == 1.0
            && s.sum("weir_backend_endpoint_available", &labels) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_info_and_reloads_follow_put_config() {
    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dead = closed_port();
    let dp = Dataplane::start(&config("first", http, https, a, dead)).await;
    let (status, v) = dp.put_config(config("second", http, https, a, dead)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = dp.put_config("routes: [{ name: x }]").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let s = scrape(&dp).await;
    assert_eq!(s.sum("weir_config_info", &[("version", "second")]), 1.0);
    assert!(
        !s.has("weir_config_info", &[("version", "first")]),
        "{}",
        s.text
    );
    assert_eq!(
        s.sum("weir_config_reloads_total", &[("result", "success")]),
        2.0
    );
    assert_eq!(
        s.sum("weir_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert!(s.sum("weir_config_last_reload_success_timestamp_seconds", &[]) > 1.6e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_a_scrape_taken_under_load() {
    if std::env::var("WEIR_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("WEIR_SKIP_PROMTOOL=1: skipping the promtool check");
        return;
    }
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool not found: install Debian's `prometheus` package (scripts/ensure-deps.sh does), \
         or set WEIR_SKIP_PROMTOOL=1 to skip this test"
    );

    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dp = Dataplane::start(&config("load", http, https, a, closed_port())).await;
    // Some HTTP/3 and error traffic first, so those families have series too.
    let conn = h3(https).await;
    for path in ["/api/h3", "/nope"] {
        conn.request(
            Request::get(format!("https://127.0.0.1:{https}{path}"))
                .body(Bytes::new())
                .unwrap(),
        )
        .await
        .expect("h3 request");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (stop, done) = (stop.clone(), done.clone());
        let c = if i % 2 == 0 { client() } else { h2c_client() };
        let base = format!("http://127.0.0.1:{http}");
        workers.push(tokio::spawn(async move {
            let paths = ["/api/load", "/api/load?bytes=100000", "/nope", "/broken"];
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let r = try_send(&c, get_req(&format!("{base}{}", paths[n % 4]), &[])).await;
                assert!(r.is_ok(), "load request failed: {r:?}");
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Scrape while the load runs (after it has warmed up).
    let s = scrape_until(&dp, "load running", |s| {
        s.sum("weir_requests_total", &[("protocol", "h2")]) >= 200.0
            && s.sum("weir_requests_total", &[("protocol", "h1")]) >= 200.0
    })
    .await;
    let during = scrape(&dp).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("load worker");
    }
    assert!(done.load(Ordering::Relaxed) >= 400);
    assert!(s.has("weir_proxy_errors_total", &[("kind", "no_route")]));

    let text = during.text.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        child.wait_with_output().expect("promtool output")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        during.text
    );
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_goes_upstream_and_into_the_access_log() {
    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dp = Dataplane::start_with(
        &config("trace", http, https, a, closed_port()),
        Opts {
            log_filter: Some("warn,weir::access=info".into()),
            args: vec!["--log-format".into(), "json".into()],
            ..Opts::default()
        },
    )
    .await;
    let c = client();
    let url = format!("http://127.0.0.1:{http}/api/traced?q=secret");

    // A valid incoming trace: same trace id upstream, the proxy's span as the parent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = send(
        &c,
        get_req(
            &url,
            &[
                ("traceparent", &incoming),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("host", "Api.Example:8080"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = r.json();
    let tp = seen["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace);
    assert_eq!(parts[2].len(), 16);
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the upstream's parent must be the proxy's span"
    );
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01");
    assert_eq!(seen["headers"]["tracestate"], "congo=t61rcWkgMzE");
    let proxy_span = parts[2].to_string();

    // No incoming trace: a new one is started, sampled.
    let r = get(&c, &url).await;
    let tp = r.json()["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream")
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1].len(), 32);
    assert_ne!(parts[1], trace);
    assert_ne!(parts[1], "0".repeat(32));
    assert_eq!(parts[3], "01");
    let new_trace = parts[1].to_string();

    // An invalid one is replaced, and its tracestate dropped.
    let r = send(
        &c,
        get_req(
            &url,
            &[
                ("traceparent", "00-nothex-00f067aa0ba902b7-01"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
        ),
    )
    .await;
    let h = &r.json()["headers"];
    assert!(h.get("tracestate").is_none(), "{h}");
    assert_ne!(h["traceparent"].as_str().unwrap_or_default()[3..35], *trace);

    // The access log lines carry the trace ids and the fields; no query string.
    let log = dp.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "weir::access")
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    let first = lines
        .iter()
        .find(|v| v["trace_id"] == trace)
        .unwrap_or_else(|| panic!("no access line with trace id {trace}:\n{log}"));
    assert_eq!(first["span_id"], proxy_span.as_str());
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "api.example");
    assert_eq!(first["path"], "/api/traced");
    assert_eq!(first["protocol"], "h1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "api");
    assert_eq!(first["backend"], "a");
    assert_eq!(first["upstream"], a.to_string());
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["bytes_in"], 0);
    assert!(first["bytes_out"].as_u64().unwrap_or(0) > 0, "{first}");
    assert!(first["duration_ms"].as_f64().is_some(), "{first}");
    assert!(first["client"]
        .as_str()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert_eq!(first["end"], "complete");
    assert!(lines.iter().any(|v| v["trace_id"] == new_trace.as_str()));
    assert!(!log.contains("secret"), "query strings stay out of the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_and_access_log_switch_at_runtime() {
    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dp = Dataplane::start_with(
        &config("switch", http, https, a, closed_port()),
        Opts {
            token: Some("tok".into()),
            log_filter: Some("warn".into()),
            args: vec!["--log-format".into(), "json".into()],
            ..Opts::default()
        },
    )
    .await;
    let c = client();
    let url = |n: u32| format!("http://127.0.0.1:{http}/api/n{n}");
    let access_lines = |dp: &Dataplane, path: &str| {
        dp.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "weir::access" && v["path"] == path)
            .count()
    };
    let admin = |method: http::Method, q: &str, token: Option<&str>| {
        let mut b = Request::builder()
            .method(method)
            .uri(dp.admin_url(&format!("/logging{q}")));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(empty()).unwrap()
    };

    assert_eq!(get(&c, &url(1)).await.status, StatusCode::OK);
    assert_eq!(
        access_lines(&dp, "/api/n1"),
        0,
        "level warn hides access logs"
    );

    let r = send(&c, admin(http::Method::PUT, "?level=info", None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&c, admin(http::Method::PUT, "?level=info[", Some("tok"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let r = send(&c, admin(http::Method::PUT, "?level=info", Some("tok"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["level"], "info");
    assert_eq!(get(&c, &url(2)).await.status, StatusCode::OK);
    assert_eq!(access_lines(&dp, "/api/n2"), 1, "{}", dp.log());

    let r = send(&c, admin(http::Method::PUT, "?access=off", Some("tok"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["accessLog"], false);
    assert_eq!(get(&c, &url(3)).await.status, StatusCode::OK);
    assert_eq!(access_lines(&dp, "/api/n3"), 0);
    let r = send(&c, admin(http::Method::GET, "", Some("tok"))).await;
    assert_eq!(r.json()["level"], "info");
    assert_eq!(r.json()["accessLog"], false);

    // /metrics needs no token, like the probes.
    let r = get(&c, &dp.admin_url("/metrics")).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_flag_turns_it_off_from_the_start() {
    let a = echo("a").await;
    let (http, https) = (free_port(), free_port());
    let dp = Dataplane::start_with(
        &config("off", http, https, a, closed_port()),
        Opts {
            log_filter: Some("info".into()),
            args: vec!["--access-log".into(), "off".into()],
            ..Opts::default()
        },
    )
    .await;
    let c = client();
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{http}/api/quiet"))
            .await
            .status,
        StatusCode::OK
    );
    // The request is counted but not logged.
    let s = scrape_idle(&dp).await;
    assert_eq!(s.sum("weir_requests_total", &[("route", "api")]), 1.0);
    assert!(!dp.log().contains("/api/quiet"), "{}", dp.log());
}
