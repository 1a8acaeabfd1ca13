{{/* Names and labels. */}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "weir.operatorName" -}}{{ include "weir.fullname" . | trunc 54 | trimSuffix "-" }}-operator{{- end -}}
{{- define "weir.dataplaneName" -}}{{ include "weir.fullname" . | trunc 53 | trimSuffix "-" }}-dataplane{{- end -}}
{{- define "weir.adminSecretName" -}}
{{- default (printf "%s-admin-token" (include "weir.fullname" . | trunc 51 | trimSuffix "-")) .Values.dataplane.admin.existingSecret -}}
{{- end -}}

{{/* Labels for objects that also carry a selector (which has name + instance). */}}
{{- define "weir.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weir
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "weir.labels" -}}
{{ include "weir.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "weir.operatorSelector" -}}
app.kubernetes.io/name: weir-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator's default --dataplane-selector is app.kubernetes.io/name=weir-dataplane. */}}
{{- define "weir.dataplaneSelector" -}}
app.kubernetes.io/name: weir-dataplane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The label selector string the operator uses to find dataplane pods. */}}
{{- define "weir.dataplaneSelectorString" -}}
{{- if .Values.sidecar.enabled -}}
{{- .Values.sidecar.podLabel -}}
{{- else -}}
app.kubernetes.io/name=weir-dataplane,app.kubernetes.io/instance={{ .Release.Name }}
{{- end -}}
{{- end -}}

{{- define "weir.image" -}}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) -}}
{{- end -}}

{{/* The listeners the operator programs (the snapshot's `listeners`). */}}
{{- define "weir.listeners" -}}
{{- $l := .Values.dataplane.listeners -}}
{{- $http3 := include "weir.http3" . -}}{{- /* fails the install on http3 without https */ -}}
- name: http
  address: "0.0.0.0:{{ $l.http.port }}"
  protocol: http
{{- if $l.https.enabled }}
- name: https
  address: "0.0.0.0:{{ $l.https.port }}"
  protocol: https
  {{- if .Values.dataplane.tls.secretName }}
  tls:
    certificates:
      - certFile: /etc/weir/tls/tls.crt
        keyFile: /etc/weir/tls/tls.key
  {{- end }}
  http3:
    enabled: {{ eq (include "weir.http3" .) "true" }}
    {{- with include "weir.advertisedPort" . }}
    advertisedPort: {{ . }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* "true" when the https listener also serves HTTP/3 on its UDP port. `http3` unset follows
`https.enabled`; `http3: true` without the https listener cannot work and fails the install. */}}
{{- define "weir.http3" -}}
{{- $l := .Values.dataplane.listeners -}}
{{- if and (not $l.https.enabled) (eq (toString $l.https.http3) "true") -}}
{{- fail "dataplane.listeners.https.http3=true needs dataplane.listeners.https.enabled=true: HTTP/3 is served on the https listener's UDP port" -}}
{{- end -}}
{{- if and $l.https.enabled (ne (toString $l.https.http3) "false") -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The port the https listener's `Alt-Svc: h3=":port"` names: the UDP port clients connect to.
An explicit dataplane.listeners.https.advertisedPort wins (0 = do not advertise). Behind the
chart's Service it is the Service port, or the fixed node port of a NodePort Service; without a
Service (sidecar mode, kind none) it is empty: the dataplane then advertises its own port. */}}
{{- define "weir.advertisedPort" -}}
{{- $d := .Values.dataplane -}}
{{- $v := $d.listeners.https.advertisedPort -}}
{{- if not (kindIs "invalid" $v) -}}
{{- if and (kindIs "string" $v) (ne $v "off") -}}
{{- fail (printf "dataplane.listeners.https.advertisedPort: %q is not a port (1-65535, or 0 / off)" $v) -}}
{{- end -}}
{{- if eq (toString $v) "off" -}}0{{- else -}}{{ $v | int }}{{- end -}}
{{- else if or .Values.sidecar.enabled (eq $d.kind "none") -}}
{{- else if and (eq $d.service.type "NodePort") $d.service.nodePorts.https -}}
{{ $d.service.nodePorts.https | int }}
{{- else -}}
{{ $d.service.ports.https | int }}
{{- end -}}
{{- end -}}

{{- define "weir.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "weir.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "weir.hpaApiVersion" -}}
{{- if semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}

{{- define "weir.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{/* Sidecar injector: its Service (and webhook, certificate, ConfigMap) name. */}}
{{- define "weir.injectorName" -}}{{ include "weir.fullname" . | trunc 54 | trimSuffix "-" }}-injector{{- end -}}

{{/* The injector's settings file (operator/src/inject/settings.rs). */}}
{{- define "weir.injectorSettings" -}}
{{- $i := .Values.injector -}}
{{- $native := $i.nativeSidecar -}}
{{- if eq (toString $native) "auto" -}}
{{- $native = semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
{{- end -}}
{{- $image := .Values.dataplane.image -}}
{{- if $i.image.repository -}}{{- $image = $i.image -}}{{- end -}}
{{- dict
  "image" (include "weir.image" (dict "image" $image "appVersion" .Chart.AppVersion))
  "imagePullPolicy" $image.pullPolicy
  "inboundPort" ($i.inboundPort | int)
  "adminPort" ($i.adminPort | int)
  "outboundPort" ($i.outboundPort | int)
  "inboundProtocol" $i.inboundProtocol
  "logLevel" $i.logLevel
  "logFormat" .Values.dataplane.logFormat
  "drainTimeout" $i.drainTimeout
  "resources" $i.resources
  "nativeSidecar" $native
  | toPrettyJson }}
{{- end -}}
