#!/usr/bin/env python3
"""Writes charts/weir/dashboards/*.json (Grafana dashboards, schemaVersion 39) from the panel
lists below. `make manifests` runs it; scripts/chart-check.sh fails when the files are stale and
checks every query: it parses (promtool) and names only metrics in docs/metrics.md or
operator/src/metrics.rs."""
import json
import os
import sys

OUT = os.path.join(os.path.dirname(__file__), "..", "charts", "weir", "dashboards")
R = "$__rate_interval"
SEL = 'namespace=~"$namespace"'


def panel(title, exprs, unit="short", kind="timeseries", legend=None, w=12, h=8):
    if isinstance(exprs, str):
        exprs = [exprs]
    return {
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "gridPos": {"w": w, "h": h},
        "targets": [
            {"refId": chr(65 + i), "expr": e, "legendFormat": (legend[i] if legend else "")}
            for i, e in enumerate(exprs)
        ],
    }


def query_var(name, label, query):
    """A multi-value template variable (with "All") filled by a Prometheus query."""
    return {
        "name": name,
        "type": "query",
        "label": label,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": query,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
    }


def dashboard(uid, title, panels, variables=()):
    x = y = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        if x + p["gridPos"]["w"] > 24:
            x, y = 0, y + 8
        p["gridPos"].update({"x": x, "y": y})
        x += p["gridPos"]["w"]
    return {
        "uid": uid,
        "title": title,
        "tags": ["weir"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                query_var("namespace", "Namespace", "label_values(weir_config_info, namespace)"),
                *variables,
            ]
        },
        "panels": panels,
    }


def q(s):
    return s.replace("SEL", SEL).replace("RI", R)


# The SLO dashboard reads the chart's recording rules (charts/weir/templates/_alerts.tpl,
# "weir.sloGroups"); dividing by the recorded objective keeps it right for any values.
SLO_SEL = 'namespace=~"$namespace",route=~"$route"'
ROUTE_VAR = query_var("route", "Route", 'label_values(weir:slo_errors:ratio_rate1h{namespace=~"$namespace"}, route)')
BUDGET = "(1 - weir:slo_objective{namespace=~\"$namespace\"})"


def slo(s):
    return s.replace("SEL", SLO_SEL).replace("BUDGET", BUDGET)


def sli_panel(sli, title):
    return panel(title, [
        slo(f'1 - weir:slo_errors:ratio_rate1h{{SEL,sli="{sli}"}}'),
        slo(f'1 - weir:slo_errors:ratio_period{{SEL,sli="{sli}"}}'),
        slo(f'weir:slo_objective{{namespace=~"$namespace",sli="{sli}"}}'),
    ], "percentunit", legend=["{{route}} (1h)", "{{route}} (budget period)", "objective"], w=8)


DASHBOARDS = {
    "weir-traffic": dashboard("weir-traffic", "Weir / Traffic", [
        panel("Requests per second by route", q('sum by (route) (rate(weir_requests_total{SEL}[RI]))'), "reqps", legend=["{{route}}"]),
        panel("Requests per second by protocol", q('sum by (protocol) (rate(weir_requests_total{SEL}[RI]))'), "reqps", legend=["{{protocol}}"]),
        panel("5xx ratio by route", q('sum by (route) (rate(weir_requests_total{SEL,status_class="5xx"}[RI])) / sum by (route) (rate(weir_requests_total{SEL}[RI]))'), "percentunit", legend=["{{route}}"]),
        panel("Responses by status class", q('sum by (status_class) (rate(weir_requests_total{SEL}[RI]))'), "reqps", legend=["{{status_class}}"]),
        panel("Latency percentiles (all routes)", [
            q('histogram_quantile(0.5, sum by (le) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'),
            q('histogram_quantile(0.9, sum by (le) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'),
            q('histogram_quantile(0.99, sum by (le) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'),
        ], "s", legend=["p50", "p90", "p99"]),
        panel("p99 latency by route", q('histogram_quantile(0.99, sum by (le, route) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{route}}"]),
        panel("p99 latency by backend", q('histogram_quantile(0.99, sum by (le, backend) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{backend}}"]),
        panel("p99 latency by protocol", q('histogram_quantile(0.99, sum by (le, protocol) (rate(weir_request_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{protocol}}"]),
        panel("Proxy errors by kind", q('sum by (kind) (rate(weir_proxy_errors_total{SEL}[RI]))'), "reqps", legend=["{{kind}}"]),
        panel("Requests in flight", q('sum by (protocol) (weir_requests_in_flight{SEL})'), legend=["{{protocol}}"]),
        panel("Response bytes per second by route", q('sum by (route) (rate(weir_response_body_bytes_sum{SEL}[RI]))'), "Bps", legend=["{{route}}"]),
        panel("Client connections by transport", q('sum by (transport) (weir_downstream_connections_active{SEL})'), legend=["{{transport}}"]),
    ]),
    "weir-backends": dashboard("weir-backends", "Weir / Backends", [
        panel("Available endpoints by backend", q('sum by (backend) (weir_backend_endpoint_available{SEL}) / count by (backend) (weir_backend_endpoint_available{SEL})'), "percentunit", legend=["{{backend}}"]),
        panel("Unhealthy endpoints (active checks)", q('count by (backend, endpoint) (weir_backend_endpoint_healthy{SEL} == 0)'), legend=["{{backend}} {{endpoint}}"]),
        panel("Health check failures", q('sum by (backend) (rate(weir_backend_health_checks_total{SEL,result="failure"}[RI]))'), "ops", legend=["{{backend}}"]),
        panel("Outlier ejections", q('sum by (backend) (increase(weir_backend_endpoint_ejections_total{SEL}[RI]))'), legend=["{{backend}}"]),
        panel("Circuit breaker state (0 closed, 1 open, 2 half-open)", q('max by (backend) (weir_backend_circuit_breaker_state{SEL})'), legend=["{{backend}}"]),
        panel("Circuit breaker opens", q('sum by (backend) (increase(weir_backend_circuit_breaker_opens_total{SEL}[RI]))'), legend=["{{backend}}"]),
        panel("Upstream p99 response time", q('histogram_quantile(0.99, sum by (le, backend) (rate(weir_upstream_response_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{backend}}"]),
        panel("Retries and exhausted retries", [
            q('sum by (backend) (rate(weir_backend_retries_total{SEL}[RI]))'),
            q('sum by (backend) (rate(weir_backend_retries_exhausted_total{SEL}[RI]))'),
        ], "ops", legend=["retries {{backend}}", "exhausted {{backend}}"]),
        panel("Concurrency in use / limit", q('sum by (backend) (weir_backend_concurrency_in_use{SEL}) / sum by (backend) (weir_backend_concurrency_limit{SEL})'), "percentunit", legend=["{{backend}}"]),
        panel("Concurrency rejections", q('sum by (backend) (rate(weir_backend_concurrency_rejected_total{SEL}[RI]))'), "ops", legend=["{{backend}}"]),
        panel("Tries per endpoint", q('sum by (backend, endpoint) (rate(weir_backend_endpoint_requests_total{SEL}[RI]))'), "ops", legend=["{{backend}} {{endpoint}}"]),
        panel("Pool: new upstream connections per try", q('sum by (backend) (rate(weir_upstream_connections_created_total{SEL}[RI])) / sum by (backend) (rate(weir_backend_endpoint_requests_total{SEL}[RI]))'), "percentunit", legend=["{{backend}}"]),
        panel("In-flight tries per endpoint", q('sum by (backend, endpoint) (weir_backend_endpoint_requests_in_flight{SEL})'), legend=["{{backend}} {{endpoint}}"]),
    ]),
    "weir-quic": dashboard("weir-quic", "Weir / QUIC and TLS", [
        panel("Active QUIC connections", q('sum by (listener) (weir_downstream_connections_active{SEL,transport="quic"})'), legend=["{{listener}}"]),
        panel("New QUIC connections per second", q('sum by (listener) (rate(weir_downstream_connections_total{SEL,transport="quic"}[RI]))'), "ops", legend=["{{listener}}"]),
        panel("Handshakes by transport and result", q('sum by (transport, result) (rate(weir_tls_handshakes_total{SEL}[RI]))'), "ops", legend=["{{transport}} {{result}}"]),
        panel("Handshake p99", q('histogram_quantile(0.99, sum by (le, transport) (rate(weir_tls_handshake_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{transport}}"]),
        panel("HTTP/3 requests (streams) per second", q('sum by (route) (rate(weir_requests_total{SEL,protocol="h3"}[RI]))'), "reqps", legend=["{{route}}"]),
        panel("HTTP/3 streams in flight", q('sum(weir_requests_in_flight{SEL,protocol="h3"})'), legend=["h3"]),
        panel("Rejected connections", q('sum by (transport, reason) (rate(weir_downstream_connections_rejected_total{SEL}[RI]))'), "ops", legend=["{{transport}} {{reason}}"]),
        panel("Connection lifetime p50 by transport", q('histogram_quantile(0.5, sum by (le, transport) (rate(weir_downstream_connection_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["{{transport}}"]),
    ]),
    "weir-telemetry": dashboard("weir-telemetry", "Weir / Telemetry shipping", [
        panel("Items per second by sink and result", q('sum by (sink, result) (rate(weir_sink_items_total{SEL}[RI]))'), "ops", legend=["{{sink}} {{result}}"]),
        panel("Dropped or failed ratio by sink", q('sum by (sink) (rate(weir_sink_items_total{SEL,result=~"dropped|failed"}[RI])) / sum by (sink) (rate(weir_sink_items_total{SEL}[RI]))'), "percentunit", legend=["{{sink}}"]),
        panel("Send attempts per second", q('sum by (sink) (rate(weir_sink_send_attempts_total{SEL}[RI]))'), "ops", legend=["{{sink}}"]),
        panel("Queued items", q('max by (sink) (weir_sink_queue_items{SEL})'), legend=["{{sink}}"]),
        panel("Seconds since the last successful send", q('time() - max by (sink) (weir_sink_last_success_timestamp_seconds{SEL})'), "s", legend=["{{sink}}"]),
    ]),
    "weir-slo": dashboard("weir-slo", "Weir / SLOs and error budget", [
        panel("Error budget left over the period, by route and SLI", slo('1 - weir:slo_errors:ratio_period{SEL} / on (namespace, sli) group_left () BUDGET'), "percentunit", legend=["{{route}} {{sli}}"], w=24),
        panel("Burn rate over 1h (fast alert above 14.4 with the 5m window)", slo('weir:slo_errors:ratio_rate1h{SEL} / on (namespace, sli) group_left () BUDGET'), legend=["{{route}} {{sli}}"]),
        panel("Burn rate over 6h (slow alert above 6 with the 30m window)", slo('weir:slo_errors:ratio_rate6h{SEL} / on (namespace, sli) group_left () BUDGET'), legend=["{{route}} {{sli}}"]),
        sli_panel("availability", "Availability: requests not answered 5xx"),
        sli_panel("latency", "Latency: requests within the threshold"),
        sli_panel("errors", "Errors: requests without a failure on Weir's side"),
    ], variables=(ROUTE_VAR,)),
    "weir-operator": dashboard("weir-operator", "Weir / Operator and config", [
        panel("Leader (1 = holds the Lease)", q('weir_operator_leader{SEL}'), legend=["{{pod}}"]),
        panel("Dataplane pods ready / programmed", [q('max(weir_operator_pods_ready{SEL})'), q('max(weir_operator_pods_programmed{SEL} and on (pod) weir_operator_leader{SEL} == 1)')], legend=["ready", "programmed"]),
        panel("Config pushes by result", q('sum by (result) (rate(weir_operator_pushes_total{SEL}[RI]))'), "ops", legend=["{{result}}"]),
        panel("Reconciles per second", q('sum(rate(weir_operator_reconciles_total{SEL}[RI]))'), "ops", legend=["reconciles"]),
        panel("Reconcile p99", q('histogram_quantile(0.99, sum by (le) (rate(weir_operator_reconcile_duration_seconds_bucket{SEL}[RI])))'), "s", legend=["p99"]),
        panel("Status writes and errors", [q('sum(rate(weir_operator_status_writes_total{SEL}[RI]))'), q('sum(rate(weir_operator_status_write_errors_total{SEL}[RI]))')], "ops", legend=["writes", "errors"]),
        panel("Snapshot Secret writes", q('sum(increase(weir_operator_configmap_writes_total{SEL}[RI]))'), legend=["writes"]),
        panel("Invalid ProxyRoutes", q('max(weir_operator_routes_invalid{SEL})'), legend=["invalid"]),
        panel("Config version served per dataplane pod", q('count by (version) (weir_config_info{SEL})'), legend=["{{version}}"]),
        panel("Dataplane config reloads by result", q('sum by (result) (increase(weir_config_reloads_total{SEL}[RI]))'), legend=["{{result}}"]),
        panel("Dataplane memory (RSS)", q('process_resident_memory_bytes{SEL}'), "bytes", legend=["{{pod}}"]),
        panel("Dataplane CPU", q('rate(process_cpu_seconds_total{SEL}[RI])'), "percentunit", legend=["{{pod}}"]),
    ]),
}


def main():
    check = "--check" in sys.argv
    stale = False
    for name, d in DASHBOARDS.items():
        text = json.dumps(d, indent=1, sort_keys=True) + "\n"
        path = os.path.join(OUT, name + ".json")
        if check:
            try:
                cur = open(path).read()
            except OSError:
                cur = None
            if cur != text:
                print(f"{path} is stale; run `make manifests`", file=sys.stderr)
                stale = True
        else:
            os.makedirs(OUT, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    known = {n + ".json" for n in DASHBOARDS}
    for f in os.listdir(OUT) if os.path.isdir(OUT) else []:
        if f.endswith(".json") and f not in known:
            print(f"{os.path.join(OUT, f)} is not generated by {__file__}", file=sys.stderr)
            stale = True
    sys.exit(1 if stale else 0)


if __name__ == "__main__":
    main()
