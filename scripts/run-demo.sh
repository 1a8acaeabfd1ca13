#!/usr/bin/env bash
# `make run`: two demo backends and the dataplane on the embedded example, in the foreground.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
config="${WEIR_EXAMPLE:-examples/standalone.yaml}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

"$bin/weir-echo" --listen 127.0.0.1:9101 --name demo-a & pids+=($!)
"$bin/weir-echo" --listen 127.0.0.1:9102 --name demo-b & pids+=($!)

cat >&2 <<MSG
weir: demo backends on 127.0.0.1:9101 (demo-a) and 127.0.0.1:9102 (demo-b)
weir: try   curl -i http://127.0.0.1:8080/api/hello
            curl -ik --http2 https://127.0.0.1:8443/api/hello
            curl -s http://127.0.0.1:9901/config
MSG
"$bin/weir-dataplane" --config "$config" &
dp=$!
pids+=($dp)
wait "$dp"
