//! The config contract: parsing, unknown fields, validation paths, hashing.

use weir_config::{load, parse_json, parse_yaml, Snapshot};

const GOOD: &str = r#"
version: v1
listeners:
  - { name: http, address: "127.0.0.1:8080", protocol: http }
  - name: https
    address: "[::1]:8443"
    protocol: https
    tls:
      certificates: [{ certFile: /etc/weir/tls.crt, keyFile: /etc/weir/tls.key, hostnames: ["*.example.com"] }]
backends:
  api:
    endpoints: ["10.0.0.1:8080", { address: "api.internal:9000", weight: 3 }]
    protocol: h2c
    timeouts: { connect: 500ms, request: 1m }
    pool: { maxIdlePerEndpoint: 8, idleTimeout: 30s }
  static: { endpoints: [] }
routes:
  - name: api
    hostnames: [api.example.com, "*.example.org"]
    rules:
      - matches:
          - path: { type: Exact, value: /health }
          - path: { type: Wildcard, value: "/api/*/items/**" }
            method: GET
            headers: [{ name: x-env, value: "canary|beta", type: RegularExpression }]
            queryParams: [{ name: debug, value: "1" }]
        filters:
          requestHeaders: { add: [{ name: x-a, value: "1" }], set: [{ name: x-b, value: "2" }], remove: [x-c] }
          responseHeaders: { remove: [server] }
          path: { stripPrefix: /api, replacePrefix: { from: /v1, to: /v2 }, addPrefix: /svc }
        backendRefs: [{ name: api, weight: 90 }, { name: static, weight: 10 }]
        timeout: 5s
sinks:
  otel: { type: otlp, endpoint: "http://collector:4317", batchSize: 512, flushInterval: 5s }
"#;

#[test]
fn good_config_parses_and_validates() {
    let snap = load(GOOD.as_bytes()).expect("valid");
    assert_eq!(snap.version, "v1");
    assert_eq!(snap.backends["api"].endpoints[1].weight, 3);
    assert_eq!(snap.backends["api"].timeouts.connect.get().as_millis(), 500);
    assert_eq!(snap.routes[0].rules[0].backend_refs[1].weight, 10);
    // Defaults fill in.
    assert_eq!(snap.backends["static"].timeouts.request.get().as_secs(), 30);
}

#[test]
fn yaml_and_json_round_trip_to_the_same_snapshot() {
    let snap = load(GOOD.as_bytes()).expect("valid");
    let json = serde_json::to_vec(&snap).expect("serialize");
    let back = parse_json(&json).expect("json parses");
    assert_eq!(snap, back);
    let yaml = yaml_serde::to_string(&snap).expect("yaml");
    assert_eq!(parse_yaml(&yaml).expect("yaml parses"), snap);
    assert_eq!(load(&json).expect("load json"), snap);
}

#[test]
fn unknown_field_is_an_error_with_its_path() {
    let text = GOOD.replace("timeout: 5s", "timeout: 5s\n        retries: 3");
    let err = load(text.as_bytes()).expect_err("unknown field");
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].path, "routes[0].rules[0].retries");
    assert!(
        err.errors[0].message.contains("unknown field `retries`"),
        "{}",
        err
    );
    let text = GOOD.replace("protocol: h2c", "protocol: h2c\n    bogus: 1");
    let err = load(text.as_bytes()).expect_err("unknown field");
    assert_eq!(err.errors[0].path, "backends[\"api\"].bogus");
}

#[test]
fn type_errors_name_the_field() {
    let text = GOOD.replace("connect: 500ms", "connect: soon");
    let err = load(text.as_bytes()).expect_err("bad duration");
    assert_eq!(err.errors[0].path, "backends[\"api\"].timeouts.connect");
    assert!(err.errors[0].message.contains("invalid duration"), "{err}");
    let err = parse_json(
        br#"{"routes":[{"name":"a","rules":[{"backendRefs":[{"name":"x","weight":-1}]}]}]}"#,
    )
    .expect_err("negative weight");
    assert_eq!(
        err.errors[0].path,
        "routes[0].rules[0].backendRefs[0].weight"
    );
}

#[test]
fn every_semantic_error_is_reported_with_its_path() {
    let bad = r#"
listeners:
  - { name: http, address: "127.0.0.1:8080", protocol: http, tls: {} }
  - { name: http, address: "localhost:99999", protocol: https }
backends:
  api:
    endpoints: ["nohost", "10.0.0.1:0", "ok.example:80", "ok.example:80", "[zz]:1"]
    timeouts: { connect: 0s }
routes:
  - name: r
    hostnames: ["bad host", "*.ok.example"]
    rules:
      - matches:
          - path: { type: RegularExpression, value: "/api/(unclosed" }
          - path: { type: PathPrefix, value: "no-slash" }
            method: "GE T"
            headers: [{ name: "bad header", value: x }, { name: x-ok, value: "[", type: RegularExpression }]
          - path: { type: Wildcard, value: "/a/**/b" }
        filters:
          requestHeaders: { set: [{ name: connection, value: close }] }
          path: {}
        backendRefs: [{ name: missing }, { name: api, weight: 0 }]
  - name: r
    rules: []
"#;
    let err = load(bad.as_bytes()).expect_err("invalid");
    let got: Vec<String> = err.errors.iter().map(|e| e.path.clone()).collect();
    let want = [
        "listeners[0].tls",
        "listeners[1].name",
        "listeners[1].address",
        "backends[\"api\"].endpoints[0]",
        "backends[\"api\"].endpoints[1]",
        "backends[\"api\"].endpoints[3]",
        "backends[\"api\"].endpoints[4]",
        "backends[\"api\"].timeouts.connect",
        "routes[0].hostnames[0]",
        "routes[0].rules[0].matches[0].path",
        "routes[0].rules[0].matches[1].path",
        "routes[0].rules[0].matches[1].method",
        "routes[0].rules[0].matches[1].headers[0].name",
        "routes[0].rules[0].matches[1].headers[1].value",
        "routes[0].rules[0].matches[2].path",
        "routes[0].rules[0].filters.requestHeaders.set[0].name",
        "routes[0].rules[0].filters.path",
        "routes[0].rules[0].backendRefs[0].name",
        "routes[1].name",
        "routes[1].rules",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "missing error for {w}; got:\n{err}"
        );
    }
    assert_eq!(got.len(), want.len(), "unexpected extra errors:\n{err}");
    let regex_err = &err
        .errors
        .iter()
        .find(|e| e.path == "routes[0].rules[0].matches[0].path")
        .unwrap()
        .message;
    assert!(
        regex_err.starts_with("regex does not compile"),
        "{regex_err}"
    );
    let ep = &err
        .errors
        .iter()
        .find(|e| e.path == "backends[\"api\"].endpoints[0]")
        .unwrap()
        .message;
    assert!(ep.contains("not a host:port"), "{ep}");
}

#[test]
fn display_is_one_error_per_line() {
    let err = load(b"routes:\n  - name: a\n    rules: []\n  - name: a\n    rules: []\n")
        .expect_err("invalid");
    let text = err.to_string();
    assert_eq!(text.lines().count(), err.errors.len());
    assert!(text.lines().all(|l| l.starts_with("routes[")), "{text}");
}

#[test]
fn content_hash_ignores_version_and_tracks_content() {
    let a = load(GOOD.as_bytes()).expect("valid");
    let mut b = a.clone();
    b.version = "other".into();
    assert_eq!(a.content_hash(), b.content_hash());
    assert!(a.content_hash().starts_with("sha256:"));
    std::sync::Arc::make_mut(&mut b.routes[0]).rules[0].backend_refs[0].weight = 91;
    assert_ne!(a.content_hash(), b.content_hash());
    let mut c = a.clone();
    c.version.clear();
    assert_eq!(c.effective_version(), a.content_hash());
    assert_eq!(a.effective_version(), "v1");
}

#[test]
fn empty_document_is_an_empty_snapshot() {
    assert_eq!(load(b"{}").expect("empty json"), Snapshot::default());
}

#[test]
fn advertised_http3_port_is_a_port_or_off() {
    let with = |v: &str| {
        format!(
            "listeners:\n  - {{ name: https, address: \"0.0.0.0:8443\", protocol: https, http3: {{ advertisedPort: {v} }} }}\n"
        )
    };
    for (v, want) in [
        ("443", Some(443)),
        ("8443", Some(8443)),
        ("0", None),
        ("off", None),
    ] {
        let s = load(with(v).as_bytes()).unwrap_or_else(|e| panic!("{v}: {e}"));
        let h3 = s.listeners[0].http3_settings().expect("http3 on");
        assert_eq!(
            weir_config::AdvertisedPort::resolve(h3.advertised_port.as_ref(), 8443),
            want,
            "{v}"
        );
    }
    // Unset: the listener's own port.
    let s = load(b"listeners: [{ name: https, address: \"0.0.0.0:8443\", protocol: https }]\n")
        .expect("valid");
    let h3 = s.listeners[0].http3_settings().expect("http3 on");
    assert_eq!(
        weir_config::AdvertisedPort::resolve(h3.advertised_port.as_ref(), 8443),
        Some(8443)
    );
    for v in ["65536", "-1", "\"on\"", "\"443x\""] {
        let err = load(with(v).as_bytes()).expect_err(v);
        assert_eq!(err.errors.len(), 1, "{v}: {err}");
        assert_eq!(
            err.errors[0].path, "listeners[0].http3.advertisedPort",
            "{v}"
        );
        assert!(err.errors[0].message.contains("1-65535"), "{v}: {err}");
    }
}
