package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

// renewalTokens is a RenewalChecker that records the tokens it saw.
type renewalTokens struct {
	mu   sync.Mutex
	seen []string
}

func (r *renewalTokens) CheckRenewal(_ context.Context, _ string, req *issuerv1.RenewAgentRequest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, req.GetServiceAccountToken())
	if req.GetServiceAccountToken() == "" {
		return issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "service_account_token is empty")
	}
	return nil
}

func TestCAClientSendsAFreshTokenWithEachRenewal(t *testing.T) {
	rc := &renewalTokens{}
	h := newCAHarness(t, func(c *issuer.Config) { c.Renewal = rc })
	var n int
	var mu sync.Mutex
	a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), renewalToken: func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		return "projected-token-" + string(rune('0'+n)), nil
	}})
	a.start()
	a.waitReady()
	a.renew()
	a.renew()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.seen) != 2 || rc.seen[0] != "projected-token-1" || rc.seen[1] != "projected-token-2" {
		t.Fatalf("the CA saw renewal tokens %q, want a fresh one per renewal", rc.seen)
	}
}

func TestCAClientRenewalTokenErrorFailsTheRenewal(t *testing.T) {
	h := newCAHarness(t)
	a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), renewalToken: func(context.Context) (string, error) {
		return "", errors.New("kubernetes.tokenFile: no such file")
	}})
	a.start()
	a.waitReady()
	before := a.Rotator().State().Failures
	a.Rotator().Trigger()
	eventually(t, "the failed rotation to be recorded", func() bool { return a.Rotator().State().Failures > before })
	if st := a.Rotator().State(); !strings.Contains(st.LastError, "tokenFile") {
		t.Fatalf("last error %q does not name the token file", st.LastError)
	}
}

func TestCAClientReattestsWhenTheCARefusesRenewal(t *testing.T) {
	h := newCAHarness(t, func(c *issuer.Config) { c.AgentMaxAge = 90 * time.Minute })
	tok := h.tokens.create("node-a")
	a := h.newAgent(agentSetup{token: tok})
	a.start()
	first := a.waitReady()

	t.Run("without_a_credential_the_agent_says_why_it_needs_one", func(t *testing.T) {
		h.clk.Advance(50 * time.Minute)
		a.renew() // within maxAge
		h.clk.Advance(45 * time.Minute)
		before := a.Rotator().State().Failures
		a.Rotator().Trigger()
		eventually(t, "the failed rotation to be recorded", func() bool { return a.Rotator().State().Failures > before })
		st := a.Rotator().State()
		if !strings.Contains(st.LastError, "refused to renew") || !strings.Contains(st.LastError, "re-attest") {
			t.Fatalf("last error %q does not say that the CA refused renewal and wants a new attestation", st.LastError)
		}
		if !strings.Contains(a.logs.String(), "attesting anew") {
			t.Fatalf("no warning about attesting anew in %q", a.logs.String())
		}
	})
	t.Run("with_a_credential_it_attests_anew", func(t *testing.T) {
		h.tokens.mu.Lock()
		h.tokens.tokens[tok] = "node-a" // the operator issues a new token
		h.tokens.mu.Unlock()
		cert := a.renew()
		if cert.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Fatal("no new SVID")
		}
		if got := h.tokens.attestations(); got != 2 {
			t.Fatalf("attestations %d, want 2", got)
		}
	})
}
