//! The pure injection step: `pod + namespace labels + Services + settings -> JSON patch`, or a
//! denial naming the annotation at fault. No I/O here, so every decision is unit-tested on
//! golden inputs (`testdata/`).
//!
//! Port-rename approach (no CNI, no iptables): the Services keep targeting the app's *named*
//! ports. For each port it takes over ([`select_ports`]), the injector gives that name to a
//! sidecar inbound port of its own (allocated from `injector.inboundPort` upward) and renames
//! the app's port (`app-<name>`), so traffic for the Service port enters the sidecar, which
//! proxies it to the app on `127.0.0.1:<app port>`. Probes of the app that named a taken-over
//! port are rewritten to its number, so they keep probing the app itself.

use super::settings::{InboundProtocol, Settings};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, Probe, Service};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Label or annotation (pod) and label (namespace) that turn injection on (`enabled`) or, on
/// a pod, off (`disabled`).
pub const INJECT: &str = "weir.dev/inject";
/// Per-pod settings (annotations).
pub const ANN_INBOUND_PORT: &str = "weir.dev/inbound-port";
/// The ports to take over, a comma-separated list of port names or numbers (instead of the
/// default rule of [`select_ports`]); `weir.dev/inbound-port` is its one-element form.
pub const ANN_INBOUND_PORTS: &str = "weir.dev/inbound-ports";
pub const ANN_INBOUND_PROTOCOL: &str = "weir.dev/inbound-protocol";
pub const ANN_HTTP3_PORT: &str = "weir.dev/http3-advertised-port";
pub const ANN_LOG_LEVEL: &str = "weir.dev/log-level";
pub const ANN_CPU_REQUEST: &str = "weir.dev/proxy-cpu-request";
pub const ANN_MEMORY_REQUEST: &str = "weir.dev/proxy-memory-request";
pub const ANN_MEMORY_LIMIT: &str = "weir.dev/proxy-memory-limit";
pub const ANN_OUTBOUND_PORT: &str = "weir.dev/outbound-port";
/// Written by the injector: marks the pod for the operator's workload controller (a label, so
/// the operator watches only injected pods, server-side filtered).
pub const LABEL_SIDECAR: &str = "weir.dev/sidecar";
pub const LABEL_SIDECAR_VALUE: &str = "injected";
/// The Secret (one per application namespace, written by the operator) holding the sidecars'
/// admin token under [`TOKEN_KEY`]; the sidecar reads it through `secretKeyRef`.
pub const TOKEN_SECRET: &str = "weir-sidecar-token";
pub const TOKEN_KEY: &str = "token";
/// The sidecar's listener names in its snapshot (the operator adds routes to `outbound`).
/// `inbound` is the first taken-over port's; each further one is `inbound-<port name>`.
pub const INBOUND_LISTENER: &str = "inbound";
pub const OUTBOUND_LISTENER: &str = "outbound";
/// Written by the injector: the sidecar's snapshot, mounted through the downward API.
pub const ANN_SNAPSHOT: &str = "weir.dev/sidecar-snapshot";
/// Written by the injector: which app ports the sidecar took over (`name=number,...`, the
/// first is the one of the `inbound` listener).
pub const ANN_INJECTED: &str = "weir.dev/injected";
/// Written by the injector: the pod's key in [`SNAPSHOT_SECRET`] ([`snapshot_key`]).
pub const ANN_SNAPSHOT_KEY: &str = "weir.dev/sidecar-snapshot-key";
/// The Secret (one per application namespace, written by the operator) holding each
/// workload's compiled snapshot under its [`snapshot_key`]. One fixed name per namespace, so
/// RBAC can limit `get`/`update` to it with `resourceNames`.
pub const SNAPSHOT_SECRET: &str = "weir-sidecar-snapshots";

const CONFIG_VOLUME: &str = "weir-sidecar-config";
const WORKLOAD_VOLUME: &str = "weir-sidecar-workload";
const WORKLOAD_DIR: &str = "/etc/weir/workload";
const TMP_VOLUME: &str = "weir-sidecar-tmp";
const CONFIG_DIR: &str = "/etc/weir/sidecar";

/// What the webhook answers.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Allowed unchanged; the reason is logged and counted.
    Skip(&'static str),
    /// Allowed with this RFC 6902 JSON patch.
    Patch(Vec<Value>),
}

/// The pod is refused: `field` is the annotation (or label) path at fault.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Denial {
    pub field: String,
    pub message: String,
}

fn deny(key: &str, message: impl Into<String>) -> Denial {
    Denial {
        field: format!("metadata.annotations[{key}]"),
        message: message.into(),
    }
}

/// Everything the decision needs.
pub struct Input<'a> {
    pub pod: &'a Pod,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub services: &'a [Service],
    pub settings: &'a Settings,
}

/// Is `s` a valid IANA_SVC_NAME (what Kubernetes requires of a port name)?
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// `prefix + name`, cut to a valid port name of at most 15 characters.
fn derived_port_name(prefix: &str, name: &str) -> String {
    let mut s: String = format!("{prefix}{name}").chars().take(15).collect();
    while s.ends_with('-') {
        s.pop();
    }
    s.replace("--", "-")
}

/// The pod's value for `key`: the annotation wins over the label.
fn pod_setting<'p>(pod: &'p Pod, key: &str) -> Option<(&'p str, &'static str)> {
    let m = &pod.metadata;
    if let Some(v) = m.annotations.as_ref().and_then(|a| a.get(key)) {
        return Some((v.as_str(), "annotations"));
    }
    m.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(|v| (v.as_str(), "labels"))
}

fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|s| s.trim())
}

/// A Kubernetes quantity such as `100m`, `64Mi`, `1.5`, `2G` (the suffixes the API accepts).
fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

/// A `RUST_LOG` directive: targets, levels, `=` and `,` only (it lands in an env var verbatim).
fn is_log_directive(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b',' | b':' | b'-'))
}

/// Port names that say "this is HTTP" by convention, as Istio reads them
/// (`<protocol>[-<suffix>]`), HTTP protocols only: what the sidecar takes over by default.
/// `https` is left out on purpose: the sidecar speaks plain HTTP to the app on loopback, so an
/// app port that serves TLS itself cannot sit behind it. Any other named port (`redis`,
/// `postgres`, `metrics`, ...) is left alone unless listed in `weir.dev/inbound-ports`: taking
/// over a port that does not speak HTTP would break it.
pub const HTTP_PORT_NAMES: &[&str] = &["http", "http2", "h2c", "grpc", "web"];

/// Service `appProtocol` values that mark a port as HTTP (lowercased): the port it targets is
/// taken over by default whatever its name.
const HTTP_APP_PROTOCOLS: &[&str] = &[
    "http",
    "http2",
    "h2c",
    "kubernetes.io/h2c",
    "grpc",
    "grpc-web",
];

/// Does a port name follow the HTTP convention ([`HTTP_PORT_NAMES`], alone or with `-suffix`)?
pub fn is_http_port_name(name: &str) -> bool {
    HTTP_PORT_NAMES.iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    })
}

/// A named TCP port of one of the app's containers: what the sidecar can take over (a Service
/// reaches the sidecar only through a port *name* the injector moved to it).
#[derive(Debug, Clone, PartialEq)]
struct NamedPort {
    container: usize,
    port: usize,
    name: String,
    number: i32,
}

fn named_tcp_ports(containers: &[Container]) -> Vec<NamedPort> {
    let mut out = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            if let Some(name) = &p.name {
                out.push(NamedPort {
                    container: ci,
                    port: pi,
                    name: name.clone(),
                    number: p.container_port,
                });
            }
        }
    }
    out
}

/// The Service ports of the Services that select `pod`.
fn service_ports<'s>(
    pod: &Pod,
    services: &'s [Service],
) -> impl Iterator<Item = &'s k8s_openapi::api::core::v1::ServicePort> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .filter(move |spec| {
            spec.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        })
        .flat_map(|spec| spec.ports.iter().flatten())
}

/// Does a Service port reach this pod port (`targetPort` by name or number, else `port`)?
fn targets(sp: &k8s_openapi::api::core::v1::ServicePort, name: &str, number: i32) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &sp.target_port {
        Some(IntOrString::String(s)) => s == name,
        Some(IntOrString::Int(i)) => *i == number,
        None => sp.port == number,
    }
}

/// The app ports the sidecar takes over, in order (the first gets the `inbound` listener):
///
/// 1. `weir.dev/inbound-ports` (or its one-element form `weir.dev/inbound-port`): exactly the
///    ports listed, by name or number, each a named TCP port of an app container;
/// 2. otherwise every named TCP port whose name follows the HTTP convention
///    ([`is_http_port_name`]) or that a selecting Service's TCP port with an HTTP `appProtocol`
///    targets, in the pod's order;
/// 3. otherwise (no port matched) the first named TCP port, as before there were several, so
///    pods that relied on it keep working.
///
/// Empty: nothing to take over (a pod without named ports, e.g. a worker or a Job).
fn select_ports(
    containers: &[Container],
    pod: &Pod,
    services: &[Service],
) -> Result<Vec<NamedPort>, Denial> {
    let named = named_tcp_ports(containers);
    let (key, value) = match (
        annotation(pod, ANN_INBOUND_PORTS),
        annotation(pod, ANN_INBOUND_PORT),
    ) {
        (Some(_), Some(_)) => {
            return Err(deny(
                ANN_INBOUND_PORTS,
                format!("set either {ANN_INBOUND_PORTS} or {ANN_INBOUND_PORT}, not both"),
            ))
        }
        (Some(v), None) => (ANN_INBOUND_PORTS, v),
        (None, Some(v)) if v.contains(',') => {
            return Err(deny(
                ANN_INBOUND_PORT,
                format!(
                "{v:?} is a list: {ANN_INBOUND_PORT} takes one port, {ANN_INBOUND_PORTS} several"
            ),
            ))
        }
        (None, Some(v)) => (ANN_INBOUND_PORT, v),
        (None, None) => {
            let http_service_ports: Vec<_> = service_ports(pod, services)
                .filter(|sp| sp.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .filter(|sp| {
                    sp.app_protocol.as_deref().is_some_and(|a| {
                        HTTP_APP_PROTOCOLS.contains(&a.to_ascii_lowercase().as_str())
                    })
                })
                .collect();
            let chosen: Vec<NamedPort> = named
                .iter()
                .filter(|p| {
                    is_http_port_name(&p.name)
                        || http_service_ports
                            .iter()
                            .any(|sp| targets(sp, &p.name, p.number))
                })
                .cloned()
                .collect();
            return Ok(if chosen.is_empty() {
                named.into_iter().take(1).collect()
            } else {
                chosen
            });
        }
    };
    let mut chosen: Vec<NamedPort> = Vec::new();
    for w in value.split(',').map(str::trim) {
        if w.is_empty() {
            return Err(deny(
                key,
                format!("{value:?} has an empty entry (a comma-separated list of port names or numbers)"),
            ));
        }
        let by_number = w.parse::<i32>().ok();
        let Some(p) = named
            .iter()
            .find(|p| p.name == w || Some(p.number) == by_number)
        else {
            return Err(deny(
                key,
                format!("no container of the pod has a named TCP port {w:?} (the sidecar takes over a named port, the one the Service targets)"),
            ));
        };
        if !chosen.contains(p) {
            chosen.push(p.clone());
        }
    }
    Ok(chosen)
}

/// The sidecar's inbound port numbers, one per taken-over port: from `first` upward, skipping
/// every port in `avoid` (the pod's declared ports, the sidecar's admin and outbound ports).
/// `None` when 65535 is passed first.
fn allocate_ports(first: u16, count: usize, avoid: &BTreeSet<i32>) -> Option<Vec<u16>> {
    let ports: Vec<u16> = (first..=u16::MAX)
        .filter(|p| !avoid.contains(&i32::from(*p)))
        .take(count)
        .collect();
    (ports.len() == count).then_some(ports)
}

/// The Service port that reaches `udp_name` (or the sidecar's port number) over UDP on this
/// pod: what `Alt-Svc` must name.
fn service_udp_port(pod: &Pod, services: &[Service], udp_name: &str, number: u16) -> Option<u16> {
    let mut found: Vec<u16> = service_ports(pod, services)
        .filter(|p| p.protocol.as_deref() == Some("UDP"))
        .filter(|p| targets(p, udp_name, i32::from(number)))
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    // Several Services with different ports: no single right answer, so none is advertised
    // rather than a wrong one (HTTP/3 is still served to clients that know the port).
    (found.len() == 1).then(|| found[0])
}

/// Points a probe that names a taken-over port (`(name, app port)`) at the app's number.
fn probe_port_rewrite(
    probe: &Option<Probe>,
    path: &str,
    taken: &[(&str, i32)],
    ops: &mut Vec<Value>,
) {
    let Some(p) = probe else { return };
    let hits = [
        ("httpGet", p.http_get.as_ref().map(|h| &h.port)),
        ("tcpSocket", p.tcp_socket.as_ref().map(|t| &t.port)),
    ];
    for (kind, port) in hits {
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) = port {
            if let Some((_, number)) = taken.iter().find(|(n, _)| n == s) {
                ops.push(json!({"op": "replace", "path": format!("{path}/{kind}/port"), "value": number}));
            }
        }
    }
}

/// JSON Pointer escaping (RFC 6901) of one path segment.
fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

/// The decision. `Ok(Skip)` leaves the pod alone; `Ok(Patch)` injects; `Err` refuses the pod.
pub fn decide(input: &Input<'_>) -> Result<Outcome, Denial> {
    let pod = input.pod;
    let s = input.settings;
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Outcome::Skip("no pod spec"));
    };

    // Opt-in / opt-out. A pod's own setting wins over its namespace's.
    let wanted = match pod_setting(pod, INJECT) {
        Some(("enabled", _)) => true,
        Some(("disabled", _)) => false,
        Some((other, where_)) => {
            return Err(Denial {
                field: format!("metadata.{where_}[{INJECT}]"),
                message: format!("{other:?} is not \"enabled\" or \"disabled\""),
            })
        }
        None => input.namespace_labels.get(INJECT).map(String::as_str) == Some("enabled"),
    };
    if !wanted {
        return Ok(Outcome::Skip("injection not requested"));
    }
    let init = spec.init_containers.iter().flatten();
    if spec
        .containers
        .iter()
        .chain(init)
        .any(|c| c.name == s.container_name)
    {
        return Ok(Outcome::Skip("already injected"));
    }
    if spec.host_network == Some(true) {
        return Ok(Outcome::Skip(
            "hostNetwork pod (the sidecar's ports would be the node's)",
        ));
    }

    // Per-pod settings; each bad value names its annotation.
    let protocol = match annotation(pod, ANN_INBOUND_PROTOCOL) {
        None => s.inbound_protocol,
        Some(v) => InboundProtocol::parse(v).ok_or_else(|| {
            deny(
                ANN_INBOUND_PROTOCOL,
                format!("{v:?} is not \"http\" or \"https\""),
            )
        })?,
    };
    let log_level = match annotation(pod, ANN_LOG_LEVEL) {
        None => s.log_level.clone(),
        Some(v) if is_log_directive(v) => v.to_string(),
        Some(v) => {
            return Err(deny(
                ANN_LOG_LEVEL,
                format!("{v:?} is not a log directive such as \"info\" or \"info,weir=debug\""),
            ))
        }
    };
    let mut resources = s.resources.clone();
    for (key, path) in [
        (ANN_CPU_REQUEST, ["requests", "cpu"]),
        (ANN_MEMORY_REQUEST, ["requests", "memory"]),
        (ANN_MEMORY_LIMIT, ["limits", "memory"]),
    ] {
        if let Some(v) = annotation(pod, key) {
            if !is_quantity(v) {
                return Err(deny(
                    key,
                    format!("{v:?} is not a Kubernetes quantity such as \"100m\" or \"64Mi\""),
                ));
            }
            if !resources.is_object() {
                resources = json!({});
            }
            resources[path[0]][path[1]] = json!(v);
        }
    }

    let outbound_port = match annotation(pod, ANN_OUTBOUND_PORT) {
        None => s.outbound_port,
        Some(v) => v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            deny(
                ANN_OUTBOUND_PORT,
                format!("{v:?} is not a port number (1-65535)"),
            )
        })?,
    };
    if outbound_port == s.inbound_port || outbound_port == s.admin_port {
        return Err(deny(
            ANN_OUTBOUND_PORT,
            format!("port {outbound_port} is the sidecar's inbound or admin port (injector.inboundPort / injector.adminPort)"),
        ));
    }

    let selected = select_ports(&spec.containers, pod, input.services)?;
    if selected.is_empty() {
        // Refusing would block every port-less pod of a labelled namespace.
        return Ok(Outcome::Skip(
            "no named TCP container port (the one a Service targets) to take over",
        ));
    }
    // The annotation a port problem is fixed in (the list one when neither was set).
    let ports_key = if annotation(pod, ANN_INBOUND_PORT).is_some() {
        ANN_INBOUND_PORT
    } else {
        ANN_INBOUND_PORTS
    };
    let pod_ports: Vec<&ContainerPort> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    // Every name the pod will have: its own (the taken-over ones move to the sidecar, so they
    // stay), the sidecar's admin port, then the injector's new ones, each checked against all
    // before it (two long names can be cut to the same 15 characters).
    let mut names: Vec<(String, String)> = pod_ports
        .iter()
        .filter_map(|p| p.name.clone())
        .map(|n| (n, "a port of the pod".to_string()))
        .collect();
    names.push(("weir-admin".into(), "the sidecar's admin port".into()));
    for take in &selected {
        let mut new = vec![(
            derived_port_name("app-", &take.name),
            "the app's renamed port",
        )];
        if protocol == InboundProtocol::Https {
            new.push((derived_port_name("h3-", &take.name), "the HTTP/3 port"));
        }
        for (n, why) in new {
            if let Some((_, owner)) = names.iter().find(|(have, _)| *have == n) {
                return Err(deny(
                    ports_key,
                    format!("port {:?}: {n:?} is already {owner}, and the injector needs it for {why} (rename a port, or choose the ports with {ANN_INBOUND_PORTS})", take.name),
                ));
            }
            names.push((n, format!("{why} of port {:?}", take.name)));
        }
    }
    let used: BTreeSet<i32> = pod_ports.iter().map(|p| p.container_port).collect();
    if used.contains(&i32::from(outbound_port)) {
        return Err(deny(
            ANN_OUTBOUND_PORT,
            format!("the application already uses port {outbound_port}, which the sidecar's outbound listener needs (set weir.dev/outbound-port or injector.outboundPort)"),
        ));
    }
    if used.contains(&i32::from(s.admin_port)) {
        return Err(deny(
            ports_key,
            format!("the application already uses port {}, which the sidecar's admin port needs (chart value injector.adminPort)", s.admin_port),
        ));
    }
    let mut avoid = used.clone();
    avoid.extend([i32::from(s.admin_port), i32::from(outbound_port)]);
    let sidecar_ports =
        allocate_ports(s.inbound_port, selected.len(), &avoid).ok_or_else(|| {
            deny(
                ports_key,
                format!(
                    "no {} free ports from injector.inboundPort ({}) to 65535 for the sidecar",
                    selected.len(),
                    s.inbound_port
                ),
            )
        })?;

    // `weir.dev/http3-advertised-port` is the first port's; the others' come from the Services.
    let first_advertised = annotation(pod, ANN_HTTP3_PORT)
        .map(|v| {
            v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                deny(
                    ANN_HTTP3_PORT,
                    format!("{v:?} is not a port number (1-65535)"),
                )
            })
        })
        .transpose()?;
    let inbound: Vec<InboundPort> = selected
        .iter()
        .zip(&sidecar_ports)
        .enumerate()
        .map(|(i, (take, &port))| InboundPort {
            name: take.name.clone(),
            port,
            app_port: take.number,
            advertised: match first_advertised {
                Some(p) if i == 0 => Some(p),
                _ => service_udp_port(
                    pod,
                    input.services,
                    &derived_port_name("h3-", &take.name),
                    port,
                ),
            },
        })
        .collect();

    let snapshot = sidecar_snapshot(protocol, &inbound, outbound_port);
    let key = snapshot_key(
        pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        &snapshot,
    );
    let mut ops = Vec::new();

    // Rename the app's ports, and point the app's probes that used the names at the numbers.
    for take in &selected {
        ops.push(json!({"op": "replace",
            "path": format!("/spec/containers/{}/ports/{}/name", take.container, take.port),
            "value": derived_port_name("app-", &take.name)}));
    }
    let renamed: Vec<(&str, i32)> = selected
        .iter()
        .map(|t| (t.name.as_str(), t.number))
        .collect();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let path = format!("/spec/containers/{ci}/{field}");
            probe_port_rewrite(probe, &path, &renamed, &mut ops);
        }
    }

    let mut ports = Vec::new();
    for p in &inbound {
        ports.push(json!({"name": p.name, "containerPort": p.port, "protocol": "TCP"}));
        if protocol == InboundProtocol::Https {
            ports.push(json!({"name": derived_port_name("h3-", &p.name), "containerPort": p.port, "protocol": "UDP"}));
        }
    }
    ports.push(json!({"name": "weir-admin", "containerPort": s.admin_port, "protocol": "TCP"}));
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env_from = |name: &str, path: &str| {
        let mut v = field(path);
        v["name"] = json!(name);
        v
    };
    let mut container = json!({
        "name": s.container_name,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "args": [
            format!("--config={CONFIG_DIR}/snapshot.json"),
            // The operator's last compile for this workload, if written: a restarted sidecar
            // serves its attached routes at once instead of after the next push.
            format!("--config-preferred={WORKLOAD_DIR}/snapshot.json"),
            format!("--admin-address=0.0.0.0:{}", s.admin_port),
            format!("--drain-timeout={}", s.drain_timeout),
            format!("--log-format={}", s.log_format),
        ],
        "env": [
            {"name": "RUST_LOG", "value": log_level},
            // From the namespace's token Secret (the operator writes it, the injector makes sure
            // it exists before the pod does): never in the pod spec, where whoever reads pods
            // would see it. It guards the sidecar's admin API (config, backends, logging).
            {"name": "WEIR_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY}}},
            env_from("POD_IP", "status.podIP"),
            env_from("POD_NAME", "metadata.name"),
            env_from("POD_NAMESPACE", "metadata.namespace"),
        ],
        "ports": ports,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "weir-admin"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "weir-admin"}, "periodSeconds": 10, "failureThreshold": 3},
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": s.run_as_user,
            "runAsGroup": s.run_as_user,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
            {"name": WORKLOAD_VOLUME, "mountPath": WORKLOAD_DIR, "readOnly": true},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    });
    if s.native_sidecar {
        // Kubernetes >= 1.29: started (and Ready) before the app's containers, stopped after
        // them, so the app's own outbound calls through it never lose it while it shuts down.
        container["restartPolicy"] = json!("Always");
        if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
        }
    } else {
        // Older clusters: a regular container, and the kubelet stops all containers at once.
        // The app gets a preStop hook that holds its SIGTERM until the sidecar has drained.
        ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
        // Every app container that owns a taken-over port: each holds its SIGTERM until the
        // sidecar has drained, since the sidecar forwards requests to each of them.
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        let hook = app_pre_stop(s.admin_port, grace);
        let owners: BTreeSet<usize> = selected.iter().map(|t| t.container).collect();
        for ci in owners.into_iter().filter(|_| hook.is_some()) {
            let path = format!("/spec/containers/{ci}/lifecycle");
            match &spec.containers[ci].lifecycle {
                // The app's own hook is kept: it knows best how to stop, and a container has
                // only one preStop.
                Some(l) if l.pre_stop.is_some() => {}
                Some(_) => {
                    ops.push(json!({"op": "add", "path": format!("{path}/preStop"), "value": hook}))
                }
                None => ops.push(json!({"op": "add", "path": path, "value": {"preStop": hook}})),
            }
        }
    }

    let volumes = [
        json!({"name": CONFIG_VOLUME, "downwardAPI": {"defaultMode": 0o444, "items": [
            {"path": "snapshot.json", "fieldRef": {"fieldPath": format!("metadata.annotations['{ANN_SNAPSHOT}']")}}]}}),
        // Optional (the Secret and the key): absent until the operator's first write, and the
        // pod must start anyway; the sidecar then boots from the downward-API snapshot.
        json!({"name": WORKLOAD_VOLUME, "secret": {"secretName": SNAPSHOT_SECRET, "optional": true,
            "defaultMode": 0o444, "items": [{"key": key, "path": "snapshot.json"}]}}),
        json!({"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}),
    ];
    if spec.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }

    if pod.metadata.labels.as_ref().is_some_and(|l| !l.is_empty()) {
        ops.push(json!({"op": "add", "path": format!("/metadata/labels/{}", escape(LABEL_SIDECAR)), "value": LABEL_SIDECAR_VALUE}));
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/labels", "value": {LABEL_SIDECAR: LABEL_SIDECAR_VALUE}}));
    }
    let injected = selected
        .iter()
        .map(|t| format!("{}={}", t.name, t.number))
        .collect::<Vec<_>>()
        .join(",");
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| !a.is_empty())
    {
        for (k, v) in [
            (ANN_SNAPSHOT, snapshot),
            (ANN_INJECTED, injected),
            (ANN_SNAPSHOT_KEY, key),
        ] {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(k)), "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/metadata/annotations",
            "value": {ANN_SNAPSHOT: snapshot, ANN_INJECTED: injected, ANN_SNAPSHOT_KEY: key}}));
    }
    Ok(Outcome::Patch(ops))
}

/// The pod's key in [`SNAPSHOT_SECRET`]: a hash of its labels (as admitted) and its boot
/// snapshot. The operator's compile of a pod depends only on those two (routes select by
/// labels, the boot snapshot is the base), so pods with the same key get the same snapshot
/// (the replicas of one ReplicaSet share one entry), and the injector can name the entry
/// before the pod exists. A Deployment rollout changes `pod-template-hash`, so old and new
/// pods never share an entry.
pub fn snapshot_key(labels: &BTreeMap<String, String>, boot: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in labels {
        // Lengths first, so no two label sets hash the same bytes.
        h.update(format!("{}:{k}{}:{v}", k.len(), v.len()).as_bytes());
    }
    h.update(boot.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The app container's preStop hook on old clusters: `GET /drained` on the sidecar's admin
/// port answers once the sidecar, stopped at the same moment, has finished its in-flight
/// requests, so the app is still there to answer them. An `httpGet` runs in the kubelet, so it
/// needs no shell or `sleep` in the app's image, and ends as soon as the drain does instead of
/// after a fixed sleep. Its host is left empty (the pod IP), since the kubelet, not the pod,
/// makes the call. The wait is bounded inside the grace period, leaving the app up to 5s of
/// it for its own SIGTERM; with no grace period at all there is nothing to wait in.
fn app_pre_stop(admin_port: u16, grace: i64) -> Option<Value> {
    if grace <= 0 {
        return None;
    }
    let wait = grace - (grace / 2).min(5);
    Some(json!({"httpGet": {
        "path": format!("/drained?timeout={wait}s"),
        "port": admin_port,
        "scheme": "HTTP",
    }}))
}

/// One inbound listener of the sidecar: a taken-over app port.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InboundPort {
    /// The app's original port name (now the sidecar's).
    pub name: String,
    /// The sidecar's port (TCP, and UDP for HTTP/3).
    pub port: u16,
    /// The app's port on loopback.
    pub app_port: i32,
    /// The Service port `Alt-Svc` names (https only); `None`: HTTP/3 is not advertised.
    pub advertised: Option<u16>,
}

/// The sidecar's own snapshot: one inbound listener per taken-over port, everything to its
/// app port on loopback, and the outbound listener on `127.0.0.1`, empty (404) until the
/// operator pushes the routes attached to the workload. Each inbound route is bound to its own
/// listener only, so the app's outbound calls never loop back to itself and one port's
/// traffic never reaches another port of the app. The first port keeps the names of the
/// single-port snapshot (`inbound` listener and route, `app` backend), so a pod with one port
/// gets the same boot snapshot (and snapshot key) as before; the others are
/// `inbound-<name>`/`app-<name>`, which is also how `weir_requests_total` tells them apart
/// (`route`, `backend` labels).
pub(crate) fn sidecar_snapshot(
    protocol: InboundProtocol,
    inbound: &[InboundPort],
    outbound_port: u16,
) -> String {
    let mut listeners = Vec::new();
    let mut backends = serde_json::Map::new();
    let mut routes = Vec::new();
    let mut version = String::from("sidecar");
    for (i, p) in inbound.iter().enumerate() {
        let (listener_name, backend) = if i == 0 {
            (INBOUND_LISTENER.to_string(), "app".to_string())
        } else {
            (
                format!("{INBOUND_LISTENER}-{}", p.name),
                format!("app-{}", p.name),
            )
        };
        let mut listener = json!({"name": listener_name, "address": format!("0.0.0.0:{}", p.port)});
        match protocol {
            InboundProtocol::Http => listener["protocol"] = json!("http"),
            InboundProtocol::Https => {
                listener["protocol"] = json!("https");
                // Alt-Svc must name the port clients reach over UDP (the Service's), not ours.
                listener["http3"] = match p.advertised {
                    Some(a) => json!({"advertisedPort": a}),
                    None => json!({"advertisedPort": "off"}),
                };
            }
        }
        listeners.push(listener);
        backends.insert(
            backend.clone(),
            json!({"endpoints": [format!("127.0.0.1:{}", p.app_port)]}),
        );
        routes.push(json!({"name": listener_name, "listeners": [listener_name], "rules": [{"backendRefs": [{"name": backend}]}]}));
        version.push_str(&format!("-{}-{}", p.port, p.app_port));
    }
    listeners.push(json!({"name": OUTBOUND_LISTENER, "address": format!("127.0.0.1:{outbound_port}"), "protocol": "http"}));
    json!({
        "version": format!("{version}-{outbound_port}"),
        "listeners": listeners,
        "backends": backends,
        "routes": routes,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
