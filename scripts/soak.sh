#!/usr/bin/env bash
# Soak run (`make soak`, not in CI): see scripts/soak.py. SOAK_MINUTES (default 30).
# Needs the release binaries (`make release`); output under $CARGO_TARGET_DIR/soak/<UTC time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
BIN="${SOAK_BIN:-$CARGO_TARGET_DIR/release}"
for b in weir-dataplane weir-echo weir-bench; do
  [ -x "$BIN/$b" ] || { echo "soak: $BIN/$b missing; run make release" >&2; exit 1; }
done
OUT="$CARGO_TARGET_DIR/soak/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
echo "soak: ${SOAK_MINUTES:-30} min, output in $OUT" >&2
# Niced: the machine is shared, and the soak is about leaks, not speed.
exec nice -n 10 python3 scripts/soak.py "$BIN" "$OUT"
