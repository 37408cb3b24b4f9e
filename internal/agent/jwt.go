package agent

import (
	"cmp"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/workloadapi"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// JWTKeySource gives the JWT keys of the bundle in force, by kid
// (BundleWatcher).
type JWTKeySource interface {
	JWTKeys() map[string]crypto.PublicKey
}

// JWTSigner sends a batch of JWT-SVID requests to the CA (CAConn).
type JWTSigner interface {
	SignJWTs(ctx context.Context, reqs []*issuerv1.JWTRequest) ([]*issuerv1.JWTResult, error)
}

// SignJWTs sends one SignJWTs call on the connection in force.
func (c *CAConn) SignJWTs(ctx context.Context, reqs []*issuerv1.JWTRequest) ([]*issuerv1.JWTResult, error) {
	client, _, err := c.Client()
	if err != nil {
		return nil, err
	}
	resp, err := client.SignJWTs(ctx, &issuerv1.SignJWTsRequest{Requests: reqs})
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// JWTCache holds the JWT-SVIDs the agent obtained, one per (identity,
// audience set), and serves each until its half-life; the next request
// after that obtains a new one (concurrent requests for one key share one
// call to the CA). It holds at most Max tokens: past that the entry
// nearest its refresh goes first.
type JWTCache struct {
	Signer JWTSigner
	Clock  rotate.Clock
	// TTL is asked of the CA; 0 takes the CA's default (5m).
	TTL time.Duration
	// Max bounds the entries (default 4096).
	Max int

	mu      sync.Mutex
	entries map[string]*jwtEntry
	group   singleflight.Group

	hits, misses prometheus.Counter
}

type jwtEntry struct {
	id      spiffeid.ID
	token   string
	refresh time.Time // half-life
	exp     time.Time
}

// NewJWTCache returns a cache asking signer, with its metrics registered on
// reg (nil: none).
func NewJWTCache(signer JWTSigner, clock rotate.Clock, reg prometheus.Registerer) (*JWTCache, error) {
	c := &JWTCache{Signer: signer, Clock: cmp.Or[rotate.Clock](clock, rotate.RealClock{})}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mayfly_agent_jwt_svid_lookups_total",
		Help: "JWT-SVID requests by result: hit (served from the cache, before its half-life) or miss (obtained from the CA).",
	}, []string{"result"})
	c.hits, c.misses = lookups.WithLabelValues("hit"), lookups.WithLabelValues("miss")
	if reg != nil {
		if err := reg.Register(lookups); err != nil {
			return nil, fmt.Errorf("agent: registering the JWT metrics: %w", err)
		}
	}
	return c, nil
}

// jwtKey is the cache key of an identity and an audience set (order and
// repeats do not matter).
func jwtKey(spec Spec, audience []string) string {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	aud = slices.Compact(aud)
	return spec.Key + "\x00" + strings.Join(aud, "\x00")
}

// Fetch returns a JWT-SVID of spec for audience, from the cache before its
// half-life, else from the CA.
func (c *JWTCache) Fetch(ctx context.Context, spec Spec, audience []string) (spiffeid.ID, string, error) {
	id, token, _, err := c.FetchRefresh(ctx, spec, audience)
	return id, token, err
}

// FetchRefresh is Fetch that also returns the token's half-life, when the
// cache obtains the next one (token files are re-written then).
func (c *JWTCache) FetchRefresh(ctx context.Context, spec Spec, audience []string) (spiffeid.ID, string, time.Time, error) {
	key := jwtKey(spec, audience)
	now := c.Clock.Now()
	c.mu.Lock()
	e := c.entries[key]
	c.mu.Unlock()
	if e != nil && now.Before(e.refresh) {
		if c.hits != nil {
			c.hits.Inc()
		}
		return e.id, e.token, e.refresh, nil
	}
	v, err, _ := c.group.Do(key, func() (any, error) {
		if c.misses != nil {
			c.misses.Inc()
		}
		return c.obtain(ctx, spec, audience, key)
	})
	if err != nil {
		return spiffeid.ID{}, "", time.Time{}, err
	}
	e = v.(*jwtEntry)
	return e.id, e.token, e.refresh, nil
}

func (c *JWTCache) obtain(ctx context.Context, spec Spec, audience []string, key string) (*jwtEntry, error) {
	req := &issuerv1.JWTRequest{RequestId: "jwt", SpiffeId: spec.SpiffeID, Audience: audience, TtlSeconds: int64(c.TTL / time.Second)}
	if spec.PodUIDs != nil {
		if uids := spec.PodUIDs(); len(uids) > 0 {
			req.PodUid = uids[0]
			if spec.PodToken != nil {
				req.PodToken = spec.PodToken(uids[0])
			}
		}
	}
	start := c.Clock.Now()
	results, err := c.sign(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(results) != 1 {
		return nil, errMissingResult
	}
	if d := results[0].GetDenial(); d != nil {
		return nil, status.Error(denialCode(d.GetCode()), "the CA refused a JWT-SVID: "+d.GetMessage())
	}
	iss := results[0].GetIssued()
	id, err := spiffeid.FromString(iss.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("the CA's JWT-SVID names no SPIFFE ID: %w", err)
	}
	exp := time.Unix(iss.GetExpiresAtUnix(), 0)
	if !exp.After(start) {
		return nil, errors.New("the CA's JWT-SVID has expired")
	}
	e := &jwtEntry{id: id, token: iss.GetToken(), exp: exp, refresh: start.Add(exp.Sub(start) / 2)}
	c.put(key, e, start)
	return e, nil
}

// sign asks the CA, retrying a call the CA could not take (the agent SVID
// not there yet, the connection being replaced) a few times within ctx:
// a workload's one FetchJWTSVID should not fail on that.
func (c *JWTCache) sign(ctx context.Context, req *issuerv1.JWTRequest) ([]*issuerv1.JWTResult, error) {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		results, err := c.Signer.SignJWTs(ctx, []*issuerv1.JWTRequest{req})
		if err == nil || status.Code(err) != codes.Unavailable || attempt == 6 {
			return results, err
		}
		if !rotate.Sleep(ctx, c.Clock, backoff, nil) {
			return nil, err
		}
		backoff *= 2
	}
}

func (c *JWTCache) put(key string, e *jwtEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[string]*jwtEntry{}
	}
	limit := cmp.Or(c.Max, 4096)
	if _, ok := c.entries[key]; !ok && len(c.entries) >= limit {
		var oldest string
		for k, v := range c.entries {
			if !now.Before(v.exp) {
				delete(c.entries, k)
				continue
			}
			if oldest == "" || v.refresh.Before(c.entries[oldest].refresh) {
				oldest = k
			}
		}
		if len(c.entries) >= limit {
			delete(c.entries, oldest)
		}
	}
	c.entries[key] = e
}

// Len is the number of cached tokens.
func (c *JWTCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// denialCode maps a Denial code to the gRPC code a workload sees.
func denialCode(c issuerv1.Denial_Code) codes.Code {
	switch c {
	case issuerv1.Denial_INVALID_ARGUMENT:
		return codes.InvalidArgument
	case issuerv1.Denial_PERMISSION_DENIED:
		return codes.PermissionDenied
	case issuerv1.Denial_NOT_FOUND, issuerv1.Denial_RESOURCE_EXHAUSTED, issuerv1.Denial_UNAVAILABLE:
		return codes.Unavailable
	}
	return codes.Internal
}

var _ workloadapi.JWTSource = (*WorkloadSource)(nil)

// JWTSVIDs returns a JWT-SVID for audience of each of the caller's
// identities (or of id alone).
func (s *WorkloadSource) JWTSVIDs(ctx context.Context, c workloadapi.Caller, id spiffeid.ID, audience []string) ([]workloadapi.JWTSVID, error) {
	if s.JWT == nil || s.JWTKeys == nil {
		return nil, status.Error(codes.Unimplemented, "JWT-SVIDs are not served by this agent")
	}
	specs, release := s.hold(c)
	defer release()
	var out []workloadapi.JWTSVID
	var firstErr error
	for _, spec := range specs {
		if !id.IsZero() && spec.SpiffeID != "" && spec.SpiffeID != id.String() {
			continue
		}
		got, token, err := s.JWT.Fetch(ctx, spec, audience)
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		if !id.IsZero() && got != id {
			continue
		}
		out = append(out, workloadapi.JWTSVID{ID: got, Token: token})
	}
	if len(out) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// JWTBundles returns the trust domain's JWT bundle as the CA last sent it.
func (s *WorkloadSource) JWTBundles() *jwtbundle.Set {
	b := jwtbundle.New(s.TrustDomain)
	if s.JWTKeys == nil {
		return jwtbundle.NewSet(b)
	}
	for kid, pub := range s.JWTKeys.JWTKeys() {
		if err := b.AddJWTAuthority(kid, pub); err != nil {
			continue // an empty kid; jwtKeysOf refuses those
		}
	}
	return jwtbundle.NewSet(b)
}

// jwtKeysOf parses the JWT authorities of a bundle message; a key that
// does not parse, or whose kid is not its thumbprint, is an error.
func jwtKeysOf(b *issuerv1.Bundle) (map[string]crypto.PublicKey, error) {
	keys := map[string]crypto.PublicKey{}
	for i, a := range b.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(a.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("jwt_authorities[%d]: %w", i, err)
		}
		if _, err := jwtsvid.Algorithm(pub); err != nil {
			return nil, fmt.Errorf("jwt_authorities[%d]: %w", i, err)
		}
		kid, err := jwtsvid.KeyID(pub)
		if err != nil || kid != a.GetKeyId() {
			return nil, fmt.Errorf("jwt_authorities[%d]: key_id is not the key's thumbprint", i)
		}
		keys[kid] = pub
	}
	return keys, nil
}
