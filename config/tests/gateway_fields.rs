//! The contract fields the Gateway API needs: listener-bound routes, ReplaceFullPath, hostname
//! rewrite, request mirrors, per-backendRef filters, invalid backendRefs, per-try timeouts.

use weir_config::{load, parse_json, parse_yaml};

const GOOD: &str = r#"
listeners:
  - { name: http, address: "127.0.0.1:8080", protocol: http }
  - { name: https, address: "127.0.0.1:8443", protocol: https }
backends:
  v1: { endpoints: ["10.0.0.1:8080"] }
  v2: { endpoints: ["10.0.0.2:8080"] }
routes:
  - name: gw
    listeners: [http]
    rules:
      - matches: [{ path: { type: PathPrefix, value: /full } }]
        filters:
          path: { replaceFull: /one }
          hostRewrite: one.example.org
          mirrors: [{ backend: v2 }, { backend: v1, percent: 12.5 }]
        backendRefs:
          - name: v1
            weight: 3
            filters:
              requestHeaders: { set: [{ name: x-backend, value: v1 }] }
              responseHeaders: { add: [{ name: x-from, value: v1 }] }
          - { name: "default/missing-svc", weight: 1, invalid: "Service default/missing-svc not found" }
        timeout: 10s
        backendRequestTimeout: 500ms
      - matches: [{ path: { type: PathPrefix, value: /off } }]
        filters: { path: { replacePrefix: { from: /off, to: "" } } }
        backendRefs: [{ name: v1 }]
        backendRequestTimeout: 0s
"#;

#[test]
fn gateway_fields_parse_validate_and_round_trip() {
    let snap = load(GOOD.as_bytes()).expect("valid");
    let route = &snap.routes[0];
    assert_eq!(route.listeners, ["http"]);
    let rule = &route.rules[0];
    let path = rule.filters.path.as_ref().expect("path rewrite");
    assert_eq!(path.replace_full.as_deref(), Some("/one"));
    assert_eq!(
        rule.filters.host_rewrite.as_deref(),
        Some("one.example.org")
    );
    assert_eq!(rule.filters.mirrors.len(), 2);
    assert_eq!(rule.filters.mirrors[0].percent, None);
    assert_eq!(rule.filters.mirrors[1].percent, Some(12.5));
    assert_eq!(rule.backend_refs[0].filters.request_headers.set.len(), 1);
    assert!(rule.backend_refs[1].invalid.is_some());
    assert_eq!(
        rule.backend_request_timeout.map(|d| d.get().as_millis()),
        Some(500)
    );
    assert_eq!(
        route.rules[1].backend_request_timeout.map(|d| d.get()),
        Some(std::time::Duration::ZERO)
    );

    let json = serde_json::to_vec(&snap).expect("serialize");
    assert_eq!(parse_json(&json).expect("json parses"), snap);
    let yaml = yaml_serde::to_string(&snap).expect("yaml");
    assert_eq!(parse_yaml(&yaml).expect("yaml parses"), snap);
}

#[test]
fn unset_gateway_fields_are_not_serialized() {
    // Configs written before these fields keep their content hash.
    let snap = load(
        b"backends: { b: { endpoints: [\"127.0.0.1:1\"] } }\nroutes: [{ name: r, rules: [{ backendRefs: [{ name: b }] }] }]\n",
    )
    .expect("valid");
    let json = serde_json::to_string(&snap).expect("serialize");
    for field in [
        "listeners\":[\"",
        "filters",
        "invalid",
        "backendRequestTimeout",
        "mirrors",
        "hostRewrite",
    ] {
        assert!(!json.contains(field), "{field} in {json}");
    }
}

#[test]
fn gateway_field_errors_name_their_paths() {
    let bad = r#"
listeners:
  - { name: http, address: "127.0.0.1:8080", protocol: http }
backends:
  v1: { endpoints: ["10.0.0.1:8080"] }
routes:
  - name: r
    listeners: [http, https, http]
    rules:
      - filters:
          path: { replaceFull: one, stripPrefix: /a }
          hostRewrite: "*.example.org"
          mirrors: [{ backend: nope }, { backend: v1, percent: 100.5 }, { backend: v1, percent: -1 }]
        backendRefs:
          - name: v1
            filters:
              path: { replaceFull: /x }
              hostRewrite: a.example
              mirrors: [{ backend: v1 }]
              requestHeaders: { set: [{ name: "bad name", value: x }] }
          - { name: also-missing, invalid: "  " }
        timeout: 1s
        backendRequestTimeout: 2s
"#;
    let err = load(bad.as_bytes()).expect_err("invalid");
    let got: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    let want = [
        "routes[0].listeners[1]",
        "routes[0].listeners[2]",
        "routes[0].rules[0].filters.path.replaceFull",
        "routes[0].rules[0].filters.hostRewrite",
        "routes[0].rules[0].filters.mirrors[0].backend",
        "routes[0].rules[0].filters.mirrors[1].percent",
        "routes[0].rules[0].filters.mirrors[2].percent",
        "routes[0].rules[0].backendRefs[0].filters.path",
        "routes[0].rules[0].backendRefs[0].filters.hostRewrite",
        "routes[0].rules[0].backendRefs[0].filters.mirrors",
        "routes[0].rules[0].backendRefs[0].filters.requestHeaders.set[0].name",
        "routes[0].rules[0].backendRefs[1].invalid",
        "routes[0].rules[0].backendRequestTimeout",
    ];
    for w in want {
        assert!(got.contains(&w), "missing error for {w}; got:\n{err}");
    }
    // replaceFull both misses its '/' and clashes with stripPrefix: two messages, one path.
    assert_eq!(got.len(), want.len() + 1, "unexpected errors:\n{err}");
    let msg = |path: &str| {
        err.errors
            .iter()
            .filter(|e| e.path == path)
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(
        msg("routes[0].listeners[1]").contains("\"https\" is not defined"),
        "{err}"
    );
    assert!(msg("routes[0].listeners[2]").contains("twice"), "{err}");
    assert!(
        msg("routes[0].rules[0].backendRefs[0].filters.path")
            .contains("not supported on a backendRef"),
        "{err}"
    );
    // An invalid backendRef's name is a label: no "not defined" error for it.
    assert!(!got.contains(&"routes[0].rules[0].backendRefs[1].name"));
}

#[test]
fn a_rule_of_invalid_backend_refs_only_is_valid() {
    load(
        br#"
routes:
  - name: r
    rules: [{ backendRefs: [{ name: gone, invalid: "Service gone not found" }] }]
"#,
    )
    .expect("valid: the rule answers 500");
}

#[test]
fn unknown_mirror_field_is_a_parse_error_with_its_path() {
    let e = load(
        b"routes: [{ name: r, rules: [{ filters: { mirrors: [{ backend: b, fraction: 1 }] }, backendRefs: [] }] }]\n",
    )
    .unwrap_err();
    assert_eq!(
        e.errors[0].path, "routes[0].rules[0].filters.mirrors[0].fraction",
        "{e}"
    );
}
