//! The config contract: YAML and JSON parsing, then `validate()`.
//!
//! Properties: no panic, bounded allocation (libFuzzer's limits), and a snapshot that
//! validates survives the JSON round trip the operator → dataplane path takes (the operator
//! writes JSON, the dataplane parses it) unchanged and still valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_config::Snapshot;

fn check(s: Snapshot) {
    if s.validate().is_err() {
        return;
    }
    let json = serde_json::to_vec(&s).expect("a valid snapshot serialises to JSON");
    let back = weir_config::parse_json(&json).expect("the JSON of a valid snapshot parses");
    assert_eq!(back, s, "JSON round trip changed the snapshot");
    back.validate()
        .expect("the round-tripped snapshot still validates");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = weir_config::parse_yaml(text) {
            check(s);
        }
    }
    if let Ok(s) = weir_config::parse_json(data) {
        check(s);
    }
});
