{{/* Names, labels and the pieces every Esper component shares. */}}

{{- define "esper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The standard app.kubernetes.io labels; pass (dict "root" $ "component" "tamiyo"). */}}
{{- define "esper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: esper
{{- end -}}

{{- define "esper.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* <registry>/<repository>:<tag>; pass (dict "root" $ "repository" "esper/tamiyo" "suffix" ""). */}}
{{- define "esper.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- $registry := .root.Values.image.registry -}}
{{- printf "%s%s:%s%s" (ternary (printf "%s/" $registry) "" (ne $registry "")) .repository $tag (.suffix | default "") -}}
{{- end -}}

{{- define "esper.apiTokenSecret" -}}
{{- .Values.apiToken.existingSecret | default (printf "%s-api-token" (include "esper.fullname" .)) -}}
{{- end -}}

{{- define "esper.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "esper.fullname" .) -}}
{{- else -}}
{{- required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "esper.redisAclSecret" -}}
{{- .Values.redis.acl.existingSecret | default (printf "%s-redis-acl" (include "esper.fullname" .)) -}}
{{- end -}}

{{/* The Redis ACL user of a service, from the ACL Secret; pass (dict "root" $ "user" "tamiyo"). */}}
{{- define "esper.redisCredentials" -}}
{{- if .root.Values.redis.acl.enabled }}
- name: ESPER_REDIS_USERNAME
  value: {{ .user | quote }}
- name: ESPER_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "esper.redisAclSecret" .root }}
      key: {{ .user }}
{{- end }}
{{- end -}}

{{/* A value kept across upgrades: the existing Secret's key if present, else the given or a random one. */}}
{{- define "esper.keptSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if .value -}}
{{- .value | b64enc -}}
{{- else if and $existing (index $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 32 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Environment every Esper service reads (see esper.service.settings). */}}
{{- define "esper.commonEnv" -}}
- name: ESPER_REDIS_URL
  valueFrom:
    configMapKeyRef:
      name: {{ include "esper.fullname" . }}-config
      key: redis-url
- name: ESPER_LOG_LEVEL
  valueFrom:
    configMapKeyRef:
      name: {{ include "esper.fullname" . }}-config
      key: log-level
- name: ESPER_HOST
  value: "0.0.0.0"
- name: ESPER_CONSUMER
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ESPER_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "esper.apiTokenSecret" . }}
      key: api-token
{{- end -}}

{{/*
One Esper service: a Deployment with probes on /healthz (liveness) and /readyz (readiness),
and a Service for its HTTP port. Pass (dict "root" $ "name" "tamiyo" "values" .Values.tamiyo
"env" (list ...extra env...) "mounts" (list (dict "claim" "runs" "path" "/var/lib/esper/runs"))
"gpu" bool). A new service is a values block and a template file that includes this.
*/}}
{{- define "esper.component" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .name -}}
{{- $gpu := and .gpu $v.gpu $v.gpu.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "esper.fullname" $root }}-{{ .name }}
  labels:
    {{- include "esper.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  selector:
    matchLabels:
      {{- include "esper.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "esper.labels" $ctx | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ include "esper.image" (dict "root" $root "repository" $v.repository "suffix" (ternary ($v.gpuTagSuffix | default "") "" $gpu)) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          env:
            {{- include "esper.commonEnv" $root | nindent 12 }}
            {{- if has .name (list "tamiyo" "tolaria" "nissa" "tezzeret") }}
            {{- include "esper.redisCredentials" (dict "root" $root "user" .name) | nindent 12 }}
            {{- end }}
            - name: ESPER_{{ upper .name }}_PORT
              value: {{ $v.port | quote }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- range $key, $value := $v.env }}
            - name: {{ $key }}
              value: {{ $value | quote }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $v.port }}
              protocol: TCP
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 5
            failureThreshold: 6
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
            timeoutSeconds: 5
            failureThreshold: 3
          resources:
            {{- $resources := deepCopy $v.resources }}
            {{- if $gpu }}
            {{- $_ := set $resources "limits" (merge (dict $v.gpu.resourceName $v.gpu.count) ($resources.limits | default dict)) }}
            {{- end }}
            {{- toYaml $resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- range .mounts }}
            - name: {{ .claim }}
              mountPath: {{ .path }}
            {{- end }}
      volumes:
        # The root filesystem is read-only (securityContext); /tmp is the one scratch space.
        - name: tmp
          emptyDir: {}
        {{- range .mounts }}
        - name: {{ .claim }}
          persistentVolumeClaim:
            claimName: {{ include "esper.fullname" $root }}-{{ .claim }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "esper.fullname" $root }}-{{ .name }}
  labels:
    {{- include "esper.labels" $ctx | nindent 4 }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "esper.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.port }}
      targetPort: http
      protocol: TCP
{{- end -}}
