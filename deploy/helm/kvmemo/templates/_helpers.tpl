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

{{- define "kvmemo.controllerImage" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) }}
{{- end }}

{{- /* The served model as a label value, for selectors such as the Gateway API Inference Extension's
InferencePool: characters a label value cannot hold become "-". */ -}}
{{- define "kvmemo.modelLabel" -}}
{{- regexReplaceAll "[^-A-Za-z0-9_.]" .Values.model.name "-" | trunc 63 | trimSuffix "-" | trimSuffix "." | trimPrefix "-" }}
{{- end }}

{{- define "kvmemo.startupBudgetSeconds" -}}
{{- mul .Values.startupProbe.periodSeconds .Values.startupProbe.failureThreshold }}
{{- end }}

{{- define "kvmemo.autoscaled" -}}
{{- if or .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}true{{ end }}
{{- end }}

{{- /* A gRPC probe on grpc.health.v1's "" service; args: the probe's values. */ -}}
{{- define "kvmemo.grpcProbe" -}}
grpc:
  port: {{ .port }}
{{- range $key := list "periodSeconds" "failureThreshold" "timeoutSeconds" "initialDelaySeconds" "successThreshold" }}
{{- if hasKey $.probe $key }}
{{ $key }}: {{ get $.probe $key }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Where the model lies inside the server container. */ -}}
{{- define "kvmemo.modelPath" -}}
{{- if eq .Values.model.source "image" }}{{ .Values.model.name }}{{ else }}{{ .Values.model.mountPath }}/{{ .Values.model.name }}{{ end }}
{{- end }}

{{- define "kvmemo.modelClaimName" -}}
{{- if .Values.model.pvc.create }}{{ include "kvmemo.fullname" . }}-model{{ else }}{{ .Values.model.pvc.claimName }}{{ end }}
{{- end }}

{{- /* Chart-wide checks a schema cannot express; each names the value and what to do. */ -}}
{{- define "kvmemo.validate" -}}
{{- if ne (int .Values.gpu.count) 1 }}
{{- fail (printf "gpu.count=%v: the engine uses one GPU per pod (there is no tensor parallelism yet); set gpu.count=1 and scale with replicaCount or autoscaling" .Values.gpu.count) }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled }}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled are both true: KEDA makes its own HorizontalPodAutoscaler; enable one" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas=%v is above autoscaling.maxReplicas=%v" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- $m := .Values.model }}
{{- if and $m.pvc.create (or (include "kvmemo.autoscaled" .) (gt (int .Values.replicaCount) 1)) }}
{{- if not (or (has "ReadOnlyMany" $m.pvc.accessModes) (has "ReadWriteMany" $m.pvc.accessModes)) }}
{{- fail (printf "model.pvc.accessModes=%v: replicas on different nodes cannot all mount such a claim; use ReadOnlyMany or ReadWriteMany (or run one replica)" $m.pvc.accessModes) }}
{{- end }}
{{- end }}
{{- if and (eq $m.source "pvc") (not $m.pvc.create) (not $m.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName, or model.pvc.create=true" }}
{{- end }}
{{- if and (eq $m.source "download") (not $m.download.image) }}
{{- fail "model.source=download needs model.download.image (an image with the tool that fetches the model) and its command" }}
{{- end }}
{{- if and (eq $m.source "oci") (not $m.oci.image) }}
{{- fail "model.source=oci needs model.oci.image (the image that holds the model)" }}
{{- end }}
{{- end }}
