//! The pure status step: one route's [`Attachment`] plus what its pods acknowledged ->
//! `status.workloads`. Conditions keep their `lastTransitionTime` while their status holds.

use super::compile::Attachment;
use crate::compile::ObjKey;
use crate::crd::{TargetRefStatus, WorkloadAttachmentStatus};
use crate::status::{cond, merge_conditions};
use std::collections::{BTreeMap, BTreeSet};

/// Pods listed by name at most (the counts are always exact).
const LISTED: usize = 50;

fn names(keys: impl Iterator<Item = String>) -> Vec<String> {
    keys.map(|k| k.split_once('/').map(|(_, n)| n.to_string()).unwrap_or(k))
        .take(LISTED)
        .collect()
}

/// What the runtime knows about the pods beyond the compile.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    /// Pods (`ns/name`) whose sidecar acknowledged the snapshot it should run.
    pub programmed: BTreeSet<ObjKey>,
    /// Pods whose workload's snapshot was left out of the snapshot Secret because it does not
    /// fit (see [`super::snapshots::fit`]): pod -> why.
    pub too_large: BTreeMap<ObjKey, String>,
}

pub fn attachment_status(
    a: &Attachment,
    facts: &PodFacts,
    old: Option<&WorkloadAttachmentStatus>,
    now: &str,
) -> WorkloadAttachmentStatus {
    let g = a.generation;
    let programmed = &facts.programmed;
    let attached = if !a.invalid.is_empty() {
        let msg: Vec<String> = a.invalid.iter().map(|e| e.to_string()).collect();
        cond("Attached", false, g, "Invalid", msg.join("; "))
    } else if !a.pods.is_empty() {
        cond(
            "Attached",
            true,
            g,
            "Attached",
            format!("served by the sidecars of {} pod(s)", a.pods.len()),
        )
    } else if !a.conflicts.is_empty() {
        cond(
            "Attached",
            false,
            g,
            "RouteConflict",
            "every selected pod serves an older conflicting route instead".into(),
        )
    } else if a.refs.is_empty() {
        cond(
            "Attached",
            false,
            g,
            "NoMatchingPods",
            "spec.workloadSelector: no pod with the Weir sidecar matches".into(),
        )
    } else {
        // The first ref that failed says why (each has its own entry in `targetRefs`).
        let why = a
            .refs
            .iter()
            .find_map(|r| r.resolved.as_ref().err().map(|(_, m)| format!(": {m}")))
            .unwrap_or_default();
        cond(
            "Attached",
            false,
            g,
            "NoMatchingPods",
            format!("spec.targetRefs: no target selects a pod with the Weir sidecar{why}"),
        )
    };
    let conflicted = match a.conflicts.iter().next() {
        Some((_, first)) => {
            let more = a.conflicts.len() - 1;
            let tail = if more > 0 {
                format!(" (and {more} more pod(s))")
            } else {
                String::new()
            };
            cond(
                "Conflicted",
                true,
                g,
                "RouteConflict",
                format!("{first}{tail}"),
            )
        }
        // Never an empty message: the v1.20 API server's apply turns "" into null, which the
        // schema (message: string) refuses, failing the whole status write.
        None => cond(
            "Conflicted",
            false,
            g,
            "NoConflicts",
            "no older attached route claims the same host and match on its pods".into(),
        ),
    };
    let done = a.pods.iter().filter(|p| programmed.contains(*p)).count();
    let prog = if a.pods.is_empty() {
        cond(
            "Programmed",
            false,
            g,
            "NotAttached",
            "no pod serves the route".into(),
        )
    } else if done == a.pods.len() {
        cond(
            "Programmed",
            true,
            g,
            "Programmed",
            format!("{done}/{} sidecars run it", a.pods.len()),
        )
    } else {
        cond(
            "Programmed",
            false,
            g,
            "Pending",
            format!("{done}/{} sidecars run it", a.pods.len()),
        )
    };
    let unsaved: Vec<&String> = a
        .pods
        .iter()
        .filter(|p| facts.too_large.contains_key(*p))
        .collect();
    let persisted = match unsaved.first() {
        None => cond(
            "Persisted",
            true,
            g,
            "Persisted",
            "no attached pod's snapshot is left out of the Secret weir-sidecar-snapshots: a restarted sidecar serves the route at once".into(),
        ),
        Some(first) => cond(
            "Persisted",
            false,
            g,
            "SnapshotTooLarge",
            format!(
                "{} of {} attached pod(s) have no entry in the Secret weir-sidecar-snapshots (pushes still program them; a restarted one serves the route only after the next push): {}",
                unsaved.len(),
                a.pods.len(),
                facts.too_large[*first]
            ),
        ),
    };
    let old_conds = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    let old_refs = old.map(|o| o.target_refs.as_slice()).unwrap_or_default();
    let target_refs = a
        .refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let c = match &r.resolved {
                Ok(()) => cond(
                    "ResolvedRefs",
                    true,
                    g,
                    "ResolvedRefs",
                    format!(
                        "spec.targetRefs[{i}]: {} {} selects {} pod(s) with the Weir sidecar",
                        r.target.kind,
                        r.target.name,
                        r.selected.len()
                    ),
                ),
                Err((why, msg)) => cond("ResolvedRefs", false, g, why.reason(), msg.clone()),
            };
            // The same ref's old entry keeps its lastTransitionTime.
            let old = old_refs
                .iter()
                .find(|o| o.target == r.target)
                .map(|o| o.conditions.as_slice())
                .unwrap_or_default();
            TargetRefStatus {
                target: r.target.clone(),
                conditions: merge_conditions(vec![c], old, now),
                selected_pods: r.selected.len() as u32,
                attached_pods: r.selected.intersection(&a.pods).count() as u32,
            }
        })
        .collect();
    WorkloadAttachmentStatus {
        conditions: merge_conditions(vec![attached, conflicted, prog, persisted], old_conds, now),
        pods: names(a.pods.iter().cloned()),
        attached_pods: a.pods.len() as u32,
        programmed_pods: done as u32,
        conflicted_pods: names(a.conflicts.keys().cloned()),
        target_refs,
    }
}
