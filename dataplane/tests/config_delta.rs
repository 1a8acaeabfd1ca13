//! `PATCH /config`: a delta against the running version, on the real binary over real sockets.
//! The result is validated whole (422 keeps the last good config serving), another base
//! version is a 409, a delta that does not fit its base a 400, the admin token still applies,
//! and state of unchanged routes (rate-limit buckets) is kept as with a `PUT`.

mod common;
use common::*;

use http::{Request, StatusCode};
use serde_json::json;

fn route(name: &str, value: &str) -> serde_json::Value {
    json!({"name": name, "hostnames": [format!("{name}.test")], "rules": [{
        "filters": {"responseHeaders": {"set": [{"name": "x-value", "value": value}]}},
        "backendRefs": [{"name": "echo"}]}]})
}

async fn patch(dp: &Dataplane, token: Option<&str>, body: serde_json::Value) -> Resp {
    let mut req = Request::patch(dp.admin_url("/config"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(full(body.to_string())).unwrap()).await
}

async fn version(dp: &Dataplane, token: &str) -> String {
    let (status, cfg) = dp.get_config(Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{cfg}");
    cfg["version"].as_str().unwrap_or_default().to_string()
}

/// `x-value` of the route serving `host`, or the status when none does.
async fn served(port: u16, host: &str) -> String {
    let r = send(
        &client(),
        get_req(&format!("http://127.0.0.1:{port}/"), &[("host", host)]),
    )
    .await;
    match r.header("x-value") {
        Some(v) if r.status == StatusCode::OK => v.to_string(),
        _ => r.status.as_str().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_applies_a_delta_to_the_running_version() {
    let echo = echo("delta").await;
    let port = free_port();
    let token = "delta-token";
    let mut limited = route("limited", "l");
    limited["rateLimit"] = json!({"requestsPerUnit": 1, "unit": "hour", "burst": 1});
    let config = json!({
        "version": "v1",
        "listeners": [{"name": "http", "address": format!("127.0.0.1:{port}"), "protocol": "http"}],
        "backends": {"echo": {"endpoints": [echo.to_string()]}},
        "routes": [route("a", "a1"), route("b", "b1"), limited],
    });
    let dp = Dataplane::start_with(
        &config.to_string(),
        Opts {
            token: Some(token.into()),
            ..Opts::default()
        },
    )
    .await;
    assert_eq!(served(port, "a.test").await, "a1");
    // The rate limit's one token is spent before the deltas.
    assert_eq!(served(port, "limited.test").await, "l");
    assert_eq!(served(port, "limited.test").await, "429");

    // b changed, c added after it, a removed, a second backend added.
    let delta = json!({
        "baseVersion": "v1", "version": "v2",
        "routes": [{"after": null, "route": route("b", "b2")},
                   {"after": "b", "route": route("c", "c2")}],
        "removeRoutes": ["a"],
        "backends": {"spare": {"endpoints": [echo.to_string()]}},
    });
    // The admin token guards PATCH like PUT.
    let r = patch(&dp, None, delta.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(served(port, "a.test").await, "a1");
    let r = patch(&dp, Some(token), delta.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["version"], "v2");
    assert_eq!(served(port, "a.test").await, "404");
    assert_eq!(served(port, "b.test").await, "b2");
    assert_eq!(served(port, "c.test").await, "c2");
    let (_, cfg) = dp.get_config(Some(token)).await;
    let names: Vec<&str> = cfg["snapshot"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c", "limited"]);
    assert!(cfg["snapshot"]["backends"]["spare"].is_object(), "{cfg}");
    // The unchanged route kept its bucket: still empty.
    assert_eq!(served(port, "limited.test").await, "429");

    // The same delta again: the pod runs v2 now, not its base.
    let r = patch(&dp, Some(token), delta).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["error"], "base_version_mismatch");
    assert_eq!(r.json()["currentVersion"], "v2");

    // A result that would be invalid is rejected whole, with the snapshot's field path; the
    // last good config keeps serving.
    let mut bad = route("d", "d3");
    bad["rules"][0]["backendRefs"][0]["name"] = json!("missing");
    let r = patch(
        &dp,
        Some(token),
        json!({"baseVersion": "v2", "version": "v3",
               "routes": [{"after": "c", "route": bad}, {"after": "d", "route": route("e", "e3")}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let body = r.json();
    assert_eq!(body["currentVersion"], "v2");
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "routes[2].rules[0].backendRefs[0].name"),
        "{body}"
    );
    assert_eq!(version(&dp, token).await, "v2");
    assert_eq!(served(port, "e.test").await, "404");
    assert_eq!(served(port, "b.test").await, "b2");

    // Deltas that do not fit the base, or are not deltas: 400 naming the delta's field.
    for (delta, path) in [
        (
            json!({"baseVersion": "v2", "version": "v3", "removeRoutes": ["nope"]}),
            "removeRoutes[0]",
        ),
        (
            json!({"baseVersion": "v2", "version": "v3",
                   "routes": [{"after": "nope", "route": route("f", "f")}]}),
            "routes[0].after",
        ),
        (
            json!({"baseVersion": "v2", "version": "v3", "listeners": []}),
            "listeners",
        ),
    ] {
        let r = patch(&dp, Some(token), delta.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{delta}");
        let body = r.json();
        assert_eq!(body["errors"][0]["path"], path, "{body}");
    }
    assert_eq!(version(&dp, token).await, "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_without_a_running_config_is_a_conflict() {
    let dp = Dataplane::start_without_config().await;
    let r = patch(
        &dp,
        None,
        json!({"baseVersion": "v1", "version": "v2", "removeRoutes": ["a"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["currentVersion"], serde_json::Value::Null);
}
