package upstream_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestNewUpstreamRootWaitsForAdoption: when the upstream's root changes
// (here: the operator replaces the upstream files), the new root reaches
// the bundle with the next intermediate, and that intermediate takes over
// only once the consumers hold the bundle (the same gate as mayfly's own
// roots), or rootAckWait after it was published.
func TestNewUpstreamRootWaitsForAdoption(t *testing.T) {
	for _, tt := range []struct {
		name  string
		acked bool
	}{
		{"activates once the consumers hold the new root", true},
		{"activates after rootAckWait without them", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			oldRoot := upstreamtest.NewCA(t, "Corp root 1", nil, -1)
			cfg := upstream.FileConfig{
				CertFile: upstreamtest.WriteCert(t, dir, "ca.crt", oldRoot.Cert),
				KeyFile:  upstreamtest.WriteKey(t, dir, "ca.key", oldRoot.Key),
			}
			clock := rotate.NewFakeClock(time.Now())
			u := newUpstream(t, &upstream.Config{File: &cfg}, clock.Now)
			store, err := authority.NewDirStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var acked atomic.Bool
			p := authority.DefaultPolicy()
			p.RootAckWait = 12 * time.Hour // published at 24h of 48h: over at 36h, after the activation point (32h), before the forced one (40h)
			m := authority.NewManager(authority.ManagerOptions{
				Store:  store,
				Minter: &authority.Minter{TrustDomain: td, Policy: p, Upstream: u, Rand: rand.Reader},
				Clock:  clock,
				Acks:   acked.Load,
			})
			ctx := context.Background()
			if err := m.Load(ctx); err != nil {
				t.Fatal(err)
			}
			l, _ := m.Current()
			first := l.State.Intermediate.Current

			// The upstream moves to a new root.
			newRoot := upstreamtest.NewCA(t, "Corp root 2", nil, -1)
			upstreamtest.WriteKey(t, dir, "ca.key", newRoot.Key)
			upstreamtest.WriteCert(t, dir, "ca.crt", newRoot.Cert)

			clock.Set(l.State.Intermediate.PreparePoint(p.IntermediateSchedule()))
			m.RotateOnce(ctx)
			l, _ = m.Current()
			next := l.State.Intermediate.Next
			if next == nil || next.Cert().CheckSignatureFrom(newRoot.Cert) != nil {
				t.Fatal("no next intermediate under the new root")
			}
			if !containsRoot(l.Bundle, newRoot) || !containsRoot(l.Bundle, oldRoot) {
				t.Fatal("the bundle does not carry both roots while the next intermediate waits")
			}
			if l.State.Intermediate.NextPublishedAt.IsZero() {
				t.Fatal("the next intermediate is not marked as waiting for adoption")
			}

			// Past its activation point, the consumers do not hold the
			// bundle yet: the intermediate under the old root keeps signing.
			activate := l.State.Intermediate.ActivatePoint(p.IntermediateSchedule())
			clock.Set(activate.Add(time.Minute))
			m.RotateOnce(ctx)
			l, _ = m.Current()
			if !l.State.Intermediate.Current.Cert().Equal(first.Cert()) {
				t.Fatal("the intermediate under the new root activated before the consumers held the root")
			}

			if tt.acked {
				acked.Store(true)
			} else {
				clock.Set(l.State.Intermediate.NextPublishedAt.Add(p.RootAckWait))
			}
			m.RotateOnce(ctx)
			l, _ = m.Current()
			if !l.State.Intermediate.Current.Cert().Equal(next.Cert()) {
				t.Fatal("the intermediate under the new root did not activate")
			}
			if !containsRoot(l.Bundle, oldRoot) {
				t.Fatal("the old root left the bundle while leaves under it may be in use")
			}
			if slices.ContainsFunc(l.State.UpstreamRoots, oldRoot.Cert.Equal) {
				t.Fatal("the old root is still a signing upstream root after the switch")
			}
			if !retiredUntil(l.State, oldRoot, first.NotAfter()) {
				t.Fatalf("the old root is not retired until the old intermediate's expiry %s: %+v", first.NotAfter(), l.State.Root.Retired)
			}

			// Once the intermediate under the old root has expired, no
			// leaf can chain to the old root: it leaves the bundle.
			clock.Set(first.NotAfter().Add(time.Second))
			m.RotateOnce(ctx)
			l, _ = m.Current()
			if containsRoot(l.Bundle, oldRoot) {
				t.Fatal("the old upstream root is still in the bundle after the last intermediate under it expired")
			}
			if !containsRoot(l.Bundle, newRoot) {
				t.Fatal("the new root left the bundle")
			}
		})
	}
}

func retiredUntil(s *authority.State, c *upstreamtest.CA, until time.Time) bool {
	return slices.ContainsFunc(s.Root.Retired, func(r authority.Retired) bool {
		return r.Cert.Equal(c.Cert) && r.Until.Equal(until)
	})
}

func containsRoot(bundle []*x509.Certificate, c *upstreamtest.CA) bool {
	for _, b := range bundle {
		if b.Equal(c.Cert) {
			return true
		}
	}
	return false
}
