package issuer_test

import (
	"bytes"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

// TestLiveLeaves: every leaf the replica signs counts for its intermediate
// and its root until it expires, in LiveLeaves and in
// mayfly_ca_authority_live_leaves.
func TestLiveLeaves(t *testing.T) {
	h := newHarness(t)
	agent := h.webAgent()
	resp, err := agent.SignWorkloads(ctx(t), batch(t, 3, "spiffe://example.org/ns/default/sa/web"))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.GetResults() {
		if r.GetIssued() == nil {
			t.Fatalf("not issued: %v", r.GetDenial())
		}
	}
	inter := "intermediate/" + h.tca.Intermediate.SerialNumber.Text(16)
	root := "root/" + h.tca.Root.SerialNumber.Text(16)
	for _, a := range []string{inter, root} {
		// One agent SVID (1h by default) and three workload SVIDs.
		if v, ok := promtest.Value(t, h.reg, "mayfly_ca_authority_live_leaves", "authority="+a); !ok || v != 4 {
			t.Fatalf("live leaves of %s = %v (gathered: %v), want 4", a, v, ok)
		}
	}
	if got := h.srv.LiveLeaves(); len(got) != 2 || got[0].Live != 4 || got[1].Live != 4 {
		t.Fatalf("LiveLeaves() = %+v, want the intermediate and the root with 4 each", got)
	}
	h.clock.Advance(2 * time.Hour) // past every leaf's notAfter: none remain
	if v, ok := promtest.Value(t, h.reg, "mayfly_ca_authority_live_leaves", "authority="+inter); !ok || v != 0 {
		t.Fatalf("live leaves of %s after expiry = %v (gathered: %v), want 0", inter, v, ok)
	}
	h.clock.Advance(25 * time.Hour) // a day later the key is forgotten
	if got := h.srv.LiveLeaves(); len(got) != 0 {
		t.Fatalf("LiveLeaves() a day after expiry = %+v, want none", got)
	}
}

// TestBundleAnnouncesTaints: the bundle carries the tainted key IDs and the
// re-issue window, and none without a taint.
func TestBundleAnnouncesTaints(t *testing.T) {
	h := newHarness(t)
	attest := func() *issuerv1.Bundle {
		resp, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
			Csr:        testca.CSR(t, testca.Key(t)),
			Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetBundle()
	}
	if b := attest(); len(b.GetTaintedKeyIds()) != 0 || b.GetReissueWindowSeconds() != 0 {
		t.Fatalf("bundle without a taint announces %v, window %d", b.GetTaintedKeyIds(), b.GetReissueWindowSeconds())
	}
	l := fakeauthority.Loaded(h.tca, "v2")
	l.Taints = []authority.Taint{{Role: authority.RoleRoot, SubjectKeyID: []byte{1, 2, 3}}}
	l.TaintReissueWindow = 10 * time.Minute
	h.src.Set(l, nil)
	b := attest()
	if len(b.GetTaintedKeyIds()) != 1 || !bytes.Equal(b.GetTaintedKeyIds()[0], []byte{1, 2, 3}) || b.GetReissueWindowSeconds() != 600 {
		t.Fatalf("bundle announces %v, window %d; want [010203], 600", b.GetTaintedKeyIds(), b.GetReissueWindowSeconds())
	}
}
