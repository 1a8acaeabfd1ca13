//! `spec.targetRefs` of an attached ProxyRoute, resolved to the pods they select. Pure: the
//! runtime ([`super::runtime`]) reduces the watched Deployments, StatefulSets, DaemonSets and
//! Services to a [`TargetIndex`] ([`index`]) and the compile ([`super::compile`]) resolves each
//! ref against it ([`resolve`]).
//!
//! A ref selects the pods its workload selects: the `spec.selector` of a Deployment,
//! StatefulSet or DaemonSet (a `LabelSelector`, `matchLabels` and `matchExpressions`, matched
//! by kube's own [`kube::core::Selector`] so the semantics are Kubernetes'), or of a Service
//! (`matchLabels` only). A selector that selects everything (empty) or nothing (a Service
//! without one) resolves to no pods, never to every pod of the namespace.

use crate::compile::{self, ObjKey};
use crate::crd::{ProxyRoute, WorkloadRef};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The kinds a targetRef may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Service,
}

impl Kind {
    /// `(group, kind)` as written in a ref; `None` for anything else.
    pub fn of(group: &str, kind: &str) -> Option<Kind> {
        match (group, kind) {
            ("apps", "Deployment") => Some(Kind::Deployment),
            ("apps", "StatefulSet") => Some(Kind::StatefulSet),
            ("apps", "DaemonSet") => Some(Kind::DaemonSet),
            ("", "Service") => Some(Kind::Service),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Service => "Service",
        }
    }
}

/// What a target says about the pods it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// It selects the pods this selector matches (never an empty selector).
    Selects(Selector),
    /// It selects no pod; why (e.g. a Service without a selector).
    SelectsNone(String),
    /// Its selector cannot be evaluated (the API server validates workload selectors, so this
    /// is a guard, not an expected case); why.
    Invalid(String),
}

/// Every target of the watched namespaces: `(namespace, kind, name)` -> what it selects.
pub type TargetIndex = BTreeMap<(String, Kind, String), Target>;

/// A workload's `spec.selector` as a [`Target`].
fn from_label_selector(sel: &LabelSelector) -> Target {
    match Selector::try_from(sel.clone()) {
        Ok(s) if s.selects_all() => {
            Target::SelectsNone("its spec.selector is empty (it would select every pod)".into())
        }
        Ok(s) => Target::Selects(s),
        Err(e) => Target::Invalid(format!("spec.selector: {e}")),
    }
}

fn from_service(svc: &Service) -> Target {
    match svc.spec.as_ref().and_then(|s| s.selector.clone()) {
        Some(m) if !m.is_empty() => Target::Selects(m.into_iter().collect()),
        // Kubernetes' own reading: a Service without a selector has no pods (its endpoints
        // are managed by hand).
        _ => Target::SelectsNone(
            "it has no spec.selector (its endpoints are managed by hand)".into(),
        ),
    }
}

/// The index of what the runtime watched.
pub fn index<'a>(
    deployments: impl IntoIterator<Item = &'a Deployment>,
    statefulsets: impl IntoIterator<Item = &'a StatefulSet>,
    daemonsets: impl IntoIterator<Item = &'a DaemonSet>,
    services: impl IntoIterator<Item = &'a Service>,
) -> TargetIndex {
    let mut out = TargetIndex::new();
    let mut put = |ns: Option<String>, kind: Kind, name: String, t: Target| {
        out.insert((ns.unwrap_or_default(), kind, name), t);
    };
    for d in deployments {
        let t = from_label_selector(&d.spec.selector);
        put(d.namespace(), Kind::Deployment, d.name_any(), t);
    }
    for d in statefulsets {
        let t = from_label_selector(&d.spec.selector);
        put(d.namespace(), Kind::StatefulSet, d.name_any(), t);
    }
    for d in daemonsets {
        let t = from_label_selector(&d.spec.selector);
        put(d.namespace(), Kind::DaemonSet, d.name_any(), t);
    }
    for s in services {
        put(s.namespace(), Kind::Service, s.name_any(), from_service(s));
    }
    out
}

/// Why a ref selects no pod: the `ResolvedRefs=False` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    UnsupportedKind,
    TargetNotFound,
    InvalidSelector,
    NoPods,
}

impl Unresolved {
    pub fn reason(self) -> &'static str {
        match self {
            Unresolved::UnsupportedKind => "UnsupportedKind",
            Unresolved::TargetNotFound => "TargetNotFound",
            Unresolved::InvalidSelector => "InvalidSelector",
            Unresolved::NoPods => "NoPods",
        }
    }
}

/// One `spec.targetRefs[i]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub target: WorkloadRef,
    /// `spec.targetRefs[i]`.
    pub path: String,
    /// The selector, or why there is none (with a message naming `path`).
    pub selector: Result<Selector, (Unresolved, String)>,
}

impl Resolved {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_ok_and(|s| s.matches(labels))
    }
}

/// Each of the route's `spec.targetRefs`, in order, against the targets of its namespace.
pub fn resolve(route: &ProxyRoute, idx: &TargetIndex) -> Vec<Resolved> {
    let ns = route.namespace().unwrap_or_default();
    route
        .spec
        .target_refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.targetRefs[{i}]");
            let selector = match Kind::of(&r.group, &r.kind) {
                None => Err((
                    Unresolved::UnsupportedKind,
                    format!(
                        "{path}: group {:?} kind {:?} is not supported (Deployment, StatefulSet or DaemonSet in group \"apps\", or Service in the core group \"\")",
                        r.group, r.kind
                    ),
                )),
                Some(kind) => match idx.get(&(ns.clone(), kind, r.name.clone())) {
                    None => Err((
                        Unresolved::TargetNotFound,
                        format!("{path}: {} {} not found", kind.as_str(), compile::key(&ns, &r.name)),
                    )),
                    Some(Target::Selects(s)) => Ok(s.clone()),
                    Some(Target::SelectsNone(why)) => Err((
                        Unresolved::NoPods,
                        format!("{path}: {} {} selects no pod: {why}", kind.as_str(), r.name),
                    )),
                    Some(Target::Invalid(why)) => Err((
                        Unresolved::InvalidSelector,
                        format!("{path}: {} {}: {why}", kind.as_str(), r.name),
                    )),
                },
            };
            Resolved {
                target: r.clone(),
                path,
                selector,
            }
        })
        .collect()
}

/// The pods (`ns/name`) a resolved ref selects, for its status.
pub fn selected<'a>(
    r: &Resolved,
    namespace: &str,
    pods: impl IntoIterator<Item = (&'a str, ObjKey, &'a BTreeMap<String, String>)>,
) -> Vec<ObjKey> {
    pods.into_iter()
        .filter(|(ns, _, labels)| *ns == namespace && r.selects(labels))
        .map(|(_, k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn deployment(ns: &str, name: &str, sel: LabelSelector) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.namespace = Some(ns.into());
        d.metadata.name = Some(name.into());
        d.spec.selector = sel;
        d
    }

    fn service(ns: &str, name: &str, sel: Option<&[(&str, &str)]>) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
            selector: sel.map(labels),
            ..Default::default()
        });
        s
    }

    fn route(ns: &str, refs: &[(&str, &str, &str)]) -> ProxyRoute {
        let mut r = ProxyRoute::new("r", Default::default());
        r.metadata.namespace = Some(ns.into());
        r.spec.target_refs = refs
            .iter()
            .map(|(g, k, n)| WorkloadRef {
                group: g.to_string(),
                kind: k.to_string(),
                name: n.to_string(),
            })
            .collect();
        r
    }

    #[test]
    fn match_expressions_follow_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "track".into(),
                    operator: "In".into(),
                    values: Some(vec!["stable".into(), "canary".into()]),
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        let idx = index([&deployment("shop", "web", sel)], [], [], []);
        let r = &resolve(&route("shop", &[("apps", "Deployment", "web")]), &idx)[0];
        assert!(r.selects(&labels(&[("app", "web"), ("track", "canary")])));
        assert!(!r.selects(&labels(&[("app", "web"), ("track", "beta")])));
        assert!(!r.selects(&labels(&[("app", "web")])), "In needs the key");
        assert!(!r.selects(&labels(&[
            ("app", "web"),
            ("track", "stable"),
            ("legacy", "")
        ])));
        assert!(!r.selects(&labels(&[("app", "api"), ("track", "stable")])));
    }

    #[test]
    fn every_failure_names_the_field_path_and_reason() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        let idx = index(
            [
                &deployment("shop", "bad", bad),
                &deployment("shop", "empty", LabelSelector::default()),
                &deployment("other", "web", LabelSelector::default()),
            ],
            [],
            [],
            [
                &service("shop", "manual", None),
                &service("shop", "web", Some(&[("app", "web")])),
            ],
        );
        let r = route(
            "shop",
            &[
                ("apps", "Deployment", "missing"),
                ("batch", "Job", "x"),
                ("apps", "Service", "web"),
                ("apps", "Deployment", "bad"),
                ("apps", "Deployment", "empty"),
                ("", "Service", "manual"),
                ("", "Service", "web"),
                ("apps", "Deployment", "web"),
            ],
        );
        let got: Vec<_> = resolve(&r, &idx)
            .into_iter()
            .map(|r| r.selector.map_err(|(u, m)| (u.reason(), m)))
            .collect();
        let err = |i: usize, reason: &str| {
            let (r, m) = got[i].clone().expect_err("unresolved");
            assert_eq!(r, reason, "ref {i}: {m}");
            assert!(m.starts_with(&format!("spec.targetRefs[{i}]: ")), "{m}");
            m
        };
        assert!(err(0, "TargetNotFound").contains("Deployment shop/missing not found"));
        err(1, "UnsupportedKind");
        // A Service is in the core group, not `apps`.
        err(2, "UnsupportedKind");
        err(3, "InvalidSelector");
        err(4, "NoPods");
        err(5, "NoPods");
        assert!(got[6]
            .as_ref()
            .is_ok_and(|s| s.matches(&labels(&[("app", "web")]))));
        // other/web is in another namespace: not found from shop.
        err(7, "TargetNotFound");
    }
}
