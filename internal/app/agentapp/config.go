// Package agentapp wires mayfly's node agent (cmd/agent): configuration, its identity
// towards the CA, workload attestation, the Workload API socket, file sinks,
// health and metrics.
package agentapp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
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
	// WorkloadAPI bounds what callers of the Workload API socket can hold.
	WorkloadAPI WorkloadAPIConfig `json:"workloadAPI,omitempty"`
	// WriteDirJWTAudience, with writeDir: each registration's directory
	// also gets jwt.token, a JWT-SVID for these audiences re-written at its
	// half-life.
	WriteDirJWTAudience []string `json:"writeDirJWTAudience,omitempty"`
}

// WorkloadAPIConfig bounds what the callers of the Workload API socket,
// which every local user may reach, can hold of the agent. Zero fields take
// the defaults of workloadapi.DefaultLimits.
type WorkloadAPIConfig struct {
	// MaxConnections open at once, all callers together (default 4096;
	// lowered at start to what RLIMIT_NOFILE allows).
	MaxConnections int `json:"maxConnections,omitempty"`
	// MaxConnectionsPerUID open at once from one uid, root included
	// (default 256).
	MaxConnectionsPerUID int `json:"maxConnectionsPerUID,omitempty"`
	// MaxStreamsPerConnection, concurrent calls on one connection (default 16).
	MaxStreamsPerConnection int `json:"maxStreamsPerConnection,omitempty"`
	// HandshakeTimeout closes a connection that has not completed the
	// HTTP/2 handshake in time (default 10s).
	HandshakeTimeout config.Duration `json:"handshakeTimeout,omitempty"`
	// IdleTimeout closes a connection without a call open for that long
	// (default 5m).
	IdleTimeout config.Duration `json:"idleTimeout,omitempty"`
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
	// CgroupRoot is the kubelet's --cgroup-root (cgroupfs driver), under
	// which pod containers' cgroups are; empty: derived at start from the
	// agent's own cgroup (the path above kubepods), which holds when the
	// agent runs in a pod of that kubelet.
	CgroupRoot string `json:"cgroupRoot,omitempty"`
}

// CSIConfig configures the CSI node plugin.
type CSIConfig struct {
	// SocketPath the kubelet reaches the plugin on
	// (default /var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock).
	SocketPath string `json:"socketPath,omitempty"`
	// StateDir keeps a record per published volume, to resume rotating them
	// after a restart (default /var/lib/kubelet/plugins/csi.mayfly.dev/volumes).
	StateDir string `json:"stateDir,omitempty"`
	// KubeletDir is the kubelet's root directory (--root-dir, default
	// /var/lib/kubelet): the driver publishes only to
	// <kubeletDir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.
	KubeletDir string `json:"kubeletDir,omitempty"`
	// MounterSocket, when set, is the socket of the mount helper (`agent
	// mounter`, a privileged container of its own): the agent then makes no
	// mount itself and needs no privilege (docs/security.md).
	MounterSocket string `json:"mounterSocket,omitempty"`
	// RegistrationDir is the kubelet's plugin registration directory
	// (default <kubeletDir>/plugins_registry): the agent serves
	// csi.mayfly.dev-reg.sock there, and the kubelet registers the driver.
	// "-" turns the registration off (a node-driver-registrar does it).
	RegistrationDir string `json:"registrationDir,omitempty"`
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
	// WorkloadAPI are the limits of the socket, defaults filled in.
	WorkloadAPI workloadapi.Limits
	// WriteDirJWTAudience: a jwt.token per writeDir directory, if set.
	WriteDirJWTAudience []string
}

// LoadFile reads and validates a configuration file.
func LoadFile(path string) (*Config, error) {
	return config.Load(path, "agent config", Parse)
}

// Parse parses and validates a configuration; unknown fields are errors.
func Parse(raw []byte) (*Config, error) {
	return config.Parse(raw, "agent config", (*FileConfig).Validate)
}

// Validate applies defaults; errors name the field path.
func (fc *FileConfig) Validate() (*Config, error) {
	td, err := config.Identify(fc.Header, "AgentConfig", fc.TrustDomain)
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
		WriteDir:        fc.WriteDir,
		Kubernetes:      fc.Kubernetes,
		WorkloadTTL:     fc.Workloads.TTL.Duration,
	}
	if fc.WriteDirJWTAudience != nil {
		if fc.WriteDir == "" {
			return nil, errors.New("writeDirJWTAudience: needs writeDir")
		}
		if err := jwtsvid.CheckAudience(fc.WriteDirJWTAudience); err != nil {
			return nil, fmt.Errorf("writeDirJWTAudience: %w", err)
		}
		c.WriteDirJWTAudience = fc.WriteDirJWTAudience
	}
	if _, _, err := net.SplitHostPort(c.ServerAddress); err != nil {
		return nil, fmt.Errorf("server.address: %w", err)
	}
	if c.TrustBundleFile == "" {
		return nil, errors.New("server.trustBundleFile: required (the CA's trust-bundle.pem)")
	}
	if c.HealthAddress, err = config.HealthAddress(fc.HealthAddress, "127.0.0.1:9444"); err != nil {
		return nil, err
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
	if c.WorkloadAPI, err = fc.WorkloadAPI.limits(); err != nil {
		return nil, err
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
		if k.CgroupRoot != "" && (!path.IsAbs(k.CgroupRoot) || path.Clean(k.CgroupRoot) != k.CgroupRoot) {
			return nil, fmt.Errorf("kubernetes.cgroupRoot: must be an absolute, clean cgroup path such as /kubelet, got %q", k.CgroupRoot)
		}
		if k.CSI != nil {
			k.CSI.SocketPath = config.OrDefault(k.CSI.SocketPath, "/var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock")
			k.CSI.StateDir = config.OrDefault(k.CSI.StateDir, "/var/lib/kubelet/plugins/csi.mayfly.dev/volumes")
			k.CSI.KubeletDir = config.OrDefault(k.CSI.KubeletDir, csi.DefaultKubeletDir)
			if !filepath.IsAbs(k.CSI.SocketPath) || !filepath.IsAbs(k.CSI.StateDir) {
				return nil, errors.New("kubernetes.csi.socketPath, stateDir: must be absolute")
			}
			if !filepath.IsAbs(k.CSI.KubeletDir) || filepath.Clean(k.CSI.KubeletDir) == "/" {
				return nil, fmt.Errorf("kubernetes.csi.kubeletDir: must be an absolute directory other than /, got %q", k.CSI.KubeletDir)
			}
			if k.CSI.MounterSocket != "" && !filepath.IsAbs(k.CSI.MounterSocket) {
				return nil, fmt.Errorf("kubernetes.csi.mounterSocket: must be an absolute path, got %q", k.CSI.MounterSocket)
			}
			k.CSI.RegistrationDir = config.OrDefault(k.CSI.RegistrationDir, filepath.Join(k.CSI.KubeletDir, "plugins_registry"))
			if k.CSI.RegistrationDir != "-" && !filepath.IsAbs(k.CSI.RegistrationDir) {
				return nil, fmt.Errorf("kubernetes.csi.registrationDir: must be absolute or \"-\", got %q", k.CSI.RegistrationDir)
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

// Bounds of the workloadAPI fields: beyond them a value is a mistake.
const (
	maxStreamsPerConnection = 1024
	minSocketTimeout        = time.Second
)

// limits validates w and fills in the defaults.
func (w WorkloadAPIConfig) limits() (workloadapi.Limits, error) {
	l := workloadapi.DefaultLimits()
	if w.MaxConnections < 0 {
		return l, fmt.Errorf("workloadAPI.maxConnections: must not be negative, got %d", w.MaxConnections)
	}
	if w.MaxConnections > 0 {
		l.MaxConnections = w.MaxConnections
	}
	if w.MaxConnectionsPerUID < 0 {
		return l, fmt.Errorf("workloadAPI.maxConnectionsPerUID: must not be negative, got %d", w.MaxConnectionsPerUID)
	}
	if w.MaxConnectionsPerUID > 0 {
		l.MaxConnectionsPerUID = w.MaxConnectionsPerUID
	}
	if l.MaxConnectionsPerUID > l.MaxConnections {
		return l, fmt.Errorf("workloadAPI.maxConnectionsPerUID: must not exceed workloadAPI.maxConnections (%d), got %d", l.MaxConnections, l.MaxConnectionsPerUID)
	}
	if w.MaxStreamsPerConnection < 0 || w.MaxStreamsPerConnection > maxStreamsPerConnection {
		return l, fmt.Errorf("workloadAPI.maxStreamsPerConnection: must be between 1 and %d, got %d", maxStreamsPerConnection, w.MaxStreamsPerConnection)
	}
	if w.MaxStreamsPerConnection > 0 {
		l.MaxStreamsPerConnection = uint32(w.MaxStreamsPerConnection)
	}
	for _, d := range []struct {
		field string
		in    time.Duration
		out   *time.Duration
	}{
		{"workloadAPI.handshakeTimeout", w.HandshakeTimeout.Duration, &l.HandshakeTimeout},
		{"workloadAPI.idleTimeout", w.IdleTimeout.Duration, &l.IdleTimeout},
	} {
		if d.in == 0 {
			continue
		}
		if d.in < minSocketTimeout {
			return l, fmt.Errorf("%s: must be at least %s, got %s", d.field, minSocketTimeout, d.in)
		}
		*d.out = d.in
	}
	return l, nil
}
