package agentapp_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
)

const minimalStandalone = `
trustDomain: example.org
server: {address: 127.0.0.1:8443, trustBundleFile: /etc/mayfly/bundle.pem}
nodeName: host-a
standalone: {registrationsFile: /etc/mayfly/registrations.yaml}
`

func TestParseDefaults(t *testing.T) {
	c, err := agentapp.Parse([]byte(minimalStandalone))
	if err != nil {
		t.Fatal(err)
	}
	if c.SocketPath != "/run/mayfly/agent.sock" || c.DataDir != "/var/lib/mayfly/agent" || c.HealthAddress != "127.0.0.1:9444" {
		t.Errorf("defaults: socket %q, dataDir %q, health %q", c.SocketPath, c.DataDir, c.HealthAddress)
	}
	if c.KeyType != "ecdsa-p256" || c.WorkloadTTL != 0 {
		t.Errorf("workload defaults: %q %s", c.KeyType, c.WorkloadTTL)
	}
	if c.WorkloadAPI != workloadapi.DefaultLimits() {
		t.Errorf("workloadAPI defaults: %+v", c.WorkloadAPI)
	}
	w, err := agentapp.Parse([]byte(minimalStandalone + "workloadAPI: {maxConnections: 100, maxConnectionsPerUID: 10, maxStreamsPerConnection: 4, handshakeTimeout: 2s, idleTimeout: 1m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if l := w.WorkloadAPI; l.MaxConnections != 100 || l.MaxConnectionsPerUID != 10 || l.MaxStreamsPerConnection != 4 || l.HandshakeTimeout != 2*time.Second || l.IdleTimeout != time.Minute {
		t.Errorf("workloadAPI as set: %+v", l)
	}
	j, err := agentapp.Parse([]byte(minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: [vault, sts.example.com]\n"))
	if err != nil || len(j.WriteDirJWTAudience) != 2 {
		t.Errorf("writeDirJWTAudience: %v, %v", err, j)
	}
	if c.WriteDirJWTAudience != nil {
		t.Errorf("writeDirJWTAudience default %v, want none", c.WriteDirJWTAudience)
	}
	k, err := agentapp.Parse([]byte(`
trustDomain: example.org
server: {address: ca:8443, trustBundleFile: /b.pem}
nodeName: node-a
healthAddress: "off"
kubernetes: {csi: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if k.HealthAddress != "" || k.Kubernetes.TokenFile != "/var/run/secrets/mayfly/token" || k.Kubernetes.ProcRoot != "/proc" {
		t.Errorf("kubernetes defaults: %+v, health %q", k.Kubernetes, k.HealthAddress)
	}
	if k.Kubernetes.CSI.SocketPath != "/var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock" {
		t.Errorf("csi socket default %q", k.Kubernetes.CSI.SocketPath)
	}
	if k.Kubernetes.CSI.RegistrationDir != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("csi registrationDir default %q", k.Kubernetes.CSI.RegistrationDir)
	}
}

func TestParseRejectsBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"empty", "", "config is empty"},
		{"too_large", minimalStandalone + "#" + strings.Repeat("x", 1<<20) + "\n", "more than"},
		{"not_yaml", "trustDomain: [x\n", "parsing agent config"},
		{"unknown_field", minimalStandalone + "socketPth: /x\n", "parsing agent config"},
		{"wrong_kind", "kind: CAConfig\n" + minimalStandalone, "kind: want AgentConfig"},
		{"no_trust_domain", "server: {address: a:1, trustBundleFile: /b}\nstandalone: {registrationsFile: /r}\n", "trustDomain: required"},
		{"bad_trust_domain", strings.Replace(minimalStandalone, "example.org", "Example.ORG", 1), "trustDomain:"},
		{"bad_server_address", strings.Replace(minimalStandalone, "127.0.0.1:8443", "no-port", 1), "server.address"},
		{"no_bundle", strings.Replace(minimalStandalone, ", trustBundleFile: /etc/mayfly/bundle.pem", "", 1), "server.trustBundleFile: required"},
		{"relative_socket", minimalStandalone + "socketPath: agent.sock\n", "socketPath: must be absolute"},
		{"bad_health_address", minimalStandalone + "healthAddress: nope\n", "healthAddress"},
		{"bad_key_type", minimalStandalone + "workloads: {keyType: dsa}\n", "workloads.keyType"},
		{"negative_ttl", minimalStandalone + "workloads: {ttl: -1m}\n", "workloads.ttl"},
		{"no_mode", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\n", "standalone or kubernetes"},
		{"both_modes", minimalStandalone + "kubernetes: {}\n", "set only one"},
		{"no_registrations", strings.Replace(minimalStandalone, "{registrationsFile: /etc/mayfly/registrations.yaml}", "{}", 1), "standalone.registrationsFile: required"},
		{"write_dir_in_kubernetes", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {}\nwriteDir: /x\n", "writeDir: only for standalone"},
		{"relative_csi_socket", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {socketPath: csi.sock}}\n", "kubernetes.csi"},
		{"relative_kubelet_dir", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {kubeletDir: var/lib/kubelet}}\n", "kubernetes.csi.kubeletDir: must be an absolute directory"},
		{"relative_mounter_socket", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {mounterSocket: run/m.sock}}\n", "kubernetes.csi.mounterSocket: must be an absolute path"},
		{"relative_registration_dir", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {registrationDir: plugins_registry}}\n", "kubernetes.csi.registrationDir: must be absolute"},
		{"relative_cgroup_root", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {cgroupRoot: kubelet}\n", "kubernetes.cgroupRoot: must be an absolute, clean cgroup path"},
		{"unclean_cgroup_root", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {cgroupRoot: /kubelet/../x}\n", "kubernetes.cgroupRoot: must be an absolute, clean cgroup path"},
		{"root_kubelet_dir", "trustDomain: example.org\nserver: {address: a:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {kubeletDir: /}}\n", "kubernetes.csi.kubeletDir: must be an absolute directory other than /"},
		{"negative_max_connections", minimalStandalone + "workloadAPI: {maxConnections: -1}\n", "workloadAPI.maxConnections: must not be negative"},
		{"negative_max_connections_per_uid", minimalStandalone + "workloadAPI: {maxConnectionsPerUID: -1}\n", "workloadAPI.maxConnectionsPerUID: must not be negative"},
		{"per_uid_over_total", minimalStandalone + "workloadAPI: {maxConnections: 10, maxConnectionsPerUID: 11}\n", "workloadAPI.maxConnectionsPerUID: must not exceed workloadAPI.maxConnections (10)"},
		{"per_uid_over_default_total", minimalStandalone + "workloadAPI: {maxConnectionsPerUID: 5000}\n", "workloadAPI.maxConnectionsPerUID: must not exceed workloadAPI.maxConnections (4096)"},
		{"negative_streams", minimalStandalone + "workloadAPI: {maxStreamsPerConnection: -1}\n", "workloadAPI.maxStreamsPerConnection: must be between 1 and 1024"},
		{"too_many_streams", minimalStandalone + "workloadAPI: {maxStreamsPerConnection: 5000}\n", "workloadAPI.maxStreamsPerConnection"},
		{"short_handshake_timeout", minimalStandalone + "workloadAPI: {handshakeTimeout: 10ms}\n", "workloadAPI.handshakeTimeout: must be at least 1s"},
		{"negative_idle_timeout", minimalStandalone + "workloadAPI: {idleTimeout: -1m}\n", "workloadAPI.idleTimeout"},
		{"bad_idle_timeout", minimalStandalone + "workloadAPI: {idleTimeout: soon}\n", "parsing agent config"},
		{"max_connections_not_a_number", minimalStandalone + "workloadAPI: {maxConnections: many}\n", "parsing agent config"},
		{"jwt_audience_without_write_dir", minimalStandalone + "writeDirJWTAudience: [vault]\n", "writeDirJWTAudience: needs writeDir"},
		{"jwt_audience_empty_list", minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: []\n", "writeDirJWTAudience: invalid JWT-SVID: audience is required"},
		{"jwt_audience_empty_value", minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: [vault, \"\"]\n", "writeDirJWTAudience: invalid JWT-SVID: audience[1]: must be 1 to"},
		{"jwt_audience_too_long", minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: [" + strings.Repeat("a", 1000) + "]\n", "audience[0]: must be 1 to"},
		{"jwt_audience_too_many", minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: [" + strings.Repeat("a,", 16) + "a]\n", "17 audiences, at most 16"},
		{"jwt_audience_not_a_list", minimalStandalone + "writeDir: /out\nwriteDirJWTAudience: vault\n", "parsing agent config"},
		{"bad_node_name", strings.Replace(minimalStandalone, "nodeName: host-a", "nodeName: a/b", 1), "nodeName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agentapp.Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimalStandalone))
	f.Add([]byte("trustDomain: example.org\nserver: {address: ca:1, trustBundleFile: /b}\nnodeName: n\nkubernetes: {csi: {}}\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := agentapp.Parse(raw)
		if err != nil {
			return
		}
		if c.TrustDomain.IsZero() || c.NodeName == "" || c.SocketPath == "" {
			t.Fatalf("accepted config with empty required fields: %+v", c)
		}
	})
}
