package issuer_test

import (
	"context"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

// TestAttestAgentThrottled: unauthenticated AttestAgent calls are bounded
// per peer IP and for the whole server; a call above either is
// ResourceExhausted before its credential is checked, and counted.
func TestAttestAgentThrottled(t *testing.T) {
	var attests atomic.Int32
	h := newHarness(t, func(c *issuer.Config) {
		c.AttestPeerRate, c.AttestPeerBurst = rate.Limit(1), 3
		c.AttestRate, c.AttestBurst = rate.Limit(10), 100
		c.Attestor = countingAttestor{n: &attests}
	})
	client := h.dial(nil)
	call := func() error {
		_, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
			Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "bogus"},
		})
		return err
	}
	for i := range 3 {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("call %d within the burst: %v, want PermissionDenied from the attestor", i, err)
		}
	}
	err := call()
	wantCode(t, err, codes.ResourceExhausted)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "127.0.0.1") || !strings.Contains(msg, "burst 3") {
		t.Fatalf("message %q does not name the peer and its limit", msg)
	}
	if attests.Load() != 3 {
		t.Fatalf("the attestor saw %d calls, want 3: a throttled call must not reach it", attests.Load())
	}
	if v, _ := promtest.Value(t, h.reg, "mayfly_ca_attest_throttled_total", "scope=peer"); v != 1 {
		t.Fatalf("mayfly_ca_attest_throttled_total{scope=peer} = %v, want 1", v)
	}
	h.clock.Advance(time.Second)
	if err := call(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after a second the bucket holds one call again: %v", err)
	}

	t.Run("global limit", func(t *testing.T) {
		h := newHarness(t, func(c *issuer.Config) {
			c.AttestPeerRate, c.AttestPeerBurst = rate.Limit(100), 100
			c.AttestRate, c.AttestBurst = rate.Limit(1), 2
		})
		client := h.dial(nil)
		for range 2 {
			_, _ = client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
		}
		_, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
		wantCode(t, err, codes.ResourceExhausted)
		if v, _ := promtest.Value(t, h.reg, "mayfly_ca_attest_throttled_total", "scope=global"); v != 1 {
			t.Fatalf("mayfly_ca_attest_throttled_total{scope=global} = %v, want 1", v)
		}
	})
	t.Run("bad limits are refused", func(t *testing.T) {
		_, err := issuer.New(issuer.Config{
			TrustDomain: h.tca.TrustDomain, Authority: h.src, Attestor: fakeAttestor{}, Authorizer: h.authz,
			Rand: strings.NewReader(""), AttestRate: -1, AttestBurst: 1,
		})
		if err == nil || !strings.Contains(err.Error(), "attest rate") {
			t.Fatalf("New with a negative attest rate: %v", err)
		}
	})
}

// countingAttestor is fakeAttestor counting the calls that reach it.
type countingAttestor struct{ n *atomic.Int32 }

func (a countingAttestor) AttestAgent(ctx context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	a.n.Add(1)
	return fakeAttestor{}.AttestAgent(ctx, req)
}

// TestBadCSRDoesNotConsumeJoinToken: the CSR is checked before the join
// token, so a bad CSR is refused naming the CSR and the token still works.
func TestBadCSRDoesNotConsumeJoinToken(t *testing.T) {
	tokens := hostnodes.NewJoinTokens(t.TempDir(), nil)
	h := newHarness(t, func(c *issuer.Config) { c.Attestor = hostnodes.Attestor{Tokens: tokens} })
	tok, err := tokens.Create("host-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client := h.dial(nil)
	for name, csr := range map[string][]byte{
		"garbage":             []byte("not a csr"),
		"signed by other key": csrSignedByOtherKey(t),
		"empty":               nil,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{Csr: csr, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}})
			wantCode(t, err, codes.InvalidArgument)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "csr") {
				t.Fatalf("message %q does not name the CSR", msg)
			}
		})
	}
	if _, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}}); err != nil {
		t.Fatalf("the token no longer works after bad CSRs: %v", err)
	}
}

// TestHugeSpiffeIDIsRefusedEarlyAndClipped: a 4 MiB SPIFFE ID is
// InvalidArgument, and neither the audit line nor the message carries it.
func TestHugeSpiffeIDIsRefusedEarlyAndClipped(t *testing.T) {
	h := newHarness(t)
	agent := h.agent("node-a")
	huge := "spiffe://example.org/" + strings.Repeat("a", 4<<20)
	item := workloadItem(t, "r1", huge, 0)
	resp, err := agent.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{item}})
	if err != nil {
		t.Fatal(err)
	}
	d := resp.GetResults()[0].GetDenial()
	if d.GetCode() != issuerv1.Denial_INVALID_ARGUMENT || !strings.Contains(d.GetMessage(), "spiffe_id") || len(d.GetMessage()) > 1100 {
		t.Fatalf("denial %v %.200q (%d bytes), want INVALID_ARGUMENT naming spiffe_id, short", d.GetCode(), d.GetMessage(), len(d.GetMessage()))
	}
	for line := range strings.SplitSeq(h.logs.String(), "\n") {
		if len(line) > 4096 {
			t.Fatalf("a log line has %d bytes: %.300s", len(line), line)
		}
	}
	lines := h.auditLines()
	last := lines[len(lines)-1]
	subj, _ := last["subject"].(string)
	if !strings.Contains(subj, "...(") || !strings.Contains(subj, "bytes)") {
		t.Fatalf("subject %q is not clipped with its length", subj)
	}
}
