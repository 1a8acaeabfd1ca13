#!/usr/bin/env bash
# make e2e: a real kube-apiserver (v1.20.2) + etcd on loopback, the operator and two dataplanes.
# Finds kube-apiserver in ~/.cache/weir (checked by sha256), else unpacks ../shared/bin's copy,
# else builds it from Debian's source package (scripts/build-kube-apiserver, 5-10 min, once).
# etcd comes from Debian's etcd-server package. The test itself (operator/tests/e2e.rs) starts
# and stops every process in a temp dir; it is bounded to a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
CARGO=${CARGO:-cargo}
cache=$HOME/.cache/weir
want=6b90f991acc27bb87324c84692309aa188ceb649aa897b34240b8b57b42b63c4
apiserver=$cache/kube-apiserver
mkdir -p "$cache"

sha_ok() { [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]; }
# A build from source is not bit-identical to ../shared's (build date), so a cached binary is
# accepted when it reports the right version.
version_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q '^Kubernetes v1\.20\.'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "e2e: need root for: $*" >&2; exit 1; fi
}

if ! version_ok "$apiserver"; then
  shared=../shared/bin/kube-apiserver-v1.20.2-linux-amd64.xz
  if [ -f "$shared" ]; then
    echo "e2e: unpacking kube-apiserver from $shared" >&2
    xz -dc "$shared" > "$apiserver.tmp" && chmod +x "$apiserver.tmp" && mv "$apiserver.tmp" "$apiserver"
    sha_ok "$apiserver" || { echo "e2e: $apiserver has an unexpected sha256" >&2; exit 1; }
  else
    echo "e2e: building kube-apiserver v1.20.2 from Debian's source package (5-10 min, once)" >&2
    as_root scripts/build-kube-apiserver "$cache"
  fi
  version_ok "$apiserver" || { echo "e2e: $apiserver does not report Kubernetes v1.20" >&2; exit 1; }
fi

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "e2e: installing ${need[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

$CARGO build -q -p weir-dataplane --bins
$CARGO build -q -p weir-operator --bins
# Compile the test outside the timeout below: on a loaded machine the build alone can take minutes.
$CARGO test -q -p weir-operator --test e2e --test gateway_e2e --no-run
export RUST_BACKTRACE=${WEIR_E2E_BACKTRACE:-0}
export WEIR_E2E_APISERVER=$apiserver WEIR_E2E_ETCD=$(command -v etcd) WEIR_E2E_BIN_DIR=$CARGO_TARGET_DIR/debug
timeout --kill-after=10 600 $CARGO test -q -p weir-operator --test e2e -- --ignored --nocapture --test-threads=1
# The Gateway API scenarios and ported conformance tests (operator/tests/gateway_e2e.rs); they
# use ../shared/gateway-api (or WEIR_GATEWAY_API_DIR) and skip, saying why, without it.
exec timeout --kill-after=10 600 $CARGO test -q -p weir-operator --test gateway_e2e -- --ignored --nocapture --test-threads=1
