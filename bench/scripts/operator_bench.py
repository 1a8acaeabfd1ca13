"""Operator propagation for `make bench`: etcd + a real kube-apiserver on loopback (the way
`make e2e` starts them: scripts/e2e.sh, operator/tests/e2e.rs), the CRDs from crds/, the
operator (release build, default flags) and one dataplane registered as a Pod on 127.0.0.2.

Measures (1) 1,000 ProxyRoutes created at once -> time until the dataplane's GET /config has all
of them, and (2) repeated single-route changes (a merge patch of one route) -> time until the
dataplane runs a snapshot with the change; p50/p99. Skips with a message when the API server
binary (built or unpacked by `make e2e`) or etcd is missing.

Standalone (no peers, no release build needed):
  python3 bench/scripts/operator_bench.py [--bins DIR] [--routes N] [--changes N] [--out FILE]
--bins (or WEIR_BENCH_BINS) is the directory holding weir-operator, weir-dataplane and
weir-bench; default $CARGO_TARGET_DIR/perf (`cargo build --profile perf -p weir-operator
-p weir-dataplane -p weir-bench`). Prints the results as JSON. WEIR_BENCH_OPERATOR_LOG sets the
operator's RUST_LOG (default warn; e.g. `info,kube=warn` with BENCH_KEEP_TMP=1 keeps a log of
every compile, push and status write in the run's temp dir).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import threading
import time
from pathlib import Path

TOKEN = "bench-admin-token"
DP_NS, NS = "weir-system", "apps"


class Api:
    """A tiny kube-apiserver client (bearer token, no certificate check: loopback only)."""

    def __init__(self, port: int):
        self.port = port
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.local = threading.local()

    def conn(self) -> http.client.HTTPSConnection:
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
            self.local.c = c
        return c

    def call(self, method: str, path: str, body=None, ctype="application/json") -> tuple[int, dict]:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = ctype
        for attempt in range(2):
            c = self.conn()
            try:
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                try:
                    return r.status, json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    return r.status, {"raw": raw[:200].decode(errors="replace")}
            except (OSError, http.client.HTTPException):
                c.close()
                self.local.c = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def apiserver_bin() -> Path | None:
    p = Path.home() / ".cache/weir/kube-apiserver"
    if p.is_file() and os.access(p, os.X_OK):
        return p
    return None


def dp_config(ip: str, port: int, token: str) -> dict | None:
    c = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        c.request("GET", "/config", headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        raw = r.read()
        return json.loads(raw) if r.status == 200 else None
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        return None
    finally:
        c.close()


def wait(what: str, fn, timeout: float, every: float = 0.02):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def route_of(cfg: dict | None, name: str) -> dict | None:
    if not cfg:
        return None
    for r in cfg.get("snapshot", {}).get("routes", []):
        if r.get("name") == name:
            return r
    return None


def header_value(route: dict | None) -> str | None:
    try:
        return route["rules"][0]["filters"]["responseHeaders"]["set"][0]["value"]
    except (KeyError, IndexError, TypeError):
        return None


def missing_parts(b) -> list[str]:
    api_bin, etcd = apiserver_bin(), shutil.which("etcd")
    op_bin = b.BINS / "weir-operator"
    return [n for n, p in (("kube-apiserver (run `make e2e` once: it builds or unpacks it "
                            "into ~/.cache/weir)", api_bin), ("etcd", etcd),
                           ("weir-operator build", op_bin if op_bin.exists() else None))
            if not p]


def skipped(b, results: dict, key: str) -> bool:
    """Records and logs a skip when the API server, etcd or the operator build is missing."""
    missing = missing_parts(b)
    if missing:
        results[key] = {"skipped": "missing " + ", ".join(missing)}
        b.log(f"{key}: skipped, missing {', '.join(missing)}")
    return bool(missing)


def start_apiserver(b, d: Path, procs: list) -> tuple[Api, int]:
    """etcd + kube-apiserver (as `make e2e` starts them), the CRDs, the two namespaces."""
    etcd = shutil.which("etcd")
    cport, pport, aport = b.free_port(), b.free_port(), b.free_port()
    procs.append(b.Proc("etcd", [etcd, "--data-dir", str(d / "etcd"),
                                 "--listen-client-urls", f"http://127.0.0.1:{cport}",
                                 "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                                 "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                                 "--initial-cluster", f"default=http://127.0.0.1:{pport}"],
                        "0-1", logdir=d))
    subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "rsa", "-pubout", "-in", str(d / "sa.key"), "-out",
                    str(d / "sa.pub")], check=True, capture_output=True)
    (d / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
    (d / "certs").mkdir(exist_ok=True)
    procs.append(b.Proc("kube-apiserver", [
        str(apiserver_bin()), f"--etcd-servers=http://127.0.0.1:{cport}", "--bind-address=127.0.0.1",
        f"--secure-port={aport}", f"--cert-dir={d / 'certs'}",
        f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
        f"--service-account-key-file={d / 'sa.pub'}",
        f"--service-account-signing-key-file={d / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/24", "--advertise-address=127.0.0.1",
        "--disable-admission-plugins=ServiceAccount"], "0-1", logdir=d))
    api = Api(aport)

    def ready():
        try:
            s, body = api.call("GET", "/readyz")
            return s == 200
        except OSError:
            return False
    wait("kube-apiserver /readyz", ready, 90, 0.2)

    for f in sorted((b.ROOT / "crds").glob("*.yaml")):
        name = f.name[:-len(".yaml")]
        s, body = api.call("PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                    f"{name}?fieldManager=bench&force=true",
                           f.read_bytes(), "application/apply-patch+yaml")
        if s >= 300:
            raise RuntimeError(f"apply CRD {name}: {s} {body}")

    def established(name: str):
        s, body = api.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        return s == 200 and any(c.get("type") == "Established" and c.get("status") == "True"
                                for c in (body.get("status") or {}).get("conditions") or [])
    for f in (b.ROOT / "crds").glob("*.yaml"):
        wait(f"CRD {f.stem}", lambda: established(f.name[:-5]), 30, 0.2)
    for ns in (DP_NS, NS):
        api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": ns}})
    return api, aport


def start_dataplanes(b, env, d: Path, api: Api, n: int, procs: list) -> tuple[list[str], int, int]:
    """`n` dataplanes on 127.0.0.2, 127.0.0.3, ..., each registered as a ready Pod; all on the
    same admin and listener ports (the operator has one `--admin-port`). Returns the IPs and
    the two ports."""
    admin, listen = b.free_port(), b.free_port()
    # `config applied` lines carry the compile time (info); `PUT /config parsed` the parse time.
    dp_log = os.environ.get("WEIR_BENCH_DATAPLANE_LOG",
                            "warn,weir_dataplane::server=info,weir_dataplane::admin=debug")
    ips = [f"127.0.{(2 + i) // 256}.{(2 + i) % 256}" for i in range(n)]
    for i, ip in enumerate(ips):
        procs.append(b.Proc(f"dataplane-{i}", [str(b.BINS / "weir-dataplane"), "--admin-address",
                                               f"{ip}:{admin}", "--access-log", "off"],
                            b.CPU_PROXY, env={"WEIR_ADMIN_TOKEN": env.token, "RUST_LOG": dp_log},
                            logdir=d))
        s, body = api.call("POST", f"/api/v1/namespaces/{DP_NS}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"dataplane-{i}",
                         "labels": {"app.kubernetes.io/name": "weir-dataplane"}},
            "spec": {"containers": [{"name": "dataplane", "image": "weir-dataplane:bench"}]}})
        if s >= 300:
            raise RuntimeError(f"create pod: {s} {body}")
        api.call("PATCH", f"/api/v1/namespaces/{DP_NS}/pods/dataplane-{i}/status", {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}}, "application/merge-patch+json")
    (d / "listeners.yaml").write_text(f"- {{name: http, address: '$(POD_IP):{listen}', protocol: http}}\n")
    return ips, admin, listen


def start_operator(b, env, d: Path, aport: int, admin: int, procs: list) -> int:
    """The operator (default flags) and the bench Backend; returns the operator's metrics port."""
    (d / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n"
        f"    server: https://127.0.0.1:{aport}\n    insecure-skip-tls-verify: true\n"
        f"users:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: b\n"
        "  context: {cluster: b, user: admin}\ncurrent-context: b\n")
    mport = b.free_port()
    procs.append(b.Proc("operator", [str(b.BINS / "weir-operator"), "run", "--namespace", DP_NS,
                                     "--listeners", str(d / "listeners.yaml"), "--admin-port",
                                     str(admin), "--metrics-address", f"127.0.0.1:{mport}"],
                        "0-1", env={"KUBECONFIG": str(d / "kubeconfig"),
                                    "WEIR_ADMIN_TOKEN": env.token,
                                    "RUST_LOG": os.environ.get("WEIR_BENCH_OPERATOR_LOG", "warn")},
                        logdir=d))
    return mport


def create_backend(api: Api, env) -> None:
    s, body = api.call("POST", f"/apis/weir.dev/v1alpha1/namespaces/{NS}/backends", {
        "apiVersion": "weir.dev/v1alpha1", "kind": "Backend", "metadata": {"name": "bench"},
        "spec": {"endpoints": [{"address": f"127.0.0.1:{env.backend_port}"}]}})
    if s >= 300:
        raise RuntimeError(f"create backend: {s} {body}")


def route(i: int, value: str = "0") -> dict:
    return {"apiVersion": "weir.dev/v1alpha1", "kind": "ProxyRoute",
            "metadata": {"name": f"r{i}"},
            "spec": {"hostnames": [f"r{i}.bench.test"],
                     "rules": [{"filters": {"responseHeaders": {"set": [
                         {"name": "x-bench", "value": value}]}},
                         "backendRefs": [{"name": "bench"}]}]}}


def create_routes(api: Api, n_routes: int, threads: int = 8) -> tuple[float, float]:
    """`n_routes` ProxyRoutes from `threads` client threads; returns (first, last) create time."""
    base = f"/apis/weir.dev/v1alpha1/namespaces/{NS}"
    errors: list[str] = []
    t0 = time.perf_counter()
    last = [t0]

    def creator(k: int) -> None:
        for i in range(k, n_routes, threads):
            s, body = api.call("POST", f"{base}/proxyroutes", route(i))
            if s >= 300:
                errors.append(f"r{i}: {s} {body.get('message', '')}")
        last[0] = max(last[0], time.perf_counter())
    ts = [threading.Thread(target=creator, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} ProxyRoutes rejected, first: {errors[0]}")
    return t0, last[0]


def run(b, env, results: dict) -> None:
    if skipped(b, results, "operator"):
        return
    n_routes = int(os.environ.get("WEIR_BENCH_ROUTES") or (200 if b.QUICK else 1000))
    n_changes = int(os.environ.get("WEIR_BENCH_CHANGES") or (6 if b.QUICK else 31))
    d = env.dir / "operator"
    d.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        api, aport = start_apiserver(b, d, procs)
        # One dataplane, registered as a ready Pod on 127.0.0.2.
        [ip], admin, _ = start_dataplanes(b, env, d, api, 1, procs)
        dp_token = env.token
        start_operator(b, env, d, aport, admin, procs)
        base = f"/apis/weir.dev/v1alpha1/namespaces/{NS}"
        create_backend(api, env)

        # (1) n_routes ProxyRoutes at once, from 8 client threads.
        b.log(f"operator: creating {n_routes} ProxyRoutes")
        t0, last_create = create_routes(api, n_routes)
        last = [last_create]

        def all_there():
            c = dp_config(ip, admin, dp_token)
            routes = (c or {}).get("snapshot", {}).get("routes", [])
            return len(routes) >= n_routes and c
        cfg = wait(f"the dataplane serving {n_routes} routes", all_there, 120, 0.05)
        t_all = time.perf_counter()
        res = {
            "routes": n_routes,
            "create_all_s": round(last[0] - t0, 3),
            "all_routes_served_after_first_create_s": round(t_all - t0, 3),
            "all_routes_served_after_last_create_s": round(t_all - last[0], 3),
            "snapshot_json_bytes": len(json.dumps(cfg.get("snapshot", {}))),
        }
        b.log(f"operator: {n_routes} routes served {res['all_routes_served_after_last_create_s']} s "
              f"after the last create")

        # (2) single-route changes.
        lat = []
        time.sleep(3.0)  # let the operator finish writing the routes' status
        for k in range(n_changes):
            i = (k * 37) % n_routes
            value = f"v{k + 1}"
            t1 = time.perf_counter()
            s, body = api.call("PATCH", f"{base}/proxyroutes/r{i}",
                               {"spec": route(i, value)["spec"]}, "application/merge-patch+json")
            if s >= 300:
                raise RuntimeError(f"patch r{i}: {s} {body}")
            wait(f"route r{i} = {value} on the dataplane",
                 lambda: header_value(route_of(dp_config(ip, admin, dp_token), f"{NS}/r{i}")) == value,
                 60, 0.01)
            lat.append(time.perf_counter() - t1)
            time.sleep(0.3)
        in_order = [round(x, 3) for x in lat]
        # The first change comes 3 s after the 1,000-route burst, while the operator may still
        # be writing their status: shown on its own, the rest is the steady state.
        first = lat[0]
        lat = sorted(lat[1:]) or [first]
        res.update({
            "first_change_after_burst_s": round(first, 3),
            "single_changes": len(lat),
            "single_change_p50_s": round(statistics.median(lat), 3),
            "single_change_p99_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
            "single_change_max_s": round(lat[-1], 3),
            "single_change_all_s": in_order,
            "operator_debounce": "200ms (default)",
        })
        b.log(f"operator: single-route change p50 {res['single_change_p50_s']} s, "
              f"p99 {res['single_change_p99_s']} s")
        results["operator"] = res
    finally:
        for p in reversed(procs):
            p.stop()


def prom(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value} (enough for counters and gauges)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def operator_metrics(port: int) -> dict[str, float]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        return prom(c.getresponse().read().decode())
    finally:
        c.close()


def apiserver_requests(api: Api) -> dict[str, float]:
    """`apiserver_request_total` by verb and resource (summed over codes and other labels)."""
    c = api.conn()
    c.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    text = r.read().decode()
    out: dict[str, float] = {}
    for k, v in prom(text).items():
        if not k.startswith("apiserver_request_total{"):
            continue
        labels = dict(p.split("=", 1) for p in k[k.index("{") + 1:-1].split(",") if "=" in p)
        key = f"{labels.get('verb', '').strip(chr(34))} {labels.get('resource', '').strip(chr(34))}"
        out[key] = out.get(key, 0) + v
    return out


def served_value(ip: str, port: int, host: str, keep: list | None = None) -> str | None:
    """The `x-bench` header a dataplane answers `host` with (None when it does not route it).
    With `keep` (a one-element list), the connection is kept there and reused."""
    c = (keep[0] if keep else None) or http.client.HTTPConnection(ip, port, timeout=5)
    try:
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        r.read()
        if keep is not None and not r.will_close:
            keep[0] = c
            c = None
        return r.getheader("x-bench")
    except (OSError, http.client.HTTPException):
        if keep is not None:
            keep[0] = None
        return None
    finally:
        if c is not None:
            c.close()


def versions(ips: list[str], admin: int, token: str) -> set[str | None]:
    """The config version every pod runs (`GET /backends`, small, unlike `GET /config`)."""
    out = set()
    for ip in ips:
        c = http.client.HTTPConnection(ip, admin, timeout=5)
        try:
            c.request("GET", "/backends", headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            raw = r.read()
            out.add(json.loads(raw).get("version") if r.status == 200 else None)
        except (OSError, http.client.HTTPException, json.JSONDecodeError):
            out.add(None)
        finally:
            c.close()
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of a process from /proc, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process from /proc (clock ticks; the operator's own
    `process_cpu_seconds_total` counts whole seconds only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle_quiet(api: Api, timeout: float, quiet: float = 5.0) -> None:
    """Waits until the API server has seen no status apply or event for `quiet` seconds."""
    def writes() -> float:
        r = apiserver_requests(api)
        return sum(v for k, v in r.items() if k.startswith("APPLY ") or k.endswith(" events"))
    end = time.perf_counter() + timeout
    last, since = writes(), time.perf_counter()
    while time.perf_counter() < end:
        time.sleep(1.0)
        now = writes()
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since >= quiet:
            return
    raise RuntimeError(f"status writes still going after {timeout} s")


def dataplane_timings(logs: list[Path], offsets: list[int]) -> tuple[list[float], list[float]]:
    """`compile_ms` of every `config applied` line and `parse_ms` of every `PUT /config
    parsed` line the dataplanes logged after `offsets` (needs their RUST_LOG at info/debug)."""
    import re
    compile_ms, parse_ms = [], []
    for f, at in zip(logs, offsets):
        with open(f, "rb") as fh:
            fh.seek(at)
            for line in fh.read().decode(errors="replace").splitlines():
                if m := re.search(r"config applied.*compile_ms=([0-9.]+)", line):
                    compile_ms.append(float(m.group(1)))
                elif m := re.search(r"PUT /config parsed.*parse_ms=([0-9.]+)", line):
                    parse_ms.append(float(m.group(1)))
    return compile_ms, parse_ms


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * q))], 3)


def run_scale(b, env, results: dict) -> None:
    """The control plane at scale (issue #18 part 4): N ProxyRoutes, P dataplanes registered as
    Pods; per single-route change: time until every pod serves it (asked through each pod's
    listener), operator pushes and bytes, API-server requests, operator CPU and RSS."""
    if skipped(b, results, "operator-scale"):
        return
    n_routes = int(os.environ.get("WEIR_BENCH_SCALE_ROUTES") or (2000 if b.QUICK else 10000))
    n_pods = int(os.environ.get("WEIR_BENCH_SCALE_PODS") or (10 if b.QUICK else 50))
    n_changes = int(os.environ.get("WEIR_BENCH_SCALE_CHANGES") or (4 if b.QUICK else 11))
    # How long one change may take to reach every pod; a pod still behind then is counted in
    # `pods_late` (and the change's time is at least this), so a slow run still reports.
    limit = float(os.environ.get("WEIR_BENCH_SCALE_TIMEOUT") or 120)
    # How often each watcher asks its pod. Measured (BENCHMARKS.md, "the observer's own
    # load"): 50 watchers every 10 ms on a fresh connection each took 1.4 CPU-s of this
    # process and ~1.3 CPU-s of the pods per change, more than the two cores had in the
    # ~2.5 s a change took, so the watchers were most of what they timed. A change's time is
    # over-reported by at most this interval, never under-reported.
    poll = float(os.environ.get("WEIR_BENCH_SCALE_POLL_MS") or 50) / 1e3
    d = env.dir / "operator-scale"
    d.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        api, aport = start_apiserver(b, d, procs)
        b.log(f"operator-scale: {n_pods} dataplanes; logs in {d}")
        ips, admin, listen = start_dataplanes(b, env, d, api, n_pods, procs)
        mport = start_operator(b, env, d, aport, admin, procs)
        create_backend(api, env)
        b.log(f"operator-scale: creating {n_routes} ProxyRoutes")
        t0, last = create_routes(api, n_routes, threads=16)
        probe = f"r{n_routes - 1}.bench.test"
        wait(f"every pod serving {probe}",
             lambda: all(served_value(ip, listen, probe) == "0" for ip in ips), 600, 0.5)
        t_all = time.perf_counter()
        # Settle: every pod on one version, and the status writes of the burst done (the
        # operator writes 10,000 statuses and their events after the burst; measured while
        # those still ran, a change counted ~200 of them as its own API requests).
        wait("every pod on one version",
             lambda: len(v := versions(ips, admin, env.token)) == 1 and None not in v, 300, 0.5)
        t_settle = time.perf_counter()
        settle_quiet(api, 900)
        b.log(f"operator-scale: status writes of the burst done after {time.perf_counter() - t_settle:.0f} s")
        cfg = dp_config(ips[0], admin, env.token) or {}
        snap_bytes = len(json.dumps(cfg.get("snapshot", {}), separators=(",", ":")))
        res = {
            "routes": n_routes, "pods": n_pods,
            "create_all_s": round(last - t0, 1),
            "all_pods_serving_after_last_create_s": round(t_all - last, 1),
            "snapshot_json_bytes": snap_bytes,
        }
        b.log(f"operator-scale: {n_routes} routes on {n_pods} pods "
              f"{res['all_pods_serving_after_last_create_s']} s after the last create")

        op_pid = next(p.pid for p in procs if p.name == "operator")
        dp_logs = [p.logfile for p in procs if p.name.startswith("dataplane-")]
        log_at = [f.stat().st_size for f in dp_logs]
        m0, a0, c0 = operator_metrics(mport), apiserver_requests(api), cpu_seconds(op_pid)
        # The other CPU of the run: the pods (their PATCH applies, and serving the watchers'
        # polls below) and this process's own watcher threads, all on the same two cores.
        dp_pids = [p.pid for p in procs if p.name.startswith("dataplane-")]
        dp0, own0 = sum(cpu_seconds(p) for p in dp_pids), time.process_time()
        rss = [m0.get("process_resident_memory_bytes", 0)]
        base = f"/apis/weir.dev/v1alpha1/namespaces/{NS}"
        all_pods, per_pod, late = [], [], []
        # Wall-clock times of each change, to line up with the operator's and the pods' logs
        # (bench/scripts/scale_stages.py splits a change's latency into its stages).
        timeline = []
        for k in range(n_changes):
            i = (k * 7919) % n_routes
            value = f"v{k + 1}"
            host = f"r{i}.bench.test"
            done: dict[str, float] = {}

            def watch(ip: str, t1: float) -> None:
                end = t1 + limit
                # One kept-alive connection per watcher, not a connect per poll.
                conn = [None]
                while time.perf_counter() < end:
                    if served_value(ip, listen, host, conn) == value:
                        done[ip] = time.perf_counter() - t1
                        break
                    time.sleep(poll)
                if conn[0] is not None:
                    conn[0].close()
            t1, sent_unix = time.perf_counter(), time.time()
            s, body = api.call("PATCH", f"{base}/proxyroutes/r{i}",
                               {"spec": route(i, value)["spec"]}, "application/merge-patch+json")
            if s >= 300:
                raise RuntimeError(f"patch r{i}: {s} {body}")
            answered = time.perf_counter() - t1
            ts = [threading.Thread(target=watch, args=(ip, t1)) for ip in ips]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            late.append(len(ips) - len(done))
            all_pods.append(limit if late[-1] else max(done.values()))
            per_pod.extend(done.values())
            timeline.append({"route": f"{NS}/r{i}", "sent_unix": round(sent_unix, 6),
                             "patch_answered_s": round(answered, 4),
                             "pods_s": sorted(round(v, 4) for v in done.values())})
            b.log(f"operator-scale: change {k + 1}/{n_changes}: every pod after {all_pods[-1]:.3f} s")
            # Let the status writes of this change finish, so changes do not overlap.
            time.sleep(3.0)
            rss.append(operator_metrics(mport).get("process_resident_memory_bytes", 0))
        m1, a1, c1 = operator_metrics(mport), apiserver_requests(api), cpu_seconds(op_pid)
        dp1, own1 = sum(cpu_seconds(p) for p in dp_pids), time.process_time()
        dp_rss = sorted(rss_mib(p.pid) for p in procs if p.name.startswith("dataplane-"))
        pushes = m1.get('weir_operator_pushes_total{result="ok"}', 0) - m0.get('weir_operator_pushes_total{result="ok"}', 0)
        # Operators that count bytes pushed (full PUTs and PATCH deltas) say so; older ones
        # only ever PUT the whole snapshot, so bytes = pushes x snapshot size.
        counted = [k for k in m1 if k.startswith("weir_operator_push_bytes_total")]
        by_kind = {k.split('kind="', 1)[1].split('"', 1)[0]: m1[k] - m0.get(k, 0) for k in counted}
        pushed_bytes = sum(by_kind.values()) if counted else pushes * snap_bytes
        compile_ms, parse_ms = dataplane_timings(dp_logs, log_at)
        reqs = {k: a1.get(k, 0) - a0.get(k, 0) for k in a1}
        reqs = {k: round(v / n_changes, 1) for k, v in sorted(reqs.items(), key=lambda kv: -kv[1]) if v > 0}
        res.update({
            "changes": n_changes,
            "change_all_pods_p50_s": pct(all_pods, 0.5),
            "change_all_pods_p99_s": pct(all_pods, 0.99),
            "change_all_pods_max_s": round(max(all_pods), 3),
            # Per change: pods not serving it `limit` s after the patch (their time is not in
            # the per-pod figures; the change's all-pods time is then the limit, a lower bound).
            "pods_late": late,
            "late_limit_s": limit,
            "change_each_pod_p50_s": pct(per_pod, 0.5),
            "change_each_pod_p99_s": pct(per_pod, 0.99),
            "pushes_per_change": round(pushes / n_changes, 1),
            "bytes_pushed_per_change": int(pushed_bytes / n_changes),
            "bytes_pushed_per_change_by_kind": {k: int(v / n_changes) for k, v in by_kind.items()},
            # Each pod's validate + compile of one change (`config applied` log lines), and the
            # parse of a full `PUT /config` body when one was sent.
            "dataplane_compile_ms_p50": pct(compile_ms, 0.5) if compile_ms else None,
            "dataplane_compile_ms_max": max(compile_ms) if compile_ms else None,
            "dataplane_put_parse_ms_p50": pct(parse_ms, 0.5) if parse_ms else None,
            # Includes the status writes and the 3 s pause after each change (idle cost).
            "operator_cpu_s_per_change": round((c1 - c0) / n_changes, 3),
            "dataplanes_cpu_s_per_change": round((dp1 - dp0) / n_changes, 3),
            "bench_watchers_cpu_s_per_change": round((own1 - own0) / n_changes, 3),
            "operator_rss_mib": round(m1.get("process_resident_memory_bytes", 0) / 2**20, 1),
            "operator_rss_max_mib": round(max(rss) / 2**20, 1),
            # Each dataplane's RSS with every route loaded, after the changes.
            "dataplane_rss_mib_p50": round(dp_rss[len(dp_rss) // 2], 1),
            "dataplane_rss_mib_max": round(dp_rss[-1], 1),
            # The bench's own PATCH is one of them (`PATCH proxyroutes`).
            "apiserver_requests_per_change": round(sum(reqs.values()), 1),
            "apiserver_requests_per_change_by_verb_resource": reqs,
            "change_timeline": timeline,
        })
        if any(late):
            b.log(f"operator-scale: pods still behind {limit} s after a change: {late}")
        b.log(f"operator-scale: single change -> every pod p50 {res['change_all_pods_p50_s']} s, "
              f"p99 {res['change_all_pods_p99_s']} s; {res['bytes_pushed_per_change']} bytes pushed, "
              f"{res['apiserver_requests_per_change']} API requests per change")
        results["operator-scale"] = res
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    import argparse
    import sys

    sys.dont_write_bytecode = True
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench as b

    ap = argparse.ArgumentParser(description="operator propagation benchmark (standalone)")
    ap.add_argument("--bins", default=os.environ.get("WEIR_BENCH_BINS") or str(b.TARGET / "perf"),
                    help="directory with weir-operator, weir-dataplane, weir-bench "
                         "(default: $CARGO_TARGET_DIR/perf)")
    ap.add_argument("--routes", type=int, help="ProxyRoutes in the burst (default 1000)")
    ap.add_argument("--changes", type=int, help="single-route changes (default 31)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--scale", action="store_true",
                    help="the operator-scale scenario instead (WEIR_BENCH_SCALE_ROUTES, "
                         "WEIR_BENCH_SCALE_PODS, WEIR_BENCH_SCALE_CHANGES)")
    a = ap.parse_args()
    if a.routes:
        os.environ["WEIR_BENCH_ROUTES"] = str(a.routes)
    if a.changes:
        os.environ["WEIR_BENCH_CHANGES"] = str(a.changes)
    b.BINS = Path(a.bins)
    b.WB = str(b.BINS / "weir-bench")
    env = b.Env()
    b.snapshot_bins(env)  # a rebuild during the run cannot swap the binaries under it
    results: dict = {"bins": a.bins}
    try:
        env.start_backend()
        (run_scale if a.scale else run)(b, env, results)
    finally:
        env.close()
    out = json.dumps(results, indent=1)
    print(out)
    if a.out:
        Path(a.out).write_text(out + "\n")
    key = "operator-scale" if a.scale else "operator"
    return 0 if "skipped" not in results.get(key, {}) else 1


if __name__ == "__main__":
    raise SystemExit(main())
