//! `--worker-threads`: 1 runs a current-thread runtime (the cheap one for a single CPU), more a
//! multi-thread runtime; both must proxy concurrent keep-alive traffic the same way.

mod common;
use common::*;

use http::StatusCode;

const CONFIG: &str = r#"
version: flavour-1
listeners: [{ name: http, address: "127.0.0.1:PORT", protocol: http }]
backends:
  echo: { endpoints: ["ECHO"] }
routes:
  - name: all
    rules: [{ backendRefs: [{ name: echo }] }]
"#;

/// Starts the dataplane with `--worker-threads workers`, sends 20 × 10 requests over 20
/// concurrent keep-alive connections and returns how many came back 200 from the backend,
/// plus the startup log.
async fn proxy_with_workers(workers: &str) -> (usize, String) {
    let echo = echo("flavour").await;
    let port = free_port();
    let config = CONFIG
        .replace("PORT", &port.to_string())
        .replace("ECHO", &echo.to_string());
    let dp = Dataplane::start_with(
        &config,
        Opts {
            args: vec![
                "--worker-threads".into(),
                workers.into(),
                "--access-log".into(),
                "off".into(),
            ],
            log_filter: Some("info".into()),
            ..Opts::default()
        },
    )
    .await;
    let mut tasks = Vec::new();
    for t in 0..20 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ok = 0;
            for i in 0..10 {
                let r = send(
                    &c,
                    get_req(&format!("http://127.0.0.1:{port}/t{t}/{i}"), &[]),
                )
                .await;
                if r.status == StatusCode::OK && r.json()["uri"] == format!("/t{t}/{i}") {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("client task");
    }
    (ok, dp.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_runs_a_current_thread_runtime() {
    let (ok, log) = proxy_with_workers("1").await;
    assert_eq!(ok, 200, "log:\n{log}");
    assert!(
        log.contains("flavor=CurrentThread") && log.contains("workers=1"),
        "log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_run_a_multi_thread_runtime() {
    let (ok, log) = proxy_with_workers("3").await;
    assert_eq!(ok, 200, "log:\n{log}");
    assert!(
        log.contains("flavor=MultiThread") && log.contains("workers=3"),
        "log:\n{log}"
    );
}
