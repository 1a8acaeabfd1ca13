"""A pod runner: runs the Deployments stored in a real kube-apiserver the way a kubelet (plus the
Deployment, EndpointSlice and kube-proxy controllers) would, on one machine, without a
container engine. Used by scripts/cluster.py (`make cluster`).

- Network: one network namespace per pod, on a veth to a bridge in a node namespace the runner
  creates (the runner process itself moves into it, so the API server, kubectl and Helm run
  "on the node"). Pod objects are registered with their IP; Ready follows the rendered probes.
- Process: the rendered command/args/env (downward API, `$(VAR)` expansion, KUBERNETES_SERVICE_*
  like the kubelet's service links), the image's ENTRYPOINT/CMD/USER read from the Dockerfiles
  mapped to the release binaries, runAsUser/runAsGroup/fsGroup and dropped capabilities via
  setpriv, in a chroot whose root is read-only when readOnlyRootFilesystem says so.
- Files: a private mount namespace per container with the rendered Secret, ConfigMap, emptyDir
  volumes (and the projected service-account token from the TokenRequest API) at their
  mountPaths, with their modes, in the kubelet's atomic-writer layout (`..data` symlink swapped
  when the object changes).
- Deployments: replicas, rolling updates (maxSurge 1 / maxUnavailable 0: new pod Ready, old pod
  out of the endpoints, each container's preStop hook (httpGet or exec, in parallel) then its
  SIGTERM, SIGKILL after terminationGracePeriodSeconds), restarts of
  exited containers, pods deleted through the API.
- Services: EndpointSlices (discovery.k8s.io/v1beta1 on v1.20) from the ready pods, and an
  nftables DNAT table in the node namespace for every ClusterIP (TCP and UDP), like kube-proxy.

Errors name the pod, the container and the field, e.g.
"weir-dataplane-5d8f-x2k4p: volume `snapshot`: Secret `weir-snapshot` not found".
"""
import base64
import ctypes
import hashlib
import ipaddress
import json
import os
import random
import shutil
import signal
import string
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request

from kubeharness import ApiError

CLONE_NEWNET = 0x40000000
NODE_NAME = "node-0"
POD_CIDR = ipaddress.ip_network("10.244.0.0/24")
CLIENT_CIDR = ipaddress.ip_network("192.168.77.0/24")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunnerError(Exception):
    """A problem with what the runner was asked to run; the message names pod/container/field."""


def sh(*args, check=True, input=None):
    r = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_stale_namespaces(prefix="weirc"):
    """Namespaces (and the processes in them) left by a runner that was SIGKILLed: its pid is in
    the names and is gone."""
    removed = []
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if name.startswith(prefix) and "-" in name:
            try:
                pid = int(name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if not pid_alive(pid):
                # Its processes (pods, the API server in the node namespace, clients) outlive it.
                for p in sh("ip", "netns", "pids", name, check=False).split():
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", name, check=False)
                removed.append(name)
    return removed


def enter_netns(name):
    """Moves this process (it must still be single-threaded) into network namespace `name`; every
    thread and child started afterwards lives there too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


def parse_dockerfile(path):
    """ENTRYPOINT, CMD and USER of a Dockerfile's final stage (exec form only)."""
    ep, cmd, user = [], [], None
    for line in open(path):
        line = line.strip()
        if line.startswith("FROM "):
            ep, cmd, user = [], [], None
        elif line.startswith("ENTRYPOINT "):
            ep = json.loads(line[len("ENTRYPOINT "):])
        elif line.startswith("CMD "):
            cmd = json.loads(line[len("CMD "):])
        elif line.startswith("USER "):
            user = line[len("USER "):].strip()
    return ep, cmd, user


class Image:
    def __init__(self, binary, entrypoint, cmd, uid, gid):
        self.binary, self.entrypoint, self.cmd, self.uid, self.gid = binary, entrypoint, cmd, uid, gid


def images_from(root, bindir):
    """Image repository basename -> what the container runs. The images are `scratch` plus one
    static binary (see the Dockerfiles), so the entrypoint maps to the release binary."""
    out = {}
    for name, dockerfile in [("weir-dataplane", "dataplane/Dockerfile"), ("weir-operator", "operator/Dockerfile")]:
        ep, cmd, user = parse_dockerfile(os.path.join(root, dockerfile))
        uid, _, gid = (user or "0:0").partition(":")
        out[name] = Image(os.path.join(bindir, name), ep, cmd, int(uid), int(gid or uid))
    # The demo backend has no image of its own in this repository; its pods (tests/cluster/)
    # name it ghcr.io/weir-dev/weir-echo and run it like the other two.
    out["weir-echo"] = Image(os.path.join(bindir, "weir-echo"), ["/weir-echo"], [], 65532, 65532)
    return out


def expand(s, env):
    """Kubernetes `$(VAR)` expansion: known variables are replaced, `$$` escapes, others stay."""
    out, i = [], 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i) and ")" in s[i:]:
            j = s.index(")", i)
            name = s[i + 2:j]
            out.append(env[name] if name in env else s[i:j + 1])
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class Container:
    def __init__(self, pod, spec):
        self.pod, self.spec, self.name = pod, spec, spec["name"]
        self.proc = None
        self.restarts = 0
        self.ready = False
        self.started = "startupProbe" not in spec
        self.probe_ok = 0
        self.probe_fail = 0
        self.live_fail = 0
        self.next_probe = 0.0
        self.next_live = 0.0
        self.started_at = 0.0
        self.exit_code = None
        self.log = os.path.join(pod.dir, f"{self.name}.log")

    def where(self, field):
        return f"{self.pod.name}: container `{self.name}`: {field}"


class _VolumeField:
    """Names a downwardAPI volume item in `_field`'s errors, as Container.where names a container's."""
    def __init__(self, pod, volume, index):
        self.pod, self.volume, self.index = pod, volume, index

    def where(self, field):
        return f"{self.pod.name}: volume `{self.volume}`: items[{self.index}]: {field}"


class Pod:
    def __init__(self, runner, obj, owner, tmpl_hash, ip, index):
        self.runner = runner
        self.obj = obj
        self.ns = obj["metadata"]["namespace"]
        self.name = obj["metadata"]["name"]
        self.uid = obj["metadata"]["uid"]
        self.owner, self.hash, self.ip = owner, tmpl_hash, ip
        self.netns = f"{runner.prefix}-p{index}"
        self.veth = f"wv{index}"
        self.dir = os.path.join(runner.tmp, "pods", self.name)
        self.spec = obj["spec"]
        self.containers = [Container(self, c) for c in self.spec["containers"]]
        self.volumes = {}  # name -> (kind, source ns/name, host dir, last resourceVersion)
        self.terminating = False
        self.kill_at = None
        self.ready = False
        self.reported = None
        self.started = False
        self.error = None
        self.crashed = False
        self.created = time.time()

    def labels(self):
        return self.obj["metadata"].get("labels") or {}

    def all_exited(self):
        return all(c.proc is None or c.proc.poll() is not None for c in self.containers)


class Runner:
    """Owns the node namespace, the pods and the Service plumbing. `tick()` runs every 0.5 s in
    a background thread; the scenario code calls the public methods under `self.lock`."""

    def __init__(self, tmp, api, images, log=print):
        self.tmp, self.api, self.images, self.log = tmp, api, images, log
        self.prefix = f"weirc{os.getpid()}"
        self.node_ns = f"{self.prefix}-node"
        self.client_ns = f"{self.prefix}-client"
        self.node_ip = str(POD_CIDR.network_address + 1)
        self.client_ip = str(CLIENT_CIDR.network_address + 2)
        self.gw_client = str(CLIENT_CIDR.network_address + 1)
        self.namespaces = []
        self.pods = {}
        self.next_index = 10
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread = None
        self.apiserver_port = None
        self.ca_file = None
        self.nft_applied = None
        self.slices = {}
        self.deploy_status = {}
        self.errors_seen = set()
        self.to_signal = []

    # ---------------------------------------------------------------- namespaces and links
    def _add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)

    def setup_node(self):
        """Creates the node namespace (bridge, forwarding) and the client namespace, then moves this
        process into the node namespace. Call before any thread exists."""
        os.makedirs(os.path.join(self.tmp, "pods"), exist_ok=True)
        self._add_ns(self.node_ns)
        self._add_ns(self.client_ns)
        n = ["ip", "-n", self.node_ns]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "add", "wbr0", "type", "bridge")
        sh(*n, "addr", "add", f"{self.node_ip}/{POD_CIDR.prefixlen}", "dev", "wbr0")
        sh(*n, "link", "set", "wbr0", "up")
        sh("ip", "netns", "exec", self.node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # A node reaches Service addresses itself (the API server calling an admission webhook
        # by Service reference dials its ClusterIP): a route is needed before the output hook's
        # DNAT; a real node has its default route for that.
        sh(*n, "route", "add", "10.96.0.0/24", "dev", "wbr0")
        # The client: outside the cluster, it reaches Service addresses through the node only.
        sh(*n, "link", "add", "wclient", "type", "veth", "peer", "name", "eth0", "netns", self.client_ns)
        sh(*n, "addr", "add", f"{self.gw_client}/{CLIENT_CIDR.prefixlen}", "dev", "wclient")
        sh(*n, "link", "set", "wclient", "up")
        c = ["ip", "-n", self.client_ns]
        sh(*c, "link", "set", "lo", "up")
        sh(*c, "addr", "add", f"{self.client_ip}/{CLIENT_CIDR.prefixlen}", "dev", "eth0")
        sh(*c, "link", "set", "eth0", "up")
        sh(*c, "route", "add", "10.96.0.0/24", "via", self.gw_client)
        enter_netns(self.node_ns)

    def client(self, *args, **kw):
        """Runs a command in the client namespace."""
        return subprocess.run(["ip", "netns", "exec", self.client_ns, *args], capture_output=True, text=True, **kw)

    def client_popen(self, args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.client_ns, *args], **kw)

    def start(self):
        self.thread = threading.Thread(target=self._loop, name="podrunner", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                with self.lock:
                    self.tick()
            except Exception as e:  # noqa: BLE001 - reported once, retried next tick
                self._report(f"runner tick: {e}\n{traceback.format_exc()}")
            self.stop.wait(0.5)

    def _report(self, msg):
        if msg not in self.errors_seen:
            self.errors_seen.add(msg)
            self.log(f"runner: {msg}")

    # ---------------------------------------------------------------- cleanup
    def shutdown(self):
        """Stops the loop, every pod (SIGTERM, then SIGKILL after 5 s) and removes every namespace.
        Safe to call more than once and after a partial setup."""
        self.stop.set()
        if self.thread and self.thread is not threading.current_thread():
            self.thread.join(30)
        with self.lock:
            for p in self.pods.values():
                for c in p.containers:
                    if c.proc and c.proc.poll() is None:
                        c.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 5
            for p in self.pods.values():
                for c in p.containers:
                    if c.proc:
                        try:
                            c.proc.wait(max(0.1, deadline - time.time()))
                        except subprocess.TimeoutExpired:
                            c.proc.kill()
                            c.proc.wait()
            # Whatever else runs in the pod and client namespaces (clients started by scenarios).
            for name in self.namespaces:
                if name == self.node_ns:
                    continue
                for pid in sh("ip", "netns", "pids", name, check=False).split():
                    if int(pid) != os.getpid():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            for name in reversed(self.namespaces):
                sh("ip", "netns", "del", name, check=False)
            self.namespaces = []

    # ---------------------------------------------------------------- pods
    def _pod_name(self, base, tmpl_hash):
        suffix = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        return f"{base}-{tmpl_hash[:10]}-{suffix}"

    def _create_pod(self, dep, tmpl_hash):
        ns, dname = dep["metadata"]["namespace"], dep["metadata"]["name"]
        tmpl = dep["spec"]["template"]
        meta = {"name": self._pod_name(dname, tmpl_hash), "namespace": ns,
                "labels": dict(tmpl["metadata"].get("labels") or {}, **{"pod-template-hash": tmpl_hash[:10]}),
                "annotations": tmpl["metadata"].get("annotations") or {}}
        spec = json.loads(json.dumps(tmpl["spec"]))
        spec["nodeName"] = NODE_NAME
        obj = self.api.post(f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        index = self.next_index
        self.next_index += 1
        if index >= POD_CIDR.num_addresses - 1:
            raise RunnerError("pod address range 10.244.0.0/24 exhausted")
        pod = Pod(self, obj, f"{ns}/{dname}", tmpl_hash, str(POD_CIDR.network_address + index), index)
        self.pods[pod.name] = pod
        os.makedirs(pod.dir)
        try:
            self._network(pod)
            self._volumes(pod)
            for c in pod.containers:
                self._start_container(c)
            pod.started = True
        except RunnerError as e:
            pod.error = str(e)
            self._report(str(e))
        self._patch_status(pod)
        return pod

    def _network(self, pod):
        self._add_ns(pod.netns)
        sh("ip", "link", "add", pod.veth, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
        sh("ip", "link", "set", pod.veth, "master", "wbr0", "up")
        p = ["ip", "-n", pod.netns]
        sh(*p, "link", "set", "lo", "up")
        sh(*p, "addr", "add", f"{pod.ip}/{POD_CIDR.prefixlen}", "dev", "eth0")
        sh(*p, "link", "set", "eth0", "up")
        sh(*p, "route", "add", "default", "via", self.node_ip)

    # Volumes ---------------------------------------------------------------------------
    def _source(self, pod, vol):
        """(kind, object name, files {path: (bytes, mode)}, resourceVersion) of a volume, or raises."""
        name = vol["name"]
        if "secret" in vol or "configMap" in vol:
            kind = "Secret" if "secret" in vol else "ConfigMap"
            src = vol["secret"] if kind == "Secret" else vol["configMap"]
            oname = src.get("secretName") if kind == "Secret" else src.get("name")
            path = f"/api/v1/namespaces/{pod.ns}/{'secrets' if kind == 'Secret' else 'configmaps'}/{oname}"
            obj = self.api.get_or_none(path)
            mode = src.get("defaultMode", 0o644)
            if obj is None:
                if src.get("optional"):
                    return kind, oname, {}, "absent"
                raise RunnerError(f"{pod.name}: volume `{name}`: {kind} `{oname}` not found")
            data = {}
            if kind == "Secret":
                for k, v in (obj.get("data") or {}).items():
                    data[k] = base64.b64decode(v)
            else:
                for k, v in (obj.get("data") or {}).items():
                    data[k] = v.encode()
                for k, v in (obj.get("binaryData") or {}).items():
                    data[k] = base64.b64decode(v)
            files = {}
            if src.get("items"):
                for i, it in enumerate(src["items"]):
                    if it["key"] not in data:
                        if src.get("optional"):
                            continue  # the kubelet: an optional source's missing keys are skipped
                        raise RunnerError(f"{pod.name}: volume `{name}`: items[{i}].key `{it['key']}` is not in {kind} `{oname}`")
                    files[it["path"]] = (data[it["key"]], it.get("mode", mode))
            else:
                files = {k: (v, mode) for k, v in data.items()}
            return kind, oname, files, obj["metadata"]["resourceVersion"]
        if "downwardAPI" in vol:
            # The kubelet writes each item's field (labels/annotations are refreshed on change;
            # the sidecar injector's snapshot annotation never changes, so no refresh here).
            src = vol["downwardAPI"]
            mode = src.get("defaultMode", 0o644)
            files = {}
            for i, it in enumerate(src.get("items") or []):
                if "fieldRef" not in it:
                    raise RunnerError(f"{pod.name}: volume `{name}`: items[{i}]: only fieldRef is supported by the runner")
                files[it["path"]] = (self._field(pod, it["fieldRef"]["fieldPath"], _VolumeField(pod, name, i)).encode(),
                                     it.get("mode", mode))
            return "DownwardAPI", None, files, None
        raise RunnerError(f"{pod.name}: volume `{name}`: only secret, configMap, downwardAPI and emptyDir volumes are supported")

    def _atomic_write(self, d, files, gid):
        """The kubelet's atomic writer: files in a fresh `..<timestamp>` dir, `..data` swapped to it
        by rename, user-visible names are symlinks through `..data`."""
        ts = "..%s.%06d" % (time.strftime("%Y_%m_%d_%H_%M_%S"), random.randrange(10 ** 6))
        tsdir = os.path.join(d, ts)
        os.makedirs(tsdir, mode=0o755)
        for rel, (data, mode) in files.items():
            path = os.path.join(tsdir, rel)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, mode)
            if gid is not None:
                os.chown(path, 0, gid)
        old = os.readlink(os.path.join(d, "..data")) if os.path.islink(os.path.join(d, "..data")) else None
        tmp_link = os.path.join(d, "..data_tmp")
        os.symlink(ts, tmp_link)
        os.rename(tmp_link, os.path.join(d, "..data"))
        tops = {rel.split("/")[0] for rel in files}
        for top in tops:
            link = os.path.join(d, top)
            if not os.path.lexists(link):
                os.symlink(os.path.join("..data", top), link)
        for entry in os.listdir(d):
            if not entry.startswith("..") and entry not in tops:
                os.unlink(os.path.join(d, entry))
        if old:
            shutil.rmtree(os.path.join(d, old), ignore_errors=True)

    def _fs_group(self, pod):
        return (pod.spec.get("securityContext") or {}).get("fsGroup")

    def _volumes(self, pod):
        gid = self._fs_group(pod)
        for vol in pod.spec.get("volumes") or []:
            d = os.path.join(pod.dir, "volumes", vol["name"])
            os.makedirs(d)
            if "emptyDir" in vol:
                os.chmod(d, 0o2777 if gid is not None else 0o777)
                if gid is not None:
                    os.chown(d, 0, gid)
                pod.volumes[vol["name"]] = ("emptyDir", None, d, None)
                continue
            kind, oname, files, rv = self._source(pod, vol)
            self._atomic_write(d, files, gid)
            pod.volumes[vol["name"]] = (kind, oname, d, rv)
        if pod.spec.get("automountServiceAccountToken", True) is not False:
            self._service_account(pod, gid)

    def _service_account(self, pod, gid):
        """What the ServiceAccount admission plugin + kubelet give a pod: a bound token from the
        TokenRequest API, the API server's CA and the namespace, in the atomic-writer layout."""
        sa = pod.spec.get("serviceAccountName") or "default"
        try:
            tr = self.api.post(f"/api/v1/namespaces/{pod.ns}/serviceaccounts/{sa}/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": 3600,
                                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}}})
        except ApiError as e:
            raise RunnerError(f"{pod.name}: spec.serviceAccountName `{sa}`: TokenRequest failed: {e}") from None
        d = os.path.join(pod.dir, "volumes", "..serviceaccount")
        os.makedirs(d)
        ca = open(self.ca_file, "rb").read()
        mode = 0o640 if gid is not None else 0o644
        self._atomic_write(d, {"token": (tr["status"]["token"].encode(), mode), "ca.crt": (ca, mode),
                               "namespace": (pod.ns.encode(), mode)}, gid)
        pod.volumes["..serviceaccount"] = ("ServiceAccountToken", sa, d, None)

    def _refresh_volumes(self, pod, cache):
        gid = self._fs_group(pod)
        for vol in pod.spec.get("volumes") or []:
            kind, oname, d, rv = pod.volumes.get(vol["name"], (None, None, None, None))
            if kind not in ("Secret", "ConfigMap"):
                continue
            key = (kind, pod.ns, oname)
            if key not in cache:
                try:
                    cache[key] = self._source(pod, vol)
                except RunnerError as e:
                    # The kubelet keeps the last files when the object disappears.
                    self._report(str(e))
                    cache[key] = None
            got = cache[key]
            if got and got[3] != rv:
                self._atomic_write(d, got[2], gid)
                pod.volumes[vol["name"]] = (kind, oname, d, got[3])

    # Containers ------------------------------------------------------------------------
    def _field(self, pod, path, c):
        meta = pod.obj["metadata"]
        simple = {"metadata.name": pod.name, "metadata.namespace": pod.ns, "metadata.uid": pod.uid,
                  "spec.nodeName": NODE_NAME, "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                  "status.podIP": pod.ip, "status.podIPs": pod.ip, "status.hostIP": self.node_ip}
        if path in simple:
            return simple[path]
        for prefix, src in (("metadata.labels['", meta.get("labels") or {}), ("metadata.annotations['", meta.get("annotations") or {})):
            if path.startswith(prefix) and path.endswith("']"):
                return src.get(path[len(prefix):-2], "")
        raise RunnerError(c.where(f"fieldRef.fieldPath `{path}` is not supported by the runner"))

    def _env(self, c):
        pod = c.pod
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": pod.name}
        # Service links as the kubelet injects them (the API server's own Service).
        env.update({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
                    "KUBERNETES_SERVICE_PORT_HTTPS": "443", "KUBERNETES_PORT": "tcp://10.96.0.1:443",
                    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                    "KUBERNETES_PORT_443_TCP_PORT": "443", "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1"})
        for i, e in enumerate(c.spec.get("env") or []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    env[e["name"]] = self._field(pod, vf["fieldRef"]["fieldPath"], c)
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    secret = "secretKeyRef" in vf
                    ref = vf["secretKeyRef" if secret else "configMapKeyRef"]
                    obj = self.api.get_or_none(f"/api/v1/namespaces/{pod.ns}/{'secrets' if secret else 'configmaps'}/{ref['name']}")
                    data = (obj or {}).get("data") or {}
                    if ref["key"] not in data:
                        if ref.get("optional"):
                            continue
                        raise RunnerError(c.where(f"env[{i}] `{e['name']}`: key `{ref['key']}` of {'Secret' if secret else 'ConfigMap'} `{ref['name']}` not found"))
                    env[e["name"]] = base64.b64decode(data[ref["key"]]).decode() if secret else data[ref["key"]]
                else:
                    raise RunnerError(c.where(f"env[{i}] `{e['name']}`: valueFrom {sorted(vf)} is not supported by the runner"))
            else:
                env[e["name"]] = ""
        if c.spec.get("envFrom"):
            raise RunnerError(c.where("envFrom is not supported by the runner"))
        return env

    def _image(self, c):
        ref = c.spec.get("image") or ""
        repo = ref.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
        if repo not in self.images:
            raise RunnerError(c.where(f"image `{ref}`: no binary for `{repo}` (known: {', '.join(sorted(self.images))})"))
        img = self.images[repo]
        if not os.access(img.binary, os.X_OK):
            raise RunnerError(c.where(f"image `{ref}`: binary {img.binary} is missing (build it first)"))
        return img

    def _user(self, c, img):
        pod_sc = c.pod.spec.get("securityContext") or {}
        sc = c.spec.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", img.uid))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", img.gid))
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and uid == 0:
            raise RunnerError(c.where("securityContext.runAsNonRoot is true but the container would run as uid 0"))
        groups = list(pod_sc.get("supplementalGroups") or [])
        if pod_sc.get("fsGroup") is not None:
            groups.append(pod_sc["fsGroup"])
        return uid, gid, groups, sc

    def _start_container(self, c):
        pod = c.pod
        img = self._image(c)
        env = self._env(c)
        command = c.spec.get("command")
        args = c.spec.get("args")
        if command:
            if os.path.basename(command[0]) != os.path.basename(img.entrypoint[0]):
                raise RunnerError(c.where(f"command `{command[0]}` is not in image `{c.spec['image']}` (it holds {img.entrypoint[0]})"))
            argv = [expand(a, env) for a in command] + [expand(a, env) for a in (args or [])]
        else:
            argv = list(img.entrypoint) + ([expand(a, env) for a in args] if args is not None else list(img.cmd))
        uid, gid, groups, sc = self._user(c, img)
        root = os.path.join(pod.dir, f"root-{c.name}")
        os.makedirs(root, exist_ok=True)
        lines = ["set -eu", f'R="{root}"',
                 'mount -t tmpfs -o mode=0755 pod-root "$R"',
                 'mkdir -p "$R/usr" "$R/proc" "$R/dev" "$R/etc/ssl/certs"',
                 'mount --rbind /usr "$R/usr"', 'mount -o remount,bind,ro "$R/usr"',
                 'for l in lib lib64 bin sbin; do [ -L /$l ] && ln -s "$(readlink /$l)" "$R/$l"; done',
                 'mount -t proc proc "$R/proc"',
                 'mount -t tmpfs -o mode=0755 pod-dev "$R/dev"',
                 'for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done',
                 '[ -f /etc/ssl/certs/ca-certificates.crt ] && touch "$R/etc/ssl/certs/ca-certificates.crt" && '
                 'mount --bind /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"',
                 f'printf "127.0.0.1 localhost\\n{pod.ip} {pod.name}\\n" > "$R/etc/hosts"',
                 f'echo {pod.name} > "$R/etc/hostname"',
                 f'touch "$R{img.entrypoint[0]}"', f'mount --bind "{img.binary}" "$R{img.entrypoint[0]}"']
        mounts = list(c.spec.get("volumeMounts") or [])
        if "..serviceaccount" in pod.volumes:
            mounts.append({"name": "..serviceaccount", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True})
        for i, m in enumerate(mounts):
            if m["name"] not in pod.volumes:
                raise RunnerError(c.where(f"volumeMounts[{i}]: volume `{m['name']}` is not defined in spec.volumes"))
            if m.get("subPath"):
                raise RunnerError(c.where(f"volumeMounts[{i}].subPath is not supported by the runner"))
            src = pod.volumes[m["name"]][2]
            mp = m["mountPath"]
            lines += [f'mkdir -p "$R{mp}"', f'mount --bind "{src}" "$R{mp}"']
            if m.get("readOnly"):
                lines.append(f'mount -o remount,bind,ro "$R{mp}"')
        if sc.get("readOnlyRootFilesystem"):
            lines.append('mount -o remount,ro "$R"')
        setpriv = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}"]
        setpriv.append(f"--groups={','.join(str(g) for g in groups)}" if groups else "--clear-groups")
        if sc.get("allowPrivilegeEscalation") is False:
            setpriv.append("--no-new-privs")
        if "ALL" in ((sc.get("capabilities") or {}).get("drop") or []):
            setpriv += ["--inh-caps=-all", "--bounding-set=-all"]
        lines.append(f'exec /usr/sbin/chroot "$R" {" ".join(setpriv)} -- "$@"')
        script = os.path.join(pod.dir, f"start-{c.name}.sh")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        log = open(c.log, "a")
        log.write(f"--- runner: start #{c.restarts} argv={json.dumps(argv)} uid={uid} gid={gid} groups={groups}\n")
        log.flush()
        c.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod.netns}", "unshare", "--mount", "--propagation", "private",
                                   "/bin/sh", script, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        c.started_at = time.time()
        c.ready = False
        c.probe_ok = c.probe_fail = c.live_fail = 0
        c.started = "startupProbe" not in c.spec
        delay = (c.spec.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
        c.next_probe = c.started_at + delay
        c.next_live = c.started_at + (c.spec.get("livenessProbe") or {}).get("initialDelaySeconds", 0)

    # Probes ----------------------------------------------------------------------------
    def _port(self, c, port):
        if isinstance(port, int):
            return port
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return p["containerPort"]
        raise RunnerError(c.where(f"probe port `{port}` names no containerPort"))

    def _probe(self, c, probe):
        if "httpGet" in probe:
            hg = probe["httpGet"]
            url = f"http://{c.pod.ip}:{self._port(c, hg['port'])}{hg.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1)) as r:
                    return 200 <= r.status < 400
            except Exception:  # noqa: BLE001 - any error is a failed probe
                return False
        if "tcpSocket" in probe:
            import socket
            try:
                socket.create_connection((c.pod.ip, self._port(c, probe["tcpSocket"]["port"])), probe.get("timeoutSeconds", 1)).close()
                return True
            except OSError:
                return False
        raise RunnerError(c.where("probe: only httpGet and tcpSocket probes are supported by the runner"))

    def _run_probes(self, c, now):
        if c.proc is None or c.proc.poll() is not None:
            c.ready = False
            return
        if not c.started:
            sp = c.spec["startupProbe"]
            if now >= c.next_probe:
                c.next_probe = now + sp.get("periodSeconds", 10)
                if self._probe(c, sp):
                    c.started = True
                    c.next_probe = now
            return
        rp = c.spec.get("readinessProbe")
        if rp is None:
            c.ready = True
        elif now >= c.next_probe:
            c.next_probe = now + rp.get("periodSeconds", 10)
            if self._probe(c, rp):
                c.probe_ok += 1
                c.probe_fail = 0
                if c.probe_ok >= rp.get("successThreshold", 1):
                    c.ready = True
            else:
                c.probe_fail += 1
                c.probe_ok = 0
                if c.probe_fail >= rp.get("failureThreshold", 3):
                    c.ready = False
        lp = c.spec.get("livenessProbe")
        if lp and now >= c.next_live:
            c.next_live = now + lp.get("periodSeconds", 10)
            if self._probe(c, lp):
                c.live_fail = 0
            else:
                c.live_fail += 1
                if c.live_fail >= lp.get("failureThreshold", 3):
                    self.log(f"runner: {c.where('livenessProbe failed')}: restarting")
                    c.proc.send_signal(signal.SIGTERM)
                    c.live_fail = 0

    # Status ----------------------------------------------------------------------------
    def _patch_status(self, pod):
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ready = pod.ready
        key = (ready, tuple(c.restarts for c in pod.containers), pod.error)
        if key == pod.reported:
            return
        cs = []
        for c in pod.containers:
            running = c.proc is not None and c.proc.poll() is None
            state = {"running": {"startedAt": now}} if running else (
                {"waiting": {"reason": "CreateContainerConfigError", "message": pod.error}} if pod.error else
                {"waiting": {"reason": "CrashLoopBackOff"}})
            cs.append({"name": c.name, "ready": c.ready, "restartCount": c.restarts, "image": c.spec.get("image", ""),
                       "imageID": "", "started": running, "state": state})
        st = "True" if ready else "False"
        body = {"status": {"phase": "Running" if pod.started else "Pending", "hostIP": self.node_ip, "podIP": pod.ip,
                           "podIPs": [{"ip": pod.ip}], "startTime": now, "containerStatuses": cs,
                           "conditions": [{"type": "Initialized", "status": "True"},
                                          {"type": "Ready", "status": st, "lastTransitionTime": now},
                                          {"type": "ContainersReady", "status": st, "lastTransitionTime": now},
                                          {"type": "PodScheduled", "status": "True"}]}}
        try:
            self.api.merge_patch(f"/api/v1/namespaces/{pod.ns}/pods/{pod.name}/status", body)
            pod.reported = key
        except ApiError as e:
            if e.status != 404:
                raise

    # Termination -----------------------------------------------------------------------
    def terminate(self, pod, grace=None, why=""):
        """Out of the endpoints first (this tick), then SIGTERM, SIGKILL after the grace period."""
        if pod.terminating:
            return
        pod.terminating = True
        pod.ready = False
        for c in pod.containers:
            c.ready = False
        g = pod.spec.get("terminationGracePeriodSeconds", 30) if grace is None else grace
        pod.kill_at = time.time() + g
        self.log(f"runner: stopping {pod.name} ({why}; SIGTERM, SIGKILL after {g}s)")
        self.to_signal.append(pod)
        try:
            self.api.delete(f"/api/v1/namespaces/{pod.ns}/pods/{pod.name}", {"gracePeriodSeconds": g})
        except ApiError as e:
            self._report(f"{pod.name}: delete: {e}")

    def _pre_stop_then_term(self, c):
        """Runs the container's preStop hook (httpGet or exec) within what is left of the grace
        period, then sends SIGTERM; a failed hook is logged (the kubelet's FailedPreStopHook
        event) and the container stopped anyway. A hook that used up the grace period gets
        2 s more before SIGKILL, as the kubelet gives."""
        pod, proc = c.pod, c.proc
        hook = c.spec["lifecycle"]["preStop"]
        started = time.time()
        budget = max(pod.kill_at - started, 0.1)
        try:
            outcome = self._run_hook(c, proc, hook, budget)
        except Exception as e:  # noqa: BLE001 - any error is a failed hook, as for the kubelet
            outcome = f"FailedPreStopHook: {e}"
        self.log(f"runner: {c.where('lifecycle.preStop')}: {outcome} after {time.time() - started:.1f}s; SIGTERM")
        with self.lock:
            if time.time() > pod.kill_at - 2:
                pod.kill_at = time.time() + 2
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def _run_hook(self, c, proc, hook, budget):
        if "httpGet" in hook:
            hg = hook["httpGet"]
            # The kubelet makes the call from the node, to the pod IP unless `host` says otherwise.
            scheme = hg.get("scheme", "HTTP").lower()
            url = f"{scheme}://{hg.get('host') or c.pod.ip}:{self._port(c, hg['port'])}{hg.get('path', '/')}"
            req = urllib.request.Request(url, headers={h["name"]: h["value"] for h in hg.get("httpHeaders") or []})
            try:
                with urllib.request.urlopen(req, timeout=budget) as r:
                    body = r.read(200).decode(errors="replace").strip()
                    return f"GET {url}: {r.status} {body}"
            except urllib.error.HTTPError as e:
                return f"FailedPreStopHook: GET {url}: {e.code}"
        if "exec" in hook:
            # Inside the container: its mount and network namespaces, its root, its user.
            uid, gid, groups, _ = self._user(c, self._image(c))
            cmd = ["nsenter", "-t", str(proc.pid), "-m", "-n", "-r", "-w", "/usr/bin/setpriv",
                   f"--reuid={uid}", f"--regid={gid}",
                   f"--groups={','.join(str(g) for g in groups)}" if groups else "--clear-groups",
                   "--", *hook["exec"]["command"]]
            try:
                r = subprocess.run(cmd, env=self._env(c), capture_output=True, timeout=budget)
            except subprocess.TimeoutExpired:
                return f"FailedPreStopHook: exec {hook['exec']['command']}: still running after {budget:.1f}s"
            if r.returncode != 0:
                return f"FailedPreStopHook: exec {hook['exec']['command']}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[:200]}"
            return f"exec {hook['exec']['command']}: exit 0"
        raise RunnerError(c.where("lifecycle.preStop: only httpGet and exec hooks are supported by the runner"))

    def _finish(self, pod):
        for c in pod.containers:
            if c.proc and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        self.api.delete(f"/api/v1/namespaces/{pod.ns}/pods/{pod.name}", {"gracePeriodSeconds": 0})
        sh("ip", "netns", "del", pod.netns, check=False)
        if pod.netns in self.namespaces:
            self.namespaces.remove(pod.netns)
        del self.pods[pod.name]

    # ---------------------------------------------------------------- the loop
    def tick(self):
        now = time.time()
        deps = self.api.get("/apis/apps/v1/deployments")["items"]
        api_pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in self.api.get("/api/v1/pods")["items"]}
        # Pods deleted through the API (kubectl delete pod): the kubelet stops them.
        for pod in list(self.pods.values()):
            o = api_pods.get((pod.ns, pod.name))
            if not pod.terminating and (o is None or o["metadata"].get("deletionTimestamp")):
                grace = (o or {}).get("metadata", {}).get("deletionGracePeriodSeconds", 0)
                self.terminate(pod, grace, "deleted through the API")
        for dep in deps:
            self._reconcile(dep)
        live = {f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in deps}
        for pod in list(self.pods.values()):
            if pod.owner not in live and not pod.terminating:
                self.terminate(pod, None, "its Deployment is gone")
        cache = {}
        for pod in list(self.pods.values()):
            if pod.terminating:
                continue
            if pod.crashed:
                self._patch_status(pod)
                continue
            if not pod.started:
                try:
                    if not pod.volumes:
                        self._volumes(pod)
                    for c in pod.containers:
                        if c.proc is None:
                            self._start_container(c)
                    pod.started, pod.error = True, None
                except RunnerError as e:
                    pod.error = str(e)
                    self._report(str(e))
                    self._patch_status(pod)
                    continue
            self._refresh_volumes(pod, cache)
            for c in pod.containers:
                if c.proc is not None and c.proc.poll() is not None and now - c.started_at > 1:
                    c.exit_code = c.proc.returncode
                    self.log(f"runner: {c.where(f'exited with {c.exit_code}')}: restarting (restartPolicy Always)")
                    c.restarts += 1
                    try:
                        self._start_container(c)
                    except RunnerError as e:
                        self._report(str(e))
                try:
                    self._run_probes(c, now)
                except RunnerError as e:
                    self._report(str(e))
            pod.ready = all(c.ready for c in pod.containers)
            self._patch_status(pod)
        self._sync_services()
        for pod in self.to_signal:
            for c in pod.containers:
                if c.proc and c.proc.poll() is None:
                    if (c.spec.get("lifecycle") or {}).get("preStop"):
                        # Like the kubelet: each container's hook in parallel, its SIGTERM after.
                        threading.Thread(target=self._pre_stop_then_term, args=(c,), daemon=True).start()
                    else:
                        c.proc.send_signal(signal.SIGTERM)
        self.to_signal = []
        for pod in list(self.pods.values()):
            if pod.terminating and (pod.all_exited() or now >= pod.kill_at):
                if not pod.all_exited():
                    self.log(f"runner: {pod.name}: grace period over, SIGKILL")
                self._finish(pod)
        for dep in deps:
            self._deploy_status(dep)

    def _reconcile(self, dep):
        key = f"{dep['metadata']['namespace']}/{dep['metadata']['name']}"
        h = hashlib.sha256(json.dumps(dep["spec"]["template"], sort_keys=True).encode()).hexdigest()
        replicas = dep["spec"].get("replicas", 1)
        mine = [p for p in self.pods.values() if p.owner == key and not p.terminating]
        new = [p for p in mine if p.hash == h]
        old = [p for p in mine if p.hash != h]
        if not old:
            for _ in range(replicas - len(new)):
                self._create_pod(dep, h)
            for p in sorted(new, key=lambda p: (p.ready, -p.created))[:max(0, len(new) - replicas)]:
                self.terminate(p, None, "scaled down")
            return
        # Rolling update, maxSurge 1 / maxUnavailable 0 (the chart's strategy).
        if len(new) < replicas and all(p.ready for p in new):
            self._create_pod(dep, h)
        ready = sum(1 for p in mine if p.ready)
        for p in sorted(old, key=lambda p: p.ready):
            if ready - (1 if p.ready else 0) >= replicas:
                self.terminate(p, None, "rolling update")
                ready -= 1 if p.ready else 0
                break

    def _deploy_status(self, dep):
        key = f"{dep['metadata']['namespace']}/{dep['metadata']['name']}"
        h = hashlib.sha256(json.dumps(dep["spec"]["template"], sort_keys=True).encode()).hexdigest()
        mine = [p for p in self.pods.values() if p.owner == key and not p.terminating]
        ready = sum(1 for p in mine if p.ready)
        st = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": len(mine),
              "updatedReplicas": sum(1 for p in mine if p.hash == h), "readyReplicas": ready,
              "availableReplicas": ready, "unavailableReplicas": max(0, dep["spec"].get("replicas", 1) - ready)}
        if self.deploy_status.get(key) != st:
            self.api.merge_patch(f"/apis/apps/v1/namespaces/{dep['metadata']['namespace']}/deployments/{dep['metadata']['name']}/status", {"status": st})
            self.deploy_status[key] = st

    # Services --------------------------------------------------------------------------
    def _sync_services(self):
        svcs = self.api.get("/api/v1/services")["items"]
        rules = []
        for svc in svcs:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            spec = svc["spec"]
            if ns == "default" and name == "kubernetes":
                # The API server's own Service: its endpoint is the API server on the node.
                for p in spec["ports"]:
                    rules.append((spec["clusterIP"], p["port"], p.get("protocol", "TCP"), [(self.node_ip, self.apiserver_port)]))
                continue
            sel = spec.get("selector")
            if not sel:
                continue
            pods = sorted((p for p in self.pods.values() if p.ns == ns and p.ready and not p.terminating
                           and all(p.labels().get(k) == v for k, v in sel.items())), key=lambda p: p.name)
            ports = []
            for sp in spec.get("ports") or []:
                tp = sp.get("targetPort", sp["port"])
                num = tp if isinstance(tp, int) else None
                if num is None:
                    for p in pods:
                        for c in p.containers:
                            for cp in c.spec.get("ports") or []:
                                if cp.get("name") == tp and cp.get("protocol", "TCP") == sp.get("protocol", "TCP"):
                                    num = cp["containerPort"]
                if num is not None:
                    ports.append({"name": sp.get("name", ""), "protocol": sp.get("protocol", "TCP"), "port": num})
                    ip = spec.get("clusterIP")
                    if ip and ip != "None":
                        rules.append((ip, sp["port"], sp.get("protocol", "TCP"), [(p.ip, num) for p in pods]))
            self._write_slice(svc, ports, pods)
        self._apply_nft(rules)

    def _write_slice(self, svc, ports, pods):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        body = {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-runner", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by": "podrunner.weir.dev"}},
                "addressType": "IPv4", "ports": ports,
                "endpoints": [{"addresses": [p.ip], "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "namespace": ns, "name": p.name, "uid": p.uid},
                               "topology": {"kubernetes.io/hostname": NODE_NAME}} for p in pods]}
        key = f"{ns}/{name}"
        digest = json.dumps(body, sort_keys=True)
        if self.slices.get(key) == digest:
            return
        path = f"/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices"
        cur = self.api.get_or_none(f"{path}/{name}-runner")
        if cur is None:
            self.api.post(path, body)
        else:
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            self.api.call("PUT", f"{path}/{name}-runner", body)
        self.slices[key] = digest

    def _apply_nft(self, rules):
        """kube-proxy's job: DNAT Service address:port (TCP and UDP) to a random ready endpoint."""
        lines = ["table ip weir_services", "delete table ip weir_services", "table ip weir_services {",
                 "  chain prerouting { type nat hook prerouting priority -100; policy accept; jump services; }",
                 "  chain output { type nat hook output priority -100; policy accept; jump services; }",
                 # Hairpin: a pod reaching a Service that lands on a pod answers through the node.
                 f'  chain postrouting {{ type nat hook postrouting priority 100; policy accept; ip saddr {POD_CIDR} ct status dnat oifname "wbr0" masquerade; }}']
        svc_lines, chains = [], []
        for i, (ip, port, proto, eps) in enumerate(sorted(rules)):
            if not eps:
                continue
            svc_lines.append(f"    ip daddr {ip} {proto.lower()} dport {port} jump svc{i}")
            targets = ", ".join(f"{j} : jump svc{i}ep{j}" for j in range(len(eps)))
            chains.append(f"  chain svc{i} {{ numgen random mod {len(eps)} vmap {{ {targets} }}; }}")
            for j, (eip, eport) in enumerate(eps):
                chains.append(f"  chain svc{i}ep{j} {{ meta l4proto {proto.lower()} dnat to {eip}:{eport}; }}")
        lines += chains + ["  chain services {"] + svc_lines + ["  }", "}"]
        text = "\n".join(lines) + "\n"
        if text != self.nft_applied:
            sh("nft", "-f", "-", input=text)
            self.nft_applied = text

    # ---------------------------------------------------------------- for scenarios
    def pods_of(self, ns, deploy):
        with self.lock:
            return [p for p in self.pods.values() if p.owner == f"{ns}/{deploy}" and not p.terminating]

    def ready_pods(self, ns, deploy):
        return [p for p in self.pods_of(ns, deploy) if p.ready]

    def crash(self, pod):
        """SIGKILL every container and never restart them (the pod's node is gone); the Pod
        object stays, not ready, until it is deleted through the API."""
        with self.lock:
            pod.crashed = True
            pod.ready = False
            for c in pod.containers:
                c.ready = False
                if c.proc and c.proc.poll() is None:
                    c.proc.kill()

    def kill(self, pod, sig=signal.SIGKILL):
        with self.lock:
            for c in pod.containers:
                if c.proc and c.proc.poll() is None:
                    c.proc.send_signal(sig)
