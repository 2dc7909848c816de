{{/* Names and labels shared by every resource of the chart. */}}

{{/* At most 52 characters: names derived from it add up to 11 (`-dashboard`, `-trainings`, `-metrics`)
and must stay DNS labels of at most 63. */}}
{{- define "solov2-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "solov2-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "solov2-operator.labels" -}}
{{ include "solov2-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "solov2-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "solov2-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "solov2-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels kube-prometheus-stack selects monitors and rules on: release, plus any extra ones. */}}
{{- define "solov2-operator.monitorLabels" -}}
{{- $labels := dict -}}
{{- with .Values.monitoring.release }}{{ $_ := set $labels "release" . }}{{ end -}}
{{- $labels = merge $labels .Values.monitoring.labels -}}
{{- if $labels }}{{ toYaml $labels }}{{ end -}}
{{- end -}}

{{/*
RBAC: exactly the API requests the operator makes (tests/operator/recorded_api_requests.json), and
update on solov2trainings/finalizers, which it never calls: the OwnerReferencesPermissionEnforcement
admission plugin (on by default in OpenShift) asks for it to create children whose owner reference
has blockOwnerDeletion, as the operator's do.
Namespaced rules go into a ClusterRole (all namespaces) or a Role per watched namespace;
cluster-scoped rules always go into a ClusterRole.
*/}}
{{- define "solov2-operator.namespacedRules" -}}
- apiGroups: [solov2.io]
  resources: [solov2trainings]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [solov2.io]
  resources: [solov2trainings/status]
  verbs: [patch]
- apiGroups: [solov2.io]
  resources: [solov2trainings/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

