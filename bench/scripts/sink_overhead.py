#!/usr/bin/env python3
"""Telemetry sink overhead: does a sink that is down or stuck change proxy throughput?

Python 3.11 stdlib only; builds nothing. Expects `make release` binaries in
$CARGO_TARGET_DIR/release (default ./target/release): weir-dataplane and weir-bench.

Four configurations of the same proxy (HTTP/1.1, one route to a `weir-bench serve` backend,
access logs on so every request becomes a shipped log event):

  none     no telemetry sinks
  stuck    an httpJson sink (logs, metrics) and an otlp sink (logs, metrics, traces; sampling
           ratio 1) to a receiver that accepts connections, reads, and never answers
  down     the same two sinks to a port nothing listens on (connections refused)
  healthy  the same two sinks to a receiver that answers 200 at once

Each run starts a fresh dataplane, warms up, then drives `weir-bench -p h1 -c 64 -d 8s`.
Pinning follows bench/scripts/bench.py: load generator (and this script's receivers) on
BENCH_CPU_LOAD (default 1), proxy and backend on BENCH_CPU_PROXY (default 0). Rounds
interleave the configurations (none stuck down healthy none ...); the table shows medians of
req/s, p99 and the dataplane's CPU time per request (user + system, from /proc; steadier than
req/s when other work shares the host), the ratio of the median req/s to `none`, the peak RSS of the dataplane
(sampled every 100 ms) and, from GET /sinks at the end of the run, the events shipped,
dropped (queue full) and failed (sent but not accepted) summed over the run's sinks.

Environment: SINK_BENCH_ROUNDS (default 3), SINK_BENCH_DURATION (seconds, default 8),
SINK_BENCH_CONNS (default 64), SINK_BENCH_CONFIGS (subset, comma-separated),
SINK_BENCH_JSON (write the raw results there), BENCH_CPU_LOAD, BENCH_CPU_PROXY.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINS = TARGET / "release"
DP, WB = BINS / "weir-dataplane", BINS / "weir-bench"
ROUNDS = int(os.environ.get("SINK_BENCH_ROUNDS", "3"))
DURATION = int(os.environ.get("SINK_BENCH_DURATION", "8"))
CONNS = int(os.environ.get("SINK_BENCH_CONNS", "64"))
WARMUP = 1.5
CPU_LOAD = os.environ.get("BENCH_CPU_LOAD", "1")
CPU_PROXY = os.environ.get("BENCH_CPU_PROXY", "0")
ALL = ["none", "stuck", "down", "healthy"]
CONFIGS = [c for c in os.environ.get("SINK_BENCH_CONFIGS", ",".join(ALL)).split(",") if c]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unused_port() -> int:
    """A port nothing listens on (bound, then closed; connections to it are refused)."""
    return free_port()


class StuckReceiver:
    """Accepts connections and reads whatever comes, never answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c: socket.socket) -> None:
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        self.server.bodies += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a) -> None:
        pass


class HealthyReceiver:
    def __init__(self) -> None:
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        self.srv.daemon_threads = True
        self.srv.bodies = 0  # type: ignore[attr-defined]
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def pinned(cpus: str, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen(["taskset", "-c", cpus, *cmd], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=e, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def wait_tcp(port: int, p: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if p.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text(errors='replace')[-1500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready: {log.read_text(errors='replace')[-1500:]}")


def dataplane_pid(p: subprocess.Popen) -> int:
    """taskset execs the program, so the child is the dataplane itself."""
    return p.pid


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def snapshot(http_port: int, backend: int, sink_port: int | None) -> dict:
    s: dict = {
        "version": "sink-bench",
        "listeners": [{"name": "http", "address": f"127.0.0.1:{http_port}", "protocol": "http"}],
        "backends": {"b": {"endpoints": [f"127.0.0.1:{backend}"]}},
        "routes": [{"name": "all", "rules": [{"backendRefs": [{"name": "b"}]}]}],
    }
    if sink_port is not None:
        base = f"http://127.0.0.1:{sink_port}"
        s["tracing"] = {"samplingRatio": 1.0}
        s["sinks"] = {
            "json": {"type": "httpJson", "endpoint": f"{base}/logs", "flushInterval": "1s"},
            "otlp": {"type": "otlp", "endpoint": base, "flushInterval": "1s"},
        }
    return s


def load(port: int) -> dict:
    cmd = ["taskset", "-c", CPU_LOAD, str(WB), "-p", "h1", "-c", str(CONNS), "-d",
           f"{DURATION}s", "--json", f"http://127.0.0.1:{port}/"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=DURATION + 60)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"weir-bench: exit {r.returncode}: {r.stderr[-800:]}")


def sinks_report(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/sinks", timeout=5) as r:
        return json.load(r)["sinks"]


def run_one(cfg: str, backend: int, work: Path) -> dict:
    receiver = None
    sink_port = None
    if cfg == "stuck":
        receiver = StuckReceiver()
        sink_port = receiver.port
    elif cfg == "healthy":
        receiver = HealthyReceiver()
        sink_port = receiver.port
    elif cfg == "down":
        sink_port = unused_port()
    http_port, admin = free_port(), free_port()
    conf = work / f"{cfg}.json"
    conf.write_text(json.dumps(snapshot(http_port, backend, sink_port), indent=1))
    log = work / f"weir-{cfg}.log"
    # RUST_LOG=warn: the access log line is built but filtered out of stdout; the shipped
    # copy does not depend on the stdout filter.
    p = pinned(CPU_PROXY, [str(DP), "--config", str(conf), "--admin-address",
                           f"127.0.0.1:{admin}", "--access-log", "on",
                           "--drain-timeout", "2s"], log, {"RUST_LOG": "warn"})
    try:
        wait_tcp(http_port, p, log)
        wait_tcp(admin, p, log)
        # Warm-up (connections, pools, first sink batches).
        subprocess.run(["taskset", "-c", CPU_LOAD, str(WB), "-p", "h1", "-c", str(CONNS), "-d",
                        f"{WARMUP}s", f"http://127.0.0.1:{http_port}/"], capture_output=True,
                       timeout=60)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            pid = dataplane_pid(p)
            while not done.is_set():
                peak = max(peak, rss(pid))
                done.wait(0.1)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        cpu0 = cpu_seconds(dataplane_pid(p))
        res = load(http_port)
        cpu = cpu_seconds(dataplane_pid(p)) - cpu0
        done.set()
        t.join()
        sinks = sinks_report(admin)
        tot = {k: sum(int(v.get(k) or 0) for v in sinks.values())
               for k in ("shipped", "dropped", "failed")}
        return {
            "config": cfg,
            "rps": float(res.get("rps") or 0),
            "p99_ms": p99(res),
            "errors": int((res.get("errors") or {}).get("total") or 0),
            "peak_rss": peak,
            # Dataplane CPU per request: less sensitive than req/s to other load on the host.
            "cpu_us": cpu * 1e6 / max(1, int(res.get("requests") or 0)),
            **tot,
            "sinks": sinks,
            "raw": res,
        }
    finally:
        stop(p)
        if receiver:
            receiver.close()


def p99(res: dict) -> float | None:
    v = (res.get("latency_us") or {}).get("p99")
    return None if v is None else float(v) / 1000


def main() -> int:
    for b in (DP, WB):
        if not b.exists():
            print(f"missing {b}: run `make release` first (CARGO_TARGET_DIR={TARGET})",
                  file=sys.stderr)
            return 2
    if not shutil.which("taskset"):
        print("taskset (util-linux) is needed", file=sys.stderr)
        return 2
    # The receivers live in this process: keep it off the proxy's CPU.
    os.sched_setaffinity(0, {int(c) for c in CPU_LOAD.split(",")})
    work = Path(tempfile.mkdtemp(prefix="weir-sink-bench-"))
    bport = free_port()
    blog = work / "backend.log"
    backend = pinned(CPU_PROXY, [str(WB), "serve", "--listen", f"127.0.0.1:{bport}",
                                 "--threads", "1"], blog)
    results: list[dict] = []
    try:
        wait_tcp(bport, backend, blog)
        for rnd in range(ROUNDS):
            for cfg in CONFIGS:
                r = run_one(cfg, bport, work)
                r["round"] = rnd + 1
                results.append(r)
                print(f"round {rnd + 1} {cfg:8} {r['rps']:10.0f} req/s  peak RSS "
                      f"{r['peak_rss'] / 2**20:6.1f} MiB  cpu {r['cpu_us']:5.1f} us/req  shipped {r['shipped']} dropped "
                      f"{r['dropped']} failed {r['failed']} errors {r['errors']}",
                      file=sys.stderr, flush=True)
    finally:
        stop(backend)
    out = os.environ.get("SINK_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps([{k: v for k, v in r.items()} for r in results],
                                        indent=1))
    base = statistics.median([r["rps"] for r in results if r["config"] == "none"] or [0])
    print(f"\nh1, {CONNS} connections, {DURATION}s x {ROUNDS} rounds, medians "
          f"(load CPU {CPU_LOAD}, proxy+backend CPU {CPU_PROXY})\n")
    cpu_base = statistics.median([r["cpu_us"] for r in results if r["config"] == "none"] or [0])
    print("| sinks | req/s | vs none | p99 ms | CPU µs/req | vs none | peak RSS MiB | shipped "
          "| dropped | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in CONFIGS:
        rs = [r for r in results if r["config"] == cfg]
        med = lambda k: statistics.median([r[k] for r in rs])  # noqa: E731
        rps = med("rps")
        p = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
        print(f"| {cfg} | {rps:.0f} | {rps / base if base else 0:.3f} | "
              f"{statistics.median(p) if p else float('nan'):.2f} | {med('cpu_us'):.1f} | "
              f"{med('cpu_us') / cpu_base if cpu_base else 0:.2f} | "
              f"{max(r['peak_rss'] for r in rs) / 2**20:.1f} | {med('shipped'):.0f} | "
              f"{med('dropped'):.0f} | {med('failed'):.0f} |")
    print(f"\n(peak RSS: the maximum over rounds; counters: medians of per-run totals over both "
          f"sinks; raw per-run data with SINK_BENCH_JSON=path; work dir {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
