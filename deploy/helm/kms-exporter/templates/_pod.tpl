{{/* The pod template of the Deployment and of the sharded StatefulSet. */}}
{{- define "kms-exporter.podTemplate" -}}
{{- $sharded := gt (int .Values.sharding.shards) 1 }}
{{- $shutdown := int64 (include "kms-exporter.shutdownTimeoutSeconds" .) }}
{{- $grace := add $shutdown 15 }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- $grace = int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- if le $grace $shutdown }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above web.shutdownTimeoutSeconds (%d): Kubernetes kills the pod when the grace period ends" $grace $shutdown) }}
{{- end }}
{{- $webConfig := .Values.web.config.existingSecret }}
{{- $podSecurityContext := deepCopy (.Values.podSecurityContext | default dict) }}
{{- if and (or .Values.remediation.enabled $webConfig) (not (hasKey $podSecurityContext "fsGroup")) }}
{{- $_ := set $podSecurityContext "fsGroup" (get $podSecurityContext "runAsGroup" | default 65534) }}
{{- end }}
metadata:
  labels:
    {{- include "kms-exporter.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "kms-exporter.serviceAccountName" . }}
  # Above --web.shutdown-timeout ({{ $shutdown }}s): a remediation in flight finishes, logged and counted.
  terminationGracePeriodSeconds: {{ $grace }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: kms-exporter
      image: {{ include "kms-exporter.image" . | quote }}
      {{- with .Values.image.pullPolicy }}
      imagePullPolicy: {{ . }}
      {{- end }}
      args:
        {{- range include "kms-exporter.args" . | fromJsonArray }}
        - {{ . | quote }}
        {{- end }}
      {{- if or $sharded .Values.aws.region .Values.extraEnv }}
      env:
        {{- if $sharded }}
        # --shard: the pod's name, <statefulset>-N, is shard N.
        - name: KMS_EXPORTER_SHARD
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- with .Values.aws.region }}
        - name: AWS_REGION
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        # The exporter's default --web.listen-address, :10863.
        - name: http
          containerPort: 10863
      {{- range $probe := list "livenessProbe" "readinessProbe" }}
      {{- with index $.Values $probe }}
      {{- $p := deepCopy . }}
      {{- if and $.Values.web.config.tls $p.httpGet }}
      {{- $_ := set $p.httpGet "scheme" "HTTPS" }}
      {{- end }}
      {{ $probe }}:
        {{- toYaml $p | nindent 8 }}
      {{- end }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if or .Values.remediation.enabled $webConfig .Values.extraVolumeMounts }}
      volumeMounts:
        {{- if .Values.remediation.enabled }}
        - name: remediation-token
          mountPath: /etc/kms-exporter/remediation
          readOnly: true
        {{- end }}
        {{- if $webConfig }}
        - name: web-config
          mountPath: /etc/kms-exporter/web
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
  {{- if or .Values.remediation.enabled $webConfig .Values.extraVolumes }}
  volumes:
    {{- if .Values.remediation.enabled }}
    - name: remediation-token
      secret:
        secretName: {{ include "kms-exporter.tokenSecretName" . }}
        items:
          - key: {{ include "kms-exporter.tokenSecretKey" . }}
            path: token
        # 0400; the kubelet adds group read for the pod's fsGroup.
        defaultMode: 256
    {{- end }}
    {{- if $webConfig }}
    - name: web-config
      secret:
        secretName: {{ $webConfig }}
        # 0400; the kubelet adds group read for the pod's fsGroup.
        defaultMode: 256
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
