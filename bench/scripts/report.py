"""Markdown tables from a `make bench` results dict (see bench.py)."""

from __future__ import annotations

import math
import statistics

TITLES = {
    "h1-wrk": "HTTP/1.1, small response, keep-alive, 64 connections (wrk)",
    "h1": "HTTP/1.1, small response, keep-alive, 64 connections (weir-bench)",
    "h2": "HTTP/2 over TLS 1.3, small response, 4 connections x 16 streams (weir-bench)",
    "h3": "HTTP/3, small response, 10 connections x 10 streams (weir-bench)",
    "h1-many": "HTTP/1.1, small response, keep-alive, 256 connections (wrk): more in flight than the pool's old idle bound",
    "h2-many": "HTTP/2 over TLS 1.3, small response, 16 connections x 10 streams (weir-bench): 160 in flight",
}
SMALL = ["h1-wrk", "h1", "h2", "h3", "h1-many", "h2-many"]
ORDER = ["weir", "weir-base", "nginx", "haproxy", "caddy", "traefik", "direct"]


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def mib(b: float) -> str:
    return "–" if b is None or math.isnan(b) else f"{b / 1048576:.1f}"


def num(x: float, fmt: str = "{:.0f}") -> str:
    return "–" if x is None or math.isnan(x) else fmt.format(x)


def ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def small_table(scen: str, runs: dict) -> list[str]:
    rows = {}
    for peer in ORDER:
        rs = runs.get(peer)
        if not rs:
            continue
        rows[peer] = {
            "rps": med([r.get("rps", 0.0) for r in rs]),
            "p50": med([r.get("p50_us") for r in rs]) / 1000,
            "p99": med([r.get("p99_us") for r in rs]) / 1000,
            "cpu": med([r.get("cpu_s") for r in rs]),
            "cpureq": med([r.get("cpu_us_per_req") for r in rs]),
            "rss": med([r.get("peak_rss") for r in rs]),
            "failed": sum(r.get("failed", 0) for r in rs),
            "upstream": med([r.get("upstream_conns") for r in rs]),
            "n": len(rs),
        }
    weir = rows.get("weir", {}).get("rps")
    direct = rows.get("direct", {}).get("rps")
    out = [
        f"### {TITLES.get(scen, scen)}",
        "",
        "| peer | req/s | p50 ms | p99 ms | proxy CPU s | CPU µs/req | peak RSS MiB | failed "
        "| upstream conns opened | Weir ÷ peer (req/s) | peer ÷ direct (req/s) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for peer, r in rows.items():
        out.append(
            f"| {peer} | {num(r['rps'])} | {num(r['p50'], '{:.2f}')} | {num(r['p99'], '{:.2f}')} "
            f"| {num(r['cpu'], '{:.2f}')} | {num(r['cpureq'], '{:.1f}')} | {mib(r['rss'])} "
            f"| {r['failed']} | {num(r['upstream'])} "
            f"| {ratio(weir, r['rps']) if peer != 'weir' else '1.00×'} "
            f"| {ratio(r['rps'], direct) if peer != 'direct' else '1.00×'} | {r['n']} |"
        )
    out.append("")
    return out


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    s = res.get("settings", {})
    out = [
        f"## Results {res.get('started', '')}",
        "",
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), kernel {m.get('kernel')}, Debian "
        f"{m.get('os')}, load average at start {', '.join(f'{x:.2f}' for x in m.get('load_at_start', []))}. "
        f"Pinning: load generator on CPU {m.get('pinning', {}).get('load')}, proxy and backend on "
        f"CPU {m.get('pinning', {}).get('proxy+backend')}. "
        f"{s.get('rounds')} round(s) of {s.get('duration_s')} s per run, peers interleaved, medians shown"
        f"{' (BENCH_QUICK)' if s.get('quick') else ''}. Total {res.get('elapsed_s', '?')} s.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in m.get("versions", {}).items())
        + f" (weir-dataplane built {m.get('weir_binary_built', '?')})",
        "",
        "Proxy CPU s and peak RSS are of the proxy's whole process tree (for `direct`: the "
        "backend), CPU from /proc utime+stime over the measured run, RSS sampled every 100 ms. "
        "`failed` counts transport errors and non-200 responses over all rounds. `upstream conns "
        "opened`: TCP connections the backend accepted from the proxy during the measured run "
        "(after the warm-up; median of rounds), read from its `GET /__stats`.",
        "",
    ]
    if res.get("threads"):
        out += ["Threads per proxy process at idle: "
                + ", ".join(f"{k} {v}" for k, v in res["threads"].items()), ""]
    for scen in SMALL:
        if res.get("small", {}).get(scen):
            out += small_table(scen, res["small"][scen])
    extra = res.get("tables_extra", [])
    if res.get("idle_rss"):
        out += ["### Idle memory (RSS after start, before traffic)", "",
                "| peer | RSS MiB |", "|---|---:|"]
        for peer in ORDER:
            if peer in res["idle_rss"]:
                out.append(f"| {peer} | {mib(med(res['idle_rss'][peer]))} |")
        out.append("")
    out += targets_table(res)
    out += bulk_table(res.get("bulk", {}), res.get("settings", {}).get("bulk"))
    out += idle_table(res.get("idle_h3", {}), res.get("settings", {}).get("idle_conns"))
    out += reload_table(res.get("reload", {}))
    out += operator_table(res.get("operator"))
    out += operator_scale_table(res.get("operator-scale"))
    out += extra
    for f in res.get("failures", []):
        out.append(f"- failure: {f}")
    return "\n".join(out) + "\n"


def bulk_table(bulk: dict, size) -> list[str]:
    if not bulk:
        return []
    out = [f"### HTTP/3 bulk: {size} download and upload, one connection", "",
           "| direction | peer | MiB/s | seconds | proxy CPU s | RSS idle MiB | peak RSS MiB "
           "| RSS after MiB | complete | Weir ÷ bare |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for way in ("download", "upload"):
        runs = bulk.get(way, {})
        meds = {p: med([r.get("mib_per_s") for r in rs]) for p, rs in runs.items()}
        for peer in ("weir", "direct"):
            rs = runs.get(peer)
            if not rs:
                continue
            label = "bare quinn (direct)" if peer == "direct" else peer
            out.append(
                f"| {way} | {label} | {num(meds[peer], '{:.0f}')} "
                f"| {num(med([r.get('duration_s') for r in rs]), '{:.2f}')} "
                f"| {num(med([r.get('cpu_s') for r in rs]), '{:.2f}')} "
                f"| {mib(med([r.get('rss_before') for r in rs]))} "
                f"| {mib(med([r.get('peak_rss') for r in rs]))} "
                f"| {mib(med([r.get('rss_after') for r in rs]))} "
                f"| {sum(1 for r in rs if r.get('complete'))}/{len(rs)} "
                f"| {ratio(meds.get('weir'), meds.get('direct')) if peer == 'weir' else '–'} |")
    out.append("")
    return out


def idle_table(idle: dict, n) -> list[str]:
    if not idle:
        return []
    out = [f"### Memory: idle, and with {n} idle HTTP/3 connections (one request each, then held)",
           "", "| peer | idle RSS MiB | RSS with connections MiB | KiB per connection | opened "
           "| failed | still open at end | proxy CPU s (handshakes) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for peer in ORDER:
        r = idle.get(peer)
        if not r:
            continue
        label = "bare quinn (direct)" if peer == "direct" else peer
        out.append(f"| {label} | {mib(r.get('rss_idle'))} | {mib(r.get('peak_rss'))} "
                   f"| {num(r.get('kib_per_conn', float('nan')), '{:.1f}')} | {r.get('opened')} "
                   f"| {r.get('failed')} | {r.get('alive_at_end')} | {num(r.get('cpu_s'), '{:.2f}')} |")
    out.append("")
    return out


def reload_table(rel: dict) -> list[str]:
    if not rel:
        return []
    out = ["### Weir reload under load: config swaps (PUT /config, alternating snapshots) during a run",
           "", "| load | swaps accepted | PUT p50 ms | PUT p99 ms | requests | failed requests "
           "| req/s | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for proto, r in rel.items():
        out.append(f"| {proto} | {r.get('swaps_ok')}/{r.get('swaps')} "
                   f"| {num(r.get('put_ms_p50'), '{:.1f}')} | {num(r.get('put_ms_p99'), '{:.1f}')} "
                   f"| {r.get('requests')} | {r.get('failed')} | {num(r.get('rps'))} "
                   f"| {num((r.get('p99_us') or float('nan')) / 1000, '{:.2f}')} |")
    out.append("")
    return out


def operator_table(op) -> list[str]:
    if not op:
        return []
    if op.get("skipped"):
        return ["### Operator propagation", "", f"Skipped: {op['skipped']}", ""]
    out = ["### Operator propagation (real kube-apiserver + etcd, operator, one dataplane)", "",
           "| what | value |", "|---|---:|"]
    labels = {
        "routes": "ProxyRoutes created at once (8 client threads)",
        "create_all_s": "time to create them all, s",
        "all_routes_served_after_first_create_s": "first create → dataplane serves all, s",
        "all_routes_served_after_last_create_s": "last create → dataplane serves all, s",
        "snapshot_json_bytes": "snapshot size, bytes of JSON",
        "first_change_after_burst_s": "first single-route change, 3 s after the burst → running, s",
        "single_changes": "then: single-route changes (merge patch of one route, 0.3 s apart)",
        "single_change_p50_s": "single change → running on the dataplane, p50 s",
        "single_change_p99_s": "single change → running on the dataplane, p99 s",
        "single_change_max_s": "single change → running on the dataplane, max s",
        "operator_debounce": "operator debounce",
    }
    for k, v in op.items():
        if isinstance(v, list):
            continue
        if isinstance(v, float):
            v = f"{v:.3f}"
        out.append(f"| {labels.get(k, k)} | {v} |")
    out.append("")
    return out


def operator_scale_table(op) -> list[str]:
    if not op:
        return []
    if op.get("skipped"):
        return ["### Control plane at scale", "", f"Skipped: {op['skipped']}", ""]
    out = [f"### Control plane at scale ({op.get('routes')} ProxyRoutes, {op.get('pods')} dataplane "
           "pods on loopback, real kube-apiserver + etcd)", "", "| what | value |", "|---|---:|"]
    labels = {
        "create_all_s": "time to create the routes (16 client threads), s",
        "all_pods_serving_after_last_create_s": "last create → every pod serves the last route, s",
        "snapshot_json_bytes": "snapshot size, bytes of JSON",
        "changes": "single-route changes (merge patch of one route, 3 s apart)",
        "change_all_pods_p50_s": "single change → every pod serves it, p50 s",
        "change_all_pods_p99_s": "single change → every pod serves it, p99 s",
        "change_all_pods_max_s": "single change → every pod serves it, max s",
        "change_each_pod_p50_s": "single change → one pod serves it, p50 s",
        "change_each_pod_p99_s": "single change → one pod serves it, p99 s",
        "pushes_per_change": "PUT /config per change",
        "bytes_pushed_per_change": "bytes pushed per change (pushes × snapshot)",
        "operator_cpu_s_per_change": "operator CPU per change, s",
        "operator_rss_mib": "operator RSS after the changes, MiB",
        "operator_rss_max_mib": "operator RSS, max seen, MiB",
        "apiserver_requests_per_change": "API-server requests per change (all clients)",
        "late_limit_s": "limit per change, s",
    }
    for k, v in op.items():
        if k in ("routes", "pods") or isinstance(v, (list, dict)):
            continue
        if isinstance(v, float):
            v = f"{v:.3f}"
        out.append(f"| {labels.get(k, k)} | {v} |")
    if any(op.get("pods_late") or []):
        out.append(f"| pods not serving a change after {op.get('late_limit_s')} s, per change "
                   f"(that change's time is a lower bound) | {op['pods_late']} |")
    by = op.get("apiserver_requests_per_change_by_verb_resource") or {}
    if by:
        out.append("")
        out.append("API-server requests per change by verb and resource: " +
                   ", ".join(f"{k} {v}" for k, v in by.items()))
    out.append("")
    return out


def in_flight(settings: dict) -> dict:
    """Requests in flight per small scenario, from the run's load settings: the bound for the
    upstream connections opened during a steady run (issue #18)."""
    def n(key: str) -> int:
        c = settings.get(key) or {}
        return c.get("connections", 0) * c.get("streams", 1)
    return {"h1-wrk": n("h1"), "h1": n("h1"), "h2": n("h2"), "h3": n("h3"),
            "h1-many": n("h1-many"), "h2-many": n("h2-many")}


def targets_table(res: dict) -> list[str]:
    """Issue #9's and #18's targets, as ratios within this run (medians over rounds)."""
    small = res.get("small", {})

    def m(scen: str, peer: str, key: str = "rps") -> float:
        return med([r.get(key) for r in small.get(scen, {}).get(peer, [])])

    rows = []

    def add(what: str, value: float, goal: float, fmt: str = "{:.2f}×", less: bool = False) -> None:
        if value is None or math.isnan(value):
            return
        ok = value <= goal if less else value >= goal
        rows.append(f"| {what} | {fmt.format(value)} | {'≤' if less else '≥'} {fmt.format(goal)} "
                    f"| {'met' if ok else '**missed**'} |")

    for scen in ("h1-wrk", "h1"):
        w = m(scen, "weir")
        add(f"{scen}: Weir ÷ nginx req/s", w / m(scen, "nginx"), 1.2)
        add(f"{scen}: Weir ÷ HAProxy req/s", w / m(scen, "haproxy"), 1.0)
        add(f"{scen}: Weir p99 ÷ HAProxy p99", m(scen, "weir", "p99_us") / m(scen, "haproxy", "p99_us"),
            1.0, less=True)
        add(f"{scen}: Weir ÷ direct req/s", w / m(scen, "direct"), 0.6)
    w3 = m("h3", "weir")
    add("h3: Weir ÷ Caddy req/s", w3 / m("h3", "caddy"), 2.0)
    add("h3: Weir ÷ Traefik req/s", w3 / m("h3", "traefik"), 1.5)
    add("h3: Weir ÷ direct req/s", w3 / m("h3", "direct"), 0.6)
    add("h2: Weir ÷ direct req/s", m("h2", "weir") / m("h2", "direct"), 0.6)
    for way in ("download", "upload"):
        b = res.get("bulk", {}).get(way, {})
        wv = med([r.get("mib_per_s") for r in b.get("weir", [])])
        dv = med([r.get("mib_per_s") for r in b.get("direct", [])])
        add(f"h3 bulk {way}: Weir ÷ bare quinn MiB/s", wv / dv if dv else float("nan"), 0.8)
    idle = res.get("idle_rss", {}).get("weir")
    if idle:
        add("Weir idle RSS, MiB", med(idle) / 1048576, 15.0, "{:.1f}", less=True)
    op = res.get("operator") or {}
    if op.get("single_change_p99_s") is not None:
        add("single-route change → dataplane, p99 s", op["single_change_p99_s"], 1.0, "{:.2f}",
            less=True)
    scale = res.get("operator-scale") or {}
    if scale.get("change_all_pods_p99_s") is not None:
        add(f"{scale.get('routes')} routes × {scale.get('pods')} pods: single change → every pod, p99 s",
            scale["change_all_pods_p99_s"], 1.0, "{:.2f}", less=True)
    out = []
    if rows:
        out += ["### Issue #9 targets in this run", "", "| target | this run | goal | |",
                "|---|---:|---:|---|", *rows, ""]
    rows.clear()
    # Issue #18's targets: HTTP/1.1 at nginx's level (req/s, CPU per request, p99), HTTP/2 at
    # HAProxy's with 160 streams in flight, no upstream connection churn, HTTP/3 at 4× Caddy.
    add("h1-wrk: Weir ÷ nginx req/s", m("h1-wrk", "weir") / m("h1-wrk", "nginx"), 1.0)
    add("h1-wrk: Weir CPU µs/req ÷ nginx's", m("h1-wrk", "weir", "cpu_us_per_req")
        / m("h1-wrk", "nginx", "cpu_us_per_req"), 1.0, less=True)
    add("h1-wrk: Weir p99 ÷ nginx p99", m("h1-wrk", "weir", "p99_us")
        / m("h1-wrk", "nginx", "p99_us"), 1.0, less=True)
    add("h2-many (TLS, 160 in flight): Weir ÷ HAProxy req/s",
        m("h2-many", "weir") / m("h2-many", "haproxy"), 1.0)
    for scen, bound in in_flight(res.get("settings", {})).items():
        if bound and small.get(scen, {}).get("weir"):
            add(f"{scen}: upstream connections opened ({bound} requests in flight)",
                m(scen, "weir", "upstream_conns"), bound, "{:.0f}", less=True)
    add("h3: Weir ÷ Caddy req/s", m("h3", "weir") / m("h3", "caddy"), 4.0)
    if idle:
        add("Weir idle RSS, MiB", med(idle) / 1048576, 15.0, "{:.1f}", less=True)
    if scale.get("change_all_pods_p99_s") is not None:
        add(f"{scale.get('routes')} routes × {scale.get('pods')} pods: single change → every pod, p99 s",
            scale["change_all_pods_p99_s"], 1.0, "{:.2f}", less=True)
    if rows:
        out += ["### Issue #18 targets in this run", "", "| target | this run | goal | |",
                "|---|---:|---:|---|", *rows, ""]
    return out
