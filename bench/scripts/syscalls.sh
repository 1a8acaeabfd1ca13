#!/usr/bin/env bash
# syscalls.sh BINDIR — syscalls of the dataplane in BINDIR (one worker thread, access log off) during
# 20,000 HTTP/1.1 requests (weir-bench -c 64, keep-alive) to a weir-bench backend, counted with
# `strace -c -f` (BENCHMARKS.md "Session of 6 Dec, evening"). Divide the counts by 20,000.
set -euo pipefail
command -v strace >/dev/null || { echo "syscalls.sh: needs strace (apt-get install strace)" >&2; exit 1; }
bins=$(cd "$1" && pwd)
d=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
B=$(port); H=$(port); A=$(port)
cat > "$d/weir.json" <<JSON
{"version": "cg", "listeners": [{"name": "http", "address": "127.0.0.1:$H", "protocol": "http"}],
 "backends": {"b": {"endpoints": ["127.0.0.1:$B"]}},
 "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "b"}]}]}]}
JSON
"$bins/weir-bench" serve --listen "127.0.0.1:$B" --threads 1 >"$d/backend.log" 2>&1 &
RUST_LOG=warn WEIR_WORKER_THREADS=1 "$bins/weir-dataplane" --config "$d/weir.json" \
  --admin-address "127.0.0.1:$A" --access-log off >"$d/weir.log" 2>&1 &
dp=$!
for _ in $(seq 1 300); do "$bins/weir-bench" -n 1 "http://127.0.0.1:$H/" >/dev/null 2>&1 && break; sleep 0.2; done
"$bins/weir-bench" -c 64 -n 500 "http://127.0.0.1:$H/" >/dev/null 2>&1
strace -c -f -p $dp -o "$d/st.txt" & st=$!
sleep 1
"$bins/weir-bench" -c 64 -n 20000 "http://127.0.0.1:$H/" >/dev/null 2>&1
kill -INT $st; wait $st 2>/dev/null || true
awk 'NR<=2 || /recvfrom|sendto|writev|read|write|epoll|total/' "$d/st.txt"
