//! Golden tests of the per-workload compile: each `testdata/<case>.yaml` holds sidecar pods
//! (with the injector's real boot snapshot unless given), ProxyRoutes and Backends;
//! `testdata/<case>.out.json` the plan (each pod's snapshot, each attached route's
//! `status.workloads`). `WEIR_UPDATE_GOLDEN=1` rewrites the outputs (review the diff).

use super::*;
use crate::inject::settings::InboundProtocol;
use crate::workload::status::attachment_status;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CasePod {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    boot: Option<String>,
    #[serde(default)]
    no_boot: bool,
    /// The injector's key; default: computed from the labels and boot snapshot as it does.
    snapshot_key: Option<String>,
}

#[derive(Deserialize)]
struct Case {
    pods: Vec<CasePod>,
    routes: Vec<ProxyRoute>,
    backends: Vec<Backend>,
    /// The workloads and Services `spec.targetRefs` may name, as the API returns them.
    #[serde(default)]
    deployments: Vec<k8s_openapi::api::apps::v1::Deployment>,
    #[serde(default)]
    statefulsets: Vec<k8s_openapi::api::apps::v1::StatefulSet>,
    #[serde(default)]
    daemonsets: Vec<k8s_openapi::api::apps::v1::DaemonSet>,
    #[serde(default)]
    services: Vec<k8s_openapi::api::core::v1::Service>,
}

impl Case {
    /// Through the runtime's own reduction.
    fn targets(&self) -> crate::workload::targets::TargetIndex {
        crate::workload::targets::index(
            &self.deployments,
            &self.statefulsets,
            &self.daemonsets,
            &self.services,
        )
    }
}

const CASES: &[&str] = &["attach-and-conflict", "invalid-and-old-boot", "target-refs"];

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/workload/testdata")
}

fn boot() -> String {
    let web = crate::inject::patch::InboundPort {
        name: "web".into(),
        port: 15080,
        app_port: 8080,
        advertised: None,
    };
    crate::inject::patch::sidecar_snapshot(InboundProtocol::Http, &[web], 15001)
}

fn load(name: &str) -> (Vec<SidecarPod>, Case) {
    let text = std::fs::read_to_string(dir().join(format!("{name}.yaml")))
        .unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let case: Case = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let pods = case
        .pods
        .iter()
        .map(|p| SidecarPod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
            boot: if p.no_boot {
                None
            } else {
                Some(p.boot.clone().unwrap_or_else(boot))
            },
            snapshot_key: p.snapshot_key.clone().or_else(|| {
                (!p.no_boot).then(|| {
                    crate::inject::patch::snapshot_key(
                        &p.labels,
                        &p.boot.clone().unwrap_or_else(boot),
                    )
                })
            }),
        })
        .collect();
    (pods, case)
}

fn plan_of(pods: &[SidecarPod], case: &Case) -> Plan {
    compile(Inputs {
        pods,
        routes: &case.routes,
        backends: &case.backends,
        services: &ServiceIndex::default(),
        secrets: &SecretIndex::default(),
        targets: &case.targets(),
    })
}

fn render(pods_in: &[SidecarPod], plan: &Plan) -> Value {
    let pods: serde_json::Map<String, Value> = plan
        .pods
        .iter()
        .map(|(k, p)| {
            let v = match p {
                PodPlan::Snapshot(s) => serde_json::to_value(&**s).expect("snapshot json"),
                PodPlan::Unusable(why) => json!({"unusable": why}),
            };
            (k.clone(), v)
        })
        .collect();
    // Status as if every attached pod acknowledged, at a fixed time.
    let every = crate::workload::status::PodFacts {
        programmed: plan.pods.keys().cloned().collect(),
        ..Default::default()
    };
    let routes: serde_json::Map<String, Value> = plan
        .routes
        .iter()
        .map(|(k, a)| {
            let st = attachment_status(a, &every, None, "2026-01-01T00:00:00Z");
            (k.clone(), json!({"status": st}))
        })
        .collect();
    // The snapshot Secrets, as versions (the snapshots themselves are under "pods").
    let secrets: BTreeMap<String, BTreeMap<String, String>> = secret_entries(pods_in, plan)
        .into_iter()
        .map(|(ns, e)| {
            let e = e.into_iter().map(|(k, s)| (k, s.version.clone())).collect();
            (ns, e)
        })
        .collect();
    json!({"pods": pods, "routes": routes, "secrets": secrets})
}

#[test]
fn golden() {
    let update = std::env::var_os("WEIR_UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for name in CASES {
        let (pods, case) = load(name);
        let got = render(&pods, &plan_of(&pods, &case));
        let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
        // The v1.20 API server's apply turns an empty message into null and refuses the write.
        assert!(
            !text.contains("\"message\": \"\""),
            "{name}: a condition with an empty message"
        );
        let path = dir().join(format!("{name}.out.json"));
        if update {
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            failed.push(format!("{name}: got\n{text}"));
        }
    }
    assert!(failed.is_empty(), "golden mismatch:\n{}", failed.join("\n"));
}

/// Every pushed snapshot is one the dataplane accepts, keeps the injector's inbound side, and
/// serves attached routes only on the loopback outbound listener.
#[test]
fn snapshots_keep_the_promises() {
    let mut checked = 0;
    for name in CASES {
        let (pods, case) = load(name);
        let plan = plan_of(&pods, &case);
        assert_eq!(
            plan,
            plan_of(&pods, &case),
            "{name}: the compile is deterministic"
        );
        for (k, p) in &plan.pods {
            let PodPlan::Snapshot(s) = p else { continue };
            s.validate()
                .unwrap_or_else(|e| panic!("{name}: {k}: invalid snapshot: {e}"));
            assert_eq!(s.version, format!("workload-{}", s.content_hash()));
            let inbound = s.routes.iter().filter(|r| r.name == "inbound").count();
            assert_eq!(inbound, 1, "{name}: {k}");
            for r in &s.routes {
                let want = if r.name == "inbound" {
                    INBOUND_LISTENER
                } else {
                    OUTBOUND_LISTENER
                };
                assert_eq!(
                    r.listeners,
                    vec![want.to_string()],
                    "{name}: {k}: {}",
                    r.name
                );
            }
            let out = s
                .listeners
                .iter()
                .find(|l| l.name == OUTBOUND_LISTENER)
                .expect("outbound");
            assert!(out.address.starts_with("127.0.0.1:"), "{name}: {k}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} snapshots checked");
}

/// The conflict the issue asks for, spelled out: the newer route loses on every pod of the
/// workload, its status names the field path and the winner, and the older one is unaffected.
#[test]
fn conflicting_attachment_is_reported_on_the_newer_route() {
    let (pods, case) = load("attach-and-conflict");
    let plan = plan_of(&pods, &case);
    let v2 = &plan.routes["shop/payments-v2"];
    assert!(v2.pods.is_empty());
    assert_eq!(
        v2.conflicts.keys().cloned().collect::<Vec<_>>(),
        vec!["shop/web-1".to_string(), "shop/web-2".to_string()]
    );
    let msg = &v2.conflicts["shop/web-1"];
    assert!(msg.starts_with("spec.rules[1].matches[0]:"), "{msg}");
    assert!(msg.contains("route shop/payments "), "{msg}");
    let st = attachment_status(v2, &Default::default(), None, "t");
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Conflicted")
        .expect("Conflicted");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "RouteConflict")
    );
    let v1 = &plan.routes["shop/payments"];
    assert_eq!(v1.pods.len(), 2);
    assert!(v1.conflicts.is_empty());
    // The worker gets only its own route, the other namespace none.
    let PodPlan::Snapshot(w) = &plan.pods["shop/worker-1"] else {
        panic!("worker has no snapshot")
    };
    let names: Vec<&str> = w.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["inbound", "shop/audit"]);
    assert!(
        !w.backends.contains_key("shop/payments"),
        "unused Backends stay out"
    );
    let PodPlan::Snapshot(o) = &plan.pods["other/web-1"] else {
        panic!("other/web-1 has no snapshot")
    };
    assert_eq!(o.routes.len(), 1);
    // Removing the older route hands the claim to the newer one.
    let mut case2 = case;
    case2
        .routes
        .retain(|r| r.metadata.name.as_deref() != Some("payments"));
    let plan2 = plan_of(&pods, &case2);
    assert_eq!(plan2.routes["shop/payments-v2"].pods.len(), 2);
    assert!(plan2.routes["shop/payments-v2"].conflicts.is_empty());
}

/// The snapshot Secret holds, per namespace, one entry per workload (replicas share it), the
/// very snapshot pushed to its pods; a key whose pods no longer agree (relabelled after
/// admission) and pods without a key are left out, and a namespace whose pods have no entry
/// still appears (empty), so stale entries get dropped.
#[test]
fn secret_entries_are_the_pushed_snapshots() {
    let (mut pods, case) = load("attach-and-conflict");
    let plan = plan_of(&pods, &case);
    let secrets = secret_entries(&pods, &plan);
    let web = pods[0].snapshot_key.clone().expect("web-1 key");
    assert_eq!(
        pods[1].snapshot_key.as_ref(),
        Some(&web),
        "replicas share a key"
    );
    assert_eq!(
        secrets["shop"].len(),
        2,
        "web and worker: {:?}",
        secrets["shop"].keys()
    );
    assert_eq!(secrets["other"].len(), 1);
    let PodPlan::Snapshot(pushed) = &plan.pods["shop/web-1"] else {
        panic!("web-1 has no snapshot")
    };
    assert_eq!(secrets["shop"][&web], *pushed);
    // Same labels and boot in another namespace: the same key, but in that namespace's own
    // Secret, with that namespace's routes (none).
    assert_ne!(secrets["other"][&web].version, pushed.version);
    assert_eq!(secrets["other"][&web].routes.len(), 1);

    // web-2 relabelled (no longer app=web): same key, another snapshot -> no entry for it.
    pods[1].labels.insert("app".into(), "web-debug".into());
    // The worker from an older injector: no key.
    pods[2].snapshot_key = None;
    let plan = plan_of(&pods, &case);
    let secrets = secret_entries(&pods, &plan);
    assert!(secrets["shop"].is_empty(), "{:?}", secrets["shop"].keys());
    assert_eq!(secrets["other"].len(), 1);
}

fn ref_reason(st: &crate::crd::WorkloadAttachmentStatus, i: usize) -> (String, String, String) {
    let c = &st.target_refs[i].conditions[0];
    assert_eq!(c.type_, "ResolvedRefs");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn cond_of<'a>(st: &'a crate::crd::WorkloadAttachmentStatus, t: &str) -> &'a crate::crd::Condition {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap_or_else(|| panic!("no {t} condition"))
}

/// targetRefs: a Deployment's matchExpressions pick its pods only; every failing ref has its
/// own entry with the reason and `spec.targetRefs[i]`; a route setting both ways is refused.
#[test]
fn target_refs_resolve_and_report_per_ref() {
    let (pods, case) = load("target-refs");
    let plan = plan_of(&pods, &case);
    let facts = Default::default();
    let pay = &plan.routes["shop/to-payments"];
    assert_eq!(
        pay.pods.iter().cloned().collect::<Vec<_>>(),
        vec!["shop/web-1".to_string(), "shop/web-2".to_string()],
        "the canary is not the Deployment's (track In [stable])"
    );
    let st = attachment_status(pay, &facts, None, "t");
    assert_eq!(ref_reason(&st, 0).0, "True");
    assert_eq!(st.target_refs[0].selected_pods, 2);

    let audit = &plan.routes["shop/to-audit"];
    assert_eq!(
        audit.pods.len(),
        4,
        "every web pod and db-0: {:?}",
        audit.pods
    );
    let st = attachment_status(audit, &facts, None, "t");
    assert_eq!(st.target_refs.len(), 4);
    assert_eq!(st.target_refs[0].target.kind, "Service");
    assert_eq!(
        (
            st.target_refs[0].selected_pods,
            st.target_refs[1].selected_pods
        ),
        (3, 1)
    );
    let (s, r, m) = ref_reason(&st, 2);
    assert_eq!((s.as_str(), r.as_str()), ("False", "TargetNotFound"));
    assert!(
        m.starts_with("spec.targetRefs[2]: Deployment shop/missing not found"),
        "{m}"
    );
    let (s, r, m) = ref_reason(&st, 3);
    assert_eq!((s.as_str(), r.as_str()), ("False", "UnsupportedKind"));
    assert!(m.starts_with("spec.targetRefs[3]:"), "{m}");
    assert_eq!(cond_of(&st, "Attached").status, "True");

    let both = &plan.routes["shop/both"];
    assert!(both.pods.is_empty());
    let st = attachment_status(both, &facts, None, "t");
    let a = cond_of(&st, "Attached");
    assert_eq!((a.status.as_str(), a.reason.as_str()), ("False", "Invalid"));
    assert!(
        a.message.starts_with("spec.targetRefs: set either"),
        "{}",
        a.message
    );

    let st = attachment_status(&plan.routes["shop/idle"], &facts, None, "t");
    assert_eq!(ref_reason(&st, 0).1, "NoPods");
    assert_eq!(ref_reason(&st, 1).1, "NoPods");
    let a = cond_of(&st, "Attached");
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("False", "NoMatchingPods")
    );
    assert!(a.message.contains("spec.targetRefs[0]"), "{}", a.message);

    let cross = attachment_status(&plan.routes["shop/cross"], &facts, None, "t");
    assert_eq!(ref_reason(&cross, 0).1, "TargetNotFound");
    let PodPlan::Snapshot(o) = &plan.pods["other/web-1"] else {
        panic!("other/web-1 has no snapshot")
    };
    assert_eq!(o.routes.len(), 1, "no route of shop reaches other");
}

/// A deleted target detaches the route (and says so), re-creating it re-attaches it; a new pod
/// of the Deployment (scale up) gets the route in its snapshot.
#[test]
fn target_deleted_recreated_and_scaled() {
    let (mut pods, mut case) = load("target-refs");
    let before = plan_of(&pods, &case);
    let web = case.deployments.remove(0);
    let gone = plan_of(&pods, &case);
    let pay = &gone.routes["shop/to-payments"];
    assert!(pay.pods.is_empty());
    let st = attachment_status(pay, &Default::default(), None, "t");
    assert_eq!(ref_reason(&st, 0).1, "TargetNotFound");
    let a = cond_of(&st, "Attached");
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("False", "NoMatchingPods")
    );
    assert!(
        a.message.contains("Deployment shop/web not found"),
        "{}",
        a.message
    );
    for p in ["shop/web-1", "shop/web-2"] {
        let PodPlan::Snapshot(s) = &gone.plans_pod(p) else {
            panic!("{p}")
        };
        assert!(
            !s.routes.iter().any(|r| r.name == "shop/to-payments"),
            "{p}"
        );
    }
    case.deployments.insert(0, web);
    assert_eq!(
        plan_of(&pods, &case),
        before,
        "re-created: attached as before"
    );

    let mut web3 = pods[0].clone();
    web3.name = "web-3".into();
    pods.push(web3);
    let scaled = plan_of(&pods, &case);
    assert_eq!(scaled.routes["shop/to-payments"].pods.len(), 3);
    let PodPlan::Snapshot(s) = scaled.plans_pod("shop/web-3") else {
        panic!("web-3 has no snapshot")
    };
    assert!(s.routes.iter().any(|r| r.name == "shop/to-payments"));
}

impl Plan {
    fn plans_pod(&self, k: &str) -> &PodPlan {
        &self.pods[k]
    }
}

/// A namespace whose workloads' snapshots exceed what one Secret holds: the workload that does
/// not fit is left out of the Secret (the rest is written), and its routes say so
/// (`Persisted=False`, `SnapshotTooLarge`), while every pod still gets its snapshot to push.
#[test]
fn snapshot_too_large_for_the_secret_is_reported() {
    use crate::workload::snapshots::{fit, left_out_pods};
    let (pods, mut case) = load("attach-and-conflict");
    // shop/payments (used by the web pods' route) gets 60,000 endpoints with host names gzip
    // cannot shrink much: over the limit even compressed. (The limit is 256 KiB here, not the
    // API server's 1 MiB, to keep the test small; `fit` takes it as an argument.)
    let limit = 256 * 1024;
    let payments = case
        .backends
        .iter_mut()
        .find(|b| b.metadata.name.as_deref() == Some("payments"))
        .expect("payments Backend");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    payments.spec.endpoints = (0..60_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            crate::crd::StaticEndpoint {
                address: format!("h{x:016x}.shop:8080"),
                weight: 1,
            }
        })
        .collect();
    let plan = plan_of(&pods, &case);
    let PodPlan::Snapshot(web) = &plan.pods["shop/web-1"] else {
        panic!("web-1 has no snapshot")
    };
    let web_json = serde_json::to_vec(&**web).expect("json");
    let web_packed = weir_config::pack_gzip(&web_json).len();
    assert!(web_packed > limit, "{web_packed} bytes compressed");

    let entries = secret_entries(&pods, &plan);
    let fitted = fit(&entries["shop"], limit);
    let web_key = pods[0].snapshot_key.clone().expect("key");
    assert!(fitted.left_out.contains_key(&web_key));
    assert_eq!(fitted.data.len(), 1, "the worker's entry is still written");
    let too_large = left_out_pods("shop", &fitted, &pods);
    assert_eq!(
        too_large.keys().cloned().collect::<Vec<_>>(),
        vec!["shop/web-1".to_string(), "shop/web-2".to_string()]
    );
    let facts = crate::workload::status::PodFacts {
        programmed: plan.pods.keys().cloned().collect(),
        too_large,
    };
    let st = attachment_status(&plan.routes["shop/payments"], &facts, None, "t");
    let p = cond_of(&st, "Persisted");
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", "SnapshotTooLarge")
    );
    assert!(
        p.message.contains("2 of 2 attached pod(s)"),
        "{}",
        p.message
    );
    assert!(
        p.message.contains(&format!("workload key {web_key}")),
        "{}",
        p.message
    );
    // Live pushes are unaffected: the route is programmed on both pods.
    assert_eq!(cond_of(&st, "Programmed").status, "True");
    let st = attachment_status(&plan.routes["shop/audit"], &facts, None, "t");
    assert_eq!(cond_of(&st, "Persisted").status, "True");
}

/// A pod whose sidecar took over two ports: its pushed snapshot keeps one inbound listener per
/// port, each with its own route to its own app port, and the attached routes go on the
/// outbound listener only (never on either inbound one).
#[test]
fn every_inbound_port_keeps_its_listener() {
    use crate::inject::patch::{sidecar_snapshot, InboundPort};
    let (mut pods, case) = load("attach-and-conflict");
    let port = |name: &str, port, app_port| InboundPort {
        name: name.into(),
        port,
        app_port,
        advertised: Some(443),
    };
    let two = sidecar_snapshot(
        InboundProtocol::Https,
        &[port("http", 15080, 8080), port("grpc", 15082, 9090)],
        15001,
    );
    let pod = pods
        .iter_mut()
        .find(|p| p.key() == "shop/web-1")
        .expect("shop/web-1");
    pod.boot = Some(two.clone());
    pod.snapshot_key = Some(crate::inject::patch::snapshot_key(&pod.labels, &two));
    let plan = plan_of(&pods, &case);
    let PodPlan::Snapshot(s) = &plan.pods["shop/web-1"] else {
        panic!("shop/web-1: {:?}", plan.pods["shop/web-1"]);
    };
    s.validate().expect("valid snapshot");
    let listeners: Vec<(&str, &str)> = s
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address.as_str()))
        .collect();
    assert_eq!(
        listeners,
        vec![
            ("inbound", "0.0.0.0:15080"),
            ("inbound-grpc", "0.0.0.0:15082"),
            ("outbound", "127.0.0.1:15001")
        ]
    );
    let routes: Vec<(&str, Vec<String>, String)> = s
        .routes
        .iter()
        .map(|r| {
            let b = &r.rules[0].backend_refs[0].name;
            (r.name.as_str(), r.listeners.clone(), b.clone())
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("inbound", vec!["inbound".to_string()], "app".to_string()),
            (
                "inbound-grpc",
                vec!["inbound-grpc".to_string()],
                "app-grpc".to_string()
            ),
            (
                "shop/payments",
                vec!["outbound".to_string()],
                "shop/payments".to_string()
            ),
        ]
    );
    let eps = |b: &str| -> Vec<String> {
        s.backends[b]
            .endpoints
            .iter()
            .map(|e| e.address.clone())
            .collect()
    };
    assert_eq!(eps("app"), vec!["127.0.0.1:8080"]);
    assert_eq!(eps("app-grpc"), vec!["127.0.0.1:9090"]);
    // Its replica with the one-port boot snapshot is compiled apart (another group), and the
    // Secret keeps each under its own key.
    let PodPlan::Snapshot(other) = &plan.pods["shop/web-2"] else {
        panic!("shop/web-2");
    };
    assert_ne!(other.version, s.version);
    let entries = &secret_entries(&pods, &plan)["shop"];
    assert!(entries.values().any(|e| e.version == s.version));
    assert!(entries.values().any(|e| e.version == other.version));
}
