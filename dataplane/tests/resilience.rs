//! Backend resilience on real sockets: active health checks (thresholds counted exactly,
//! recovery, reload survival), balancers, outlier ejection, circuit breaker, retries and their
//! budget, concurrency limit, credential injection, `GET /backends` and `/health`, and a
//! failover measurement under load.
//!
//! Assertions are on counts and states; waits only have the hang guard as a deadline.

mod common;
use common::*;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A controllable backend: fixed status and delay, requests to /hold wait for the gate, counts.

struct Ctl {
    name: String,
    requests: AtomicU64,
    status: AtomicU16,
    delay_ms: AtomicU64,
    gate: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone)]
struct TestServer {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
}

impl TestServer {
    async fn start(name: &str) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Ctl {
            name: name.to_string(),
            requests: AtomicU64::new(0),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            gate: tokio::sync::watch::channel(false).0,
        });
        let c = ctl.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(req, c.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer { addr, ctl }
    }
    fn requests(&self) -> u64 {
        self.ctl.requests.load(Ordering::SeqCst)
    }
    fn set_status(&self, s: u16) {
        self.ctl.status.store(s, Ordering::SeqCst);
    }
    fn set_delay_ms(&self, ms: u64) {
        self.ctl.delay_ms.store(ms, Ordering::SeqCst);
    }
    fn open_gate(&self) {
        let _ = self.ctl.gate.send(true);
    }
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    ctl: Arc<Ctl>,
) -> Result<http::Response<http_body_util::Full<Bytes>>, Infallible> {
    ctl.requests.fetch_add(1, Ordering::SeqCst);
    let hold = req.uri().path().starts_with("/hold");
    let _ = req.into_body().collect().await;
    if hold {
        let mut rx = ctl.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
    let delay = ctl.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = ctl.status.load(Ordering::SeqCst);
    Ok(http::Response::builder()
        .status(status)
        .header("x-server", ctl.name.as_str())
        .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
        .unwrap())
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn listeners(port: u16) -> Value {
    json!([{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}])
}

/// One route per backend: `/<name>/...` goes to backend `<name>` (prefix stripped).
fn routes(names: &[&str]) -> Value {
    let rules: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/{n}")}}],
                "filters": {"path": {"stripPrefix": format!("/{n}")}},
                "backendRefs": [{"name": n}],
            })
        })
        .collect();
    json!([{"name": "r", "rules": rules}])
}

async fn admin_json(dp: &Dataplane, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(dp.admin_url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = send(&client(), req.body(empty()).unwrap()).await;
    (r.status, r.json())
}

async fn backends(dp: &Dataplane) -> Value {
    let (status, v) = admin_json(dp, "/backends", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

fn endpoint<'a>(doc: &'a Value, backend: &str, addr: SocketAddr) -> &'a Value {
    doc["backends"][backend]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {addr} in backend {backend}: {doc:#}"))
}

async fn echo_stats(addr: SocketAddr) -> Value {
    get(&client(), &format!("http://{addr}/?stats=1"))
        .await
        .json()
}

async fn set_healthy(addr: SocketAddr, healthy: bool) {
    let v = u8::from(healthy);
    let r = get(&client(), &format!("http://{addr}/?set_healthy={v}")).await;
    assert_eq!(r.status, StatusCode::OK);
}

struct Deadline(tokio::time::Instant, &'static str);

impl Deadline {
    fn new(what: &'static str) -> Deadline {
        Deadline(tokio::time::Instant::now() + HANG_GUARD, what)
    }
    async fn tick(&self) {
        assert!(
            tokio::time::Instant::now() < self.0,
            "gave up waiting: {}",
            self.1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn health_check(interval: &str, unhealthy: u32, healthy: u32) -> Value {
    json!({
        "http": {"path": "/healthz"},
        "interval": interval,
        "jitter": "0s",
        "timeout": "2s",
        "unhealthyThreshold": unhealthy,
        "healthyThreshold": healthy,
    })
}

// ---------------------------------------------------------------------------------------------

/// An endpoint leaves rotation after exactly `unhealthyThreshold` failed checks and rejoins
/// after exactly `healthyThreshold` passed ones; a backend with no healthy endpoint fails fast;
/// panic mode routes anyway; `/health` summarises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_thresholds_are_exact_and_endpoints_recover() {
    const UNHEALTHY: u64 = 3;
    const HEALTHY: u64 = 2;
    let a = echo("a").await;
    let b = echo("b").await;
    let c = echo("c").await;
    let port = free_port();
    let hc = health_check("20ms", UNHEALTHY as u32, HEALTHY as u32);
    let mut panicky = hc.clone();
    panicky["panicMode"] = json!(true);
    let config = json!({
        "version": "hc-1",
        "listeners": listeners(port),
        "backends": {
            "pair": {"endpoints": [a.to_string(), b.to_string()], "healthCheck": hc,
                     "loadBalancer": {"type": "roundRobin"}},
            "solo": {"endpoints": [c.to_string()], "healthCheck": hc},
            "panicky": {"endpoints": [c.to_string()], "healthCheck": panicky},
        },
        "routes": routes(&["pair", "solo", "panicky"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Checks run and pass.
    let d = Deadline::new("first passed check of a");
    loop {
        let doc = backends(&dp).await;
        if endpoint(&doc, "pair", a)["activeCheck"]["checksPassed"].as_u64() >= Some(1) {
            break;
        }
        d.tick().await;
    }
    let (status, h) = admin_json(&dp, "/health", None).await;
    assert_eq!(
        (status, h["status"].as_str()),
        (StatusCode::OK, Some("healthy")),
        "{h}"
    );
    assert_eq!(h["total_backends"], 3);

    // a fails its checks: every observation must satisfy healthy == (failures < threshold),
    // and the dataplane cannot have counted more failures than the echo answered.
    set_healthy(a, false).await;
    let mut observed_below = std::collections::BTreeSet::new();
    let d = Deadline::new("a marked unhealthy");
    loop {
        let doc = backends(&dp).await;
        let ep = endpoint(&doc, "pair", a);
        let answered = echo_stats(a).await["healthChecksFailed"].as_u64().unwrap();
        let failures = ep["activeCheck"]["consecutiveFailures"].as_u64().unwrap();
        let healthy = ep["healthy"].as_bool().unwrap();
        assert!(
            failures <= answered,
            "counted {failures} failures, echo answered {answered}"
        );
        assert_eq!(
            healthy,
            failures < UNHEALTHY,
            "after {failures} consecutive failed checks: {ep:#}"
        );
        assert_eq!(ep["available"], ep["healthy"]);
        if !healthy {
            assert_eq!(ep["activeCheck"]["transitions"], 1);
            assert_eq!(ep["activeCheck"]["lastCheck"]["result"], "failure");
            assert_eq!(ep["activeCheck"]["lastCheck"]["detail"], "status 503");
            assert_eq!(doc["backends"]["pair"]["healthyEndpoints"], 1);
            assert_eq!(doc["backends"]["pair"]["status"], "degraded");
            break;
        }
        observed_below.insert(failures);
        d.tick().await;
    }
    eprintln!("failure counts observed while still healthy: {observed_below:?}");
    // Out of rotation: everything goes to b.
    let before = echo_stats(a).await["requests"].as_u64().unwrap();
    for _ in 0..10 {
        let r = send(&http, get_req(&url("/pair/x"), &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-echo-server"), Some("b"));
    }
    assert_eq!(echo_stats(a).await["requests"].as_u64().unwrap(), before);
    let (status, h) = admin_json(&dp, "/health", None).await;
    assert_eq!(
        (status, h["status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "{h}"
    );

    // Recovery after exactly healthyThreshold passed checks.
    set_healthy(a, true).await;
    let d = Deadline::new("a healthy again");
    loop {
        let doc = backends(&dp).await;
        let ep = endpoint(&doc, "pair", a);
        let successes = ep["activeCheck"]["consecutiveSuccesses"].as_u64().unwrap();
        let healthy = ep["healthy"].as_bool().unwrap();
        assert_eq!(
            healthy,
            successes >= HEALTHY,
            "after {successes} consecutive passed checks: {ep:#}"
        );
        if healthy {
            assert_eq!(ep["activeCheck"]["transitions"], 2);
            break;
        }
        d.tick().await;
    }
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let r = send(&http, get_req(&url("/pair/x"), &[])).await;
        *seen
            .entry(r.header("x-echo-server").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "round robin again: {seen:?}");

    // The only endpoint of a backend fails: 503 no_healthy_endpoint, without trying it;
    // panic mode still routes to it.
    set_healthy(c, false).await;
    let d = Deadline::new("c unhealthy in both backends");
    loop {
        let doc = backends(&dp).await;
        if endpoint(&doc, "solo", c)["healthy"] == false
            && endpoint(&doc, "panicky", c)["healthy"] == false
        {
            break;
        }
        d.tick().await;
    }
    let before = echo_stats(c).await["requests"].as_u64().unwrap();
    let r = send(&http, get_req(&url("/solo/x"), &[])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "no_healthy_endpoint");
    assert_eq!(echo_stats(c).await["requests"].as_u64().unwrap(), before);
    let r = send(&http, get_req(&url("/panicky/x"), &[])).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "panic mode routes to unhealthy endpoints"
    );
    assert_eq!(r.header("x-echo-server"), Some("c"));
    let (status, h) = admin_json(&dp, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["unhealthy_backends"], 2, "{h}");
    assert_eq!(h["healthy_backends"], 1, "{h}");
}

/// A reload that leaves an endpoint and its check unchanged keeps its health state (no new
/// checker, counters continue); a removed endpoint's checker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_reload_and_removed_endpoints_stop_being_checked() {
    let a = echo("a").await;
    let b = echo("b").await;
    let port = free_port();
    let hc = health_check("20ms", 2, 2);
    let config = |version: &str, eps: Vec<String>, extra_route: bool| {
        let mut names = vec!["api"];
        if extra_route {
            names.push("other");
        }
        json!({
            "version": version,
            "listeners": listeners(port),
            "backends": {
                "api": {"endpoints": eps, "healthCheck": hc},
                "other": {"endpoints": [b.to_string()]},
            },
            "routes": routes(&names),
        })
        .to_string()
    };
    let dp = Dataplane::start(&config("v1", vec![a.to_string(), b.to_string()], false)).await;
    set_healthy(a, false).await;
    let d = Deadline::new("a unhealthy");
    loop {
        if endpoint(&backends(&dp).await, "api", a)["healthy"] == false {
            break;
        }
        d.tick().await;
    }
    let failed_before = endpoint(&backends(&dp).await, "api", a)["activeCheck"]["checksFailed"]
        .as_u64()
        .unwrap();

    // Reload with an unrelated change.
    let (status, v) = dp
        .put_config(config("v2", vec![a.to_string(), b.to_string()], true))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let doc = backends(&dp).await;
    assert_eq!(doc["version"], "v2");
    let ep = endpoint(&doc, "api", a);
    assert_eq!(ep["healthy"], false, "state lost on reload: {ep:#}");
    assert_eq!(ep["activeCheck"]["transitions"], 1);
    assert!(ep["activeCheck"]["checksFailed"].as_u64().unwrap() >= failed_before);
    // One checker per endpoint, not two: the echo's count and ours move together.
    let s0 = echo_stats(a).await["healthChecks"].as_u64().unwrap();
    let c0 = ep["activeCheck"]["checksFailed"].as_u64().unwrap()
        + ep["activeCheck"]["checksPassed"].as_u64().unwrap();
    let d = Deadline::new("20 more checks of b");
    let b0 = echo_stats(b).await["healthChecks"].as_u64().unwrap();
    while echo_stats(b).await["healthChecks"].as_u64().unwrap() < b0 + 20 {
        d.tick().await;
    }
    let s1 = echo_stats(a).await["healthChecks"].as_u64().unwrap();
    let ep = endpoint(&backends(&dp).await, "api", a).clone();
    let c1 = ep["activeCheck"]["checksFailed"].as_u64().unwrap()
        + ep["activeCheck"]["checksPassed"].as_u64().unwrap();
    let served = s1 - s0;
    let counted = c1 - c0;
    assert!(
        served <= counted + 2,
        "echo answered {served} checks but the dataplane counted {counted}: a second checker?"
    );

    // Remove a: its checks stop (at most one in flight finishes) while b's go on.
    let (status, v) = dp.put_config(config("v3", vec![b.to_string()], true)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a0 = echo_stats(a).await["healthChecks"].as_u64().unwrap();
    let b0 = echo_stats(b).await["healthChecks"].as_u64().unwrap();
    let d = Deadline::new("20 more checks of b");
    while echo_stats(b).await["healthChecks"].as_u64().unwrap() < b0 + 20 {
        d.tick().await;
    }
    let a1 = echo_stats(a).await["healthChecks"].as_u64().unwrap();
    assert!(a1 <= a0 + 1, "removed endpoint still checked: {a0} -> {a1}");
}

/// Least outstanding requests: while one endpoint holds a request, new ones go to the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_endpoint() {
    let x = TestServer::start("x").await;
    let y = TestServer::start("y").await;
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"lr": {
            "endpoints": [x.addr.to_string(), y.addr.to_string()],
            "loadBalancer": {"type": "leastRequest"},
        }},
        "routes": routes(&["lr"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/lr");
    let held = {
        let http = http.clone();
        let url = format!("{url}/hold");
        tokio::spawn(async move { send(&http, get_req(&url, &[])).await })
    };
    let d = Deadline::new("held request reached a server");
    while x.requests() + y.requests() < 1 {
        d.tick().await;
    }
    let (busy, idle) = if x.requests() == 1 {
        (&x, &y)
    } else {
        (&y, &x)
    };
    let doc = backends(&dp).await;
    assert_eq!(endpoint(&doc, "lr", busy.addr)["inFlight"], 1, "{doc:#}");
    for _ in 0..20 {
        let r = send(&http, get_req(&format!("{url}/fast"), &[])).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(busy.requests(), 1, "the busy endpoint got new requests");
    assert_eq!(idle.requests(), 20);
    busy.open_gate();
    idle.open_gate();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let d = Deadline::new("in-flight back to 0");
    loop {
        let doc = backends(&dp).await;
        if endpoint(&doc, "lr", busy.addr)["inFlight"] == 0 {
            break;
        }
        d.tick().await;
    }
}

/// P2C over peak-EWMA moves load away from a slow endpoint (round robin would split 50/50).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_shifts_load_away_from_a_slow_endpoint() {
    let fast = TestServer::start("fast").await;
    let slow = TestServer::start("slow").await;
    slow.set_delay_ms(150);
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        // p2cEwma is the default balancer.
        "backends": {"p2c": {"endpoints": [fast.addr.to_string(), slow.addr.to_string()]}},
        "routes": routes(&["p2c"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    assert_eq!(
        backends(&dp).await["backends"]["p2c"]["loadBalancer"],
        "p2cEwma"
    );
    const TOTAL: u64 = 200;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/p2c/x");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..TOTAL / 4 {
                assert_eq!(send(&http, get_req(&url, &[])).await.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (fast.requests(), slow.requests());
    eprintln!("p2cEwma: fast endpoint {f} requests, slow (150ms) endpoint {s}");
    assert_eq!(f + s, TOTAL);
    assert!(s * 10 < TOTAL, "slow endpoint got {s} of {TOTAL}");
}

/// Consecutive 5xx eject an endpoint (exactly after the threshold); no more than
/// maxEjectionPercent of the endpoints are ejected at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_respects_the_cap() {
    let good = TestServer::start("good").await;
    let bad1 = TestServer::start("bad1").await;
    let bad2 = TestServer::start("bad2").await;
    bad1.set_status(500);
    bad2.set_status(500);
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"od": {
            "endpoints": [good.addr.to_string(), bad1.addr.to_string(), bad2.addr.to_string()],
            "loadBalancer": {"type": "roundRobin"},
            "retries": {"attempts": 1},
            "outlierDetection": {
                "consecutive5xx": 3,
                "baseEjectionTime": "1h",
                "maxEjectionTime": "2h",
                "maxEjectionPercent": 50,
            },
        }},
        "routes": routes(&["od"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/od/x");
    let mut statuses: HashMap<u16, u64> = HashMap::new();
    for _ in 0..60 {
        let r = send(&http, get_req(&url, &[])).await;
        *statuses.entry(r.status.as_u16()).or_default() += 1;
    }
    let doc = backends(&dp).await;
    let ejected: Vec<&Value> = doc["backends"]["od"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["ejectedUntil"].is_null())
        .collect();
    assert_eq!(ejected.len(), 1, "cap is 50% of 3 = 1: {doc:#}");
    let (first, second) = if ejected[0]["address"] == bad1.addr.to_string() {
        (&bad1, &bad2)
    } else {
        (&bad2, &bad1)
    };
    // The ejected one got exactly the threshold's worth of requests.
    assert_eq!(first.requests(), 3, "statuses {statuses:?}");
    assert_eq!(ejected[0]["available"], false);
    assert_eq!(ejected[0]["ejections"], 1);
    assert_eq!(ejected[0]["healthy"], true, "active health is separate");
    // The other bad one keeps failing but stays in (the cap), sharing with the good one.
    assert!(second.requests() > 3);
    assert_eq!(good.requests() + first.requests() + second.requests(), 60);
    assert_eq!(
        endpoint(&doc, "od", second.addr)["ejectedUntil"],
        Value::Null
    );
}

/// Closed → open after consecutive failures (requests then fail fast without reaching the
/// upstream) → half-open → a successful probe closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_and_half_open_probe_closes_it() {
    let s = TestServer::start("s").await;
    s.set_status(503);
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"cb": {
            "endpoints": [s.addr.to_string()],
            "retries": {"attempts": 1},
            "circuitBreaker": {"consecutiveFailures": 3, "openDuration": "3s", "halfOpenProbes": 1},
        }},
        "routes": routes(&["cb"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/cb/x");
    for i in 0..3 {
        let r = send(&http, get_req(&url, &[])).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "try {i}");
        assert_eq!(r.header("x-server"), Some("s"), "the upstream's own 503");
    }
    let r = send(&http, get_req(&url, &[])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "circuit_open");
    assert_eq!(s.requests(), 3, "an open breaker sends nothing upstream");
    let doc = backends(&dp).await;
    let cb = &doc["backends"]["cb"]["circuitBreaker"];
    assert_eq!(cb["state"], "open", "{doc:#}");
    assert_eq!(cb["timesOpened"], 1);
    assert_eq!(doc["backends"]["cb"]["status"], "unhealthy");

    // The upstream recovers; after openDuration one probe goes through and closes the breaker.
    s.set_status(200);
    let d = Deadline::new("breaker half-open");
    while backends(&dp).await["backends"]["cb"]["circuitBreaker"]["state"] != "halfOpen" {
        d.tick().await;
    }
    let r = send(&http, get_req(&url, &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.requests(), 4);
    let doc = backends(&dp).await;
    assert_eq!(doc["backends"]["cb"]["circuitBreaker"]["state"], "closed");
    for _ in 0..5 {
        assert_eq!(send(&http, get_req(&url, &[])).await.status, StatusCode::OK);
    }
}

/// Every endpoint fails: retries happen, but the budget caps them far below attempts × requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_under_total_failure() {
    let a = TestServer::start("a").await;
    let b = TestServer::start("b").await;
    a.set_status(503);
    b.set_status(503);
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"rb": {
            "endpoints": [a.addr.to_string(), b.addr.to_string()],
            "retries": {
                "attempts": 3,
                "retryOn": {"statuses": [503]},
                "backoff": {"base": "1ms", "max": "2ms"},
                "budget": {"ratio": 0.2, "minPerSecond": 0},
            },
        }},
        "routes": routes(&["rb"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    const REQUESTS: u64 = 50;
    for _ in 0..REQUESTS {
        let r = send(
            &http,
            get_req(&format!("http://127.0.0.1:{port}/rb/x"), &[]),
        )
        .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.json_or_upstream(), "upstream");
    }
    let upstream = a.requests() + b.requests();
    let retries = upstream - REQUESTS;
    let doc = backends(&dp).await;
    eprintln!(
        "{REQUESTS} requests, {retries} retries (without a budget: {}); budget view {}",
        REQUESTS * 2,
        doc["backends"]["rb"]["retryBudget"]
    );
    assert!(retries >= 1, "no retry happened at all");
    assert!(
        retries <= REQUESTS / 5 + 2,
        "{retries} retries for {REQUESTS} requests with a 20% budget"
    );
}

trait UpstreamOrProxy {
    fn json_or_upstream(&self) -> &'static str;
}

impl UpstreamOrProxy for Resp {
    /// "upstream" when the reply came from the test server, "proxy" when Weir made it.
    fn json_or_upstream(&self) -> &'static str {
        if self.header("x-server").is_some() {
            "upstream"
        } else {
            "proxy"
        }
    }
}

/// A POST that reached the upstream is never retried (5xx or reset); one that could not
/// connect is, even with a body far over the replay cap; a GET is retried on 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_retried_only_when_never_sent() {
    let failing = TestServer::start("failing").await;
    failing.set_status(503);
    let live = echo("live").await;
    let dead = free_port(); // nothing listens
                            // Accepts, reads a little, hangs up without answering.
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let closer_conns = Arc::new(AtomicU64::new(0));
    let cc = closer_conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = closer.accept().await {
            cc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    let port = free_port();
    let retries = json!({
        "attempts": 3,
        "retryOn": {"connectError": true, "reset": true, "statuses": [503]},
        "backoff": {"base": "1ms", "max": "1ms"},
    });
    let config = json!({
        "listeners": listeners(port),
        "backends": {
            "failing": {"endpoints": [failing.addr.to_string()], "retries": retries},
            "closer": {"endpoints": [closer_addr.to_string()], "retries": retries},
            "half": {"endpoints": [format!("127.0.0.1:{dead}"), live.to_string()],
                     "loadBalancer": {"type": "roundRobin"}, "retries": retries},
        },
        "routes": routes(&["failing", "closer", "half"]),
    });
    let _dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let post = |u: String, body: Vec<u8>| Request::post(u).body(full(body)).unwrap();

    // 503 to a POST: sent once.
    let r = send(&http, post(url("/failing/x"), b"hello".to_vec())).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failing.requests(),
        1,
        "POST retried after reaching the upstream"
    );
    // 503 to a GET: tried 3 times.
    let r = send(&http, get_req(&url("/failing/x"), &[])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.requests(), 4, "GET should be tried 3 times");
    // PUT is idempotent: retried too, with its (small) body replayed.
    let r = send(
        &http,
        Request::put(url("/failing/x"))
            .body(full(b"v".to_vec()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.requests(), 7);

    // Connection reset after the POST was sent: not retried.
    let r = send(&http, post(url("/closer/x"), b"hello".to_vec())).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["error"], "upstream_error");
    assert_eq!(
        closer_conns.load(Ordering::SeqCst),
        1,
        "POST retried after a reset"
    );
    // The same for a GET is retried.
    let r = send(&http, get_req(&url("/closer/x"), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(closer_conns.load(Ordering::SeqCst), 4);

    // Connect errors are retried for POST, even a 1 MiB body (none of it was sent).
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let want_sha = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for i in 0..4 {
        let r = send(&http, post(url("/half/x"), big.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "POST {i}: {:?}", r.body);
        let j = r.json();
        assert_eq!(j["server"], "live");
        assert_eq!(j["bodyBytes"], 1_048_576);
        assert_eq!(j["bodySha256"], want_sha.as_str());
    }
    assert_eq!(echo_stats(live).await["requests"], 4);
}

/// maxConcurrentRequests: an excess request waits queueTimeout for a slot, then gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_queues_then_rejects() {
    let s = TestServer::start("s").await;
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"lim": {
            "endpoints": [s.addr.to_string()],
            "maxConcurrentRequests": 1,
            "queueTimeout": "100ms",
        }},
        "routes": routes(&["lim"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;
    let http = client();
    let url = format!("http://127.0.0.1:{port}/lim");
    let held = {
        let (http, url) = (http.clone(), format!("{url}/hold"));
        tokio::spawn(async move { send(&http, get_req(&url, &[])).await })
    };
    let d = Deadline::new("held request upstream");
    while s.requests() < 1 {
        d.tick().await;
    }
    let doc = backends(&dp).await;
    assert_eq!(
        doc["backends"]["lim"]["concurrency"],
        json!({"inUse": 1, "max": 1})
    );
    let r = send(&http, get_req(&format!("{url}/x"), &[])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"], "backend_overloaded");
    assert_eq!(s.requests(), 1);
    s.open_gate();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let r = send(&http, get_req(&format!("{url}/x"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The credential header reaches the upstream on every request (replacing the client's), and
/// is shown neither by GET /config nor in logs. Also the exact GET /backends shape, behind the
/// token, and /health without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_injected_redacted_and_backends_document_shape() {
    const SECRET: &str = "Bearer s3cr3t-value";
    let e = echo("e").await;
    let port = free_port();
    let config = json!({
        "version": "cred-1",
        "listeners": listeners(port),
        "backends": {"api": {
            "endpoints": [e.to_string()],
            "credential": {"header": "authorization", "value": SECRET},
            "healthCheck": health_check("50ms", 2, 1),
            "circuitBreaker": {},
            "outlierDetection": {},
        }},
        "routes": routes(&["api"]),
    });
    let dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            token: Some("tok".into()),
            ..Opts::default()
        },
    )
    .await;
    let http = client();
    for _ in 0..2 {
        let r = send(
            &http,
            get_req(
                &format!("http://127.0.0.1:{port}/api/x"),
                &[("authorization", "Bearer from-client")],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["headers"]["authorization"], SECRET);
    }
    let (status, cfg) = dp.get_config(Some("tok")).await;
    assert_eq!(status, StatusCode::OK);
    let shown = cfg.to_string();
    assert!(
        !shown.contains("s3cr3t"),
        "GET /config shows the credential: {shown}"
    );
    assert_eq!(
        cfg["snapshot"]["backends"]["api"]["credential"]["value"],
        "<redacted>"
    );

    // /backends needs the token; /health does not.
    let (status, _) = admin_json(&dp, "/backends", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, h) = admin_json(&dp, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut keys: Vec<&str> = h.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "degraded_backends",
            "healthy_backends",
            "status",
            "total_backends",
            "unhealthy_backends",
            "version"
        ]
    );

    let d = Deadline::new("a check recorded");
    let doc = loop {
        let (status, doc) = admin_json(&dp, "/backends", Some("tok")).await;
        assert_eq!(status, StatusCode::OK);
        if !doc["backends"]["api"]["endpoints"][0]["activeCheck"]["lastCheck"].is_null() {
            break doc;
        }
        d.tick().await;
    };
    assert_eq!(doc["version"], "cred-1");
    let b = &doc["backends"]["api"];
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(b),
        [
            "circuitBreaker",
            "concurrency",
            "endpoints",
            "healthyEndpoints",
            "loadBalancer",
            "retryBudget",
            "status",
            "totalEndpoints"
        ]
    );
    assert_eq!(b["status"], "healthy");
    assert_eq!(
        (b["healthyEndpoints"].as_u64(), b["totalEndpoints"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(b["concurrency"], Value::Null);
    assert_eq!(
        keys(&b["circuitBreaker"]),
        [
            "consecutiveFailures",
            "openedAt",
            "state",
            "timesOpened",
            "windowFailures",
            "windowRequests"
        ]
    );
    assert_eq!(b["circuitBreaker"]["state"], "closed");
    assert_eq!(keys(&b["retryBudget"]), ["requests", "retries", "window"]);
    assert_eq!(b["retryBudget"]["requests"], 2);
    let ep = &b["endpoints"][0];
    assert_eq!(
        keys(ep),
        [
            "activeCheck",
            "address",
            "available",
            "connectionsCreated",
            "connectionsOpen",
            "ejectedUntil",
            "ejections",
            "healthy",
            "inFlight",
            "latencyEwmaMs",
            "requests",
            "weight"
        ]
    );
    assert_eq!(ep["address"], e.to_string());
    assert_eq!(ep["requests"], 2);
    // Two requests over keep-alive: one connection, two if the second raced the first's
    // return to the pool.
    let conns = ep["connectionsCreated"].as_u64().unwrap();
    assert!((1..=2).contains(&conns), "connectionsCreated {conns}");
    assert_eq!(ep["inFlight"], 0);
    assert_eq!(ep["weight"], 1);
    assert_eq!(
        keys(&ep["activeCheck"]),
        [
            "checksFailed",
            "checksPassed",
            "consecutiveFailures",
            "consecutiveSuccesses",
            "lastCheck",
            "transitions"
        ]
    );
    let last = &ep["activeCheck"]["lastCheck"];
    assert_eq!(last["result"], "success");
    assert_eq!(last["detail"], "status 200");
    assert!(
        last["at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "RFC 3339 time: {last}"
    );
    assert!(!dp.log().contains("s3cr3t"), "credential in the logs");
}

/// The failover measurement: 3 `weir-echo` processes under steady load through Weir, one is
/// killed (SIGKILL). Prints failed client requests (retries + passive ejection on) and how long
/// until the endpoint was out of rotation and marked unhealthy by active checks. Figures are
/// printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_an_endpoint_process_dies() {
    const ECHO_BIN: &str = env!("CARGO_BIN_EXE_weir-echo");
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = std::process::Command::new(ECHO_BIN)
            .args(["--listen", &addr.to_string(), "--name", &format!("e{i}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn weir-echo");
        procs.push(child);
        addrs.push(addr);
    }
    struct Reap(Vec<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut procs = Reap(procs);
    for a in &addrs {
        let d = Deadline::new("weir-echo listening");
        while tokio::net::TcpStream::connect(a).await.is_err() {
            d.tick().await;
        }
    }
    let port = free_port();
    let config = json!({
        "listeners": listeners(port),
        "backends": {"fo": {
            "endpoints": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "healthCheck": health_check("1s", 3, 2),
            "outlierDetection": {"consecutiveLocalFailures": 1, "baseEjectionTime": "30s"},
            "retries": {"attempts": 3, "backoff": {"base": "1ms", "max": "5ms"}},
        }},
        "routes": routes(&["fo"]),
    });
    let dp = Dataplane::start(&config.to_string()).await;

    let mut cfg = weir_bench::LoadConfig::new(
        format!("http://127.0.0.1:{port}/fo/x"),
        weir_bench::Protocol::H1,
    );
    cfg.connections = 8;
    cfg.duration = Some(Duration::from_secs(6));
    cfg.timeout = Duration::from_secs(10);
    let load = tokio::task::spawn_blocking(move || weir_bench::load::run(&cfg));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = addrs[1];
    procs.0[1].kill().expect("kill weir-echo");
    let killed = Instant::now();
    let _ = procs.0[1].wait();
    let mut out_of_rotation = None;
    let mut unhealthy = None;
    let d = Deadline::new("victim marked unhealthy");
    while unhealthy.is_none() {
        let doc = backends(&dp).await;
        let ep = endpoint(&doc, "fo", victim);
        if out_of_rotation.is_none() && ep["available"] == false {
            out_of_rotation = Some(killed.elapsed());
        }
        if ep["healthy"] == false {
            unhealthy = Some(killed.elapsed());
        }
        d.tick().await;
    }
    let report = load.await.unwrap().expect("load run");
    let ok = report.status.get(&200).copied().unwrap_or(0);
    let failed = report.responses - ok + report.total_errors();
    let total = report.responses + report.total_errors();
    eprintln!(
        "failover: {total} requests, {failed} failed ({:.4}%), statuses {:?}, errors {:?}",
        failed as f64 * 100.0 / total.max(1) as f64,
        report.status,
        report.errors
    );
    eprintln!(
        "failover: out of rotation (passive ejection) {:?} after the kill; marked unhealthy (active checks, 3 × 1s) {:?} after",
        out_of_rotation.unwrap_or_default(),
        unhealthy.unwrap_or_default()
    );
    let doc = backends(&dp).await;
    eprintln!(
        "failover: retry budget {}",
        doc["backends"]["fo"]["retryBudget"]
    );
    assert!(ok > 0, "no request succeeded: {report:?}");
    assert!(out_of_rotation.is_some());
}
