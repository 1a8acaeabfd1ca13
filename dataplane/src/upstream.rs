//! Upstream side: one pooled hyper-util client per backend, round robin over its endpoints.

use crate::body::ProxyBody;
use http::uri::Authority;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use weir_config::{Backend, UpstreamProtocol};

pub type HttpClient = Client<HttpConnector, ProxyBody>;

/// A backend as the proxy uses it.
#[derive(Debug)]
pub struct BackendRt {
    pub name: String,
    pub config: Backend,
    pub client: HttpClient,
    pub endpoints: Vec<Authority>,
    next: AtomicUsize,
}

impl BackendRt {
    /// Builds the runtime backend. When `prev` had the same connection settings its client
    /// (and so its pool of warm upstream connections) is reused.
    pub fn new(
        name: &str,
        config: &Backend,
        prev: Option<&BackendRt>,
    ) -> Result<BackendRt, String> {
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let a: Authority = ep
                .address
                .parse()
                .map_err(|e| format!("endpoint {:?}: {e}", ep.address))?;
            endpoints.push(a);
        }
        let client = match prev {
            Some(p) if same_connection_settings(&p.config, config) => p.client.clone(),
            _ => build_client(config),
        };
        Ok(BackendRt {
            name: name.to_string(),
            config: config.clone(),
            client,
            endpoints,
            next: AtomicUsize::new(0),
        })
    }

    /// Next endpoint in round robin order, `None` when there are none.
    pub fn pick_endpoint(&self) -> Option<&Authority> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

fn same_connection_settings(a: &Backend, b: &Backend) -> bool {
    a.protocol == b.protocol && a.timeouts.connect == b.timeouts.connect && a.pool == b.pool
}

fn build_client(config: &Backend) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeouts.connect.get()));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool.idle_timeout.get())
        .pool_max_idle_per_host(config.pool.max_idle_per_endpoint);
    if config.protocol == UpstreamProtocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}
