package issuerclient_test

import (
	"crypto/rand"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestVerifyCA handshakes the agent's TLS configuration with servers
// presenting different certificates: only the CA's own, with its ID and the
// component policy, is accepted.
func TestVerifyCA(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tca := testca.New(t, testca.WithClock(func() time.Time { return now }))
	serverID := issuerclient.ServerID(tca.TrustDomain)
	serving := func(t *testing.T, kind pki.Kind, id spiffeid.ID) tls.Certificate {
		t.Helper()
		key, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		// No options: pki alone decides what the leaf carries.
		s := &pki.Signer{Authority: tca.Authority(), Now: func() time.Time { return now }, Rand: rand.Reader}
		_, der, err := s.Sign(pki.SignRequest{Kind: kind, PublicKey: key.Public(), ID: id, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der, tca.Intermediate.Raw}, PrivateKey: key}
	}
	tests := []struct {
		name    string
		cert    tls.Certificate
		wantErr string // "": accepted
	}{
		{"the CA's certificate is accepted", serving(t, pki.KindAgent, serverID), ""},
		{"the CA's ID without the component policy is refused", serving(t, pki.KindWorkload, serverID), "lacks the mayfly component policy"},
		{"an agent's certificate is refused", serving(t, pki.KindAgent, spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a")), "want spiffe://example.org/mayfly/ca"},
		{"a workload's certificate is refused", serving(t, pki.KindWorkload, spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")), "want spiffe://example.org/mayfly/ca"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := issuerclient.Config{
				TrustDomain: tca.TrustDomain,
				Bundle:      tca.Bundle,
				Now:         func() time.Time { return now },
			}
			err := handshake(t, cfg.TLSConfig(), tc.cert)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("handshake error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// handshake runs a TLS handshake of client against a server presenting
// cert over an in-memory pipe and returns the client's error.
func handshake(t *testing.T, client *tls.Config, cert tls.Certificate) error {
	t.Helper()
	c, s := net.Pipe()
	t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
	server := tls.Server(s, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = server.HandshakeContext(t.Context())
		_ = s.Close()
	}()
	client.ServerName = "mayfly-ca"
	err := tls.Client(c, client).HandshakeContext(t.Context())
	_ = c.Close()
	<-done
	return err
}
