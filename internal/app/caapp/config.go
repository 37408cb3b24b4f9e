// Package caapp wires mayfly's CA control plane (cmd/ca): configuration,
// and one core (authority, issuer API, health and metrics) that each mode
// feeds with its parts: standalone (state in a directory, join tokens, node
// policies) or Kubernetes (state in a Secret, ServiceAccount tokens, pods,
// the trust bundle and certificate controllers).
package caapp

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/keystore"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// FileConfig is the CA configuration as users write it (YAML or JSON).
type FileConfig struct {
	config.Header
	// TrustDomain of every identity this CA issues, e.g. example.org.
	TrustDomain string `json:"trustDomain"`
	// ListenAddress of the issuer gRPC API (default 127.0.0.1:8443).
	ListenAddress string `json:"listenAddress,omitempty"`
	// HealthAddress serves /healthz, /readyz and /metrics (default 127.0.0.1:9443; "" or "off" disables).
	HealthAddress string `json:"healthAddress,omitempty"`
	// StatusSocket serves `ca status` on a 0600 unix socket, for root and
	// the CA's user only (default <directory>/status.sock standalone,
	// /tmp/mayfly-ca/status.sock in Kubernetes mode; "off" disables).
	StatusSocket string `json:"statusSocket,omitempty"`
	// ServerDNSNames go into the CA's serving certificate.
	ServerDNSNames []string `json:"serverDNSNames,omitempty"`
	// KeyType of the CA's own keys (default ecdsa-p256).
	KeyType string `json:"keyType,omitempty"`

	// Directory holds the state in standalone mode (no Kubernetes).
	Directory string `json:"directory,omitempty"`
	// Kubernetes holds the state in a Secret and attests agents by
	// ServiceAccount token.
	Kubernetes *KubernetesConfig `json:"kubernetes,omitempty"`
	// Upstream signs the intermediates instead of a self-signed root.
	Upstream *UpstreamConfig `json:"upstream,omitempty"`

	Rotation  RotationConfig  `json:"rotation,omitempty"`
	Workloads WorkloadsConfig `json:"workloads,omitempty"`
	// AgentTTL is the lifetime of agent SVIDs (default 1h).
	AgentTTL config.Duration `json:"agentTTL,omitempty"`
	// Attestation bounds the unauthenticated AttestAgent calls.
	Attestation AttestationConfig `json:"attestation,omitempty"`
	// Nodes (standalone mode) say which identities each node's agent may obtain.
	Nodes []hostnodes.NodePolicy `json:"nodes,omitempty"`
	// Agents bounds how long an agent may go on renewing.
	Agents AgentsConfig `json:"agents,omitzero"`
	// StandardSigning issues leaves with x509.CreateCertificate instead of
	// the direct encoder (same certificates, slower); for comparison.
	StandardSigning bool `json:"standardSigning,omitempty"`
	// JWT configures JWT-SVIDs: their keys and OIDC discovery.
	JWT JWTConfig `json:"jwt,omitzero"`
	// Keys keeps the root and intermediate keys in a PKCS#11 token instead
	// of the state (docs/key-custody.md).
	Keys keystore.Config `json:"keys,omitzero"`
}

// AgentsConfig bounds the life of an agent's identity.
type AgentsConfig struct {
	// MaxAge is the longest time since an agent's original attestation
	// that it may still renew its SVID; then it must attest anew
	// (Kubernetes: automatic; standalone: with a new join token). Default
	// 720h (30 days) standalone, 168h (7 days) Kubernetes.
	MaxAge config.Duration `json:"maxAge,omitzero"`
}

// Default maximum agent ages (agents.maxAge).
const (
	DefaultAgentMaxAgeStandalone = 30 * 24 * time.Hour
	DefaultAgentMaxAgeKubernetes = 7 * 24 * time.Hour
)

// KubernetesConfig configures Kubernetes mode.
type KubernetesConfig struct {
	// Namespace of the CA (default: the pod's namespace, or mayfly-system).
	Namespace string `json:"namespace,omitempty"`
	// SecretName holds the CA state (default mayfly-ca).
	SecretName string `json:"secretName,omitempty"`
	// AgentServiceAccount of the agent DaemonSet (default mayfly-agent, in Namespace).
	AgentServiceAccount string `json:"agentServiceAccount,omitempty"`
	// Audience of the agents' projected tokens (default mayfly-ca).
	Audience string `json:"audience,omitempty"`
	// ClusterDomain for Service DNS names (default cluster.local).
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// BundleNamespaceSelector selects the namespaces that get the
	// mayfly-trust-bundle ConfigMap (label selector; default: all).
	BundleNamespaceSelector string `json:"bundleNamespaceSelector,omitempty"`
	// BundleNamespaces, when set, are the only namespaces that get the
	// mayfly-trust-bundle ConfigMap, with Namespace itself (the agents mount
	// it there), also limited by BundleNamespaceSelector. The CA then reads
	// and writes ConfigMaps only there, so its RBAC can be Roles in those
	// namespaces instead of a ClusterRole (the Helm chart does that).
	BundleNamespaces []string `json:"bundleNamespaces,omitempty"`
	// WorkloadCertificates configures the WorkloadCertificate -> Secret path.
	WorkloadCertificates WorkloadCertificatesConfig `json:"workloadCertificates,omitzero"`
	// RequirePodToken refuses workload requests without the pod's own
	// ServiceAccount token (CSI tokenRequests): a compromised agent then
	// cannot obtain identities of pods that did not mount a volume. Leave it
	// off when workloads use the Workload API socket or podCertificate.
	RequirePodToken bool `json:"requirePodToken,omitempty"`
	// LeaderElection (default true) lets one replica rotate.
	LeaderElection *bool `json:"leaderElection,omitempty"`
	// LeaseDuration, RenewDeadline and RetryPeriod time the leader
	// election (defaults 15s, 10s, 2s): a leader that stops renewing (its
	// process died, its node is cut off) holds the lease until
	// LeaseDuration after its last renewal; one that cannot renew within
	// RenewDeadline stops leading.
	LeaseDuration config.Duration `json:"leaseDuration,omitempty"`
	RenewDeadline config.Duration `json:"renewDeadline,omitempty"`
	RetryPeriod   config.Duration `json:"retryPeriod,omitempty"`
}

// Leader election timings by default (controller-runtime's).
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// WorkloadCertificatesConfig is the WorkloadCertificate controller's
// reach: the only part of the CA that writes Secrets outside its namespace.
type WorkloadCertificatesConfig struct {
	// Enabled (default true) runs the controller when its CRD is installed.
	// false: the CA never lists, reads or writes a Secret outside its own.
	Enabled *bool `json:"enabled,omitempty"`
	// Namespaces, when set, are the only namespaces where WorkloadCertificate
	// Secrets are written; the CA watches Secrets only there, so RBAC can
	// grant Secrets there alone (a WorkloadCertificate elsewhere reports
	// NamespaceNotEnabled). Empty: every namespace, which needs Secrets
	// cluster-wide.
	Namespaces []string `json:"namespaces,omitempty"`
}

// On tells whether the WorkloadCertificate controller runs.
func (w WorkloadCertificatesConfig) On() bool { return w.Enabled == nil || *w.Enabled }

// validateNamespaces checks a list of namespace names at path.
func validateNamespaces(path string, names []string) error {
	seen := map[string]bool{}
	for i, ns := range names {
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("%s[%d]: %q is not a namespace name: %s", path, i, ns, strings.Join(errs, "; "))
		}
		if seen[ns] {
			return fmt.Errorf("%s[%d]: %q is listed twice", path, i, ns)
		}
		seen[ns] = true
	}
	return nil
}

// UpstreamConfig selects an upstream authority: file, stepCA or cfssl
// (docs/upstream.md).
type UpstreamConfig = upstream.Config

// UpstreamFile names the PEM files of an upstream CA.
type UpstreamFile = upstream.FileConfig

// RotationConfig sets the lifetimes and rotation points of the CA's keys.
type RotationConfig struct {
	RootTTL         config.Duration `json:"rootTTL,omitempty"`
	IntermediateTTL config.Duration `json:"intermediateTTL,omitempty"`
	RootAckWait     config.Duration `json:"rootAckWait,omitempty"`
	// MaxPrepareAhead caps how long before its activation a successor is
	// prepared (default 720h; at least rootAckWait).
	MaxPrepareAhead config.Duration `json:"maxPrepareAhead,omitempty"`
	// KubernetesPropagationDelay is how long a new root still waits after
	// every WorkloadCertificate Secret, bundle ConfigMap and the
	// ClusterTrustBundle hold it, for kubelet to refresh the pods' volumes
	// (Kubernetes mode; default 3m, "0s" for none).
	KubernetesPropagationDelay *config.Duration `json:"kubernetesPropagationDelay,omitempty"`
	// TaintReissueWindow is how long agents and controllers have to
	// re-issue every credential chaining to a tainted authority (ca taint),
	// each at a random point of it (default 10m).
	TaintReissueWindow config.Duration `json:"taintReissueWindow,omitempty"`
	// Adoption says which nodes must hold a new root before it activates.
	Adoption AdoptionConfig `json:"adoption,omitempty"`
}

// AdoptionConfig selects the nodes whose agents must acknowledge a new
// root (Kubernetes mode; standalone expects the configured nodes).
type AdoptionConfig struct {
	// NodeSelector is a label selector of the Nodes that run an agent (the
	// agent DaemonSet's nodeSelector); default: every Node.
	NodeSelector string `json:"nodeSelector,omitempty"`
}

// WorkloadsConfig bounds workload SVID lifetimes.
type WorkloadsConfig struct {
	// MinTTL is the shortest lifetime a request may ask for (default 5m;
	// down to 10s for demos and tests).
	MinTTL     config.Duration `json:"minTTL,omitempty"`
	DefaultTTL config.Duration `json:"defaultTTL,omitempty"`
	MaxTTL     config.Duration `json:"maxTTL,omitempty"`
	// NodeRateLimit bounds the certificates one node's agent may obtain
	// per second (default 500), with bursts of NodeBurst (default 2000).
	NodeRateLimit float64 `json:"nodeRateLimit,omitempty"`
	NodeBurst     int     `json:"nodeBurst,omitempty"`
}

// AttestationConfig bounds AttestAgent calls, which are unauthenticated:
// per second for the whole CA (rateLimit, default 50, burst default 200)
// and per client IP address (peerRateLimit, default 1, peerBurst default
// 10). A call above either is refused with ResourceExhausted before its
// credential is checked; agents retry with backoff.
type AttestationConfig struct {
	RateLimit     float64 `json:"rateLimit,omitempty"`
	Burst         int     `json:"burst,omitempty"`
	PeerRateLimit float64 `json:"peerRateLimit,omitempty"`
	PeerBurst     int     `json:"peerBurst,omitempty"`
}

// DefaultKubernetesStatusSocket is the CA's status socket in Kubernetes
// mode: /tmp is the pod's own emptyDir.
const DefaultKubernetesStatusSocket = "/tmp/mayfly-ca/status.sock"

// Config is the validated runtime form.
type Config struct {
	TrustDomain        spiffeid.TrustDomain
	ListenAddress      string
	HealthAddress      string
	StatusSocket       string
	ServerDNSNames     []string
	KeyType            pki.KeyType
	Directory          string
	Kubernetes         *KubernetesConfig
	Upstream           *UpstreamConfig
	Policy             authority.Policy
	AgentTTL           time.Duration
	MinWorkloadTTL     time.Duration
	DefaultWorkloadTTL time.Duration
	MaxWorkloadTTL     time.Duration
	NodeRateLimit      float64
	Attestation        AttestationConfig
	NodeBurst          int
	Nodes              []hostnodes.NodePolicy
	AgentMaxAge        time.Duration
	// AdoptionNodeSelector selects the Nodes that must hold a new root.
	AdoptionNodeSelector string
	StandardSigning      bool
	// AllowRebootstrap is set by flag only, never by file.
	AllowRebootstrap bool

	// KubernetesPropagationDelay: see RotationConfig (Kubernetes mode).
	KubernetesPropagationDelay time.Duration

	JWT jwtRuntime

	// PKCS11, when set, holds the root and intermediate keys.
	PKCS11 *keystore.PKCS11Config
}

// LoadFile reads and validates a configuration file.
func LoadFile(path string) (*Config, error) {
	return config.Load(path, "CA config", Parse)
}

// Parse parses and validates a configuration; unknown fields are errors
// (a typo must not silently fall back to a default).
func Parse(raw []byte) (*Config, error) {
	return config.Parse(raw, "CA config", (*FileConfig).Validate)
}

// Validate applies defaults and returns the runtime form; errors name the
// field path.
func (fc *FileConfig) Validate() (*Config, error) {
	td, err := config.Identify(fc.Header, "CAConfig", fc.TrustDomain)
	if err != nil {
		return nil, err
	}
	c := &Config{
		TrustDomain:    td,
		ListenAddress:  config.OrDefault(fc.ListenAddress, "127.0.0.1:8443"),
		ServerDNSNames: fc.ServerDNSNames,
		Directory:      fc.Directory,
		Kubernetes:     fc.Kubernetes,
		Upstream:       fc.Upstream,
		Nodes:          fc.Nodes,

		StandardSigning: fc.StandardSigning,
	}
	if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
		return nil, fmt.Errorf("listenAddress: %w", err)
	}
	if c.HealthAddress, err = config.HealthAddress(fc.HealthAddress, "127.0.0.1:9443"); err != nil {
		return nil, err
	}
	for i, n := range c.ServerDNSNames {
		if err := pki.CheckDNSName(n); err != nil {
			return nil, fmt.Errorf("serverDNSNames[%d]: %w", i, err)
		}
	}
	if c.KeyType, err = pki.ParseKeyType(fc.KeyType); err != nil {
		return nil, fmt.Errorf("keyType: %w", err)
	}
	switch {
	case c.Directory == "" && c.Kubernetes == nil:
		return nil, errors.New("directory or kubernetes: one is required (directory: standalone mode; kubernetes: state in a Secret)")
	case c.Directory != "" && c.Kubernetes != nil:
		return nil, errors.New("directory and kubernetes: set only one")
	}
	c.StatusSocket = fc.StatusSocket
	switch {
	case c.StatusSocket == "off":
		c.StatusSocket = ""
	case c.StatusSocket != "" && !filepath.IsAbs(c.StatusSocket):
		return nil, fmt.Errorf("statusSocket: %q must be an absolute path", c.StatusSocket)
	case c.StatusSocket == "" && c.Directory != "":
		c.StatusSocket = filepath.Join(c.Directory, cli.StatusSocketName)
	case c.StatusSocket == "":
		c.StatusSocket = DefaultKubernetesStatusSocket
	}
	if k := c.Kubernetes; k != nil {
		k.Namespace = config.OrDefault(k.Namespace, config.OrDefault(os.Getenv("POD_NAMESPACE"), "mayfly-system"))
		k.SecretName = config.OrDefault(k.SecretName, "mayfly-ca")
		k.AgentServiceAccount = config.OrDefault(k.AgentServiceAccount, "mayfly-agent")
		k.Audience = config.OrDefault(k.Audience, "mayfly-ca")
		k.ClusterDomain = config.OrDefault(k.ClusterDomain, "cluster.local")
		if len(c.Nodes) > 0 {
			return nil, errors.New("nodes: only for standalone mode; in Kubernetes mode pods are authorized by the pod's node and ServiceAccount")
		}
		if err := k.defaultLeaseTimings(); err != nil {
			return nil, err
		}
		if err := validateNamespaces("kubernetes.bundleNamespaces", k.BundleNamespaces); err != nil {
			return nil, err
		}
		if err := validateNamespaces("kubernetes.workloadCertificates.namespaces", k.WorkloadCertificates.Namespaces); err != nil {
			return nil, err
		}
		if !k.WorkloadCertificates.On() && len(k.WorkloadCertificates.Namespaces) > 0 {
			return nil, errors.New("kubernetes.workloadCertificates: namespaces are set but enabled is false; remove one")
		}
	}
	if u := c.Upstream; u != nil {
		if err := u.Validate(); err != nil {
			return nil, err
		}
	}
	if p := fc.Keys.PKCS11; p != nil {
		if err := p.Validate("keys.pkcs11", c.KeyType); err != nil {
			return nil, err
		}
		c.PKCS11 = p
	}
	def := authority.DefaultPolicy()
	c.Policy = authority.Policy{
		RootTTL:         fc.Rotation.RootTTL.Or(def.RootTTL),
		IntermediateTTL: fc.Rotation.IntermediateTTL.Or(def.IntermediateTTL),
		PrepareAt:       def.PrepareAt,
		ActivateAt:      def.ActivateAt,
		RootAckWait:     fc.Rotation.RootAckWait.Or(def.RootAckWait),
		MaxPrepareAhead: fc.Rotation.MaxPrepareAhead.Or(def.MaxPrepareAhead),

		TaintReissueWindow: fc.Rotation.TaintReissueWindow.Or(def.TaintReissueWindow),
	}
	if err := c.Policy.Validate(); err != nil {
		return nil, err
	}
	if err := fc.JWT.validate(c); err != nil {
		return nil, err
	}
	if c.KubernetesPropagationDelay, err = propagationDelay(fc.Rotation.KubernetesPropagationDelay, c); err != nil {
		return nil, err
	}
	if c.AdoptionNodeSelector = fc.Rotation.Adoption.NodeSelector; c.AdoptionNodeSelector != "" {
		if c.Kubernetes == nil {
			return nil, errors.New("rotation.adoption.nodeSelector: only for Kubernetes mode; standalone expects the configured nodes")
		}
		if _, err := labels.Parse(c.AdoptionNodeSelector); err != nil {
			return nil, fmt.Errorf("rotation.adoption.nodeSelector: %w", err)
		}
	}
	c.AgentTTL = fc.AgentTTL.Or(time.Hour)
	c.AgentMaxAge = fc.Agents.MaxAge.Or(DefaultAgentMaxAgeStandalone)
	if c.Kubernetes != nil {
		c.AgentMaxAge = fc.Agents.MaxAge.Or(DefaultAgentMaxAgeKubernetes)
	}
	if c.AgentMaxAge < 2*c.AgentTTL {
		return nil, fmt.Errorf("agents.maxAge: must be at least twice agentTTL (%s), got %s", c.AgentTTL, c.AgentMaxAge)
	}
	c.DefaultWorkloadTTL = fc.Workloads.DefaultTTL.Or(time.Hour)
	c.MaxWorkloadTTL = fc.Workloads.MaxTTL.Or(pki.MaxWorkloadTTL)
	c.MinWorkloadTTL = fc.Workloads.MinTTL.Or(pki.MinWorkloadTTL)
	switch {
	case c.MinWorkloadTTL < 10*time.Second:
		return nil, fmt.Errorf("workloads.minTTL: must be at least 10s, got %s", c.MinWorkloadTTL)
	case c.AgentTTL < time.Minute || c.AgentTTL > pki.MaxWorkloadTTL:
		return nil, fmt.Errorf("agentTTL: must be in [1m, 24h], got %s", c.AgentTTL)
	case c.MaxWorkloadTTL < c.MinWorkloadTTL || c.MaxWorkloadTTL > pki.MaxWorkloadTTL:
		return nil, fmt.Errorf("workloads.maxTTL: must be in [minTTL=%s, %s], got %s", c.MinWorkloadTTL, pki.MaxWorkloadTTL, c.MaxWorkloadTTL)
	case c.DefaultWorkloadTTL < c.MinWorkloadTTL || c.DefaultWorkloadTTL > c.MaxWorkloadTTL:
		return nil, fmt.Errorf("workloads.defaultTTL: must be in [minTTL=%s, maxTTL=%s], got %s", c.MinWorkloadTTL, c.MaxWorkloadTTL, c.DefaultWorkloadTTL)
	case c.MaxWorkloadTTL > c.Policy.IntermediateTTL/2:
		return nil, fmt.Errorf("workloads.maxTTL: %s must be at most half of rotation.intermediateTTL (%s), or leaves get cut short", c.MaxWorkloadTTL, c.Policy.IntermediateTTL)
	}
	c.NodeRateLimit, c.NodeBurst = fc.Workloads.NodeRateLimit, fc.Workloads.NodeBurst
	c.NodeRateLimit = cmp.Or(c.NodeRateLimit, 500)
	if c.NodeBurst == 0 && c.NodeRateLimit > 0 {
		// Rounded up and capped: a rate below 0.25/s still gets a burst
		// of 1, and a huge rate does not overflow int.
		c.NodeBurst = int(math.Min(math.Ceil(4*c.NodeRateLimit), math.MaxInt32))
	}
	if c.NodeRateLimit < 0 || c.NodeBurst < 1 {
		return nil, fmt.Errorf("workloads.nodeRateLimit, nodeBurst: must be positive, got %v and %d", c.NodeRateLimit, c.NodeBurst)
	}
	a := fc.Attestation
	if a.RateLimit == 0 && a.Burst == 0 {
		a.RateLimit, a.Burst = 50, 200
	}
	if a.PeerRateLimit == 0 && a.PeerBurst == 0 {
		a.PeerRateLimit, a.PeerBurst = 1, 10
	}
	if a.RateLimit <= 0 || a.Burst < 1 || a.PeerRateLimit <= 0 || a.PeerBurst < 1 {
		return nil, fmt.Errorf("attestation: rateLimit, burst, peerRateLimit and peerBurst must be positive (or all unset), got %v, %d, %v, %d", a.RateLimit, a.Burst, a.PeerRateLimit, a.PeerBurst)
	}
	c.Attestation = a
	seen := map[string]bool{}
	for i, n := range c.Nodes {
		path := fmt.Sprintf("nodes[%d]", i)
		if err := n.Validate(path, td); err != nil {
			return nil, err
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("%s.name: node %q is listed twice", path, n.Name)
		}
		seen[n.Name] = true
	}
	return c, nil
}

// propagationDelay validates rotation.kubernetesPropagationDelay.
func propagationDelay(d *config.Duration, c *Config) (time.Duration, error) {
	switch {
	case d == nil && c.Kubernetes == nil:
		return 0, nil
	case d == nil:
		return bundlegate.DefaultPropagationDelay, nil
	case c.Kubernetes == nil:
		return 0, errors.New("rotation.kubernetesPropagationDelay: only for Kubernetes mode (kubelet refreshes the pods' volumes)")
	case d.Duration < 0:
		return 0, fmt.Errorf("rotation.kubernetesPropagationDelay: must not be negative, got %s", d.Duration)
	case c.Policy.RootAckWait > 0 && d.Duration > c.Policy.RootAckWait:
		return 0, fmt.Errorf("rotation.kubernetesPropagationDelay: must be at most rootAckWait (%s), got %s: a new root activates after rootAckWait whatever the delay", c.Policy.RootAckWait, d.Duration)
	}
	return d.Duration, nil
}

// defaultLeaseTimings fills in the leader election timings and checks them
// as client-go's leader election does (it would refuse them at start).
func (k *KubernetesConfig) defaultLeaseTimings() error {
	k.LeaseDuration.Duration = k.LeaseDuration.Or(DefaultLeaseDuration)
	k.RenewDeadline.Duration = k.RenewDeadline.Or(DefaultRenewDeadline)
	k.RetryPeriod.Duration = k.RetryPeriod.Or(DefaultRetryPeriod)
	switch {
	case k.RetryPeriod.Duration <= 0:
		return fmt.Errorf("kubernetes.retryPeriod: %s must be positive", k.RetryPeriod)
	case k.RenewDeadline.Duration <= k.RetryPeriod.Duration*6/5:
		return fmt.Errorf("kubernetes.renewDeadline: %s must be longer than 1.2 × retryPeriod (%s)", k.RenewDeadline, k.RetryPeriod)
	case k.LeaseDuration.Duration <= k.RenewDeadline.Duration:
		return fmt.Errorf("kubernetes.leaseDuration: %s must be longer than renewDeadline (%s)", k.LeaseDuration, k.RenewDeadline)
	}
	return nil
}
