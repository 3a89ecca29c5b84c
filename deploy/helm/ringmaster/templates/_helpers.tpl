{{- define "ringmaster.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ringmaster.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ringmaster.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ringmaster.coordinatorHost" -}}
{{ include "ringmaster.fullname" . }}-coordinator.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "ringmaster.checkpointPath" -}}
{{- trimPrefix "file://" .Values.checkpoints.store -}}
{{- end -}}

{{- define "ringmaster.coordinatorName" -}}
{{ include "ringmaster.fullname" . }}-coordinator
{{- end -}}

{{- /* The headless service that gives each coordinator replica a DNS name. */ -}}
{{- define "ringmaster.peersHost" -}}
{{ include "ringmaster.coordinatorName" . }}-peers.{{ .Release.Namespace }}.svc
{{- end -}}

{{- /* Whether the replicas form their own etcd and NATS clusters. */ -}}
{{- define "ringmaster.replicated" -}}
{{- if and (gt (int .Values.coordinator.replicas) 1) (not .Values.coordinator.etcdEndpoints) -}}true{{- end -}}
{{- end -}}

{{- /* name=scheme://host:port of every replica, for --initial-cluster and --nats-routes. */ -}}
{{- define "ringmaster.members" -}}
{{- $root := index . 0 -}}{{- $scheme := index . 1 -}}{{- $port := index . 2 -}}
{{- $name := include "ringmaster.coordinatorName" $root -}}
{{- $peers := include "ringmaster.peersHost" $root -}}
{{- $out := list -}}
{{- range $i := until (int $root.Values.coordinator.replicas) -}}
{{- $out = append $out (printf "%s-%d=%s://%s-%d.%s:%v" $name $i $scheme $name $i $peers $port) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{- /* Every replica's API address, for the workers' --coordinator. */ -}}
{{- define "ringmaster.coordinatorAddrs" -}}
{{- if gt (int .Values.coordinator.replicas) 1 -}}
{{- $name := include "ringmaster.coordinatorName" . -}}
{{- $peers := include "ringmaster.peersHost" . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $out = append $out (printf "%s-%d.%s:%v" $name $i $peers $.Values.coordinator.port) -}}
{{- end -}}
{{- join "," $out -}}
{{- else -}}
{{ include "ringmaster.coordinatorHost" . }}:{{ .Values.coordinator.port }}
{{- end -}}
{{- end -}}
