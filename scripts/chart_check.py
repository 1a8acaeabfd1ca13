#!/usr/bin/env python3
"""Checks charts/weir (run through scripts/chart-check.sh, which sets up the venv).

  chart-check.sh             every check below; exit 1 on any failure
  chart-check.sh --write     regenerate what is derived (make manifests): chart CRDs, dashboards,
                             manifests/install.yaml

Checks: chart crds/ byte-identical to crds/; `helm lint --strict` and render for every values
combination in COMBOS (real Helm library via helm-python-sdk); kubernetes-validate (strict) on
every rendered object for the lowest and the newest Kubernetes schema it ships; the restricted
security context on every pod; `promtool check rules` + `promtool test rules` (a test per alert);
every dashboard and alert query parses (promtool) and names only metrics documented in
docs/metrics.md or exported by operator/src/metrics.rs; manifests/install.yaml and the
dashboards are fresh; manifests/examples/*.yaml validate against the CRD schemas; the chart's
bootstrap snapshot passes `weir-dataplane check` (when the binary is built).
"""
import base64
import copy
import filecmp
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

from kubeharness import free_port

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
CHART = os.path.join(ROOT, "charts", "weir")
NS = "weir-system"
RELEASE = "weir"

# Documented switch combinations (charts/weir/README.md). Each is linted and rendered.
COMBOS = {
    "default": {},
    "daemonset": {"dataplane": {"kind": "DaemonSet"}},
    "autoscaling": {"dataplane": {"autoscaling": {"enabled": True}}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "dashboards": {"enabled": True},
                   "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
                       "kubernetes.io/metadata.name": "monitoring"}}}]}},
    "sidecar": {"sidecar": {"enabled": True}},
    "no-dataplane": {"dataplane": {"kind": "none"}},
    "plain-http-clusterip": {"dataplane": {"listeners": {"https": {"enabled": False}},
                                           "service": {"type": "ClusterIP"}}},
    "tls-nodeport-no-h3": {"dataplane": {"tls": {"secretName": "weir-tls"},
                                         "listeners": {"https": {"http3": False}},
                                         "service": {"type": "NodePort",
                                                     "externalTrafficPolicy": "Local"}}},
    "existing-secret-watch-ns-no-netpol": {
        "dataplane": {"admin": {"existingSecret": "my-token"}},
        "operator": {"watchNamespace": "shop", "replicas": 1},
        "networkPolicy": {"enabled": False}},
    "injector": {"injector": {"enabled": True}},
    "injector-cert-manager-fail": {"injector": {"enabled": True, "failurePolicy": "Fail",
                                                "certManager": {"enabled": True},
                                                "inboundProtocol": "https", "nativeSidecar": True}},
    "no-gateway-api": {"gatewayAPI": {"enabled": False}},
    "everything": {"dataplane": {"autoscaling": {"enabled": True}, "tls": {"secretName": "t"}},
                   "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "dashboards": {"enabled": True}},
}
# What manifests/install.yaml is rendered with: no generated secret (a token must never be
# published), so the README has users create `weir-admin-token` first.
MANIFEST_VALUES = {"dataplane": {"admin": {"existingSecret": "weir-admin-token"}}}

KIND_ORDER = ["Namespace", "NetworkPolicy", "CustomResourceDefinition", "ServiceAccount",
              "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
              "Service", "DaemonSet", "Deployment", "HorizontalPodAutoscaler",
              "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"]

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def ok(msg):
    print(f"ok   {msg}")


def check_gateway_switch(name, docs, on):
    """gatewayAPI.enabled: the operator's Gateway API RBAC and --gateway-api flag follow it."""
    rules = [r for _, d in docs if d.get("kind") == "ClusterRole"
             for r in d.get("rules", []) if "gateway.networking.k8s.io" in r.get("apiGroups", [])]
    args = [a for _, d in docs if d.get("kind") == "Deployment" and "operator" in d["metadata"]["name"]
            for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])]
    want_flag = f"--gateway-api={'true' if on else 'false'}"
    has_status = any("gateways/status" in r.get("resources", []) for r in rules)
    if bool(rules) != on or has_status != on or want_flag not in args \
            or any(a.startswith("--dataplane-service=") for a in args) != on:
        fail(f"gatewayAPI [{name}]: RBAC rules {len(rules)}, args {args}")
    else:
        ok(f"gatewayAPI [{name}]: RBAC and operator flags follow gatewayAPI.enabled={on}")


def render(values, notes=None):
    """The rendered objects as (template path, document); `notes` (a list) receives NOTES.txt."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name=RELEASE, namespace=NS, is_install=True)
    docs = []
    for path in sorted(out):
        if path.endswith("/NOTES.txt"):
            if notes is not None:
                notes.append(out[path])
            continue
        for d in yaml.safe_load_all(out[path]):
            if d:
                docs.append((path, d))
    return docs


def check_notes(name, notes, docs):
    """NOTES.txt (shown after `helm install`) names the dataplane Service and its ports exactly
    when the chart renders that Service, and the operator always."""
    if len(notes) != 1 or "{{" in notes[0]:
        fail(f"NOTES.txt [{name}]: not rendered once ({len(notes)} copies)")
        return
    text = notes[0]
    svc = [d for _, d in docs if d.get("kind") == "Service"
           and d["metadata"]["name"].endswith("-dataplane")]
    want = [f"Operator: {RELEASE}-operator"]
    if svc:
        name_ = svc[0]["metadata"]["name"]
        want.append(f"Service {name_}")
        want.append(f"{name_}.{NS}.svc:")
        want += [f"-> port {p['port']}" for p in svc[0]["spec"]["ports"] if p["protocol"] == "TCP"]
    missing = [w for w in want if w not in text]
    extra = "Service " in text and not svc
    if missing or extra:
        fail(f"NOTES.txt [{name}]: missing {missing}" + (" / names a Service the chart does not render" if extra else ""))
    else:
        ok(f"NOTES.txt [{name}]: {len(text.splitlines())} lines, names {len(want)} expected items")


def client_ports(svc, nodeport_fixed):
    """(protocol, port) -> the port a client outside the pod connects to for that Service port."""
    out = {}
    for p in svc["spec"]["ports"]:
        port = p.get("nodePort") if svc["spec"]["type"] == "NodePort" and nodeport_fixed else p["port"]
        out[(p["protocol"], p["name"])] = port
    return out


def check_advertised_port():
    """Over every Service type, fixed node port or not, and the https/http3 switches: the port
    the https listener's Alt-Svc names (operator ConfigMap and bootstrap snapshot alike) is the
    UDP port clients connect to, that UDP Service port exists and targets the listener's port,
    and values that cannot work fail the install naming the value."""
    n = 0
    for stype in ("ClusterIP", "NodePort", "LoadBalancer"):
        for node_port in (None, 30443):
            for https in (True, False):
                for http3 in (None, True, False):
                    for svc_port in (443, 8443):
                        values = {"dataplane": {"listeners": {"https": {"enabled": https, "http3": http3}},
                                                "service": {"type": stype, "ports": {"https": svc_port},
                                                            "nodePorts": {"https": node_port}}}}
                        name = f"advertised-port {stype} nodePort={node_port} https={https} http3={http3} port={svc_port}"
                        if http3 is True and not https:
                            expect_render_failure(name, values, "dataplane.listeners.https.http3")
                            continue
                        try:
                            docs = render(values)
                        except helm.HelmError as e:
                            fail(f"[{name}]: {e}")
                            continue
                        n += 1
                        check_listener_ports(name, docs, https and http3 is not False,
                                             stype == "NodePort" and node_port is not None)
    for bad, value in ((70000, "advertisedPort"), (-1, "advertisedPort"), ("on", "advertisedPort")):
        expect_render_failure(f"advertisedPort={bad!r}",
                              {"dataplane": {"listeners": {"https": {"advertisedPort": bad}}}}, value)
    for explicit, want in ((9443, 9443), (0, 0), ("off", 0)):
        docs = render({"dataplane": {"listeners": {"https": {"advertisedPort": explicit}}}})
        got = {rendered_listeners(d).get("advertisedPort") for d in listener_docs(docs)}
        if got != {want}:
            fail(f"advertisedPort={explicit!r}: listeners advertise {got}, want {want}")
    docs = render({"sidecar": {"enabled": True}})
    got = {rendered_listeners(d).get("advertisedPort", "unset") for d in listener_docs(docs)}
    if got != {"unset"}:
        fail(f"sidecar mode (no Service): advertisedPort should be unset (own port), got {got}")
    ok(f"Alt-Svc port = client UDP port in {n} Service/switch combinations; bad values refused")


def expect_render_failure(name, values, needle):
    try:
        render(values)
    except helm.HelmError as e:
        if needle in str(e):
            return
        fail(f"[{name}]: install fails, but the error does not name {needle}: {e}")
        return
    fail(f"[{name}]: renders, but cannot work; it must fail naming {needle}")


def listener_docs(docs):
    """The operator's listeners ConfigMap and the bootstrap snapshot Secret."""
    out = []
    for _, d in docs:
        if d["kind"] == "ConfigMap" and "listeners.yaml" in d.get("data", {}):
            out.append(yaml.safe_load(d["data"]["listeners.yaml"]))
        if d["kind"] == "Secret" and "snapshot.json" in d.get("stringData", {}):
            out.append(json.loads(d["stringData"]["snapshot.json"])["listeners"])
    return out


def rendered_listeners(listeners):
    """The https listener's http3 section ({} when there is none)."""
    https = [l for l in listeners if l["protocol"] == "https"]
    return (https[0].get("http3") or {}) if https else {}


def check_listener_ports(name, docs, h3_on, nodeport_fixed):
    lists = listener_docs(docs)
    svc = [d for _, d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-dataplane")]
    work = [d for _, d in docs if d["kind"] in ("Deployment", "DaemonSet") and "dataplane" in d["metadata"]["name"]]
    if len(lists) != 2 or len(svc) != 1 or len(work) != 1:
        fail(f"[{name}]: expected listeners in ConfigMap + snapshot, one Service, one workload; got {len(lists)}, {len(svc)}, {len(work)}")
        return
    ports = client_ports(svc[0], nodeport_fixed)
    udp = [p for p in svc[0]["spec"]["ports"] if p["protocol"] == "UDP"]
    container = {(p["protocol"], p["name"]): p["containerPort"]
                 for c in work[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    for listeners in lists:
        https = [l for l in listeners if l["protocol"] == "https"]
        h3 = rendered_listeners(listeners)
        if not h3_on:
            if udp or (https and h3.get("enabled", True)):
                fail(f"[{name}]: HTTP/3 off, yet UDP Service ports {udp} / listener http3 {h3}")
            continue
        listen_port = int(https[0]["address"].rsplit(":", 1)[1])
        if ports.get(("UDP", "h3")) is None or udp[0]["targetPort"] != "h3" or container.get(("UDP", "h3")) != listen_port:
            fail(f"[{name}]: UDP Service port {udp} does not reach the listener's UDP {listen_port} (container ports {container})")
        if h3.get("advertisedPort") != ports.get(("UDP", "h3")) or not h3.get("enabled"):
            fail(f"[{name}]: Alt-Svc advertises {h3.get('advertisedPort', listen_port)}, clients connect to UDP {ports.get(('UDP', 'h3'))}")


def check_crds():
    top = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "crds", "*.yaml")))
    mine = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CHART, "crds", "*.yaml")))
    if top != mine:
        fail(f"chart crds {mine} != crds/ {top}; run `make manifests`")
        return
    for f in top:
        if not filecmp.cmp(os.path.join(ROOT, "crds", f), os.path.join(CHART, "crds", f), shallow=False):
            fail(f"charts/weir/crds/{f} differs from crds/{f}; run `make manifests`")
            return
    ok(f"charts/weir/crds identical to crds/ ({len(top)} files)")


def check_lint(name, values):
    r = helm.lint(CHART, values or None, strict=True, namespace=NS)
    bad = [m for m in r["messages"] if m["severity"] >= 2] + [{"error": e} for e in r["errors"]]
    if bad:
        fail(f"helm lint --strict [{name}]: {bad}")
    else:
        ok(f"helm lint --strict [{name}]")


def check_security(name, docs):
    for path, d in docs:
        spec = d.get("spec", {})
        tpl = spec.get("template", {}).get("spec")
        if d["kind"] not in ("Deployment", "DaemonSet") or not tpl:
            continue
        psc = tpl.get("securityContext", {})
        for c in tpl.get("containers", []) + tpl.get("initContainers", []):
            sc = c.get("securityContext", {})
            probs = []
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                probs.append("runAsNonRoot")
            if not sc.get("readOnlyRootFilesystem"):
                probs.append("readOnlyRootFilesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                probs.append("allowPrivilegeEscalation: false")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                probs.append("capabilities drop [ALL], add none")
            if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                probs.append("seccompProfile RuntimeDefault")
            for p in ("livenessProbe", "readinessProbe"):
                if p not in c:
                    probs.append(p)
            if "resources" not in c:
                probs.append("resources")
            if probs:
                fail(f"[{name}] {d['kind']}/{d['metadata']['name']} container {c['name']}: missing {probs}")


def check_injector(name, docs, tmp):
    """The sidecar injector's objects fit together: the webhook calls the rendered Service on
    the operator's `injector` port, the caBundle is the CA that signed the mounted serving
    certificate (valid for the Service's DNS name), the settings file is what the operator
    reads (operator/src/inject/settings.rs), and the operator mounts both."""
    by = {(d["kind"], d["metadata"]["name"]): d for _, d in docs}
    hooks = [d for _, d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    if len(hooks) != 1:
        fail(f"[{name}] injector: {len(hooks)} MutatingWebhookConfigurations rendered, want 1")
        return
    hook = hooks[0]
    svc_name = hook["webhooks"][0]["clientConfig"]["service"]["name"]
    svc = by.get(("Service", svc_name))
    op = next((d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")), None)
    if svc is None or op is None:
        fail(f"[{name}] injector: Service {svc_name} or the operator Deployment not rendered")
        return
    c = op["spec"]["template"]["spec"]["containers"][0]
    if not any(p.get("name") == svc["spec"]["ports"][0]["targetPort"] for p in c.get("ports", [])):
        fail(f"[{name}] injector: Service {svc_name} targets a port the operator does not declare")
    args = " ".join(c.get("args", []))
    for want in ("--injector-address=", "--injector-tls-dir=/etc/weir/injector-tls", "--injector-settings=/etc/weir/injector/settings.json"):
        if want not in args:
            fail(f"[{name}] injector: operator args lack {want}")
    vols = {v["name"]: v for v in op["spec"]["template"]["spec"]["volumes"]}
    secret_name = vols.get("injector-tls", {}).get("secret", {}).get("secretName")
    cm_name = vols.get("injector-settings", {}).get("configMap", {}).get("name")
    cm = by.get(("ConfigMap", cm_name))
    if cm is None:
        fail(f"[{name}] injector: settings ConfigMap {cm_name} not rendered")
    else:
        settings = json.loads(cm["data"]["settings.json"])
        allowed = {"image", "imagePullPolicy", "containerName", "inboundPort", "adminPort", "outboundPort", "inboundProtocol",
                   "logLevel", "logFormat", "drainTimeout", "resources", "runAsUser", "nativeSidecar"}
        if set(settings) - allowed or not settings.get("image"):
            fail(f"[{name}] injector settings: unknown keys {set(settings) - allowed} or no image")
    for w in hook["webhooks"]:
        if w["failurePolicy"] not in ("Ignore", "Fail") or w["sideEffects"] != "None":
            fail(f"[{name}] injector: webhook {w['name']} failurePolicy/sideEffects")
    dns = f"{svc_name}.{NS}.svc"
    if "cert-manager.io/inject-ca-from" in hook["metadata"].get("annotations", {}):
        cert = by.get(("Certificate", svc_name))
        if cert is None or cert["spec"]["secretName"] != secret_name or dns not in cert["spec"]["dnsNames"]:
            fail(f"[{name}] injector: cert-manager Certificate does not issue {secret_name} for {dns}")
        if any("caBundle" in w["clientConfig"] for w in hook["webhooks"]):
            fail(f"[{name}] injector: caBundle rendered although cert-manager injects it")
        return
    sec = by.get(("Secret", secret_name))
    if sec is None:
        fail(f"[{name}] injector: Secret {secret_name} not rendered")
        return
    if any(w["clientConfig"].get("caBundle") != sec["data"]["ca.crt"] for w in hook["webhooks"]):
        fail(f"[{name}] injector: caBundle differs from the Secret's ca.crt")
    for k in ("ca.crt", "tls.crt"):
        with open(os.path.join(tmp, f"inj-{k}"), "wb") as f:
            f.write(base64.b64decode(sec["data"][k]))
    r = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(tmp, "inj-ca.crt"),
                        "-verify_hostname", dns, os.path.join(tmp, "inj-tls.crt")], capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"[{name}] injector: serving certificate does not verify for {dns}: {r.stdout}{r.stderr}")
    else:
        ok(f"[{name}] injector: webhook -> Service {svc_name} -> operator port, certificate valid for {dns}")


def check_validate(name, docs, versions):
    n = 0
    for path, d in docs:
        if d["apiVersion"].startswith(("monitoring.coreos.com/", "weir.dev/", "cert-manager.io/")):
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"[{name}] {path} {d['kind']}/{d['metadata'].get('name')} on {v}: {e.message} at {list(e.path)}")
            except Exception as e:  # SchemaNotFound etc.
                fail(f"[{name}] {path} {d['apiVersion']} {d['kind']} on {v}: {type(e).__name__} {e}")
        n += 1
    return n


def known_metrics():
    names = set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", open(os.path.join(ROOT, "docs", "metrics.md")).read(), re.M))
    src = open(os.path.join(ROOT, "operator", "src", "metrics.rs")).read()
    names |= set(re.findall(r'"(weir_operator_[a-z0-9_]+)"', src))
    return names


def metric_refs(expr):
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    return set(re.findall(r"\b((?:weir|process)_[a-z0-9_]+)\b", expr))


def check_metric_names(where, expr, known):
    for m in metric_refs(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m not in known and base not in known:
            fail(f"{where}: metric {m} is neither in docs/metrics.md nor in operator/src/metrics.rs")


def recorded_names(docs):
    """Series the chart's PrometheusRule records (`weir:…`)."""
    return {r["record"] for _, d in docs if d["kind"] == "PrometheusRule"
            for g in d["spec"]["groups"] for r in g["rules"] if "record" in r}


def check_recorded(where, expr, recorded):
    """A `weir:…` name in a query must be one the chart's recording rules produce."""
    for m in set(re.findall(r"\b(weir:[a-z0-9_:]+)", expr)):
        if m not in recorded:
            fail(f"{where}: {m} is not recorded by the chart's PrometheusRule")


def promtool(*args, cwd=None):
    p = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def check_rules(docs, known, tmp):
    rules = [d for _, d in docs if d["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        fail(f"expected one PrometheusRule with prometheusRule.enabled, got {len(rules)}")
        return
    spec = rules[0]["spec"]
    alerts = [r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r]
    recorded = recorded_names(docs)
    for g in spec["groups"]:
        for r in g["rules"]:
            where = f"alert {r['alert']}" if "alert" in r else f"record {r['record']}"
            check_metric_names(where, r["expr"], known)
            check_recorded(where, r["expr"], recorded)
    with open(os.path.join(tmp, "rules.yaml"), "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    shutil.copy(os.path.join(CHART, "tests", "alerts_test.yaml"), tmp)
    rc, out = promtool("check", "rules", "rules.yaml", cwd=tmp)
    if rc:
        fail(f"promtool check rules:\n{out}")
    else:
        ok(f"promtool check rules ({len(alerts)} alerts)")
    rc, out = promtool("test", "rules", "alerts_test.yaml", cwd=tmp)
    if rc:
        fail(f"promtool test rules:\n{out}")
    else:
        ok("promtool test rules")
    tests = yaml.safe_load(open(os.path.join(CHART, "tests", "alerts_test.yaml")))
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    missing = sorted(set(alerts) - tested)
    if missing:
        fail(f"alerts without a firing unit test: {missing}")
    else:
        ok("every alert has a unit test that fires it")


def check_dashboards(docs, known, tmp):
    cms = [d for _, d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"].get("labels", {})]
    files = sorted(glob.glob(os.path.join(CHART, "dashboards", "*.json")))
    recorded = recorded_names(docs)
    if len(cms) != len(files) or not files:
        fail(f"{len(files)} dashboards but {len(cms)} dashboard ConfigMaps with the sidecar label")
    rules, n = [], 0
    for f in files:
        dash = json.load(open(f))
        for p in dash["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"]
                n += 1
                check_metric_names(f"{os.path.basename(f)} panel {p['title']!r}", expr, known)
                check_recorded(f"{os.path.basename(f)} panel {p['title']!r}", expr, recorded)
                e = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$route", ".*")
                rules.append({"record": f"weir:dashboard_check:{n}", "expr": e})
        for v in dash.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                check_recorded(f"{os.path.basename(f)} variable {v['name']}", v["query"], recorded)
                m = re.match(r"label_values\((\w+)", v["query"])
                if m:
                    check_metric_names(f"{os.path.basename(f)} variable {v['name']}", m.group(1), known)
    with open(os.path.join(tmp, "dashboards.rules.yaml"), "w") as fh:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, fh)
    rc, out = promtool("check", "rules", "dashboards.rules.yaml", cwd=tmp)
    if rc:
        fail(f"dashboard queries do not parse:\n{out}")
    else:
        ok(f"{n} dashboard queries in {len(files)} dashboards parse and name exported metrics")
    rc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-dashboards.py"), "--check"]).returncode
    if rc:
        fail("dashboards are stale; run `make manifests`")


def strict(schema):
    """Like kubectl --validate=strict: unknown fields are errors, not silently pruned."""
    s = copy.deepcopy(schema)
    if isinstance(s, dict):
        for k, v in list(s.items()):
            if k == "properties":
                s[k] = {n: strict(p) for n, p in v.items()}
            elif isinstance(v, (dict, list)):
                s[k] = strict(v)
        if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
            s["properties"].setdefault("apiVersion", {})
            s["properties"].setdefault("kind", {})
            s["properties"].setdefault("metadata", {})
            s["properties"].setdefault("status", {})
    elif isinstance(s, list):
        s = [strict(x) for x in s]
    return s


def crd_schemas():
    out = {}
    for f in glob.glob(os.path.join(ROOT, "crds", "*.yaml")):
        crd = yaml.safe_load(open(f))
        for v in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def check_examples(versions):
    schemas = crd_schemas()
    files = sorted(glob.glob(os.path.join(ROOT, "manifests", "examples", "*.yaml")))
    n = 0
    for f in files:
        for d in yaml.safe_load_all(open(f)):
            if not d:
                continue
            n += 1
            key = (d["apiVersion"], d["kind"])
            where = f"{os.path.relpath(f, ROOT)} {d['kind']}/{d['metadata']['name']}"
            if key in schemas:
                errs = list(jsonschema.Draft7Validator(strict(schemas[key])).iter_errors(d))
                for e in errs:
                    fail(f"{where}: {e.message} at {list(e.path)}")
            else:
                check_validate(os.path.basename(f), [(f, d)], versions)
    if not files:
        fail("no manifests/examples/*.yaml")
    else:
        ok(f"{n} example objects in {len(files)} files validate (CRD schemas / Kubernetes schema)")


def install_yaml():
    docs = [d for _, d in render(MANIFEST_VALUES)]
    crds = [yaml.safe_load(open(f)) for f in sorted(glob.glob(os.path.join(CHART, "crds", "*.yaml")))]
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {
        "app.kubernetes.io/part-of": "weir",
        "pod-security.kubernetes.io/enforce": "restricted"}}}
    objs = [ns] + crds + docs
    objs.sort(key=lambda d: KIND_ORDER.index(d["kind"]) if d["kind"] in KIND_ORDER else len(KIND_ORDER))
    head = ("# Weir: generated by `make manifests` from charts/weir (release \"weir\", namespace\n"
            "# \"weir-system\"). Do not edit; CI fails when stale. Create the admin token first:\n"
            "#   kubectl create namespace weir-system\n"
            "#   kubectl -n weir-system create secret generic weir-admin-token --from-literal=token=$(openssl rand -hex 32)\n")
    return head + "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objs)


def check_bootstrap_snapshot(docs, tmp):
    cm = [d for _, d in docs if d["kind"] == "Secret" and "snapshot.json" in d.get("stringData", {})]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/weir/target"))
    binary = os.path.join(target, "debug", "weir-dataplane")
    if not cm:
        fail("no snapshot Secret rendered")
        return
    if not os.access(binary, os.X_OK):
        print(f"skip weir-dataplane check of the bootstrap snapshot ({binary} not built)")
        return
    p = os.path.join(tmp, "snapshot.json")
    open(p, "w").write(cm[0]["stringData"]["snapshot.json"])
    r = subprocess.run([binary, "check", p], capture_output=True, text=True)
    if r.returncode:
        fail(f"bootstrap snapshot rejected by weir-dataplane check: {r.stdout}{r.stderr}")
    else:
        ok("bootstrap snapshot passes `weir-dataplane check`")


def check_slo_live(docs, tmp):
    """The chart's SLO rules in a real Prometheus scraping a real dataplane: a route answering
    half its requests 503 records an availability error ratio of about 0.5, the objectives are
    there, WeirErrorBudgetBurnFast fires for it, and a healthy route records every SLI with no
    availability or error-rate burn. (The label `le="0.1"` the latency SLI reads is the
    dataplane's own exposition here, not a copy in a test file.)"""
    import urllib.parse
    import urllib.request
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/weir/target"))
    bins = {b: os.path.join(target, "debug", b) for b in ("weir-dataplane", "weir-echo")}
    missing = [b for b in bins.values() if not os.access(b, os.X_OK)]
    if missing or not shutil.which("prometheus"):
        print(f"skip SLO rules in a real Prometheus ({missing or 'no prometheus binary'})")
        return
    spec = [d for _, d in docs if d["kind"] == "PrometheusRule"][0]["spec"]
    with open(os.path.join(tmp, "slo-rules.yaml"), "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    echo, http, admin, prom = (free_port() for _ in range(4))
    with open(os.path.join(tmp, "slo-dp.yaml"), "w") as f:
        f.write(f"""listeners: [{{ name: http, address: "127.0.0.1:{http}", protocol: http }}]
backends: {{ api: {{ endpoints: ["127.0.0.1:{echo}"] }} }}
routes:
  - {{ name: shop/flaky, hostnames: [flaky.test], rules: [{{ backendRefs: [{{ name: api }}] }}] }}
  - {{ name: shop/fine, hostnames: [fine.test], rules: [{{ backendRefs: [{{ name: api }}] }}] }}
""")
    with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
        f.write(f"""global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
rule_files: [slo-rules.yaml]
scrape_configs:
  - job_name: dp
    static_configs: [{{ targets: ["127.0.0.1:{admin}"], labels: {{ namespace: {NS} }} }}]
""")
    procs = []
    try:
        log = open(os.path.join(tmp, "slo-procs.log"), "w")
        procs.append(subprocess.Popen([bins["weir-echo"], "--listen", f"127.0.0.1:{echo}", "--name", "api"], stdout=log, stderr=log))
        procs.append(subprocess.Popen([bins["weir-dataplane"], "--config", os.path.join(tmp, "slo-dp.yaml"),
                                       "--admin-address", f"127.0.0.1:{admin}"], stdout=log, stderr=log))
        procs.append(subprocess.Popen(["prometheus", f"--config.file={tmp}/prometheus.yml",
                                       f"--storage.tsdb.path={tmp}/tsdb", f"--web.listen-address=127.0.0.1:{prom}"],
                                      stdout=log, stderr=log))

        def get(url, headers=None):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except OSError:
                return None, b""

        def query(q):
            st, body = get(f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q}))
            return json.loads(body)["data"]["result"] if st == 200 else []

        deadline = time.time() + 60
        fired, ratio = [], None
        while time.time() < deadline and not fired:
            for i in range(20):
                get(f"http://127.0.0.1:{http}/x" + ("?status=503" if i % 2 else ""), {"Host": "flaky.test"})
                get(f"http://127.0.0.1:{http}/x", {"Host": "fine.test"})
            time.sleep(1)
            r = query('weir:slo_errors:ratio_rate5m{sli="availability",route="shop/flaky"}')
            ratio = float(r[0]["value"][1]) if r else None
            fired = query('ALERTS{alertname="WeirErrorBudgetBurnFast",alertstate="firing"}')
        fine = query('weir:slo_errors:ratio_rate5m{route="shop/fine"}')
        objectives = {x["metric"]["sli"]: float(x["value"][1]) for x in query("weir:slo_objective")}
        labels = [(a["metric"].get("route"), a["metric"].get("sli")) for a in fired]
        # Latency is left loose: a debug build on a loaded CI machine may well be slow.
        wrong = [x for x in labels if x[1] != "latency" and x != ("shop/flaky", "availability")]
        fine_ratios = {x["metric"]["sli"]: float(x["value"][1]) for x in fine}
        if ("shop/flaky", "availability") not in labels or wrong or ratio is None or abs(ratio - 0.5) > 0.1:
            fail(f"SLO rules in Prometheus: flaky route ratio {ratio}, firing {labels}, want ~0.5 and ('shop/flaky', 'availability') only")
        elif set(fine_ratios) != {"availability", "latency", "errors"} or fine_ratios["availability"] or fine_ratios["errors"]:
            fail(f"SLO rules in Prometheus: the healthy route should record every SLI, availability and errors 0; got {fine_ratios}")
        elif objectives != {"availability": 0.999, "latency": 0.99, "errors": 0.999}:
            fail(f"SLO rules in Prometheus: objectives {objectives}")
        else:
            ok(f"SLO rules in a real Prometheus {subprocess.run(['prometheus', '--version'], capture_output=True, text=True).stdout.split()[2]}: "
               f"flaky route availability error ratio {ratio:.2f}, fast burn alert firing for it, healthy route recorded, 0 errors")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def write():
    for f in glob.glob(os.path.join(CHART, "crds", "*.yaml")):
        os.remove(f)
    for f in glob.glob(os.path.join(ROOT, "crds", "*.yaml")):
        shutil.copy(f, os.path.join(CHART, "crds"))
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-dashboards.py")], check=True)
    os.makedirs(os.path.join(ROOT, "manifests"), exist_ok=True)
    with open(os.path.join(ROOT, "manifests", "install.yaml"), "w") as f:
        f.write(install_yaml())
    print("wrote charts/weir/crds, charts/weir/dashboards, manifests/install.yaml")


def main():
    if "--write" in sys.argv:
        write()
        return 0
    t0 = time.time()
    versions = kubernetes_validate.utils.all_versions() if hasattr(kubernetes_validate, "utils") else []
    versions = [versions[0], versions[-1]]
    print(f"kubernetes-validate schemas: {versions[0]} (lowest shipped) and {versions[-1]}")
    known = known_metrics()
    check_crds()
    check_advertised_port()
    with tempfile.TemporaryDirectory() as tmp:
        for name, values in COMBOS.items():
            check_lint(name, values)
            notes = []
            try:
                docs = render(values, notes)
            except helm.HelmError as e:
                fail(f"helm template [{name}]: {e}")
                continue
            check_notes(name, notes, docs)
            before = len(failures)
            check_security(name, docs)
            n = check_validate(name, docs, versions)
            if len(failures) == before:
                ok(f"helm template [{name}]: {len(docs)} objects, {n} validated on {versions}")
            if name in ("default", "no-gateway-api"):
                check_gateway_switch(name, docs, name == "default")
            if name == "default":
                check_bootstrap_snapshot(docs, tmp)
            if name.startswith("injector"):
                check_injector(name, docs, tmp)
            if name == "monitoring":
                check_rules(docs, known, tmp)
                check_slo_live(docs, tmp)
                check_dashboards(docs, known, tmp)
        inst = os.path.join(ROOT, "manifests", "install.yaml")
        want = install_yaml()
        if not os.path.exists(inst) or open(inst).read() != want:
            fail("manifests/install.yaml is stale; run `make manifests`")
        else:
            n = check_validate("install.yaml", [("install.yaml", d) for d in yaml.safe_load_all(want) if d], versions)
            ok(f"manifests/install.yaml fresh ({n} objects, CRDs included, validated)")
        check_examples(versions)
    print(f"chart-check: {'FAILED' if failures else 'passed'} in {time.time() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
