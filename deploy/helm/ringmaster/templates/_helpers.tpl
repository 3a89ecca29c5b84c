{{- /*
The release's name for its resources: fullnameOverride, or the release
name (followed by -ringmaster unless it contains it).
*/ -}}
{{- define "ringmaster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- /*
The stem every resource name starts with: the full name, or, when it is
longer than 40 characters, its first 33 and a hash of the whole, so that
"<stem>-coordinator" stays within the 52 characters a StatefulSet may have
(its pods' controller-revision-hash label adds 11) and
"<stem>-coordinator-peers" within a Service's 63.
*/ -}}
{{- define "ringmaster.stem" -}}
{{- $full := include "ringmaster.fullname" . -}}
{{- if le (len $full) 40 -}}
{{- $full -}}
{{- else -}}
{{- printf "%s-%s" ($full | trunc 33 | trimSuffix "-") (sha256sum $full | trunc 6) -}}
{{- end -}}
{{- end -}}

{{- define "ringmaster.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- /* Selector labels of one component: (list $ "coordinator"). */ -}}
{{- define "ringmaster.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ringmaster.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ringmaster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ringmaster.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "ringmaster.coordinatorName" -}}
{{ include "ringmaster.stem" . }}-coordinator
{{- end -}}

{{- define "ringmaster.workerName" -}}
{{ include "ringmaster.stem" . }}-worker
{{- end -}}

{{- /* The headless Service that gives each coordinator replica a DNS name. */ -}}
{{- define "ringmaster.peersName" -}}
{{ include "ringmaster.coordinatorName" . }}-peers
{{- end -}}

{{- define "ringmaster.peersHost" -}}
{{ include "ringmaster.peersName" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "ringmaster.coordinatorHost" -}}
{{ include "ringmaster.coordinatorName" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{- /* Secrets the chart makes or is given. */ -}}
{{- define "ringmaster.caSecretName" -}}
{{- .Values.tls.existingCASecret | default (printf "%s-ca" (include "ringmaster.stem" .)) -}}
{{- end -}}

{{- define "ringmaster.tokenSecretName" -}}
{{- .Values.tls.existingJoinTokenSecret | default (printf "%s-join-token" (include "ringmaster.stem" .)) -}}
{{- end -}}

{{- define "ringmaster.s3SecretName" -}}
{{- .Values.objectStore.credentialsSecret | default (printf "%s-s3" (include "ringmaster.stem" .)) -}}
{{- end -}}

{{- define "ringmaster.hasS3Secret" -}}
{{- if or .Values.objectStore.credentialsSecret .Values.objectStore.accessKeyID -}}true{{- end -}}
{{- end -}}

{{- /* The checkpoint store of jobs that name none. */ -}}
{{- define "ringmaster.store" -}}
{{- if .Values.checkpoints.store -}}
{{- .Values.checkpoints.store -}}
{{- else if .Values.objectStore.bucket -}}
{{- $o := .Values.objectStore -}}
{{- $q := list -}}
{{- with $o.endpoint }}{{ $q = append $q (printf "endpoint=%s" .) }}{{ end -}}
{{- with $o.region }}{{ $q = append $q (printf "region=%s" .) }}{{ end -}}
{{- if $o.pathStyle }}{{ $q = append $q "path_style=true" }}{{ end -}}
{{- if not $o.tls }}{{ $q = append $q "tls=false" }}{{ end -}}
{{- $url := printf "s3://%s" $o.bucket -}}
{{- with trimAll "/" $o.prefix }}{{ $url = printf "%s/%s" $url . }}{{ end -}}
{{- if $q }}{{ $url = printf "%s?%s" $url (join "&" $q) }}{{ end -}}
{{- $url -}}
{{- else -}}
file:///var/lib/ringmaster/checkpoints
{{- end -}}
{{- end -}}

{{- /* The checkpoint volume's mount path, when the store is on it. */ -}}
{{- define "ringmaster.checkpointVolume" -}}
{{- $store := include "ringmaster.store" . -}}
{{- if and .Values.checkpoints.persistence.enabled (hasPrefix "file://" $store) -}}
{{- trimPrefix "file://" $store -}}
{{- end -}}
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
{{- $name := include "ringmaster.coordinatorName" . -}}
{{- $peers := include "ringmaster.peersHost" . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $out = append $out (printf "%s-%d.%s:%v" $name $i $peers $.Values.coordinator.port) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{- /*
The pod spec's scheduling fields of one component: (list $ values).
A ReadWriteOnce checkpoint volume mounts on one node only, so every pod
that mounts it asks to share a node with the others (the first one
matches its own term, which the scheduler lets through).
*/ -}}
{{- define "ringmaster.scheduling" -}}
{{- $root := index . 0 -}}{{- $v := index . 1 -}}
{{- $affinity := deepCopy ($v.affinity | default dict) -}}
{{- if and (include "ringmaster.checkpointVolume" $root) (eq $root.Values.checkpoints.persistence.accessMode "ReadWriteOnce") -}}
{{- $pa := deepCopy (get $affinity "podAffinity" | default dict) -}}
{{- $req := get $pa "requiredDuringSchedulingIgnoredDuringExecution" | default list -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (dict "app.kubernetes.io/instance" $root.Release.Name "ringmaster.io/checkpoint-volume" "mounted")) -}}
{{- $_ := set $pa "requiredDuringSchedulingIgnoredDuringExecution" (append $req $term) -}}
{{- $_ := set $affinity "podAffinity" $pa -}}
{{- end -}}
{{- with $v.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /* The label that pods mounting a ReadWriteOnce checkpoint volume carry. */ -}}
{{- define "ringmaster.checkpointLabel" -}}
{{- if include "ringmaster.checkpointVolume" . }}
ringmaster.io/checkpoint-volume: mounted
{{- end }}
{{- end -}}

{{- /* Object store environment of the coordinator and the workers. */ -}}
{{- define "ringmaster.objectStoreEnv" -}}
{{- with .Values.objectStore.endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ printf "%s://%s" (ternary "https" "http" $.Values.objectStore.tls) . | quote }}
{{- end }}
{{- with .Values.objectStore.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "ringmaster.podSecurity" -}}
serviceAccountName: {{ include "ringmaster.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.podSecurityContext }}
securityContext: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- /*
The data of the Secrets the chart makes (the CA, the join token), as
JSON: what the cluster holds (lookup, at upgrades), else made now. Made
once per rendering and kept in the rendering's root context, so that the
Secrets and the pods' checksum annotations see the same values.
*/ -}}
{{- define "ringmaster.secretData" -}}
{{- if not (hasKey . "ringmasterSecretData") -}}
{{- $out := dict -}}
{{- if not .Values.tls.existingCASecret -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "ringmaster.caSecretName" .) -}}
{{- if and $old $old.data (index $old.data "tls.crt") (index $old.data "tls.key") -}}
{{- $_ := set $out "tls.crt" (index $old.data "tls.crt") -}}
{{- $_ := set $out "tls.key" (index $old.data "tls.key") -}}
{{- else -}}
{{- $ca := genCAWithKey (printf "ringmaster CA %s/%s" .Release.Namespace .Release.Name) 3650 (genPrivateKey "ecdsa") -}}
{{- $_ := set $out "tls.crt" ($ca.Cert | b64enc) -}}
{{- $_ := set $out "tls.key" ($ca.Key | b64enc) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.tls.existingJoinTokenSecret -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "ringmaster.tokenSecretName" .) -}}
{{- if and $old $old.data (index $old.data "token") -}}
{{- $_ := set $out "token" (index $old.data "token") -}}
{{- else -}}
{{- $_ := set $out "token" (printf "%s.%s" (sha256sum (randAlphaNum 64) | trunc 12) (sha256sum (randAlphaNum 64) | trunc 32) | b64enc) -}}
{{- end -}}
{{- end -}}
{{- $_ := set . "ringmasterSecretData" $out -}}
{{- end -}}
{{- toJson (get . "ringmasterSecretData") -}}
{{- end -}}

{{- /*
Pod annotations: a checksum of the chart-made CA and token, so that
replacing them (delete the Secret, helm upgrade) restarts the pods that
read them at start.
*/ -}}
{{- define "ringmaster.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $a := deepCopy (index . 1 | default dict) -}}
{{- if $root.Values.tls.enabled -}}
{{- $_ := set $a "checksum/ringmaster-secrets" (include "ringmaster.secretData" $root | sha256sum) -}}
{{- end -}}
{{- with $a }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{- /*
TLS files for an external etcd or NATS (coordinator.etcdTLS, natsTLS),
for the coordinators and the workers: arguments, mounts and volumes.
*/ -}}
{{- define "ringmaster.externalTLS" -}}
{{- $c := .Values.coordinator -}}
{{- $out := list -}}
{{- if and $c.etcdTLS.secret (not $c.etcdEndpoints) -}}
{{- fail "coordinator.etcdTLS.secret is for an external etcd: give coordinator.etcdEndpoints" -}}
{{- end -}}
{{- if and $c.natsTLS.secret (not $c.natsURL) -}}
{{- fail "coordinator.natsTLS.secret is for an external NATS: give coordinator.natsURL" -}}
{{- end -}}
{{- range $kind, $t := dict "etcd" $c.etcdTLS "nats" $c.natsTLS -}}
{{- if $t.secret -}}
{{- $out = append $out (dict "kind" $kind "secret" $t.secret "clientCert" $t.clientCert "dir" (printf "/etc/ringmaster/%s-tls" $kind)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "ringmaster.externalTLSArgs" -}}
{{- range include "ringmaster.externalTLS" . | fromJsonArray }}
- --{{ .kind }}-ca-file={{ .dir }}/ca.crt
{{- if .clientCert }}
- --{{ .kind }}-cert-file={{ .dir }}/tls.crt
- --{{ .kind }}-key-file={{ .dir }}/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "ringmaster.externalTLSMounts" -}}
{{- range include "ringmaster.externalTLS" . | fromJsonArray }}
- name: {{ .kind }}-tls
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "ringmaster.externalTLSVolumes" -}}
{{- range include "ringmaster.externalTLS" . | fromJsonArray }}
- name: {{ .kind }}-tls
  secret:
    secretName: {{ .secret }}
    defaultMode: 288  # 0440: the group is the pods' fsGroup
    items:
      - {key: ca.crt, path: ca.crt}
      {{- if .clientCert }}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      {{- end }}
{{- end }}
{{- end -}}
