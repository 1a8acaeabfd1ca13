//! The pure status step: one route's [`Attachment`] plus what its pods acknowledged ->
//! `status.workloads`. Conditions keep their `lastTransitionTime` while their status holds.

use super::compile::Attachment;
use crate::crd::WorkloadAttachmentStatus;
use crate::status::{cond, merge_conditions};
use std::collections::BTreeSet;

/// Pods listed by name at most (the counts are always exact).
const LISTED: usize = 50;

fn names(keys: impl Iterator<Item = String>) -> Vec<String> {
    keys.map(|k| k.split_once('/').map(|(_, n)| n.to_string()).unwrap_or(k))
        .take(LISTED)
        .collect()
}

/// `programmed`: pods (`ns/name`) whose sidecar acknowledged the snapshot it should run.
pub fn attachment_status(
    a: &Attachment,
    programmed: &BTreeSet<String>,
    old: Option<&WorkloadAttachmentStatus>,
    now: &str,
) -> WorkloadAttachmentStatus {
    let g = a.generation;
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
    } else {
        cond(
            "Attached",
            false,
            g,
            "NoMatchingPods",
            "spec.workloadSelector: no pod with the Weir sidecar matches".into(),
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
    let old_conds = old.map(|o| o.conditions.as_slice()).unwrap_or_default();
    WorkloadAttachmentStatus {
        conditions: merge_conditions(vec![attached, conflicted, prog], old_conds, now),
        pods: names(a.pods.iter().cloned()),
        attached_pods: a.pods.len() as u32,
        programmed_pods: done as u32,
        conflicted_pods: names(a.conflicts.keys().cloned()),
    }
}
