package policy

import (
	"crypto/x509"
	"slices"
	"strings"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Rule is one named step of a signing policy, applied by pki.Signer.
type Rule interface {
	pki.SignOption
	// Name names the rule in refusals ("ttl-bounds").
	Name() string
}

// Names of the rules; a refusal's Rule is one of them.
const (
	RuleKind           = "kind"
	RuleIDShape        = "id-shape"
	RuleReservedID     = "reserved-id"
	RuleTTLBounds      = "ttl-bounds"
	RuleKeyType        = "key-type"
	RuleDNSNames       = "dns-names"
	RuleServiceDNSName = "service-dns-name"
	RuleNodeIDs        = "node-allowed-ids"
	RuleNodeDNSNames   = "node-allowed-dns-names"
	RuleAgentCSR       = "agent-csr"
)

// ReservedPath is the path below which every SPIFFE ID belongs to mayfly's
// own components: agents (/mayfly/agent/<node>) and the CA (/mayfly/ca).
const ReservedPath = "/mayfly"

// IsReserved reports whether path ("/a/b", a SPIFFE ID's path) is
// ReservedPath or below it.
func IsReserved(path string) bool {
	return path == ReservedPath || strings.HasPrefix(path, ReservedPath+"/")
}

// WorkloadLimits are the bounds of the workload leaves one issuing path
// grants.
type WorkloadLimits struct {
	// MinTTL and MaxTTL bound the requested lifetime (TTLBounds).
	MinTTL, MaxTTL time.Duration
	// MaxDNSNames bounds the DNS SANs; 0 forbids them (DNSNames).
	MaxDNSNames int
	// KubernetesIDs requires /ns/<ns>/sa/<sa> IDs (IDShape); standalone
	// IDs are free-form below the reserved path.
	KubernetesIDs bool
}

// WorkloadRules is the policy of workload leaves: kind workload, no
// reserved ID, the Kubernetes ID shape when asked for, the TTL bounds, a
// supported key type and valid DNS names. Which ID and DNS names a caller may
// have is decided before signing (the authorizers).
func WorkloadRules(l WorkloadLimits) []pki.SignOption {
	rules := []pki.SignOption{Kinds{pki.KindWorkload}, ReservedIDs{}}
	if l.KubernetesIDs {
		rules = append(rules, IDShape{})
	}
	return append(rules,
		TTLBounds{Min: l.MinTTL, Max: l.MaxTTL},
		KeyTypes(pki.KeyTypes()),
		DNSNames{Max: l.MaxDNSNames})
}

// AgentRules is the policy of agent SVIDs: kind agent with an ID
// /mayfly/agent/<node>. Their lifetime is the CA's configuration, not the
// agent's request, and their key comes from a CSR the issuer checked.
func AgentRules() []pki.SignOption {
	return []pki.SignOption{Kinds{pki.KindAgent}, IDShape{}}
}

// CheckAgentCSR parses and checks the CSR of an agent SVID request: well
// formed, signed by the key it carries (proof of possession), and a key of
// a supported type. The issuer checks it before it looks at the agent's
// bootstrap credential, so that a request that cannot succeed never
// consumes a single-use join token. A refusal is of rule agent-csr, class
// bad request.
func CheckAgentCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := pki.ParseCSR(der)
	if err != nil {
		return nil, Deny(RuleAgentCSR, ClassBadRequest, "csr: %v", err)
	}
	kt, err := pki.KeyTypeOf(csr.PublicKey)
	if err != nil {
		return nil, Deny(RuleAgentCSR, ClassBadRequest, "csr: %v", err)
	}
	if !slices.Contains(pki.KeyTypes(), kt) {
		return nil, Deny(RuleAgentCSR, ClassBadRequest, "csr: key type %s is not one of %v", kt, pki.KeyTypes())
	}
	return csr, nil
}

// ServerRules is the policy of the CA's own serving certificate: a
// component leaf (kind agent, so it carries the component policy) with up
// to pki.MaxDNSNames valid DNS names.
func ServerRules() []pki.SignOption {
	return []pki.SignOption{Kinds{pki.KindAgent}, DNSNames{Max: pki.MaxDNSNames}}
}

// Kinds allows the listed certificate kinds only. A request of another kind
// reaching a signer is the CA's own mistake: class internal.
type Kinds []pki.Kind

// Name implements Rule.
func (Kinds) Name() string { return RuleKind }

// Apply implements pki.SignOption.
func (k Kinds) Apply(req *pki.SignRequest, _ *x509.Certificate) error {
	if !slices.Contains(k, req.Kind) {
		return Deny(RuleKind, ClassInternal, "kind %q is not one of %v", req.Kind, []pki.Kind(k))
	}
	return nil
}

// IDShape requires the ID path the kind prescribes: /ns/<ns>/sa/<sa> for
// workloads, /mayfly/agent/<node> for agents.
type IDShape struct{}

// Name implements Rule.
func (IDShape) Name() string { return RuleIDShape }

// Apply implements pki.SignOption.
func (IDShape) Apply(req *pki.SignRequest, _ *x509.Certificate) error {
	var ok bool
	switch req.Kind {
	case pki.KindWorkload:
		_, _, ok = pki.Workload(req.ID)
	case pki.KindAgent:
		_, ok = pki.Agent(req.ID)
	case pki.KindIntermediate, pki.KindRoot:
		ok = req.ID.Path() == ""
	}
	if !ok {
		return Deny(RuleIDShape, ClassForbidden, "ID path %q does not fit kind %s", req.ID.Path(), req.Kind)
	}
	return nil
}

// ReservedIDs refuses workload IDs at or below ReservedPath: those name
// agents and the CA, and a workload holding one could pose as them.
type ReservedIDs struct{}

// Name implements Rule.
func (ReservedIDs) Name() string { return RuleReservedID }

// Apply implements pki.SignOption.
func (ReservedIDs) Apply(req *pki.SignRequest, _ *x509.Certificate) error {
	if req.Kind == pki.KindWorkload && IsReserved(req.ID.Path()) {
		return Deny(RuleReservedID, ClassForbidden, "%s is reserved for mayfly's own components (%s/...); no workload may have it", req.ID, ReservedPath)
	}
	return nil
}

// TTLBounds requires the requested lifetime to lie in [Min, Max]. It is the
// one check of a request's TTL.
type TTLBounds struct {
	Min, Max time.Duration
}

// Name implements Rule.
func (TTLBounds) Name() string { return RuleTTLBounds }

// Apply implements pki.SignOption.
func (b TTLBounds) Apply(req *pki.SignRequest, _ *x509.Certificate) error { return b.Check(req.TTL) }

// Check checks ttl against the bounds.
func (b TTLBounds) Check(ttl time.Duration) error {
	switch {
	case ttl < b.Min:
		return Deny(RuleTTLBounds, ClassBadRequest, "ttl %s is below the minimum %s", ttl, b.Min)
	case ttl > b.Max:
		return Deny(RuleTTLBounds, ClassBadRequest, "ttl %s is above the maximum %s", ttl, b.Max)
	}
	return nil
}

// KeyTypes allows subject keys of the listed types only.
type KeyTypes []pki.KeyType

// Name implements Rule.
func (KeyTypes) Name() string { return RuleKeyType }

// Apply implements pki.SignOption.
func (k KeyTypes) Apply(req *pki.SignRequest, _ *x509.Certificate) error {
	kt, err := pki.KeyTypeOf(req.PublicKey)
	if err != nil {
		return Deny(RuleKeyType, ClassBadRequest, "%v", err)
	}
	if !slices.Contains(k, kt) {
		return Deny(RuleKeyType, ClassBadRequest, "key type %s is not one of %v", kt, []pki.KeyType(k))
	}
	return nil
}

// DNSNames allows at most Max DNS names (0: none), each a valid lowercase
// host name (pki.CheckDNSName) listed once.
type DNSNames struct {
	Max int
}

// Name implements Rule.
func (DNSNames) Name() string { return RuleDNSNames }

// Apply implements pki.SignOption.
func (d DNSNames) Apply(req *pki.SignRequest, _ *x509.Certificate) error {
	if len(req.DNSNames) > d.Max {
		return Deny(RuleDNSNames, ClassBadRequest, "%d DNS names, at most %d allowed", len(req.DNSNames), d.Max)
	}
	for i, name := range req.DNSNames {
		if err := pki.CheckDNSName(name); err != nil {
			return Deny(RuleDNSNames, ClassBadRequest, "dnsNames[%d]: %v", i, err)
		}
		if slices.Contains(req.DNSNames[:i], name) {
			return Deny(RuleDNSNames, ClassBadRequest, "dnsNames[%d]: duplicate %q", i, name)
		}
	}
	return nil
}
