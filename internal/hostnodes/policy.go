package hostnodes

import (
	"context"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// spiffeidPlaceholder checks node names with the agent ID rules.
var spiffeidPlaceholder = spiffeid.RequireTrustDomainFromString("example.org")

// NodePolicy says which identities the agent of one node may obtain.
type NodePolicy struct {
	// Name is the node name the join token was made for.
	Name string `json:"name"`
	// AllowedIDs are SPIFFE IDs, exact or ending in "/*" for every ID
	// below a path (spiffe://example.org/demo/*). None may name or cover
	// an ID under spiffe://<td>/mayfly/, reserved for agents and the CA.
	AllowedIDs []string `json:"allowedIDs"`
	// AllowedDNSNames may appear as DNS SANs of this node's workloads.
	AllowedDNSNames []string `json:"allowedDNSNames,omitempty"`
}

// Validate checks the policy; path names the policy in errors
// (e.g. "nodes[0]").
func (p NodePolicy) Validate(path string, td spiffeid.TrustDomain) error {
	if _, err := pki.AgentID(td, p.Name); err != nil {
		return fmt.Errorf("%s.name: %w", path, err)
	}
	for i, pattern := range p.AllowedIDs {
		if err := policy.CheckIDPattern(td, pattern); err != nil {
			return fmt.Errorf("%s.allowedIDs[%d]: %w", path, i, err)
		}
	}
	for i, n := range p.AllowedDNSNames {
		if err := pki.CheckDNSName(n); err != nil {
			return fmt.Errorf("%s.allowedDNSNames[%d]: %w", path, i, err)
		}
	}
	return nil
}

// Allows reports whether id matches one of the policy's patterns.
func (p NodePolicy) Allows(id spiffeid.ID) bool {
	return slices.ContainsFunc(p.AllowedIDs, func(pattern string) bool { return policy.MatchIDPattern(pattern, id) })
}

// Authorizer grants a node's agent the identities of its NodePolicy
// (issuer.WorkloadAuthorizer).
type Authorizer struct {
	TrustDomain spiffeid.TrustDomain
	Nodes       map[string]NodePolicy
}

// NewAuthorizer indexes the policies by node name.
func NewAuthorizer(td spiffeid.TrustDomain, nodes []NodePolicy) *Authorizer {
	a := &Authorizer{TrustDomain: td, Nodes: map[string]NodePolicy{}}
	for _, n := range nodes {
		a.Nodes[n.Name] = n
	}
	return a
}

// AuthorizeWorkload checks the requested SPIFFE ID against the node's
// allow list.
func (a *Authorizer) AuthorizeWorkload(_ context.Context, node string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	if req.GetPodUid() != "" {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "pod_uid is for Kubernetes mode; this CA runs standalone: send spiffe_id")
	}
	if req.GetSpiffeId() == "" {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id is empty")
	}
	id, err := pki.ParseID(req.GetSpiffeId())
	if err != nil {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %v", err)
	}
	if id.TrustDomain() != a.TrustDomain {
		return issuer.Grant{}, policy.Deny(policy.RuleNodeIDs, policy.ClassForbidden, "spiffe_id %s is not in trust domain %s", id, a.TrustDomain)
	}
	p, ok := a.Nodes[node]
	if !ok {
		return issuer.Grant{}, policy.Deny(policy.RuleNodeIDs, policy.ClassForbidden, "node %s has no entry in the CA's nodes configuration", node)
	}
	if !p.Allows(id) {
		return issuer.Grant{}, policy.Deny(policy.RuleNodeIDs, policy.ClassForbidden, "node %s may not obtain %s (not in its allowedIDs)", node, id)
	}
	for _, n := range req.GetDnsNames() {
		if !slices.Contains(p.AllowedDNSNames, n) {
			return issuer.Grant{}, policy.Deny(policy.RuleNodeDNSNames, policy.ClassForbidden, "node %s may not put DNS name %q in a certificate (not in its allowedDNSNames)", node, n)
		}
	}
	return issuer.Grant{ID: id, DNSNames: req.GetDnsNames(), Subject: "node " + node}, nil
}

// CheckNode refuses a node without an entry in the CA's nodes
// (issuer.NodeChecker): removing a node from the configuration revokes its
// agent at the next call, renewal included.
func (a *Authorizer) CheckNode(node string) error {
	if _, ok := a.Nodes[node]; !ok {
		return policy.Deny(policy.RuleNodeIDs, policy.ClassForbidden, "node %s has no entry in the CA's nodes configuration (removed?); its agent is refused", node)
	}
	return nil
}
