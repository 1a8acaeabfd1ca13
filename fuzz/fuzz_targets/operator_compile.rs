//! The operator's compile step (ProxyRoutes, Backends, TelemetrySinks, Services,
//! EndpointSlices, Secrets and listeners → one Snapshot) on arbitrary specs.
//!
//! Input: JSON `{"routes": [ProxyRoute], "backends": [Backend], "sinks": [TelemetrySink],
//! "listeners": [Listener], "services": {"ns/name": [[portName, port]]}, "slices":
//! {"ns/name": [{"ports": [[name, port]], "endpoints": [[[address], ready]]}]}, "secrets":
//! {"ns/name": {key: text} | null}}`, every member optional. No panic; compiling is
//! deterministic; when the operator's own listeners are fine, the snapshot it would push to a
//! pod parses and validates in the dataplane (compile leaves out what would not).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use std::collections::BTreeMap;
use weir_operator::compile::{compile, Inputs, SecretIndex, ServiceIndex, ServicePort, Slice};
use weir_operator::crd::{Backend, ProxyRoute, TelemetrySink};

#[derive(Deserialize)]
struct SliceIn {
    #[serde(default)]
    ports: Vec<(String, u16)>,
    #[serde(default)]
    endpoints: Vec<(Vec<String>, bool)>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct In {
    routes: Vec<ProxyRoute>,
    backends: Vec<Backend>,
    sinks: Vec<TelemetrySink>,
    listeners: Vec<weir_config::Listener>,
    services: BTreeMap<String, Vec<(String, u16)>>,
    slices: BTreeMap<String, Vec<SliceIn>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<In>(data) else {
        return;
    };
    let services = ServiceIndex {
        services: input
            .services
            .into_iter()
            .map(|(k, ports)| {
                let ports = ports
                    .into_iter()
                    .map(|(name, port)| ServicePort { name, port })
                    .collect();
                (k, ports)
            })
            .collect(),
        slices: input
            .slices
            .into_iter()
            .map(|(k, v)| {
                let v = v
                    .into_iter()
                    .map(|s| Slice {
                        ports: s.ports,
                        endpoints: s.endpoints,
                    })
                    .collect();
                (k, v)
            })
            .collect(),
    };
    let secrets: SecretIndex = input
        .secrets
        .into_iter()
        .map(|(k, v)| {
            let v = v.map(|m| m.into_iter().map(|(k, t)| (k, t.into_bytes())).collect());
            (k, v)
        })
        .collect();
    let inputs = Inputs {
        routes: &input.routes,
        backends: &input.backends,
        sinks: &input.sinks,
        services: &services,
        secrets: &secrets,
        listeners: &input.listeners,
    };
    let out = compile(inputs);
    let again = compile(inputs);
    assert_eq!(out.snapshot, again.snapshot, "compile is deterministic");
    if out.global.is_empty() {
        let body = weir_operator::push::body_for(&out.snapshot, "10.1.2.3");
        let pushed = weir_config::parse_json(&body).expect("the pushed snapshot parses");
        if let Err(e) = pushed.validate() {
            panic!("the operator would push a snapshot the dataplane rejects: {e}");
        }
    }
});
