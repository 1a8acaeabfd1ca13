{{/*
Alert rules (metric names from docs/metrics.md and operator/src/metrics.rs). Unit tests:
charts/weir/tests/alerts_test.yaml, run by scripts/chart-check.sh with `promtool test rules`.
*/}}
{{- define "weir.memoryLimitBytes" -}}
{{- $t := .Values.prometheusRule -}}
{{- if $t.memoryLimitBytes -}}
{{- $t.memoryLimitBytes | int64 -}}
{{- else -}}
{{- $m := (dig "limits" "memory" "" .Values.dataplane.resources) | toString -}}
{{- $n := regexFind "^[0-9]+" $m | int64 -}}
{{- $u := regexFind "[A-Za-z]+$" $m -}}
{{- $mult := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "K" 1000 "M" 1000000 "G" 1000000000 -}}
{{- mul $n (get $mult $u | default 1) -}}
{{- end -}}
{{- end -}}

{{- define "weir.alertGroups" -}}
{{- $t := .Values.prometheusRule.thresholds -}}
{{- $dpJob := printf "%s-admin" (include "weir.dataplaneName" .) -}}
{{- $mem := include "weir.memoryLimitBytes" . | int64 -}}
groups:
  - name: weir-dataplane
    rules:
      - alert: WeirBackendEndpointDown
        expr: max by (namespace, backend, endpoint) (weir_backend_endpoint_available) == 0
        for: 2m
        labels: { severity: warning }
        annotations:
          summary: "Endpoint {{`{{ $labels.endpoint }}`}} of backend {{`{{ $labels.backend }}`}} is out of rotation"
          description: "No dataplane pod has the endpoint in rotation (failing health checks or ejected) for 2 minutes."
      - alert: WeirBackendAllEndpointsDown
        expr: max by (namespace, backend) (weir_backend_endpoint_available) == 0
        for: 1m
        labels: { severity: critical }
        annotations:
          summary: "Backend {{`{{ $labels.backend }}`}} has no endpoint in rotation"
          description: "Every endpoint of the backend is unhealthy or ejected; requests get 503 no_healthy_endpoint."
      - alert: WeirHigh5xxRatio
        expr: |
          sum by (namespace, route) (rate(weir_requests_total{status_class="5xx"}[5m]))
            / sum by (namespace, route) (rate(weir_requests_total[5m])) > {{ $t.errorRatio }}
        for: 5m
        labels: { severity: warning }
        annotations:
          summary: "Route {{`{{ $labels.route }}`}}: {{`{{ $value | humanizePercentage }}`}} of responses are 5xx"
          description: "More than {{ $t.errorRatio }} of the route's responses over 5 minutes were 5xx."
      - alert: WeirHighP99Latency
        expr: |
          histogram_quantile(0.99, sum by (namespace, route, le) (rate(weir_request_duration_seconds_bucket[5m]))) > {{ $t.p99LatencySeconds }}
        for: 10m
        labels: { severity: warning }
        annotations:
          summary: "Route {{`{{ $labels.route }}`}}: p99 latency {{`{{ $value | humanizeDuration }}`}}"
          description: "p99 request duration above {{ $t.p99LatencySeconds }}s for 10 minutes."
      - alert: WeirConnectionsRejected
        expr: sum by (namespace, listener, transport, reason) (rate(weir_downstream_connections_rejected_total[5m])) > 0
        for: 5m
        labels: { severity: warning }
        annotations:
          summary: "Listener {{`{{ $labels.listener }}`}} ({{`{{ $labels.transport }}`}}) rejects connections: {{`{{ $labels.reason }}`}}"
          description: "Client connections are refused or dropped before being served."
      - alert: WeirBackendOverloaded
        expr: sum by (namespace, backend) (rate(weir_backend_concurrency_rejected_total[5m])) > 0
        for: 5m
        labels: { severity: warning }
        annotations:
          summary: "Backend {{`{{ $labels.backend }}`}} rejects requests (maxConcurrentRequests)"
          description: "Requests are answered 503 backend_overloaded: no concurrency slot freed within queueTimeout."
      - alert: WeirCircuitBreakerOpen
        expr: max by (namespace, backend) (weir_backend_circuit_breaker_state == 1)
        for: 1m
        labels: { severity: warning }
        annotations:
          summary: "Circuit breaker of backend {{`{{ $labels.backend }}`}} is open"
          description: "At least one dataplane pod answers 503 circuit_open for this backend."
      - alert: WeirConfigReloadFailing
        expr: sum by (namespace, pod) (increase(weir_config_reloads_total{result="failure"}[10m])) > 0
        labels: { severity: warning }
        annotations:
          summary: "Dataplane {{`{{ $labels.pod }}`}} rejected a config"
          description: "A config apply (PUT /config, SIGHUP or certificate reload) failed; the previous config keeps serving."
      - alert: WeirTelemetryDropping
        expr: sum by (namespace, sink) (rate(weir_sink_items_total{result=~"dropped|failed"}[5m])) > 0
        for: 10m
        labels: { severity: warning }
        annotations:
          summary: "Telemetry sink {{`{{ $labels.sink }}`}} drops or fails to ship items"
          description: "Items are dropped (queue full) or failed (send gave up) for 10 minutes; see weir_sink_items_total by result."
      - alert: WeirMemoryNearLimit
        expr: max by (namespace, pod) (process_resident_memory_bytes{job="{{ $dpJob }}"}) / {{ $mem }} > {{ .Values.prometheusRule.thresholds.memoryLimitRatio }}
        for: 10m
        labels: { severity: warning }
        annotations:
          summary: "Dataplane {{`{{ $labels.pod }}`}} uses {{`{{ $value | humanizePercentage }}`}} of its memory limit"
          description: "Resident memory above {{ .Values.prometheusRule.thresholds.memoryLimitRatio }} of the {{ $mem }}-byte limit for 10 minutes."
  - name: weir-operator
    rules:
      - alert: WeirConfigPushFailing
        expr: sum by (namespace) (rate(weir_operator_pushes_total{result=~"rejected|error"}[5m])) > 0
        for: 10m
        labels: { severity: warning }
        annotations:
          summary: "The operator's config pushes to dataplane pods fail"
          description: "PUT /config to dataplane pods keeps failing or being rejected (see SnapshotRejected events and ProxyRoute Programmed conditions)."
      - alert: WeirPodsNotProgrammed
        expr: |
          (weir_operator_pods_ready - weir_operator_pods_programmed) > 0
            and on (namespace, pod) (weir_operator_leader == 1)
        for: 10m
        labels: { severity: warning }
        annotations:
          summary: "{{`{{ $value }}`}} ready dataplane pod(s) do not run the current snapshot"
          description: "The leading operator sees ready dataplane pods that have not acknowledged the current snapshot for 10 minutes."
      - alert: WeirRoutesInvalid
        expr: max by (namespace) (weir_operator_routes_invalid) > 0
        for: 15m
        labels: { severity: info }
        annotations:
          summary: "{{`{{ $value }}`}} ProxyRoute(s) are invalid and left out of the snapshot"
          description: "See the Accepted condition of the ProxyRoutes (kubectl get proxyroutes)."
      - alert: WeirOperatorNotLeading
        expr: (sum(weir_operator_leader{namespace="{{ .Release.Namespace }}"}) or vector(0)) != 1
        for: 5m
        labels: { severity: critical }
        annotations:
          summary: "{{`{{ $value }}`}} operator replicas hold the Lease (want exactly 1)"
          description: "No operator replica leads (nothing pushes config or writes status), or more than one claims to."
{{- if .Values.prometheusRule.slo.enabled }}
{{ include "weir.sloGroups" . | indent 2 }}
{{- end }}
{{- end -}}


{{/*
Per-route SLOs (docs/slo.md): for each SLI, the error ratio (bad requests / requests) per
(namespace, route) over the alert windows, the bad and total request rates over 5m (summed over
the budget period for the budget left; no bad series yet reads as 0, not absent, so healthy
routes show a full budget), and the objective itself as a series, so that the
"SLOs and error budget" dashboard (static JSON) follows the values. Alerts are the multi-window,
multi-burn-rate kind of the SRE workbook: the long window says the budget burns fast enough to
matter, the short one that it still does (so the alert resolves soon after a fix).
*/}}
{{- define "weir.sloGroups" -}}
{{- $slo := .Values.prometheusRule.slo -}}
{{- $r := `route!="-"` -}}
{{- $kinds := "no_config|no_backend|no_endpoint|no_healthy_endpoint|circuit_open|backend_overloaded|upstream_connect_error|upstream_error|upstream_timeout|upstream_body_error|ext_auth_error|kairos_error|websocket_unsupported|websocket_not_upgraded" -}}
{{- $slis := list
  (dict "sli" "availability" "objective" $slo.availability "what" "Requests answered 5xx"
    "bad" (printf `sum by (namespace, route) (rate(weir_requests_total{%s,status_class="5xx"}[WINDOW]))` $r)
    "total" (printf `sum by (namespace, route) (rate(weir_requests_total{%s}[WINDOW]))` $r))
  (dict "sli" "latency" "objective" $slo.latency "what" (printf "Requests slower than %vs" $slo.latencyThresholdSeconds)
    "bad" (printf `(sum by (namespace, route) (rate(weir_request_duration_seconds_count{%s}[WINDOW])) - sum by (namespace, route) (rate(weir_request_duration_seconds_bucket{%s,le="%v"}[WINDOW])))` $r $r $slo.latencyThresholdSeconds)
    "total" (printf `sum by (namespace, route) (rate(weir_request_duration_seconds_count{%s}[WINDOW]))` $r))
  (dict "sli" "errors" "objective" $slo.errorRate "what" "Requests failed on Weir's side"
    "bad" (printf `sum by (namespace, route) (rate(weir_proxy_errors_total{%s,kind=~"%s"}[WINDOW]))` $r $kinds)
    "total" (printf `sum by (namespace, route) (rate(weir_requests_total{%s}[WINDOW]))` $r))
-}}
- name: weir-slo-recording
  rules:
{{- range $s := $slis }}
{{- $bad := .bad }}{{- $total := .total }}
    - record: weir:slo_objective
      labels: { sli: {{ .sli }}, namespace: {{ $.Release.Namespace }} }
      expr: vector({{ .objective }})
{{- range list "5m" "30m" "1h" "6h" }}
    - record: weir:slo_errors:ratio_rate{{ . }}
      labels: { sli: {{ $s.sli }} }
      expr: |
        ({{ replace "WINDOW" . $bad }}
          or {{ replace "WINDOW" . $total }} * 0)
        / {{ replace "WINDOW" . $total }}
{{- end }}
    - record: weir:slo_bad:rate5m
      labels: { sli: {{ .sli }} }
      expr: {{ replace "WINDOW" "5m" $bad }} or {{ replace "WINDOW" "5m" $total }} * 0
    - record: weir:slo_total:rate5m
      labels: { sli: {{ .sli }} }
      expr: {{ replace "WINDOW" "5m" $total }}
    - record: weir:slo_errors:ratio_period
      labels: { sli: {{ .sli }}, period: {{ $slo.period }} }
      expr: |
        sum_over_time(weir:slo_bad:rate5m{sli="{{ .sli }}"}[{{ $slo.period }}])
          / sum_over_time(weir:slo_total:rate5m{sli="{{ .sli }}"}[{{ $slo.period }}])
{{- end }}
- name: weir-slo-alerts
  rules:
{{- range $s := $slis }}
{{- range list (list "Fast" "1h" "5m" $slo.burnRates.fast "critical") (list "Slow" "6h" "30m" $slo.burnRates.slow "warning") }}
{{- $speed := index . 0 }}{{- $long := index . 1 }}{{- $short := index . 2 }}{{- $rate := index . 3 }}
    - alert: WeirErrorBudgetBurn{{ $speed }}
      expr: |
        (weir:slo_errors:ratio_rate{{ $long }}{sli="{{ $s.sli }}"} / (1 - {{ $s.objective }})) > {{ $rate }}
          and (weir:slo_errors:ratio_rate{{ $short }}{sli="{{ $s.sli }}"} / (1 - {{ $s.objective }})) > {{ $rate }}
      labels: { severity: {{ index . 4 }}, sli: {{ $s.sli }} }
      annotations:
        summary: "Route {{`{{ $labels.route }}`}}: {{ $s.sli }} error budget burns {{`{{ $value | printf \"%.1f\" }}`}}x too fast"
        description: "{{ $s.what }} over {{ $long }} and {{ $short }}: the {{ $s.objective }} {{ $s.sli }} objective's {{ $slo.period }} budget runs out {{ $rate }}x+ faster than it accrues (docs/slo.md)."
{{- end }}
{{- end }}
{{- end -}}
