#!/usr/bin/env bash
# pgo.sh [OUTDIR]: builds weir-dataplane with profile-guided optimisation (the `dist` profile,
# then LLVM's branch and code-layout decisions from a profile of real traffic) and copies it to
# OUTDIR (default $CARGO_TARGET_DIR/dist-pgo). Why and what it gains: BENCHMARKS.md, "Issue #18,
# ninth pass". Steps:
#   1. weir-bench (`dist`): the backend and the load for the training run (and the plain
#      `dist` weir-dataplane beside it, as bench.sh builds them).
#   2. weir-dataplane with -Cprofile-generate, in its own target dir ($CARGO_TARGET_DIR/../pgo-gen:
#      other RUSTFLAGS would rebuild the shared dir's artifacts).
#   3. Training (~40 s): that binary proxies HTTP/1.1 (keep-alive, and a connection per
#      request), HTTP/2 over TLS and HTTP/3, GETs and POSTs, to a `weir-bench serve` backend
#      on loopback, across a config with several routes; then SIGTERM (the profile is written
#      at exit).
#   4. llvm-profdata (the version of rustc's own LLVM, `llvm-NN` from apt) merges the profile.
#   5. weir-dataplane with -Cprofile-use, in $CARGO_TARGET_DIR/../pgo-use.
# PGO_TARGET=TRIPLE builds the dataplane for that target (the Dockerfile: musl; the training
# runs it on the build host). Needs wrk, openssl, curl and python3 (apt installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
CARGO=${CARGO:-cargo}
out=${1:-$CARGO_TARGET_DIR/dist-pgo}
root=$(dirname "$CARGO_TARGET_DIR")
gen_dir=${PGO_GEN_TARGET:-$root/pgo-gen}
use_dir=${PGO_USE_TARGET:-$root/pgo-use}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "pgo: need root for: $*" >&2; exit 1; fi
}

# llvm-profdata must read the raw profile format of rustc's LLVM: rustup's `llvm-tools`
# component if it is installed (the Dockerfiles add it), else Debian's of the same major version.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || profdata=$(command -v "llvm-profdata-$llvm_major" || true)
need=()
[ -n "$profdata" ] || need+=("llvm-$llvm_major")
for pair in wrk:wrk openssl:openssl curl:curl python3:python3; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "pgo: installing ${need[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  profdata=$(command -v "llvm-profdata-$llvm_major" || true)
fi
if [ -z "$profdata" ]; then
  echo "pgo: no llvm-profdata-$llvm_major (package llvm-$llvm_major) for rustc's LLVM $llvm_major" >&2
  exit 1
fi

d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT

echo "pgo: [1/5] weir-bench (dist)" >&2
# The same package set as bench.sh builds (other sets unify features differently: a rebuild).
$CARGO build -q --locked --profile dist -p weir-dataplane -p weir-bench --bins
bench="$CARGO_TARGET_DIR/dist/weir-bench"

target_args=() sub=dist
if [ -n "${PGO_TARGET:-}" ]; then target_args=(--target "$PGO_TARGET") sub=$PGO_TARGET/dist; fi
echo "pgo: [2/5] instrumented weir-dataplane ($gen_dir)" >&2
CARGO_TARGET_DIR=$gen_dir RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$d/raw" \
  $CARGO build -q --locked --profile dist "${target_args[@]}" -p weir-dataplane --bin weir-dataplane

echo "pgo: [3/5] training run" >&2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=$(port); H=$(port); S=$(port); A=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
# Routes a real config has: by host, by path prefix, by header; the catch-all last.
cat > "$d/weir.json" <<JSON
{"version": "pgo", "listeners": [
  {"name": "http", "address": "127.0.0.1:$H", "protocol": "http"},
  {"name": "https", "address": "127.0.0.1:$S", "protocol": "https",
   "tls": {"certificates": [{"certFile": "$d/cert.pem", "keyFile": "$d/key.pem"}]}}],
 "backends": {"b": {"endpoints": ["127.0.0.1:$B"]}, "c": {"endpoints": ["127.0.0.1:$B"]}},
 "routes": [
  {"name": "host", "hostnames": ["api.example.com"], "rules": [{"backendRefs": [{"name": "c"}]}]},
  {"name": "paths", "rules": [
    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
     "filters": {"path": {"stripPrefix": "/api"}, "responseHeaders": {"set": [{"name": "x-route", "value": "api"}]}},
     "backendRefs": [{"name": "c"}]},
    {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": [{"name": "c"}]},
    {"backendRefs": [{"name": "b"}]}]}]}
JSON
"$bench" serve --listen "127.0.0.1:$B" --threads 1 >"$d/backend.log" 2>&1 &
LLVM_PROFILE_FILE="$d/raw/weir-%p-%m.profraw" RUST_LOG=warn \
  "$gen_dir/$sub/weir-dataplane" --config "$d/weir.json" --admin-address "127.0.0.1:$A" \
  >"$d/weir.log" 2>&1 &
dp=$!
for _ in $(seq 1 300); do
  "$bench" -n 1 "http://127.0.0.1:$H/" >/dev/null 2>&1 && break; sleep 0.2
done
"$bench" -n 1 "http://127.0.0.1:$H/" >/dev/null || { cat "$d/weir.log" >&2; exit 1; }
load() { "$bench" "$@" >>"$d/load.log" 2>&1 || { echo "pgo: load $* failed" >&2; tail "$d/load.log" >&2; exit 1; }; }
load -c 64 -n 100000 "http://127.0.0.1:$H/"
load -c 64 -n 50000 "http://127.0.0.1:$H/api/items?page=2"
load -p h2 --insecure -c 16 -m 10 -n 100000 "https://127.0.0.1:$S/"
load -p h3 --insecure -c 10 -m 10 -n 30000 "https://127.0.0.1:$S/"
cat > "$d/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 2048)
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-canary"] = "yes"
LUA
wrk -t1 -c64 -d 5s -s "$d/post.lua" "http://127.0.0.1:$H/" >>"$d/load.log" 2>&1
wrk -t1 -c8 -d 3s -H 'Connection: close' -H 'Host: api.example.com' "http://127.0.0.1:$H/" >>"$d/load.log" 2>&1
curl -s -o /dev/null "http://127.0.0.1:$A/metrics"
kill -TERM "$dp"
wait "$dp" || true
ls "$d"/raw/*.profraw >/dev/null 2>&1 || { echo "pgo: the training run wrote no profile" >&2; cat "$d/weir.log" >&2; exit 1; }

echo "pgo: [4/5] $profdata merge" >&2
"$profdata" merge -o "$d/weir.profdata" "$d"/raw/*.profraw

echo "pgo: [5/5] optimised weir-dataplane ($use_dir)" >&2
# -Wbackend-plugin: LLVM warns for every function the profile does not cover (dependencies'
# code the training never ran); expected, not a problem.
CARGO_TARGET_DIR=$use_dir RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$d/weir.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
  $CARGO build -q --locked --profile dist "${target_args[@]}" -p weir-dataplane --bin weir-dataplane
mkdir -p "$out"
cp "$use_dir/$sub/weir-dataplane" "$out/weir-dataplane"
cp "$d/weir.profdata" "$out/weir.profdata"
echo "pgo: $out/weir-dataplane" >&2
