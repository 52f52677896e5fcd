{{/* Labels every object of the release carries: the selector labels, and the standard ones. */}}
{{- define "bulwark.labels" -}}
{{ include "bulwark.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bulwark
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What the Deployment, Service and PodDisruptionBudget select the control plane's pods by. */}}
{{- define "bulwark.selectorLabels" -}}
app.kubernetes.io/name: bulwark-control
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
