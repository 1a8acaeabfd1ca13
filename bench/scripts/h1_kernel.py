#!/usr/bin/env python3
"""The `make bench` h1-wrk layout by hand, with the kernel-side figures per request
(BENCHMARKS.md "HTTP/1.1: the runtime and kernel side (issue #18, part 2, fourth pass)").

A `weir-bench serve --threads 1` backend and the proxy on CPU 0, `wrk -t1 -c64` on CPU 1;
peers interleaved over rounds, a 1 s warm-up each. Per request, from /proc around the run:
proxy user and sys µs (`stat`, all threads of the process tree), run time and run-queue wait
(`schedstat`, ns), voluntary / involuntary context switches (`status`), the backend's run
time and switches; TCP segments, pure ACKs and delayed ACKs (`nstat`, whole machine); req/s,
p50/p90/p99 (wrk). Medians over rounds at the end; every round to $OUT (JSON).

usage: h1_kernel.py ROUNDS SECONDS PEER...   PEER = nginx | NAME=BINDIR[,ENV=VALUE...]
  WB=PATH      the weir-bench binary for the backend (default: BINDIR/weir-bench of the first Weir peer)
  CLOSE=1      wrk sends `Connection: close` (a new connection per request)
  TOOL=strace  `strace -c -f` on the proxy during each run (counts per kind, in the temp dir)
  TOOL=epoll   `strace -e epoll_wait,epoll_ctl` (events per epoll_wait)
  TOOL=perf    `perf record -e cpu-clock -g` on the proxy
"""
import json, os, re, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers as P  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def tree(pid):
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except Exception:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out


def snap(pids):
    s = dict(ut=0, st=0, vcs=0, ivcs=0, run_ns=0, wait_ns=0, slices=0)
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            b = f"/proc/{pid}/task/{t}"
            try:
                st = Path(b + "/stat").read_text()
                f = st[st.rindex(")") + 2:].split()
                s["ut"] += int(f[11]); s["st"] += int(f[12])
                for line in Path(b + "/status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches"):
                        s["vcs"] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        s["ivcs"] += int(line.split()[1])
                r, w, n = Path(b + "/schedstat").read_text().split()
                s["run_ns"] += int(r); s["wait_ns"] += int(w); s["slices"] += int(n)
            except (OSError, ValueError):
                pass
    return s


def nstat():
    out = subprocess.run(["nstat", "-az", "TcpOutSegs", "TcpExtDelayedACKs", "TcpExtTCPPureAcks",
                          "TcpExtTCPHPAcks"], capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines()[1:]:
        p = line.split()
        if len(p) >= 2:
            d[p[0]] = int(p[1])
    return d


UNITS = {"us": 1, "ms": 1000, "s": 1e6}


def wrk(url, dur):
    extra = ["-H", "Connection: close"] if os.environ.get("CLOSE") else []
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{dur}s", "--latency", *extra, url],
                         capture_output=True, text=True).stdout
    r = {}
    m = re.search(r"(\d+) requests in", out); r["n"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out); r["rps"] = float(m.group(1)) if m else 0
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.M)
        r["p" + pct] = float(m.group(1)) * UNITS[m.group(2)] / 1000 if m else float("nan")
    return r


def main():
    rounds, dur = int(sys.argv[1]), int(sys.argv[2])
    specs = sys.argv[3:]
    weirs = [s.split("=", 1)[1].split(",")[0] for s in specs if "=" in s]
    wb = os.environ.get("WB") or (str(Path(weirs[0]) / "weir-bench") if weirs else "weir-bench")
    d = Path(tempfile.mkdtemp(prefix="rtm-"))
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    bport = free_port()
    backend = subprocess.Popen(["taskset", "-c", "0", wb, "serve", "--listen", f"127.0.0.1:{bport}",
                                "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    time.sleep(0.5)
    results = {}
    try:
        for rnd in range(rounds):
            for spec in specs:
                name = spec.split("=")[0]
                pd = d / f"{name}-{rnd}"; pd.mkdir()
                ports = P.Ports(free_port(), free_port(), free_port())
                env = dict(os.environ)
                if name == "nginx":
                    sp = P.nginx(pd, ports, bport, cert, key)
                else:
                    parts = spec.split("=", 1)[1].split(",")
                    sp = P.weir(Path(parts[0]), pd, ports, bport, cert, key, "tok")
                    for kv in parts[1:]:
                        k, v = kv.split("=", 1); env[k] = v
                env.update(sp.env)
                p = subprocess.Popen(["taskset", "-c", "0", *sp.cmd], env=env, stdout=open(pd / "log", "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
                url = f"http://127.0.0.1:{ports.http}/"
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", ports.http), 0.5).close(); break
                    except OSError:
                        time.sleep(0.05)
                time.sleep(0.5)
                wrk(url, 1)  # warm-up
                pids = tree(p.pid)
                la = os.getloadavg()[0]
                a, ba, na = snap(pids), snap([backend.pid]), nstat()
                tool = os.environ.get("TOOL")
                tp = None
                if tool == "strace":
                    tp = subprocess.Popen(["strace", "-c", "-f", "-o", str(d / f"strace-{name}-{rnd}.txt"),
                                           *sum((["-p", str(x)] for x in pids), [])], stderr=subprocess.DEVNULL)
                    time.sleep(1)
                elif tool == "perf":
                    tp = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-o",
                                           str(d / f"perf-{name}-{rnd}.data"),
                                           "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                    time.sleep(1)
                elif tool == "epoll":
                    tp = subprocess.Popen(["strace", "-f", "-e", "trace=epoll_wait,epoll_pwait,epoll_ctl",
                                           "-o", str(d / f"epoll-{name}-{rnd}.txt"),
                                           *sum((["-p", str(x)] for x in pids), [])], stderr=subprocess.DEVNULL)
                    time.sleep(1)
                r = wrk(url, dur)
                if tp:
                    tp.send_signal(signal.SIGINT); tp.wait(60)
                b, bb, nb = snap(pids), snap([backend.pid]), nstat()
                n = max(r["n"], 1)
                row = dict(rps=r["rps"], p50=r["p50"], p90=r["p90"], p99=r["p99"], load=la,
                           user_us=(b["ut"] - a["ut"]) / TCK / n * 1e6,
                           sys_us=(b["st"] - a["st"]) / TCK / n * 1e6,
                           run_us=(b["run_ns"] - a["run_ns"]) / n / 1e3,
                           rq_wait_us=(b["wait_ns"] - a["wait_ns"]) / n / 1e3,
                           slices=(b["slices"] - a["slices"]) / n,
                           vcs=(b["vcs"] - a["vcs"]) / n, ivcs=(b["ivcs"] - a["ivcs"]) / n,
                           be_run_us=(bb["run_ns"] - ba["run_ns"]) / n / 1e3,
                           be_ivcs=(bb["ivcs"] - ba["ivcs"]) / n, be_vcs=(bb["vcs"] - ba["vcs"]) / n,
                           segs=(nb.get("TcpOutSegs", 0) - na.get("TcpOutSegs", 0)) / n,
                           pureacks=(nb.get("TcpExtTCPPureAcks", 0) - na.get("TcpExtTCPPureAcks", 0)) / n,
                           delacks=(nb.get("TcpExtDelayedACKs", 0) - na.get("TcpExtDelayedACKs", 0)) / n)
                results.setdefault(name, []).append(row)
                print(f"r{rnd} {name:10} " + " ".join(f"{k}={v:.3g}" for k, v in row.items()), flush=True)
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
    finally:
        print("dir", d)
        os.killpg(backend.pid, signal.SIGTERM)
    print("\nmedians")
    keys = list(next(iter(results.values()))[0].keys())
    print("| " + " | ".join(["peer"] + keys) + " |")
    for name, rows in results.items():
        print("| " + " | ".join([name] + [f"{median(r[k] for r in rows):.3g}" for k in keys]) + " |")
    Path(os.environ.get("OUT", str(d / "rounds.json"))).write_text(json.dumps(results, indent=1))


main()
