#!/usr/bin/env python3
"""One dataplane, one big snapshot, single-route `PATCH /config` deltas: the cost of a reload.

The pod side of `operator-scale` (issue #18 part 4) without the API server and operator: a
`PUT /config` of N routes (the shape the operator sends: one host, one response-header filter,
one backend each), then K deltas that each change one route. Prints the dataplane's own
`compile_ms` (validate + compile, its `config applied` log line) per delta, p50 and max, the
`PATCH` round trip seen by the client, the dataplane's CPU time per `PATCH` (from /proc: the
figure to compare on a loaded machine), and its RSS.

For a profile, run it with `--wrap "perf record -e cpu-clock -g -o FILE --"` or
`--wrap "valgrind --tool=callgrind --callgrind-out-file=FILE"` (slow: use fewer routes).

    python3 bench/scripts/reload_profile.py --bin $CARGO_TARGET_DIR/release/weir-dataplane \
        --routes 10000 --changes 20
"""

import argparse
import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TOKEN = "reload-profile"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route(i: int, value: str) -> dict:
    return {"name": f"default/r{i}", "hostnames": [f"r{i}.bench.test"],
            "rules": [{"filters": {"responseHeaders": {"set": [{"name": "x-bench", "value": value}]}},
                       "backendRefs": [{"name": "default/bench"}]}]}


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        c.request(method, path, body=data, headers={"authorization": f"Bearer {TOKEN}",
                                                    "content-type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (with `--wrap`, of the wrapper)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="weir-dataplane binary")
    ap.add_argument("--routes", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--wrap", default="", help="command prefix (perf record ..., valgrind ...)")
    a = ap.parse_args()

    admin, listen = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="reload-profile-", suffix=".log", delete=False)
    env = dict(os.environ, WEIR_ADMIN_TOKEN=TOKEN,
               RUST_LOG="warn,weir_dataplane::server=info,weir_dataplane::admin=debug")
    cmd = [*shlex.split(a.wrap), a.bin, "--admin-address", f"127.0.0.1:{admin}", "--access-log", "off"]
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(3000):
            try:
                socket.create_connection(("127.0.0.1", admin), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        snap = {"version": "v0",
                "listeners": [{"name": "http", "address": f"127.0.0.1:{listen}", "protocol": "http"}],
                "backends": {"default/bench": {"endpoints": [{"address": "127.0.0.1:9"}]}},
                "routes": [route(i, "0") for i in range(a.routes)]}
        t = time.perf_counter()
        s, body = call(admin, "PUT", "/config", snap)
        put_s = time.perf_counter() - t
        if s != 200:
            raise SystemExit(f"PUT /config: {s} {body[:500]}")
        at = Path(log.name).stat().st_size
        cpu0 = cpu_s(p.pid)
        rtt = []
        for k in range(a.changes):
            i = (k * 7919) % a.routes
            delta = {"baseVersion": f"v{k}", "version": f"v{k + 1}",
                     "routes": [{"after": f"default/r{i - 1}" if i else None,
                                 "route": route(i, f"v{k + 1}")}]}
            t = time.perf_counter()
            s, body = call(admin, "PATCH", "/config", delta)
            rtt.append((time.perf_counter() - t) * 1e3)
            if s != 200:
                raise SystemExit(f"PATCH /config: {s} {body[:500]}")
        cpu = cpu_s(p.pid) - cpu0
        rss = rss_mib(p.pid)
        text = Path(log.name).read_bytes()[at:].decode(errors="replace")
        compile_ms = sorted(float(m) for m in re.findall(r"config applied.*compile_ms=([0-9.]+)", text))
        rtt.sort()
        print(json.dumps({
            "routes": a.routes, "changes": a.changes,
            "put_s": round(put_s, 3),
            "patch_compile_ms_p50": compile_ms[len(compile_ms) // 2] if compile_ms else None,
            "patch_compile_ms_max": compile_ms[-1] if compile_ms else None,
            "patch_rtt_ms_p50": round(rtt[len(rtt) // 2], 1),
            "patch_rtt_ms_max": round(rtt[-1], 1),
            # The dataplane's CPU per PATCH (parse, apply, validate, compile, swap, free the
            # old version): what 50 pods sharing a core add up, whatever the machine's load.
            "patch_cpu_ms_mean": round(cpu / a.changes * 1e3, 1),
            "rss_mib": round(rss, 1),
            "log": log.name,
        }, indent=1))
    finally:
        p.terminate()
        p.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
