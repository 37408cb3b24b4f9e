package kubenodes

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/policy"
)

// TokenAttestor attests node agents by their projected ServiceAccount token
// (issuer.AgentAttestor): a TokenReview for the CA's audience, then the pod
// the token is bound to, checked in the CA's pod cache. The API server
// caches good reviews for 10s, so a token of a pod deleted a moment ago
// still passes the review; the pod check catches it.
type TokenAttestor struct {
	cfg Config
}

// NewTokenAttestor validates cfg and returns a TokenAttestor.
func NewTokenAttestor(cfg Config) (*TokenAttestor, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validateCommon(); err != nil {
		return nil, err
	}
	switch {
	case cfg.AgentNamespace == "":
		return nil, errors.New("kubeattest: agentNamespace: must be set")
	case cfg.AgentServiceAccount == "":
		return nil, errors.New("kubeattest: agentServiceAccount: must be set")
	}
	return &TokenAttestor{cfg: cfg}, nil
}

// AttestAgent reviews the request's ServiceAccount token and returns the
// node of the agent pod it is bound to.
func (a *TokenAttestor) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	token := req.GetServiceAccountToken()
	if token == "" {
		if req.GetJoinToken() != "" {
			return "", issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT,
				"this CA runs in Kubernetes mode: attest with a projected ServiceAccount token (audience %q), not a join token", a.cfg.Audience)
		}
		return "", issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "service_account_token is empty")
	}
	return a.agentNode(ctx, token)
}

// CheckRenewal re-attests a renewing agent (issuer.RenewalChecker): the
// fresh ServiceAccount token of the request must pass the same checks as
// at attestation — a running pod of the agent ServiceAccount — and its pod
// must run on node, the node of the agent SVID. A token stops passing once
// its pod is deleted, so an agent SVID copied off a node cannot be renewed
// after the agent pod is gone.
func (a *TokenAttestor) CheckRenewal(ctx context.Context, node string, req *issuerv1.RenewAgentRequest) error {
	token := req.GetServiceAccountToken()
	if token == "" {
		return issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT,
			"service_account_token is empty: in Kubernetes mode RenewAgent needs the agent pod's fresh projected ServiceAccount token (audience %q); this agent predates that, upgrade it to the CA's version", a.cfg.Audience)
	}
	got, err := a.agentNode(ctx, token)
	if err != nil {
		return err
	}
	if got != node {
		return issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"the token of the renewing agent belongs to an agent pod on node %q, but its agent SVID is for node %q", got, node)
	}
	return nil
}

// agentNode reviews token and returns the node of the running agent pod it
// is bound to.
func (a *TokenAttestor) agentNode(ctx context.Context, token string) (string, error) {
	if !a.cfg.Cache.HasSynced() {
		return "", issuer.Deny(issuerv1.Denial_UNAVAILABLE, "the CA's pod cache has not synced yet; retry with backoff")
	}
	r, err := reviewToken(ctx, a.cfg.Client, a.cfg.ReviewTimeout, a.cfg.Audience, token)
	if err != nil {
		return "", err
	}
	if want := serviceAccountUser(a.cfg.AgentNamespace, a.cfg.AgentServiceAccount); r.username != want {
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"token belongs to %s, not to the agent ServiceAccount %s/%s", r.username, a.cfg.AgentNamespace, a.cfg.AgentServiceAccount)
	}
	if r.podUID == "" || r.podName == "" {
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"token is not bound to a pod; give the agent a projected ServiceAccount token (audience %q)", a.cfg.Audience)
	}
	podRef := a.cfg.AgentNamespace + "/" + r.podName
	if r.nodeName == "" {
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"token is bound to pod %s, which was not scheduled on a node when the token was issued", podRef)
	}
	pod, err := a.pod(ctx, r.podName, r.podUID)
	if err != nil {
		return "", err
	}
	switch {
	case pod.Namespace != a.cfg.AgentNamespace || pod.ServiceAccount != a.cfg.AgentServiceAccount:
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"pod %s/%s runs as ServiceAccount %s, not as the agent ServiceAccount %s/%s",
			pod.Namespace, pod.Name, pod.ServiceAccount, a.cfg.AgentNamespace, a.cfg.AgentServiceAccount)
	case pod.Terminating:
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "agent pod %s is terminating", podRef)
	case pod.Phase == corev1.PodSucceeded || pod.Phase == corev1.PodFailed:
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "agent pod %s has terminated (phase %s)", podRef, pod.Phase)
	case pod.NodeName != r.nodeName:
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"agent pod %s is scheduled on node %q, but its token names node %q", podRef, pod.NodeName, r.nodeName)
	}
	return r.nodeName, nil
}

// pod returns the agent pod with uid from the cache. A pod the cache has
// not seen yet (just created) is fetched from the API server once, so that
// cache lag does not refuse a new agent; a pod that no longer exists there
// either is refused.
func (a *TokenAttestor) pod(ctx context.Context, name, uid string) (policy.Pod, error) {
	if pod, ok := a.cfg.Cache.ByUID(uid); ok {
		return pod, nil
	}
	ref := a.cfg.AgentNamespace + "/" + name
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReviewTimeout)
	defer cancel()
	pod, err := a.cfg.Client.CoreV1().Pods(a.cfg.AgentNamespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return policy.Pod{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "agent pod %s (uid %s) that the token is bound to no longer exists", ref, uid)
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return policy.Pod{}, fmt.Errorf("kubeattest: getting agent pod %s refused to the CA (it needs get on pods): %w", ref, err)
	case err != nil:
		return policy.Pod{}, fmt.Errorf("%w: %w", issuer.Deny(issuerv1.Denial_UNAVAILABLE,
			"the CA cannot reach the Kubernetes API to look up agent pod %s; retry with backoff", ref), err)
	case string(pod.UID) != uid:
		return policy.Pod{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED,
			"agent pod %s (uid %s) that the token is bound to no longer exists; a pod of that name now has uid %s", ref, uid, pod.UID)
	}
	return policy.PodOf(pod), nil
}
