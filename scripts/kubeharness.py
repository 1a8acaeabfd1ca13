"""Shared pieces of the chart dry-run (scripts/chart_dryrun.py) and the pod runner
(scripts/cluster.py): child processes with logs, etcd + kube-apiserver v1.20 with token auth,
kubeconfigs, kubectl, a small REST client and polling.

Nothing here knows about Weir; it is the part both harnesses would otherwise copy.
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Procs:
    """Child processes, each logging to <dir>/<name>.log; stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def spawn(self, name, args, env=None):
        log = open(os.path.join(self.logdir, name + ".log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append((name, p))
        return p

    def tail(self, name, n=30):
        try:
            return "".join(open(os.path.join(self.logdir, name + ".log")).readlines()[-n:])
        except OSError:
            return ""

    def names(self):
        return [n for n, _ in self.procs]

    def stop_all(self, grace=10):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def eventually(what, fn, secs=60, every=0.5):
    """Polls fn until it returns something truthy (exceptions count as not yet)."""
    t = time.time()
    last = None
    while time.time() - t < secs:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried
            last = e
        time.sleep(every)
    raise RuntimeError(f"timed out after {secs}s waiting for {what} ({last})")


def write_kubeconfig(path, server, token):
    with open(path, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {{server: "{server}", insecure-skip-tls-verify: true}}
users:
- name: u
  user: {{token: {token}}}
contexts:
- name: e2e
  context: {{cluster: e2e, user: u}}
current-context: e2e
""")


def kubectl(kc, *args, check=True, input=None):
    r = subprocess.run(["kubectl", "--kubeconfig", kc, *args], capture_output=True, text=True, input=input)
    if check and r.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:400]}")
        self.status = status


class Api:
    """Minimal JSON client for the test API server (admin token, its self-signed certificate)."""

    def __init__(self, server, token):
        self.server = server
        self.token = token
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def call(self, method, path, body=None, content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace")) from None

    def get(self, path):
        return self.call("GET", path)

    def get_or_none(self, path):
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path, body):
        return self.call("POST", path, body)

    def merge_patch(self, path, body):
        return self.call("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path, body=None):
        try:
            return self.call("DELETE", path, body)
        except ApiError as e:
            if e.status == 404:
                return None
            raise


class ControlPlane:
    """etcd + kube-apiserver v1.20 in `tmp`, token auth and RBAC; the ServiceAccount signing key
    is set so the TokenRequest API (what a kubelet uses for pod tokens) works."""

    def __init__(self, procs, tmp, apiserver, etcd, tokens, bind="127.0.0.1", advertise="127.0.0.1",
                 service_cidr="10.96.0.0/24"):
        self.procs, self.tmp = procs, tmp
        cport, pport = free_port(), free_port()
        self.port = free_port(bind if bind != "0.0.0.0" else "127.0.0.1")
        self.server = f"https://127.0.0.1:{self.port}"
        procs.spawn("etcd", [etcd, "--data-dir", f"{tmp}/etcd",
                             "--listen-client-urls", f"http://127.0.0.1:{cport}",
                             "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                             "--initial-cluster", f"default=http://127.0.0.1:{pport}"])
        subprocess.run(["openssl", "genrsa", "-out", f"{tmp}/sa.key", "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-pubout", "-in", f"{tmp}/sa.key", "-out", f"{tmp}/sa.pub"],
                       check=True, capture_output=True)
        with open(f"{tmp}/tokens.csv", "w") as f:
            for tok, user, groups in tokens:
                f.write(f'{tok},{user},{user},"{",".join(groups)}"\n' if groups else f"{tok},{user},{user}\n")
        os.makedirs(f"{tmp}/certs", exist_ok=True)
        procs.spawn("kube-apiserver", [apiserver, f"--etcd-servers=http://127.0.0.1:{cport}",
                                       f"--bind-address={bind}", f"--secure-port={self.port}",
                                       f"--cert-dir={tmp}/certs", f"--token-auth-file={tmp}/tokens.csv",
                                       "--authorization-mode=RBAC",
                                       f"--service-account-key-file={tmp}/sa.pub",
                                       f"--service-account-signing-key-file={tmp}/sa.key",
                                       "--service-account-issuer=https://kubernetes.default.svc",
                                       f"--service-cluster-ip-range={service_cidr}",
                                       f"--advertise-address={advertise}",
                                       "--disable-admission-plugins=ServiceAccount"])

    def ca_file(self):
        """The self-signed serving certificate (and its CA) the API server generated."""
        return f"{self.tmp}/certs/apiserver.crt"

    def wait_ready(self, kc, secs=90):
        t0 = time.time()
        eventually("kube-apiserver /readyz", lambda: kubectl(kc, "get", "--raw", "/readyz").strip() == "ok", secs)
        version = json.loads(kubectl(kc, "version", "-o", "json", check=False) or "{}")
        return version.get("serverVersion", {}).get("gitVersion", "?"), time.time() - t0
