//! Reports pods that asked for the sidecar and run without it. With `failurePolicy: Ignore`
//! (the chart's default) an injector outage admits pods unchanged; the API server logs that,
//! but nobody watching the cluster sees it. This audit makes it visible: the gauge
//! `weir_injector_missed_pods`, and one Warning Event `SidecarNotInjected` on each such pod.
//!
//! Every replica audits; the Event has a name derived from the pod's, so a second replica's
//! create is an AlreadyExists and the pod gets one Event, not one per replica.

use super::metrics::INJECTOR;
use super::patch::{decide, Input, Outcome, INJECT};
use super::Settings;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Does this pod ask for the sidecar (by its namespace's label or its own label/annotation)
/// and lack it, although the injector would have injected it? The same [`decide`] the
/// webhook runs, so port-less pods and opt-outs are not reported. Pure: tested without an
/// API server.
pub fn missed(pod: &Pod, namespace_labels: &BTreeMap<String, String>, settings: &Settings) -> bool {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let input = Input {
        pod,
        namespace_labels,
        // Only the Alt-Svc port depends on the Services, not whether to inject.
        services: &[],
        settings,
    };
    matches!(decide(&input), Ok(Outcome::Patch(_)))
}

/// UTC now as RFC 3339 (what Event timestamps take); jiff is what k8s-openapi's `Time` wraps.
fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

fn event_for(pod: &Pod, instance: &str) -> Option<Event> {
    let name = pod.metadata.name.as_deref()?;
    let ns = pod.metadata.namespace.as_deref()?;
    let now = now_rfc3339();
    let v = serde_json::json!({
        "metadata": {"name": format!("{name}.weir-sidecar-missed"), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
                           "uid": pod.metadata.uid},
        "type": "Warning",
        "reason": "SidecarNotInjected",
        "message": "created without the Weir sidecar although injection is enabled for it: the \
                    injector was unreachable or failed and failurePolicy Ignore admitted the pod; \
                    restart the workload once the injector is back (kubectl rollout restart)",
        "source": {"component": "weir-injector"},
        "reportingComponent": "weir.dev/injector",
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    serde_json::from_value(v).ok()
}

/// One audit pass: returns how many pods were missed.
pub async fn audit_once(
    client: &kube::Client,
    settings: &Settings,
    instance: &str,
) -> Result<u64, kube::Error> {
    let selector = ListParams::default().labels(&format!("{INJECT}=enabled"));
    let labelled = Api::<Namespace>::all(client.clone())
        .list(&selector)
        .await?;
    let mut pods: BTreeMap<(String, String), (Pod, BTreeMap<String, String>)> = BTreeMap::new();
    for ns in labelled.items {
        let labels = ns.metadata.labels.unwrap_or_default();
        let Some(name) = ns.metadata.name else {
            continue;
        };
        for p in Api::<Pod>::namespaced(client.clone(), &name)
            .list(&ListParams::default())
            .await?
            .items
        {
            let key = (name.clone(), p.metadata.name.clone().unwrap_or_default());
            pods.insert(key, (p, labels.clone()));
        }
    }
    // Pods that opted in by label in namespaces that did not.
    for p in Api::<Pod>::all(client.clone()).list(&selector).await?.items {
        let key = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        pods.entry(key).or_insert((p, BTreeMap::new()));
    }
    let mut count = 0;
    for ((ns, name), (pod, labels)) in &pods {
        if !missed(pod, labels, settings) {
            continue;
        }
        count += 1;
        let Some(ev) = event_for(pod, instance) else {
            continue;
        };
        match Api::<Event>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &ev)
            .await
        {
            Ok(_) => {
                tracing::warn!(namespace = %ns, pod = %name, "pod runs without the Weir sidecar it asked for (Event SidecarNotInjected)")
            }
            // Already reported (by this replica earlier, or by the other one).
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, "cannot write the SidecarNotInjected event: {e}")
            }
        }
    }
    Ok(count)
}

/// Audits every `interval` until `stop`.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    instance: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match audit_once(&client, &settings, &instance).await {
            Ok(n) => {
                INJECTOR.missed_pods.store(n, Relaxed);
            }
            Err(e) => {
                INJECTOR.audit_errors.fetch_add(1, Relaxed);
                tracing::warn!("sidecar audit failed: {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        yaml_serde::from_str(yaml).expect("pod yaml")
    }

    #[test]
    fn missed_only_when_asked_for_and_absent() {
        let s: Settings =
            serde_json::from_value(serde_json::json!({"image": "i"})).expect("settings");
        let ns_on: BTreeMap<String, String> = [(INJECT.to_string(), "enabled".to_string())].into();
        let none = BTreeMap::new();
        let app = "{name: app, ports: [{name: http, containerPort: 8080}]}";
        let plain = pod(&format!(
            "metadata: {{name: a}}\nspec: {{containers: [{app}]}}"
        ));
        let with = pod(&format!(
            "metadata: {{name: a}}\nspec: {{containers: [{app}, {{name: weir-sidecar}}]}}"
        ));
        let opted_out = pod(&format!("metadata: {{name: a, annotations: {{weir.dev/inject: disabled}}}}\nspec: {{containers: [{app}]}}"));
        let by_label = pod(&format!("metadata: {{name: a, labels: {{weir.dev/inject: enabled}}}}\nspec: {{containers: [{app}]}}"));
        let done = pod(&format!(
            "metadata: {{name: a}}\nspec: {{containers: [{app}]}}\nstatus: {{phase: Succeeded}}"
        ));
        let portless = pod("metadata: {name: a}\nspec: {containers: [{name: worker}]}");
        assert!(missed(&plain, &ns_on, &s));
        assert!(!missed(&plain, &none, &s));
        assert!(!missed(&with, &ns_on, &s));
        assert!(!missed(&opted_out, &ns_on, &s));
        assert!(missed(&by_label, &none, &s));
        assert!(!missed(&done, &ns_on, &s));
        assert!(!missed(&portless, &ns_on, &s));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let year: i32 = t[..4].parse().unwrap_or(0);
        assert!(year >= 2024, "{t}");
    }

    #[test]
    fn event_parses_and_names_the_pod() {
        let p = pod(
            "metadata: {name: echo-1, namespace: demo, uid: u}\nspec: {containers: [{name: app}]}",
        );
        let ev = event_for(&p, "op-1").expect("event");
        assert_eq!(ev.involved_object.name.as_deref(), Some("echo-1"));
        assert_eq!(ev.reason.as_deref(), Some("SidecarNotInjected"));
        assert_eq!(
            ev.metadata.name.as_deref(),
            Some("echo-1.weir-sidecar-missed")
        );
    }
}
