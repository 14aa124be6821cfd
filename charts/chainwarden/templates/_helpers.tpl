{{- define "chainwarden.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chainwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chainwarden.labels" -}}
{{ include "chainwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chainwarden
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "chainwarden.serviceAccountName" -}}
{{- default (include "chainwarden.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "chainwarden.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "chainwarden.serviceHost" -}}
{{- printf "%s.%s.svc" (include "chainwarden.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The serving certificate: reused from the cluster when it exists, generated otherwise. */}}
{{- define "chainwarden.tls" -}}
{{- $secretName := printf "%s-tls" (include "chainwarden.fullname" .) -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName -}}
{{- if and $existing $existing.data -}}
ca.crt: {{ index $existing.data "ca.crt" }}
tls.crt: {{ index $existing.data "tls.crt" }}
tls.key: {{ index $existing.data "tls.key" }}
{{- else -}}
{{- $host := include "chainwarden.serviceHost" . -}}
{{- $ca := genCA "chainwarden-ca" 3650 -}}
{{- $cert := genSignedCert $host nil (list $host (printf "%s.cluster.local" $host) (include "chainwarden.fullname" .)) 3650 $ca -}}
ca.crt: {{ $ca.Cert | b64enc }}
tls.crt: {{ $cert.Cert | b64enc }}
tls.key: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}
