package caapp_test

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// minimalStandalone is the smallest valid configuration.
const minimalStandalone = "trustDomain: example.org\ndirectory: /var/lib/mayfly\n"

func TestParseAcceptsGoodConfigs(t *testing.T) {
	// Kubernetes defaults read POD_NAMESPACE: pin it (no t.Parallel).
	t.Setenv("POD_NAMESPACE", "")
	def := authority.DefaultPolicy()
	for _, tc := range []struct {
		name  string
		in    string
		check func(t *testing.T, c *caapp.Config)
	}{
		{
			name: "standalone_minimal_gets_defaults",
			in:   minimalStandalone,
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				want := &caapp.Config{
					ListenAddress:      "127.0.0.1:8443",
					HealthAddress:      "127.0.0.1:9443",
					KeyType:            pki.KeyTypeECDSAP256,
					Directory:          "/var/lib/mayfly",
					Policy:             def,
					AgentTTL:           time.Hour,
					MinWorkloadTTL:     5 * time.Minute,
					DefaultWorkloadTTL: time.Hour,
					MaxWorkloadTTL:     24 * time.Hour,
					NodeRateLimit:      500,
					NodeBurst:          2000,
				}
				want.TrustDomain = c.TrustDomain
				if c.TrustDomain.Name() != "example.org" {
					t.Errorf("TrustDomain = %q, want example.org", c.TrustDomain.Name())
				}
				compareConfig(t, c, want)
			},
		},
		{
			name: "standalone_everything_set",
			in: `
apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: prod.example.org
listenAddress: "0.0.0.0:9000"
healthAddress: "off"
serverDNSNames: [ca.example.org, mayfly-ca.mayfly-system.svc]
keyType: ecdsa-p384
directory: /srv/ca
rotation:
  rootTTL: 8760h
  intermediateTTL: 12h
  rootAckWait: 1h
  maxPrepareAhead: 240h
  taintReissueWindow: 5m
agentTTL: 30m
workloads:
  minTTL: 1m
  defaultTTL: 10m
  maxTTL: 6h
  nodeRateLimit: 20
  nodeBurst: 5
nodes:
  - name: host-a
    allowedIDs: ["spiffe://prod.example.org/demo/*", "spiffe://prod.example.org/exact"]
    allowedDNSNames: [demo.local]
  - name: host-b
    allowedIDs: ["spiffe://prod.example.org/b/*"]
upstream:
  file:
    certFile: /etc/mayfly/upstream.crt
    keyFile: /etc/mayfly/upstream.key
    bundleFile: /etc/mayfly/roots.crt
`,
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if got := c.TrustDomain.Name(); got != "prod.example.org" {
					t.Errorf("TrustDomain = %q, want prod.example.org", got)
				}
				want := &caapp.Config{
					TrustDomain:        c.TrustDomain,
					ListenAddress:      "0.0.0.0:9000",
					HealthAddress:      "",
					ServerDNSNames:     []string{"ca.example.org", "mayfly-ca.mayfly-system.svc"},
					KeyType:            pki.KeyTypeECDSAP384,
					Directory:          "/srv/ca",
					Upstream:           &caapp.UpstreamConfig{File: &caapp.UpstreamFile{CertFile: "/etc/mayfly/upstream.crt", KeyFile: "/etc/mayfly/upstream.key", BundleFile: "/etc/mayfly/roots.crt"}},
					Policy:             authority.Policy{RootTTL: 8760 * time.Hour, IntermediateTTL: 12 * time.Hour, PrepareAt: def.PrepareAt, ActivateAt: def.ActivateAt, RootAckWait: time.Hour, MaxPrepareAhead: 240 * time.Hour, TaintReissueWindow: 5 * time.Minute, JWTKeyTTL: def.JWTKeyTTL, JWTMaxTokenTTL: def.JWTMaxTokenTTL, JWTKeyType: def.JWTKeyType},
					AgentTTL:           30 * time.Minute,
					MinWorkloadTTL:     time.Minute,
					DefaultWorkloadTTL: 10 * time.Minute,
					MaxWorkloadTTL:     6 * time.Hour,
					NodeRateLimit:      20,
					NodeBurst:          5,
				}
				want.Nodes = c.Nodes
				compareConfig(t, c, want)
				if len(c.Nodes) != 2 || c.Nodes[0].Name != "host-a" || len(c.Nodes[0].AllowedIDs) != 2 || c.Nodes[1].Name != "host-b" {
					t.Errorf("Nodes = %+v", c.Nodes)
				}
			},
		},
		{
			name: "json_is_yaml",
			in:   `{"trustDomain": "example.org", "directory": "/d", "workloads": {"maxTTL": "2h"}}`,
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if c.MaxWorkloadTTL != 2*time.Hour || c.Directory != "/d" {
					t.Errorf("MaxWorkloadTTL, Directory = %s, %q", c.MaxWorkloadTTL, c.Directory)
				}
			},
		},
		{
			name: "standard_signing_switches_the_encoder",
			in:   minimalStandalone + "standardSigning: true\n",
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if !c.StandardSigning {
					t.Error("StandardSigning = false, want true")
				}
			},
		},
		{
			name:  "burst_defaults_to_four_times_the_rate",
			in:    minimalStandalone + "workloads:\n  nodeRateLimit: 10\n",
			check: wantNodeRate(10, 40),
		},
		{
			name:  "slow_rate_gets_a_burst_of_one",
			in:    minimalStandalone + "workloads:\n  nodeRateLimit: 0.1\n",
			check: wantNodeRate(0.1, 1),
		},
		{
			name: "attestation_and_status_socket_get_defaults",
			in:   minimalStandalone,
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				want := caapp.AttestationConfig{RateLimit: 50, Burst: 200, PeerRateLimit: 1, PeerBurst: 10}
				if c.Attestation != want || c.StatusSocket != filepath.Join(c.Directory, "status.sock") {
					t.Errorf("Attestation, StatusSocket = %+v, %q", c.Attestation, c.StatusSocket)
				}
			},
		},
		{
			name: "kubernetes_status_socket_in_tmp_and_off",
			in:   "trustDomain: cluster.example\nkubernetes: {}\nattestation: {peerRateLimit: 5, peerBurst: 20}\n",
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if c.StatusSocket != caapp.DefaultKubernetesStatusSocket || c.Attestation.PeerRateLimit != 5 || c.Attestation.RateLimit != 50 {
					t.Errorf("StatusSocket, Attestation = %q, %+v", c.StatusSocket, c.Attestation)
				}
			},
		},
		{
			name:  "huge_rate_does_not_overflow_the_burst",
			in:    minimalStandalone + "workloads:\n  nodeRateLimit: 1e300\n",
			check: wantNodeRate(1e300, math.MaxInt32),
		},
		{
			name: "kubernetes_gets_defaults",
			in:   "trustDomain: cluster.example\nkubernetes: {}\n",
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				want := caapp.KubernetesConfig{
					Namespace:           "mayfly-system",
					SecretName:          "mayfly-ca",
					AgentServiceAccount: "mayfly-agent",
					Audience:            "mayfly-ca",
					ClusterDomain:       "cluster.local",
					LeaseDuration:       config.Duration{Duration: caapp.DefaultLeaseDuration},
					RenewDeadline:       config.Duration{Duration: caapp.DefaultRenewDeadline},
					RetryPeriod:         config.Duration{Duration: caapp.DefaultRetryPeriod},
				}
				if c.Kubernetes == nil {
					t.Fatal("Kubernetes is nil")
				}
				if !reflect.DeepEqual(*c.Kubernetes, want) {
					t.Errorf("Kubernetes = %+v, want %+v", *c.Kubernetes, want)
				}
				if c.KubernetesPropagationDelay != 3*time.Minute {
					t.Errorf("KubernetesPropagationDelay = %s, want the default 3m", c.KubernetesPropagationDelay)
				}
				if c.Directory != "" || c.ListenAddress != "127.0.0.1:8443" || c.Policy != def {
					t.Errorf("Directory, ListenAddress, Policy = %q, %q, %+v", c.Directory, c.ListenAddress, c.Policy)
				}
			},
		},
		{
			name: "kubernetes_propagation_delay_is_set_or_none",
			in:   "trustDomain: cluster.example\nkubernetes: {}\nrotation:\n  kubernetesPropagationDelay: 0s\n",
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if c.KubernetesPropagationDelay != 0 {
					t.Errorf("KubernetesPropagationDelay = %s, want 0 (none, as set)", c.KubernetesPropagationDelay)
				}
			},
		},
		{
			name: "kubernetes_propagation_delay_may_equal_the_ack_wait",
			in:   "trustDomain: cluster.example\nkubernetes: {}\nrotation:\n  rootAckWait: 10m\n  kubernetesPropagationDelay: 10m\n",
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				if c.KubernetesPropagationDelay != 10*time.Minute {
					t.Errorf("KubernetesPropagationDelay = %s, want 10m", c.KubernetesPropagationDelay)
				}
			},
		},
		{
			name: "kubernetes_keeps_what_is_set",
			in: `
trustDomain: cluster.example
kubernetes:
  namespace: pki
  secretName: ca-state
  agentServiceAccount: node-agent
  audience: ca.pki
  clusterDomain: k8s.internal
  bundleNamespaceSelector: mayfly.dev/trust=yes
  bundleNamespaces: [pki, app]
  workloadCertificates:
    namespaces: [app]
  leaderElection: false
  leaseDuration: 4s
  renewDeadline: 3s
  retryPeriod: 500ms
`,
			check: func(t *testing.T, c *caapp.Config) {
				t.Helper()
				k := c.Kubernetes
				if k == nil {
					t.Fatal("Kubernetes is nil")
				}
				if k.Namespace != "pki" || k.SecretName != "ca-state" || k.AgentServiceAccount != "node-agent" ||
					k.Audience != "ca.pki" || k.ClusterDomain != "k8s.internal" || k.BundleNamespaceSelector != "mayfly.dev/trust=yes" ||
					k.LeaderElection == nil || *k.LeaderElection ||
					k.LeaseDuration.Duration != 4*time.Second || k.RenewDeadline.Duration != 3*time.Second || k.RetryPeriod.Duration != 500*time.Millisecond ||
					!slices.Equal(k.BundleNamespaces, []string{"pki", "app"}) ||
					!k.WorkloadCertificates.On() || !slices.Equal(k.WorkloadCertificates.Namespaces, []string{"app"}) {
					t.Errorf("Kubernetes = %+v", *k)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := caapp.Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseKubernetesNamespaceFromPod(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "from-downward-api")
	c, err := caapp.Parse([]byte("trustDomain: example.org\nkubernetes: {}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes.Namespace != "from-downward-api" {
		t.Errorf("Namespace = %q, want the pod's namespace", c.Kubernetes.Namespace)
	}
}

func compareConfig(t *testing.T, got, want *caapp.Config) {
	t.Helper()
	switch {
	case got.TrustDomain != want.TrustDomain:
		t.Errorf("TrustDomain = %s, want %s", got.TrustDomain, want.TrustDomain)
	case got.ListenAddress != want.ListenAddress:
		t.Errorf("ListenAddress = %q, want %q", got.ListenAddress, want.ListenAddress)
	case got.HealthAddress != want.HealthAddress:
		t.Errorf("HealthAddress = %q, want %q", got.HealthAddress, want.HealthAddress)
	case !slices.Equal(got.ServerDNSNames, want.ServerDNSNames):
		t.Errorf("ServerDNSNames = %q, want %q", got.ServerDNSNames, want.ServerDNSNames)
	case got.KeyType != want.KeyType:
		t.Errorf("KeyType = %q, want %q", got.KeyType, want.KeyType)
	case got.Directory != want.Directory:
		t.Errorf("Directory = %q, want %q", got.Directory, want.Directory)
	case (got.Kubernetes == nil) != (want.Kubernetes == nil):
		t.Errorf("Kubernetes = %+v, want %+v", got.Kubernetes, want.Kubernetes)
	case (got.Upstream == nil) != (want.Upstream == nil),
		got.Upstream != nil && (got.Upstream.File == nil || *got.Upstream.File != *want.Upstream.File):
		t.Errorf("Upstream = %+v, want %+v", got.Upstream, want.Upstream)
	case got.Policy != want.Policy:
		t.Errorf("Policy = %+v, want %+v", got.Policy, want.Policy)
	case got.AgentTTL != want.AgentTTL:
		t.Errorf("AgentTTL = %s, want %s", got.AgentTTL, want.AgentTTL)
	case got.MinWorkloadTTL != want.MinWorkloadTTL || got.DefaultWorkloadTTL != want.DefaultWorkloadTTL || got.MaxWorkloadTTL != want.MaxWorkloadTTL:
		t.Errorf("workload TTLs = %s/%s/%s, want %s/%s/%s", got.MinWorkloadTTL, got.DefaultWorkloadTTL, got.MaxWorkloadTTL,
			want.MinWorkloadTTL, want.DefaultWorkloadTTL, want.MaxWorkloadTTL)
	case got.NodeRateLimit != want.NodeRateLimit || got.NodeBurst != want.NodeBurst:
		t.Errorf("rate = %v/%d, want %v/%d", got.NodeRateLimit, got.NodeBurst, want.NodeRateLimit, want.NodeBurst)
	case len(got.Nodes) != len(want.Nodes):
		t.Errorf("Nodes = %+v, want %+v", got.Nodes, want.Nodes)
	case got.AllowRebootstrap:
		t.Error("AllowRebootstrap set from a file")
	}
}

func TestParseRejectsBadConfigs(t *testing.T) {
	t.Parallel()
	const dir = "directory: /d\n"
	for _, tc := range []struct {
		name    string
		in      string
		wantErr string
	}{
		{"empty", "", "config is empty"},
		{"only_whitespace", " \n\t\n", "config is empty"},
		{"too_large", minimalStandalone + "#" + strings.Repeat("x", 1<<20) + "\n", "more than 1048576"},
		{"not_yaml", "trustDomain: [unclosed\n", "parsing CA config"},
		{"unknown_field", minimalStandalone + "trustDomian: typo.org\n", `unknown field "trustDomian"`},
		{"unknown_nested_field", minimalStandalone + "workloads:\n  maxLifetime: 1h\n", `unknown field "maxLifetime"`},
		{"duplicate_key", minimalStandalone + "directory: /other\n", "parsing CA config"},
		{"wrong_type", "trustDomain: example.org\ndirectory: [a, b]\n", "parsing CA config"},
		{"bad_duration", minimalStandalone + "agentTTL: forever\n", "parsing CA config"},
		{"wrong_api_version", "apiVersion: mayfly.dev/v2\n" + minimalStandalone, `apiVersion: want mayfly.dev/v1alpha1, got "mayfly.dev/v2"`},
		{"wrong_kind", "kind: AgentConfig\n" + minimalStandalone, `kind: want CAConfig, got "AgentConfig"`},
		{"trust_domain_missing", dir, "trustDomain: required"},
		{"trust_domain_with_scheme", "trustDomain: spiffe://example.org\n" + dir, "trustDomain: "},
		{"trust_domain_upper_case", "trustDomain: Example.ORG\n" + dir, "trustDomain: "},
		{"trust_domain_bad_characters", "trustDomain: exa_mple!.org\n" + dir, "trustDomain: "},
		{"listen_address_without_port", "listenAddress: localhost\n" + minimalStandalone, "listenAddress: "},
		{"health_address_malformed", "healthAddress: ':::'\n" + minimalStandalone, "healthAddress: "},
		{"server_dns_name_bad", "serverDNSNames: [ok.example, 'bad name']\n" + minimalStandalone, "serverDNSNames[1]: "},
		{"taint_reissue_window_negative", minimalStandalone + "rotation:\n  taintReissueWindow: -1m\n", "rotation.taintReissueWindow: "},
		{"taint_reissue_window_too_long", minimalStandalone + "rotation:\n  taintReissueWindow: 30h\n", "rotation.taintReissueWindow: "},
		{"key_type_unknown", "keyType: dsa-1024\n" + minimalStandalone, "keyType: "},
		{"neither_directory_nor_kubernetes", "trustDomain: example.org\n", "directory or kubernetes: one is required"},
		{"both_directory_and_kubernetes", minimalStandalone + "kubernetes: {}\n", "directory and kubernetes: set only one"},
		{"lease_not_longer_than_renew_deadline", "trustDomain: example.org\nkubernetes: {leaseDuration: 10s}\n", "kubernetes.leaseDuration: 10s must be longer than renewDeadline (10s)"},
		{"renew_deadline_too_short_for_retry", "trustDomain: example.org\nkubernetes: {renewDeadline: 2s}\n", "kubernetes.renewDeadline: 2s must be longer than 1.2 × retryPeriod (2s)"},
		{"retry_period_negative", "trustDomain: example.org\nkubernetes: {retryPeriod: -1s}\n", "kubernetes.retryPeriod: -1s must be positive"},
		{"bundle_namespace_bad", "trustDomain: example.org\nkubernetes:\n  bundleNamespaces: [ok, Not_OK]\n", `kubernetes.bundleNamespaces[1]: "Not_OK" is not a namespace name`},
		{"bundle_namespace_twice", "trustDomain: example.org\nkubernetes:\n  bundleNamespaces: [a, a]\n", `kubernetes.bundleNamespaces[1]: "a" is listed twice`},
		{"secret_namespace_bad", "trustDomain: example.org\nkubernetes:\n  workloadCertificates:\n    namespaces: ['']\n", `kubernetes.workloadCertificates.namespaces[0]: "" is not a namespace name`},
		{"secret_namespaces_while_disabled", "trustDomain: example.org\nkubernetes:\n  workloadCertificates:\n    enabled: false\n    namespaces: [a]\n", "kubernetes.workloadCertificates: namespaces are set but enabled is false"},
		{"nodes_in_kubernetes_mode", "trustDomain: example.org\nkubernetes: {}\nnodes:\n  - name: a\n    allowedIDs: [spiffe://example.org/x]\n", "nodes: only for standalone mode"},
		{"node_id_other_trust_domain", minimalStandalone + `nodes:
  - name: a
    allowedIDs: ["spiffe://example.org/a/*"]
  - name: b
    allowedIDs: ["spiffe://evil.org/b/*"]
`, "nodes[1].allowedIDs[0]: spiffe://evil.org/b/* is not in trust domain example.org"},
		{"node_id_whole_trust_domain", minimalStandalone + "nodes:\n  - name: a\n    allowedIDs: [spiffe://example.org]\n", "nodes[0].allowedIDs[0]: "},
		{"node_ids_cover_reserved_ids", minimalStandalone + "nodes:\n  - name: a\n    allowedIDs: [spiffe://example.org/svc/*, spiffe://example.org/mayfly/*]\n", "nodes[0].allowedIDs[1]: spiffe://example.org/mayfly/* covers reserved IDs"},
		{"node_id_is_another_agent", minimalStandalone + "nodes:\n  - name: a\n    allowedIDs: [spiffe://example.org/mayfly/agent/b]\n", "nodes[0].allowedIDs[0]: spiffe://example.org/mayfly/agent/b is a reserved ID"},
		{"node_id_is_the_ca", minimalStandalone + "nodes:\n  - name: a\n    allowedIDs: [spiffe://example.org/mayfly/ca]\n", "nodes[0].allowedIDs[0]: spiffe://example.org/mayfly/ca is a reserved ID"},
		{"node_name_empty", minimalStandalone + "nodes:\n  - allowedIDs: [spiffe://example.org/x]\n", "nodes[0].name: "},
		{"node_dns_name_bad", minimalStandalone + "nodes:\n  - name: a\n    allowedIDs: [spiffe://example.org/x]\n    allowedDNSNames: ['-bad-']\n", "nodes[0].allowedDNSNames[0]: "},
		{"duplicate_node", minimalStandalone + `nodes:
  - name: a
    allowedIDs: ["spiffe://example.org/a/*"]
  - name: b
    allowedIDs: ["spiffe://example.org/b/*"]
  - name: a
    allowedIDs: ["spiffe://example.org/c/*"]
`, `nodes[2].name: node "a" is listed twice`},
		{"max_ttl_above_half_intermediate", minimalStandalone + "rotation:\n  intermediateTTL: 12h\nworkloads:\n  maxTTL: 7h\n", "workloads.maxTTL: 7h0m0s must be at most half of rotation.intermediateTTL (12h0m0s)"},
		{"default_max_ttl_above_half_intermediate", minimalStandalone + "rotation:\n  intermediateTTL: 24h\n", "workloads.maxTTL: 24h0m0s must be at most half of rotation.intermediateTTL"},
		{"max_ttl_above_24h", minimalStandalone + "workloads:\n  maxTTL: 25h\n", "workloads.maxTTL: must be in"},
		{"max_ttl_below_min", minimalStandalone + "workloads:\n  minTTL: 30m\n  defaultTTL: 30m\n  maxTTL: 10m\n", "workloads.maxTTL: must be in"},
		{"min_ttl_below_floor", minimalStandalone + "workloads:\n  minTTL: 5s\n", "workloads.minTTL: must be at least"},
		{"min_ttl_negative", minimalStandalone + "workloads:\n  minTTL: -5m\n", "workloads.minTTL: "},
		{"default_ttl_above_max", minimalStandalone + "workloads:\n  defaultTTL: 3h\n  maxTTL: 2h\n", "workloads.defaultTTL: "},
		{"default_ttl_below_min", minimalStandalone + "workloads:\n  defaultTTL: 2m\n", "workloads.defaultTTL: "},
		{"agent_ttl_too_short", minimalStandalone + "agentTTL: 30s\n", "agentTTL: must be in [1m, 24h]"},
		{"agent_ttl_too_long", minimalStandalone + "agentTTL: 48h\n", "agentTTL: must be in [1m, 24h]"},
		{"negative_attest_rate", minimalStandalone + "attestation: {rateLimit: -1, burst: 3}\n", "attestation: rateLimit, burst, peerRateLimit and peerBurst must be positive"},
		{"attest_rate_without_burst", minimalStandalone + "attestation: {peerRateLimit: 2}\n", "attestation: rateLimit, burst, peerRateLimit and peerBurst must be positive"},
		{"relative_status_socket", minimalStandalone + "statusSocket: run/status.sock\n", "statusSocket: \"run/status.sock\" must be an absolute path"},
		{"negative_rate_limit", minimalStandalone + "workloads:\n  nodeRateLimit: -1\n", "workloads.nodeRateLimit, nodeBurst: must be positive"},
		{"negative_burst", minimalStandalone + "workloads:\n  nodeBurst: -3\n", "workloads.nodeRateLimit, nodeBurst: must be positive"},
		{"root_ttl_too_short", minimalStandalone + "rotation:\n  rootTTL: 30m\n", "rotation.rootTTL: "},
		{"intermediate_ttl_too_short", minimalStandalone + "rotation:\n  intermediateTTL: 30m\n", "rotation.intermediateTTL: "},
		{"intermediate_ttl_above_half_root", minimalStandalone + "rotation:\n  rootTTL: 72h\n  intermediateTTL: 48h\n", "rotation.intermediateTTL: must be at most half of rootTTL"},
		{"negative_root_ack_wait", minimalStandalone + "rotation:\n  rootAckWait: -1h\n", "rotation.rootAckWait: "},
		{"adoption_node_selector_standalone", minimalStandalone + "rotation:\n  adoption:\n    nodeSelector: a=b\n", "rotation.adoption.nodeSelector: only for Kubernetes mode"},
		{"adoption_node_selector_unparsable", "trustDomain: example.org\nkubernetes: {}\nrotation:\n  adoption:\n    nodeSelector: \"a in (b\"\n", "rotation.adoption.nodeSelector: "},
		{"max_prepare_ahead_below_root_ack_wait", minimalStandalone + "rotation:\n  maxPrepareAhead: 1h\n", "rotation.maxPrepareAhead: must be at least rootAckWait (24h0m0s), got 1h0m0s"},
		{"negative_max_prepare_ahead", minimalStandalone + "rotation:\n  maxPrepareAhead: -1h\n", "rotation.maxPrepareAhead: must not be negative"},
		{"propagation_delay_in_standalone_mode", minimalStandalone + "rotation:\n  kubernetesPropagationDelay: 1m\n", "rotation.kubernetesPropagationDelay: only for Kubernetes mode"},
		{"negative_propagation_delay", "trustDomain: example.org\nkubernetes: {}\nrotation:\n  kubernetesPropagationDelay: -1m\n", "rotation.kubernetesPropagationDelay: must not be negative, got -1m0s"},
		{"propagation_delay_above_ack_wait", "trustDomain: example.org\nkubernetes: {}\nrotation:\n  rootAckWait: 1h\n  kubernetesPropagationDelay: 2h\n", "rotation.kubernetesPropagationDelay: must be at most rootAckWait (1h0m0s), got 2h0m0s"},
		{"bad_propagation_delay", "trustDomain: example.org\nkubernetes: {}\nrotation:\n  kubernetesPropagationDelay: soon\n", "parsing CA config"},
		{"upstream_without_file", minimalStandalone + "upstream: {}\n", "upstream: set exactly one of file, stepCA, cfssl"},
		{"upstream_file_missing_key_file", minimalStandalone + "upstream:\n  file:\n    certFile: /ca.crt\n", "upstream.file: certFile and keyFile are required"},
		{"upstream_file_missing_cert_file", minimalStandalone + "upstream:\n  file:\n    keyFile: /ca.key\n", "upstream.file: certFile and keyFile are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := caapp.Parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("Parse accepted the config: %+v", c)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse error = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestLoadFileNamesThePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "ca.yaml")
	if err := os.WriteFile(bad, []byte("trustDomain: example.org\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := caapp.LoadFile(bad); err == nil || !strings.Contains(err.Error(), bad+": directory or kubernetes") {
		t.Errorf("LoadFile(invalid) error = %v, want it to name the file and the field", err)
	}
	if _, err := caapp.LoadFile(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "reading CA config") {
		t.Errorf("LoadFile(missing) error = %v", err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(minimalStandalone), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := caapp.LoadFile(good); err != nil || c.Directory != "/var/lib/mayfly" {
		t.Errorf("LoadFile(good) = %+v, %v", c, err)
	}
}

func TestParseAtSizeLimit(t *testing.T) {
	t.Parallel()
	// Exactly 1 MiB is allowed; one byte more is not.
	in := []byte(minimalStandalone + "#")
	in = append(in, bytes.Repeat([]byte("x"), 1<<20-len(in)-1)...)
	in = append(in, '\n')
	if _, err := caapp.Parse(in); err != nil {
		t.Fatalf("Parse(1 MiB) = %v", err)
	}
	if _, err := caapp.Parse(append(in, '\n')); err == nil {
		t.Fatal("Parse(1 MiB + 1) accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimalStandalone))
	f.Add([]byte("trustDomain: example.org\nkubernetes: {}\n"))
	f.Add([]byte(`{"trustDomain":"example.org","directory":"/d","workloads":{"minTTL":"1m","maxTTL":"2h"}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := caapp.Parse(raw)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a config and an error: %v", err)
			}
			return
		}
		switch {
		case c.TrustDomain.IsZero():
			t.Fatal("accepted a config without a trust domain")
		case (c.Directory == "") == (c.Kubernetes == nil):
			t.Fatalf("accepted directory %q with kubernetes %v", c.Directory, c.Kubernetes)
		case c.MinWorkloadTTL <= 0 || c.MinWorkloadTTL > c.DefaultWorkloadTTL || c.DefaultWorkloadTTL > c.MaxWorkloadTTL:
			t.Fatalf("accepted workload TTLs %s/%s/%s", c.MinWorkloadTTL, c.DefaultWorkloadTTL, c.MaxWorkloadTTL)
		case c.MaxWorkloadTTL > c.Policy.IntermediateTTL/2:
			t.Fatalf("accepted maxTTL %s with intermediateTTL %s", c.MaxWorkloadTTL, c.Policy.IntermediateTTL)
		case !(c.NodeRateLimit > 0) || c.NodeBurst < 1:
			t.Fatalf("accepted rate %v burst %d", c.NodeRateLimit, c.NodeBurst)
		case c.Policy.Validate() != nil:
			t.Fatalf("accepted policy %+v: %v", c.Policy, c.Policy.Validate())
		}
	})
}

// wantNodeRate checks the parsed node rate limit and its burst.
func wantNodeRate(rate float64, burst int) func(*testing.T, *caapp.Config) {
	return func(t *testing.T, c *caapp.Config) {
		t.Helper()
		if c.NodeRateLimit != rate || c.NodeBurst != burst {
			t.Errorf("NodeRateLimit, NodeBurst = %v, %d; want %v, %d", c.NodeRateLimit, c.NodeBurst, rate, burst)
		}
	}
}
