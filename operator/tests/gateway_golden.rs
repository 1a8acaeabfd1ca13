//! Golden tests of the Gateway API compile step: every `tests/gateway/<case>.yaml` (Kubernetes
//! objects, several YAML documents) is compiled, and the result (the snapshot part and every
//! status) must equal `tests/gateway/<case>.expected.yaml`.
//!
//! `WEIR_BLESS=1 cargo test -p weir-operator --test gateway_golden` rewrites the expected files
//! from what the code produces now; review the diff before committing it.
//!
//! Stand-ins for what a cluster would add (documented here so a case reads on its own):
//! - every Service gets one ready endpoint per case-wide counter, `10.1.<n>.1`, on each port's
//!   `targetPort` (else its `port`): the Pods behind it;
//! - a Secret annotated `weir.test/generate-tls: "host.example"` gets a fresh self-signed
//!   certificate and key for that host (the expected output never shows PEM);
//! - the fleet is the chart's default: Service port 80 -> listener `http`, 443 -> `https`,
//!   with address `192.0.2.10`; a `kind: WeirTestFleet` document with `ports: [{port,
//!   listener, protocol}]` and `addresses: [..]` replaces it.

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weir_operator::compile::{ServiceIndex, ServicePort, Slice};
use weir_operator::gateway::types::*;
use weir_operator::gateway::{compile_gateway_api, FleetPort, GatewayInputs};

#[derive(Default)]
struct Case {
    classes: Vec<GatewayClass>,
    gateways: Vec<Gateway>,
    http: Vec<HTTPRoute>,
    grpc: Vec<GRPCRoute>,
    grants: Vec<ReferenceGrant>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    services: ServiceIndex,
    app_protocols: BTreeMap<(String, u16), String>,
    secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    fleet: Option<Vec<FleetPort>>,
    addresses: Option<Vec<GatewayStatusAddress>>,
}

#[derive(Deserialize)]
struct TestFleet {
    ports: Vec<TestFleetPort>,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
struct TestFleetPort {
    port: u16,
    listener: String,
    protocol: weir_config::ListenerProtocol,
}

fn load(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let mut case = Case::default();
    let mut n = 0;
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let v = yaml_serde::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let ctx = format!("{}: {kind}", path.display());
        let json: serde_json::Value = yaml_serde::from_value(v).unwrap();
        let get = |json: serde_json::Value| -> serde_json::Value {
            let mut json = json;
            // What the API server would set.
            let meta = json["metadata"].as_object_mut().expect("metadata");
            meta.entry("generation").or_insert(1.into());
            json
        };
        match kind.as_str() {
            "GatewayClass" => case
                .classes
                .push(serde_json::from_value(get(json)).expect(&ctx)),
            "Gateway" => case
                .gateways
                .push(serde_json::from_value(get(json)).expect(&ctx)),
            "HTTPRoute" => case
                .http
                .push(serde_json::from_value(get(json)).expect(&ctx)),
            "GRPCRoute" => case
                .grpc
                .push(serde_json::from_value(get(json)).expect(&ctx)),
            "ReferenceGrant" => case
                .grants
                .push(serde_json::from_value(get(json)).expect(&ctx)),
            "Namespace" => {
                let ns: Namespace = serde_json::from_value(json).expect(&ctx);
                case.namespaces.insert(
                    ns.metadata.name.clone().unwrap_or_default(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                );
            }
            "Service" => {
                let s: Service = serde_json::from_value(json).expect(&ctx);
                let k = format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or("default"),
                    s.metadata.name.as_deref().unwrap_or_default()
                );
                n += 1;
                let mut ports = Vec::new();
                let mut slice = Slice {
                    ports: Vec::new(),
                    endpoints: vec![(vec![format!("10.1.{n}.1")], true)],
                };
                for p in s.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                    let port = u16::try_from(p.port).unwrap();
                    let name = p.name.clone().unwrap_or_default();
                    let target = match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                            u16::try_from(*t).unwrap()
                        }
                        _ => port,
                    };
                    if let Some(a) = &p.app_protocol {
                        case.app_protocols.insert((k.clone(), port), a.clone());
                    }
                    ports.push(ServicePort {
                        name: name.clone(),
                        port,
                    });
                    slice.ports.push((name, target));
                }
                case.services.services.insert(k.clone(), ports);
                case.services.slices.insert(k, vec![slice]);
            }
            "Secret" => {
                let s: Secret = serde_json::from_value(json).expect(&ctx);
                let k = format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or("default"),
                    s.metadata.name.as_deref().unwrap_or_default()
                );
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .string_data
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                let host = s
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("weir.test/generate-tls"));
                if let Some(host) = host {
                    let c = rcgen::generate_simple_self_signed(vec![host.clone()]).unwrap();
                    data.insert("tls.crt".into(), c.cert.pem().into_bytes());
                    data.insert("tls.key".into(), c.signing_key.serialize_pem().into_bytes());
                }
                case.secrets.insert(k, Some(data));
            }
            "WeirTestFleet" => {
                let f: TestFleet = serde_json::from_value(json).expect(&ctx);
                case.fleet = Some(
                    f.ports
                        .into_iter()
                        .map(|p| FleetPort {
                            port: p.port,
                            listener: p.listener,
                            protocol: p.protocol,
                        })
                        .collect(),
                );
                case.addresses = Some(
                    f.addresses
                        .into_iter()
                        .map(|a| GatewayStatusAddress {
                            type_: Some("IPAddress".into()),
                            value: a,
                        })
                        .collect(),
                );
            }
            other => panic!("{ctx}: unknown kind {other:?}"),
        }
    }
    case
}

/// What a case's output looks like on disk: the snapshot part (certificates without PEM) and
/// every status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Golden {
    routes: Vec<weir_config::Route>,
    backends: BTreeMap<String, weir_config::Backend>,
    /// Listener -> the hostnames of each certificate added to it.
    certificates: BTreeMap<String, Vec<Vec<String>>>,
    gateway_classes: BTreeMap<String, GatewayClassStatus>,
    gateways: BTreeMap<String, GatewayStatus>,
    http_routes: BTreeMap<String, Vec<RouteParentStatus>>,
    grpc_routes: BTreeMap<String, Vec<RouteParentStatus>>,
    /// The snapshot with these parts merged in passes the contract's validation.
    snapshot_errors: Option<String>,
}

fn run(case: &Case) -> Golden {
    let fleet = case.fleet.clone().unwrap_or_else(|| {
        vec![
            FleetPort {
                port: 80,
                listener: "http".into(),
                protocol: weir_config::ListenerProtocol::Http,
            },
            FleetPort {
                port: 443,
                listener: "https".into(),
                protocol: weir_config::ListenerProtocol::Https,
            },
        ]
    });
    let addresses = case.addresses.clone().unwrap_or_else(|| {
        vec![GatewayStatusAddress {
            type_: Some("IPAddress".into()),
            value: "192.0.2.10".into(),
        }]
    });
    let out = compile_gateway_api(GatewayInputs {
        classes: &case.classes,
        gateways: &case.gateways,
        http_routes: &case.http,
        grpc_routes: &case.grpc,
        grants: &case.grants,
        namespaces: &case.namespaces,
        services: &case.services,
        app_protocols: &case.app_protocols,
        secrets: &case.secrets,
        fleet: &fleet,
        addresses: &addresses,
    });
    let mut snap = weir_config::parse_yaml(
        "listeners:\n- {name: http, address: '127.0.0.1:8080', protocol: http}\n- {name: https, address: '127.0.0.1:8443', protocol: https}\n",
    )
    .unwrap();
    out.merge_into(&mut snap);
    Golden {
        routes: out.routes.clone(),
        backends: out.backends.clone(),
        certificates: out
            .certificates
            .iter()
            .map(|(l, cs)| (l.clone(), cs.iter().map(|c| c.hostnames.clone()).collect()))
            .collect(),
        gateway_classes: out.classes.clone(),
        gateways: out.gateways.clone(),
        http_routes: out.http_routes.clone(),
        grpc_routes: out.grpc_routes.clone(),
        snapshot_errors: snap.validate().err().map(|e| e.to_string()),
    }
}

fn cases_dir() -> PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir).join("tests/gateway")
}

#[test]
fn golden_cases() {
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".expected.yaml")
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no cases in {}", cases_dir().display());
    let mut failed = Vec::new();
    for input in &inputs {
        let got = yaml_serde::to_string(&run(&load(input))).unwrap();
        let expected_path = input.with_extension("expected.yaml");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if want != got {
            eprintln!(
                "--- {} differs (WEIR_BLESS=1 rewrites it); got:\n{got}",
                expected_path.display()
            );
            failed.push(expected_path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "golden files differ: {failed:?}");
}

/// Compiling twice gives the same result (no hidden order or randomness besides the test's
/// own generated certificates, which the golden output leaves out).
#[test]
fn deterministic() {
    for e in std::fs::read_dir(cases_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".expected.yaml") {
            continue;
        }
        let case = load(&p);
        let a = yaml_serde::to_string(&run(&case)).unwrap();
        let b = yaml_serde::to_string(&run(&case)).unwrap();
        assert_eq!(a, b, "{}", p.display());
    }
}
