//! Process lifecycle and control plane: graceful shutdown on SIGTERM, `check`, rejected configs
//! over `PUT /config`, and the admin bearer token.

mod common;
use common::*;

use http::{Request, StatusCode};
use serde_json::json;
use std::net::SocketAddr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let echo = echo("slow").await;
    // Taps tell us when a request has actually reached the backend side; the gated one also
    // holds its request until released, so the drain provably outlasts the checks below.
    let (tapped, arrived) = tap(echo).await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (gated, gated_arrived) = tap_gated(echo, Some(gate.clone())).await;
    let port = free_port();
    let config = json!({
        "version": "drain-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {
            "slow": {"endpoints": [tapped.to_string()]},
            "gated": {"endpoints": [gated.to_string()]},
        },
        "routes": [{"name": "all", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/gated"}}],
             "backendRefs": [{"name": "gated"}]},
            {"backendRefs": [{"name": "slow"}]},
        ]}],
    });
    let mut dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            drain_timeout: Some("60s".into()),
            ..Opts::default()
        },
    )
    .await;

    // One HTTP/1.1 request the backend answers after 1.5s, one HTTP/2 request held at the gate.
    let url = format!("http://127.0.0.1:{port}/slow?delay_ms=1500");
    let h1 = tokio::spawn(async move { try_send(&client(), get_req(&url, &[])).await });
    let url = format!("http://127.0.0.1:{port}/gated/h2");
    let h2 = tokio::spawn(async move { try_send(&h2c_client(), get_req(&url, &[])).await });
    for n in [arrived, gated_arrived] {
        tokio::time::timeout(HANG_GUARD, n.notified())
            .await
            .expect("request never reached the backend");
    }
    dp.signal(libc::SIGTERM);

    // Draining: not ready, not accepting, but still alive for the requests in flight.
    let c = client();
    wait_draining(&c, &dp, port).await;
    assert!(!h2.is_finished(), "gated request finished before release");

    let r = h1
        .await
        .unwrap()
        .expect("in-flight HTTP/1.1 request failed during drain");
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["server"], "slow");
    assert_eq!(j["uri"], "/slow?delay_ms=1500");

    gate.notify_one();
    let r = h2
        .await
        .unwrap()
        .expect("in-flight HTTP/2 request failed during drain");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["uri"], "/gated/h2");

    let status = dp.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let err = tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("listener still accepting after exit");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Waits until `dp` reports draining on `/readyz` and refuses connections on `port`.
async fn wait_draining(c: &HttpClient, dp: &Dataplane, port: u16) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let r = send(c, get_req(&dp.admin_url("/readyz"), &[])).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    wait_refused(format!("127.0.0.1:{port}").parse().unwrap()).await;
}

/// Parses fine, but has many semantic mistakes. `PORT` is replaced by the test.
const BAD: &str = r#"
version: bad-1
listeners:
  - { name: http, address: "127.0.0.1:PORT", protocol: http }
  - { name: http2, address: "localhost:80", protocol: http }
backends:
  good: { endpoints: ["127.0.0.1:9"] }
  broken: { endpoints: ["127.0.0.1:notaport"] }
routes:
  - name: api
    rules:
      - matches: [{ path: { type: RegularExpression, value: "/(unclosed" } }]
        backendRefs: [{ name: missing }]
      - matches: [{ headers: [{ name: x-v, type: RegularExpression, value: "[z-a]" }] }]
        backendRefs: [{ name: good }]
        timeout: 0s
  - name: api
    hostnames: ["bad_host!"]
    rules:
      - matches: [{ path: { type: Wildcard, value: "/a*b" }, method: "GE T" }]
        backendRefs: [{ name: good }]
"#;

/// Every mistake in [`BAD`], by field path.
const BAD_PATHS: &[&str] = &[
    "listeners[1].address",
    "backends[\"broken\"].endpoints[0]",
    "routes[0].rules[0].matches[0].path",
    "routes[0].rules[0].backendRefs[0].name",
    "routes[0].rules[1].matches[0].headers[0].value",
    "routes[0].rules[1].timeout",
    "routes[1].name",
    "routes[1].hostnames[0]",
    "routes[1].rules[0].matches[0].path",
    "routes[1].rules[0].matches[0].method",
];

/// A parse error: `retries` is not a field of a rule.
const UNKNOWN_FIELD: &str = r#"
backends:
  good: { endpoints: ["127.0.0.1:9"] }
routes:
  - name: api
    rules:
      - backendRefs: [{ name: good }]
        retries: 3
"#;

fn run_check(dir: &std::path::Path, file: &str, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    let out = command(dir, &dir.join("unused.log"))
        .arg("check")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run weir-dataplane check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_error_with_its_path() {
    let dir = tempfile::tempdir().unwrap();

    let (code, _, stderr) = run_check(dir.path(), "bad.yaml", &BAD.replace("PORT", "8080"));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("{} error(s)", BAD_PATHS.len())),
        "stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    for path in BAD_PATHS {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{path}: "))),
            "no error for {path} in:\n{stderr}"
        );
    }
    let has = |path: &str, msg: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path}: ")) && l.contains(msg))
    };
    assert!(has("routes[0].rules[0].matches[0].path", "regex"));
    assert!(has("routes[0].rules[0].backendRefs[0].name", "\"missing\""));
    assert!(has("routes[1].name", "duplicate"));
    assert!(has("backends[\"broken\"].endpoints[0]", "notaport"));

    let (code, _, stderr) = run_check(dir.path(), "unknown.yaml", UNKNOWN_FIELD);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.trim().starts_with("routes[0].rules[0]")
                && l.contains("unknown field `retries`")),
        "stderr:\n{stderr}"
    );

    // The shipped example passes.
    // Where cargo runs the test (not where it was compiled: the target dir may be shared).
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let example = std::fs::read_to_string(
        std::path::Path::new(&manifest_dir).join("../examples/standalone.yaml"),
    )
    .unwrap();
    let (code, stdout, stderr) = run_check(dir.path(), "example.yaml", &example);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("OK (version example-1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_config_rejects_bad_config_and_keeps_serving() {
    let echo = echo("keep").await;
    let port = free_port();
    let good = format!(
        r#"
version: good-1
listeners: [{{ name: http, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  echo: {{ endpoints: ["{echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let dp = Dataplane::start(&good).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/still");
    assert_eq!(send(&c, get_req(&url, &[])).await.status, StatusCode::OK);

    let (status, body) = dp.put_config(BAD.replace("PORT", &port.to_string())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["currentVersion"], "good-1");
    let errors = body["errors"].as_array().expect("errors array");
    let paths: Vec<&str> = errors.iter().filter_map(|e| e["path"].as_str()).collect();
    for want in BAD_PATHS {
        assert!(paths.contains(want), "no error for {want} in {body}");
    }
    assert_eq!(errors.len(), BAD_PATHS.len(), "{body}");
    assert!(errors
        .iter()
        .all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())));

    // A listener that cannot be bound rejects the whole config; nothing is half-applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let other_echo = common::echo("other").await;
    let clash = format!(
        r#"
version: clash-1
listeners:
  - {{ name: http, address: "127.0.0.1:{port}", protocol: http }}
  - {{ name: taken, address: "{taken_addr}", protocol: http }}
backends:
  echo: {{ endpoints: ["{other_echo}"] }}
routes:
  - name: all
    rules: [{{ backendRefs: [{{ name: echo }}] }}]
"#
    );
    let (status, body) = dp.put_config(clash).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["path"], "listeners[1].address", "{body}");
    assert_eq!(body["currentVersion"], "good-1");
    let r = send(&c, get_req(&url, &[])).await;
    assert_eq!(
        r.header("x-echo-server"),
        Some("keep"),
        "backend swapped anyway"
    );
    drop(taken);

    // A parse error is a 422 with its path too; JSON bodies are accepted like YAML.
    let (status, body) = dp.put_config(UNKNOWN_FIELD).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let e = &body["errors"][0];
    assert!(e["path"]
        .as_str()
        .unwrap()
        .starts_with("routes[0].rules[0]"));
    assert!(e["message"].as_str().unwrap().contains("retries"), "{body}");
    let (status, body) = dp.put_config("{\"routes\": 3}").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["path"], "routes");

    // Nothing changed: same version, same snapshot, still serving.
    let (status, cfg) = dp.get_config(None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cfg["version"], "good-1");
    assert_eq!(cfg["snapshot"]["routes"][0]["name"], "all");
    for _ in 0..5 {
        let r = send(&c, get_req(&url, &[])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-echo-server"), Some("keep"));
    }

    // A bad file on SIGHUP is rejected the same way; a good one afterwards still applies.
    dp.write_config(BAD.replace("PORT", &port.to_string()));
    dp.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !dp.log().contains("SIGHUP reload rejected") {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP not handled");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(dp.version().await, "good-1");
    assert_eq!(send(&c, get_req(&url, &[])).await.status, StatusCode::OK);
    dp.write_config(good.replace("good-1", "good-2"));
    dp.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while dp.version().await != "good-2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(send(&c, get_req(&url, &[])).await.status, StatusCode::OK);
}

/// The operator's last-known-good Secret holds gzip-compressed JSON once a snapshot is past a
/// Secret's 1 MiB (`operator/src/controller/snapshot_secret.rs`): the dataplane boots from such
/// a `--config` file, reloads one on SIGHUP, `check`s one, and rejects a broken one whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_config_files_boot_reload_and_check() {
    let echo = echo("gz").await;
    let port = free_port();
    let config = |version: &str| one_route(version, port, echo);
    let packed = |version: &str| weir_config::pack_gzip(config(version).as_bytes());
    let dp = Dataplane::start_from_bytes(&packed("gz-1"), Opts::default()).await;
    assert_eq!(dp.version().await, "gz-1");
    let c = client();
    let url = format!("http://127.0.0.1:{port}/x");
    let r = send(&c, get_req(&url, &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-echo-server"), Some("gz"));

    // Truncated: rejected whole on SIGHUP, the running version keeps serving.
    let mut broken = packed("gz-2");
    broken.truncate(broken.len() / 2);
    dp.write_config(&broken);
    dp.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !dp.log().contains("SIGHUP reload rejected") {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP not handled");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(dp.log().contains("cannot be decompressed"), "{}", dp.log());
    assert_eq!(dp.version().await, "gz-1");
    assert_eq!(send(&c, get_req(&url, &[])).await.status, StatusCode::OK);

    dp.write_config(packed("gz-3"));
    dp.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while dp.version().await != "gz-3" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // `weir-dataplane check` on the compressed file.
    let path = dp.dir.path().join("packed.json.gz");
    std::fs::write(&path, packed("gz-4")).unwrap();
    let out = command(dp.dir.path(), &dp.dir.path().join("check.log"))
        .arg("check")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("run weir-dataplane check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("OK (version gz-4"), "{stdout}");
}

/// A snapshot with one plain listener on `port` and one route to `echo`.
fn one_route(version: &str, port: u16, echo: SocketAddr) -> String {
    json!({
        "version": version,
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    })
    .to_string()
}

/// A sidecar boots from its workload's entry of `weir-sidecar-snapshots` (`--config-preferred`),
/// which the operator writes gzip'd when the namespace's entries do not fit 1 MiB as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_compressed_preferred_snapshot_is_booted_from() {
    let echo = echo("pref").await;
    let port = free_port();
    let config = |version: &str| one_route(version, port, echo);
    let dir = tempfile::tempdir().expect("tempdir");
    let preferred = dir.path().join("snapshot.json");
    std::fs::write(
        &preferred,
        weir_config::pack_gzip(config("workload-7").as_bytes()),
    )
    .expect("write the preferred snapshot");
    let opts = Opts {
        args: vec![format!("--config-preferred={}", preferred.display())],
        ..Opts::default()
    };
    let dp = Dataplane::start_from_bytes(config("boot").as_bytes(), opts).await;
    assert_eq!(dp.version().await, "workload-7", "{}", dp.log());
    let r = send(
        &client(),
        get_req(&format!("http://127.0.0.1:{port}/x"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_everything_but_probes() {
    let echo = echo("tok").await;
    let port = free_port();
    let config = json!({
        "version": "token-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    });
    let token = "s3cret-token";
    let dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            token: Some(token.into()),
            ..Opts::default()
        },
    )
    .await;
    let c = client();

    for probe in ["/healthz", "/readyz"] {
        let r = send(&c, get_req(&dp.admin_url(probe), &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{probe} needs no token");
    }

    let url = dp.admin_url("/config");
    for auth in [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
        Some(token.to_string()),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = send(&c, get_req(&url, &headers)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "auth {auth:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["error"], "unauthorized");
        assert!(!String::from_utf8_lossy(&r.body).contains("token-1"));
    }

    let (status, cfg) = dp.get_config(Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cfg["version"], "token-1");

    // PUT without the token is refused and changes nothing; with it, it applies.
    let next = config.to_string().replace("token-1", "token-2");
    let (status, _) = dp.put_config(next.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, cfg) = dp.get_config(Some(token)).await;
    assert_eq!(cfg["version"], "token-1");
    let req = Request::put(&url)
        .header("authorization", format!("Bearer {token}"))
        .body(full(next))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], "token-2");
    let (_, cfg) = dp.get_config(Some(token)).await;
    assert_eq!(cfg["version"], "token-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_config_and_serves_after_first_put() {
    let dp = Dataplane::start_without_config().await;
    let c = client();
    let r = send(&c, get_req(&dp.admin_url("/readyz"), &[])).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = dp.get_config(None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "no_config");

    // A rejected first config leaves it unconfigured, with no current version.
    let (status, body) = dp.put_config("routes: [{ name: x, rules: [] }]").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["currentVersion"], serde_json::Value::Null);

    let echo = echo("first").await;
    let port = free_port();
    let config = json!({
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "echo"}]}]}],
    });
    let (status, body) = dp.put_config(config.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // No version in the snapshot: the content hash is the version.
    let version = body["version"].as_str().unwrap().to_string();
    assert!(version.starts_with("sha256:"), "{version}");
    assert_eq!(dp.version().await, version);
    let r = send(&c, get_req(&dp.admin_url("/readyz"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&c, get_req(&format!("http://127.0.0.1:{port}/"), &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-echo-server"), Some("first"));

    // The same content again gives the same version.
    let (_, body) = dp.put_config(config.to_string()).await;
    assert_eq!(body["version"], version.as_str());
}

#[test]
fn admin_refuses_non_loopback_address_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.yaml");
    std::fs::write(&cfg, "version: x\n").unwrap();
    let log = dir.path().join("dataplane.log");
    let status = command(dir.path(), &log)
        .arg("--config")
        .arg(&cfg)
        .arg("--admin-address")
        .arg(format!("0.0.0.0:{}", free_port()))
        .status()
        .expect("run weir-dataplane");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "log:\n{log}");
    assert!(log.contains("non-loopback"), "log:\n{log}");
}

/// `GET /drained` (the app container's preStop hook): answers only once the in-flight
/// requests are done after SIGTERM, before the process exits; without a shutdown it does not
/// hold the caller past `start_within`; a bad parameter is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_endpoint_answers_after_the_drain() {
    let echo = echo("app").await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (gated, arrived) = tap_gated(echo, Some(gate.clone())).await;
    let port = free_port();
    let config = json!({
        "version": "drained-1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"app": {"endpoints": [gated.to_string()]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "app"}]}]}],
    });
    let mut dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            drain_timeout: Some("60s".into()),
            ..Opts::default()
        },
    )
    .await;
    let c = client();

    // No shutdown: a liveness restart of the app must not wait for a drain that never comes.
    let r = send(
        &c,
        get_req(&dp.admin_url("/drained?start_within=100ms"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "serving");
    let r = send(&c, get_req(&dp.admin_url("/drained?timeout=soon"), &[])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["message"].as_str().unwrap().contains("timeout"),
        "{}",
        r.json()
    );

    let url = format!("http://127.0.0.1:{port}/in-flight");
    let inflight = tokio::spawn(async move { try_send(&client(), get_req(&url, &[])).await });
    tokio::time::timeout(HANG_GUARD, arrived.notified())
        .await
        .expect("request never reached the backend");
    // The hook starts before (or as) the sidecar gets its SIGTERM, as the kubelet runs it.
    let url = dp.admin_url("/drained?timeout=60s&start_within=60s");
    let hook = tokio::spawn(async move { try_send(&client(), get_req(&url, &[])).await });
    dp.signal(libc::SIGTERM);
    wait_draining(&c, &dp, port).await;
    assert!(
        !hook.is_finished(),
        "/drained answered with a request in flight"
    );

    gate.notify_one();
    let r = inflight
        .await
        .unwrap()
        .expect("in-flight request failed during drain");
    assert_eq!(r.status, StatusCode::OK);
    let r = hook.await.unwrap().expect("/drained failed");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["state"], "drained");
    let status = dp.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
}
