#!/usr/bin/env python3
"""make cluster: the chart's own pods on a real kube-apiserver (v1.20) + etcd, run by the pod
runner (scripts/podrunner.py), and scenarios through the dataplane Service.

1. creates the node and client network namespaces and moves into the node namespace; starts
   etcd + kube-apiserver there (the pods reach it through the `kubernetes` Service, 10.96.0.1:443);
2. `helm install` (real Helm library) of charts/weir, then manifests/examples 01-04 and the demo
   backends of tests/cluster/; the runner runs every Deployment's pods;
3. scenarios (each prints its figures):
   - traffic through the Service from the client namespace: port 80 HTTP/1.1, 443/TCP HTTP/2,
     443/UDP HTTP/3 with gtlsclient (ngtcp2) and weir-bench; Alt-Svc names 443;
     `kubectl get proxyroutes,backends` shows Programmed and healthy counts;
   - rolling update (`helm upgrade` changing the dataplane's pod template) under HTTP/1.1 and
     HTTP/3 load through the Service: 0 failed requests;
   - ... (see SCENARIOS below).
Everything (namespaces, nft tables inside them, processes, mounts) is removed on exit, also after
a failure or Ctrl-C. Needs root, ip, nft, setpriv, unshare, nsenter, kubectl, curl, gtlsclient.
Env: WEIR_E2E_APISERVER, WEIR_E2E_ETCD, WEIR_CLUSTER_BIN_DIR (release binaries),
WEIR_CLUSTER_ONLY (comma-separated scenario names), WEIR_CLUSTER_KEEP=1 (stop before cleanup
and wait for Enter, to look around).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from kubeharness import Api, ControlPlane, Procs, eventually, kubectl, write_kubeconfig  # noqa: E402
from podrunner import Runner, images_from, remove_stale_namespaces  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
CHART = os.path.join(ROOT, "charts", "weir")
NS = "weir-system"
ADMIN = "admin-token-cluster"
HOST = "api.example.com"
# Kubernetes 1.20 refuses a LoadBalancer Service with TCP and UDP on one port (mixed protocols
# are beta from 1.24), so the runner plays the load balancer: the client reaches the Service's
# cluster address through the node, as an external client reaches a load balancer address.
BASE_VALUES = {"dataplane": {"service": {"type": "ClusterIP"}}}


class Cluster:
    def __init__(self, tmp, bindir):
        self.tmp, self.bindir = tmp, bindir
        self.runner = Runner(tmp, None, images_from(ROOT, bindir), log=lambda m: print(f"     {m}", flush=True))
        self.procs = Procs(tmp)
        self.kc = f"{tmp}/admin.kubeconfig"
        self.helm = None
        self.vip = None
        self.failures = []

    def check(self, ok, msg):
        """A failed check is recorded and reported at the end; the scenarios go on."""
        if not ok:
            self.failures.append(msg)
            print(f"FAIL {msg}", flush=True)
        return ok

    def k(self, *args, **kw):
        return kubectl(self.kc, *args, **kw)

    def up(self):
        r = self.runner
        gone = remove_stale_namespaces()
        if gone:
            print(f"     removed namespaces of an earlier runner that was killed: {gone}")
        r.setup_node()
        cp = ControlPlane(self.procs, self.tmp, os.environ["WEIR_E2E_APISERVER"], os.environ.get("WEIR_E2E_ETCD", "etcd"),
                          [(ADMIN, "admin", ["system:masters"])], bind="0.0.0.0", advertise=r.node_ip)
        write_kubeconfig(self.kc, cp.server, ADMIN)
        version, secs = cp.wait_ready(self.kc)
        print(f"ok   kube-apiserver {version} ready in {secs:.1f}s in node namespace {r.node_ns} ({r.node_ip})")
        r.api = Api(cp.server, ADMIN)
        r.apiserver_port = cp.port
        r.ca_file = cp.ca_file()
        eventually("the kubernetes Service", lambda: r.api.get_or_none("/api/v1/namespaces/default/services/kubernetes"), 60)
        r.start()
        # Helm's Go runtime starts threads when loaded: import it only now, inside the node namespace.
        import helm_python as helm
        self.helm = helm.Config(kubeconfig_path=self.kc, namespace=NS)
        self.k("create", "namespace", NS)
        rel = self.helm.install(CHART, "weir", BASE_VALUES, namespace=NS, timeout=60)
        print(f"ok   helm install weir charts/weir ({rel.get('manifest', '').count('kind:')} objects)")
        for f in sorted(os.listdir(f"{ROOT}/manifests/examples")):
            if f[:2] in ("01", "02", "03", "04"):
                self.k("apply", "-f", f"{ROOT}/manifests/examples/{f}")
        self.k("apply", "-f", f"{ROOT}/tests/cluster/demo-backends.yaml")
        print("ok   kubectl apply manifests/examples/01..04 and tests/cluster/demo-backends.yaml")
        t0 = time.time()
        for ns, d, n in [(NS, "weir-operator", 2), (NS, "weir-dataplane", 2), ("shop", "api", 2), ("shop", "api-canary", 2)]:
            eventually(f"{ns}/{d}: {n} ready pods", lambda: len(r.ready_pods(ns, d)) == n, 90)
        print(f"ok   all pods ready in {time.time() - t0:.1f}s:")
        print(indent(self.k("get", "pods", "-A", "-o", "wide")))
        self.vip = r.api.get(f"/api/v1/namespaces/{NS}/services/weir-dataplane")["spec"]["clusterIP"]

    def down(self):
        self.runner.shutdown()
        self.procs.stop_all()

    # Clients in the client namespace -----------------------------------------------------
    def curl(self, *args):
        r = self.runner.client("curl", "-sS", "--max-time", "10", *args)
        if r.returncode:
            raise RuntimeError(f"curl {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def bench_once(self, url, proto, connect):
        r = self.runner.client(f"{self.bindir}/weir-bench", "-n", "1", "-v", "-p", proto, "-k", "--connect-to", connect, url)
        if r.returncode:
            raise RuntimeError(f"weir-bench -p {proto} {url} via {connect}: exit {r.returncode}: {r.stdout[-500:]}{r.stderr[-500:]}")
        return r.stdout

    def gtls(self, path):
        d = tempfile.mkdtemp(dir=self.tmp)
        r = self.runner.client("gtlsclient", "--exit-on-all-streams-close", "--quiet", f"--download={d}",
                               self.vip, "443", f"https://{HOST}{path}", timeout=30)
        name = os.path.basename(path) or "index.html"
        body = open(os.path.join(d, name)).read() if os.path.exists(os.path.join(d, name)) else ""
        if r.returncode or not body:
            raise RuntimeError(f"gtlsclient {self.vip} 443 https://{HOST}{path}: exit {r.returncode}, body {body!r}: {r.stderr[-800:]}")
        return body

    def load(self, url, proto, connect, secs, conns, streams=1):
        args = [f"{self.bindir}/weir-bench", "-p", proto, "-c", str(conns), "-m", str(streams), "-d", f"{secs}s",
                "-k", "--connect-to", connect, "--json", url]
        return self.runner.client_popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def indent(text):
    return "\n".join("     " + ln for ln in text.rstrip().splitlines())


def bench_report(p, what):
    out, err = p.communicate(timeout=300)
    try:
        rep = json.loads(out)
    except ValueError:
        raise RuntimeError(f"{what}: weir-bench printed no report (exit {p.returncode}): {out[-500:]}{err[-500:]}") from None
    return rep


def counts(rep):
    """(sent, failed) from a weir-bench JSON report."""
    ok = rep.get("requests", 0)
    errors = rep.get("errors") or {}
    failed = sum(errors.values()) if isinstance(errors, dict) else int(errors)
    statuses = rep.get("statuses") or {}
    bad = sum(v for k, v in statuses.items() if not str(k).startswith("2"))
    return ok + failed, failed + bad, rep


# Scenarios ---------------------------------------------------------------------------------
def traffic(c):
    """HTTP/1.1 on 80, HTTP/2 on 443/TCP, HTTP/3 on 443/UDP through the Service address."""
    r = c.runner
    print(f"     client namespace {r.client_ns} ({r.client_ip}) -> Service weir-system/weir-dataplane {c.vip}")

    def routed():
        body = c.curl("-H", f"Host: {HOST}", f"http://{c.vip}/v1/hello")
        return json.loads(body)
    got = eventually("HTTP/1.1 through the Service reaches an api pod", routed, 90)
    print(f"ok   HTTP/1.1 http://{c.vip}:80/v1/hello (Host {HOST}) -> {got.get('server')} saw {got.get('uri')}")
    hdrs = c.curl("--http2", "-k", "-D", "-", "-o", "/dev/null", "--resolve", f"{HOST}:443:{c.vip}", f"https://{HOST}/v1/hello")
    status = hdrs.splitlines()[0] if hdrs else ""
    if not status.startswith("HTTP/2 200"):
        raise RuntimeError(f"HTTP/2 on {c.vip}:443: {status!r}")
    alt = next((ln.split(":", 1)[1].strip() for ln in hdrs.splitlines() if ln.lower().startswith("alt-svc:")), "")
    print(f"ok   HTTP/2 https://{HOST}/v1/hello via {c.vip}:443/TCP -> {status.strip()}, Alt-Svc: {alt}")
    m = re.search(r'h3=":(\d+)"', alt)
    if c.check(m and m.group(1) == "443", f"Alt-Svc must name the Service port 443 (clients connect there), got {alt!r}"):
        print("ok   Alt-Svc names 443, the port clients reach over UDP")
    body = json.loads(c.gtls("/v1/hello"))
    print(f"ok   HTTP/3 (gtlsclient, ngtcp2) {c.vip}:443/UDP -> {body.get('server')} saw {body.get('uri')}")
    out = c.bench_once(f"https://{HOST}/v1/hello", "h3", f"{c.vip}:443")
    print(f"ok   HTTP/3 (weir-bench) {c.vip}:443/UDP -> {out.splitlines()[0] if out else ''}")

    def programmed():
        out = c.k("get", "proxyroutes,backends", "-A")
        api_route = next((ln for ln in out.splitlines() if "proxyroute.weir.dev/api " in ln), "")
        return out if (" True " in api_route and "4/4" in api_route) else None
    out = eventually("kubectl get proxyroutes: api Programmed True, 4/4 healthy", programmed, 90)
    print("ok   kubectl get proxyroutes,backends -A:")
    print(indent(out))


def rolling_update(c):
    """helm upgrade changing the dataplane pod template under HTTP/1.1 + HTTP/3 load: 0 failures."""
    r = c.runner
    before = {p.name for p in r.pods_of(NS, "weir-dataplane")}
    secs = 45
    h1 = c.load(f"http://{HOST}/v1/load", "h1", f"{c.vip}:80", secs, 4)
    h3 = c.load(f"https://{HOST}/v1/load", "h3", f"{c.vip}:443", secs, 2, 4)
    time.sleep(3)
    t0 = time.time()
    vals = json.loads(json.dumps(BASE_VALUES))
    vals["dataplane"]["podAnnotations"] = {"weir.dev/rollout": str(int(t0))}
    c.helm.upgrade(CHART, "weir", vals, namespace=NS, timeout=60)
    print("     helm upgrade (dataplane.podAnnotations changed) under load")

    def rolled():
        now = r.pods_of(NS, "weir-dataplane")
        with r.lock:
            terminating = [p for p in r.pods.values() if p.owner == f"{NS}/weir-dataplane" and p.terminating]
        return len(now) == 2 and not ({p.name for p in now} & before) and all(p.ready for p in now) and not terminating
    eventually("the rollout to finish", rolled, secs + 60)
    print(f"ok   rollout finished in {time.time() - t0:.1f}s: {sorted(p.name for p in r.pods_of(NS, 'weir-dataplane'))}")
    s1, f1, rep1 = counts(bench_report(h1, "HTTP/1.1 load"))
    s3, f3, rep3 = counts(bench_report(h3, "HTTP/3 load"))
    print(f"     HTTP/1.1 through {c.vip}:80: {s1} sent, {f1} failed; HTTP/3 through {c.vip}:443/UDP: {s3} sent, {f3} failed")
    if f1 or f3 or not s1 or not s3:
        raise RuntimeError(f"rolling update: failed requests (HTTP/1.1 {rep1.get('errors')} {rep1.get('statuses')}; "
                           f"HTTP/3 {rep3.get('errors')} {rep3.get('statuses')})")
    print("ok   rolling update under load: 0 failed requests")


SCENARIOS = [("traffic", traffic), ("rolling-update", rolling_update)]


def main():
    if os.geteuid() != 0:
        print("cluster: needs root (network namespaces, mounts, nftables)", file=sys.stderr)
        return 1
    bindir = os.environ["WEIR_CLUSTER_BIN_DIR"]
    only = [s for s in os.environ.get("WEIR_CLUSTER_ONLY", "").split(",") if s]
    tmp = tempfile.mkdtemp(prefix="weir-cluster-")
    c = Cluster(tmp, bindir)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ok = False
    t_start = time.time()
    try:
        c.up()
        for name, fn in SCENARIOS:
            if only and name not in only:
                continue
            t0 = time.time()
            print(f"---- {name}", flush=True)
            fn(c)
            print(f"     ({name}: {time.time() - t0:.1f}s)", flush=True)
        for f in c.failures:
            print(f"FAIL {f}", file=sys.stderr)
        ok = not c.failures
    except KeyboardInterrupt as e:
        print(f"FAIL interrupted ({e or 'Ctrl-C'}); cleaning up", file=sys.stderr)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {e}", file=sys.stderr)
        for name in c.procs.names():
            print(f"--- {name} log (tail)\n{c.procs.tail(name)}", file=sys.stderr)
        for pod in list(c.runner.pods.values()):
            for ctr in pod.containers:
                try:
                    lines = open(ctr.log).readlines()[-15:]
                except OSError:
                    lines = []
                print(f"--- pod {pod.name} container {ctr.name} log (tail)\n{''.join(lines)}", file=sys.stderr)
    finally:
        if os.environ.get("WEIR_CLUSTER_KEEP") == "1" and sys.stdin.isatty():
            input(f"cluster kept (kubeconfig {c.kc}); Enter to clean up ")
        # Cleanup must not be cut short by a second Ctrl-C.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        c.down()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cluster: {'passed' if ok else 'FAILED'} in {time.time() - t_start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
