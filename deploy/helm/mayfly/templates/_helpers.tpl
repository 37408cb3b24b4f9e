{{/* The trust domain, checked: required, and not a placeholder unless allowed. */}}
{{- define "mayfly.trustDomain" -}}
{{- $td := required "trustDomain is required: the trust domain of every SPIFFE ID (docs/install.md)" .Values.trustDomain -}}
{{- $placeholder := or (has $td (list "example.org" "example.com" "example.net")) (hasSuffix ".example" $td) (hasSuffix ".test" $td) (hasSuffix ".example.org" $td) -}}
{{- if and $placeholder (not .Values.allowPlaceholderTrustDomain) -}}
{{- fail (printf "trustDomain %q is a documentation placeholder: set your own trust domain, or allowPlaceholderTrustDomain=true for a test install" $td) -}}
{{- end -}}
{{- $td -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "mayfly.labels" -}}
app.kubernetes.io/part-of: mayfly
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* An image: registry/mayfly-<component>, by digest when given, else by tag. */}}
{{- define "mayfly.image" -}}
{{- $root := index . 0 -}}{{- $component := index . 1 -}}{{- $digest := index . 2 -}}
{{- $repo := printf "%s/mayfly-%s" (trimSuffix "/" $root.Values.image.registry) $component -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "mayfly.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The namespaces where WorkloadCertificate Secrets are written ("" for none). */}}
{{- define "mayfly.secretsOn" -}}
{{- if or .Values.workloadCertificates.allNamespaces .Values.workloadCertificates.namespaces -}}true{{- end -}}
{{- end -}}

{{/* The namespaces that get the trust bundle besides the release's. */}}
{{- define "mayfly.bundleNamespaces" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.trustBundle.namespaces -}}{{- $out = append $out . -}}{{- end -}}
{{- $out | uniq | toJson -}}
{{- end -}}

{{/* The CA's configuration (CAConfig, docs/ca.md). */}}
{{- define "mayfly.caConfig" -}}
{{- $ns := .Release.Namespace -}}
{{- $k := dict "namespace" $ns "secretName" "mayfly-ca" "agentServiceAccount" "mayfly-agent" "audience" "mayfly-ca" "leaderElection" true -}}
{{- if not .Values.trustBundle.allNamespaces -}}
{{- $_ := set $k "bundleNamespaces" (include "mayfly.bundleNamespaces" . | fromJsonArray) -}}
{{- end -}}
{{- with .Values.trustBundle.namespaceSelector -}}{{- $_ := set $k "bundleNamespaceSelector" . -}}{{- end -}}
{{- if .Values.workloadCertificates.allNamespaces -}}
{{- $_ := set $k "workloadCertificates" (dict "enabled" true) -}}
{{- else if .Values.workloadCertificates.namespaces -}}
{{- $_ := set $k "workloadCertificates" (dict "namespaces" .Values.workloadCertificates.namespaces) -}}
{{- else -}}
{{- $_ := set $k "workloadCertificates" (dict "enabled" false) -}}
{{- end -}}
{{- $c := dict "apiVersion" "mayfly.dev/v1alpha1" "kind" "CAConfig"
  "trustDomain" (include "mayfly.trustDomain" .)
  "listenAddress" "0.0.0.0:8443" "healthAddress" "0.0.0.0:9443"
  "serverDNSNames" (list (printf "mayfly-ca.%s.svc" $ns) (printf "mayfly-ca.%s.svc.cluster.local" $ns))
  "kubernetes" $k -}}
{{- $t := .Values.ca.ttl -}}
{{- $rot := dict -}}
{{- with $t.root }}{{ $_ := set $rot "rootTTL" . }}{{ end -}}
{{- with $t.intermediate }}{{ $_ := set $rot "intermediateTTL" . }}{{ end -}}
{{- if $rot }}{{ $_ := set $c "rotation" $rot }}{{ end -}}
{{- with $t.agent }}{{ $_ := set $c "agentTTL" . }}{{ end -}}
{{- $wl := dict -}}
{{- with $t.workloadDefault }}{{ $_ := set $wl "defaultTTL" . }}{{ end -}}
{{- with $t.workloadMax }}{{ $_ := set $wl "maxTTL" . }}{{ end -}}
{{- if $wl }}{{ $_ := set $c "workloads" $wl }}{{ end -}}
{{- mustMergeOverwrite $c (deepCopy .Values.ca.extraConfig) | toYaml -}}
{{- end -}}

{{/* The agent's configuration (AgentConfig, docs/agent.md). */}}
{{- define "mayfly.agentConfig" -}}
{{- $kd := trimSuffix "/" .Values.agent.kubeletDir -}}
{{- $k := dict "tokenFile" "/var/run/secrets/mayfly/token" "procRoot" "/proc" -}}
{{- if .Values.delivery.csi -}}
{{- $_ := set $k "csi" (dict "socketPath" (printf "%s/plugins/csi.mayfly.dev/csi.sock" $kd) "stateDir" (printf "%s/plugins/csi.mayfly.dev/volumes" $kd) "kubeletDir" $kd "mounterSocket" "/run/mayfly-mounter/mounter.sock") -}}
{{- end -}}
{{- $c := dict "apiVersion" "mayfly.dev/v1alpha1" "kind" "AgentConfig"
  "trustDomain" (include "mayfly.trustDomain" .)
  "server" (dict "address" (printf "mayfly-ca.%s.svc:8443" .Release.Namespace) "trustBundleFile" "/etc/mayfly/bundle/ca.crt")
  "socketPath" "/run/mayfly/agent.sock"
  "healthAddress" "0.0.0.0:9444"
  "dataDir" "/var/lib/mayfly/agent"
  "kubernetes" $k -}}
{{- mustMergeOverwrite $c (deepCopy .Values.agent.extraConfig) | toYaml -}}
{{- end -}}
