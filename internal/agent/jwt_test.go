package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// fakeJWTCA signs real tokens valid ttl from its clock, counting calls;
// fail makes the next calls fail with that error.
type fakeJWTCA struct {
	clock  *rotate.FakeClock
	ttl    time.Duration
	signer *jwtsvid.Signer
	calls  atomic.Int32
	mu     sync.Mutex
	fail   []error
	deny   *issuerv1.Denial
	// pub verifies its tokens (kid: its thumbprint).
	pub crypto.PublicKey
	// pods, when set, answers requests by pod (Kubernetes mode): the pod's
	// SPIFFE ID, and a PERMISSION_DENIED denial for a pod not in it.
	pods map[string]string
}

func newFakeJWTCA(t testing.TB, clock *rotate.FakeClock) *fakeJWTCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kid, _ := jwtsvid.KeyID(key.Public())
	s, err := jwtsvid.NewSigner(key, kid)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeJWTCA{clock: clock, ttl: 5 * time.Minute, signer: s, pub: key.Public()}
}

func (f *fakeJWTCA) SignJWTs(_ context.Context, reqs []*issuerv1.JWTRequest) ([]*issuerv1.JWTResult, error) {
	f.calls.Add(1)
	f.mu.Lock()
	if len(f.fail) > 0 {
		err := f.fail[0]
		f.fail = f.fail[1:]
		f.mu.Unlock()
		return nil, err
	}
	deny := f.deny
	f.mu.Unlock()
	out := make([]*issuerv1.JWTResult, 0, len(reqs))
	for _, r := range reqs {
		rawID, deny := r.GetSpiffeId(), deny
		if f.pods != nil {
			f.mu.Lock()
			podID, ok := f.pods[r.GetPodUid()]
			f.mu.Unlock()
			if !ok {
				deny = &issuerv1.Denial{Code: issuerv1.Denial_PERMISSION_DENIED, Message: "pod " + r.GetPodUid() + " is not on this node"}
			}
			rawID = podID
		}
		if deny != nil {
			out = append(out, &issuerv1.JWTResult{RequestId: r.GetRequestId(), Result: &issuerv1.JWTResult_Denial{Denial: deny}})
			continue
		}
		now := f.clock.Now().Truncate(time.Second)
		id := spiffeid.RequireFromString(rawID)
		tok, err := f.signer.Sign(jwtsvid.Claims{Subject: id, Audience: r.GetAudience(), IssuedAt: now, Expiry: now.Add(f.ttl)})
		if err != nil {
			return nil, err
		}
		out = append(out, &issuerv1.JWTResult{RequestId: r.GetRequestId(), Result: &issuerv1.JWTResult_Issued{Issued: &issuerv1.IssuedJWT{
			SpiffeId: id.String(), Token: tok, ExpiresAtUnix: now.Add(f.ttl).Unix(),
		}}})
	}
	return out, nil
}

var jwtEpoch = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// newJWTCacheAtEpoch returns a fake clock at jwtEpoch, a fake CA on it and
// a JWT cache in front of that CA.
func newJWTCacheAtEpoch(t testing.TB) (*rotate.FakeClock, *fakeJWTCA, *JWTCache) {
	t.Helper()
	clock := rotate.NewFakeClock(jwtEpoch)
	ca := newFakeJWTCA(t, clock)
	c, err := NewJWTCache(ca, clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	return clock, ca, c
}

func TestJWTCache(t *testing.T) {
	clock, ca, c := newJWTCacheAtEpoch(t)
	web := Spec{Key: "web", SpiffeID: "spiffe://example.org/web"}
	db := Spec{Key: "db", SpiffeID: "spiffe://example.org/db"}
	fetch := func(spec Spec, aud ...string) string {
		t.Helper()
		_, tok, err := c.Fetch(t.Context(), spec, aud)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		return tok
	}

	first := fetch(web, "api", "vault")
	t.Run("serves the cached token before its half-life, whatever the audience order", func(t *testing.T) {
		clock.Advance(2*time.Minute + 29*time.Second)
		if got := fetch(web, "vault", "api", "api"); got != first || ca.calls.Load() != 1 {
			t.Fatalf("new token or %d CA calls, want the cached token and 1 call", ca.calls.Load())
		}
	})
	t.Run("another audience set or identity is another entry", func(t *testing.T) {
		fetch(web, "api")
		fetch(db, "api", "vault")
		if ca.calls.Load() != 3 || c.Len() != 3 {
			t.Fatalf("%d calls, %d entries; want 3 and 3", ca.calls.Load(), c.Len())
		}
	})
	t.Run("obtains a new token at half-life", func(t *testing.T) {
		clock.Advance(time.Second)
		if got := fetch(web, "api", "vault"); got == first {
			t.Fatal("the token was not renewed at its half-life")
		}
	})
	t.Run("retries while the CA connection is not ready", func(t *testing.T) {
		ca.mu.Lock()
		ca.fail = []error{status.Error(codes.Unavailable, "agent has no SVID yet")}
		ca.mu.Unlock()
		done := make(chan error, 1)
		go func() {
			_, _, err := c.Fetch(t.Context(), Spec{Key: "new", SpiffeID: "spiffe://example.org/new"}, []string{"x"})
			done <- err
		}()
		clock.BlockUntil(1) // the backoff timer
		clock.Advance(time.Second)
		if err := <-done; err != nil {
			t.Fatalf("Fetch after one Unavailable: %v", err)
		}
	})
	t.Run("a denial reaches the workload with its code", func(t *testing.T) {
		ca.mu.Lock()
		ca.deny = &issuerv1.Denial{Code: issuerv1.Denial_PERMISSION_DENIED, Message: "policy: rule reserved-id"}
		ca.mu.Unlock()
		_, _, err := c.Fetch(t.Context(), Spec{Key: "denied", SpiffeID: "spiffe://example.org/mayfly/ca"}, []string{"x"})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err %v, want PermissionDenied", err)
		}
		ca.mu.Lock()
		ca.deny = nil
		ca.mu.Unlock()
	})
	t.Run("is bounded", func(t *testing.T) {
		small, _ := NewJWTCache(ca, clock, nil)
		small.Max = 8
		for i := range 20 {
			if _, _, err := small.Fetch(t.Context(), web, []string{fmt.Sprint(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if small.Len() != 8 {
			t.Fatalf("%d entries, want the bound 8", small.Len())
		}
	})
}
