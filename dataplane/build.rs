//! Link options for the `weir-dataplane` binary that shrink what a started process maps
//! (issue #18, idle RSS; measured in BENCHMARKS.md, "Idle memory: where the 15 MiB go").
//!
//! Idle RSS is mostly file-backed pages of this binary: on the 6.18 kernel the bench runs on, a
//! fault maps the whole large page-cache folio around it, so ~85% of `.text` is resident after
//! start-up whatever start-up actually runs. What is mapped therefore shrinks with what the
//! binary loads, not with which code runs first:
//!
//! - `-z pack-relative-relocs` (DT_RELR): the ~29,000 relative relocations of a PIE binary take
//!   ~8 KiB instead of ~690 KiB of `.rela.dyn`, which the dynamic loader reads in full at every
//!   start (measured: the first read-only mapping's resident pages 1,648 → 928 KiB). ASLR stays.
//!   Needs glibc ≥ 2.36 at run time (Debian 12; the container image is a static musl build and
//!   does not get these flags).
//! - `--icf=all`: lld folds byte-identical functions (monomorphized generics that compile to
//!   the same code): `.text` 12.12 → 11.78 MB. Rust gives no guarantee that distinct functions
//!   have distinct addresses, so folding is sound for Rust code.
//!
//! Both are link-time only: no crate is compiled differently, so instructions per request and
//! build time do not change. Only for the GNU target, where rustc links with its bundled lld by
//! default (rustc ≥ 1.90); the musl image build links with the system linker.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        for arg in ["-Wl,-z,pack-relative-relocs", "-Wl,--icf=all"] {
            println!("cargo:rustc-link-arg-bin=weir-dataplane={arg}");
        }
    }
}
