#!/usr/bin/env bash
# syscalls.sh BINDIR [h1|h2] — syscalls of the dataplane in BINDIR (one worker thread, access log
# off) during 20,000 requests to a weir-bench backend, counted with `strace -c -f` (BENCHMARKS.md
# "Session of 6 Dec, evening"): h1 (default) HTTP/1.1 keep-alive, weir-bench -c 64; h2 HTTP/2
# over TLS, -c 16 -m 10 (as callgrind.sh's h2). Divide the counts by 20,000.
set -euo pipefail
command -v strace >/dev/null || { echo "syscalls.sh: needs strace (apt-get install strace)" >&2; exit 1; }
bins=$(cd "$1" && pwd)
which=${2:-h1}
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=$(port); H=$(port); S=$(port); A=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
cat > "$d/weir.json" <<JSON
{"version": "cg", "listeners": [{"name": "http", "address": "127.0.0.1:$H", "protocol": "http"},
  {"name": "https", "address": "127.0.0.1:$S", "protocol": "https",
   "tls": {"certificates": [{"certFile": "$d/cert.pem", "keyFile": "$d/key.pem"}]}}],
 "backends": {"b": {"endpoints": ["127.0.0.1:$B"]}},
 "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "b"}]}]}]}
JSON
"$bins/weir-bench" serve --listen "127.0.0.1:$B" --threads 1 >"$d/backend.log" 2>&1 &
RUST_LOG=warn WEIR_WORKER_THREADS=1 "$bins/weir-dataplane" --config "$d/weir.json" \
  --admin-address "127.0.0.1:$A" --access-log off >"$d/weir.log" 2>&1 &
dp=$!
for _ in $(seq 1 300); do "$bins/weir-bench" -n 1 "http://127.0.0.1:$H/" >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$which" = h2 ]; then
  load=(-p h2 --insecure -c 16 -m 10 "https://127.0.0.1:$S/")
else
  load=(-c 64 "http://127.0.0.1:$H/")
fi
"$bins/weir-bench" "${load[@]}" -n 500 >/dev/null 2>&1
strace -c -f -p $dp -o "$d/st.txt" & st=$!
sleep 1
"$bins/weir-bench" "${load[@]}" -n 20000 >/dev/null 2>&1
kill -INT $st; wait $st 2>/dev/null || true
awk 'NR<=2 || /recvfrom|sendto|writev|read|write|epoll|total/' "$d/st.txt"
