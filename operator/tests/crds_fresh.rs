//! Fails when `crds/` differs from what the CRD types generate (run `make crds`).

#[test]
fn crds_directory_is_up_to_date() {
    // The directory cargo runs the test from, not the one it was compiled in: a shared
    // target dir (CI's cache) may hold a build made from another checkout.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let dir = std::path::Path::new(&manifest_dir).join("../crds");
    let mut stale = Vec::new();
    for (name, yaml) in weir_operator::crd::render() {
        let path = dir.join(&name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD files (run `make crds`): {stale:?}"
    );
}
