//! Sidecar injection (issue #21): a mutating admission webhook, served over TLS by the
//! operator binary on its own port (`--injector-address`), plus an audit that reports pods
//! that should have the sidecar but were created without it (the webhook was down and the
//! chart's `failurePolicy: Ignore` let them through).
//!
//! - [`patch`]: the pure decision `pod + namespace labels + Services + settings -> JSON patch`
//!   or a denial naming the annotation, unit-tested on golden files (`testdata/`).
//! - [`settings`]: the chart's `injector.*` values, read from `--injector-settings`.
//! - [`server`]: the HTTPS `/mutate` endpoint (AdmissionReview v1), certificate reload.
//! - [`audit`]: the missed-pod metric and Event.
//! - [`metrics`]: the injector's counters, appended to the operator's `/metrics`.
//!
//! Served by every replica, not only the Lease holder: admission is stateless and the
//! API server calls whichever pod its Service picks.

pub mod audit;
pub mod metrics;
pub mod patch;
pub mod server;
pub mod settings;

pub use patch::{decide, Denial, Input, Outcome};
pub use settings::Settings;

/// Why the injector could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error("injector certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("injector: cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Where the injector listens and what it reads (from `weir-operator run --injector-*`).
pub struct InjectorConfig {
    pub address: std::net::SocketAddr,
    pub tls_dir: std::path::PathBuf,
    pub settings: std::path::PathBuf,
    pub audit_interval: std::time::Duration,
    /// This replica's name in the Events it writes.
    pub instance: String,
}

/// Loads the settings and certificate (a bad one stops the operator at start-up, naming the
/// file), binds the port, then serves the webhook and runs the audit in the background.
pub async fn start(
    client: kube::Client,
    cfg: InjectorConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), InjectError> {
    let settings = Settings::load(&cfg.settings)?;
    let certs = server::CertStore::load(cfg.tls_dir)?;
    let injector = std::sync::Arc::new(server::Injector {
        settings: settings.clone(),
        client: client.clone(),
    });
    // Bind here, not in the task, so a taken port fails the start-up instead of a log line.
    let listener = tokio::net::TcpListener::bind(cfg.address)
        .await
        .map_err(|source| InjectError::Listen {
            address: cfg.address,
            source,
        })?;
    let serve_stop = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = server::serve(listener, certs, injector, serve_stop).await {
            tracing::error!("{e}");
        }
    });
    tokio::spawn(audit::run(
        client,
        settings,
        cfg.instance,
        cfg.audit_interval,
        stop,
    ));
    Ok(())
}
