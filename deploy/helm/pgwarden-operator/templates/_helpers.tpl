{{- define "pgwarden.labels" -}}
app.kubernetes.io/name: pgwarden-operator
{{- end -}}
