{{/* Names and labels. */}}
{{- define "ghlproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ghlproxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ghlproxy.injectorName" -}}
{{- printf "%s-injector" (include "ghlproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ghlproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ghlproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (injector or proxy): pass (list . "component"). */}}
{{- define "ghlproxy.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ghlproxy.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The proxy image. .Chart is optional so the ghlproxy.sidecar template also works from a
parent chart that passes only (dict "Values" .Values.ghlproxy): then image.tag must be set.
*/}}
{{- define "ghlproxy.image" -}}
{{- $tag := .Values.image.tag -}}
{{- if and (not $tag) (hasKey . "Chart") }}{{ $tag = .Chart.AppVersion }}{{ end -}}
{{- printf "%s:%s" .Values.image.repository (required "ghlproxy: set image.tag" $tag) }}
{{- end }}

{{/* The Redis URL variable; sidecar or standalone: pass (list . "sidecar"|"standalone"). */}}
{{- define "ghlproxy.redisEnv" -}}
{{- $root := index . 0 -}}
{{- $r := $root.Values.redis -}}
{{- if and $r.url $r.existingSecret }}
{{- fail "redis: set url or existingSecret, not both" }}
{{- end }}
{{- if $r.existingSecret }}
- name: GHLPROXY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $r.existingSecret | quote }}
      key: {{ $r.existingSecretKey | quote }}
{{- else if and $r.url (eq (index . 1) "standalone") }}
- name: GHLPROXY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ghlproxy.fullname" $root }}-redis
      key: redis-url
{{- else if $r.url }}
- name: GHLPROXY_REDIS_URL
  value: {{ $r.url | quote }}
{{- end }}
{{- end }}

{{/*
The admin token the chart generates when admin.token and admin.existingSecret are empty:
the one in the release's admin Secret if there is one (so an upgrade keeps it), else a new
one, the same in every template of one render. helm template cannot look up, and a parent
chart including ghlproxy.sidecar by hand passes no .Release: those get a new one each time.
*/}}
{{- define "ghlproxy.generatedAdminToken" -}}
{{- if not (hasKey .Values "_adminToken") }}
{{- $tok := "" }}
{{- if hasKey . "Release" }}
{{- $s := lookup "v1" "Secret" .Release.Namespace (printf "%s-admin" (include "ghlproxy.fullname" .)) }}
{{- if and $s (hasKey ($s.data | default dict) "admin-token") }}
{{- $tok = index $s.data "admin-token" | b64dec }}
{{- end }}
{{- end }}
{{- $_ := set .Values "_adminToken" ($tok | default (randAlphaNum 40)) }}
{{- end }}
{{- .Values._adminToken }}
{{- end }}

{{/* GHLPROXY_ADMIN_TOKEN; pass (list . "sidecar"|"standalone"). See values.yaml admin. */}}
{{- define "ghlproxy.adminEnv" -}}
{{- $root := index . 0 -}}
{{- $a := $root.Values.admin }}
- name: GHLPROXY_ADMIN_TOKEN
{{- if $a.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret | quote }}
      key: {{ $a.existingSecretKey | quote }}
{{- else if $a.token }}
  value: {{ $a.token | quote }}
{{- else if eq (index . 1) "standalone" }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ghlproxy.fullname" $root }}-admin
      key: admin-token
{{- else }}
  value: {{ include "ghlproxy.generatedAdminToken" $root | quote }}
{{- end }}
{{- end }}

{{/* webhooks.* as GHLPROXY_WEBHOOKS_* variables; see values.yaml webhooks. */}}
{{- define "ghlproxy.webhooksEnv" -}}
{{- $w := .Values.webhooks | default dict -}}
{{- with $w.port }}
- name: GHLPROXY_WEBHOOKS_LISTEN
  value: ":{{ . }}"
{{- end }}
{{- range $key, $env := dict "publicKey" "GHLPROXY_WEBHOOKS_PUBLIC_KEY" "legacyPublicKey" "GHLPROXY_WEBHOOKS_LEGACY_PUBLIC_KEY" "maxAge" "GHLPROXY_WEBHOOKS_MAX_AGE" "forwardUrl" "GHLPROXY_WEBHOOKS_FORWARD_URL" }}
{{- with index $w $key }}
- name: {{ $env }}
  value: {{ . | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The webhook listener's container port, when webhooks.port is set. */}}
{{- define "ghlproxy.webhooksPort" -}}
{{- with (.Values.webhooks | default dict).port }}
- name: ghlproxy-webhooks
  containerPort: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* Environment shared by the sidecar and standalone mode; pass (list . mode). */}}
{{- define "ghlproxy.env" -}}
{{- $root := index . 0 -}}
{{- $p := $root.Values.proxy -}}
- name: GHLPROXY_OPS_LISTEN
  value: ":{{ $p.opsPort }}"
- name: GHLPROXY_LOG_LEVEL
  value: {{ $p.logLevel | quote }}
- name: GHLPROXY_LOG_FORMAT
  value: {{ $p.logFormat | quote }}
{{- with $p.upstream }}
- name: GHLPROXY_UPSTREAM
  value: {{ . | quote }}
{{- end }}
{{- range $key, $env := dict "rate" "GHLPROXY_RATELIMIT_RATE" "per" "GHLPROXY_RATELIMIT_PER" "burst" "GHLPROXY_RATELIMIT_BURST" "maxWait" "GHLPROXY_RATELIMIT_MAX_WAIT" }}
{{- with index $p.rateLimit $key }}
- name: {{ $env }}
  value: {{ . | toString | quote }}
{{- end }}
{{- end }}
{{- with $p.gomaxprocs }}
- name: GOMAXPROCS
{{- if eq (toString .) "auto" }}
  valueFrom:
    resourceFieldRef:
      resource: requests.cpu
      divisor: "1"
{{- else }}
  value: {{ . | toString | quote }}
{{- end }}
{{- end }}
{{- include "ghlproxy.webhooksEnv" $root }}
{{- include "ghlproxy.redisEnv" . }}
{{- include "ghlproxy.adminEnv" . }}
{{- with $root.Values.identity.existingSecret }}
- name: GHLPROXY_IDENTITY_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $root.Values.identity.existingSecretKey | quote }}
{{- end }}
{{- with $p.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Probes of the proxy container, on the ops port by name. */}}
{{- define "ghlproxy.probes" -}}
startupProbe:
  httpGet:
    path: /readyz
    port: ghlproxy-ops
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  httpGet:
    path: /readyz
    port: ghlproxy-ops
  periodSeconds: 5
livenessProbe:
  httpGet:
    path: /healthz
    port: ghlproxy-ops
  periodSeconds: 10
  failureThreshold: 3
{{- end }}

{{/*
ghlproxy.sidecar: the ghlproxy native sidecar, as one item of a pod's initContainers list.
The injector injects exactly this container (the chart renders it into the injector's
ConfigMap). To add the sidecar without the webhook, in a chart that has ghlproxy as a
dependency (with injector.enabled=false if you want no webhook):

  spec:
    initContainers:
      {{- include "ghlproxy.sidecar" (dict "Values" .Values.ghlproxy) | nindent 6 }}
    containers:
      - name: app
        env:
          - name: GHL_BASE_URL
            value: http://127.0.0.1:8080

It takes the chart's values (proxy, redis, identity, image; image.tag must be set when no
.Chart is passed). Being an init container with restartPolicy Always, it starts, and
passes its startup probe, before the app's containers, and stops after them
(Kubernetes 1.29 and later).
*/}}
{{- define "ghlproxy.sidecar" -}}
{{- $v := .Values -}}
{{- $p := $v.proxy -}}
- name: ghlproxy
  image: {{ include "ghlproxy.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  restartPolicy: Always
  args: ["serve"]
  ports:
    - name: ghlproxy
      containerPort: {{ $p.port }}
      protocol: TCP
    - name: ghlproxy-ops
      containerPort: {{ $p.opsPort }}
      protocol: TCP
    {{- include "ghlproxy.webhooksPort" . | nindent 4 }}
  env:
    - name: GHLPROXY_LISTEN
      value: "127.0.0.1:{{ $p.port }}"
    {{- include "ghlproxy.env" (list . "sidecar") | nindent 4 }}
  {{- include "ghlproxy.probes" . | nindent 2 }}
  resources:
    {{- toYaml $p.resources | nindent 4 }}
  securityContext:
    {{- toYaml $p.securityContext | nindent 4 }}
{{- end }}
