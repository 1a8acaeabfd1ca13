#!/usr/bin/env bash
# make chart-check: lint, render and validate charts/weir (see scripts/chart_check.py).
# Needs python3 (with venv) and promtool (Debian's prometheus package; installed when missing).
# Python packages live in a venv under ~/.cache/weir/venv, created here with pinned versions.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${WEIR_VENV:-$HOME/.cache/weir/venv}
reqs="helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.3 jsonschema==4.26.0"
stamp="$venv/.weir-reqs"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$reqs" ]; then
  echo "chart-check: setting up $venv ($reqs)" >&2
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian ships venv separately.
    as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $reqs
  echo "$reqs" > "$stamp"
fi
if ! command -v promtool >/dev/null; then
  echo "chart-check: installing promtool (Debian package prometheus)" >&2
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
exec "$venv/bin/python" scripts/chart_check.py "$@"
