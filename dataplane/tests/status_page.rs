//! The status page (`GET /ui`) in a real browser: headless Chromium loads it from a dataplane
//! with an admin token and two endpoints, one of which fails its health checks.
//!
//! The token reaches the page as a `#token=` fragment, which the page moves into
//! sessionStorage and cuts from the address (fragments are never sent to the server).

mod common;
use common::browser::{attr_after, dump_dom, screenshot, shown};
use common::*;
use http::StatusCode;

const TOKEN: &str = "ui-test-token-5b1e";

async fn send_requests(port: u16, n: usize) {
    let c = client();
    for _ in 0..n {
        let r = get(&c, &format!("http://127.0.0.1:{port}/shop/item")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
}

/// `GET /backends` until `endpoint` has `healthy == want`.
async fn wait_health(dp: &Dataplane, endpoint: &str, want: bool) {
    let c = client();
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let auth = format!("Bearer {TOKEN}");
        let r = send(
            &c,
            get_req(&dp.admin_url("/backends"), &[("authorization", &auth)]),
        )
        .await;
        let v = r.json();
        let eps = v["backends"]["shop"]["endpoints"].as_array().cloned();
        if eps
            .unwrap_or_default()
            .iter()
            .any(|e| e["address"] == endpoint && e["healthy"] == want)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{endpoint} never became healthy={want}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs a blocking browser call off the runtime, so the in-process echo backends keep
/// answering health checks meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("browser task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_the_unhealthy_endpoint_and_live_counters() {
    let good = echo("good").await;
    let bad = echo("bad").await;
    let port = free_port();
    let cfg = format!(
        r#"version: ui-test-1
listeners: [{{ name: web, address: "127.0.0.1:{port}", protocol: http }}]
backends:
  shop:
    endpoints: ["{good}", "{bad}"]
    healthCheck: {{ http: {{ path: /healthz }}, interval: 100ms, jitter: 0s, unhealthyThreshold: 1, healthyThreshold: 1 }}
routes:
  - name: storefront
    rules: [{{ matches: [{{ path: {{ type: PathPrefix, value: /shop }} }}], backendRefs: [{{ name: shop }}] }}]
"#
    );
    let dp = Dataplane::start_with(
        &cfg,
        Opts {
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
    .await;
    let (good, bad) = (good.to_string(), bad.to_string());
    wait_health(&dp, &bad, true).await;

    // The page itself holds no data and is served without the token; its data is not.
    let page = get(&client(), &dp.admin_url("/ui")).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"),
        "the page does not forbid external loads"
    );
    let state = get(&client(), &dp.admin_url("/ui/state")).await;
    assert_eq!(state.status, StatusCode::UNAUTHORIZED);

    // One endpoint fails its health checks from now on.
    let r = get(&client(), &format!("http://{bad}/?set_healthy=0")).await;
    assert_eq!(r.status, StatusCode::OK);
    wait_health(&dp, &bad, false).await;
    send_requests(port, 5).await;

    let with_token = format!("{}#token={TOKEN}", dp.admin_url("/ui"));
    let dom = blocking({
        let u = with_token.clone();
        move || dump_dom(&u)
    })
    .await;
    assert!(shown(&dom, "main", "app"), "data not shown:\n{dom}");
    assert!(!shown(&dom, "div", "login"), "prompt shown with a token");
    assert!(dom.contains("ui-test-1"), "config version missing:\n{dom}");
    assert_eq!(
        attr_after(&dom, "data-endpoint", &bad, "data-state").as_deref(),
        Some("unhealthy"),
        "the failing endpoint is not shown unhealthy:\n{dom}"
    );
    assert_eq!(
        attr_after(&dom, "data-endpoint", &good, "data-state").as_deref(),
        Some("available")
    );
    let requests = |dom: &str| -> u64 {
        attr_after(dom, "data-route", "storefront", "data-requests")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no request counter for route storefront:\n{dom}"))
    };
    let before = requests(&dom);
    assert!(before >= 5, "counter {before} after 5 requests");

    // The counter follows traffic.
    send_requests(port, 20).await;
    let dom2 = blocking({
        let u = with_token.clone();
        move || dump_dom(&u)
    })
    .await;
    let after = requests(&dom2);
    assert!(
        after >= before + 20,
        "request counter went from {before} to {after} after 20 more requests"
    );

    // Without the token: the prompt, and nothing from the dataplane.
    for (url, message) in [
        (dp.admin_url("/ui"), None),
        (
            format!("{}#token=wrong-token", dp.admin_url("/ui")),
            Some("refused this token"),
        ),
    ] {
        let dom = blocking(move || dump_dom(&url)).await;
        assert!(shown(&dom, "div", "login"), "no token prompt:\n{dom}");
        assert!(
            !shown(&dom, "main", "app"),
            "data section shown without the token"
        );
        for secret_free in ["ui-test-1", "storefront", good.as_str(), bad.as_str()] {
            assert!(
                !dom.contains(secret_free),
                "{secret_free} visible without the token:\n{dom}"
            );
        }
        if let Some(m) = message {
            assert!(dom.contains(m), "no refusal message:\n{dom}");
        }
    }

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("status-page")
        .join("dataplane-ui.png");
    // Traffic while the screenshot is taken, so its charts have something to draw.
    let traffic = tokio::spawn(async move {
        loop {
            send_requests(port, 1).await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    blocking({
        let out = out.clone();
        move || screenshot(&with_token, &out)
    })
    .await;
    traffic.abort();
    println!("status page screenshot: {}", out.display());
}
