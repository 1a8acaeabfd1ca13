#!/usr/bin/env bash
# callgrind.sh BINDIR [h1|h2|h3|both|all|h1close|nginx] — instructions per request of the dataplane, measured as
# BENCHMARKS.md ("Profile findings") describes: the dataplane in BINDIR under
# `valgrind --tool=callgrind --instr-atstart=no`, one worker thread, access log off,
# instrumentation switched on only around 10,000 HTTP/1.1 requests (`-c 64`), 20,000 HTTP/2
# over TLS requests (`-c 16 -m 10`, the streams in flight of the `h2-many` scenario) and 5,000
# HTTP/3 requests (`-c 10 -m 10`) to a `weir-bench serve` backend (`both` = h1 and h3, as
# before; `all` adds h2); prints user-space instructions
# (callgrind's Ir, the dump's `totals:` line) divided by requests. Uses BINDIR/weir-bench for the backend and the load.
# `nginx`: h1 and h2 of the nginx peer instead (make bench's configuration from peers.py, one
# worker, the worker in the master process), with BINDIR's weir-bench as backend and load.
# `h1close`: HTTP/1.1 with a new connection per request (`wrk -c 8 -H 'Connection: close'`, 5 s;
# requests as wrk counts them): the accept and per-connection costs (needs wrk).
# CALLGRIND_KEEP=DIR (or CG_KEEP=DIR) keeps each dump as DIR/h1.out, DIR/h2.out, DIR/h3.out (for callgrind_annotate).
set -euo pipefail
bins=$(cd "$1" && pwd)
which=${2:-both}
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=$(port); H=$(port); S=$(port); A=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
cat > "$d/weir.json" <<JSON
{"version": "cg", "listeners": [
  {"name": "http", "address": "127.0.0.1:$H", "protocol": "http"},
  {"name": "https", "address": "127.0.0.1:$S", "protocol": "https",
   "tls": {"certificates": [{"certFile": "$d/cert.pem", "keyFile": "$d/key.pem"}]}}],
 "backends": {"b": {"endpoints": ["127.0.0.1:$B"]}},
 "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "b"}]}]}]}
JSON
"$bins/weir-bench" serve --listen "127.0.0.1:$B" --threads 1 >"$d/backend.log" 2>&1 &
if [ "$which" = nginx ]; then
  # The peer, measured the same way: `make bench`'s nginx configuration (bench/scripts/peers.py),
  # with the worker in the master's process so that callgrind_control reaches it.
  (cd "$(dirname "$0")" && python3 -c '
import sys; from pathlib import Path; import peers
d = Path(sys.argv[1]); spec = peers.nginx(d, peers.Ports(int(sys.argv[2]), int(sys.argv[3])),
    int(sys.argv[4]), d / "cert.pem", d / "key.pem")
conf = d / "nginx.conf"
conf.write_text(conf.read_text().replace("master_process on;", "master_process off;"))
print(" ".join(spec.cmd))' "$d" "$H" "$S" "$B") >"$d/cmd"
  # shellcheck disable=SC2046
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg.%p" \
    $(cat "$d/cmd") >"$d/nginx.log" 2>&1 &
else
  RUST_LOG=warn WEIR_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$d/cg.%p" "$bins/weir-dataplane" --config "$d/weir.json" \
    --admin-address "127.0.0.1:$A" --access-log off >"$d/weir.log" 2>&1 &
fi
vg=$!
for _ in $(seq 1 300); do
  "$bins/weir-bench" -n 1 "http://127.0.0.1:$H/" >/dev/null 2>&1 && break; sleep 0.2
done
measure() { # name, requests (0: wrk counts them), load args...
  local name=$1 n=$2; shift 2
  if [ "$n" = 0 ]; then
    wrk "$@" -d 1s >/dev/null 2>&1 # warm-up (the upstream pool)
  else
    "$bins/weir-bench" "$@" -n 200 >/dev/null 2>&1 # warm-up (connections, pool)
  fi
  callgrind_control -z "$vg" >/dev/null 2>&1
  callgrind_control -i on "$vg" >/dev/null 2>&1
  if [ "$n" = 0 ]; then
    wrk "$@" -d 5s >"$d/load-$name.txt" 2>&1
    n=$(awk '/requests in/ {print $1}' "$d/load-$name.txt")
  else
    "$bins/weir-bench" "$@" -n "$n" >"$d/load-$name.txt" 2>&1
  fi
  callgrind_control -i off "$vg" >/dev/null 2>&1
  callgrind_control -d "$name" "$vg" >/dev/null 2>&1
  local f="" ir
  for _ in $(seq 1 100); do
    f=$(ls "$d"/cg.*.* 2>/dev/null | head -1) && [ -n "$f" ] && break; sleep 0.1
  done
  ir=$(awk '/^totals:/ {print $2; exit}' "$f")
  keep=${CALLGRIND_KEEP:-${CG_KEEP:-}}
  if [ -n "$keep" ]; then mkdir -p "$keep" && cp "$f" "$keep/$name.out"; fi
  rm -f "$d"/cg.*
  echo "$name: $ir instructions / $n requests = $((ir / n)) per request"
}
if [ "$which" = h1 ] || [ "$which" = both ] || [ "$which" = all ] || [ "$which" = nginx ]; then
  measure h1 10000 -c 64 "http://127.0.0.1:$H/"
fi
if [ "$which" = h2 ] || [ "$which" = all ] || [ "$which" = nginx ]; then
  measure h2 20000 -p h2 --insecure -c 16 -m 10 "https://127.0.0.1:$S/"
fi
if [ "$which" = h1close ]; then
  measure h1close 0 -t1 -c8 -H 'Connection: close' "http://127.0.0.1:$H/"
fi
if [ "$which" = h3 ] || [ "$which" = both ] || [ "$which" = all ]; then
  measure h3 5000 -p h3 --insecure -c 10 -m 10 "https://127.0.0.1:$S/"
fi
