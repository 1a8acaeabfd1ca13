#!/usr/bin/env python3
"""make chart-dryrun: the chart against the e2e harness's real kube-apiserver (v1.20) + etcd.

1. starts etcd and kube-apiserver on loopback (token auth, RBAC) in a temp dir;
2. installs permissive CRDs for monitoring.coreos.com (ServiceMonitor, PrometheusRule);
3. `helm install --dry-run=server` (real Helm library, cluster-aware: capabilities and lookup
   come from the API server) with every switch on, then a real install, then an upgrade that
   must keep the generated admin token;
4. runs weir-operator authenticated as a token user bound only to the chart's ClusterRole and
   Role, applies manifests/examples, and waits until it leads, writes the snapshot Secret,
   status and events, and recreates a deleted Secret: the chart's RBAC is sufficient;
5. removes one verb (patch on */status) and checks the operator reports the failure clearly;
6. runs weir-dataplane with traffic (h1, h2, h3, a sink) and checks every metric the dashboards
   and alerts use appears in its real scrape or the operator's.
Needs WEIR_E2E_APISERVER, WEIR_E2E_ETCD and WEIR_E2E_BIN_DIR (set by scripts/chart-dryrun.sh).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import helm_python as helm
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
CHART = os.path.join(ROOT, "charts", "weir")
NS = "weir-system"
ADMIN, OP = "admin-token-e2e", "operator-token-e2e"


sys.path.insert(0, os.path.dirname(__file__))
from kubeharness import ControlPlane, Procs, eventually, free_port, write_kubeconfig  # noqa: E402
from kubeharness import kubectl  # noqa: E402,F401 - used below

procs = None


def spawn(name, args, tmp, env=None):
    return procs.spawn(name, args, env)


def tail(tmp, name, n=30):
    return procs.tail(name, n)


def kubeconfig(path, port, token):
    write_kubeconfig(path, f"https://127.0.0.1:{port}", token)


def snapshot_text(kc, check=True):
    """The snapshot the operator wrote into the chart's Secret (base64 in .data)."""
    import base64
    b64 = kubectl(kc, "-n", NS, "get", "secret", "weir-snapshot", "-o", "jsonpath={.data.snapshot\\.json}", check=check)
    try:
        return base64.b64decode(b64).decode()
    except ValueError:
        return ""


PERMISSIVE = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.monitoring.coreos.com}}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{plural: {plural}, singular: {singular}, kind: {kind}, listKind: {kind}List}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


SCRAPE_SNAPSHOT = """
listeners:
  - {{ name: http, address: "127.0.0.1:{h}", protocol: http }}
  - {{ name: https, address: "127.0.0.1:{s}", protocol: https }}
backends:
  b:
    endpoints: ["127.0.0.1:{e}"]
    healthCheck: {{ http: {{ path: /healthz }}, interval: 1s }}
    outlierDetection: {{}}
    circuitBreaker: {{}}
    maxConcurrentRequests: 100
    retries: {{ attempts: 2 }}
  dead:
    endpoints: ["127.0.0.1:{d}"]
    retries: {{ attempts: 2 }}
routes:
  - name: r
    rules:
      - matches: [{{ path: {{ type: PathPrefix, value: /dead }} }}]
        backendRefs: [{{ name: dead }}]
      - backendRefs: [{{ name: b }}]
sinks:
  s: {{ type: httpJson, endpoint: "http://127.0.0.1:{e}/ingest", flushInterval: 1s }}
"""
# Families a short run cannot produce (they need overload); their names are still checked
# against docs/metrics.md by chart-check.
UNEXERCISED = {"weir_downstream_connections_rejected_total", "weir_backend_concurrency_rejected_total"}


def scrape_names(text):
    names = set()
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            n = ln.split("{")[0].split()[0]
            names.add(n)
            names.add(re.sub(r"_(bucket|sum|count)$", "", n))
    return names


def real_scrape(tmp, bindir, operator_metrics):
    """Dashboard and alert queries against what the binaries really export."""
    e, h, s_, a, d = free_port(), free_port(), free_port(), free_port(), free_port()
    spawn("echo", [f"{bindir}/weir-echo", "--listen", f"127.0.0.1:{e}"], tmp)
    open(f"{tmp}/scrape.yaml", "w").write(SCRAPE_SNAPSHOT.format(h=h, s=s_, e=e, d=d))
    spawn("dataplane", [f"{bindir}/weir-dataplane", "--config", f"{tmp}/scrape.yaml",
                        "--admin-address", f"127.0.0.1:{a}"], tmp)
    eventually("dataplane ready", lambda: urllib.request.urlopen(f"http://127.0.0.1:{a}/readyz", timeout=2).status == 200, 30)
    for path in ["/x"] * 5 + ["/dead"] * 2:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{h}{path}", timeout=5).read()
        except Exception:  # noqa: BLE001 - /dead answers 502
            pass
    for flag in ("--http1.1", "--http2"):
        subprocess.run(["curl", "-sk", flag, "-o", "/dev/null", f"https://127.0.0.1:{s_}/x"], timeout=10)
    subprocess.run([f"{bindir}/weir-bench", "-n", "1", "-p", "h3", "-k", f"https://127.0.0.1:{s_}/x"],
                   capture_output=True, timeout=20)
    sys.path.insert(0, os.path.dirname(__file__))
    import chart_check
    refs = set()
    for f in glob.glob(os.path.join(CHART, "dashboards", "*.json")):
        for p in json.load(open(f))["panels"]:
            for t in p["targets"]:
                refs |= chart_check.metric_refs(t["expr"])
    rules = helm.Chart.load(CHART).render({"prometheusRule": {"enabled": True}}, name="weir", namespace=NS)
    for g in yaml.safe_load(rules["weir/templates/prometheusrule.yaml"])["spec"]["groups"]:
        for r in g["rules"]:
            refs |= chart_check.metric_refs(r["expr"])
    refs = {re.sub(r"_(bucket|sum|count)$", "", m) for m in refs}

    def missing_now():
        text = urllib.request.urlopen(f"http://127.0.0.1:{a}/metrics", timeout=5).read().decode()
        seen = scrape_names(text) | scrape_names(operator_metrics)
        return sorted(m for m in refs - seen if m not in UNEXERCISED)

    # Health checks (1s) and the sink flush (1s) produce some families after a while: scrape
    # until they are all there (or a generous deadline passes) instead of sleeping a fixed time.
    started = time.time()
    missing = missing_now()
    while missing and time.time() - started < 60:
        time.sleep(0.5)
        missing = missing_now()
    if missing:
        raise RuntimeError(f"dashboard/alert metrics absent from a real scrape of weir-dataplane and weir-operator: {missing}")
    print(f"ok   {len(refs)} metrics used by dashboards and alerts appear in a real scrape "
          f"(except {sorted(UNEXERCISED & refs)}, which need overload)")


def main():
    apiserver = os.environ["WEIR_E2E_APISERVER"]
    etcd = os.environ.get("WEIR_E2E_ETCD", "etcd")
    bindir = os.environ["WEIR_E2E_BIN_DIR"]
    tmp = tempfile.mkdtemp(prefix="weir-chart-dryrun-")
    ok = False
    try:
        global procs
        procs = Procs(tmp)
        cp = ControlPlane(procs, tmp, apiserver, etcd, [(ADMIN, "admin", ["system:masters"]), (OP, "weir-op", [])])
        aport = cp.port
        kc, opkc = f"{tmp}/admin.kubeconfig", f"{tmp}/operator.kubeconfig"
        kubeconfig(kc, aport, ADMIN)
        kubeconfig(opkc, aport, OP)
        version, secs = cp.wait_ready(kc)
        print(f"ok   kube-apiserver {version} ready in {secs:.1f}s")

        for plural, singular, kind in [("servicemonitors", "servicemonitor", "ServiceMonitor"),
                                       ("prometheusrules", "prometheusrule", "PrometheusRule")]:
            kubectl(kc, "apply", "-f", "-", input=PERMISSIVE.format(plural=plural, singular=singular, kind=kind))
        kubectl(kc, "create", "namespace", NS)
        eventually("monitoring CRDs established", lambda: "servicemonitors" in kubectl(kc, "api-resources", "--api-group=monitoring.coreos.com"), 30)

        cfg = helm.Config(kubeconfig_path=kc, namespace=NS)
        values = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                  "dashboards": {"enabled": True}, "dataplane": {"autoscaling": {"enabled": True}}}
        # Kubernetes 1.20 has no mixed-protocol LoadBalancer Services (beta in 1.24).
        v120 = dict(values, dataplane={"autoscaling": {"enabled": True}, "service": {"type": "NodePort"}})
        rel = cfg.install(CHART, "weir", v120, namespace=NS, dry_run="server")
        print(f"ok   helm install --dry-run=server (every switch on): {rel.get('manifest', '').count('kind:')} kinds rendered, accepted by the API server")
        rel = cfg.install(CHART, "weir", v120, namespace=NS, timeout=60)
        notes = rel.get("notes") or ""
        if "Service weir-dataplane" not in notes:
            raise RuntimeError(f"helm install shows no usable NOTES.txt: {notes!r}")
        print(f"ok   helm install shows NOTES.txt ({len(notes.splitlines())} lines)")
        print("ok   helm install (real), objects in the release namespace:")
        objs = kubectl(kc, "-n", NS, "get", "deploy,svc,cm,secret,pdb,hpa,networkpolicy,role,rolebinding,servicemonitor,prometheusrule", "-o", "name")
        print("     " + " ".join(sorted(objs.split())))
        tok1 = kubectl(kc, "-n", NS, "get", "secret", "weir-admin-token", "-o", "jsonpath={.data.token}")
        cfg.upgrade(CHART, "weir", v120, namespace=NS, timeout=60)
        tok2 = kubectl(kc, "-n", NS, "get", "secret", "weir-admin-token", "-o", "jsonpath={.data.token}")
        if not tok1 or tok1 != tok2:
            raise RuntimeError("helm upgrade changed the generated admin token")
        print("ok   helm upgrade keeps the generated admin token")

        # The operator as a token user with exactly the chart's roles.
        kubectl(kc, "create", "clusterrolebinding", "weir-op-e2e", "--clusterrole=weir-operator", "--user=weir-op")
        kubectl(kc, "-n", NS, "create", "rolebinding", "weir-op-e2e", "--role=weir-operator", "--user=weir-op")
        listeners = kubectl(kc, "-n", NS, "get", "cm", "weir-operator-listeners", "-o", "jsonpath={.data.listeners\\.yaml}")
        open(f"{tmp}/listeners.yaml", "w").write(listeners)
        open(f"{tmp}/token", "w").write("x")
        mport = free_port()
        env = dict(os.environ, KUBECONFIG=opkc, RUST_LOG="info,weir_operator::controller=debug")
        for k in ("WEIR_ADMIN_TOKEN", "WEIR_WATCH_NAMESPACE", "WEIR_NAMESPACE"):
            env.pop(k, None)
        spawn("operator", [f"{bindir}/weir-operator", "run", "--namespace", NS,
                           "--dataplane-selector", "app.kubernetes.io/name=weir-dataplane,app.kubernetes.io/instance=weir",
                           "--admin-token-file", f"{tmp}/token", "--listeners", f"{tmp}/listeners.yaml",
                           "--lease-duration", "4s", "--lease-retry", "1s", "--identity", "op-e2e",
                           "--metrics-address", f"127.0.0.1:{mport}"], tmp, env)
        for f in sorted(os.listdir(f"{ROOT}/manifests/examples")):
            if not f.startswith("05-"):
                kubectl(kc, "apply", "-f", f"{ROOT}/manifests/examples/{f}")

        def metrics():
            return urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2).read().decode()

        eventually("operator leads (weir_operator_leader 1)", lambda: "weir_operator_leader 1" in metrics(), 60)
        print("ok   operator (chart RBAC only) holds the Lease")
        eventually("snapshot Secret written by the operator",
                   lambda: "shop/api" in snapshot_text(kc), 60)
        print("ok   operator wrote the last-known-good snapshot into the chart's Secret")
        eventually("ProxyRoute status written", lambda: "Accepted" in kubectl(kc, "-n", "shop", "get", "proxyroute", "api", "-o", "jsonpath={.status.conditions[*].type}"), 60)
        eventually("Backend status written", lambda: "Ready" in kubectl(kc, "-n", "shop", "get", "backend", "api", "-o", "jsonpath={.status.conditions[*].type}"), 60)
        print("ok   operator wrote ProxyRoute and Backend status")
        try:
            ev = eventually("events from the operator", lambda: len(json.loads(kubectl(kc, "get", "--raw", "/apis/events.k8s.io/v1/events"))["items"]), 30)
        except RuntimeError:
            print("\n".join(ln for ln in tail(tmp, "operator", 10000).splitlines() if "event" in ln.lower())[:3000], file=sys.stderr)
            raise
        print(f"ok   operator published {ev} events (events.k8s.io)")
        # The Gateway API with the chart's RBAC: once the upstream CRDs appear (the v1.20 copy
        # in ../shared, when there), the operator watches them and writes a GatewayClass status.
        gw_crds = os.path.join(ROOT, "..", "shared", "gateway-api", "v1.6.1", "crds-for-k8s-1.20")
        if os.path.isdir(gw_crds):
            for f in sorted(glob.glob(f"{gw_crds}/*.yaml")):
                kubectl(kc, "apply", "--server-side", "-f", f)
            cls = ("apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weir}\n"
                   "spec: {controllerName: weir.dev/gateway-controller}\n")
            open(f"{tmp}/gatewayclass.yaml", "w").write(cls)
            eventually("GatewayClass created", lambda: kubectl(kc, "apply", "-f", f"{tmp}/gatewayclass.yaml") or True, 30)
            eventually("GatewayClass Accepted by the operator (chart RBAC)",
                       lambda: "True" in kubectl(kc, "get", "gatewayclass", "weir", "-o",
                                                 "jsonpath={.status.conditions[?(@.type=='Accepted')].status}"), 60)
            print("ok   Gateway API CRDs picked up; GatewayClass status written with the chart's RBAC")
        else:
            print("skip Gateway API RBAC: no ../shared/gateway-api (the upstream CRDs)")
        log = tail(tmp, "operator", 10000)
        forbidden = [line for line in log.splitlines() if "forbidden" in line.lower()]
        if forbidden:
            raise RuntimeError("operator hit RBAC denials with the chart's roles:\n" + "\n".join(forbidden[:10]))
        print("ok   no RBAC denial in the operator's log")

        # The Secret deleted behind the operator's back: the operator's server-side apply
        # recreates it (authorized as create, which the Role grants).
        kubectl(kc, "-n", NS, "delete", "secret", "weir-snapshot")
        kubectl(kc, "-n", "shop", "patch", "proxyroute", "checkout", "--type=merge", "-p", '{"spec":{"hostnames":["shop2.example.com"]}}')
        eventually("snapshot Secret recreated",
                   lambda: "shop2.example.com" in snapshot_text(kc, check=False), 60)
        print("ok   a deleted snapshot Secret is recreated (server-side apply of a missing object is authorized as create)")

        # Remove one verb: patch on */status. The operator must say so.
        cr = json.loads(kubectl(kc, "get", "clusterrole", "weir-operator", "-o", "json"))
        cr["rules"] = [r for r in cr["rules"] if not any(x.endswith("/status") for x in r["resources"])]
        cr["metadata"] = {"name": "weir-operator"}
        kubectl(kc, "replace", "-f", "-", input=json.dumps(cr))
        kubectl(kc, "-n", "shop", "patch", "proxyroute", "checkout", "--type=merge", "-p", '{"spec":{"hostnames":["checkout.example.com"]}}')
        line = eventually("the operator reports the denied status write",
                          lambda: next((ln for ln in tail(tmp, "operator", 10000).splitlines()
                                        if "status write failed" in ln and "forbidden" in ln.lower()), None), 60)
        eventually("weir_operator_status_write_errors_total > 0",
                   lambda: any(ln.startswith("weir_operator_status_write_errors_total ") and float(ln.split()[1]) > 0 for ln in metrics().splitlines()), 30)
        print("ok   without patch on */status the operator logs: " + line.strip()[:300])
        real_scrape(tmp, bindir, metrics())
        ok = True
    except Exception as e:  # noqa: BLE001
        print(f"FAIL {e}", file=sys.stderr)
        for name in (procs.names() if procs else []):
            print(f"--- {name} log (tail)\n{tail(tmp, name)}", file=sys.stderr)
    finally:
        if procs:
            procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"chart-dryrun: {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
