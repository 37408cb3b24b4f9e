package authority_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// TestUpstreamRootsSettle: after the upstream changes its root, the old
// root stays in the bundle exactly as long as a leaf may chain to it, and a
// root the upstream stopped listing that anchors nothing leaves at once.
func TestUpstreamRootsSettle(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	up := newFakeUpstream(t, clock)
	rootA := up.root
	m := &authority.Minter{TrustDomain: td, Policy: testPolicy(), Upstream: up, Rand: rand.Reader}
	s, err := m.Bootstrap(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	first := s.Intermediate.Current

	// The upstream moves to root B and lists C beside it.
	other := newFakeUpstream(t, clock)
	rootB, rootC := other.root, newFakeUpstream(t, clock).root
	up.root, up.key = other.root, other.key
	up.extra = []*x509.Certificate{rootC}

	s, err = m.Apply(ctx, s, authority.StepPrepareIntermediate, now)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCerts(s.UpstreamRoots, rootA, rootB, rootC) {
		t.Fatalf("after prepare: upstream roots %v, want A (anchors the current intermediate), B and C (listed)", subjects(s.UpstreamRoots))
	}

	// Activation does not ask the upstream: A anchored the outgoing
	// intermediate and is retired until it expires; C stays (listed last).
	act, err := m.Apply(ctx, s, authority.StepActivateIntermediate, now)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCerts(act.UpstreamRoots, rootB, rootC) {
		t.Fatalf("after activation: upstream roots %v, want B and C", subjects(act.UpstreamRoots))
	}
	if !retiredAt(act, rootA, first.NotAfter()) {
		t.Fatalf("after activation: A not retired until %s: %+v", first.NotAfter(), act.Root.Retired)
	}
	if !containsCert(act.Bundle(now), rootA) || containsCert(act.Bundle(first.NotAfter()), rootA) {
		t.Fatal("A must be in the bundle until the old intermediate's expiry, and only until then")
	}

	// The upstream stops listing C: the next intermediate step drops it,
	// since nothing chains to it.
	up.extra = nil
	rep, err := m.Apply(ctx, act, authority.StepReplaceIntermediate, now)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCerts(rep.UpstreamRoots, rootB) || containsCert(rep.Bundle(now), rootC) {
		t.Fatalf("after replace: upstream roots %v, want B only; C out of the bundle", subjects(rep.UpstreamRoots))
	}
	if !containsCert(rep.Bundle(now), rootA) {
		t.Fatal("the retired A left the bundle before its time")
	}
	data, err := rep.Encode()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := authority.Decode(data)
	if err != nil {
		t.Fatalf("the settled state does not load again: %v", err)
	}
	if !sameCerts(loaded.UpstreamRoots, rootB) || !retiredAt(loaded, rootA, first.NotAfter()) {
		t.Fatal("the settled roots did not survive a save and load")
	}

	// Replacing straight away (no next intermediate) retires the roots of
	// the outgoing one in the same way, unless the upstream still lists
	// them.
	t.Run("a root the upstream still lists stays", func(t *testing.T) {
		both := &fakeUpstream{root: other.root, key: other.key, now: clock, extra: []*x509.Certificate{rootA}}
		m := &authority.Minter{TrustDomain: td, Policy: testPolicy(), Upstream: both, Rand: rand.Reader}
		s0 := *s // A anchors the current intermediate, B the next
		s0.Intermediate.Next = nil
		r, err := m.Apply(ctx, &s0, authority.StepReplaceIntermediate, now)
		if err != nil {
			t.Fatal(err)
		}
		if !sameCerts(r.UpstreamRoots, rootA, rootB) || len(r.Root.Retired) != 0 {
			t.Fatalf("upstream roots %v, retired %d: want A and B, none retired", subjects(r.UpstreamRoots), len(r.Root.Retired))
		}
	})
}

func sameCerts(got []*x509.Certificate, want ...*x509.Certificate) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !containsCert(got, w) {
			return false
		}
	}
	return true
}

func retiredAt(s *authority.State, c *x509.Certificate, until time.Time) bool {
	return slices.ContainsFunc(s.Root.Retired, func(r authority.Retired) bool { return r.Cert.Equal(c) && r.Until.Equal(until) })
}

func subjects(certs []*x509.Certificate) []string {
	var out []string
	for _, c := range certs {
		out = append(out, c.Subject.String()+"/"+c.SerialNumber.String())
	}
	return out
}
