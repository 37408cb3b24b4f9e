package issuer_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

// gateAuthorizer holds every call until want calls are in flight at once,
// so it answers only when the items of a batch are authorized concurrently,
// and records the most calls it saw in flight.
type gateAuthorizer struct {
	next issuer.WorkloadAuthorizer
	want int

	mu       sync.Mutex
	inflight int
	most     int
	open     chan struct{}
}

func (g *gateAuthorizer) AuthorizeWorkload(ctx context.Context, node string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	g.mu.Lock()
	g.inflight++
	g.most = max(g.most, g.inflight)
	if g.inflight >= g.want {
		select {
		case <-g.open:
		default:
			close(g.open)
		}
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inflight--
		g.mu.Unlock()
	}()
	select {
	case <-g.open:
	case <-ctx.Done():
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_UNAVAILABLE, "items were authorized one after another")
	}
	return g.next.AuthorizeWorkload(ctx, node, req)
}

// TestSignWorkloadsAuthorizesItemsConcurrently: the items of one batch are
// authorized BatchConcurrency at a time, never more, and every result
// keeps its item's place.
func TestSignWorkloadsAuthorizesItemsConcurrently(t *testing.T) {
	const limit, items = 4, 13
	var gate *gateAuthorizer
	h := newHarness(t, func(c *issuer.Config) {
		gate = &gateAuthorizer{next: c.Authorizer, want: limit, open: make(chan struct{})}
		c.Authorizer = gate
		c.BatchConcurrency = limit
	})
	h.authz.grant("node-a", webID)
	resp, err := h.agent("node-a").SignWorkloads(ctx(t), batch(t, items, webID))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != items {
		t.Fatalf("%d results, want %d", len(resp.GetResults()), items)
	}
	for i, r := range resp.GetResults() {
		if want := fmt.Sprintf("r%d", i); r.GetRequestId() != want {
			t.Errorf("result %d is for %s, want %s", i, r.GetRequestId(), want)
		}
		if r.GetIssued() == nil {
			t.Errorf("result %d: %v", i, r.GetDenial())
		}
	}
	if gate.most > limit {
		t.Errorf("%d items authorized at once, bound %d", gate.most, limit)
	}
}

func TestBatchConcurrencyMustNotBeNegative(t *testing.T) {
	h := newHarness(t)
	_, err := issuer.New(issuer.Config{TrustDomain: h.tca.TrustDomain, Authority: h.src, Attestor: fakeAttestor{}, Authorizer: h.authz, Rand: rand.Reader, BatchConcurrency: -1})
	if err == nil || !strings.Contains(err.Error(), "batchConcurrency") {
		t.Fatalf("negative batchConcurrency: %v, want an error naming it", err)
	}
}
