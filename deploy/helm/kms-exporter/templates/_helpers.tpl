{{/* The chart's name, or nameOverride. */}}
{{- define "kms-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: objects are named after it. A StatefulSet's
pods get a revision label of its name and 11 characters more, hence 52. */}}
{{- define "kms-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kms-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kms-exporter.labels" -}}
helm.sh/chart: {{ include "kms-exporter.chart" . }}
{{ include "kms-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kms-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kms-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the remediation token, and its key. */}}
{{- define "kms-exporter.tokenSecretName" -}}
{{- default (printf "%s-remediation-token" (include "kms-exporter.fullname" .)) .Values.remediation.token.existingSecret }}
{{- end }}

{{- define "kms-exporter.tokenSecretKey" -}}
{{- if .Values.remediation.token.existingSecret }}
{{- required "remediation.token.existingSecretKey is required with remediation.token.existingSecret" .Values.remediation.token.existingSecretKey }}
{{- else -}}
token
{{- end }}
{{- end }}

{{/* Whether the Prometheus Operator objects are rendered: the value when set,
else whether the cluster serves monitoring.coreos.com/v1. Call with (list
$ .Values.serviceMonitor.enabled); yields "true" or "". */}}
{{- define "kms-exporter.operatorObject" -}}
{{- $ctx := index . 0 }}
{{- $enabled := index . 1 }}
{{- if kindIs "invalid" $enabled }}
{{- if $ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- else if $enabled }}true
{{- end }}
{{- end }}

{{/* The container's arguments, as a JSON list: one flag per value that is
set, in the order of `kms_exporter --help`, then extraArgs. A flag whose
value is null or "" is left out (the binary's default applies); true gives
a bare boolean flag. Numbers from values files are float64: whole ones are
printed as integers (1e+06 would be refused by an integer flag). */}}
{{- define "kms-exporter.args" -}}
{{- $v := .Values }}
{{- $flags := list }}
{{- if $v.web.telemetryPath }}
{{- $flags = append $flags (list "web.telemetry-path" $v.web.telemetryPath) }}
{{- end }}
{{- $flags = append $flags (list "web.enable-report" (and (kindIs "bool" $v.web.enableReport) $v.web.enableReport)) }}
{{- if not (kindIs "invalid" $v.web.shutdownTimeoutSeconds) }}
{{- $flags = append $flags (list "web.shutdown-timeout" (printf "%ss" (include "kms-exporter.shutdownTimeoutSeconds" .))) }}
{{- end }}
{{- if $v.web.config.existingSecret }}
{{- $flags = append $flags (list "web.config.file" (printf "/etc/kms-exporter/web/%s" (required "web.config.key is required with web.config.existingSecret" $v.web.config.key))) }}
{{- end }}
{{- range $v.aws.regions }}
{{- $flags = append $flags (list "aws.region" .) }}
{{- end }}
{{- range $v.aws.assumeRoles }}
{{- $flags = append $flags (list "aws.assume-role" .) }}
{{- end }}
{{- $flags = append $flags (list "aws.organizations-role-name" $v.aws.organizationsRoleName) }}
{{- $flags = append $flags (list "aws.organizations-external-id" $v.aws.organizationsExternalId) }}
{{- $flags = append $flags (list "no-aws.own-account" (and (kindIs "bool" $v.aws.ownAccount) (not $v.aws.ownAccount))) }}
{{- $flags = append $flags (list "aws.max-concurrency" $v.aws.maxConcurrency) }}
{{- $flags = append $flags (list "aws.requests-per-second" $v.aws.requestsPerSecond) }}
{{- $flags = append $flags (list "aws.list-key-rotations-per-second" $v.aws.listKeyRotationsPerSecond) }}
{{- $flags = append $flags (list "aws.max-attempts" $v.aws.maxAttempts) }}
{{- $flags = append $flags (list "aws.timeout" $v.aws.timeout) }}
{{- $flags = append $flags (list "refresh.interval" $v.refresh.interval) }}
{{- $flags = append $flags (list "refresh.resync-interval" $v.refresh.resyncInterval) }}
{{- $flags = append $flags (list "refresh.max-stale-age" $v.refresh.maxStaleAge) }}
{{- if and $v.events.sqsQueueUrls (gt (int $v.sharding.shards) 1) }}
{{- fail "events.sqsQueueUrls: not with sharding.shards > 1 (the exporter refuses --events.sqs-queue-url with --total-shards: each shard would drop the events of the others)" }}
{{- end }}
{{- range $v.events.sqsQueueUrls }}
{{- $flags = append $flags (list "events.sqs-queue-url" .) }}
{{- end }}
{{- $flags = append $flags (list "compliance.max-rotation-period-days" $v.compliance.maxRotationPeriodDays) }}
{{- $flags = append $flags (list "compliance.max-key-material-age-days" $v.compliance.maxKeyMaterialAgeDays) }}
{{- $flags = append $flags (list "compliance.exemption-tag" $v.compliance.exemptionTag) }}
{{- range $v.metrics.tagLabels }}
{{- $flags = append $flags (list "metrics.tag-label" .) }}
{{- end }}
{{- $flags = append $flags (list "metrics.per-key" $v.metrics.perKey) }}
{{- if and $v.metrics.allowlist $v.metrics.denylist }}
{{- fail "metrics.allowlist and metrics.denylist: set one or the other (the exporter refuses --metrics.allowlist with --metrics.denylist)" }}
{{- end }}
{{- range $v.metrics.allowlist }}
{{- $flags = append $flags (list "metrics.allowlist" .) }}
{{- end }}
{{- range $v.metrics.denylist }}
{{- $flags = append $flags (list "metrics.denylist" .) }}
{{- end }}
{{- if $v.remediation.enabled }}
{{- $flags = append $flags (list "remediation.enabled" true) }}
{{- $flags = append $flags (list "remediation.token-file" "/etc/kms-exporter/remediation/token") }}
{{- range $v.remediation.allowTags }}
{{- $flags = append $flags (list "remediation.allow-tag" .) }}
{{- end }}
{{- range $v.remediation.allowAliasPrefixes }}
{{- $flags = append $flags (list "remediation.allow-alias-prefix" .) }}
{{- end }}
{{- range $v.remediation.alertNames }}
{{- $flags = append $flags (list "remediation.alert-name" .) }}
{{- end }}
{{- $flags = append $flags (list "remediation.requests-per-second" $v.remediation.requestsPerSecond) }}
{{- $flags = append $flags (list "remediation.timeout" $v.remediation.timeout) }}
{{- $flags = append $flags (list "remediation.aws-requests-per-second" $v.remediation.awsRequestsPerSecond) }}
{{- end }}
{{- if gt (int $v.sharding.shards) 1 }}
{{- $flags = append $flags (list "total-shards" (int $v.sharding.shards)) }}
{{- end }}
{{- $flags = append $flags (list "log.level" $v.log.level) }}
{{- $flags = append $flags (list "log.format" $v.log.format) }}
{{- $args := list }}
{{- range $flags }}
{{- $name := index . 0 }}
{{- $value := index . 1 }}
{{- if kindIs "bool" $value }}
{{- if $value }}
{{- $args = append $args (printf "--%s" $name) }}
{{- end }}
{{- else if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
{{- $args = append $args (printf "--%s=%v" $name $value) }}
{{- end }}
{{- end }}
{{- range $v.extraArgs }}
{{- $args = append $args (toString .) }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/* The seconds of --web.shutdown-timeout the pod runs with. */}}
{{- define "kms-exporter.shutdownTimeoutSeconds" -}}
{{- if kindIs "invalid" .Values.web.shutdownTimeoutSeconds }}30{{ else }}{{ int64 .Values.web.shutdownTimeoutSeconds }}{{ end }}
{{- end }}

{{- define "kms-exporter.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "kms-exporter.scheme" -}}
{{- if .Values.web.config.tls }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}
