package issuer_test

import (
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// servingCert makes a call on a new connection trusting bundle and returns
// the CA's certificate chain it saw, or the call's error.
func (h *harness) servingCert(t *testing.T, bundle []*x509.Certificate) ([]*x509.Certificate, error) {
	t.Helper()
	client := issuerv1.NewIssuerClient(h.dialConn(nil, bundle))
	var p peer.Peer
	_, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
		Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
	}, grpc.Peer(&p))
	if err != nil {
		return nil, err
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("auth info %T", p.AuthInfo)
	}
	return info.State.PeerCertificates, nil
}

func TestServingCertificate(t *testing.T) {
	h := newHarness(t)
	next := testca.New(t, testca.WithClock(h.clock.Now))
	oldCert := h.attest("node-a")
	oldAgent := h.dial(oldCert)
	// Connect now (connections are lazy): it must outlive the change.
	if _, err := oldAgent.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{}); err != nil {
		t.Fatal(err)
	}

	first, err := h.servingCert(t, h.tca.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("it is an SVID with the CA's ID and DNS names", func(t *testing.T) {
		id, err := pki.VerifyX509SVID(first[0], first[1:], h.tca.Bundle(), h.clock.Now(), x509.ExtKeyUsageServerAuth)
		if err != nil || id != issuer.ServerID(h.tca.TrustDomain) || id.String() != "spiffe://example.org/mayfly/ca" {
			t.Fatalf("VerifyX509SVID = %v, %v", id, err)
		}
		if !slices.Equal(first[0].DNSNames, []string{"mayfly-ca.mayfly-system.svc"}) {
			t.Fatalf("DNS names %v", first[0].DNSNames)
		}
	})
	t.Run("it is reused before half its life", func(t *testing.T) {
		h.clock.Advance(10 * time.Minute)
		again, err := h.servingCert(t, h.tca.Bundle())
		if err != nil {
			t.Fatal(err)
		}
		if !again[0].Equal(first[0]) {
			t.Fatal("serving certificate re-minted early")
		}
	})
	t.Run("it is renewed after half its life", func(t *testing.T) {
		h.clock.Advance(25 * time.Minute)
		renewed, err := h.servingCert(t, h.tca.Bundle())
		if err != nil {
			t.Fatal(err)
		}
		if renewed[0].Equal(first[0]) {
			t.Fatal("serving certificate not renewed past half life")
		}
	})
	t.Run("a client pinned to a bundle not yet in force fails", func(t *testing.T) {
		_, err := h.servingCert(t, next.Bundle())
		wantCode(t, err, codes.Unavailable)
	})

	h.src.Set(fakeauthority.Loaded(next, "v2"), nil)

	t.Run("after an authority change it chains to the new bundle", func(t *testing.T) {
		chain, err := h.servingCert(t, next.Bundle())
		if err != nil {
			t.Fatalf("client pinned to the new bundle: %v", err)
		}
		if _, err := pki.VerifyX509SVID(chain[0], chain[1:], next.Bundle(), h.clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a client pinned to the old bundle only fails", func(t *testing.T) {
		_, err := h.servingCert(t, h.tca.Bundle())
		wantCode(t, err, codes.Unavailable)
	})
	t.Run("an agent SVID of the retired root is unauthenticated on its open connection", func(t *testing.T) {
		_, err := oldAgent.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
		wantCode(t, err, codes.Unauthenticated)
	})
	// internal/agent re-attests on Unauthenticated only; a handshake
	// failure (Unavailable) would leave it retrying the renewal.
	t.Run("an agent SVID of the retired root is unauthenticated on a new connection", func(t *testing.T) {
		client := issuerv1.NewIssuerClient(h.dialConn(oldCert, next.Bundle()))
		_, err := client.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
		wantCode(t, err, codes.Unauthenticated)
	})
}
