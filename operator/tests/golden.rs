//! Golden input/output tests of the pure compile step (`weir_operator::compile`).
//!
//! Each folder under `tests/golden/` is one case:
//! - `input.yaml`: the cluster as the operator would see it, as Kubernetes objects in one
//!   multi-document file: `ProxyRoute`, `Backend`, `TelemetrySink` (`weir.dev/v1alpha1`),
//!   `Service`, `EndpointSlice` (`discovery.k8s.io/v1`) and `Secret` (`data` in base64 and/or
//!   `stringData`, merged as the API server does);
//! - `listeners.yaml` (optional): the operator's listener settings; one plain HTTP listener on
//!   `0.0.0.0:8080` (the operator's default) otherwise;
//! - `expected.yaml`: the snapshot compile produces and every object's outcome (included or
//!   not, with each problem's field path and message), and the Secrets the controller would
//!   watch.
//!
//! Services and EndpointSlices go through the controller's own conversion
//! (`controller::service_index_of`), so the case files are what `kubectl get -o yaml` shows.
//!
//! `WEIR_BLESS=1 cargo test -p weir-operator --test golden` rewrites every `expected.yaml`
//! from what compile produces now; review the diff before committing it.

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::DynamicObject;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weir_config::FieldError;
use weir_operator::compile::{self, BackendProblem, Compiled, SecretIndex};
use weir_operator::controller::service_index_of;
use weir_operator::crd::{Backend, ProxyRoute, TelemetrySink};

/// Everything one case's `input.yaml` holds, sorted by kind.
#[derive(Default)]
struct World {
    routes: Vec<ProxyRoute>,
    backends: Vec<Backend>,
    sinks: Vec<TelemetrySink>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<DynamicObject>>,
    secrets: SecretIndex,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A case file document, typed by its `kind`; the error names the file and the document.
fn load(dir: &Path) -> World {
    let path = dir.join("input.yaml");
    let text = read(&path);
    let mut w = World::default();
    for (i, doc) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let what = format!("{} document {i} ({kind})", path.display());
        fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> T {
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{what}: {e}"))
        }
        match kind.as_str() {
            "ProxyRoute" => w.routes.push(typed(v, &what)),
            "Backend" => w.backends.push(typed(v, &what)),
            "TelemetrySink" => w.sinks.push(typed(v, &what)),
            "Service" => w.services.push(Arc::new(typed(v, &what))),
            "EndpointSlice" => w.slices.push(Arc::new(typed(v, &what))),
            "Secret" => {
                let s: Secret = typed(v, &what);
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.into_iter().flatten() {
                    data.insert(k, v.into_bytes());
                }
                let key = compile::key(
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default(),
                );
                w.secrets.insert(key, Some(data));
            }
            other => panic!("{what}: unexpected kind {other:?}"),
        }
    }
    w
}

fn listeners(dir: &Path) -> Vec<weir_config::Listener> {
    let path = dir.join("listeners.yaml");
    let text = if path.exists() {
        read(&path)
    } else {
        "[{name: http, address: '0.0.0.0:8080', protocol: http}]".to_string()
    };
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(errs: &[FieldError]) -> Value {
    errs.iter()
        .map(|e| Value::String(format!("{}: {}", e.path, e.message)))
        .collect()
}

/// The compile result as one document: the snapshot as the dataplane receives it, then each
/// object's outcome. Empty problem lists are left out, so a case reads as what went wrong.
fn render(c: &Compiled) -> Value {
    fn put(m: &mut serde_json::Map<String, Value>, k: &str, errs: &[FieldError]) {
        if !errs.is_empty() {
            m.insert(k.into(), errors(errs));
        }
    }
    /// One entry per object: its generation, whether it is in the snapshot, then `more`.
    fn each<O>(
        objs: &BTreeMap<String, O>,
        head: impl Fn(&O) -> (Option<i64>, bool),
        more: impl Fn(&O, &mut serde_json::Map<String, Value>),
    ) -> Value {
        objs.iter()
            .map(|(k, o)| {
                let (generation, included) = head(o);
                let mut m = serde_json::Map::new();
                m.insert("generation".into(), json!(generation));
                m.insert("included".into(), json!(included));
                more(o, &mut m);
                (k.clone(), Value::Object(m))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
    let routes = each(
        &c.routes,
        |o| (o.generation, o.included),
        |o, m| {
            m.insert("backends".into(), json!(o.backends));
            put(m, "invalid", &o.invalid);
            put(m, "unresolved", &o.unresolved);
            put(m, "unresolvedSecrets", &o.unresolved_secrets);
        },
    );
    let backends = each(
        &c.backends,
        |o| (o.generation, o.included),
        |o, m| {
            m.insert("endpoints".into(), json!(o.endpoints));
            m.insert("hasSecretRefs".into(), json!(o.has_secret_refs));
            match &o.problem {
                None => {}
                Some(BackendProblem::Invalid(e)) => put(m, "invalid", e),
                Some(BackendProblem::UnresolvedRefs(e)) => put(m, "unresolved", e),
                Some(BackendProblem::ServiceNotFound(msg)) => {
                    m.insert("serviceNotFound".into(), json!(msg));
                }
                Some(BackendProblem::PortNotFound(msg)) => {
                    m.insert("portNotFound".into(), json!(msg));
                }
            }
        },
    );
    let sinks = each(
        &c.sinks,
        |o| (o.generation, o.included),
        |o, m| {
            m.insert("hasSecretRefs".into(), json!(o.has_secret_refs));
            m.insert("hasTracing".into(), json!(o.has_tracing));
            if let Some(t) = &o.tracing_conflict {
                m.insert("tracingConflict".into(), json!(t));
            }
            put(m, "invalid", &o.invalid);
            put(m, "unresolved", &o.unresolved);
        },
    );
    json!({
        "snapshot": serde_json::to_value(&c.snapshot).expect("a snapshot serializes"),
        "routes": routes,
        "backends": backends,
        "sinks": sinks,
        "global": errors(&c.global),
        "secretRefs": c.secret_refs,
    })
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn compile_matches_the_golden_files() {
    let bless = std::env::var("WEIR_BLESS").as_deref() == Ok("1");
    let dirs = cases();
    assert!(dirs.len() >= 10, "golden cases went missing: {dirs:?}");
    let mut failed = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let w = load(dir);
        let listeners = listeners(dir);
        let services = service_index_of(&w.services, &w.slices);
        let out = compile::compile(compile::Inputs {
            routes: &w.routes,
            backends: &w.backends,
            sinks: &w.sinks,
            services: &services,
            secrets: &w.secrets,
            listeners: &listeners,
        });
        // Whatever the inputs, compile hands out a snapshot the dataplane accepts, versioned
        // by its content, unless the operator's own settings are invalid.
        if out.global.is_empty() {
            if let Err(e) = out.snapshot.validate() {
                failed.push(format!("{name}: the snapshot is invalid: {e:?}"));
            }
        }
        assert_eq!(out.snapshot.version, out.snapshot.content_hash(), "{name}");
        let got = yaml_serde::to_string(&render(&out)).expect("YAML");
        let path = dir.join("expected.yaml");
        if bless {
            std::fs::write(&path, &got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let Ok(want) = std::fs::read_to_string(&path) else {
            failed.push(format!(
                "{name}: no expected.yaml; run WEIR_BLESS=1 cargo test -p weir-operator --test golden"
            ));
            continue;
        };
        if want != got {
            let first = want
                .lines()
                .zip(got.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(want.lines().count().min(got.lines().count()));
            failed.push(format!(
                "{name}: compile output differs from {} from line {}:\n--- expected\n{}\n--- got\n{}",
                path.display(),
                first + 1,
                want.lines().skip(first).take(8).collect::<Vec<_>>().join("\n"),
                got.lines().skip(first).take(8).collect::<Vec<_>>().join("\n"),
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{}\n(WEIR_BLESS=1 rewrites the expected files; review the diff)",
        failed.join("\n\n")
    );
}
