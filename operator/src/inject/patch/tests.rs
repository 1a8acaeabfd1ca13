//! Golden tests: each `testdata/<case>.yaml` holds a pod, its namespace's labels, the
//! namespace's Services and settings; `testdata/<case>.out.json` the outcome (the patch, the
//! skip reason or the denial). `WEIR_UPDATE_GOLDEN=1` rewrites the outputs (review the diff).
//! Every patch is also applied to its pod and the result checked for the invariants the
//! injector promises (port rename, idempotence).

use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    pod: Pod,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    settings: Option<serde_json::Value>,
}

const CASES: &[&str] = &[
    "namespace-labelled",
    "pod-label-https-service",
    "pod-annotation-existing-volumes",
    "already-injected",
    "unlabelled",
    "opt-out",
    "native-sidecar",
    "bad-protocol",
    "bad-memory",
    "bad-inject-value",
    "no-named-port",
    "unknown-inbound-port",
    "grace-period-poststart",
    "app-own-prestop",
    "bad-outbound-port",
    "outbound-port-annotation",
    "multi-port-https",
    "app-protocol-service",
    "inbound-ports-list",
    "no-convention-fallback",
    "bad-inbound-ports",
    "inbound-ports-empty-entry",
    "both-inbound-annotations",
    "port-name-collision",
];

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inject/testdata")
}

fn load(name: &str) -> (Case, Settings) {
    let text = std::fs::read_to_string(dir().join(format!("{name}.yaml")))
        .unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let case: Case = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    let mut settings = json!({"image": "ghcr.io/weir-dev/weir-dataplane:0.1.0"});
    if let Some(serde_json::Value::Object(extra)) = &case.settings {
        for (k, v) in extra {
            settings[k] = v.clone();
        }
    }
    let settings: Settings = serde_json::from_value(settings).expect("settings");
    (case, settings)
}

fn run(case: &Case, settings: &Settings) -> Result<Outcome, Denial> {
    decide(&Input {
        pod: &case.pod,
        namespace_labels: &case.namespace_labels,
        services: &case.services,
        settings,
    })
}

fn render(out: &Result<Outcome, Denial>) -> serde_json::Value {
    match out {
        Ok(Outcome::Skip(why)) => json!({"skip": why}),
        Ok(Outcome::Patch(ops)) => json!({"patch": ops}),
        Err(d) => json!({"deny": {"field": d.field, "message": d.message}}),
    }
}

#[test]
fn golden() {
    let update = std::env::var_os("WEIR_UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for name in CASES {
        let (case, settings) = load(name);
        let got = render(&run(&case, &settings));
        let path = dir().join(format!("{name}.out.json"));
        let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
        if update {
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != text {
            failed.push(format!("{name}: got\n{text}"));
        }
    }
    assert!(failed.is_empty(), "golden mismatch:\n{}", failed.join("\n"));
}

/// Applies each patch to its pod: the result is a valid Pod whose Service-facing port name
/// now belongs to the sidecar, whose snapshot is a valid Weir config, and on which a second
/// admission changes nothing.
#[test]
fn patched_pods_keep_the_promises() {
    let mut patched = 0;
    for name in CASES {
        let (case, settings) = load(name);
        let Ok(Outcome::Patch(ops)) = run(&case, &settings) else {
            continue;
        };
        let mut doc = serde_json::to_value(&case.pod).expect("pod json");
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).expect("patch parses");
        json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));
        let pod: Pod = serde_json::from_value(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        let spec = pod.spec.as_ref().expect("spec");
        let all: Vec<&Container> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect();
        let sidecar = all
            .iter()
            .find(|c| c.name == settings.container_name)
            .unwrap_or_else(|| panic!("{name}: no sidecar"));
        let injected =
            pod.metadata.annotations.as_ref().expect("annotations")[ANN_INJECTED].clone();
        let taken: Vec<(&str, &str)> = injected
            .split(',')
            .map(|t| t.split_once('=').expect("name=number"))
            .collect();
        let snap = &pod.metadata.annotations.as_ref().expect("annotations")[ANN_SNAPSHOT];
        let cfg = weir_config::load(snap.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: sidecar snapshot invalid: {e}"));
        let mut sidecar_ports = Vec::new();
        let mut hooked = Vec::new();
        for (i, (port_name, number)) in taken.iter().enumerate() {
            // The name the Service targets is now the sidecar's, on its own inbound port.
            let owners: Vec<&str> = all
                .iter()
                .filter(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .any(|p| p.name.as_deref() == Some(*port_name))
                })
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(owners, vec![sidecar.name.as_str()], "{name}");
            let port = sidecar
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(*port_name))
                .map(|p| p.container_port)
                .expect("sidecar port");
            assert!(i32::from(settings.inbound_port) <= port, "{name}: {port}");
            sidecar_ports.push(port);
            // The app still declares its port number, under another name.
            let app = spec
                .containers
                .iter()
                .find(|c| {
                    c.name != sidecar.name
                        && c.ports
                            .iter()
                            .flatten()
                            .any(|p| p.container_port.to_string() == *number)
                })
                .unwrap_or_else(|| panic!("{name}: no app container with port {number}"));
            hooked.push(app.name.clone());
            // Its listener on that port, its route bound to that listener only, to the app's
            // port on loopback (the first keeps the single-port names).
            let listener = if i == 0 {
                INBOUND_LISTENER.to_string()
            } else {
                format!("{INBOUND_LISTENER}-{port_name}")
            };
            let l = cfg
                .listeners
                .iter()
                .find(|l| l.name == listener)
                .unwrap_or_else(|| panic!("{name}: no listener {listener}"));
            assert_eq!(l.address, format!("0.0.0.0:{port}"), "{name}");
            let route = cfg
                .routes
                .iter()
                .find(|r| r.name == listener)
                .unwrap_or_else(|| panic!("{name}: no route {listener}"));
            assert_eq!(route.listeners, vec![listener.clone()], "{name}");
            let backend = &route.rules[0].backend_refs[0].name;
            let eps: Vec<&str> = cfg.backends[backend]
                .endpoints
                .iter()
                .map(|e| e.address.as_str())
                .collect();
            assert_eq!(eps, vec![format!("127.0.0.1:{number}")], "{name}");
        }
        assert_eq!(cfg.routes.len(), taken.len(), "{name}: one route per port");
        // No sidecar port twice, and none of them one the pod already declared.
        let before: Vec<i32> = case
            .pod
            .spec
            .as_ref()
            .expect("spec")
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .map(|p| p.container_port)
            .collect();
        let mut distinct = sidecar_ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            sidecar_ports.len(),
            "{name}: {sidecar_ports:?}"
        );
        assert!(
            sidecar_ports.iter().all(|p| !before.contains(p)),
            "{name}: {sidecar_ports:?} vs {before:?}"
        );
        // No port name twice in the pod (the API server refuses that), each a valid one.
        let mut names: Vec<&str> = all
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.as_deref())
            .collect();
        assert!(names.iter().all(|n| is_port_name(n)), "{name}: {names:?}");
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(n, names.len(), "{name}: duplicate port names");
        // Old clusters: every app container the sidecar forwards to holds its SIGTERM until
        // the sidecar drained (its own preStop, if it had one, is kept instead). Native
        // sidecars outlive the app without a hook.
        hooked.sort_unstable();
        hooked.dedup();
        for app_name in &hooked {
            let app = spec
                .containers
                .iter()
                .find(|c| &c.name == app_name)
                .expect("app container");
            let before = case.pod.spec.as_ref().expect("spec").containers.iter();
            let own = before
                .filter(|c| c.name == app.name)
                .find_map(|c| c.lifecycle.as_ref()?.pre_stop.clone());
            let hook = app.lifecycle.as_ref().and_then(|l| l.pre_stop.clone());
            if settings.native_sidecar || own.is_some() {
                assert_eq!(hook, own, "{name}: app preStop changed");
            } else {
                let get = hook.and_then(|h| h.http_get).expect("drain hook");
                assert_eq!(
                    get.port,
                    IntOrString::Int(i32::from(settings.admin_port)),
                    "{name}"
                );
                assert!(
                    get.path
                        .as_deref()
                        .is_some_and(|p| p.starts_with("/drained?timeout=")),
                    "{name}"
                );
            }
        }
        // Probes of the app never name a port the sidecar now owns.
        for c in spec.containers.iter().filter(|c| c.name != sidecar.name) {
            for p in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
            {
                for port in [
                    p.http_get.as_ref().map(|h| &h.port),
                    p.tcp_socket.as_ref().map(|t| &t.port),
                ]
                .into_iter()
                .flatten()
                {
                    if let IntOrString::String(s) = port {
                        assert!(
                            taken.iter().all(|(n, _)| n != s),
                            "{name}: {} probes the sidecar's {s}",
                            c.name
                        );
                    }
                }
            }
        }
        // The outbound listener is loopback-only, and no inbound route is served on it
        // (the app's outbound calls must never loop back to the app).
        let out = cfg
            .listeners
            .iter()
            .find(|l| l.name == OUTBOUND_LISTENER)
            .unwrap_or_else(|| panic!("{name}: no outbound listener"));
        assert!(
            out.address.starts_with("127.0.0.1:"),
            "{name}: {}",
            out.address
        );
        // The operator finds the pod by this label.
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get(LABEL_SIDECAR).map(String::as_str),
            Some(LABEL_SIDECAR_VALUE),
            "{name}"
        );
        // The admin token is never in the pod spec: it comes from the namespace's Secret.
        let spec_text = serde_json::to_string(&pod.spec).expect("spec json");
        assert!(
            spec_text.contains(TOKEN_SECRET),
            "{name}: token not from the Secret"
        );
        let again = decide(&Input {
            pod: &pod,
            namespace_labels: &case.namespace_labels,
            services: &case.services,
            settings: &settings,
        });
        assert_eq!(again, Ok(Outcome::Skip("already injected")), "{name}");
        patched += 1;
    }
    assert!(patched >= 4, "only {patched} cases injected");
}

#[test]
fn port_names() {
    assert_eq!(derived_port_name("app-", "http"), "app-http");
    assert_eq!(
        derived_port_name("app-", "abcdefghijk-xyz"),
        "app-abcdefghijk"
    );
    assert_eq!(
        derived_port_name("h3-", "abcdefghijk-xyz"),
        "h3-abcdefghijk"
    );
    assert_eq!(
        derived_port_name("app-", "abcdefghij-xyz"),
        "app-abcdefghij"
    );
    for n in ["app-http", "h3-web", "weir-admin"] {
        assert!(is_port_name(n), "{n}");
    }
    for n in ["", "-a", "a-", "a--b", "1234", "UPPER", "abcdefghijklmnop"] {
        assert!(!is_port_name(n), "{n}");
    }
}

#[test]
fn quantities_and_log_levels() {
    for q in ["100m", "64Mi", "1", "1.5", "2G"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "lots", "64MB", "m", "1..2"] {
        assert!(!is_quantity(q), "{q}");
    }
    assert!(is_log_directive("info,weir=debug"));
    assert!(!is_log_directive("info; rm -rf"));
    assert!(!is_log_directive(""));
}

#[test]
fn http_port_names_by_convention() {
    for n in [
        "http",
        "http-admin",
        "http2",
        "h2c",
        "grpc",
        "grpc-web",
        "web",
        "web-ui",
    ] {
        assert!(is_http_port_name(n), "{n}");
    }
    // TLS the app terminates itself, non-HTTP protocols, and mere prefixes are not HTTP.
    for n in [
        "https", "redis", "postgres", "metrics", "httpx", "webhook", "grpcs", "tcp-http",
    ] {
        assert!(!is_http_port_name(n), "{n}");
    }
}

#[test]
fn sidecar_ports_skip_the_pods_and_the_sidecars_own() {
    let avoid: BTreeSet<i32> = [15000, 15001, 15081, 15082].into();
    assert_eq!(allocate_ports(15080, 1, &avoid), Some(vec![15080]));
    assert_eq!(
        allocate_ports(15080, 3, &avoid),
        Some(vec![15080, 15083, 15084])
    );
    assert_eq!(allocate_ports(14999, 2, &avoid), Some(vec![14999, 15002]));
    // Not enough ports below 65536: none rather than fewer.
    assert_eq!(allocate_ports(65534, 3, &BTreeSet::new()), None);
    assert_eq!(
        allocate_ports(65534, 2, &BTreeSet::new()),
        Some(vec![65534, 65535])
    );
}
