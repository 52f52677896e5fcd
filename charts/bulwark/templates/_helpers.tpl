{{/* The prefix of every object's name: the release's name when it says bulwark, else
     RELEASE-bulwark; so a second release (a canary control plane) collides with nothing. */}}
{{- define "bulwark.fullname" -}}
{{- if contains "bulwark" .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-bulwark" .Release.Name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels every object of the release carries: the selector labels of a component (called
     with dict "root" $ "component" "control"), and the standard ones. */}}
{{- define "bulwark.labels" -}}
{{ include "bulwark.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: bulwark
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What a component's Deployment, Service, PodDisruptionBudget and NetworkPolicy select its
     pods by: control (the policy store and gRPC API) or injector (the webhook). */}}
{{- define "bulwark.selectorLabels" -}}
app.kubernetes.io/name: bulwark-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* The Secret holding the PolicyAdmin and discovery tokens. */}}
{{- define "bulwark.tokenSecret" -}}
{{ include "bulwark.fullname" . }}-control-token
{{- end }}
