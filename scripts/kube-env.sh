# Sourced by scripts/chart-dryrun.sh and scripts/cluster.sh: chart-check.sh's venv (helm_python)
# and e2e.sh's kube-apiserver, both checked; sets $venv and $apiserver.
venv=${WEIR_VENV:-$HOME/.cache/weir/venv}
[ -x "$venv/bin/python" ] || scripts/chart-check.sh >/dev/null
apiserver=$HOME/.cache/weir/kube-apiserver
"$apiserver" --version 2>/dev/null | grep -q '^Kubernetes v1\.20\.' || { echo "$0: run make e2e once (it fetches kube-apiserver)" >&2; exit 1; }
