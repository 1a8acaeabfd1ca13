//! `Snapshot -> Runtime`: the compiled tables one config version serves with.

use crate::filters::{HeaderOps, RuleRt};
use crate::router::Router;
use crate::upstream::BackendRt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use weir_config::{ConfigError, Errors, ListenerProtocol, Snapshot};

/// One listener's compiled settings.
#[derive(Debug, Clone)]
pub struct ListenerRt {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Everything one config version needs to serve; swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub version: String,
    pub router: Router,
    pub backends: HashMap<String, Arc<BackendRt>>,
    pub listeners: Vec<ListenerRt>,
}

/// Validates and compiles a snapshot. `prev` lets unchanged backends keep their warm pools.
/// Reads certificate files; touches nothing else outside the process.
pub fn compile(snapshot: Snapshot, prev: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    snapshot.validate()?;
    let mut errs = Errors::default();

    let mut listeners = Vec::new();
    for (i, l) in snapshot.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Ok(address) = l.address.parse() else {
            continue; // validate() reported it
        };
        let tls = match l.protocol {
            ListenerProtocol::Http => None,
            ListenerProtocol::Https => {
                crate::tls::server_config(l.tls.as_ref(), &path, crate::tls::TCP_ALPN, &mut errs)
            }
        };
        listeners.push(ListenerRt {
            name: l.name.clone(),
            address,
            protocol: l.protocol,
            tls,
        });
    }

    let mut backends = HashMap::new();
    for (name, b) in &snapshot.backends {
        let prev_b = prev.and_then(|p| p.backends.get(name)).map(|b| b.as_ref());
        match BackendRt::new(name, b, prev_b) {
            Ok(rt) => {
                backends.insert(name.clone(), Arc::new(rt));
            }
            Err(e) => errs.push(format!("backends[{name:?}].endpoints"), e),
        }
    }

    let mut rules = Vec::new();
    for route in &snapshot.routes {
        let route_name: Arc<str> = route.name.as_str().into();
        let mut per_route = Vec::new();
        for (ui, rule) in route.rules.iter().enumerate() {
            let mut cum = 0u64;
            let mut targets = Vec::new();
            for br in &rule.backend_refs {
                if br.weight == 0 {
                    continue;
                }
                if let Some(b) = backends.get(&br.name) {
                    cum += u64::from(br.weight);
                    targets.push((b.clone(), cum));
                }
            }
            per_route.push(Arc::new(RuleRt {
                route: route_name.clone(),
                rule_index: ui,
                backends: targets,
                total_weight: cum,
                request_headers: HeaderOps::compile(&rule.filters.request_headers),
                response_headers: HeaderOps::compile(&rule.filters.response_headers),
                path: rule.filters.path.clone(),
                timeout: rule.timeout.map(|t| t.get()),
            }));
        }
        rules.push(per_route);
    }
    let router = match Router::build(&snapshot.routes, &rules) {
        Ok(r) => r,
        Err(e) => {
            errs.0.extend(e.errors);
            Router::default()
        }
    };
    errs.into_result()?;
    let version = snapshot.effective_version();
    Ok(Runtime {
        snapshot: Arc::new(snapshot),
        version,
        router,
        backends,
        listeners,
    })
}
