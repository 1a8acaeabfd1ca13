"""The longer `make bench` scenarios: HTTP/3 bulk, idle connections, reload under load, and the
operator's propagation time (operator.py). `b` is the bench module (helpers and settings)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import peers as P


def run_all(b, env, results: dict) -> None:
    for name, fn in (("bulk", bulk), ("idle", idle), ("reload", reload), ("operator", operator),
                     ("operator-scale", operator_scale)):
        if name not in b.SCENARIOS:
            continue
        b.log(f"scenario {name}")
        try:
            fn(b, env, results)
        except Exception as e:  # one broken scenario must not lose the others' figures
            import traceback

            b.log(f"{name} failed: {e}\n{traceback.format_exc(limit=3)}")
            results.setdefault("failures", []).append(f"{name}: {e}")


def bare_server(b, env, tag: str):
    """A fresh bare quinn/hyper server (weir-bench serve) as the `direct` peer."""
    port = b.free_port()
    d = env.dir / f"bare-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    proc = b.Proc("bare", [b.WB, "serve", "--listen", f"127.0.0.1:{port}", "--threads", "1",
                           "--tls", "--h3"], b.CPU_PROXY, logdir=d)
    b.wait_tcp(port, proc)
    b.h3_ready(port, proc)
    return b.Running("direct", proc, P.Ports(port, port), ("h1", "h2", "h3"), own=True)


def start(b, env, name: str, tag: str):
    return bare_server(b, env, tag) if name == "direct" else b.start_peer(env, name, tag)


def wb(b, args: list[str], timeout: float) -> tuple[dict, str]:
    r = subprocess.run(["taskset", "-c", b.CPU_LOAD, b.WB, *args], capture_output=True,
                       text=True, timeout=timeout)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"weir-bench {' '.join(args)}: exit {r.returncode}: {r.stderr[-600:]}")


# ------------------------------------------------------------------ HTTP/3 bulk


def bulk(b, env, results: dict) -> None:
    """1 GiB down and up over HTTP/3: Weir (to the shared backend over HTTP/1.1) vs the bare
    quinn server; RSS sampled throughout (flat memory = peak close to the idle RSS)."""
    peers = [p for p in ("weir", "direct") if p in b.PEERS]
    out = results.setdefault("bulk", {})
    for rnd in range(b.ROUNDS):
        for name in peers:
            peer = start(b, env, name, f"bulk{rnd}")
            try:
                time.sleep(0.3)
                idle = b.rss_bytes(peer.proc.pids())
                for way in ("download", "upload"):
                    port = peer.ports.https
                    args = ["bulk", "-k", f"--{way}", b.BULK, "--connect-to", f"127.0.0.1:{port}",
                            f"https://localhost:{port}/"]
                    r = b.measured(peer.proc, lambda: wb(b, args, 900)[0])
                    r["rss_before"] = idle
                    r["rss_after"] = b.rss_bytes(peer.proc.pids())
                    out.setdefault(way, {}).setdefault(name, []).append(r)
                    b.log(f"  bulk {way:8} {name:7} {r.get('mib_per_s', 0):8.1f} MiB/s  peak RSS "
                          f"{r['peak_rss'] / 1048576:.1f} MiB (idle {idle / 1048576:.1f})  "
                          f"complete {r.get('complete')}")
            finally:
                peer.stop()


# ------------------------------------------------------------------ idle connections


def idle(b, env, results: dict) -> None:
    """Idle RSS, then RSS with IDLE_CONNS HTTP/3 connections held open (one request each)."""
    out = results.setdefault("idle_h3", {})
    hold_s = 3 if b.QUICK else 5
    for name in [p for p in ("weir", "caddy", "traefik", "direct") if p in b.PEERS]:
        try:
            peer = start(b, env, name, "idle")
        except Exception as e:
            b.log(f"{name} did not start: {e}")
            results.setdefault("failures", []).append(f"idle {name}: {e}")
            continue
        try:
            time.sleep(1.0)
            rss_idle = b.rss_bytes(peer.proc.pids())
            port = peer.ports.https
            args = ["hold", "-k", "-c", str(b.IDLE_CONNS), "--hold", f"{hold_s}s",
                    "--parallel", "32", "--timeout", "60s",
                    "--connect-to", f"127.0.0.1:{port}", f"https://localhost:{port}/"]
            r = b.measured(peer.proc, lambda: wb(b, args, 600)[0])
            r["rss_idle"] = rss_idle
            if r.get("opened"):
                r["kib_per_conn"] = round((r["peak_rss"] - rss_idle) / 1024 / r["opened"], 1)
            out[name] = r
            b.log(f"  idle {name:8} idle {rss_idle / 1048576:.1f} MiB, {r.get('opened')} conns "
                  f"(failed {r.get('failed')}): peak {r['peak_rss'] / 1048576:.1f} MiB")
        finally:
            peer.stop()


# ------------------------------------------------------------------ reload under load


def put_config(port: int, token: str, body: bytes) -> tuple[int, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/config", data=body, method="PUT",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, (time.perf_counter() - t) * 1000


def reload(b, env, results: dict) -> None:
    """100 PUT /config swaps (two alternating snapshots) during an HTTP/1.1 and an HTTP/3 run."""
    if "weir" not in b.PEERS:
        return
    swaps = 20 if b.QUICK else 100
    dur = max(b.DURATION, 4.0 if b.QUICK else 10.0)
    out = results.setdefault("reload", {})
    for proto in ("h1", "h3"):
        peer = b.start_peer(env, "weir", f"reload-{proto}")
        try:
            ports = peer.ports
            snaps = [json.dumps(P.weir_snapshot(f"bench-{m}-{i}", ports, env.backend_port,
                                                env.cert, env.key, marker=m)).encode()
                     for i, m in enumerate("ab")]
            puts: list[tuple[int, float]] = []

            def swapper() -> None:
                time.sleep(0.5)
                gap = (dur - 1.5) / swaps
                for i in range(swaps):
                    puts.append(put_config(ports.admin, env.token, snaps[(i + 1) % 2]))
                    time.sleep(gap)

            t = threading.Thread(target=swapper)
            args = b.load_args(proto, ports.http, ports.https, dur)

            def run() -> dict:
                t.start()
                r = b.wb_result(b.wb_json(args, dur + 60))
                t.join()
                return r

            r = b.measured(peer.proc, run)
            lat = sorted(ms for _, ms in puts)
            r["swaps"] = len(puts)
            r["swaps_ok"] = sum(1 for s, _ in puts if s == 200)
            r["put_ms_p50"] = lat[len(lat) // 2] if lat else None
            r["put_ms_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None
            out[proto] = r
            b.log(f"  reload {proto}: {r['swaps_ok']}/{r['swaps']} swaps ok, {r.get('requests')} "
                  f"requests, failed {r.get('failed')}, {r.get('rps', 0):.0f} req/s")
        finally:
            peer.stop()


# ------------------------------------------------------------------ operator


def operator(b, env, results: dict) -> None:
    import operator_bench

    operator_bench.run(b, env, results)


def operator_scale(b, env, results: dict) -> None:
    import operator_bench

    operator_bench.run_scale(b, env, results)
