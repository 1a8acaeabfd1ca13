#!/usr/bin/env python3
"""`make bench`: Weir against nginx, HAProxy, Caddy, Traefik and direct-to-backend.

Python 3.11 stdlib only. Run through bench/scripts/bench.sh (installs the peers, builds the
`dist` profile). Every peer gets an equivalent config (bench/scripts/peers.py), the same backend and
the same load, pinned the same way: load generator on BENCH_CPU_LOAD (default CPU 1), proxy and
backend on BENCH_CPU_PROXY (default CPU 0). Rounds interleave the peers (A B C A B C ...) and
the table shows medians.

Environment:
  BENCH_QUICK=1         short runs, 1 round (for iterating)
  BENCH_ROUNDS=N        rounds (default 3; quick 1)
  BENCH_DURATION=S      seconds per measured load run (default 8; quick 2)
  BENCH_PEERS=a,b       subset of weir,nginx,haproxy,caddy,traefik,direct
  BENCH_SCENARIOS=a,b   subset of h1-wrk,h1,h2,h3,h1-many,h2-many,bulk,idle,reload,operator,
                        operator-scale
  BENCH_BULK=SIZE       bulk transfer size (default 1g; quick 64m)
  BENCH_IDLE_CONNS=N    idle HTTP/3 connections held (default 10000; quick 1000)
  BENCH_OUT=DIR         where the JSON and Markdown go (default bench/results)
  BENCH_PUBLISH=1       also put the tables into BENCHMARKS.md ("Latest results"; not with QUICK)
  BENCH_CPU_LOAD, BENCH_CPU_PROXY   taskset CPU lists
  BENCH_PROFILE=NAME    the cargo profile whose binaries are measured (default dist: what the
                        images ship; bench.sh builds it)
  BENCH_WEIR=DIR        the weir-dataplane measured as peer `weir` (default: the profile's own);
                        bench.sh sets it to scripts/pgo.sh's profile-guided build (what the
                        images ship) unless BENCH_PGO=0
  BENCH_WEIR_BASE=DIR   a second Weir, the weir-dataplane in DIR (e.g. a copy of main's release
                        build), run as peer `weir-base` (add it to BENCH_PEERS) with the same
                        config and load, interleaved with the others: a before/after in one run
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import secrets
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

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers as P  # noqa: E402
import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "3"))
DURATION = float(os.environ.get("BENCH_DURATION", "2" if QUICK else "8"))
WARMUP = 0.5 if QUICK else 1.5
BULK = os.environ.get("BENCH_BULK", "64m" if QUICK else "1g")
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "1000" if QUICK else "10000"))
CPU_LOAD = os.environ.get("BENCH_CPU_LOAD", "1")
CPU_PROXY = os.environ.get("BENCH_CPU_PROXY", "0")
ALL_PEERS = ["weir", "nginx", "haproxy", "caddy", "traefik", "direct"]
ALL_SCEN = ["h1-wrk", "h1", "h2", "h3", "h1-many", "h2-many", "bulk", "idle", "reload", "operator",
            "operator-scale"]
# More requests in flight than the pool's old idle bound (128), where it churned.
H1_MANY_CONNS = 256
H2_MANY_CONNS, H2_MANY_STREAMS = 16, 10
PEERS = [p for p in os.environ.get("BENCH_PEERS", ",".join(ALL_PEERS)).split(",") if p]
SCENARIOS = [s for s in os.environ.get("BENCH_SCENARIOS", ",".join(ALL_SCEN)).split(",") if s]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/weir/target"))
BINS = TARGET / os.environ.get("BENCH_PROFILE", "dist")
WB = str(BINS / "weir-bench")
WEIR = Path(os.environ["BENCH_WEIR"]) if os.environ.get("BENCH_WEIR") else BINS
OUT = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "results"))
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The load of the small-response scenarios (same for every peer).
H1_CONNS = 64
H2_CONNS, H2_STREAMS = 4, 16
H3_CONNS, H3_STREAMS = 10, 10


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes and /proc


def free_port() -> int:
    """A port free on both TCP and UDP (h3 listens on the same number)."""
    for _ in range(100):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        try:
            stat = Path(f"/proc/{ent}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(ent))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (incl. reaped children) of these processes, in seconds."""
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after ')': state ppid ... utime=idx 11, stime=12, cutime=13, cstime=14
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def threads_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class Proc:
    """A child process pinned with taskset, in its own process group."""

    def __init__(self, name: str, cmd: list[str], cpus: str, env: dict | None = None,
                 logdir: Path | None = None):
        self.name = name
        e = dict(os.environ)
        e.update(env or {})
        logdir = logdir or Path(tempfile.gettempdir())
        self.logfile = logdir / f"{name}.log"
        self.log = open(self.logfile, "wb")
        self.p = subprocess.Popen(["taskset", "-c", cpus, *cmd], env=e, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.p.pid

    def pids(self) -> list[int]:
        return tree(self.pid)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        self.log.close()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Sampler:
    """Samples the summed RSS of a process tree every 100 ms; `peak` is the max seen."""

    def __init__(self, proc: Proc):
        self.proc, self.peak, self.samples = proc, 0, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._t.start()
        return self

    def _run(self) -> None:
        pids = self.proc.pids()
        n = 0
        while not self._stop.is_set():
            if n % 10 == 0:
                pids = self.proc.pids()
            r = rss_bytes(pids)
            self.peak = max(self.peak, r)
            self.samples.append(r)
            n += 1
            self._stop.wait(0.1)

    def __exit__(self, *a) -> None:
        self._stop.set()
        self._t.join()


def wait_tcp(port: int, proc: Proc, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: port {port} not ready after {timeout}s:\n{proc.tail()}")


def wb_json(args: list[str], timeout: float) -> dict:
    """Runs weir-bench (load generator CPU) and returns its JSON report."""
    cmd = ["taskset", "-c", CPU_LOAD, WB, *args, "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"weir-bench {' '.join(args)}: exit {r.returncode}: {r.stderr[-800:]}")


def h3_ready(port: int, proc: Proc, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        r = subprocess.run([WB, "-p", "h3", "-k", "-v", "--timeout", "2s", "--connect-to",
                            f"127.0.0.1:{port}", f"https://localhost:{port}/"],
                           capture_output=True, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: HTTP/3 on {port} not ready:\n{proc.tail()}")


# ------------------------------------------------------------------ load runs


UNITS = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}


def wrk_us(s: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


def run_wrk(url: str, duration: float, conns: int = H1_CONNS) -> dict:
    cmd = ["taskset", "-c", CPU_LOAD, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
           "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    res: dict = {"tool": "wrk"}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    # p75 and p90 too (JSON only): where a wider tail starts (BENCHMARKS.md, seventh pass of #18).
    for pct, key in (("50", "p50_us"), ("75", "p75_us"), ("90", "p90_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[key] = wrk_us(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    res["failed"] = errs
    if not res["rps"]:
        res["error"] = out[-500:]
    return res


def wb_result(j: dict) -> dict:
    ok = j.get("status", {}).get("200", 0)
    return {
        "tool": "weir-bench",
        "rps": j.get("rps", 0.0),
        "p50_us": j["latency_us"]["p50"],
        "p99_us": j["latency_us"]["p99"],
        "requests": j.get("requests", 0),
        "failed": j["errors"]["total"] + (j.get("responses", 0) - ok),
        "first_errors": j.get("first_errors", {}),
    }


def load_args(scen: str, http: int, https: int, duration: float) -> list[str]:
    d = f"{duration}s"
    tls = ["-k", "--connect-to", f"127.0.0.1:{https}", f"https://localhost:{https}/"]
    if scen == "h1":
        return ["-c", str(H1_CONNS), "-t", "1", "-d", d, f"http://127.0.0.1:{http}/"]
    if scen == "h2":
        return ["-p", "h2", "-c", str(H2_CONNS), "-m", str(H2_STREAMS), "-t", "1", "-d", d, *tls]
    if scen == "h2-many":
        return ["-p", "h2", "-c", str(H2_MANY_CONNS), "-m", str(H2_MANY_STREAMS), "-t", "1", "-d", d, *tls]
    if scen == "h3":
        return ["-p", "h3", "-c", str(H3_CONNS), "-m", str(H3_STREAMS), "-t", "1", "-d", d, *tls]
    raise ValueError(scen)


def measured(proc: Proc, fn) -> dict:
    """Runs `fn()` while measuring the proxy's CPU seconds and peak RSS."""
    pids = proc.pids()
    c0 = cpu_seconds(pids)
    with Sampler(proc) as s:
        res = fn()
    res["cpu_s"] = round(cpu_seconds(proc.pids()) - c0, 3)
    res["peak_rss"] = s.peak
    if res.get("requests"):
        res["cpu_us_per_req"] = round(res["cpu_s"] * 1e6 / res["requests"], 2)
    return res


# ------------------------------------------------------------------ peers


class Env:
    """The shared pieces: temp dir, certificate, backend."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="weir-bench-"))
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "30", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True)
        self.token = secrets.token_hex(16)
        self.backend_port = free_port()
        self.backend: Proc | None = None

    def start_backend(self) -> None:
        self.backend = Proc("backend", [WB, "serve", "--listen", f"127.0.0.1:{self.backend_port}",
                                        "--threads", "1", "--tls", "--h3"],
                            CPU_PROXY, logdir=self.dir)
        wait_tcp(self.backend_port, self.backend)
        h3_ready(self.backend_port, self.backend)

    def close(self) -> None:
        if self.backend:
            self.backend.stop()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


class Running:
    """One started peer: its process (the backend itself for `direct`) and ports."""

    def __init__(self, name: str, proc: Proc, ports: P.Ports, protocols: tuple[str, ...],
                 own: bool):
        self.name, self.proc, self.ports, self.protocols, self.own = name, proc, ports, protocols, own

    def stop(self) -> None:
        if self.own:
            self.proc.stop()


def start_peer(env: Env, name: str, tag: str) -> Running:
    if name == "direct":
        assert env.backend
        b = env.backend_port
        return Running("direct", env.backend, P.Ports(b, b), ("h1", "h2", "h3"), own=False)
    d = env.dir / f"{name}-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    ports = P.Ports(free_port(), free_port(), free_port())
    b = env.backend_port
    if name == "weir":
        spec = P.weir(WEIR, d, ports, b, env.cert, env.key, env.token)
    elif name == "weir-base":
        base = os.environ.get("BENCH_WEIR_BASE")
        if not base:
            raise ValueError("peer weir-base needs BENCH_WEIR_BASE=DIR (a weir-dataplane to compare)")
        spec = P.weir(Path(base), d, ports, b, env.cert, env.key, env.token)
    elif name == "nginx":
        spec = P.nginx(d, ports, b, env.cert, env.key)
    elif name == "haproxy":
        spec = P.haproxy(d, ports, b, env.cert, env.key)
    elif name == "caddy":
        spec = P.caddy(d, ports, b, env.cert, env.key)
    elif name == "traefik":
        spec = P.traefik(P.traefik_exe(), d, ports, b, env.cert, env.key)
    else:
        raise ValueError(name)
    proc = Proc(name, spec.cmd, CPU_PROXY, spec.env, logdir=d)
    try:
        wait_tcp(ports.http, proc)
        wait_tcp(ports.https, proc)
        if "h3" in spec.protocols:
            h3_ready(ports.https, proc)
    except Exception:
        proc.stop()
        raise
    return Running(name, proc, ports, spec.protocols, own=True)


# ------------------------------------------------------------------ scenarios


def small_response(env: Env, results: dict) -> None:
    """h1-wrk, h1, h2, h3: every peer, interleaved over rounds."""
    scen = [s for s in ("h1-wrk", "h1", "h2", "h3", "h1-many", "h2-many") if s in SCENARIOS]
    if not scen:
        return
    for rnd in range(ROUNDS):
        # Each round starts one peer further along: the peer measured first in a round came out
        # low in 5 of 6 rounds (BENCHMARKS.md "Issue #18, fifth pass"), and `weir` was always it.
        k = rnd % len(PEERS)
        for name in PEERS[k:] + PEERS[:k]:
            log(f"round {rnd + 1}/{ROUNDS}: {name}")
            try:
                peer = start_peer(env, name, f"r{rnd}")
            except Exception as e:  # a peer that does not start is reported, not fatal
                log(f"{name} did not start: {e}")
                results.setdefault("failures", []).append(f"{name} round {rnd + 1}: {e}")
                continue
            try:
                if name != "direct":
                    time.sleep(0.5)
                    results["idle_rss"].setdefault(name, []).append(rss_bytes(peer.proc.pids()))
                    results["threads"][name] = threads_of(peer.proc.pid)
                for s in scen:
                    proto = {"h1-wrk": "h1", "h1-many": "h1", "h2-many": "h2"}.get(s, s)
                    if proto not in peer.protocols:
                        continue
                    r = run_one(env, peer, s)
                    results["small"].setdefault(s, {}).setdefault(name, []).append(r)
                    log(f"  {s:7} {name:8} {r.get('rps', 0):10.0f} req/s  p99 "
                        f"{r.get('p99_us', 0) / 1000:.2f} ms  cpu {r.get('cpu_s', 0):.2f}s  "
                        f"failed {r.get('failed')}  upstream conns {r.get('upstream_conns')}")
            finally:
                peer.stop()


def backend_accepted(env: Env) -> int | None:
    """TCP connections the shared backend has accepted (its `GET /__stats`, which counts the
    connection it arrives on too)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.backend_port}/__stats", timeout=5) as r:
            return json.loads(r.read())["tcp_accepted"]
    except (OSError, ValueError, KeyError):
        return None


def run_one(env: Env, peer: Running, s: str) -> dict:
    """Warm-up, then the measured run, with the upstream connections the proxy opened during
    the measured run (after the warm-up a pooling proxy should need none)."""
    p = peer.ports
    if s in ("h1-wrk", "h1-many"):
        url = f"http://127.0.0.1:{p.http}/"
        conns = H1_MANY_CONNS if s == "h1-many" else H1_CONNS
        run_wrk(url, WARMUP, conns)
        run = lambda: run_wrk(url, DURATION, conns)  # noqa: E731
    else:
        wb_json(load_args(s, p.http, p.https, WARMUP), WARMUP + 60)
        run = lambda: wb_result(wb_json(load_args(s, p.http, p.https, DURATION), DURATION + 60))  # noqa: E731
    before = backend_accepted(env)
    r = measured(peer.proc, run)
    after = backend_accepted(env)
    if peer.name != "direct" and before is not None and after is not None:
        r["upstream_conns"] = after - before - 1
    return r


# ------------------------------------------------------------------ main


def machine(env: Env) -> dict:
    def ver(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - a missing peer is just "not installed"
            return f"n/a ({e.__class__.__name__})"

    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        rev += " (+ uncommitted changes)" if dirty else ""
    except OSError:
        rev = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "os": Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "",
        "load_at_start": os.getloadavg(),
        "versions": {
            "weir": f"{ver([str(WEIR / 'weir-dataplane'), '--version'])} @ {rev}, "
                    f"profile {os.environ.get('BENCH_PROFILE', 'dist')}"
                    + (" + PGO (scripts/pgo.sh)" if (WEIR / "weir.profdata").exists() else ""),
            "nginx": ver(["nginx", "-v"]),
            "haproxy": ver(["haproxy", "-v"]),
            "caddy": ver(["caddy", "version"]),
            "traefik": " ".join(ver([str(P.traefik_exe()), "version"]).split()[1:]) or "?",
            "wrk": ver(["wrk", "-v"]),
            "rustc": ver(["rustc", "-V"]),
        },
        "pinning": {"load": CPU_LOAD, "proxy+backend": CPU_PROXY},
        "weir_binary_built": dt.datetime.fromtimestamp(
            (WEIR / "weir-dataplane").stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        if (WEIR / "weir-dataplane").exists() else "?",
    }


def publish(md: str) -> None:
    """Replaces the "Latest results" section of BENCHMARKS.md with this run's tables."""
    f = ROOT / "BENCHMARKS.md"
    text = f.read_text()
    head, _, rest = text.partition("## Latest results")
    # Sections after "Latest results" (e.g. "Soak") stay: only up to the next "## " heading
    # is replaced.
    nxt = rest.find("\n## ")
    tail = rest[nxt + 1:] if nxt >= 0 else ""
    # Whether the machine was quiet is the load average's to say (in the run's header), not a
    # fixed sentence: runs have been made both beside other builds and alone.
    note = ("Measured on a 2-CPU machine that may have run other work outside the pinning (the load "
            "average below says how busy it was); absolute figures move between runs, read the "
            "ratios within this run. Full per-round figures: `bench/results/<run>.json`.\n\n")
    body = md.replace("## Results", "Run", 1).rstrip("\n") + "\n"
    f.write_text(head + "## Latest results\n\n" + note + body + ("\n" + tail if tail else ""))
    log(f"published the tables into {f}")


def snapshot_bins(env: Env) -> None:
    """Copies the release binaries into the run's temp dir, so a rebuild during the run (the
    target dir is shared) cannot mix two versions of Weir into one table."""
    global BINS, WB, WEIR
    d = env.dir / "bin"
    d.mkdir(exist_ok=True)
    for name in ("weir-dataplane", "weir-bench", "weir-operator"):
        if (BINS / name).exists():
            shutil.copy2(BINS / name, d / name)
    if WEIR != BINS:
        w = d / "weir"
        w.mkdir(exist_ok=True)
        for name in ("weir-dataplane", "weir.profdata"):
            if (WEIR / name).exists():
                shutil.copy2(WEIR / name, w / name)
        WEIR = w
    else:
        WEIR = d
    BINS, WB = d, str(d / "weir-bench")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    env = Env()
    snapshot_bins(env)
    results: dict = {
        "started": stamp,
        "settings": {"quick": QUICK, "rounds": ROUNDS, "duration_s": DURATION, "peers": PEERS,
                     "scenarios": SCENARIOS, "bulk": BULK, "idle_conns": IDLE_CONNS,
                     "h1": {"connections": H1_CONNS},
                     "h2": {"connections": H2_CONNS, "streams": H2_STREAMS},
                     "h3": {"connections": H3_CONNS, "streams": H3_STREAMS},
                     "h1-many": {"connections": H1_MANY_CONNS},
                     "h2-many": {"connections": H2_MANY_CONNS, "streams": H2_MANY_STREAMS}},
        "machine": machine(env),
        "small": {}, "idle_rss": {}, "threads": {},
    }
    t0 = time.time()
    try:
        env.start_backend()
        small_response(env, results)
        import scenarios as S  # the longer scenarios (bulk, idle, reload, operator)
        S.run_all(sys.modules[__name__], env, results)
    finally:
        env.close()
        results["elapsed_s"] = round(time.time() - t0, 1)
        jf = OUT / f"{stamp}.json"
        jf.write_text(json.dumps(results, indent=1))
        md = report.markdown(results)
        (OUT / f"{stamp}.md").write_text(md)
        print(md)
        if os.environ.get("BENCH_PUBLISH") and not QUICK:
            publish(md)
        log(f"wrote {jf} and {jf.with_suffix('.md')} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
