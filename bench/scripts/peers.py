"""Equivalent configurations for every peer of `make bench`.

Each peer gets: one plain listener (HTTP/1.1), one TLS listener (TLS 1.3, ALPN h2 + http/1.1,
HTTP/3 on the same UDP port where the peer can), one route `/` -> the one backend, keep-alive
to the backend, no access log, one worker (thread / process / GOMAXPROCS), and the
forwarding headers X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host on each forwarded
request (Weir, Caddy and Traefik add them by default; nginx and HAProxy are told to, as their
production configs do: the backend, on the proxy's CPU, pays for parsing them). Every file is
written into the peer's own temp dir. JSON is valid YAML, so YAML-configured peers get JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Ports:
    http: int  # TCP, HTTP/1.1
    https: int  # TCP TLS (h2, http/1.1) and UDP (h3) where supported
    admin: int = 0  # Weir only


@dataclass
class Spec:
    """How to start one peer."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    protocols: tuple[str, ...] = ("h1", "h2", "h3")
    version: str = ""


def weir_snapshot(version: str, ports: Ports, backend: int, cert: Path, key: Path,
                  marker: str = "a") -> dict:
    """Weir's snapshot; `marker` varies a response header (the reload scenario swaps a/b)."""
    return {
        "version": version,
        "listeners": [
            {"name": "http", "address": f"127.0.0.1:{ports.http}", "protocol": "http"},
            {
                "name": "https",
                "address": f"127.0.0.1:{ports.https}",
                "protocol": "https",
                "tls": {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]},
            },
        ],
        "backends": {"b": {"endpoints": [f"127.0.0.1:{backend}"]}},
        "routes": [
            {
                "name": "all",
                "rules": [
                    {
                        "filters": {"responseHeaders": {"set": [{"name": "x-bench", "value": marker}]}},
                        "backendRefs": [{"name": "b"}],
                    }
                ]
                if marker != "a"
                else [{"backendRefs": [{"name": "b"}]}],
            }
        ],
    }


def weir(bins: Path, d: Path, ports: Ports, backend: int, cert: Path, key: Path,
         token: str) -> Spec:
    conf = d / "weir.json"
    conf.write_text(json.dumps(weir_snapshot("bench-a", ports, backend, cert, key), indent=1))
    (d / "token").write_text(token)
    return Spec(
        "weir",
        [
            str(bins / "weir-dataplane"),
            "--config", str(conf),
            "--admin-address", f"127.0.0.1:{ports.admin}",
            "--admin-token-file", str(d / "token"),
            "--access-log", "off",
        ],
        env={"RUST_LOG": "warn"},
    )


def nginx(d: Path, ports: Ports, backend: int, cert: Path, key: Path) -> Spec:
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (d / sub).mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  upstream b {{
    server 127.0.0.1:{backend};
    keepalive 256;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{ports.http};
    listen 127.0.0.1:{ports.https} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    http2_max_concurrent_streams 1024;
    location / {{
      proxy_pass http://b;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    return Spec("nginx", ["nginx", "-p", str(d), "-c", str(conf), "-e", f"{d}/error.log"],
                protocols=("h1", "h2"))


def haproxy(d: Path, ports: Ports, backend: int, cert: Path, key: Path) -> Spec:
    pem = d / "cert+key.pem"
    pem.write_text(cert.read_text() + key.read_text())
    conf = d / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:{ports.http}
  bind 127.0.0.1:{ports.https} ssl crt {pem} alpn h2,http/1.1
  default_backend b
backend b
  option forwardfor
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  server s1 127.0.0.1:{backend}
""")
    return Spec("haproxy", ["haproxy", "-db", "-f", str(conf)], protocols=("h1", "h2"))


def caddy(d: Path, ports: Ports, backend: int, cert: Path, key: Path) -> Spec:
    rp = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"127.0.0.1:{backend}"}],
        "transport": {"protocol": "http", "keep_alive": {"max_idle_conns_per_host": 256}},
    }
    conf = {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "plain": {
                        "listen": [f"127.0.0.1:{ports.http}"],
                        "automatic_https": {"disable": True},
                        "routes": [{"handle": [rp]}],
                    },
                    "tls": {
                        "listen": [f"127.0.0.1:{ports.https}"],
                        "automatic_https": {"disable": True},
                        "protocols": ["h1", "h2", "h3"],
                        "tls_connection_policies": [
                            {"protocol_min": "tls1.3", "default_sni": "localhost"}
                        ],
                        "routes": [{"handle": [rp]}],
                    },
                }
            },
            "tls": {"certificates": {"load_files": [{"certificate": str(cert), "key": str(key)}]}},
        },
    }
    f = d / "caddy.json"
    f.write_text(json.dumps(conf, indent=1))
    return Spec(
        "caddy",
        ["caddy", "run", "--config", str(f)],
        env={"GOMAXPROCS": "1", "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d), "HOME": str(d)},
    )


def traefik(exe: Path, d: Path, ports: Ports, backend: int, cert: Path, key: Path) -> Spec:
    dyn = {
        "http": {
            "routers": {
                "plain": {"rule": "PathPrefix(`/`)", "service": "b", "entryPoints": ["web"]},
                "secure": {"rule": "PathPrefix(`/`)", "service": "b",
                           "entryPoints": ["websecure"], "tls": {}},
            },
            "services": {"b": {"loadBalancer": {"servers": [{"url": f"http://127.0.0.1:{backend}"}]}}},
        },
        "tls": {
            "certificates": [{"certFile": str(cert), "keyFile": str(key)}],
            "stores": {"default": {"defaultCertificate": {"certFile": str(cert), "keyFile": str(key)}}},
            "options": {"default": {"minVersion": "VersionTLS13"}},
        },
    }
    (d / "dynamic.yml").write_text(json.dumps(dyn, indent=1))
    static = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "ERROR"},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{ports.http}"},
            "websecure": {"address": f"127.0.0.1:{ports.https}", "http3": {}},
        },
        "serversTransport": {"maxIdleConnsPerHost": 256},
        "providers": {"file": {"filename": str(d / "dynamic.yml"), "watch": False}},
    }
    (d / "traefik.yml").write_text(json.dumps(static, indent=1))
    return Spec("traefik", [str(exe), f"--configFile={d / 'traefik.yml'}"],
                env={"GOMAXPROCS": "1", "HOME": str(d)})


def traefik_exe() -> Path:
    venv = Path(os.environ.get("BENCH_VENV", Path.home() / ".cache/weir/bench-venv"))
    return venv / "bin" / "traefik"
