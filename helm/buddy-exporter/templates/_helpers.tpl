{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "buddy-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name already contains it. */}}
{{- define "buddy-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "buddy-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "buddy-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "buddy-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "buddy-exporter.labels" -}}
helm.sh/chart: {{ include "buddy-exporter.chart" . }}
{{ include "buddy-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: buddy-exporter
{{- end }}

{{- define "buddy-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "buddy-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding the token: the user's existing one or the chart's. */}}
{{- define "buddy-exporter.secretName" -}}
{{- default (include "buddy-exporter.fullname" .) .Values.token.existingSecret }}
{{- end }}

{{- define "buddy-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "buddy-exporter.configDir" -}}/etc/buddy-exporter{{- end }}
{{- define "buddy-exporter.tokenDir" -}}/run/secrets/buddy-exporter{{- end }}

{{/* The exporter's config.yaml: the user's config plus the keys the chart owns. */}}
{{- define "buddy-exporter.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $buddy := deepCopy (default (dict) (get $config "buddy")) }}
{{- $_ := set $buddy "token_file" (printf "%s/token" (include "buddy-exporter.tokenDir" .)) }}
{{- $_ = set $config "buddy" $buddy }}
{{- if gt (int .Values.shards) 1 }}
{{- $_ = set $config "sharding" (dict "total_shards" (int .Values.shards)) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "buddy-exporter.podTemplate" -}}
metadata:
  labels:
    {{- include "buddy-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "buddy-exporter.config" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "buddy-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: exporter
      image: {{ include "buddy-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --config.file={{ include "buddy-exporter.configDir" . }}/config.yaml
        - --web.listen-address=:{{ .Values.service.port }}
        - --log.level={{ .Values.logLevel }}
        {{- with .Values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or (gt (int .Values.shards) 1) .Values.extraEnv }}
      env:
        {{- if gt (int .Values.shards) 1 }}
        # The StatefulSet ordinal is this pod's shard.
        - name: BUDDY_EXPORTER_SHARDING__SHARD
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        - name: http-metrics
          containerPort: {{ .Values.service.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: http-metrics
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http-metrics
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "buddy-exporter.configDir" . }}
          readOnly: true
        - name: token
          mountPath: {{ include "buddy-exporter.tokenDir" . }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "buddy-exporter.fullname" . }}
    - name: token
      secret:
        secretName: {{ include "buddy-exporter.secretName" . }}
        defaultMode: 0440
        items:
          - key: {{ .Values.token.key }}
            path: token
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
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
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
