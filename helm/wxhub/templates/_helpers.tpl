{{/* Common labels */}}
{{- define "wxhub.labels" -}}
app.kubernetes.io/part-of: wxhub
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "wxhub.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
