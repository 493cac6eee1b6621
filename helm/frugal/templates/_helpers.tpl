{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "frugal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-qualified name. KubeRay derives longer names from the RayService's (RayCluster
"<name>-<5 chars>", pods "<cluster>-<group>-worker-<5 chars>"), so keep it to 40 characters.
*/}}
{{- define "frugal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else if contains (include "frugal.name" .) .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "frugal.name" .) | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "frugal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "frugal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "frugal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "frugal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "frugal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "frugal.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "frugal.fullname" .)) }}
{{- end }}

{{/* Where the pods read the deployments YAML: serveConfigV2's `args.config`. */}}
{{- define "frugal.configPath" -}}
/etc/frugal/config/deployments.yaml
{{- end }}

{{/* Multiprocess Prometheus directory shared by every Ray process of a pod (serving/metrics.py). */}}
{{- define "frugal.metricsDir" -}}
/tmp/frugal-metrics
{{- end }}

{{/*
Volumes every Ray pod needs. The deployments YAML is mounted on head and workers alike:
Ray Serve runs the application builder as a zero-CPU task that may land on any node.
*/}}
{{- define "frugal.volumes" -}}
- name: frugal-metrics
  emptyDir: {}
{{- if .Values.apiKeys.enabled }}
- name: frugal-config-template
  configMap:
    name: {{ include "frugal.fullname" . }}-config
- name: frugal-api-keys
  secret:
    secretName: {{ include "frugal.apiKeysSecret" . }}
- name: frugal-config
  emptyDir: {}
{{- else }}
- name: frugal-config
  configMap:
    name: {{ include "frugal.fullname" . }}-config
{{- end }}
{{- end }}

{{- define "frugal.volumeMounts" -}}
- name: frugal-config
  mountPath: /etc/frugal/config
  readOnly: true
- name: frugal-metrics
  mountPath: {{ include "frugal.metricsDir" . }}
{{- end }}

{{/*
With apiKeys on, this init container writes the pod's deployments YAML: the ConfigMap's
copy with the Secret's keys added to gateway.api_keys (the server reads keys only there).
*/}}
{{- define "frugal.initContainers" -}}
{{- if .Values.apiKeys.enabled }}
initContainers:
  - name: frugal-config
    image: {{ include "frugal.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: [python, /etc/frugal/template/merge_api_keys.py]
    env:
      - {name: FRUGAL_CONFIG_IN, value: /etc/frugal/template/deployments.yaml}
      - {name: FRUGAL_API_KEYS_FILE, value: /etc/frugal/api-keys/api-keys}
      - {name: FRUGAL_CONFIG_OUT, value: {{ include "frugal.configPath" . }}}
    resources:
      requests: {cpu: 100m, memory: 128Mi}
      limits: {cpu: 500m, memory: 256Mi}
    volumeMounts:
      - {name: frugal-config-template, mountPath: /etc/frugal/template, readOnly: true}
      - {name: frugal-api-keys, mountPath: /etc/frugal/api-keys, readOnly: true}
      - {name: frugal-config, mountPath: /etc/frugal/config}
{{- end }}
{{- end }}

{{/*
Environment of every Ray container. The store (serving.config.StoreConfig) reads
FRUGAL_STATE_DIR and FRUGAL_STORE_URL, the tenants' limiter FRUGAL_RATE_LIMIT_STORAGE;
Ray's worker processes inherit them.
*/}}
{{- define "frugal.env" -}}
- name: PROMETHEUS_MULTIPROC_DIR
  value: {{ include "frugal.metricsDir" . }}
- name: FRUGAL_STATE_DIR
  value: {{ .Values.store.stateDir | quote }}
{{- with .Values.store.databaseUrlSecret }}
{{- if .name }}
- name: FRUGAL_STORE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | default "url" | quote }}
{{- end }}
{{- end }}
{{- with .Values.rateLimit.storageUrlSecret }}
{{- if .name }}
- name: FRUGAL_RATE_LIMIT_STORAGE
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | default "url" | quote }}
{{- end }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The PVC at store.stateDir: the user's, or the chart's `<release>-state`. */}}
{{- define "frugal.stateClaim" -}}
{{- .Values.store.persistence.existingClaim | default (printf "%s-state" (include "frugal.fullname" .)) }}
{{- end }}

{{/* The store's volume, on the worker pods where the gateway replicas run. */}}
{{- define "frugal.stateVolume" -}}
- name: frugal-state
{{- if .Values.store.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "frugal.stateClaim" . }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}
