{{- define "kvmemo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvmemo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "kvmemo.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kvmemo.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "kvmemo.controllerName" -}}
{{- printf "%s-controller" (include "kvmemo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- /* Fixed names: the cluster-wide ValidatingAdmissionPolicy recognises the pods and the controller by
these ServiceAccount names in any namespace, so there is one kvmemo release per namespace. */ -}}
{{- define "kvmemo.serviceAccountName" -}}kvmemo{{- end }}
{{- define "kvmemo.controllerServiceAccountName" -}}kvmemo-controller{{- end }}

{{- define "kvmemo.configMapName" -}}
{{- default (include "kvmemo.fullname" .) .Values.configMap.name }}
{{- end }}

{{- /* Labels shared by every object but the dashboard's ConfigMap (the controller watches ConfigMaps
labelled part-of kvmemo). helm.sh/chart and managed-by are left out on purpose: the kustomize base in
deploy/manifests is these same objects, and must not claim Helm manages it. */ -}}
{{- define "kvmemo.labels" -}}
{{ include "kvmemo.labelsWithoutPartOf" . }}
app.kubernetes.io/part-of: kvmemo
{{- end }}

{{- define "kvmemo.labelsWithoutPartOf" -}}
app.kubernetes.io/name: {{ include "kvmemo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "kvmemo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmemo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "kvmemo.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kvmemo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "kvmemo.image" -}}
{{- $variant := ternary "cuda" "cpu" .Values.gpu.enabled -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag) }}
{{- end }}

{{- /* Restricted Pod Security Standard, for both Deployments. */ -}}
{{- define "kvmemo.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kvmemo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
