// Package agentapp wires mayfly's node agent (cmd/agent): configuration, its identity
// towards the CA, workload attestation, the Workload API socket, file sinks,
// health and metrics.
package agentapp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// FileConfig is the agent configuration as users write it.
type FileConfig struct {
	config.Header
	TrustDomain string `json:"trustDomain"`
	// Server is the CA's issuer API.
	Server ServerConfig `json:"server"`
	// NodeName names this node (default: $NODE_NAME, else the host name).
	NodeName string `json:"nodeName,omitempty"`
	// SocketPath of the Workload API (default /run/mayfly/agent.sock).
	SocketPath string `json:"socketPath,omitempty"`
	// DataDir keeps the agent SVID across restarts (default /var/lib/mayfly/agent).
	DataDir string `json:"dataDir,omitempty"`
	// HealthAddress serves /healthz, /readyz and /metrics (default 127.0.0.1:9444; "off" disables).
	// The status is on <DataDir>/status.sock, for root and the agent's user only.
	HealthAddress string `json:"healthAddress,omitempty"`
	// WriteDir, standalone: each registration's certificate, key and bundle
	// are written to WriteDir/<id path>/ for host-level consumers.
	WriteDir   string            `json:"writeDir,omitempty"`
	Standalone *StandaloneConfig `json:"standalone,omitempty"`
	Kubernetes *KubernetesConfig `json:"kubernetes,omitempty"`
	Workloads  WorkloadsConfig   `json:"workloads,omitempty"`
}

// ServerConfig says how to reach and trust the CA.
type ServerConfig struct {
	Address string `json:"address"`
	// TrustBundleFile holds the roots that authenticate the CA at first
	// contact (the CA's trust-bundle.pem or the mayfly-trust-bundle ConfigMap).
	TrustBundleFile string `json:"trustBundleFile"`
}

// StandaloneConfig configures plain-host mode.
type StandaloneConfig struct {
	// JoinTokenFile holds the single-use join token (or use --join-token).
	JoinTokenFile string `json:"joinTokenFile,omitempty"`
	// RegistrationsFile maps unix selectors to SPIFFE IDs.
	RegistrationsFile string `json:"registrationsFile"`
}

// KubernetesConfig configures Kubernetes mode.
type KubernetesConfig struct {
	// CSISocketPath serves the CSI node plugin csi.mayfly.dev; empty
	// disables it (default /var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock
	// when csi is true).
	CSI *CSIConfig `json:"csi,omitempty"`
	// TokenFile is the projected ServiceAccount token with audience mayfly-ca.
	TokenFile string `json:"tokenFile,omitempty"`
	// ProcRoot is where the host's /proc is visible (hostPID).
	ProcRoot string `json:"procRoot,omitempty"`
}

// CSIConfig configures the CSI node plugin.
type CSIConfig struct {
	// SocketPath the kubelet reaches the plugin on
	// (default /var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock).
	SocketPath string `json:"socketPath,omitempty"`
	// StateDir keeps a record per published volume, to resume rotating them
	// after a restart (default /var/lib/kubelet/plugins/csi.mayfly.dev/volumes).
	StateDir string `json:"stateDir,omitempty"`
}

// WorkloadsConfig sets what the agent asks the CA for.
type WorkloadsConfig struct {
	// TTL requested for workload SVIDs (0: the CA's default).
	TTL     config.Duration `json:"ttl,omitempty"`
	KeyType string          `json:"keyType,omitempty"`
}

// Config is the validated runtime form.
type Config struct {
	TrustDomain       spiffeid.TrustDomain
	ServerAddress     string
	TrustBundleFile   string
	NodeName          string
	SocketPath        string
	DataDir           string
	HealthAddress     string
	WriteDir          string
	JoinToken         string
	JoinTokenFile     string
	RegistrationsFile string
	Kubernetes        *KubernetesConfig
	WorkloadTTL       time.Duration
	KeyType           pki.KeyType
}

// LoadFile reads and validates a configuration file.
func LoadFile(path string) (*Config, error) {
	return config.Load(path, "agent config", Parse)
}

// Parse parses and validates a configuration; unknown fields are errors.
func Parse(raw []byte) (*Config, error) {
	var fc FileConfig
	if err := config.DecodeStrict(raw, "agent config", &fc); err != nil {
		return nil, err
	}
	return fc.Validate()
}

// Validate applies defaults; errors name the field path.
func (fc *FileConfig) Validate() (*Config, error) {
	if err := fc.Check("AgentConfig"); err != nil {
		return nil, err
	}
	td, err := config.TrustDomain(fc.TrustDomain)
	if err != nil {
		return nil, err
	}
	c := &Config{
		TrustDomain:     td,
		ServerAddress:   fc.Server.Address,
		TrustBundleFile: fc.Server.TrustBundleFile,
		NodeName:        fc.NodeName,
		SocketPath:      config.OrDefault(fc.SocketPath, "/run/mayfly/agent.sock"),
		DataDir:         config.OrDefault(fc.DataDir, "/var/lib/mayfly/agent"),
		HealthAddress:   config.OrDefault(fc.HealthAddress, "127.0.0.1:9444"),
		WriteDir:        fc.WriteDir,
		Kubernetes:      fc.Kubernetes,
		WorkloadTTL:     fc.Workloads.TTL.Duration,
	}
	if c.HealthAddress == "off" {
		c.HealthAddress = ""
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		return nil, fmt.Errorf("server.address: %w", err)
	}
	if c.TrustBundleFile == "" {
		return nil, errors.New("server.trustBundleFile: required (the CA's trust-bundle.pem)")
	}
	if c.HealthAddress != "" {
		if _, _, err := net.SplitHostPort(c.HealthAddress); err != nil {
			return nil, fmt.Errorf("healthAddress: %w", err)
		}
	}
	if !filepath.IsAbs(c.SocketPath) {
		return nil, fmt.Errorf("socketPath: must be absolute, got %q", c.SocketPath)
	}
	if c.KeyType, err = pki.ParseKeyType(fc.Workloads.KeyType); err != nil {
		return nil, fmt.Errorf("workloads.keyType: %w", err)
	}
	if c.WorkloadTTL < 0 {
		return nil, fmt.Errorf("workloads.ttl: must not be negative, got %s", c.WorkloadTTL)
	}
	switch {
	case fc.Standalone == nil && fc.Kubernetes == nil:
		return nil, errors.New("standalone or kubernetes: one is required")
	case fc.Standalone != nil && fc.Kubernetes != nil:
		return nil, errors.New("standalone and kubernetes: set only one")
	case fc.Standalone != nil:
		c.JoinTokenFile = fc.Standalone.JoinTokenFile
		c.RegistrationsFile = fc.Standalone.RegistrationsFile
		if c.RegistrationsFile == "" {
			return nil, errors.New("standalone.registrationsFile: required")
		}
	default:
		k := fc.Kubernetes
		k.TokenFile = config.OrDefault(k.TokenFile, "/var/run/secrets/mayfly/token")
		k.ProcRoot = config.OrDefault(k.ProcRoot, "/proc")
		if k.CSI != nil {
			k.CSI.SocketPath = config.OrDefault(k.CSI.SocketPath, "/var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock")
			k.CSI.StateDir = config.OrDefault(k.CSI.StateDir, "/var/lib/kubelet/plugins/csi.mayfly.dev/volumes")
			if !filepath.IsAbs(k.CSI.SocketPath) || !filepath.IsAbs(k.CSI.StateDir) {
				return nil, errors.New("kubernetes.csi.socketPath, stateDir: must be absolute")
			}
		}
		if c.WriteDir != "" {
			return nil, errors.New("writeDir: only for standalone mode; in Kubernetes use a CSI volume")
		}
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		if c.NodeName, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("nodeName: not set and no host name: %w", err)
		}
	}
	if _, err := pki.AgentID(td, c.NodeName); err != nil {
		return nil, fmt.Errorf("nodeName: %w", err)
	}
	return c, nil
}
