package testca_test

import (
	"crypto"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestNew_issuesWorkloadThatVerifiesAgainstBundle(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := testca.New(t, testca.WithClock(func() time.Time { return now }))
	if ca.TrustDomain.Name() != testca.DefaultTrustDomain {
		t.Fatalf("trust domain %q", ca.TrustDomain)
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
	chain, key := ca.IssueWorkload(t, id, time.Hour)
	if len(chain) != 2 || chain[1] != ca.Intermediate || key == nil {
		t.Fatalf("chain of %d, key %v", len(chain), key)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey) {
		t.Fatal("key does not match the leaf")
	}
	roots, err := pki.DecodeCertificates(ca.BundlePEM(), pki.PEMLimits{})
	if err != nil || len(roots) != 1 || !roots[0].Equal(ca.Root) {
		t.Fatalf("BundlePEM: %v", err)
	}
	got, err := pki.VerifyX509SVID(chain[0], chain[1:], roots, now, x509.ExtKeyUsageServerAuth)
	if err != nil || got != id {
		t.Fatalf("VerifyX509SVID = %v, %v", got, err)
	}
	if !chain[0].NotAfter.Equal(now.Add(time.Hour)) {
		t.Fatalf("notAfter %s", chain[0].NotAfter)
	}
}

func TestNew_issuesAgentSVIDForAgentID(t *testing.T) {
	ca := testca.New(t, testca.WithTrustDomain("cluster.local"))
	id := spiffeid.RequireFromString("spiffe://cluster.local/mayfly/agent/node-1")
	chain, _ := ca.IssueWorkload(t, id, time.Hour)
	if chain[0].URIs[0].String() != id.String() {
		t.Fatalf("URI %v", chain[0].URIs)
	}
}

func TestNew_intermediateIsConstrainedToTrustDomain(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ca := testca.New(t, testca.WithClock(func() time.Time { return now }),
		testca.WithIntermediateTTL(2*time.Hour), testca.WithRootTTL(24*time.Hour))
	in := ca.Intermediate
	if !in.MaxPathLenZero || len(in.PermittedURIDomains) != 1 || in.PermittedURIDomains[0] != "example.org" {
		t.Fatalf("pathLenZero=%v constraints=%v", in.MaxPathLenZero, in.PermittedURIDomains)
	}
	if got := in.NotAfter.Sub(in.NotBefore); got != 2*time.Hour+time.Minute {
		t.Fatalf("intermediate lifetime %s", got)
	}
	if err := ca.Authority().Validate(); err != nil {
		t.Fatal(err)
	}
}
