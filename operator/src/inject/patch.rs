//! The pure injection step: `pod + namespace labels + Services + settings -> JSON patch`, or a
//! denial naming the annotation at fault. No I/O here, so every decision is unit-tested on
//! golden inputs (`testdata/`).
//!
//! Port-rename approach (no CNI, no iptables): the Service keeps targeting the app's *named*
//! port. The injector gives that name to the sidecar's inbound port and renames the app's port
//! (`app-<name>`), so traffic for the Service enters the sidecar, which proxies it to the app on
//! `127.0.0.1:<app port>`. Probes of the app that named the port are rewritten to its number,
//! so they keep probing the app itself.

use super::settings::{InboundProtocol, Settings};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, Probe, Service};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Label or annotation (pod) and label (namespace) that turn injection on (`enabled`) or, on
/// a pod, off (`disabled`).
pub const INJECT: &str = "weir.dev/inject";
/// Per-pod settings (annotations).
pub const ANN_INBOUND_PORT: &str = "weir.dev/inbound-port";
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
pub const INBOUND_LISTENER: &str = "inbound";
pub const OUTBOUND_LISTENER: &str = "outbound";
/// Written by the injector: the sidecar's snapshot, mounted through the downward API.
pub const ANN_SNAPSHOT: &str = "weir.dev/sidecar-snapshot";
/// Written by the injector: which app port the sidecar took over (`name=number`).
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

/// The app port the sidecar takes over.
struct Takeover {
    container: usize,
    port: usize,
    name: String,
    number: i32,
}

/// `Ok(None)`: nothing to take over (a pod without named ports, e.g. a worker or a Job).
fn find_takeover(
    pod_containers: &[Container],
    wanted: Option<&str>,
) -> Result<Option<Takeover>, Denial> {
    let named_tcp = pod_containers.iter().enumerate().flat_map(|(ci, c)| {
        c.ports
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(move |(pi, p)| p.name.as_ref().map(|n| (ci, pi, n.clone(), p)))
    });
    let found = match wanted {
        Some(w) => {
            let by_number = w.parse::<i32>().ok();
            let mut it = named_tcp
                .filter(|(_, _, n, p)| n == w || Some(p.container_port) == by_number)
                .peekable();
            match it.next() {
                Some(f) => Some(f),
                None => {
                    return Err(deny(
                        ANN_INBOUND_PORT,
                        format!("no container of the pod has a named TCP port {w:?} (the sidecar takes over a named port, the one the Service targets)"),
                    ))
                }
            }
        }
        // Without the annotation: the first named TCP port of the first container that has
        // one (Services almost always target that one).
        None => named_tcp.into_iter().next(),
    };
    Ok(found.map(|(container, port, name, p)| Takeover {
        container,
        port,
        name,
        number: p.container_port,
    }))
}

/// The Service port that reaches `udp_name` (or the sidecar's port number) over UDP on this
/// pod: what `Alt-Svc` must name.
fn service_udp_port(pod: &Pod, services: &[Service], udp_name: &str, number: u16) -> Option<u16> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut found: Vec<u16> = services
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .filter(|spec| {
            spec.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        })
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref() == Some("UDP"))
        .filter(|p| match &p.target_port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                s == udp_name
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                *i == i32::from(number)
            }
            None => p.port == i32::from(number),
        })
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    // Several Services with different ports: no single right answer, so none is advertised
    // rather than a wrong one (HTTP/3 is still served to clients that know the port).
    (found.len() == 1).then(|| found[0])
}

fn probe_port_rewrite(
    probe: &Option<Probe>,
    path: &str,
    name: &str,
    number: i32,
    ops: &mut Vec<Value>,
) {
    let Some(p) = probe else { return };
    let hits = [
        ("httpGet", p.http_get.as_ref().map(|h| &h.port)),
        ("tcpSocket", p.tcp_socket.as_ref().map(|t| &t.port)),
    ];
    for (kind, port) in hits {
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) = port {
            if s == name {
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

    let Some(take) = find_takeover(&spec.containers, annotation(pod, ANN_INBOUND_PORT))? else {
        // Refusing would block every port-less pod of a labelled namespace.
        return Ok(Outcome::Skip(
            "no named TCP container port (the one a Service targets) to take over",
        ));
    };
    let app_name = derived_port_name("app-", &take.name);
    let udp_name = derived_port_name("h3-", &take.name);
    let taken: Vec<&str> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p: &ContainerPort| p.name.as_deref())
        .collect();
    for (n, why) in [
        (&app_name, "the app's renamed port"),
        (&udp_name, "the HTTP/3 port"),
    ] {
        if taken.contains(&n.as_str()) {
            return Err(deny(
                ANN_INBOUND_PORT,
                format!("port {:?}: the pod already has a port named {n:?}, which the injector needs for {why}", take.name),
            ));
        }
    }
    let used: Vec<i32> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .collect();
    if used.contains(&i32::from(outbound_port)) {
        return Err(deny(
            ANN_OUTBOUND_PORT,
            format!("the application already uses port {outbound_port}, which the sidecar's outbound listener needs (set weir.dev/outbound-port or injector.outboundPort)"),
        ));
    }
    for port in [s.inbound_port, s.admin_port] {
        if used.contains(&i32::from(port)) {
            return Err(deny(
                ANN_INBOUND_PORT,
                format!("the application already uses port {port}, which the sidecar needs (chart value injector.inboundPort / injector.adminPort)"),
            ));
        }
    }

    let advertised = match annotation(pod, ANN_HTTP3_PORT) {
        Some(v) => Some(v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            deny(
                ANN_HTTP3_PORT,
                format!("{v:?} is not a port number (1-65535)"),
            )
        })?),
        None => service_udp_port(pod, input.services, &udp_name, s.inbound_port),
    };

    let snapshot = sidecar_snapshot(
        protocol,
        s.inbound_port,
        take.number,
        advertised,
        outbound_port,
    );
    let key = snapshot_key(
        pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
        &snapshot,
    );
    let mut ops = Vec::new();

    // Rename the app's port, and point the app's probes that used the name at its number.
    ops.push(json!({"op": "replace",
        "path": format!("/spec/containers/{}/ports/{}/name", take.container, take.port),
        "value": app_name}));
    for (ci, c) in spec.containers.iter().enumerate() {
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let path = format!("/spec/containers/{ci}/{field}");
            probe_port_rewrite(probe, &path, &take.name, take.number, &mut ops);
        }
    }

    let mut ports =
        vec![json!({"name": take.name, "containerPort": s.inbound_port, "protocol": "TCP"})];
    if protocol == InboundProtocol::Https {
        ports.push(json!({"name": udp_name, "containerPort": s.inbound_port, "protocol": "UDP"}));
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
        let app = &spec.containers[take.container];
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        if let Some(hook) = app_pre_stop(s.admin_port, grace) {
            let path = format!("/spec/containers/{}/lifecycle", take.container);
            match &app.lifecycle {
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
    let injected = format!("{}={}", take.name, take.number);
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

/// The sidecar's own snapshot: the inbound listener, everything to the app on loopback, and
/// the outbound listener on `127.0.0.1`, empty (404) until the operator pushes the routes
/// attached to the workload. The inbound route is bound to the inbound listener only, so the
/// app's outbound calls never loop back to itself.
pub(crate) fn sidecar_snapshot(
    protocol: InboundProtocol,
    port: u16,
    app_port: i32,
    advertised: Option<u16>,
    outbound_port: u16,
) -> String {
    let mut listener = json!({"name": INBOUND_LISTENER, "address": format!("0.0.0.0:{port}")});
    match protocol {
        InboundProtocol::Http => listener["protocol"] = json!("http"),
        InboundProtocol::Https => {
            listener["protocol"] = json!("https");
            // Alt-Svc must name the port clients reach over UDP (the Service's), not ours.
            listener["http3"] = match advertised {
                Some(p) => json!({"advertisedPort": p}),
                None => json!({"advertisedPort": "off"}),
            };
        }
    }
    let outbound = json!({"name": OUTBOUND_LISTENER, "address": format!("127.0.0.1:{outbound_port}"), "protocol": "http"});
    json!({
        "version": format!("sidecar-{port}-{app_port}-{outbound_port}"),
        "listeners": [listener, outbound],
        "backends": {"app": {"endpoints": [format!("127.0.0.1:{app_port}")]}},
        "routes": [{"name": "inbound", "listeners": [INBOUND_LISTENER], "rules": [{"backendRefs": [{"name": "app"}]}]}],
    })
    .to_string()
}

#[cfg(test)]
mod tests;
