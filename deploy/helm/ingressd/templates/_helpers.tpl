{{/*
The release's base name: the release name, or "<release>-ingressd" when the release
name does not already contain the chart name. Kubernetes names are at most 63 characters.
*/}}
{{- define "ingressd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "ingressd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ingressd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The DaemonSet's selector. It is immutable once created, so it holds only the release
identity; the gateway labels (which users may change) are added to the pods beside it.
*/}}
{{- define "ingressd.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The gateway labels as the daemon's --gateway-labels takes them: k=v,k2=v2 (sorted). */}}
{{- define "ingressd.gatewayLabelsArg" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.gateway.labels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* image:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "ingressd.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The container's added capabilities: the configured list, plus NET_BIND_SERVICE when a
gateway Service port has a targetPort below 1024 (the daemon binds targetPorts).
*/}}
{{- define "ingressd.capabilities" -}}
{{- $caps := .Values.securityContext.capabilities.add -}}
{{- $low := false -}}
{{- range .Values.service.ports -}}
{{- if and (not (kindIs "string" .targetPort)) (lt (int .targetPort) 1024) -}}
{{- $low = true -}}
{{- end -}}
{{- end -}}
{{- if and $low (not (has "NET_BIND_SERVICE" $caps)) -}}
{{- $caps = append $caps "NET_BIND_SERVICE" -}}
{{- end -}}
{{- toYaml $caps -}}
{{- end -}}
