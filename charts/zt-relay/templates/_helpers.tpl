{{/*
Name helpers. Kubernetes names are at most 63 characters (DNS label), so every name is
truncated there and a trailing "-" left by the cut is removed.
*/}}

{{- define "zt-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified base name. If the release name already contains the chart name it is
used as is, so `helm install zt-relay charts/zt-relay` gives "zt-relay", not "zt-relay-zt-relay".
*/}}
{{- define "zt-relay.fullname" -}}
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

{{/* The operator's objects: "<fullname>-operator", cut so the suffix always fits. */}}
{{- define "zt-relay.operator.fullname" -}}
{{- printf "%s-operator" (include "zt-relay.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "zt-relay.namespace" -}}
{{- .Release.Namespace }}
{{- end }}

{{- define "zt-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object the chart renders. */}}
{{- define "zt-relay.labels" -}}
helm.sh/chart: {{ include "zt-relay.chart" . }}
{{ include "zt-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zt-relay
{{- end }}

{{/* Selector labels never change across upgrades (a Deployment's selector is immutable). */}}
{{- define "zt-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zt-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "zt-relay.operator.selectorLabels" -}}
{{ include "zt-relay.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "zt-relay.operator.labels" -}}
{{ include "zt-relay.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "zt-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zt-relay.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "zt-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Hardened pod and container security contexts shared by the operator and test pods. */}}
{{- define "zt-relay.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "zt-relay.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The ZeroTierRelay API (must match crds/zerotierrelays.yaml). */}}
{{- define "zt-relay.relayGroup" -}}
relay.zt-relay.dev
{{- end }}

{{- define "zt-relay.relayApiVersion" -}}
{{ include "zt-relay.relayGroup" . }}/v1alpha1
{{- end }}

{{/* Relay pods, as the operator labels them (see values: relayPodSelector). */}}
{{- define "zt-relay.relayPodSelector" -}}
{{- toYaml .Values.relayPodSelector }}
{{- end }}
