#!/usr/bin/env python3
"""Soak run (issue #19): one dataplane under mixed HTTP/1.1, HTTP/2 and HTTP/3 load for
SOAK_MINUTES, while

- the config is swapped every 10 s (two versions taking turns; the backend's retry settings
  change too, so its runtime, pools and health checker are rebuilt every time);
- one backend endpoint is killed every minute (at :20) and started again (at :35);
- the httpJson telemetry sink is down for 2 minutes (from 10 % of the run on);
- WebSocket tunnels are opened and abandoned (closed abruptly, or left open with the client
  no longer reading while it keeps sending: the tunnel's idle timeout must free them);
- clients vanish mid-request (before the answer of a slow request, halfway through an upload,
  halfway through a download).

Every minute: RSS and open file descriptors of the dataplane, requests sent and failed.
At the end (load stopped, 20 s for idle timeouts): downstream connections, requests in
flight, WebSocket tunnels and upstream connections still open, threads. The RSS of the last
10 minutes must not grow by more than 5 % (exit status 1 otherwise; also when a gauge that
must drain did not).

Usage: soak.py BIN_DIR OUT_DIR (scripts/soak.sh builds the binaries and picks the dirs).
Only loopback is used; every child process is ended on exit.
"""

import base64
import hashlib
import http.server
import json
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request

MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
DURATION = MINUTES * 60
BIN, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)
procs = []
stop = threading.Event()
counters_lock = threading.Lock()
counters = {}


def count(key, n=1):
    with counters_lock:
        counters[key] = counters.get(key, 0) + n


def log(msg):
    line = f"[soak {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(os.path.join(OUT, "soak.log"), "a") as f:
        f.write(line + "\n")


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_udp_port():
    while True:
        p = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue


def spawn(args, name):
    f = open(os.path.join(OUT, f"{name}.log"), "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    return p


def end(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


# ---------------------------------------------------------------------------------------
# Backends: two weir-echo endpoints, a WebSocket echo, an httpJson sink.

ECHO = [free_port(), free_port()]
WS_PORT = free_port()
SINK_PORT = free_port()
HTTP_PORT = free_port()
HTTPS_PORT = free_tcp_udp_port()
ADMIN_PORT = free_port()
ADMIN = f"http://127.0.0.1:{ADMIN_PORT}"


def start_echo(i):
    return spawn([f"{BIN}/weir-echo", "--listen", f"127.0.0.1:{ECHO[i]}", "--name", f"e{i}"], f"echo{i}")


class WsBackend(socketserver.ThreadingTCPServer):
    """Answers a WebSocket handshake with 101, then echoes raw bytes (the proxy's tunnel
    copies bytes; frames are the peers' business)."""

    daemon_threads = True
    allow_reuse_address = True


class WsHandler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(120)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    return
                head += chunk
            key = b""
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"sec-websocket-key:"):
                    key = line.split(b":", 1)[1].strip()
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            s.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while True:
                data = s.recv(65536)
                if not data:
                    return
                s.sendall(data)
        except OSError:
            return


sink_conns = set()
sink_lock = threading.Lock()


class SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with sink_lock:
            sink_conns.add(self.connection)

    def finish(self):
        with sink_lock:
            sink_conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        count("sink_batches")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


class Sink:
    def __init__(self):
        self.server = None

    def up(self):
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", SINK_PORT), SinkHandler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self):
        """Stops listening and cuts the kept-alive connections too: a real outage."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with sink_lock:
            for c in list(sink_conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------
# Config: two versions taking turns.


def config(n):
    attempts = 2 + n % 2
    return {
        "version": f"soak-{n}",
        "listeners": [
            {"name": "http", "address": f"127.0.0.1:{HTTP_PORT}", "protocol": "http"},
            {"name": "https", "address": f"127.0.0.1:{HTTPS_PORT}", "protocol": "https"},
        ],
        "backends": {
            "app": {
                "endpoints": [f"127.0.0.1:{ECHO[0]}", f"127.0.0.1:{ECHO[1]}"],
                "timeouts": {"connect": "1s", "request": "10s"},
                "healthCheck": {"http": {"path": "/healthz"}, "interval": "1s"},
                "retries": {"attempts": attempts},
            },
            "ws": {"endpoints": [f"127.0.0.1:{WS_PORT}"]},
        },
        "sinks": {
            "collector": {
                "type": "httpJson",
                "endpoint": f"http://127.0.0.1:{SINK_PORT}/ingest",
                "flushInterval": "1s",
                "timeout": "1s",
            }
        },
        "routes": [
            {
                "name": "ws",
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/ws"}}],
                        "websocket": {"enabled": True, "idleTimeout": "10s"},
                        "backendRefs": [{"name": "ws"}],
                    }
                ],
            },
            {
                "name": "app",
                "rules": [
                    {
                        "filters": {
                            "responseHeaders": {"set": [{"name": "x-soak-version", "value": str(n)}]}
                        },
                        "backendRefs": [{"name": "app"}],
                    }
                ],
            },
        ],
    }


def put_config(n):
    body = json.dumps(config(n)).encode()
    req = urllib.request.Request(f"{ADMIN}/config", data=body, method="PUT")
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            count("config_swaps")
    except Exception as e:  # noqa: BLE001 - any failure is counted and logged
        count("config_swap_failures")
        log(f"config swap {n} failed: {e}")


def admin_get(path):
    with urllib.request.urlopen(f"{ADMIN}{path}", timeout=10) as r:
        return r.read().decode()


def metric_sum(text, name, label_filter=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and label_filter in line:
            try:
                total += float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
    return total


# ---------------------------------------------------------------------------------------
# Chaos loops.


def swapper():
    n = 1
    while not stop.wait(10):
        n += 1
        put_config(n)


def killer():
    """Endpoint 1 down from :20 to :35 of every minute."""
    start = time.time()
    minute = 0
    while not stop.is_set():
        minute += 1
        if stop.wait(max(0, start + (minute - 1) * 60 + 20 - time.time())):
            return
        end(echo[1])
        count("endpoint_kills")
        if stop.wait(15):
            return
        echo[1] = start_echo(1)
        count("endpoint_restarts")


def sink_outage(sink):
    if stop.wait(DURATION * 0.1):
        return
    log("telemetry sink down")
    sink.down()
    stop.wait(120)
    sink.up()
    log("telemetry sink up again")


def ws_abandoner():
    i = 0
    while not stop.wait(2):
        i += 1
        try:
            s = socket.create_connection(("127.0.0.1", HTTP_PORT), 5)
            key = base64.b64encode(os.urandom(16))
            s.sendall(
                b"GET /ws/" + str(i).encode() + b" HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
            )
            head = s.recv(4096)
            if not head.startswith(b"HTTP/1.1 101"):
                count("ws_handshake_failures")
                s.close()
                continue
            count("ws_opened")
            if i % 2:
                # Abrupt close right after some traffic.
                s.sendall(b"\x81\x85\x11\x22\x33\x44" + bytes(b ^ m for b, m in zip(b"hello", b"\x11\x22\x33\x44\x11")))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
                count("ws_abandoned_reset")
            else:
                # Keeps sending, never reads: the echo backend's writes stall, then the
                # tunnel's; its idle timeout (10 s) must close it. The socket is closed by
                # the client only after 30 s.
                threading.Thread(target=ws_flood, args=(s,), daemon=True).start()
                count("ws_abandoned_stalled")
        except OSError:
            count("ws_errors")


def ws_flood(s):
    s.settimeout(1)
    deadline = time.time() + 30
    chunk = b"\x82\xfe\xff\xff\x00\x00\x00\x00" + b"x" * 65535
    while time.time() < deadline and not stop.is_set():
        try:
            s.sendall(chunk)
        except socket.timeout:
            continue
        except OSError:
            break
    s.close()


def vanisher():
    i = 0
    while not stop.wait(0.5):
        i += 1
        kind = i % 3
        try:
            s = socket.create_connection(("127.0.0.1", HTTP_PORT), 5)
            if kind == 0:
                s.sendall(b"GET /?delay_ms=2000 HTTP/1.1\r\nHost: soak\r\n\r\n")
                time.sleep(0.2)
            elif kind == 1:
                s.sendall(b"POST /?mirror=0 HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000000\r\n\r\n")
                s.sendall(b"y" * 100000)
                time.sleep(0.1)
            else:
                s.sendall(b"GET /?bytes=20000000 HTTP/1.1\r\nHost: soak\r\n\r\n")
                s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
            count("clients_vanished")
        except OSError:
            count("vanish_errors")


LOADS = [
    ("h1", f"http://127.0.0.1:{HTTP_PORT}/a", ["-c", "4"]),
    ("h2", f"https://127.0.0.1:{HTTPS_PORT}/b?bytes=4096", ["-c", "2", "-m", "4", "-k"]),
    ("h3", f"https://127.0.0.1:{HTTPS_PORT}/c", ["-c", "2", "-m", "4", "-k"]),
]


def loader(proto, url, extra, totals):
    """weir-bench in 30 s slices until the end; sums each slice's JSON report."""
    while not stop.is_set():
        left = DURATION - (time.time() - t0)
        if left < 2:
            return
        secs = int(min(30, left))
        r = subprocess.run(
            [f"{BIN}/weir-bench", "-p", proto, "-d", f"{secs}s", "-t", "1", "--timeout", "15s", "--json", *extra, url],
            capture_output=True,
            text=True,
        )
        try:
            rep = json.loads(r.stdout)
        except json.JSONDecodeError:
            totals["bench_failures"] = totals.get("bench_failures", 0) + 1
            log(f"{proto}: weir-bench gave no report: {r.stderr[-500:]}")
            continue
        with counters_lock:
            totals["requests"] = totals.get("requests", 0) + rep.get("requests", 0)
            totals["responses"] = totals.get("responses", 0) + rep.get("responses", 0)
            for code, n in rep.get("status", {}).items():
                totals.setdefault("status", {})[code] = totals.get("status", {}).get(code, 0) + n
            for e, n in rep.get("errors", {}).items():
                totals.setdefault("errors", {})[e] = totals.get("errors", {}).get(e, 0) + n
            for e, v in rep.get("first_errors", {}).items():
                totals.setdefault("first_errors", {}).setdefault(e, v)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def failed(totals):
    bad = sum(n for c, n in totals.get("status", {}).items() if not c.startswith("2"))
    return bad + sum(totals.get("errors", {}).values())


def cleanup(*_):
    stop.set()
    for p in procs:
        end(p)


signal.signal(signal.SIGTERM, lambda *_: (cleanup(), sys.exit(1)))

echo = [start_echo(0), start_echo(1)]
ws = WsBackend(("127.0.0.1", WS_PORT), WsHandler)
threading.Thread(target=ws.serve_forever, daemon=True).start()
sink = Sink()
sink.up()
for p in ECHO:
    wait_port(p)
cfg_path = os.path.join(OUT, "initial.json")
with open(cfg_path, "w") as f:
    json.dump(config(1), f, indent=1)
env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
dp = subprocess.Popen(
    [f"{BIN}/weir-dataplane", "--config", cfg_path, "--admin-address", f"127.0.0.1:{ADMIN_PORT}", "--access-log", "off"],
    stdout=open(os.path.join(OUT, "dataplane.log"), "ab"),
    stderr=subprocess.STDOUT,
    env=env,
    start_new_session=True,
)
procs.append(dp)
wait_port(HTTP_PORT)
wait_port(ADMIN_PORT)
log(f"dataplane pid {dp.pid}; {MINUTES:g} min; http :{HTTP_PORT}, https+h3 :{HTTPS_PORT}, admin :{ADMIN_PORT}")

t0 = time.time()
totals = {p: {} for p, _, _ in LOADS}
threads = [threading.Thread(target=loader, args=(p, u, e, totals[p]), daemon=True) for p, u, e in LOADS]
threads += [
    threading.Thread(target=f, args=a, daemon=True)
    for f, a in [(swapper, ()), (killer, ()), (sink_outage, (sink,)), (ws_abandoner, ()), (vanisher, ())]
]
for t in threads:
    t.start()

samples = []
rc = 0
try:
    minute = 0
    while True:
        now = time.time() - t0
        sample = {"minute": minute, "rss_kib": rss_kib(dp.pid), "fds": fds(dp.pid)}
        with counters_lock:
            sample["requests"] = sum(t.get("requests", 0) for t in totals.values())
            sample["failed"] = sum(failed(t) for t in totals.values())
        try:
            m = admin_get("/metrics")
            sample["connections_active"] = metric_sum(m, "weir_downstream_connections_active")
            sample["ws_tunnels_open"] = metric_sum(m, "weir_websocket_tunnels_open")
        except Exception as e:  # noqa: BLE001
            sample["metrics_error"] = str(e)
        samples.append(sample)
        log(json.dumps(sample))
        if now >= DURATION:
            break
        minute += 1
        time.sleep(max(0, t0 + minute * 60 - time.time()))
        if dp.poll() is not None:
            log(f"the dataplane exited with {dp.returncode}")
            rc = 1
            break
finally:
    stop.set()

for t in threads[:3]:
    t.join(60)
log("load stopped; 20 s for idle timeouts and drains")
time.sleep(20)
end_state = {}
if dp.poll() is None:
    m = admin_get("/metrics")
    end_state = {
        "rss_kib": rss_kib(dp.pid),
        "fds": fds(dp.pid),
        "downstream_connections_active": metric_sum(m, "weir_downstream_connections_active"),
        "requests_in_flight": metric_sum(m, "weir_requests_in_flight"),
        "websocket_tunnels_open": metric_sum(m, "weir_websocket_tunnels_open"),
        "upstream_connections_open": metric_sum(m, "weir_upstream_connections_open"),
        "process_threads": metric_sum(m, "process_threads"),
        "config_reloads": metric_sum(m, "weir_config_reloads_total"),
        "sinks": json.loads(admin_get("/sinks")),
    }
cleanup()

last10 = [s for s in samples if s["minute"] >= samples[-1]["minute"] - 10]
base = last10[0]["rss_kib"] if last10 else 0
growth = (max(s["rss_kib"] for s in last10) - base) / base * 100 if base else 0.0
report = {
    "minutes": MINUTES,
    "per_protocol": totals,
    "chaos": counters,
    "samples": samples,
    "end": end_state,
    "rss_growth_last_10_min_percent": round(growth, 2),
}
with open(os.path.join(OUT, "report.json"), "w") as f:
    json.dump(report, f, indent=1)
log(f"report: {os.path.join(OUT, 'report.json')}")
log(f"per protocol: {json.dumps({p: {k: t.get(k) for k in ('requests', 'responses', 'status', 'errors')} for p, t in totals.items()})}")
log(f"chaos: {json.dumps(counters)}")
log(f"end: {json.dumps(end_state)}")
log(f"RSS growth over the last 10 minutes: {growth:.2f} % (limit 5 %)")
if growth > 5:
    log("FAIL: RSS grew by more than 5 % in the last 10 minutes")
    rc = 1
for k in ("downstream_connections_active", "requests_in_flight", "websocket_tunnels_open"):
    if end_state.get(k, 0) != 0:
        log(f"FAIL: {k} is {end_state.get(k)} after the load stopped")
        rc = 1
sys.exit(rc)
