package issuer

import (
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

func TestVerifiedAgents(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	cert := func(raw string, from, until time.Time) *x509.Certificate {
		return &x509.Certificate{Raw: []byte(raw), NotBefore: from, NotAfter: until}
	}
	root := cert("root", t0.Add(-24*time.Hour), t0.Add(10*time.Hour))
	inter := cert("intermediate", t0.Add(-time.Hour), t0.Add(5*time.Hour))
	leaf := cert("leaf", t0.Add(-time.Minute), t0.Add(time.Hour))
	chain := []*x509.Certificate{leaf, inter}
	loaded := &authority.Loaded{Bundle: []*x509.Certificate{root}}
	attested := t0.Add(-2 * time.Hour)

	fresh := func() *verifiedAgents {
		v := &verifiedAgents{}
		v.put(chainKey(chain), chain, loaded, "node-a", attested, t0)
		return v
	}
	t.Run("a_verified_chain_serves_while_valid", func(t *testing.T) {
		e, ok := fresh().get(chainKey(chain), loaded, t0.Add(59*time.Minute))
		if !ok || e.node != "node-a" || !e.attestedAt.Equal(attested) {
			t.Fatalf("get = %+v, %v; want node-a attested at %s", e, ok, attested)
		}
	})
	t.Run("not_past_the_leaf_expiry", func(t *testing.T) {
		if _, ok := fresh().get(chainKey(chain), loaded, leaf.NotAfter.Add(time.Nanosecond)); ok {
			t.Error("served past the leaf's notAfter")
		}
	})
	t.Run("not_before_the_chain_is_valid", func(t *testing.T) {
		if _, ok := fresh().get(chainKey(chain), loaded, leaf.NotBefore.Add(-time.Nanosecond)); ok {
			t.Error("served before the leaf's notBefore")
		}
	})
	t.Run("not_past_a_root_or_intermediate_expiry", func(t *testing.T) {
		shortRoot := &authority.Loaded{Bundle: []*x509.Certificate{cert("root2", t0.Add(-time.Hour), t0.Add(10*time.Minute))}}
		v := &verifiedAgents{}
		v.put(chainKey(chain), chain, shortRoot, "node-a", attested, t0)
		if _, ok := v.get(chainKey(chain), shortRoot, t0.Add(11*time.Minute)); ok {
			t.Error("served past the bundle root's notAfter")
		}
		longLeaf := []*x509.Certificate{cert("leaf2", t0.Add(-time.Minute), t0.Add(8*time.Hour)), inter}
		v.put(chainKey(longLeaf), longLeaf, loaded, "node-a", attested, t0)
		if _, ok := v.get(chainKey(longLeaf), loaded, inter.NotAfter.Add(time.Second)); ok {
			t.Error("served past the intermediate's notAfter")
		}
	})
	t.Run("verified_again_under_another_authority_state", func(t *testing.T) {
		rotated := &authority.Loaded{Bundle: loaded.Bundle}
		if _, ok := fresh().get(chainKey(chain), rotated, t0); ok {
			t.Error("served under an authority state it was not verified against")
		}
	})
	t.Run("keyed_by_the_whole_chain", func(t *testing.T) {
		other := []*x509.Certificate{leaf, cert("other-intermediate", inter.NotBefore, inter.NotAfter)}
		if _, ok := fresh().get(chainKey(other), loaded, t0); ok {
			t.Error("a chain with another intermediate was served the leaf's entry")
		}
		if chainKey([]*x509.Certificate{cert("ab", t0, t0), cert("c", t0, t0)}) == chainKey([]*x509.Certificate{cert("a", t0, t0), cert("bc", t0, t0)}) {
			t.Error("chains with the same concatenated bytes share a key")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		v := fresh()
		for i := range verifiedAgentsMax + 10 {
			c := []*x509.Certificate{cert(fmt.Sprint(i, "-leaf"), leaf.NotBefore, leaf.NotAfter)}
			v.put(chainKey(c), c, loaded, "node-b", attested, t0)
		}
		if n := len(v.m); n > verifiedAgentsMax {
			t.Errorf("%d entries, bound %d", n, verifiedAgentsMax)
		}
	})
}
