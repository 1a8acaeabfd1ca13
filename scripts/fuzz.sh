#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ (see fuzz/README.md), each for FUZZ_SECONDS.
#   make fuzz         FUZZ_SECONDS=300 by default: a real run, new inputs kept for next time
#   make fuzz-smoke   FUZZ_SECONDS=5: the CI pass (.ci/run)
# FUZZ_TARGETS="router kairos_split_merge" picks targets (default: all).
#
# Works with only the stable toolchain: cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 lets stable accept. The fuzz build, the
# growing corpus and any crash artifacts live under $CARGO_TARGET_DIR, never in the clone;
# the seed corpus in fuzz/seeds/ is only read.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
FUZZ_SECONDS="${FUZZ_SECONDS:-300}"
CARGO_FUZZ_VERSION=0.13.2
WORK="$CARGO_TARGET_DIR/fuzz-work"
BUILD_DIR="$CARGO_TARGET_DIR/fuzz"
# Allocation bounds: one input must not take more than this (libFuzzer reports it as a crash).
RSS_LIMIT_MB="${FUZZ_RSS_LIMIT_MB:-2048}"
MALLOC_LIMIT_MB="${FUZZ_MALLOC_LIMIT_MB:-512}"
# One input running longer than this is a hang.
UNIT_TIMEOUT="${FUZZ_UNIT_TIMEOUT:-10}"
# cargo fuzz build/run flags. `make fuzz` uses cargo-fuzz's defaults (release, AddressSanitizer).
# The CI smoke pass (`make fuzz-smoke`) builds without a sanitizer in the dev profile: a cold
# ASan release build of the fuzz workspace (kube and tokio included) took most of an hour on a
# loaded 2-core machine, and a few seconds per target only ask "does any seed or early input
# panic, hang or blow the memory limits", which needs no ASan in Rust's safe code.
read -r -a BUILD_FLAGS <<< "${FUZZ_BUILD_FLAGS:-}"

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1

fuzz() { cargo fuzz "$1" --fuzz-dir fuzz ${BUILD_FLAGS[@]+"${BUILD_FLAGS[@]}"} "${@:2}"; }

# The fuzz crate is outside the main workspace, so `cargo fmt --all` does not see it.
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check

targets="${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)}"
echo "fuzz: building $(echo $targets | wc -w) targets into $BUILD_DIR" >&2
if [ -z "${FUZZ_TARGETS:-}" ]; then
  fuzz build --target-dir "$BUILD_DIR"
else
  for t in $targets; do fuzz build --target-dir "$BUILD_DIR" "$t"; done
fi

failed=()
for t in $targets; do
  corpus="$WORK/corpus/$t"
  artifacts="$WORK/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzz: $t for ${FUZZ_SECONDS}s (corpus $corpus)" >&2
  # New inputs go to the first corpus dir only; fuzz/seeds/$t is read, never written.
  if fuzz run --target-dir "$BUILD_DIR" "$t" "$corpus" "fuzz/seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$RSS_LIMIT_MB" \
    -malloc_limit_mb="$MALLOC_LIMIT_MB" -timeout="$UNIT_TIMEOUT" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 \
    >"$WORK/$t.log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$WORK/$t.log" | tr '\n' ' ' >&2 || true
    echo >&2
  else
    echo "fuzz: $t FAILED; last lines of $WORK/$t.log:" >&2
    tail -n 40 "$WORK/$t.log" >&2
    ls "$artifacts" >&2 || true
    failed+=("$t")
  fi
done
# cargo-fuzz creates empty fuzz/artifacts/<target> dirs even with -artifact_prefix.
find fuzz/artifacts -type d -empty -delete 2>/dev/null || true
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failing targets: ${failed[*]} (artifacts under $WORK/artifacts)" >&2
  exit 1
fi
echo "fuzz: all targets passed" >&2
