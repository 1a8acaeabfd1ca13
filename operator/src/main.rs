//! `weir-operator`: run the controller, or `weir-operator crdgen` to write the CRD YAML.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use weir_operator::controller::{self, Settings};
use weir_operator::error::Error;
use weir_operator::lease::LeaseConfig;
use weir_operator::push::{PusherConfig, TokenSource};

#[derive(Parser)]
#[command(
    name = "weir-operator",
    version,
    about = "Weir operator: CRDs -> snapshot -> dataplane pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CRDs as YAML (one file per CRD into DIR, or all to stdout).
    Crdgen {
        /// Directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not write; exit 1 when the files in --out differ from the generated ones.
        #[arg(long, requires = "out")]
        check: bool,
    },
    /// Run the controller (in cluster, or out of cluster with KUBECONFIG).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Only watch ProxyRoutes, Backends, TelemetrySinks and Services in this namespace.
    #[arg(long, env = "WEIR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the dataplane pods, the Lease and the snapshot ConfigMap.
    #[arg(long, env = "WEIR_NAMESPACE", default_value = "weir-system")]
    namespace: String,
    /// Label selector of the dataplane pods.
    #[arg(
        long,
        env = "WEIR_DATAPLANE_SELECTOR",
        default_value = "app.kubernetes.io/name=weir-dataplane"
    )]
    dataplane_selector: String,
    /// Admin API port of the dataplane pods.
    #[arg(long, env = "WEIR_ADMIN_PORT", default_value_t = 9901)]
    admin_port: u16,
    /// File holding the dataplane admin token (`WEIR_ADMIN_TOKEN` may hold the token itself).
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Secret (in --namespace) holding the admin token under key `token`.
    #[arg(long, env = "WEIR_ADMIN_TOKEN_SECRET")]
    admin_token_secret: Option<String>,
    /// YAML file with the listeners every dataplane pod gets (a list of the snapshot's
    /// `listeners`); `$(POD_IP)` in an address is replaced by each pod's IP. Default: one
    /// plain HTTP listener on 0.0.0.0:8080.
    #[arg(long, env = "WEIR_LISTENERS")]
    listeners: Option<PathBuf>,
    /// Name of the Secret (in --namespace) that gets the last-known-good snapshot (key
    /// `snapshot.json`). A Secret, not a ConfigMap: the snapshot carries credentials, API keys
    /// and TLS keys resolved from Secrets.
    #[arg(long, env = "WEIR_SNAPSHOT_SECRET", default_value = "weir-snapshot")]
    snapshot_secret: String,
    /// TelemetrySink status counters (shipped, dropped, failed, lastSuccessTime) are written at
    /// most once per this interval while they change.
    #[arg(long, default_value = "30s")]
    sink_status_interval: weir_config::Duration,
    /// Quiet period before a burst of changes is compiled (at most 5x this is waited).
    #[arg(long, default_value = "200ms")]
    debounce: weir_config::Duration,
    /// Lease name (in --namespace) for leader election.
    #[arg(long, default_value = "weir-operator")]
    lease_name: String,
    /// How long a lease stays valid without renewal; a standby takes over after it.
    #[arg(long, default_value = "15s")]
    lease_duration: weir_config::Duration,
    /// How often the holder renews and standbys retry.
    #[arg(long, default_value = "5s")]
    lease_retry: weir_config::Duration,
    /// This replica's identity in the Lease (default: $POD_NAME or hostname-pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Pods pushed to at once.
    #[arg(long, default_value_t = 8)]
    push_concurrency: usize,
    /// How often every pod's running version and endpoint health are polled
    /// (`GET /backends`, or `GET /config` on dataplanes without it).
    #[arg(long, default_value = "5s")]
    verify_interval: weir_config::Duration,
    /// Watch and compile the Gateway API kinds (GatewayClass, Gateway, HTTPRoute, GRPCRoute,
    /// ReferenceGrant) once their CRDs are installed.
    #[arg(long, env = "WEIR_GATEWAY_API", default_value_t = true, action = clap::ArgAction::Set)]
    gateway_api: bool,
    /// The dataplane Service (in --namespace): the ports Gateway listeners may use and the
    /// address in every Gateway's status.
    #[arg(long, env = "WEIR_DATAPLANE_SERVICE")]
    dataplane_service: Option<String>,
    /// Address for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "WEIR_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// Serve the sidecar injector (mutating admission webhook, HTTPS) on this address; off
    /// when unset.
    #[arg(long, env = "WEIR_INJECTOR_ADDRESS")]
    injector_address: Option<std::net::SocketAddr>,
    /// Directory with the injector's `tls.crt` and `tls.key` (re-read when they change).
    #[arg(long, default_value = "/etc/weir/injector-tls")]
    injector_tls_dir: PathBuf,
    /// The injector's settings (JSON or YAML, the chart's `injector.*` values).
    #[arg(long, default_value = "/etc/weir/injector/settings.json")]
    injector_settings: PathBuf,
    /// Program the injected sidecars: their inbound listener plus the ProxyRoutes attached to
    /// their workload (`spec.workloadSelector`, `spec.targetRefs`), pushed to each sidecar with its namespace's
    /// token (Secret `weir-sidecar-token`, created when missing). Off: attached routes are
    /// served by the fleet like the others.
    #[arg(long, env = "WEIR_SIDECARS", default_value_t = false, action = clap::ArgAction::Set)]
    sidecars: bool,
    /// The sidecars' admin port (the chart's `injector.adminPort`).
    #[arg(long, default_value_t = 15000)]
    sidecar_admin_port: u16,
    /// How often pods that asked for the sidecar and lack it are looked for.
    #[arg(long, default_value = "30s")]
    injector_audit_interval: weir_config::Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out, check } => crdgen(out, check),
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = e.counted();
                    tracing::error!(kind = e.kind(), "{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn crdgen(out: Option<PathBuf>, check: bool) -> ExitCode {
    let files = weir_operator::crd::render();
    let Some(dir) = out else {
        for (_, yaml) in files {
            print!("---\n{yaml}");
        }
        return ExitCode::SUCCESS;
    };
    let mut stale = false;
    for (name, yaml) in files {
        let path = dir.join(&name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!("{} is stale; run `make crds`", path.display());
                stale = true;
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(a: RunArgs) -> Result<(), Error> {
    let listeners: Vec<weir_config::Listener> = match &a.listeners {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| Error::ListenersRead {
                path: p.clone(),
                source,
            })?;
            yaml_serde::from_str(&text).map_err(|source| Error::ListenersParse {
                path: p.clone(),
                source,
            })?
        }
        // Parsed rather than built, so new optional listener fields need no change here.
        None => yaml_serde::from_str("[{name: http, address: '0.0.0.0:8080', protocol: http}]")
            .map_err(Error::DefaultListeners)?,
    };
    let metrics = tokio::net::TcpListener::bind(a.metrics_address)
        .await
        .map_err(|source| Error::MetricsListen {
            addr: a.metrics_address,
            source,
        })?;
    tokio::spawn(weir_operator::metrics::serve(metrics));
    let client = kube::Client::try_default()
        .await
        .map_err(Error::KubeClient)?;
    let token = if let Some(f) = a.admin_token_file {
        TokenSource::File(f)
    } else if let Ok(t) = std::env::var("WEIR_ADMIN_TOKEN") {
        TokenSource::Static(t)
    } else if let Some(name) = a.admin_token_secret {
        TokenSource::Secret {
            api: Box::new(kube::Api::namespaced(client.clone(), &a.namespace)),
            name,
            key: "token".into(),
        }
    } else {
        TokenSource::None
    };
    let identity = a.identity.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "weir-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(address) = a.injector_address {
        let cfg = weir_operator::inject::InjectorConfig {
            address,
            tls_dir: a.injector_tls_dir,
            settings: a.injector_settings,
            audit_interval: a.injector_audit_interval.get(),
            instance: identity.clone(),
        };
        weir_operator::inject::start(client.clone(), cfg, stop_rx.clone())
            .await
            .map_err(|e| weir_operator::error::Error::from(e).counted())?;
    }
    let settings = Settings {
        watch_namespace: a.watch_namespace,
        dataplane_namespace: a.namespace,
        dataplane_selector: a.dataplane_selector,
        listeners,
        snapshot_secret: a.snapshot_secret,
        sink_status_interval: a.sink_status_interval.get(),
        debounce: a.debounce.get(),
        lease: LeaseConfig {
            name: a.lease_name,
            identity,
            duration: a.lease_duration.get(),
            retry: a.lease_retry.get(),
        },
        pusher: PusherConfig {
            admin_port: a.admin_port,
            concurrency: a.push_concurrency,
            verify_interval: a.verify_interval.get(),
            request_timeout: Duration::from_secs(5),
            token,
        },
        gateway: weir_operator::gateway::GatewaySettings {
            enabled: a.gateway_api,
            dataplane_service: a.dataplane_service,
            ..Default::default()
        },
        workloads: weir_operator::workload::WorkloadSettings {
            enabled: a.sidecars,
            admin_port: a.sidecar_admin_port,
            concurrency: a.push_concurrency,
            debounce: a.debounce.get(),
            ..Default::default()
        },
    };
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    controller::run(client, settings, stop_rx).await
}
