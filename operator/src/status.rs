//! Pure status computation: compile outcomes + what the pods run -> desired status, merged
//! with the current status so `lastTransitionTime` only moves when a condition's status flips.
//! The writer compares the result with what the object already has and patches only when they
//! differ, so an unchanged world causes no writes.

use crate::compile::{BackendOutcome, BackendProblem, Compiled, RouteOutcome, SinkOutcome};
use crate::crd::{BackendStatus, Condition, EndpointStatus, ProxyRouteStatus, TelemetrySinkStatus};
use crate::push::{HealthReport, SinkReport};
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_config::FieldError;

/// What the ready dataplane pods run: for each ready pod, the contents (object key ->
/// generation) of the snapshot version it acknowledged, or `None` when unknown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodProgress {
    /// Each ready pod's running contents (kind:key → generation), `None` while unknown. Pods
    /// on the same snapshot version share one map (`Arc`).
    pub pods: Vec<Option<Arc<BTreeMap<String, i64>>>>,
    /// Each ready pod's last endpoint health report (`GET /backends`), when it has one.
    pub health: Vec<Option<HealthReport>>,
    /// Ready pods that rejected the current snapshot (`422`), with their errors.
    pub rejected: Vec<(String, Vec<FieldError>)>,
    /// Each ready pod's last telemetry sink counters (`GET /sinks`), when it has them.
    pub sinks: Vec<Option<SinkReport>>,
}

/// Endpoint health of one backend aggregated over the pods that report it: per endpoint
/// status, and the number of healthy endpoints (`None` while no pod reports the backend).
pub fn aggregate_health(
    backend: &str,
    endpoints: &[String],
    pods: &PodProgress,
) -> (Vec<EndpointStatus>, Option<u32>) {
    let reports: Vec<_> = pods
        .health
        .iter()
        .flatten()
        .filter_map(|h| h.get(backend))
        .collect();
    let ready = pods.ready();
    let mut healthy_count = 0;
    let statuses = endpoints
        .iter()
        .map(|addr| {
            let seen: Vec<_> = reports.iter().filter_map(|r| r.get(addr)).collect();
            if seen.is_empty() {
                return EndpointStatus {
                    address: addr.clone(),
                    healthy: None,
                    reason: None,
                    seen_by: (!reports.is_empty()).then(|| format!("0/{ready}")),
                };
            }
            let bad: Vec<_> = seen.iter().filter(|h| !h.available).collect();
            let healthy = bad.is_empty();
            if healthy {
                healthy_count += 1;
            }
            let reason = bad.first().map(|h| {
                let r = h.reason.clone().unwrap_or_else(|| "unavailable".into());
                format!("{r} (unhealthy on {}/{} pods)", bad.len(), seen.len())
            });
            EndpointStatus {
                address: addr.clone(),
                healthy: Some(healthy),
                reason,
                seen_by: Some(format!("{}/{ready}", seen.len())),
            }
        })
        .collect();
    (statuses, (!reports.is_empty()).then_some(healthy_count))
}

impl PodProgress {
    pub fn ready(&self) -> u32 {
        self.pods.len() as u32
    }

    /// Pods whose running snapshot contains `content_key` at `generation`.
    ///
    /// Looked up once per distinct map, not once per pod: the status plan asks this for every
    /// route, and with 10,000 routes × 50 pods the per-pod lookups were 41% of the operator's
    /// CPU during changes (BENCHMARKS.md, "the full 10,000 × 50 run"). Pods share a map per
    /// snapshot version, so there are only as many distinct maps as versions being rolled out.
    pub fn programmed(&self, content_key: &str, generation: Option<i64>) -> u32 {
        let g = generation.unwrap_or(0);
        // (map, pods running it); a handful of entries, one per version being rolled out.
        let mut groups: Vec<(&Arc<BTreeMap<String, i64>>, u32)> = Vec::with_capacity(4);
        for map in self.pods.iter().flatten() {
            match groups.iter_mut().find(|(m, _)| Arc::ptr_eq(m, map)) {
                Some((_, n)) => *n += 1,
                None => groups.push((map, 1)),
            }
        }
        groups
            .iter()
            .filter(|(m, _)| m.get(content_key).copied() == Some(g))
            .map(|(_, n)| n)
            .sum()
    }
}

pub(crate) fn cond(
    type_: &str,
    ok: bool,
    gen: Option<i64>,
    reason: &str,
    message: String,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        observed_generation: gen,
        last_transition_time: String::new(),
        reason: reason.to_string(),
        message,
    }
}

/// Carries `lastTransitionTime` over from `old` when a condition's status did not change;
/// stamps `now` otherwise.
pub fn merge_conditions(mut new: Vec<Condition>, old: &[Condition], now: &str) -> Vec<Condition> {
    for c in &mut new {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && !o.last_transition_time.is_empty() => {
                o.last_transition_time.clone()
            }
            _ => now.to_string(),
        };
    }
    new
}

fn describe(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn programmed_condition(
    included: bool,
    why_not: &str,
    programmed: u32,
    ready: u32,
    gen: Option<i64>,
    rejected: &[(String, Vec<FieldError>)],
) -> Condition {
    if !included {
        cond(
            "Programmed",
            false,
            gen,
            why_not,
            "not in the snapshot".to_string(),
        )
    } else if ready == 0 {
        cond(
            "Programmed",
            false,
            gen,
            "NoReadyPods",
            "no ready dataplane pods".to_string(),
        )
    } else if programmed < ready && !rejected.is_empty() {
        let (pod, errs) = &rejected[0];
        let shown: Vec<FieldError> = errs.iter().take(3).cloned().collect();
        cond(
            "Programmed",
            false,
            gen,
            "Rejected",
            format!(
                "{programmed}/{ready} ready dataplane pods run this generation; pod {pod} rejected the snapshot: {}",
                describe(&shown)
            ),
        )
    } else if programmed == ready {
        cond(
            "Programmed",
            true,
            gen,
            "Programmed",
            format!("{programmed}/{ready} ready dataplane pods run this generation"),
        )
    } else {
        cond(
            "Programmed",
            false,
            gen,
            "Pending",
            format!("{programmed}/{ready} ready dataplane pods run this generation"),
        )
    }
}

/// The desired ProxyRoute status.
pub fn route_status(
    key: &str,
    o: &RouteOutcome,
    compiled: &Compiled,
    pods: &PodProgress,
    old: Option<&ProxyRouteStatus>,
    now: &str,
) -> ProxyRouteStatus {
    let gen = o.generation;
    let accepted = if o.invalid.is_empty() {
        cond("Accepted", true, gen, "Accepted", "spec is valid".into())
    } else {
        cond("Accepted", false, gen, "Invalid", describe(&o.invalid))
    };
    let resolved = if !o.unresolved.is_empty() {
        cond(
            "ResolvedRefs",
            false,
            gen,
            "BackendNotFound",
            describe(&o.unresolved),
        )
    } else if !o.unresolved_secrets.is_empty() {
        cond(
            "ResolvedRefs",
            false,
            gen,
            "SecretNotResolved",
            describe(&o.unresolved_secrets),
        )
    } else {
        cond(
            "ResolvedRefs",
            true,
            gen,
            "ResolvedRefs",
            "every reference resolves".into(),
        )
    };
    let why_not = if !o.invalid.is_empty() {
        "Invalid"
    } else {
        "UnresolvedRefs"
    };
    let programmed_pods = pods.programmed(&format!("ProxyRoute:{key}"), gen);
    let programmed = programmed_condition(
        o.included,
        why_not,
        programmed_pods,
        pods.ready(),
        gen,
        &pods.rejected,
    );
    let mut total: u32 = 0;
    let mut healthy: Option<u32> = Some(0);
    for name in &o.backends {
        let Some(b) = compiled.backends.get(name) else {
            continue;
        };
        total += b.endpoints.len() as u32;
        let (_, h) = aggregate_health(name, &b.endpoints, pods);
        healthy = match (healthy, h) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    let old_conds = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    ProxyRouteStatus {
        conditions: merge_conditions(vec![accepted, resolved, programmed], old_conds, now),
        programmed_pods,
        ready_pods: pods.ready(),
        backends: (!o.backends.is_empty()).then(|| o.backends.join(",")),
        healthy: Some(match healthy {
            Some(h) => format!("{h}/{total}"),
            None => format!("?/{total}"),
        }),
        total_endpoints: total,
        observed_generation: gen,
        // Written by the workload controller (its own field manager), never by this one.
        workloads: None,
    }
}

/// The desired Backend status.
pub fn backend_status(
    key: &str,
    o: &BackendOutcome,
    pods: &PodProgress,
    old: Option<&BackendStatus>,
    now: &str,
) -> BackendStatus {
    let gen = o.generation;
    let programmed = pods.programmed(&format!("Backend:{key}"), gen);
    let (endpoints, healthy) = aggregate_health(key, &o.endpoints, pods);
    let total = o.endpoints.len() as u32;
    let ready = match &o.problem {
        Some(BackendProblem::Invalid(e)) => cond("Ready", false, gen, "Invalid", describe(e)),
        Some(BackendProblem::ServiceNotFound(m)) => {
            cond("Ready", false, gen, "ServiceNotFound", m.clone())
        }
        Some(BackendProblem::PortNotFound(m)) => {
            cond("Ready", false, gen, "PortNotFound", m.clone())
        }
        Some(BackendProblem::UnresolvedRefs(e)) => {
            cond("Ready", false, gen, "UnresolvedRefs", describe(e))
        }
        None if o.endpoints.is_empty() => cond(
            "Ready",
            false,
            gen,
            "NoEndpoints",
            "no ready endpoints".into(),
        ),
        None if pods.ready() == 0 => cond(
            "Ready",
            false,
            gen,
            "NoReadyPods",
            "no ready dataplane pods".into(),
        ),
        None if programmed < pods.ready() => cond(
            "Ready",
            false,
            gen,
            "Pending",
            format!(
                "{programmed}/{} ready dataplane pods run this generation",
                pods.ready()
            ),
        ),
        None if healthy == Some(0) => cond(
            "Ready",
            false,
            gen,
            "NoHealthyEndpoints",
            format!("0/{total} endpoints healthy"),
        ),
        None => cond(
            "Ready",
            true,
            gen,
            "Ready",
            format!("{total} endpoints, programmed on {programmed} pods"),
        ),
    };
    let degraded = match healthy {
        None => Condition {
            type_: "Degraded".into(),
            status: "Unknown".into(),
            observed_generation: gen,
            last_transition_time: String::new(),
            reason: "HealthNotReported".into(),
            message: "no dataplane pod reports this backend's endpoint health yet".into(),
        },
        Some(h) if h < total => cond(
            "Degraded",
            true,
            gen,
            "EndpointsUnhealthy",
            format!("{}/{total} endpoints unhealthy", total - h),
        ),
        Some(_) => cond(
            "Degraded",
            false,
            gen,
            "AllHealthy",
            format!("{total}/{total} endpoints healthy"),
        ),
    };
    let mut conds = vec![ready, degraded];
    if o.has_secret_refs {
        conds.push(secret_refs_condition(
            match &o.problem {
                Some(BackendProblem::UnresolvedRefs(e)) => e,
                _ => &[],
            },
            gen,
        ));
    }
    let old_conds = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    BackendStatus {
        conditions: merge_conditions(conds, old_conds, now),
        endpoints,
        healthy_endpoints: healthy,
        total_endpoints: total,
        endpoints_summary: Some(match healthy {
            Some(h) => format!("{h}/{total}"),
            None => format!("?/{total}"),
        }),
        observed_generation: gen,
    }
}

/// `ResolvedRefs` of an object that references Secrets.
fn secret_refs_condition(unresolved: &[FieldError], gen: Option<i64>) -> Condition {
    if unresolved.is_empty() {
        cond(
            "ResolvedRefs",
            true,
            gen,
            "ResolvedRefs",
            "every Secret reference resolves".into(),
        )
    } else {
        cond(
            "ResolvedRefs",
            false,
            gen,
            "SecretNotResolved",
            describe(unresolved),
        )
    }
}

/// Counters of one sink summed over the ready pods that report it: `(shipped, dropped,
/// failed, latest success)`, or `None` while no pod reports the sink.
pub fn aggregate_sink(key: &str, pods: &PodProgress) -> Option<(u64, u64, u64, Option<String>)> {
    let reports: Vec<_> = pods
        .sinks
        .iter()
        .flatten()
        .filter_map(|r| r.get(key))
        .collect();
    if reports.is_empty() {
        return None;
    }
    let sum = |f: fn(&crate::push::SinkCounters) -> u64| reports.iter().map(|c| f(c)).sum();
    // RFC 3339 times in UTC with a fixed format compare correctly as strings.
    let last = reports.iter().filter_map(|c| c.last_success.clone()).max();
    Some((
        sum(|c| c.shipped),
        sum(|c| c.dropped),
        sum(|c| c.failed),
        last,
    ))
}

/// The desired TelemetrySink status. Counters (`shipped`, `dropped`, `failed`,
/// `lastSuccessTime`) are taken from the pods only when `refresh_counters` (the controller
/// allows that at most once per `--sink-status-interval`); otherwise the old ones are kept, so
/// traffic alone cannot cause more than one write per interval.
pub fn sink_status(
    key: &str,
    o: &SinkOutcome,
    pods: &PodProgress,
    old: Option<&TelemetrySinkStatus>,
    now: &str,
    refresh_counters: bool,
) -> TelemetrySinkStatus {
    let gen = o.generation;
    let programmed = pods.programmed(&format!("TelemetrySink:{key}"), gen);
    let ready = if !o.invalid.is_empty() {
        cond("Ready", false, gen, "Invalid", describe(&o.invalid))
    } else if !o.unresolved.is_empty() {
        cond(
            "Ready",
            false,
            gen,
            "UnresolvedRefs",
            describe(&o.unresolved),
        )
    } else {
        let mut c = programmed_condition(true, "", programmed, pods.ready(), gen, &pods.rejected);
        c.type_ = "Ready".into();
        if c.status == "True" {
            c.reason = "Ready".into();
        }
        c
    };
    let mut conds = vec![ready];
    if o.has_secret_refs {
        conds.push(secret_refs_condition(&o.unresolved, gen));
    }
    if o.has_tracing {
        conds.push(match &o.tracing_conflict {
            Some(m) => cond("TracingApplied", false, gen, "Conflicted", m.clone()),
            None => cond(
                "TracingApplied",
                true,
                gen,
                "Applied",
                "spec.tracing is the snapshot's tracing section".into(),
            ),
        });
    }
    let old_conds = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut st = TelemetrySinkStatus {
        conditions: merge_conditions(conds, old_conds, now),
        shipped: old.and_then(|s| s.shipped),
        dropped: old.and_then(|s| s.dropped),
        failed: old.and_then(|s| s.failed),
        last_success_time: old.and_then(|s| s.last_success_time.clone()),
        observed_generation: gen,
    };
    if refresh_counters {
        if let Some((shipped, dropped, failed, last)) = aggregate_sink(key, pods) {
            st.shipped = Some(shipped);
            st.dropped = Some(dropped);
            st.failed = Some(failed);
            st.last_success_time = last.or(st.last_success_time);
        }
    }
    st
}

/// Read access to the parts of a status that events are derived from.
pub trait StatusView {
    fn conditions(&self) -> &[Condition];
    fn endpoints(&self) -> &[EndpointStatus] {
        &[]
    }
}

impl StatusView for ProxyRouteStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl StatusView for BackendStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn endpoints(&self) -> &[EndpointStatus] {
        &self.endpoints
    }
}

impl StatusView for TelemetrySinkStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// A notable transition worth a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// Events for condition flips between `old` and `new` status of a `kind` object. Initial
/// "all good" conditions are not announced (no noise on creation or operator restarts).
pub fn condition_transitions(kind: &str, old: &[Condition], new: &[Condition]) -> Vec<Transition> {
    let mut out = Vec::new();
    for c in new {
        let was = old
            .iter()
            .find(|o| o.type_ == c.type_)
            .map(|o| o.status.as_str());
        if was == Some(c.status.as_str()) {
            continue;
        }
        let (warning, reason) = match (kind, c.type_.as_str(), c.status.as_str(), was) {
            ("ProxyRoute", "Accepted", "False", _) => (true, "NotAccepted"),
            ("ProxyRoute", "Accepted", "True", Some(_)) => (false, "Accepted"),
            ("ProxyRoute", "ResolvedRefs", "False", _) => (true, "RefsNotResolved"),
            ("ProxyRoute", "Programmed", "True", _) => (false, "Programmed"),
            ("Backend", "Degraded", "True", _) => (true, "Degraded"),
            ("Backend", "Degraded", "False", Some("True")) => (false, "Recovered"),
            (_, "Ready", "False", Some("True")) => (true, "NotReady"),
            ("TelemetrySink", "Ready", "False", _) => (true, "NotReady"),
            ("TelemetrySink", "TracingApplied", "False", _) => (true, "TracingConflicted"),
            _ => continue,
        };
        out.push(Transition {
            warning,
            reason,
            note: format!("{} is {}: {}", c.type_, c.status, c.message),
        });
    }
    out
}

/// Events for endpoints that went down or came back between two Backend statuses.
pub fn endpoint_transitions(old: &[EndpointStatus], new: &[EndpointStatus]) -> Vec<Transition> {
    let mut out = Vec::new();
    for e in new {
        let was = old
            .iter()
            .find(|o| o.address == e.address)
            .and_then(|o| o.healthy);
        match (was, e.healthy) {
            (Some(true), Some(false)) | (None, Some(false)) => out.push(Transition {
                warning: true,
                reason: "EndpointDown",
                note: format!(
                    "{} unhealthy: {}",
                    e.address,
                    e.reason.as_deref().unwrap_or("no reason reported")
                ),
            }),
            (Some(false), Some(true)) => out.push(Transition {
                warning: false,
                reason: "EndpointUp",
                note: format!("{} healthy again", e.address),
            }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(included: bool, invalid: Vec<FieldError>) -> RouteOutcome {
        RouteOutcome {
            generation: Some(2),
            invalid,
            unresolved: vec![],
            backends: vec!["ns/be".into()],
            included,
            ..Default::default()
        }
    }

    fn pods(gens: &[Option<i64>]) -> PodProgress {
        PodProgress {
            pods: gens
                .iter()
                .map(|g| g.map(|g| Arc::new(BTreeMap::from([("ProxyRoute:ns/r".to_string(), g)]))))
                .collect(),
            health: vec![None; gens.len()],
            rejected: vec![],
            sinks: vec![],
        }
    }

    #[test]
    fn programmed_counts_pods_sharing_a_version_map_once_each() {
        let v1 = Arc::new(BTreeMap::from([("ProxyRoute:ns/r".to_string(), 1)]));
        let v2 = Arc::new(BTreeMap::from([("ProxyRoute:ns/r".to_string(), 2)]));
        // An equal map that is not shared must count too (pods on different but equal versions).
        let v2_copy = Arc::new((*v2).clone());
        let p = PodProgress {
            pods: vec![
                Some(v1.clone()),
                Some(v2.clone()),
                None,
                Some(v2.clone()),
                Some(v1),
                Some(v2_copy),
                Some(v2),
            ],
            ..Default::default()
        };
        assert_eq!(p.ready(), 7);
        assert_eq!(p.programmed("ProxyRoute:ns/r", Some(2)), 4);
        assert_eq!(p.programmed("ProxyRoute:ns/r", Some(1)), 2);
        assert_eq!(p.programmed("ProxyRoute:ns/r", Some(3)), 0);
        assert_eq!(p.programmed("ProxyRoute:ns/other", Some(2)), 0);
    }

    fn get<'a>(s: &'a ProxyRouteStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn programmed_counts_pods_running_this_generation() {
        let c = Compiled::default();
        let s = route_status(
            "ns/r",
            &outcome(true, vec![]),
            &c,
            &pods(&[Some(2), Some(1), None]),
            None,
            "t0",
        );
        assert_eq!(s.programmed_pods, 1);
        assert_eq!(s.ready_pods, 3);
        assert_eq!(get(&s, "Programmed").status, "False");
        assert_eq!(get(&s, "Programmed").reason, "Pending");
        let s = route_status(
            "ns/r",
            &outcome(true, vec![]),
            &c,
            &pods(&[Some(2), Some(2)]),
            None,
            "t0",
        );
        assert_eq!(get(&s, "Programmed").status, "True");
        assert_eq!(get(&s, "Programmed").observed_generation, Some(2));
        let s = route_status("ns/r", &outcome(true, vec![]), &c, &pods(&[]), None, "t0");
        assert_eq!(get(&s, "Programmed").reason, "NoReadyPods");
    }

    #[test]
    fn invalid_route_reports_the_path() {
        let o = outcome(
            false,
            vec![FieldError::new(
                "spec.rules[0].matches[0].path",
                "regex does not compile",
            )],
        );
        let s = route_status(
            "ns/r",
            &o,
            &Compiled::default(),
            &pods(&[Some(1)]),
            None,
            "t0",
        );
        let a = get(&s, "Accepted");
        assert_eq!((a.status.as_str(), a.reason.as_str()), ("False", "Invalid"));
        assert!(
            a.message.contains("spec.rules[0].matches[0].path"),
            "{}",
            a.message
        );
        assert_eq!(get(&s, "Programmed").reason, "Invalid");
    }

    #[test]
    fn transition_time_moves_only_on_flips_and_equal_inputs_give_equal_status() {
        let c = Compiled::default();
        let o = outcome(true, vec![]);
        let s1 = route_status("ns/r", &o, &c, &pods(&[Some(1)]), None, "t0");
        assert_eq!(get(&s1, "Programmed").status, "False");
        // Same world, later: identical status (so the writer skips the patch).
        let s2 = route_status("ns/r", &o, &c, &pods(&[Some(1)]), Some(&s1), "t1");
        assert_eq!(s1, s2);
        // Programmed flips: only its time moves.
        let s3 = route_status("ns/r", &o, &c, &pods(&[Some(2)]), Some(&s2), "t2");
        assert_eq!(get(&s3, "Programmed").last_transition_time, "t2");
        assert_eq!(get(&s3, "Accepted").last_transition_time, "t0");
        // Message change without a flip keeps the time.
        let s4 = route_status("ns/r", &o, &c, &pods(&[Some(2), Some(2)]), Some(&s3), "t3");
        assert_ne!(
            get(&s4, "Programmed").message,
            get(&s3, "Programmed").message
        );
        assert_eq!(get(&s4, "Programmed").last_transition_time, "t2");
    }

    #[test]
    fn backend_ready_reasons() {
        let mut o = BackendOutcome {
            generation: Some(1),
            problem: None,
            endpoints: vec!["a:1".into(), "b:2".into()],
            included: true,
            has_secret_refs: false,
        };
        let p = PodProgress {
            pods: vec![Some(Arc::new(BTreeMap::from([(
                "Backend:ns/b".to_string(),
                1,
            )])))],
            health: vec![None],
            rejected: vec![],
            sinks: vec![],
        };
        let s = backend_status("ns/b", &o, &p, None, "t");
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Ready")
        );
        assert_eq!(s.endpoints_summary.as_deref(), Some("?/2"));
        assert_eq!(s.total_endpoints, 2);
        o.endpoints.clear();
        o.problem = Some(BackendProblem::ServiceNotFound(
            "Service ns/x not found".into(),
        ));
        let s = backend_status("ns/b", &o, &p, Some(&s), "t2");
        assert_eq!(s.conditions[0].reason, "ServiceNotFound");
        assert_eq!(s.conditions[0].last_transition_time, "t2");
        assert_eq!(
            s.conditions[1].last_transition_time, "t",
            "Degraded did not flip"
        );
    }

    #[test]
    fn health_is_aggregated_over_pods() {
        use crate::push::EndpointHealth;
        let up = EndpointHealth {
            available: true,
            reason: None,
        };
        let down = EndpointHealth {
            available: false,
            reason: Some("health check failing: connection refused".into()),
        };
        let report = |b: &EndpointHealth| {
            BTreeMap::from([(
                "ns/b".to_string(),
                BTreeMap::from([
                    ("a:1".to_string(), up.clone()),
                    ("b:2".to_string(), b.clone()),
                ]),
            )])
        };
        let gen = Arc::new(BTreeMap::from([("Backend:ns/b".to_string(), 1)]));
        let p = PodProgress {
            pods: vec![Some(gen.clone()), Some(gen.clone()), Some(gen)],
            // One pod has not reported yet: it does not count against the endpoint.
            health: vec![Some(report(&up)), Some(report(&down)), None],
            rejected: vec![],
            sinks: vec![],
        };
        let o = BackendOutcome {
            generation: Some(1),
            problem: None,
            endpoints: vec!["a:1".into(), "b:2".into()],
            included: true,
            has_secret_refs: false,
        };
        let s = backend_status("ns/b", &o, &p, None, "t");
        assert_eq!(s.healthy_endpoints, Some(1));
        assert_eq!(s.endpoints_summary.as_deref(), Some("1/2"));
        let b = &s.endpoints[1];
        assert_eq!(b.healthy, Some(false));
        assert_eq!(b.seen_by.as_deref(), Some("2/3"));
        assert_eq!(
            b.reason.as_deref(),
            Some("health check failing: connection refused (unhealthy on 1/2 pods)")
        );
        let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "EndpointsUnhealthy")
        );
        assert_eq!(
            s.conditions[0].status, "True",
            "still Ready with one healthy endpoint"
        );

        // The route behind it shows healthy x/y.
        let mut c = Compiled::default();
        c.backends.insert("ns/b".into(), o.clone());
        let r = RouteOutcome {
            generation: Some(1),
            backends: vec!["ns/b".into()],
            included: true,
            ..Default::default()
        };
        let rs = route_status("ns/r", &r, &c, &p, None, "t");
        assert_eq!(rs.healthy.as_deref(), Some("1/2"));
    }

    #[test]
    fn backends_report_parsing_ignores_counters() {
        let doc = serde_json::json!({
            "version": "sha256:abc",
            "backends": {"ns/b": {"status": "degraded", "endpoints": [
                {"address": "a:1", "healthy": true, "available": true, "requests": 7},
                {"address": "b:2", "healthy": false, "available": false,
                 "activeCheck": {"lastCheck": {"result": "failure", "detail": "refused", "at": "x"}}},
                {"address": "c:3", "healthy": true, "available": false, "ejectedUntil": "x"},
            ]}},
        });
        let (v, h) = crate::push::parse_backends_report(&doc).unwrap();
        assert_eq!(v, "sha256:abc");
        let eps = &h["ns/b"];
        assert!(eps["a:1"].available);
        assert_eq!(
            eps["b:2"].reason.as_deref(),
            Some("health check failing: refused")
        );
        assert_eq!(
            eps["c:3"].reason.as_deref(),
            Some("ejected by outlier detection")
        );
    }

    #[test]
    fn transitions_announce_flips_only() {
        let c = |t: &str, st: &str| cond(t, st == "True", Some(1), "R", "m".into());
        let none: Vec<Condition> = vec![];
        // Creation: all good -> nothing to announce; invalid -> a warning.
        assert!(condition_transitions("ProxyRoute", &none, &[c("Accepted", "True")]).is_empty());
        let t = condition_transitions("ProxyRoute", &none, &[c("Accepted", "False")]);
        assert_eq!((t[0].warning, t[0].reason), (true, "NotAccepted"));
        // No flip, no event.
        let same = [c("Degraded", "True")];
        assert!(condition_transitions("Backend", &same, &same).is_empty());
        let t = condition_transitions("Backend", &same, &[c("Degraded", "False")]);
        assert_eq!((t[0].warning, t[0].reason), (false, "Recovered"));

        let ep = |h: Option<bool>| EndpointStatus {
            address: "a:1".into(),
            healthy: h,
            reason: None,
            seen_by: None,
        };
        let t = endpoint_transitions(&[ep(Some(true))], &[ep(Some(false))]);
        assert_eq!(t[0].reason, "EndpointDown");
        let t = endpoint_transitions(&[ep(Some(false))], &[ep(Some(true))]);
        assert_eq!(t[0].reason, "EndpointUp");
        assert!(endpoint_transitions(&[ep(None)], &[ep(Some(true))]).is_empty());
    }

    #[test]
    fn sink_counters_are_summed_over_pods_and_refreshed_only_when_allowed() {
        use crate::push::{parse_sinks_report, SinkReport};
        let report = |shipped: u64, last: Option<&str>| -> SinkReport {
            let v = serde_json::json!({"sinks": {"ns/s": {
                "type": "httpJson", "shipped": shipped, "dropped": 1, "failed": 2,
                "attempts": 9, "lastSuccess": last, "lastError": null}}});
            parse_sinks_report(&v).unwrap()
        };
        let gen = Arc::new(BTreeMap::from([("TelemetrySink:ns/s".to_string(), 1)]));
        let p = |a: u64, b: u64| PodProgress {
            pods: vec![Some(gen.clone()), Some(gen.clone())],
            health: vec![None, None],
            rejected: vec![],
            sinks: vec![
                Some(report(a, Some("2026-01-01T00:00:01.000Z"))),
                Some(report(b, None)),
            ],
        };
        let o = SinkOutcome {
            generation: Some(1),
            included: true,
            ..Default::default()
        };
        let s1 = sink_status("ns/s", &o, &p(5, 7), None, "t0", true);
        assert_eq!(
            (s1.shipped, s1.dropped, s1.failed),
            (Some(12), Some(2), Some(4))
        );
        assert_eq!(
            s1.last_success_time.as_deref(),
            Some("2026-01-01T00:00:01.000Z")
        );
        assert_eq!(s1.conditions[0].status, "True");
        assert_eq!(
            s1.conditions.len(),
            1,
            "no ResolvedRefs without Secret references"
        );
        // Traffic moved the counters, but no refresh is due: the status stays as it was.
        let s2 = sink_status("ns/s", &o, &p(50, 70), Some(&s1), "t1", false);
        assert_eq!(s2, s1);
        let s3 = sink_status("ns/s", &o, &p(50, 70), Some(&s1), "t2", true);
        assert_eq!(s3.shipped, Some(120));
        assert_eq!(s3.conditions, s1.conditions);
        // No pod reports the sink (yet): counters stay unknown.
        let none = PodProgress {
            sinks: vec![None, None],
            ..p(0, 0)
        };
        assert_eq!(
            sink_status("ns/s", &o, &none, None, "t", true).shipped,
            None
        );
        // An unresolved API key Secret.
        let bad = SinkOutcome {
            generation: Some(1),
            unresolved: vec![FieldError::new(
                "spec.apiKeySecretRef",
                "Secret ns/k not found",
            )],
            has_secret_refs: true,
            ..Default::default()
        };
        let s = sink_status("ns/s", &bad, &p(0, 0), None, "t", true);
        let reasons: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("Ready", "False", "UnresolvedRefs"),
                ("ResolvedRefs", "False", "SecretNotResolved")
            ]
        );
        assert!(s.conditions[1].message.contains("spec.apiKeySecretRef"));
    }
}
