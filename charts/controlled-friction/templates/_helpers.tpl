{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "cf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of every object. With the release called controlled-friction (the documented default) this
is plain `controlled-friction`, matching the ServiceAccount name in the design contract.
*/}}
{{- define "cf.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "cf.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "cf.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "cf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cf.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: controlled-friction
{{- end }}

{{- define "cf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cf.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cf.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Service the API server calls for admission reviews (the operator's --webhook-mode service). */}}
{{- define "cf.webhookServiceName" -}}
{{- printf "%s-webhook" (include "cf.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret with tls.crt, tls.key and ca.crt for the webhook server. */}}
{{- define "cf.webhookSecretName" -}}
{{- if and (not .Values.certManager.enabled) .Values.webhook.existingSecret }}
{{- .Values.webhook.existingSecret }}
{{- else }}
{{- printf "%s-webhook-tls" (include "cf.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* DNS names the API server may use for the webhook Service (all must be in the certificate). */}}
{{- define "cf.webhookDNSNames" -}}
{{- $svc := include "cf.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{- define "cf.peeringName" -}}
{{- default (include "cf.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "cf.policyName" -}}
{{- default (printf "%s-critical" (include "cf.fullname" .)) .Values.defaultPolicy.name | trunc 253 }}
{{- end }}

{{/* Where the webhook certificate files are mounted (the operator's CF_CERT_DIR). */}}
{{- define "cf.certDir" -}}
/etc/controlled-friction/webhook-tls
{{- end }}
