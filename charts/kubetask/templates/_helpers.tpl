{{/*
Helpers of the kubetask chart. Every name is prefixed `kubetask.` so that a
parent chart's helpers cannot collide with ours.
*/}}

{{/* Base name of the release's objects: the release name, with "-kubetask" unless it says so already. */}}
{{- define "kubetask.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. `part-of: kubetask` is also what the dev harness selects pods by. */}}
{{- define "kubetask.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "kubetask.selectorLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubetask.selectorLabels" -}}
app.kubernetes.io/part-of: kubetask
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: pass (dict "root" $ "component" "operator"). */}}
{{- define "kubetask.componentSelectorLabels" -}}
{{ include "kubetask.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kubetask.operatorName" -}}
{{- printf "%s-operator" (include "kubetask.fullname" .) -}}
{{- end -}}

{{- define "kubetask.postgresqlName" -}}
{{- printf "%s-postgresql" (include "kubetask.fullname" .) -}}
{{- end -}}

{{/* Deployment name of a pool: pass (dict "root" $ "pool" $pool). */}}
{{- define "kubetask.poolName" -}}
{{- printf "%s-worker-%s" (include "kubetask.fullname" .root) .pool.name -}}
{{- end -}}

{{/* image reference: pass (dict "root" $ "override" $pool.image); the override wins key by key. */}}
{{- define "kubetask.image" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (default (dict) .override) -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "kubetask.imagePullPolicy" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (default (dict) .override) -}}
{{- $image.pullPolicy -}}
{{- end -}}

{{/*
The Secret and key that hold DATABASE_URL. Exactly one source must be chosen:
the user's own Secret, or the bundled PostgreSQL's generated one.
*/}}
{{- define "kubetask.databaseSecret" -}}
{{- if and .Values.database.existingSecret .Values.postgresql.enabled -}}
{{- fail "database: set either database.existingSecret (your own PostgreSQL) or postgresql.enabled=true (a bundled one, for trying out), not both" -}}
{{- else if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.postgresql.enabled -}}
{{- include "kubetask.postgresqlAuthSecret" . -}}
{{- else -}}
{{- fail "database: kubetask needs PostgreSQL. Set database.existingSecret to a Secret holding the connection URL (kubectl create secret generic kubetask-db --from-literal=url=postgresql://USER:PASSWORD@HOST:5432/DB), or postgresql.enabled=true to install a bundled one for trying out" -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the bundled PostgreSQL's `password` and `url`: the user's, or the chart's own. */}}
{{- define "kubetask.postgresqlAuthSecret" -}}
{{- default (include "kubetask.postgresqlName" .) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{/* The query string of the bundled PostgreSQL's URL: how kubetask checks the server's TLS, if it is on. */}}
{{- define "kubetask.postgresqlSslQuery" -}}
{{- with .Values.postgresql.tls -}}
{{- if and .enabled (eq .sslmode "verify-full") -}}
?sslmode=verify-full&sslrootcert=/etc/kubetask/postgresql-ca/ca.crt
{{- else if .enabled -}}
?sslmode={{ .sslmode }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The CA that verifies the bundled PostgreSQL (postgresql.tls.sslmode=verify-full), for the operator and
worker pods: kubetask.postgresqlCaMount in the container, kubetask.postgresqlCaVolume in the pod.
*/}}
{{- define "kubetask.verifiesPostgresql" -}}
{{- if and .Values.postgresql.enabled .Values.postgresql.tls.enabled (eq .Values.postgresql.tls.sslmode "verify-full") -}}true{{- end -}}
{{- end -}}

{{- define "kubetask.postgresqlCaMount" -}}
{{- if include "kubetask.verifiesPostgresql" . -}}
- name: postgresql-ca
  mountPath: /etc/kubetask/postgresql-ca
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "kubetask.postgresqlCaVolume" -}}
{{- if include "kubetask.verifiesPostgresql" . -}}
- name: postgresql-ca
  secret:
    secretName: {{ .Values.postgresql.tls.existingSecret }}
    items:
    - {key: ca.crt, path: ca.crt}
{{- end -}}
{{- end -}}

{{- define "kubetask.databaseKey" -}}
{{- if .Values.postgresql.enabled -}}url{{- else -}}{{ .Values.database.key }}{{- end -}}
{{- end -}}

{{- define "kubetask.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetask.databaseSecret" . }}
      key: {{ include "kubetask.databaseKey" . }}
{{- end -}}

{{/*
The workers' DATABASE_URL: they run tenant code, so not the operator's (owner's) URL where a worker's
exists: the bundled PostgreSQL's kubetask_worker, or database.workerSecret for your own PostgreSQL.
*/}}
{{- define "kubetask.workerDatabaseEnv" -}}
{{- if .Values.postgresql.enabled -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetask.postgresqlAuthSecret" . }}
      key: worker-url
{{- else if .Values.database.workerSecret -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.workerSecret }}
      key: {{ .Values.database.workerKey }}
{{- else -}}
{{- include "kubetask.databaseEnv" . }}
{{- end -}}
{{- end -}}

{{/*
Namespaces the operator serves; empty means the whole cluster. The release
namespace is always part of a list: the worker pools live there.
*/}}
{{- define "kubetask.operatorNamespaces" -}}
{{- if .Values.operator.namespaces -}}
{{- uniq (append (deepCopy .Values.operator.namespaces) .Release.Namespace) | join "," -}}
{{- end -}}
{{- end -}}

{{/*
Namespaces whose worker pools the operator discovers and scales (KUBETASK_POOL_NAMESPACES, and the
pool Roles): the release namespace, where the chart's pools live, then operator.poolNamespaces.
*/}}
{{- define "kubetask.poolNamespaces" -}}
{{- uniq (prepend (deepCopy .Values.operator.poolNamespaces) .Release.Namespace) | join "," -}}
{{- end -}}

{{/* Pod-level security context: non-root, fixed uid/gid, RuntimeDefault seccomp. */}}
{{- define "kubetask.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: the same on every container of the chart. */}}
{{- define "kubetask.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The CRD metadata the chart adds: its labels, and the keep policy unless crds.keep=false. */}}
{{- define "kubetask.crdMetadata" -}}
metadata:
  labels:
    {{- include "kubetask.labels" . | nindent 4 }}
  {{- if .Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
{{- end -}}

{{/* Guards for combinations of values the schema cannot express. Rendered by templates/validate.yaml. */}}
{{- define "kubetask.validate" -}}
{{- $_ := include "kubetask.databaseSecret" . -}}
{{- with .Values.postgresql -}}
{{- if and .auth.password .auth.existingSecret -}}
{{- fail "postgresql.auth: set either postgresql.auth.password or postgresql.auth.existingSecret (a Secret with keys password and url), not both" -}}
{{- end -}}
{{- if and .tls.enabled (not .tls.existingSecret) -}}
{{- fail "postgresql.tls.enabled=true needs postgresql.tls.existingSecret: a kubernetes.io/tls Secret in the release namespace with tls.crt and tls.key (and ca.crt for sslmode=verify-full), e.g. from cert-manager, for the name <release>-postgresql.<namespace>.svc" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true: there is nothing to scrape otherwise" -}}
{{- end -}}
{{- if and .Values.metrics.enabled .Values.operator.livenessProbe.enabled (eq (int .Values.metrics.port) (int .Values.operator.livenessProbe.port)) -}}
{{- fail (printf "metrics.port=%d is also operator.livenessProbe.port: the operator serves them apart; choose another port for one of them" (int .Values.metrics.port)) -}}
{{- end -}}
{{- if and .Values.metrics.enabled .Values.poolDefaults.livenessProbe.enabled (eq (int .Values.metrics.port) (int .Values.poolDefaults.livenessProbe.port)) -}}
{{- fail (printf "metrics.port=%d is also poolDefaults.livenessProbe.port: a worker serves them apart; choose another port for one of them" (int .Values.metrics.port)) -}}
{{- end -}}
{{- $seen := dict -}}
{{- $queues := dict -}}
{{- range $index, $pool := .Values.pools -}}
{{- if hasKey $seen $pool.name -}}
{{- fail (printf "pools[%d].name=%q is used by another pool: pool names must be unique" $index $pool.name) -}}
{{- end -}}
{{- $_ := set $seen $pool.name true -}}
{{- $min := ternary $pool.minReplicas 0 (hasKey $pool "minReplicas") | int -}}
{{- $max := ternary $pool.maxReplicas 10 (hasKey $pool "maxReplicas") | int -}}
{{- if gt $min $max -}}
{{- fail (printf "pools[%d] (%s): minReplicas=%d is above maxReplicas=%d; lower minReplicas or raise maxReplicas" $index $pool.name $min $max) -}}
{{- end -}}
{{- $grace := ternary $pool.terminationGracePeriodSeconds 30 (hasKey $pool "terminationGracePeriodSeconds") | int -}}
{{- if lt $grace 6 -}}
{{- fail (printf "pools[%d] (%s): terminationGracePeriodSeconds=%d is too short: workers get 5 s less than the grace period to finish running tasks; use at least 6" $index $pool.name $grace) -}}
{{- end -}}
{{- $queue := default $pool.name $pool.queue -}}
{{- if hasKey $pool "queueSpec" -}}
{{- if hasKey $queues $queue -}}
{{- fail (printf "pools[%d] (%s) sets queueSpec for queue %q, and so does pool %s: a queue has one Queue, so set queueSpec on one of its pools only" $index $pool.name $queue (get $queues $queue)) -}}
{{- end -}}
{{- $_ := set $queues $queue $pool.name -}}
{{- end -}}
{{- end -}}
{{- if and .Values.operator.requireQueue (not (.Capabilities.APIVersions.Has "kubetask.io/v1alpha1/Queue")) -}}
{{- fail "operator.requireQueue=true refuses every Task whose queue has no Queue, and this release cannot create its pools' Queues: the API server does not serve kubetask.io/v1alpha1 Queue yet (Helm cannot create a Queue in the release that installs its CRD). Install the CRDs first (kubectl apply --server-side -f crds/), or install with operator.requireQueue=false and turn it on in an upgrade" -}}
{{- end -}}
{{- end -}}

{{/*
KUBETASK_LOG_FORMAT and KUBETASK_LOG_LEVEL of the operator and the workers (values `logs`).
*/}}
{{- define "kubetask.logEnv" -}}
- name: KUBETASK_LOG_FORMAT
  value: {{ .Values.logs.format | quote }}
- name: KUBETASK_LOG_LEVEL
  value: {{ .Values.logs.level | quote }}
{{- end -}}
