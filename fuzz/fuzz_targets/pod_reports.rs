//! What the operator reads from dataplane pods and the Secret it keeps: `GET /backends` and
//! `GET /sinks` documents, and the last-known-good snapshot Secret (JSON the dataplane loads
//! with `--config`). No panic; a snapshot that parses and validates is pushed per pod
//! (`$(POD_IP)` substituted) as JSON the dataplane parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_operator::push::{body_for, parse_backends_report, parse_sinks_report};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some((version, report)) = parse_backends_report(&v) {
            assert_eq!(Some(version.as_str()), v["version"].as_str());
            assert!(report.len() <= v["backends"].as_object().map_or(0, |o| o.len()));
        }
        let _ = parse_sinks_report(&v);
    }
    if let Ok(snap) = weir_config::parse_json(data) {
        if snap.validate().is_ok() {
            let body = body_for(&snap, "10.1.2.3");
            let pushed = weir_config::parse_json(&body).expect("the pushed body parses");
            assert_eq!(pushed.routes, snap.routes);
        }
    }
});
