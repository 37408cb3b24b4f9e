package kubenodes

import (
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
)

// DefaultAudience is the audience agents request for their projected
// ServiceAccount token and that every TokenReview asks for.
const DefaultAudience = "mayfly-ca"

// DefaultClusterDomain is the cluster DNS domain when none is configured.
const DefaultClusterDomain = "cluster.local"

// Config configures a TokenAttestor and a PodAuthorizer.
type Config struct {
	// TrustDomain is the trust domain of workload IDs (PodAuthorizer).
	TrustDomain spiffeid.TrustDomain
	// Audience is the token audience the CA accepts (default "mayfly-ca").
	Audience string
	// AgentNamespace is the namespace of the agent DaemonSet (TokenAttestor).
	AgentNamespace string
	// AgentServiceAccount is the ServiceAccount of the agent pods
	// (TokenAttestor).
	AgentServiceAccount string
	// ClusterDomain is the cluster DNS domain allowed after
	// <svc>.<ns>.svc in DNS names (default "cluster.local").
	ClusterDomain string
	// Client does the TokenReviews (create tokenreviews) and, on attestation,
	// looks up an agent pod the cache has not seen yet (get pods).
	Client kubernetes.Interface
	// Cache is the CA's shared pod and Service cache; the caller starts it.
	Cache *PodCache
	// RequirePodToken makes the authorizer refuse requests that carry no
	// pod_token: then even a compromised agent cannot obtain the identity of
	// a pod that did not mount a CSI volume with tokenRequests. Only for
	// clusters where every workload uses the CSI path.
	RequirePodToken bool
	// ReviewTimeout bounds one call to the API server (default 5s).
	ReviewTimeout time.Duration
	// ReviewCacheSize bounds the pods whose token review the authorizer
	// remembers, one token each, about 100 bytes a pod (default 262144;
	// negative: none are cached).
	ReviewCacheSize int
	// ReviewCacheTTL bounds how long a pod token's review is reused; it is
	// never reused past the token's expiry (default 24h, the oldest token
	// the kubelet hands out; negative: none are cached).
	ReviewCacheTTL time.Duration
	// Now is the clock of the review cache (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Audience == "" {
		c.Audience = DefaultAudience
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.ReviewTimeout == 0 {
		c.ReviewTimeout = 5 * time.Second
	}
	if c.ReviewCacheSize == 0 {
		c.ReviewCacheSize = 1 << 18
	}
	if c.ReviewCacheTTL == 0 {
		c.ReviewCacheTTL = 24 * time.Hour
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validateCommon() error {
	switch {
	case c.Client == nil:
		return errors.New("kubeattest: client: must be set")
	case c.Cache == nil:
		return errors.New("kubeattest: cache: must be set")
	case c.ReviewTimeout < 0:
		return errors.New("kubeattest: reviewTimeout: must not be negative")
	}
	return nil
}
