package kubenodes

import (
	"context"
	"errors"
	"fmt"
	"slices"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// PodAuthorizer authorizes workload requests of node agents
// (issuer.WorkloadAuthorizer): the pod named by UID must be in the CA's pod
// cache, alive and scheduled on the caller's node; the identity is its
// ns/sa, and DNS names are limited to Services of its own namespace. The
// rules are internal/policy's (pod-phase, pod-node, service-dns-name,
// pod-token), and their refusals name them.
// Decisions come from the cache, so issuance for already-known pods goes on
// while the API server is unreachable (except for requests carrying a
// pod_token, whose review needs the API server).
type PodAuthorizer struct {
	cfg     Config
	reviews *reviewCache
}

// NewPodAuthorizer validates cfg and returns a PodAuthorizer.
func NewPodAuthorizer(cfg Config) (*PodAuthorizer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validateCommon(); err != nil {
		return nil, err
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("kubeattest: trustDomain: must be set")
	}
	if err := pki.CheckDNSName(cfg.ClusterDomain); err != nil {
		return nil, fmt.Errorf("kubeattest: clusterDomain: %w", err)
	}
	return &PodAuthorizer{cfg: cfg, reviews: newReviewCache(cfg.ReviewCacheSize, cfg.ReviewCacheTTL, cfg.Now)}, nil
}

// AuthorizeWorkload grants the identity of the pod req.PodUid to the agent
// of node when the pod runs there.
func (p *PodAuthorizer) AuthorizeWorkload(ctx context.Context, node string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	if req.GetSpiffeId() != "" {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id is for standalone mode; in Kubernetes mode name the pod by pod_uid")
	}
	uid := req.GetPodUid()
	if uid == "" {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "pod_uid is empty")
	}
	if node == "" {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "the caller has no node")
	}
	pod, ok := p.cfg.Cache.ByUID(uid)
	if !ok {
		if !p.cfg.Cache.HasSynced() {
			return issuer.Grant{}, issuer.Deny(issuerv1.Denial_UNAVAILABLE, "the CA's pod cache has not synced yet; retry with backoff")
		}
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_NOT_FOUND, "pod with uid %q not found", truncate(uid, 64))
	}
	ref := pod.Namespace + "/" + pod.Name
	if err := policy.PodActive(&pod); err != nil {
		return issuer.Grant{}, err
	}
	if err := policy.PodOnNode(&pod, node); err != nil {
		return issuer.Grant{}, err
	}
	id, err := pki.WorkloadID(p.cfg.TrustDomain, pod.Namespace, pod.ServiceAccount)
	if err != nil {
		return issuer.Grant{}, policy.Deny(policy.RuleIDShape, policy.ClassForbidden, "pod %s has no usable ServiceAccount: %v", ref, err)
	}
	for _, name := range req.GetDnsNames() {
		if err := p.checkDNSName(pod.Namespace, name); err != nil {
			return issuer.Grant{}, err
		}
	}
	if req.GetPodToken() == "" && p.cfg.RequirePodToken {
		return issuer.Grant{}, policy.Deny(policy.RulePodToken, policy.ClassForbidden,
			"pod_token required (kubernetes.requirePodToken): only pods that mount a csi.mayfly.dev volume with tokenRequests get an identity")
	}
	if tok := req.GetPodToken(); tok != "" {
		if err := p.checkPodToken(ctx, &pod, tok); err != nil {
			return issuer.Grant{}, err
		}
	}
	return issuer.Grant{ID: id, DNSNames: slices.Clone(req.GetDnsNames()), Subject: "pod " + ref}, nil
}

// checkDNSName allows <svc>.<ns>.svc and <svc>.<ns>.svc.<clusterDomain>
// for a Service svc of the pod's namespace ns that is in the cache.
func (p *PodAuthorizer) checkDNSName(ns, name string) error {
	svc, err := policy.ServiceDNSName(name, ns, p.cfg.ClusterDomain)
	if err != nil {
		return err
	}
	if !p.cfg.Cache.HasService(ns, svc) {
		return policy.Deny(policy.RuleServiceDNSName, policy.ClassForbidden, "dns name %q: there is no Service %s/%s", name, ns, svc)
	}
	return nil
}

// checkPodToken requires tok to be a valid token for the CA's audience
// bound to pod and its ServiceAccount. Once reviewed, the same token for
// the same pod is admitted without a review until its exp (reviewCache);
// the pod itself is checked on every call by the caller.
func (p *PodAuthorizer) checkPodToken(ctx context.Context, pod *policy.Pod, tok string) error {
	uid := string(pod.UID)
	if p.reviews.admitted(uid, tok) {
		return nil
	}
	r, err := reviewToken(ctx, p.cfg.Client, p.cfg.ReviewTimeout, p.cfg.Audience, tok)
	if err != nil {
		var d *issuer.Denial
		if errors.As(err, &d) && d.Code == issuerv1.Denial_PERMISSION_DENIED {
			return issuer.Deny(d.Code, "pod_token: %s", d.Message)
		}
		return err
	}
	ref := pod.Namespace + "/" + pod.Name
	switch {
	case r.podUID != uid:
		return policy.Deny(policy.RulePodToken, policy.ClassForbidden, "pod_token is not bound to pod %s", ref)
	case r.username != serviceAccountUser(pod.Namespace, pod.ServiceAccount):
		return policy.Deny(policy.RulePodToken, policy.ClassForbidden, "pod_token belongs to %s, not to the ServiceAccount of pod %s", r.username, ref)
	}
	p.reviews.remember(uid, tok)
	return nil
}
