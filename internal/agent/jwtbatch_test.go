package agent

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestJWTBatcherSharesCalls: the JWT-SVID requests of several workloads
// reach the CA in one SignJWTs call; each workload gets its own token, a
// denial reaches only the workload it names, and a failed call fails every
// request of its batch.
func TestJWTBatcherSharesCalls(t *testing.T) {
	clock := rotate.NewFakeClock(jwtEpoch)
	ca := newFakeJWTCA(t, clock)
	ca.pods = map[string]string{"uid-a": "spiffe://example.org/a", "uid-b": "spiffe://example.org/b"}
	// The fake clock never ends the window: a batch goes when it is full,
	// so the test knows which requests share it.
	b := &JWTBatcher{Signer: ca, MaxBatch: 3, Clock: clock}
	run(t, "JWTBatcher.Start", b.Start)
	c, err := NewJWTCache(b, clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := func(uid string) Spec {
		return Spec{Key: uid, PodUIDs: func() []string { return []string{uid} }}
	}
	fetchAll := func(uids ...string) (ids, tokens []string, errs []error) {
		ids, tokens, errs = make([]string, len(uids)), make([]string, len(uids)), make([]error, len(uids))
		var wg sync.WaitGroup
		for i, uid := range uids {
			wg.Go(func() {
				id, tok, err := c.Fetch(t.Context(), spec(uid), []string{"api"})
				ids[i], tokens[i], errs[i] = id.String(), tok, err
			})
		}
		wg.Wait()
		return ids, tokens, errs
	}

	ids, tokens, errs := fetchAll("uid-a", "uid-b", "uid-gone")
	if n := ca.calls.Load(); n != 1 {
		t.Fatalf("%d SignJWTs calls for three workloads, want 1", n)
	}
	for i, want := range []string{"spiffe://example.org/a", "spiffe://example.org/b"} {
		if errs[i] != nil {
			t.Fatalf("workload %d: %v", i, errs[i])
		}
		if ids[i] != want {
			t.Errorf("workload %d got %s, want %s", i, ids[i], want)
		}
		parsed, err := jwtsvid.Parse(tokens[i])
		if err != nil {
			t.Fatalf("workload %d's token: %v", i, err)
		}
		if got := parsed.Subject.String(); got != want {
			t.Errorf("workload %d's token names %s, want %s", i, got, want)
		}
	}
	if status.Code(errs[2]) != codes.PermissionDenied {
		t.Errorf("the gone pod's request: %v, want PermissionDenied", errs[2])
	}

	ca.mu.Lock()
	ca.fail = []error{status.Error(codes.Internal, "the CA broke")}
	ca.mu.Unlock()
	b2 := &JWTBatcher{Signer: ca, MaxBatch: 2, Clock: clock}
	run(t, "JWTBatcher.Start", b2.Start)
	c.Signer = b2
	_, _, errs = fetchAll("uid-c", "uid-d")
	for i, err := range errs {
		if status.Code(err) != codes.Internal {
			t.Errorf("request %d of the failed batch: %v, want the call's Internal error", i, err)
		}
	}
}

func TestJWTBatcherAbandonedRequest(t *testing.T) {
	ca := newFakeJWTCA(t, rotate.NewFakeClock(jwtEpoch))
	b := &JWTBatcher{Signer: ca}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// No loop runs: the request cannot be sent, and ctx ends the wait.
	if _, err := b.SignJWTs(ctx, []*issuerv1.JWTRequest{{SpiffeId: "spiffe://example.org/w", Audience: []string{"api"}}}); err == nil {
		t.Fatal("a request with a cancelled context returned no error")
	}
	// Once a loop runs, the abandoned request never reaches the CA.
	run(t, "JWTBatcher.Start", b.Start)
	if _, err := b.SignJWTs(t.Context(), []*issuerv1.JWTRequest{{SpiffeId: "spiffe://example.org/w", Audience: []string{"api"}}}); err != nil {
		t.Fatalf("SignJWTs with a live context: %v", err)
	}
	if n := ca.calls.Load(); n != 1 {
		t.Errorf("%d calls to the CA, want only the live request's", n)
	}
}
