//! Fails when `crds/` differs from what the CRD types generate (run `make crds`).

#[test]
fn crds_directory_is_up_to_date() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
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
