//! Leader election on a `coordination.k8s.io/v1` Lease. Only the holder pushes config and
//! writes status; a standby takes over once the holder's lease has not been renewed for the
//! lease duration. A holder that shuts down cleanly releases the lease so a standby takes over
//! at its next retry.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and a standby retries.
    pub retry: Duration,
}

/// What to do with a lease we read, as a pure decision (unit-tested).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Renew,
    TakeOver,
    Wait,
}

pub fn decide(spec: &LeaseSpec, me: &str, now: Timestamp, default_duration: Duration) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let dur = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(default_duration);
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(t) if now.duration_since(t).unsigned_abs() < dur && now >= t => Decision::Wait,
        Some(t) if now < t => Decision::Wait,
        _ => Decision::TakeOver,
    }
}

async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> kube::Result<bool> {
    let now = Timestamp::now();
    let secs = cfg.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    match decide(&spec, &cfg.identity, now, cfg.duration) {
        Decision::Wait => return Ok(false),
        Decision::Renew => {}
        Decision::TakeOver => {
            spec.holder_identity = Some(cfg.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    lease.spec = Some(spec);
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election until `stop` flips to true; publishes leadership on `tx`. Releases the
/// lease on the way out when holding it.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_renew: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire(&api, &cfg).await {
            Ok(true) => {
                last_renew = Some(tokio::time::Instant::now());
                if !*tx.borrow() {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                }
                tx.send_if_modified(|v| !std::mem::replace(v, true));
            }
            Ok(false) => {
                if *tx.borrow() {
                    tracing::warn!(lease = %cfg.name, "lost leadership");
                }
                last_renew = None;
                tx.send_if_modified(|v| std::mem::replace(v, false));
            }
            Err(e) => {
                let e = crate::error::Error::Lease(e).counted();
                tracing::warn!(error = %e, "lease renewal failed");
                // Step down before the lease can expire under us.
                if last_renew.is_some_and(|t| t.elapsed() + cfg.retry >= cfg.duration) {
                    tx.send_if_modified(|v| std::mem::replace(v, false));
                    last_renew = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry) => {}
            _ = stop.changed() => break,
        }
    }
    if *tx.borrow() {
        tx.send_replace(false);
        if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
                    spec.holder_identity = None;
                    let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
                    tracing::info!(lease = %cfg.name, "released lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: renew.map(|r| MicroTime(r.parse().unwrap())),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let d = Duration::from_secs(15);
        assert_eq!(
            decide(&spec(Some("me"), None, 15), "me", now, d),
            Decision::Renew
        );
        assert_eq!(
            decide(&spec(None, None, 15), "me", now, d),
            Decision::TakeOver
        );
        let fresh = spec(Some("other"), Some("2026-01-01T00:00:00Z"), 15);
        assert_eq!(decide(&fresh, "me", now, d), Decision::Wait);
        let stale = spec(Some("other"), Some("2026-01-01T00:00:00Z"), 5);
        assert_eq!(decide(&stale, "me", now, d), Decision::TakeOver);
        let never = spec(Some("other"), None, 15);
        assert_eq!(decide(&never, "me", now, d), Decision::TakeOver);
    }
}
