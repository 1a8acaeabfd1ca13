//! The resilience part of `Backend`: health checks, outlier detection, balancer, breaker,
//! concurrency limit, retries, credential. Defaults, parsing, validation paths, redaction.

use weir_config::{load, parse_json, LoadBalancerType, RetryPolicy, StatusRange, REDACTED};

const FULL: &str = r#"
backends:
  api:
    endpoints: ["10.0.0.1:8080", { address: "10.0.0.2:8080", weight: 3 }]
    healthCheck:
      http: { path: /ready, expectedStatuses: ["200-299", 418], host: api.internal }
      interval: 2s
      jitter: 100ms
      timeout: 500ms
      unhealthyThreshold: 4
      healthyThreshold: 1
      panicMode: true
    outlierDetection:
      consecutive5xx: 7
      consecutiveGatewayErrors: 2
      consecutiveLocalFailures: 1
      baseEjectionTime: 10s
      maxEjectionTime: 1m
      maxEjectionPercent: 34
    loadBalancer: { type: leastRequest }
    circuitBreaker:
      consecutiveFailures: 0
      errorRatio: 0.5
      window: 30s
      minRequests: 10
      openDuration: 5s
      halfOpenProbes: 3
    maxConcurrentRequests: 100
    queueTimeout: 250ms
    retries:
      attempts: 3
      retryOn: { connectError: true, reset: false, timeout: true, statuses: [503, "500-502"] }
      perTryTimeout: 1s
      backoff: { base: 10ms, max: 1s }
      budget: { ratio: 0.1, minPerSecond: 5 }
    credential: { header: authorization, value: "Bearer s3cr3t" }
  plain:
    endpoints: ["10.0.0.3:80"]
    healthCheck: { tcp: {} }
"#;

#[test]
fn every_setting_parses() {
    let snap = load(FULL.as_bytes()).expect("valid");
    let b = &snap.backends["api"];
    let hc = b.health_check.as_ref().expect("healthCheck");
    let http = hc.http.as_ref().expect("http check");
    assert_eq!(http.path, "/ready");
    assert_eq!(
        http.expected_statuses,
        [
            StatusRange { from: 200, to: 299 },
            StatusRange { from: 418, to: 418 }
        ]
    );
    assert_eq!(http.host.as_deref(), Some("api.internal"));
    assert_eq!(hc.unhealthy_threshold, 4);
    assert!(hc.panic_mode);
    let od = b.outlier_detection.as_ref().expect("outlierDetection");
    assert_eq!(od.consecutive_5xx, 7);
    assert_eq!(od.max_ejection_percent, 34);
    assert_eq!(b.load_balancer.kind, LoadBalancerType::LeastRequest);
    let cb = b.circuit_breaker.as_ref().expect("circuitBreaker");
    assert_eq!(cb.error_ratio, Some(0.5));
    assert_eq!(cb.half_open_probes, 3);
    assert_eq!(b.max_concurrent_requests, Some(100));
    assert_eq!(b.queue_timeout.get().as_millis(), 250);
    assert_eq!(b.retries.attempts, 3);
    assert!(b.retries.retry_on.timeout && !b.retries.retry_on.reset);
    assert!(b.retries.retry_on.statuses.iter().any(|r| r.contains(501)));
    assert_eq!(b.retries.budget.min_per_second, 5);
    assert_eq!(
        b.credential.as_ref().map(|c| c.value.as_str()),
        Some("Bearer s3cr3t")
    );
    let plain = &snap.backends["plain"];
    let hc = plain.health_check.as_ref().expect("tcp check");
    assert!(hc.tcp.is_some() && hc.http.is_none());
    // Defaults of the check's timing.
    assert_eq!(hc.interval.get().as_secs(), 5);
    assert_eq!(hc.unhealthy_threshold, 3);
    assert_eq!(hc.healthy_threshold, 2);
    assert!(!hc.panic_mode);
}

#[test]
fn defaults_when_absent() {
    let snap = load(b"backends:\n  a: { endpoints: [\"10.0.0.1:80\"] }\n").expect("valid");
    let b = &snap.backends["a"];
    assert!(b.health_check.is_none());
    assert!(b.outlier_detection.is_none());
    assert!(b.circuit_breaker.is_none());
    assert!(b.credential.is_none());
    assert_eq!(b.max_concurrent_requests, None);
    assert_eq!(b.load_balancer.kind, LoadBalancerType::P2cEwma);
    assert_eq!(b.retries, RetryPolicy::default());
    assert_eq!(b.retries.attempts, 2);
    assert!(b.retries.retry_on.connect_error && b.retries.retry_on.reset);
    assert!(!b.retries.retry_on.timeout && b.retries.retry_on.statuses.is_empty());
    // Sections left at their defaults are not written back out.
    let json = serde_json::to_value(&snap).expect("serialize");
    assert_eq!(
        json["backends"]["a"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "endpoints".to_string(),
            "pool".into(),
            "protocol".into(),
            "timeouts".into()
        ])
    );
    // An empty section means "on, with defaults".
    let snap = load(b"backends:\n  a: { endpoints: [], outlierDetection: {}, circuitBreaker: {}, healthCheck: { http: {} } }\n")
        .expect("valid");
    let b = &snap.backends["a"];
    let od = b.outlier_detection.as_ref().expect("on");
    assert_eq!((od.consecutive_5xx, od.consecutive_local_failures), (5, 3));
    assert_eq!(
        b.circuit_breaker.as_ref().map(|c| c.consecutive_failures),
        Some(5)
    );
    let http = b
        .health_check
        .as_ref()
        .and_then(|h| h.http.as_ref())
        .expect("http");
    assert_eq!(http.path, "/healthz");
    assert!(http.expected_statuses[0].contains(204) && !http.expected_statuses[0].contains(301));
}

#[test]
fn round_trips_through_json() {
    let snap = load(FULL.as_bytes()).expect("valid");
    let json = serde_json::to_vec(&snap).expect("serialize");
    assert_eq!(parse_json(&json).expect("parses"), snap);
}

#[test]
fn credential_is_redacted_for_display() {
    let snap = load(FULL.as_bytes()).expect("valid");
    let shown = serde_json::to_string(&snap.redacted()).expect("serialize");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains(REDACTED));
    let debug = format!("{snap:?}");
    assert!(!debug.contains("s3cr3t"), "Debug shows the secret");
    // The original is untouched.
    assert_eq!(
        snap.backends["api"]
            .credential
            .as_ref()
            .map(|c| c.value.as_str()),
        Some("Bearer s3cr3t")
    );
}

#[test]
fn bad_values_are_reported_with_their_paths() {
    let bad = r#"
backends:
  api:
    endpoints: ["10.0.0.1:8080"]
    healthCheck:
      http: { path: nope, expectedStatuses: [] }
      tcp: {}
      interval: 0s
      timeout: 0s
      unhealthyThreshold: 0
      healthyThreshold: 0
    outlierDetection:
      consecutive5xx: 0
      consecutiveLocalFailures: 0
      baseEjectionTime: 1m
      maxEjectionTime: 10s
      maxEjectionPercent: 0
    loadBalancer: { ewmaDecay: 0s }
    circuitBreaker: { consecutiveFailures: 0, errorRatio: 1.5, window: 0s, minRequests: 0, openDuration: 0s, halfOpenProbes: 0 }
    maxConcurrentRequests: 0
    retries: { attempts: 0, perTryTimeout: 0s, backoff: { base: 1s, max: 10ms }, budget: { ratio: 2 } }
    credential: { header: "bad header", value: "line\nbreak secret" }
  other:
    endpoints: []
    healthCheck: {}
    credential: { header: connection, value: "" }
"#;
    let err = load(bad.as_bytes()).expect_err("invalid");
    let got: Vec<String> = err.errors.iter().map(|e| e.path.clone()).collect();
    let a = "backends[\"api\"]";
    let o = "backends[\"other\"]";
    let want = [
        format!("{a}.healthCheck"),
        format!("{a}.healthCheck.http.path"),
        format!("{a}.healthCheck.http.expectedStatuses"),
        format!("{a}.healthCheck.interval"),
        format!("{a}.healthCheck.timeout"),
        format!("{a}.healthCheck.unhealthyThreshold"),
        format!("{a}.healthCheck.healthyThreshold"),
        format!("{a}.outlierDetection"),
        format!("{a}.outlierDetection.maxEjectionTime"),
        format!("{a}.outlierDetection.maxEjectionPercent"),
        format!("{a}.loadBalancer.ewmaDecay"),
        format!("{a}.circuitBreaker.errorRatio"),
        format!("{a}.circuitBreaker.window"),
        format!("{a}.circuitBreaker.minRequests"),
        format!("{a}.circuitBreaker.openDuration"),
        format!("{a}.circuitBreaker.halfOpenProbes"),
        format!("{a}.maxConcurrentRequests"),
        format!("{a}.retries.attempts"),
        format!("{a}.retries.perTryTimeout"),
        format!("{a}.retries.backoff.max"),
        format!("{a}.retries.budget.ratio"),
        format!("{a}.credential.header"),
        format!("{a}.credential.value"),
        format!("{o}.healthCheck"),
        format!("{o}.credential.header"),
        format!("{o}.credential.value"),
    ];
    for w in &want {
        assert!(
            got.iter().any(|g| g == w),
            "missing error for {w}; got:\n{err}"
        );
    }
    assert_eq!(got.len(), want.len(), "unexpected extra errors:\n{err}");
    assert!(
        err.errors
            .iter()
            .any(|e| e.path == format!("{a}.healthCheck.unhealthyThreshold")
                && e.message == "must be at least 1"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("secret"),
        "a credential value leaked:\n{err}"
    );
}

#[test]
fn status_ranges_parse_strictly() {
    for (text, path_tail) in [
        ("[\"299-200\"]", "expectedStatuses[0]"),
        ("[\"abc\"]", "expectedStatuses[0]"),
        ("[200, 700]", "expectedStatuses[1]"),
    ] {
        let y = format!(
            "backends:\n  a:\n    endpoints: []\n    healthCheck: {{ http: {{ expectedStatuses: {text} }} }}\n"
        );
        let err = load(y.as_bytes()).expect_err(text);
        assert_eq!(
            err.errors[0].path,
            format!("backends[\"a\"].healthCheck.http.{path_tail}"),
            "{text}: {err}"
        );
    }
    let err = load(b"backends:\n  a: { endpoints: [], loadBalancer: { type: random } }\n")
        .expect_err("unknown balancer");
    assert_eq!(err.errors[0].path, "backends[\"a\"].loadBalancer.type");
}
