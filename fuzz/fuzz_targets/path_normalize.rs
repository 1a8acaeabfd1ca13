//! Path normalisation (dot segments, `%2e`): no panic, and idempotent (normalising twice
//! changes nothing, so a path cannot be normalised into a new dot segment).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_dataplane::proxy::normalize_path;

fuzz_target!(|path: &str| {
    let once = normalize_path(path);
    let twice = normalize_path(&once);
    assert_eq!(once, twice, "normalize_path is not idempotent on {path:?}");
    if path.starts_with('/') {
        assert!(
            once.starts_with('/'),
            "{path:?} lost its leading slash: {once:?}"
        );
    }
});
