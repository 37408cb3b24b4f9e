package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestManagerRefusesForgedWorkloadSVID: a certificate the CA returns for
// another ID, another key or from another CA is refused, logged and
// counted, never served.
func TestManagerRefusesForgedWorkloadSVID(t *testing.T) {
	for _, tc := range []struct{ forge, want string }{
		{"other-id", "names spiffe://example.org/ns/kube-system/sa/admin, not the requested " + idWeb},
		{"other-key", "certifies another key"},
		{"other-ca", "does not verify against the trust bundle"},
	} {
		t.Run(tc.forge, func(t *testing.T) {
			var rejected atomic.Int32
			logs := &logbuf.Buffer{}
			h := newManager(t, true, func(c *ManagerConfig) {
				c.OnRejected = func(error) { rejected.Add(1) }
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			h.ca.grant(idWeb)
			h.ca.forgeFor(idWeb, tc.forge)
			_, err := h.m.Obtain(t.Context(), Spec{Key: idWeb, SpiffeID: idWeb})
			if !errors.Is(err, ErrNotIssued) {
				t.Fatalf("Obtain = %v, want ErrNotIssued", err)
			}
			if rejected.Load() != 1 {
				t.Fatalf("OnRejected called %d times, want 1", rejected.Load())
			}
			if !strings.Contains(logs.String(), "refusing a certificate from the CA") || !strings.Contains(logs.String(), tc.want) {
				t.Fatalf("log does not say why the certificate was refused (%q):\n%s", tc.want, logs.String())
			}
			for _, st := range h.m.Status() {
				if st.State.Current != nil {
					t.Fatalf("identity %s holds a certificate", st.Key)
				}
			}
		})
	}
	t.Run("kubernetes identity must carry its ServiceAccount ID", func(t *testing.T) {
		var rejected atomic.Int32
		h := newManager(t, true, func(c *ManagerConfig) { c.OnRejected = func(error) { rejected.Add(1) } })
		h.ca.pod("uid-1", idDB) // the CA answers for another ServiceAccount
		_, err := h.m.Obtain(t.Context(), Spec{Key: "default/web", PodUIDs: func() []string { return []string{"uid-1"} }})
		if !errors.Is(err, ErrNotIssued) || rejected.Load() != 1 {
			t.Fatalf("Obtain = %v, rejected %d; want ErrNotIssued and 1", err, rejected.Load())
		}
	})
}

// keySwapper is an issuer that certifies another key than the CSR's.
type keySwapper struct {
	*issuer.Server
}

func (k keySwapper) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (*issuerv1.AttestAgentResponse, error) {
	key, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, rand.Reader)
	if err != nil {
		return nil, err
	}
	req.Csr = csr
	return k.Server.AttestAgent(ctx, req)
}

// TestCAClientRefusesForgedAgentSVID: an agent SVID for another node or
// for another key is refused and counted; the agent stays not ready.
func TestCAClientRefusesForgedAgentSVID(t *testing.T) {
	t.Run("another node", func(t *testing.T) {
		h := newCAHarness(t)
		a := h.newAgent(agentSetup{token: h.tokens.create("node-b"), nodeName: "node-a"})
		a.start()
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := h.clk.BlockUntilContext(ctx, 1); err != nil {
			t.Fatal(err)
		}
		checkRefused(t, a, "names "+agentID(t, "node-b")+", not the requested "+agentID(t, "node-a"))
	})
	t.Run("another key", func(t *testing.T) {
		h := newCAHarness(t)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		issuertest.ServeOn(t, lis, keySwapper{h.srv}, h.srv.TLSConfig())
		a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), nodeName: "node-a", address: lis.Addr().String()})
		a.start()
		ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
		defer cancel()
		if err := h.clk.BlockUntilContext(ctx, 1); err != nil {
			t.Fatal(err)
		}
		checkRefused(t, a, "certifies another key")
	})
}

func checkRefused(t *testing.T, a *testAgent, want string) {
	t.Helper()
	st := a.Rotator().State()
	if st.Failures != 1 || !strings.Contains(st.LastError, want) {
		t.Fatalf("rotator: %d failures, last error %q; want 1 saying %q", st.Failures, st.LastError, want)
	}
	if a.rejected.Load() != 1 {
		t.Fatalf("OnRejected called %d times, want 1", a.rejected.Load())
	}
	if a.Store.AgentSVID() != nil {
		t.Fatal("the agent keeps a refused SVID")
	}
	select {
	case <-a.Ready():
		t.Fatal("Ready closed on a refused SVID")
	default:
	}
	if !strings.Contains(a.logs.String(), "refusing an agent SVID from the CA") {
		t.Fatalf("no log line for the refused SVID:\n%s", a.logs.String())
	}
}

// TestCAClientKeepsJoinTokenUntilCAStarts: an agent started before its CA
// keeps its join token while the CA is unreachable, logs each failure with
// its reason and next retry, and attests once the CA is up.
func TestCAClientKeepsJoinTokenUntilCAStarts(t *testing.T) {
	h := newCAHarness(t) // its own server is not the one the agent dials
	addr := loopback.FreeAddr(t)
	tok := h.tokens.create("node-a")
	a := h.newAgent(agentSetup{joinToken: NewJoinToken(tok, "node-a"), nodeName: "node-a", address: addr})
	a.start()

	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	for attempt := 1; attempt <= 3; attempt++ {
		if err := h.clk.BlockUntilContext(ctx, 1); err != nil {
			t.Fatalf("waiting for attempt %d to back off: %v", attempt, err)
		}
		st := a.Rotator().State()
		if st.Failures != uint64(attempt) || !strings.Contains(st.LastError, "attesting to the CA") {
			t.Fatalf("after attempt %d: %d failures, last error %q", attempt, st.Failures, st.LastError)
		}
		if attempt < 3 {
			h.clk.Advance(st.NextAt.Sub(h.clk.Now()))
		}
	}
	log := a.logs.String()
	if n := strings.Count(log, "obtaining the agent SVID failed; retrying"); n != 3 {
		t.Fatalf("%d failure log lines, want 3:\n%s", n, log)
	}
	for _, want := range []string{"next_retry=", "retry_in=", "Unavailable", "attempt=3"} {
		if !strings.Contains(log, want) {
			t.Errorf("failure log lacks %q:\n%s", want, log)
		}
	}

	// The CA comes up on the address the agent dials.
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again to start the CA there: %v", addr, err)
	}
	issuertest.ServeOn(t, lis, h.srv, h.srv.TLSConfig())
	h.clk.Advance(a.Rotator().State().NextAt.Sub(h.clk.Now()))
	if got, want := idOf(a.waitReady()), agentID(t, "node-a"); got != want {
		t.Fatalf("agent SVID %s, want %s", got, want)
	}
	if got := h.tokens.attestations(); got != 1 {
		t.Fatalf("attestations %d, want 1", got)
	}
}

// TestCAClientForgetsRefusedJoinToken: a definitive refusal of the token
// (PermissionDenied) makes the agent stop sending it, and say how to get
// a new one.
func TestCAClientForgetsRefusedJoinToken(t *testing.T) {
	h := newCAHarness(t)
	a := h.newAgent(agentSetup{joinToken: NewJoinToken("join-unknown", "node-a"), nodeName: "node-a"})
	a.start()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := h.clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if st := a.Rotator().State(); !strings.Contains(st.LastError, "PermissionDenied") {
		t.Fatalf("first attempt: %q, want the CA's refusal", st.LastError)
	}
	h.clk.Advance(a.Rotator().State().NextAt.Sub(h.clk.Now()))
	eventually(t, "the second attempt", func() bool { return a.Rotator().State().Failures == 2 })
	st := a.Rotator().State()
	for _, want := range []string{"the CA refused the join token", "join token unknown or already used", "ca token create --node node-a"} {
		if !strings.Contains(st.LastError, want) {
			t.Errorf("second attempt: %q lacks %q", st.LastError, want)
		}
	}
	if got := mustSample(t, h.reg, "mayfly_ca_certificates_issued_total", "kind=agent", "result=denied"); got != 1 {
		t.Fatalf("the CA saw %v refused attestations, want 1: the refused token was sent again", got)
	}
}

func TestJoinTokenSettle(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		keep bool
	}{
		{"success forgets", nil, false},
		{"permission denied forgets", status.Error(codes.PermissionDenied, "used"), false},
		{"invalid argument forgets", status.Error(codes.InvalidArgument, "bad"), false},
		{"unauthenticated forgets", status.Error(codes.Unauthenticated, "expired"), false},
		{"unavailable keeps", status.Error(codes.Unavailable, "connection refused"), true},
		{"deadline exceeded keeps", status.Error(codes.DeadlineExceeded, "slow"), true},
		{"resource exhausted keeps", status.Error(codes.ResourceExhausted, "throttled"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := NewJoinToken("mfjt_x", "node-a")
			j.Settle(tc.err)
			req, err := j.Credential(t.Context())
			if tc.keep != (err == nil && req.GetJoinToken() == "mfjt_x") {
				t.Fatalf("after %v: Credential = %v, %v; keep=%v", tc.err, req, err, tc.keep)
			}
			if !tc.keep && !strings.Contains(err.Error(), "ca token create --node node-a") {
				t.Fatalf("error %q does not say how to get a new token", err)
			}
		})
	}
	if _, err := NewJoinToken("", "n").Credential(t.Context()); err == nil || !strings.Contains(err.Error(), "no join token was given") {
		t.Fatalf("no token: %v", err)
	}
}
