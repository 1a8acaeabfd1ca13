#!/usr/bin/env bash
# make cluster: the chart's own pods run by scripts/podrunner.py on the e2e kube-apiserver, and
# scenarios through the dataplane Service (scripts/cluster.py). Needs root (network namespaces,
# mount namespaces, nftables). Reuses scripts/e2e.sh's kube-apiserver (~/.cache/weir, `make e2e`
# fetches it) and chart-check.sh's venv (helm_python). Builds the release binaries the images'
# entrypoints map to.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
. scripts/kube-env.sh
[ "$(id -u)" -eq 0 ] || { echo "cluster: needs root (network and mount namespaces, nftables)" >&2; exit 1; }
for t in etcd openssl kubectl curl gtlsclient ip nft setpriv unshare nsenter chroot; do
  command -v $t >/dev/null || { echo "cluster: needs $t (scripts/ensure-deps.sh and make e2e install it)" >&2; exit 1; }
done
${CARGO:-cargo} build -q --release -p weir-operator -p weir-dataplane -p weir-bench --bins
export WEIR_E2E_APISERVER=$apiserver WEIR_E2E_ETCD=$(command -v etcd) WEIR_CLUSTER_BIN_DIR=$CARGO_TARGET_DIR/release
# exec: the runner gets Ctrl-C and `timeout`'s SIGTERM itself and cleans up.
exec timeout --kill-after=60 900 "$venv/bin/python" -u scripts/cluster.py
