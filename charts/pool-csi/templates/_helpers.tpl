{{- define "pool-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pool-csi.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pool-csi.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pool-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Whether to run the snapshotter and make a VolumeSnapshotClass. */}}
{{- define "pool-csi.snapshots" -}}
{{- $e := toString .Values.snapshots.enabled -}}
{{- if or (eq $e "true") (and (eq $e "auto") (.Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* values.pools plus the enabled examples, as a list of {name, spec}. */}}
{{- define "pool-csi.pools" -}}
{{- $pools := list -}}
{{- range .Values.pools -}}
{{- $pools = append $pools (dict "name" .name "spec" .spec) -}}
{{- end -}}
{{- range $type, $ex := .Values.examples -}}
{{- if $ex.enabled -}}
{{- $pools = append $pools (dict "name" (printf "%s-example" $type) "spec" $ex.spec) -}}
{{- end -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* The Secrets pools name in source.auth.secretRef and targetSecretRef, each once. */}}
{{- define "pool-csi.poolSecrets" -}}
{{- $refs := list -}}
{{- range (include "pool-csi.pools" . | fromJsonArray) -}}
{{- with .spec.source -}}{{- with .auth -}}
{{- $refs = append $refs .secretRef -}}
{{- with .targetSecretRef -}}{{- $refs = append $refs . -}}{{- end -}}
{{- end -}}{{- end -}}
{{- end -}}
{{- toJson ($refs | uniq) -}}
{{- end -}}

{{/* "true" when a pool needs the host network (iscsi: iscsid's socket). */}}
{{- define "pool-csi.hostNetwork" -}}
{{- $on := .Values.node.hostNetwork -}}
{{- range (include "pool-csi.pools" . | fromJsonArray) -}}
{{- if eq .spec.type "iscsi" -}}{{- $on = true -}}{{- end -}}
{{- end -}}
{{- ternary "true" "false" $on -}}
{{- end -}}

{{/* values.storageClasses plus the enabled examples. */}}
{{- define "pool-csi.storageClasses" -}}
{{- $scs := list -}}
{{- range .Values.storageClasses -}}
{{- $scs = append $scs . -}}
{{- end -}}
{{- range $type, $ex := .Values.examples -}}
{{- if $ex.enabled -}}
{{- $scs = append $scs (dict "name" (printf "pool-csi-%s-example" $type) "pool" (printf "%s-example" $type) "parameters" $ex.parameters) -}}
{{- end -}}
{{- end -}}
{{- toJson $scs -}}
{{- end -}}
