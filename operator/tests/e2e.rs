//! End to end against a real API server: etcd + kube-apiserver on loopback, the CRDs from
//! `crds/`, two `weir-dataplane` processes (127.0.0.2, 127.0.0.3) registered as Pods, echo
//! backends, and the operator out of cluster with a kubeconfig.
//!
//! Ignored by `cargo test`; `make e2e` (scripts/e2e.sh) provides the binaries and runs it:
//! `WEIR_E2E_APISERVER` (kube-apiserver), `WEIR_E2E_ETCD` (etcd, default `etcd`),
//! `WEIR_E2E_BIN_DIR` (weir-dataplane, weir-echo, weir-operator).

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weir_operator::crd::{Backend, ProxyRoute, TelemetrySink};

#[path = "../../dataplane/tests/common/browser.rs"]
mod browser;
mod common;
use common::*;

const DP_TOKEN: &str = "e2e-dataplane-token";
const NS: &str = "apps";

fn operator_cmd(
    kubeconfig: &Path,
    listeners: &Path,
    admin_port: u16,
    id: &str,
    metrics_port: u16,
) -> Command {
    let mut cmd = Command::new(bin("weir-operator"));
    cmd.arg("run")
        .args(["--namespace", DP_NS])
        .arg("--listeners")
        .arg(listeners)
        .args(["--admin-port", &admin_port.to_string()])
        .args(["--lease-duration", "4s", "--lease-retry", "1s"])
        .args(["--verify-interval", "1s", "--identity", id])
        .args(["--sink-status-interval", "2s"])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
        .env("KUBECONFIG", kubeconfig)
        .env("WEIR_ADMIN_TOKEN", DP_TOKEN)
        .env("RUST_LOG", "info,weir_operator=debug");
    cmd
}

/// The last-known-good snapshot text from the Secret the operator writes.
async fn lkg_snapshot(client: &Client) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), DP_NS);
    let s = secrets.get("weir-snapshot").await.unwrap();
    let data = s.data.unwrap();
    String::from_utf8(data["snapshot.json"].0.clone()).unwrap()
}

/// resourceVersions of every weir object and the snapshot Secret.
async fn resource_versions(client: &Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let routes: Api<ProxyRoute> = Api::all(client.clone());
    for r in routes.list(&Default::default()).await.unwrap() {
        out.push((
            format!("route {}", r.metadata.name.unwrap_or_default()),
            r.metadata.resource_version.unwrap_or_default(),
        ));
    }
    let backends: Api<Backend> = Api::all(client.clone());
    for b in backends.list(&Default::default()).await.unwrap() {
        out.push((
            format!("backend {}", b.metadata.name.unwrap_or_default()),
            b.metadata.resource_version.unwrap_or_default(),
        ));
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), DP_NS);
    let lkg = secrets.get("weir-snapshot").await.unwrap();
    out.push((
        "snapshot secret".into(),
        lkg.metadata.resource_version.unwrap_or_default(),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd and kube-apiserver; run `make e2e`"]
async fn operator_end_to_end() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cluster = start_cluster(dir).await;
    let client = cluster.client.clone();
    let result = tokio::time::timeout(
        Duration::from_secs(240),
        scenario(&client, dir, &cluster.kubeconfig),
    )
    .await;
    match result {
        Ok(Ok(())) => eprintln!("e2e: passed in {:?}", started.elapsed()),
        Ok(Err(e)) => std::panic::resume_unwind(e),
        Err(_) => panic!("e2e scenario timed out after 240s"),
    }
}

/// Runs the checks; a panic inside is returned so the caller can print logs first.
async fn scenario(
    client: &Client,
    dir: &Path,
    kubeconfig: &Path,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let (client, dir, kubeconfig) = (client.clone(), dir.to_path_buf(), kubeconfig.to_path_buf());
    let handle = tokio::spawn(async move { checks(&client, &dir, &kubeconfig).await });
    handle.await.map_err(|e| match e.try_into_panic() {
        Ok(p) => p,
        Err(e) => Box::new(e.to_string()),
    })
}

async fn checks(client: &Client, dir: &Path, kubeconfig: &Path) {
    // CRDs from crds/, namespaces.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Where cargo runs the test (not where it was compiled: the target dir may be shared).
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let crd_dir = Path::new(&manifest_dir).join("../crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&crd_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let crd: CustomResourceDefinition =
            yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        apply(&crds, &name, serde_json::to_value(&crd).unwrap()).await;
        names.push(name);
    }
    assert_eq!(names.len(), 3, "three CRDs in crds/");
    for name in &names {
        eventually(30, &format!("CRD {name} established"), || async {
            let c = crds.get(name).await.ok()?;
            let est = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            est.then_some(())
        })
        .await;
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in [DP_NS, NS] {
        apply(
            &nss,
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }

    // Echo backends, two dataplanes and their Pod objects.
    let echo_a = format!("127.0.0.1:{}", free_port());
    let echo_b = format!("127.0.0.1:{}", free_port());
    let echo_cmd = |name: &str, addr: &str| {
        let mut c = Command::new(bin("weir-echo"));
        c.args(["--listen", addr, "--name", name]);
        Proc::spawn(&format!("echo-{name}"), dir, c)
    };
    let _echo_a = echo_cmd("a", &echo_a);
    let mut echo_b_proc = echo_cmd("b", &echo_b);
    let admin_port = free_port();
    let listen_port = free_port();
    let tls_port = free_port();
    let dp_ips = ["127.0.0.2", "127.0.0.3"];
    let mut dataplanes: Vec<Proc> = dp_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut c = Command::new(bin("weir-dataplane"));
            c.args(["--admin-address", &format!("{ip}:{admin_port}")])
                .env("WEIR_ADMIN_TOKEN", DP_TOKEN)
                .env("RUST_LOG", "info,weir::access=off");
            Proc::spawn(&format!("dataplane-{i}"), dir, c)
        })
        .collect();
    for (i, ip) in dp_ips.iter().enumerate() {
        register_pod(client, &format!("dataplane-{i}"), ip).await;
    }
    let listeners = dir.join("listeners.yaml");
    std::fs::write(
        &listeners,
        format!(
            "- {{name: http, address: '$(POD_IP):{listen_port}', protocol: http}}\n\
             - {{name: https, address: '$(POD_IP):{tls_port}', protocol: https, http3: {{enabled: false}}}}\n"
        ),
    )
    .unwrap();

    let operator_metrics = free_port();
    let mut operator = Proc::spawn(
        "operator-1",
        dir,
        operator_cmd(
            kubeconfig,
            &listeners,
            admin_port,
            "operator-1",
            operator_metrics,
        ),
    );

    // 1. Backend + ProxyRoute -> traffic through both dataplanes reaches both backends.
    let backends: Api<Backend> = Api::namespaced(client.clone(), NS);
    let routes: Api<ProxyRoute> = Api::namespaced(client.clone(), NS);
    apply(
        &backends,
        "echo",
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "echo"},
            "spec": {"endpoints": [{"address": echo_a}, {"address": echo_b}]},
        }),
    )
    .await;
    apply(
        &routes,
        "api",
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "api"},
            "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                                "backendRefs": [{"name": "echo"}]}]},
        }),
    )
    .await;
    let t = Instant::now();
    for ip in dp_ips {
        let addr = format!("{ip}:{listen_port}");
        eventually(
            60,
            &format!("traffic via {addr} reaches both backends"),
            || {
                let addr = addr.clone();
                async move {
                    let mut seen = std::collections::BTreeSet::new();
                    for _ in 0..8 {
                        seen.insert(served_by(&addr, "/api/hello")?);
                    }
                    (seen.len() == 2).then_some(())
                }
            },
        )
        .await;
    }
    eprintln!(
        "e2e: route serving on both dataplanes after {:?}",
        t.elapsed()
    );

    let route_json = |name: &'static str| {
        let routes = routes.clone();
        async move { serde_json::to_value(routes.get(name).await.ok()?).ok() }
    };
    let api_status = eventually(30, "ProxyRoute api Programmed=True on 2 pods", || async {
        let v = route_json("api").await?;
        let p = condition(&v, "Programmed")?;
        (p["status"] == "True" && v["status"]["programmedPods"] == 2).then_some(v)
    })
    .await;
    for t in ["Accepted", "ResolvedRefs", "Programmed"] {
        let c = condition(&api_status, t).unwrap();
        assert_eq!(c["status"], "True", "{t}: {c}");
        assert_eq!(c["observedGeneration"], 1, "{t}: {c}");
        assert!(c["lastTransitionTime"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')));
    }
    assert_eq!(api_status["status"]["backends"], "apps/echo");
    assert_eq!(api_status["status"]["totalEndpoints"], 2);
    let be = serde_json::to_value(backends.get("echo").await.unwrap()).unwrap();
    assert_eq!(condition(&be, "Ready").unwrap()["status"], "True", "{be}");
    assert_eq!(be["status"]["totalEndpoints"], 2);
    // The last-known-good snapshot is in the Secret.
    let snap = weir_config::parse_json(lkg_snapshot(client).await.as_bytes()).unwrap();
    assert!(snap.routes.iter().any(|r| r.name == "apps/api"));
    eprintln!("e2e: status Programmed, snapshot Secret written");

    // 2. An invalid regex route is not accepted, with the field path; others keep working.
    apply(&routes, "bad", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "bad"},
        "spec": {"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/x(["}}],
                            "backendRefs": [{"name": "echo"}]}]},
    }))
    .await;
    let bad = eventually(30, "ProxyRoute bad Accepted=False", || async {
        let v = route_json("bad").await?;
        let a = condition(&v, "Accepted")?;
        (a["status"] == "False").then_some(a)
    })
    .await;
    assert_eq!(bad["reason"], "Invalid");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].matches[0].path"),
        "{bad}"
    );
    // Also a route with a missing backend: ResolvedRefs=False.
    apply(&routes, "dangling", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "dangling"},
        "spec": {"rules": [{"matches": [{"path": {"value": "/dangling"}}], "backendRefs": [{"name": "nope"}]}]},
    }))
    .await;
    eventually(30, "ProxyRoute dangling ResolvedRefs=False", || async {
        let v = route_json("dangling").await?;
        let c = condition(&v, "ResolvedRefs")?;
        (c["status"] == "False" && c["reason"] == "BackendNotFound").then_some(())
    })
    .await;
    for ip in dp_ips {
        assert!(served_by(&format!("{ip}:{listen_port}"), "/api/still").is_some());
    }
    let api_now = route_json("api").await.unwrap();
    assert_eq!(condition(&api_now, "Programmed").unwrap()["status"], "True");
    eprintln!("e2e: invalid routes reported, valid one keeps serving");

    // 3. A Service-backed Backend follows EndpointSlice changes (v1beta1 on this server).
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    apply(
        &svcs,
        "web",
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        }),
    )
    .await;
    let slice_ar = weir_operator::controller::endpoint_slice_resource(client)
        .await
        .unwrap();
    let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &slice_ar);
    let slice = |target: &str| {
        let (host, port) = target.split_once(':').unwrap();
        json!({
            "apiVersion": slice_ar.api_version, "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port.parse::<u16>().unwrap(), "protocol": "TCP"}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
        })
    };
    apply_dynamic(&slices, &slice_ar, "web-1", slice(&echo_a)).await;
    apply(
        &backends,
        "web",
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "web"},
            "spec": {"service": {"name": "web", "port": 80}},
        }),
    )
    .await;
    apply(&routes, "web", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "web"},
        "spec": {"rules": [{"matches": [{"path": {"value": "/web"}}], "backendRefs": [{"name": "web"}]}]},
    }))
    .await;
    let addr0 = format!("{}:{listen_port}", dp_ips[0]);
    eventually(30, "/web served by echo a", || async {
        (served_by(&addr0, "/web")? == "a").then_some(())
    })
    .await;
    apply_dynamic(&slices, &slice_ar, "web-1", slice(&echo_b)).await;
    eventually(30, "/web follows the EndpointSlice to echo b", || async {
        (served_by(&addr0, "/web")? == "b").then_some(())
    })
    .await;
    eprintln!("e2e: Service-backed Backend follows EndpointSlice changes");

    // 4. Health: pods' GET /backends reports flow into Backend and ProxyRoute status.
    apply(&backends, "echo", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "echo"},
        "spec": {"endpoints": [{"address": echo_a}, {"address": echo_b}],
                 "healthCheck": {"tcp": {}, "interval": "300ms", "jitter": "50ms", "timeout": "250ms",
                                 "unhealthyThreshold": 1, "healthyThreshold": 1}},
    }))
    .await;
    let backend_json = || {
        let backends = backends.clone();
        async move { serde_json::to_value(backends.get("echo").await.ok()?).ok() }
    };
    eventually(30, "ProxyRoute api healthy 2/2 and Programmed", || async {
        let v = route_json("api").await?;
        let p = condition(&v, "Programmed")?;
        (v["status"]["healthy"] == "2/2" && p["status"] == "True" && p["observedGeneration"] == 1)
            .then_some(())
    })
    .await;
    // What `kubectl get proxyroutes` prints (server-side printer columns).
    let table = table_rows(client, "proxyroutes").await;
    let api_row = table.iter().find(|r| r[0] == "api").expect("api row");
    assert_eq!(
        (api_row[3].as_str(), api_row[4].as_str()),
        ("True", "2/2"),
        "{table:?}"
    );
    let be_table = table_rows(client, "backends").await;
    let echo_row = be_table.iter().find(|r| r[0] == "echo").expect("echo row");
    assert_eq!(
        (echo_row[1].as_str(), echo_row[2].as_str()),
        ("2/2", "True"),
        "{be_table:?}"
    );
    eprintln!("e2e: kubectl-style tables: proxyroutes {api_row:?}, backends {echo_row:?}");

    // Conditions of the spec just applied (generation 2), not the previous one's: Ready goes
    // Pending and back to True once every pod runs it, a transition the checks below must not
    // mistake for the endpoint going down.
    let healthy_before = eventually(
        30,
        "Backend echo Ready and not Degraded for its current spec",
        || async {
            let v = backend_json().await?;
            let generation = v["metadata"]["generation"].clone();
            let d = condition(&v, "Degraded")?;
            let r = condition(&v, "Ready")?;
            (d["status"] == "False"
                && r["status"] == "True"
                && d["observedGeneration"] == generation
                && r["observedGeneration"] == generation)
                .then_some(v)
        },
    )
    .await;
    let ready_since = condition(&healthy_before, "Ready").unwrap()["lastTransitionTime"].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps have 1 s resolution
    echo_b_proc.stop();
    let down = eventually(30, "endpoint b unhealthy in Backend status", || async {
        let v = backend_json().await?;
        let eps = v["status"]["endpoints"].as_array()?.clone();
        let b = eps
            .iter()
            .find(|e| e["address"] == echo_b.as_str())?
            .clone();
        (b["healthy"] == false && condition(&v, "Degraded")?["status"] == "True").then_some(v)
    })
    .await;
    assert_eq!(down["status"]["healthyEndpoints"], 1, "{down}");
    let b_status = down["status"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == echo_b.as_str())
        .unwrap()
        .clone();
    assert_eq!(b_status["seenBy"], "2/2", "{b_status}");
    assert!(
        b_status["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{b_status}"
    );
    let ready = condition(&down, "Ready").unwrap();
    assert_eq!(ready["status"], "True", "one healthy endpoint left");
    assert_eq!(
        ready["lastTransitionTime"], ready_since,
        "Ready did not flip"
    );
    let degraded_since = condition(&down, "Degraded").unwrap()["lastTransitionTime"].clone();
    assert_ne!(
        degraded_since,
        condition(&healthy_before, "Degraded").unwrap()["lastTransitionTime"]
    );
    eventually(30, "ProxyRoute api healthy 1/2", || async {
        (route_json("api").await?["status"]["healthy"] == "1/2").then_some(())
    })
    .await;
    operator_page(operator_metrics, &echo_b).await;
    for ip in dp_ips {
        for _ in 0..4 {
            assert_eq!(
                served_by(&format!("{ip}:{listen_port}"), "/api/x").as_deref(),
                Some("a"),
                "traffic avoids the unhealthy endpoint"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _echo_b_again = echo_cmd("b", &echo_b);
    let up = eventually(30, "endpoint b healthy again", || async {
        let v = backend_json().await?;
        (v["status"]["healthyEndpoints"] == 2 && condition(&v, "Degraded")?["status"] == "False")
            .then_some(v)
    })
    .await;
    assert_ne!(
        condition(&up, "Degraded").unwrap()["lastTransitionTime"],
        degraded_since
    );
    assert_eq!(
        condition(&up, "Ready").unwrap()["lastTransitionTime"],
        ready_since
    );
    eventually(30, "ProxyRoute api healthy 2/2 again", || async {
        (route_json("api").await?["status"]["healthy"] == "2/2").then_some(())
    })
    .await;
    eprintln!("e2e: endpoint down/up reflected in status with correct transition times");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let reasons = eventually(10, "events for the transitions", || async {
        let list = events.list(&Default::default()).await.ok()?;
        let got: std::collections::BTreeSet<(String, String)> = list
            .items
            .iter()
            .map(|e| {
                (
                    e.regarding
                        .as_ref()
                        .and_then(|r| r.name.clone())
                        .unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                )
            })
            .collect();
        let want = [
            ("echo", "EndpointDown"),
            ("echo", "EndpointUp"),
            ("echo", "Degraded"),
            ("echo", "Recovered"),
            ("bad", "NotAccepted"),
            ("dangling", "RefsNotResolved"),
            ("api", "Programmed"),
        ];
        want.iter()
            .all(|(n, r)| got.contains(&(n.to_string(), r.to_string())))
            .then_some(got)
    })
    .await;
    eprintln!("e2e: events {reasons:?}");

    // 5. Steady state: no writes while nothing changes.
    eventually(30, "route web Programmed", || async {
        let v = route_json("web").await?;
        (condition(&v, "Programmed")?["status"] == "True").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = resource_versions(client).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(before, resource_versions(client).await, "writes while idle");
    eprintln!("e2e: no writes while idle");

    // 6. Operator stopped: dataplanes keep serving; a dataplane restarted meanwhile boots from
    // the snapshot Secret (the file a pod would mount, `$(POD_IP)` expanded by the dataplane from
    // its POD_IP variable). Operator restarted: no writes.
    operator.stop();
    for ip in dp_ips {
        assert!(served_by(&format!("{ip}:{listen_port}"), "/api/x").is_some());
    }
    // As written: the dataplane expands `$(POD_IP)` from its POD_IP variable.
    let text = lkg_snapshot(client).await;
    assert!(text.contains("$(POD_IP)"));
    let boot = dir.join("boot-snapshot.json");
    std::fs::write(&boot, text).unwrap();
    dataplanes[0].stop();
    let mut c = Command::new(bin("weir-dataplane"));
    c.args(["--admin-address", &format!("{}:{admin_port}", dp_ips[0])])
        .arg("--config")
        .arg(&boot)
        .env("POD_IP", dp_ips[0])
        .env("WEIR_ADMIN_TOKEN", DP_TOKEN)
        .env("RUST_LOG", "info,weir::access=off");
    dataplanes[0] = Proc::spawn("dataplane-0b", dir, c);
    eventually(
        20,
        "dataplane booted from the snapshot Secret serves",
        || async {
            let addr = format!("{}:{listen_port}", dp_ips[0]);
            (served_by(&addr, "/api/boot").is_some()
                && served_by(&addr, "/web").as_deref() == Some("b"))
            .then_some(())
        },
    )
    .await;
    eprintln!("e2e: operator down: dataplanes serve, one restarted from the snapshot Secret");
    let metrics_port = free_port();
    let mut operator = Proc::spawn(
        "operator-2",
        dir,
        operator_cmd(
            kubeconfig,
            &listeners,
            admin_port,
            "operator-2",
            metrics_port,
        ),
    );
    eventually(20, "restarted operator leads", || async {
        operator.log_text().contains("became leader").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = resource_versions(client).await;
    assert_eq!(
        before, after,
        "the restarted operator wrote although nothing changed"
    );
    assert!(!operator.log_text().contains("status updated"));
    assert!(
        !operator.log_text().contains("pushed snapshot"),
        "re-pushed an unchanged snapshot"
    );
    eprintln!("e2e: restarted operator made no writes");
    let (code, metrics) =
        http_get(&format!("127.0.0.1:{metrics_port}"), "/metrics").expect("operator /metrics");
    assert_eq!(code, 200);
    for line in [
        "weir_operator_leader 1",
        "weir_operator_pods_ready 2",
        "weir_operator_pods_programmed 2",
        "weir_operator_status_writes_total 0",
        "weir_operator_routes_invalid 2",
        "weir_operator_pushes_total{result=\"ok\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    eprintln!("e2e: operator /metrics agrees");

    // 7. A dataplane that restarts (same Pod) gets the snapshot again.
    let ip = dp_ips[1];
    dataplanes[1].stop();
    let mut c = Command::new(bin("weir-dataplane"));
    c.args(["--admin-address", &format!("{ip}:{admin_port}")])
        .env("WEIR_ADMIN_TOKEN", DP_TOKEN)
        .env("RUST_LOG", "info,weir::access=off");
    dataplanes[1] = Proc::spawn("dataplane-1b", dir, c);
    let addr1 = format!("{ip}:{listen_port}");
    eventually(30, "restarted dataplane re-programmed", || async {
        served_by(&addr1, "/api/again").map(|_| ())
    })
    .await;
    eprintln!("e2e: restarted dataplane re-programmed");

    // 8. Two replicas: only the Lease holder writes; killing it hands over.
    let mut standby = Proc::spawn(
        "operator-3",
        dir,
        operator_cmd(
            kubeconfig,
            &listeners,
            admin_port,
            "operator-3",
            free_port(),
        ),
    );
    eventually(20, "standby synced", || async {
        standby.log_text().contains("caches synced").then_some(())
    })
    .await;
    apply(&routes, "ha", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "ha"},
        "spec": {"rules": [{"matches": [{"path": {"value": "/ha"}}], "backendRefs": [{"name": "echo"}]}]},
    }))
    .await;
    eventually(30, "route ha Programmed (by the leader)", || async {
        let v = route_json("ha").await?;
        (condition(&v, "Programmed")?["status"] == "True").then_some(())
    })
    .await;
    let standby_log = standby.log_text();
    assert!(
        !standby_log.contains("became leader"),
        "standby took the lease"
    );
    assert!(
        !standby_log.contains("status updated"),
        "standby wrote status"
    );
    assert!(!standby_log.contains("pushed snapshot"), "standby pushed");
    assert!(
        operator.log_text().contains("status updated"),
        "leader wrote status"
    );
    operator.kill();
    let killed = Instant::now();
    apply(&routes, "ha", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "ha"},
        "spec": {"hostnames": ["ha.example.com"],
                 "rules": [{"matches": [{"path": {"value": "/ha"}}], "backendRefs": [{"name": "echo"}]}]},
    }))
    .await;
    eventually(
        30,
        "standby takes over and programs generation 2",
        || async {
            let v = route_json("ha").await?;
            let p = condition(&v, "Programmed")?;
            (p["status"] == "True" && p["observedGeneration"] == 2).then_some(())
        },
    )
    .await;
    let handover = killed.elapsed();
    assert!(standby.log_text().contains("became leader"));
    assert!(
        handover < Duration::from_secs(10),
        "handover took {handover:?} (lease 4s)"
    );
    eprintln!("e2e: standby took over {handover:?} after the leader was killed (lease 4s)");

    // 9. Secrets: credentials, rotation, a missing Secret, a TLS Secret, a sink API key.
    secrets_and_sinks(
        client,
        dir,
        &dp_ips,
        listen_port,
        tls_port,
        &echo_a,
        &standby,
    )
    .await;

    standby.stop();
    for d in &mut dataplanes {
        d.stop();
    }
}

/// Section 9 of the scenario (the operator `leader` leads): Secret-backed credentials reach the
/// upstream and follow rotation, a missing Secret is reported in status, a TLS Secret is served
/// by SNI, and a TelemetrySink ships with its API key and gets counters from the pods. Secret
/// values never show in status, events or the operator's log.
async fn secrets_and_sinks(
    client: &Client,
    dir: &Path,
    dp_ips: &[&str],
    listen_port: u16,
    tls_port: u16,
    echo: &str,
    leader: &Proc,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let backends: Api<Backend> = Api::namespaced(client.clone(), NS);
    let routes: Api<ProxyRoute> = Api::namespaced(client.clone(), NS);
    let sinks: Api<TelemetrySink> = Api::namespaced(client.clone(), NS);
    let token_secret = |v: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "upstream-token"},
               "stringData": {"token": v}})
    };
    apply(
        &secrets,
        "upstream-token",
        token_secret("Bearer s3cret-one"),
    )
    .await;
    let cred_backend = |secret: &str| {
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "cred"},
            "spec": {"endpoints": [{"address": echo}],
                     "credential": {"header": "x-upstream-auth",
                                    "secretKeyRef": {"name": secret, "key": "token"}}},
        })
    };
    apply(&backends, "cred", cred_backend("upstream-token")).await;
    apply(&routes, "cred", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "cred"},
        "spec": {"rules": [{"matches": [{"path": {"value": "/cred"}}], "backendRefs": [{"name": "cred"}]}]},
    }))
    .await;
    let upstream_saw = |want: &'static str| {
        let addrs: Vec<String> = dp_ips
            .iter()
            .map(|ip| format!("{ip}:{listen_port}"))
            .collect();
        async move {
            for a in &addrs {
                let (code, body) = http_get(a, "/cred")?;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                let h = v["headers"]["x-upstream-auth"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        v["headers"]["x-upstream-auth"][0]
                            .as_str()
                            .map(str::to_string)
                    });
                if code != 200 || h.as_deref() != Some(want) {
                    return None;
                }
            }
            Some(())
        }
    };
    eventually(
        30,
        "the credential from the Secret reaches the upstream",
        || upstream_saw("Bearer s3cret-one"),
    )
    .await;
    apply(
        &secrets,
        "upstream-token",
        token_secret("Bearer s3cret-two"),
    )
    .await;
    eventually(30, "the rotated credential reaches the upstream", || {
        upstream_saw("Bearer s3cret-two")
    })
    .await;
    eprintln!("e2e: Backend credential from a Secret reaches the upstream and follows rotation");

    // A missing Secret: ResolvedRefs=False naming the field; the Backend is left out, the rest
    // keeps serving.
    apply(&backends, "cred", cred_backend("no-such-secret")).await;
    let c = eventually(30, "Backend cred ResolvedRefs=False", || async {
        let v = serde_json::to_value(backends.get("cred").await.ok()?).ok()?;
        let c = condition(&v, "ResolvedRefs")?;
        (c["status"] == "False" && c["observedGeneration"] == 2).then_some(c)
    })
    .await;
    let msg = c["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.credential.secretKeyRef") && msg.contains("apps/no-such-secret"),
        "{c}"
    );
    assert!(served_by(&format!("{}:{listen_port}", dp_ips[0]), "/api/x").is_some());
    apply(&backends, "cred", cred_backend("upstream-token")).await;
    eprintln!("e2e: a missing Secret is reported in ResolvedRefs: {msg}");

    // A TLS Secret (kubernetes.io/tls) served by SNI on the https listener.
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=tls.example.com"])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req failed");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    apply(
        &secrets,
        "tls-cert",
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls-cert"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": read("tls.crt"), "tls.key": read("tls.key")},
        }),
    )
    .await;
    apply(
        &routes,
        "tls",
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "tls"},
            "spec": {"hostnames": ["tls.example.com"],
                     "tls": {"certificateRefs": [{"name": "tls-cert"}]},
                     "rules": [{"backendRefs": [{"name": "echo"}]}]},
        }),
    )
    .await;
    let served_subject = |ip: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {ip}:{tls_port} -servername tls.example.com </dev/null 2>/dev/null \
                 | openssl x509 -noout -subject 2>/dev/null"
            ))
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).to_string())
    };
    for ip in dp_ips {
        let ip = ip.to_string();
        eventually(
            30,
            "the TLS Secret's certificate is served for its SNI name",
            || {
                let s = served_subject(&ip);
                async move { s.filter(|s| s.contains("tls.example.com")).map(|_| ()) }
            },
        )
        .await;
    }
    let v = serde_json::to_value(routes.get("tls").await.unwrap()).unwrap();
    assert_eq!(
        condition(&v, "ResolvedRefs").unwrap()["status"],
        "True",
        "{v}"
    );
    eprintln!("e2e: the TLS Secret's certificate is served by SNI");

    // A contract field exposed on ProxyRoute (schema from weir-config): a direct response.
    apply(
        &routes,
        "direct",
        json!({
            "apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute", "metadata": {"name": "direct"},
            "spec": {"rules": [{"matches": [{"path": {"value": "/direct"}}],
                                "directResponse": {"status": 204}}]},
        }),
    )
    .await;
    for ip in dp_ips {
        let addr = format!("{ip}:{listen_port}");
        eventually(30, "directResponse route answers 204", || {
            let got = http_get(&addr, "/direct").map(|(code, _)| code);
            async move { (got == Some(204)).then_some(()) }
        })
        .await;
    }
    eprintln!("e2e: a ProxyRoute directResponse (contract field) is served");

    // A TelemetrySink with its API key from a Secret; counters in status come from the pods.
    let receiver = SinkReceiver::start();
    apply(
        &secrets,
        "sink-key",
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sink-key"},
            "stringData": {"key": "k3y-for-sink"},
        }),
    )
    .await;
    apply(&sinks, "metrics", json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TelemetrySink", "metadata": {"name": "metrics"},
        "spec": {"type": "httpJson", "endpoint": format!("http://{}/ingest", receiver.addr),
                 "signals": ["metrics"], "flushInterval": "500ms",
                 "apiKeySecretRef": {"name": "sink-key", "key": "key"}},
    }))
    .await;
    let st = eventually(
        60,
        "TelemetrySink Ready with shipped counters from both pods",
        || async {
            let v = serde_json::to_value(sinks.get("metrics").await.ok()?).ok()?;
            let ready = condition(&v, "Ready")?;
            let shipped = v["status"]["shipped"].as_u64()?;
            (ready["status"] == "True" && shipped > 0 && v["status"]["lastSuccessTime"].is_string())
                .then_some(v)
        },
    )
    .await;
    let keys = receiver.api_keys();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "k3y-for-sink"),
        "{keys:?}"
    );
    assert_eq!(
        condition(&st, "ResolvedRefs").unwrap()["status"],
        "True",
        "{st}"
    );
    let table = table_rows(client, "telemetrysinks").await;
    let row = table
        .iter()
        .find(|r| r[0] == "metrics")
        .expect("metrics row");
    assert_eq!(row[2], "True", "{table:?}");
    assert!(row[3].parse::<u64>().is_ok_and(|n| n > 0), "{table:?}");
    eprintln!(
        "e2e: TelemetrySink shipped with its Secret API key; status {:?}",
        &st["status"]
    );
    // No churn: the sink's counters move all the time, yet status is written at most once per
    // --sink-status-interval (2s here): count the writes over 5s.
    let rv = |v: &serde_json::Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..25 {
        let v = serde_json::to_value(sinks.get("metrics").await.unwrap()).unwrap();
        versions.insert(rv(&v));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        versions.len() <= 4,
        "{} sink status writes in 5s",
        versions.len()
    );
    sinks.delete("metrics", &Default::default()).await.unwrap();

    // Tracing (sampling) from the cluster: `spec.tracing` of otlp sinks; the schema bounds the
    // ratio, the older sink wins and the newer, different one reports the conflict.
    let traces = |ratio: f64| {
        json!({"type": "otlp", "endpoint": "http://127.0.0.1:9", "signals": ["traces"],
               "tracing": {"samplingRatio": ratio, "serviceName": "e2e-edge"}})
    };
    let bad: Result<TelemetrySink, _> = serde_json::from_value(json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "TelemetrySink",
        "metadata": {"name": "bad-traces"}, "spec": traces(1.5),
    }));
    let err = sinks
        .create(&Default::default(), &bad.unwrap())
        .await
        .expect_err("samplingRatio 1.5 rejected by the CRD schema");
    assert!(err.to_string().contains("samplingRatio"), "{err}");
    for (name, ratio) in [("a-traces", 0.25), ("b-traces", 0.5)] {
        apply(
            &sinks,
            name,
            json!({
                "apiVersion": "weir.dev/v1alpha1", "kind": "TelemetrySink",
                "metadata": {"name": name}, "spec": traces(ratio),
            }),
        )
        .await;
    }
    let tracing_cond = |name: &'static str| {
        let sinks = sinks.clone();
        async move {
            let v = serde_json::to_value(sinks.get(name).await.ok()?).ok()?;
            (condition(&v, "Ready")?["status"] == "True")
                .then(|| condition(&v, "TracingApplied"))
                .flatten()
        }
    };
    let won = eventually(60, "a-traces Ready, TracingApplied", || {
        tracing_cond("a-traces")
    })
    .await;
    assert_eq!(won["status"], "True", "{won}");
    let lost = eventually(60, "b-traces Ready, TracingApplied", || {
        tracing_cond("b-traces")
    })
    .await;
    assert_eq!(
        (&lost["status"], &lost["reason"]),
        (&json!("False"), &json!("Conflicted")),
        "{lost}"
    );
    assert!(
        lost["message"]
            .as_str()
            .unwrap_or_default()
            .contains("a-traces"),
        "{lost}"
    );
    eprintln!("e2e: TelemetrySink spec.tracing applied from the oldest sink, conflict reported");
    for name in ["a-traces", "b-traces"] {
        sinks.delete(name, &Default::default()).await.unwrap();
    }

    // Secret values never show in status, events or the operator's log.
    let mut seen = String::new();
    for b in backends.list(&Default::default()).await.unwrap() {
        seen.push_str(&serde_json::to_string(&b.status).unwrap());
    }
    for r in routes.list(&Default::default()).await.unwrap() {
        seen.push_str(&serde_json::to_string(&r.status).unwrap());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    for e in events.list(&Default::default()).await.unwrap() {
        seen.push_str(&e.note.unwrap_or_default());
    }
    seen.push_str(&leader.log_text());
    for secret in ["s3cret-one", "s3cret-two", "k3y-for-sink", "PRIVATE KEY"] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
    eprintln!("e2e: no Secret value in status, events or the operator log");
}

/// An HTTP server that answers 200 to every request and records its `x-api-key` headers.
struct SinkReceiver {
    addr: String,
    keys: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SinkReceiver {
    fn start() -> SinkReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let keys: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let k = keys.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let k = k.clone();
                std::thread::spawn(move || serve_sink_conn(conn, &k));
            }
        });
        SinkReceiver { addr, keys }
    }

    fn api_keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

/// Reads requests (Content-Length or chunked bodies) off one connection, answering each.
fn serve_sink_conn(conn: std::net::TcpStream, keys: &std::sync::Mutex<Vec<String>>) {
    use std::io::BufRead;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = std::io::BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut chunked = false;
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
                match n.as_str() {
                    "content-length" => len = v.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "x-api-key" => keys.lock().unwrap().push(v.to_string()),
                    _ => {}
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut buf = vec![0; n + 2];
                if r.read_exact(&mut buf).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut buf = vec![0; len];
            if r.read_exact(&mut buf).is_err() {
                return;
            }
        }
        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// The rows (cells as strings) the API server's Table output gives for a weir kind in NS,
/// i.e. what `kubectl get` prints.
/// The operator's status page in headless Chromium while endpoint `down` is unhealthy: both
/// dataplane pods ready and running the desired version, the invalid route's `Accepted=False`,
/// the unhealthy endpoint with its reason; a screenshot goes to the test's output directory.
async fn operator_page(metrics_port: u16, down: &str) {
    let url = format!("http://127.0.0.1:{metrics_port}/ui");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browser::dump_dom(&url)
    })
    .await
    .expect("browser task");
    let desired = dom
        .split_once("<code id=\"desired\">")
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|| panic!("no desired version on the operator page:\n{dom}"));
    for i in 0..2 {
        let pod = format!("{DP_NS}/dataplane-{i}");
        assert_eq!(
            browser::attr_after(&dom, "data-pod", &pod, "data-ready").as_deref(),
            Some("true"),
            "{pod} not shown ready:\n{dom}"
        );
        assert_eq!(
            browser::attr_after(&dom, "data-pod", &pod, "data-version").as_deref(),
            Some(desired.as_str()),
            "{pod} not shown running the desired version {desired}:\n{dom}"
        );
    }
    let bad = browser::row(&dom, "data-route", &format!("{NS}/bad"))
        .unwrap_or_else(|| panic!("no row for route {NS}/bad:\n{dom}"));
    assert!(
        bad.contains("data-condition=\"Accepted\" data-status=\"False\"")
            && bad.contains("spec.rules[0].matches[0].path"),
        "route bad not shown Accepted=False with the field path: {bad}"
    );
    let echo = browser::row(&dom, "data-backend", &format!("{NS}/echo"))
        .unwrap_or_else(|| panic!("no row for backend {NS}/echo:\n{dom}"));
    assert!(
        echo.contains(&format!("{down}: ")) && echo.contains("1/2"),
        "backend echo does not show {down} unhealthy: {echo}"
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("status-page")
        .join("operator-ui.png");
    tokio::task::spawn_blocking({
        let out = out.clone();
        move || browser::screenshot(&url, &out)
    })
    .await
    .expect("browser task");
    eprintln!(
        "e2e: operator status page checked; screenshot: {}",
        out.display()
    );
}

async fn table_rows(client: &Client, plural: &str) -> Vec<Vec<String>> {
    let req = http::Request::get(format!("/apis/weir.dev/v1alpha1/namespaces/{NS}/{plural}"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect()
}

async fn apply_dynamic(
    api: &Api<DynamicObject>,
    ar: &ApiResource,
    name: &str,
    v: serde_json::Value,
) {
    let _ = ar;
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&v))
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}
