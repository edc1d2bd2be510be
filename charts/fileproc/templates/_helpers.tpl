{{/* Names, labels and the pieces every fileproc container shares. */}}

{{- define "fileproc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fileproc.fullname" -}}
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

{{/* A component's resource name: fullname-COMPONENT, within 63 characters. */}}
{{- define "fileproc.component" -}}
{{- printf "%s-%s" (include "fileproc.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fileproc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "fileproc.selectorLabels" . }}
{{- end -}}

{{- define "fileproc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fileproc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fileproc.secretName" -}}
{{- default (include "fileproc.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "fileproc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fileproc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fileproc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A user name or password for a URL: query escaping, with a space as %20 (a "+" stays "+" to
    the parsers of redis-py and SQLAlchemy, which unquote userinfo without turning "+" into a space). */}}
{{- define "fileproc.urlEscape" -}}
{{- . | toString | urlquery | replace "+" "%20" -}}
{{- end -}}

{{/* The broker URL fileproc gets, from redis.url or its parts. */}}
{{- define "fileproc.brokerUrl" -}}
{{- with .Values.redis -}}
{{- if .url -}}
{{- .url -}}
{{- else -}}
{{- $auth := "" -}}
{{- if or .username .password -}}
{{- $auth = printf "%s:%s@" (include "fileproc.urlEscape" .username) (include "fileproc.urlEscape" .password) -}}
{{- end -}}
{{- printf "%s://%s%s:%v/%v" (ternary "rediss" "redis" (.tls | default false)) $auth .host .port .database -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The state database's SQLAlchemy URL, from database.url or its parts. */}}
{{- define "fileproc.databaseUrl" -}}
{{- with .Values.database -}}
{{- if .url -}}
{{- .url -}}
{{- else -}}
{{- $auth := include "fileproc.urlEscape" .user -}}
{{- if .password -}}
{{- $auth = printf "%s:%s" $auth (include "fileproc.urlEscape" .password) -}}
{{- end -}}
{{- printf "postgresql+psycopg://%s@%s:%v/%s" $auth .host .port .name -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Annotations that roll the pods when the config or the chart's Secret changes. */}}
{{- define "fileproc.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container's environment: the settings every fileproc process shares (compose's x-fileproc). */}}
{{- define "fileproc.env" -}}
{{- $secret := include "fileproc.secretName" . -}}
- name: FILEPROC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: FILEPROC_DATA_DIR
  value: /var/lib/fileproc/data
- name: FILEPROC_STORAGE_BACKEND
  value: s3
- name: FILEPROC_STORAGE_ENDPOINT
  value: {{ .Values.storage.endpoint | quote }}
- name: FILEPROC_STORAGE_SECURE
  value: {{ .Values.storage.secure | toString | quote }}
{{- with .Values.storage.region }}
- name: FILEPROC_STORAGE_REGION
  value: {{ . | quote }}
{{- end }}
{{- range $name, $key := dict "FILEPROC_STORAGE_ACCESS_KEY" "storage-access-key" "FILEPROC_STORAGE_SECRET_KEY" "storage-secret-key" "FILEPROC_BROKER_URL" "broker-url" "FILEPROC_DATABASE_URL" "database-url" "FILEPROC_API_WEBHOOK_TOKEN" "webhook-token" "FILEPROC_API_ADMIN_TOKEN" "admin-token" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
- name: FILEPROC_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: metrics-token
      optional: true
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{- define "fileproc.volumeMounts" -}}
- name: config
  mountPath: /etc/fileproc
  readOnly: true
- name: data
  mountPath: /var/lib/fileproc/data
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "fileproc.volumes" -}}
- name: config
  configMap:
    name: {{ include "fileproc.fullname" . }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDir.sizeLimit }}
- name: tmp
  emptyDir:
    {{- with .Values.tmp.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end -}}

{{/* What every fileproc pod's spec starts with. */}}
{{- define "fileproc.podCommon" -}}
serviceAccountName: {{ include "fileproc.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "fileproc.volumes" . | nindent 2 }}
{{- end -}}

{{/* One KEDA trigger on one queue's depth: the Redis list named after it, or fileproc_queue_depth. */}}
{{- define "fileproc.trigger" -}}
{{- $root := .root -}}
{{- $keda := $root.Values.keda -}}
{{- if eq $keda.scaler "redis" -}}
- type: redis
  name: {{ printf "queue-%s" .queue | trunc 63 | trimSuffix "-" }}
  metadata:
    address: {{ printf "%s:%v" $root.Values.redis.host $root.Values.redis.port | quote }}
    databaseIndex: {{ $root.Values.redis.database | toString | quote }}
    enableTLS: {{ $root.Values.redis.tls | default false | toString | quote }}
    listName: {{ .queue | quote }}
    listLength: {{ $keda.redis.listLength | toString | quote }}
    activationListLength: {{ $keda.redis.activationListLength | toString | quote }}
  {{- if or $root.Values.secrets.existingSecret $root.Values.redis.password }}
  authenticationRef:
    name: {{ include "fileproc.component" (dict "root" $root "component" "redis") }}
  {{- end }}
{{- else if eq $keda.scaler "prometheus" -}}
- type: prometheus
  name: {{ printf "queue-%s" .queue | trunc 63 | trimSuffix "-" }}
  metadata:
    serverAddress: {{ $keda.prometheus.serverAddress | quote }}
    query: {{ printf $keda.prometheus.query .queue | quote }}
    threshold: {{ $keda.prometheus.threshold | toString | quote }}
    activationThreshold: {{ $keda.prometheus.activationThreshold | toString | quote }}
    {{- with $keda.prometheus.authModes }}
    authModes: {{ . | quote }}
    {{- end }}
  {{- with $keda.prometheus.authenticationRef }}
  authenticationRef:
    name: {{ . }}
  {{- end }}
{{- else -}}
{{- fail (printf "keda.scaler is %q: it must be redis (the queue's Redis list) or prometheus (fileproc_queue_depth)" $keda.scaler) -}}
{{- end -}}
{{- end -}}
