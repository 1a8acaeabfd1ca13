#!/usr/bin/env bash
# make chart-dryrun: the chart against the e2e harness's real kube-apiserver (scripts/chart_dryrun.py).
# Reuses scripts/e2e.sh's kube-apiserver (~/.cache/weir/kube-apiserver, run `make e2e` once) and
# chart-check.sh's venv; needs etcd, openssl and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
. scripts/kube-env.sh
for t in etcd openssl; do command -v $t >/dev/null || { echo "chart-dryrun: needs $t (make e2e installs it)" >&2; exit 1; }; done
if ! command -v kubectl >/dev/null; then
  echo "chart-dryrun: SKIPPED, kubectl is not installed (Debian package kubectl from the Kubernetes apt repository)" >&2
  exit 0
fi
${CARGO:-cargo} build -q -p weir-operator -p weir-dataplane -p weir-bench --bins
export WEIR_E2E_APISERVER=$apiserver WEIR_E2E_ETCD=$(command -v etcd) WEIR_E2E_BIN_DIR=$CARGO_TARGET_DIR/debug
exec timeout --kill-after=10 300 "$venv/bin/python" scripts/chart_dryrun.py
