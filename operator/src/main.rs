//! Weir operator. The reconcile/push/status machinery lands with the operator issue; for now the
//! binary only reports its version so packaging and the workspace layout are in place.

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("--version") | Some("-V") | Some("version") => {
            println!("weir-operator {}", env!("CARGO_PKG_VERSION"));
        }
        Some(other) => {
            eprintln!(
                "weir-operator {}: unknown argument {other:?}; only --version is implemented yet",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
