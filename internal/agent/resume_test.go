package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
)

// handshakes records the TLS state of the connection of every unary call
// the CA answers.
type handshakes struct {
	mu    sync.Mutex
	calls []tls.ConnectionState
}

func (h *handshakes) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			h.mu.Lock()
			h.calls = append(h.calls, info.State)
			h.mu.Unlock()
		}
	}
	return handler(ctx, req)
}

func (h *handshakes) last() tls.ConnectionState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[len(h.calls)-1]
}

// TestAgentResumesItsTLSSessionAfterMaxConnectionAge: the CA closes
// connections after a maximum age (as it does after 30 minutes); the
// agent's connection reconnects and resumes its TLS session, still
// presenting its agent SVID, and a renewed SVID gets a new connection that
// does not resume the old session (it would present the old SVID).
func TestAgentResumesItsTLSSessionAfterMaxConnectionAge(t *testing.T) {
	h := newCAHarness(t)
	var hs handshakes
	// A second CA on the same authority, whose connections age out at once
	// (real time: gRPC's connection age has no injectable clock).
	_, addr := issuertest.Serve(t, issuer.Config{
		TrustDomain: h.tca.TrustDomain, Authority: h.auth, Attestor: h.tokens, Authorizer: anyWorkload{},
		Now: h.clk.Now, Rand: rand.Reader,
	}, grpc.ChainUnaryInterceptor(hs.intercept),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 200 * time.Millisecond, MaxConnectionAgeGrace: time.Second}))
	a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), address: addr})
	a.start()
	svid := a.waitReady()
	const id = "spiffe://example.org/ns/apps/sa/web"

	presents := func(st tls.ConnectionState, want *x509.Certificate) {
		t.Helper()
		if len(st.PeerCertificates) == 0 || !st.PeerCertificates[0].Equal(want) {
			t.Fatalf("the connection presents %v, want the agent SVID %s", st.PeerCertificates, want.SerialNumber)
		}
	}
	a.signWorkload(id)
	if st := hs.last(); st.DidResume {
		t.Fatal("the agent's first connection resumed a session it cannot have")
	} else {
		presents(st, svid)
	}
	eventually(t, "a call on a resumed session after the connection aged out", func() bool {
		a.signWorkload(id)
		return hs.last().DidResume
	})
	presents(hs.last(), svid)

	renewed := a.renew()
	a.signWorkload(id)
	st := hs.last()
	if st.DidResume {
		t.Fatal("the connection of the renewed SVID resumed the session of the old one")
	}
	presents(st, renewed)
}
