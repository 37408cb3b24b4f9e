package issuer_test

import (
	"context"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// fakeNodes allows the nodes in its set (a standalone CA's nodes).
type fakeNodes struct {
	mu    sync.Mutex
	nodes map[string]bool
}

func (f *fakeNodes) set(nodes ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = map[string]bool{}
	for _, n := range nodes {
		f.nodes[n] = true
	}
}

func (f *fakeNodes) CheckNode(node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.nodes[node] {
		return issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "node %s is not in the CA's nodes", node)
	}
	return nil
}

// fakeEvictions is an EvictionSource the test edits.
type fakeEvictions struct {
	mu   sync.Mutex
	err  error
	list eviction.List
	n    notify.Notifier
}

func (f *fakeEvictions) List() (eviction.List, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.list, f.err
}

func (f *fakeEvictions) Subscribe() (<-chan struct{}, func()) { return f.n.Subscribe() }

func (f *fakeEvictions) update(t *testing.T, fn func(eviction.List) (eviction.List, error)) {
	t.Helper()
	f.mu.Lock()
	l, err := fn(f.list)
	if err == nil {
		f.list = l
	}
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	f.n.Notify()
}

// fakeRenewal records the renewals it was asked about and refuses those
// without a token.
type fakeRenewal struct {
	mu     sync.Mutex
	nodes  []string
	tokens []string
}

func (f *fakeRenewal) CheckRenewal(_ context.Context, node string, req *issuerv1.RenewAgentRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = append(f.nodes, node)
	f.tokens = append(f.tokens, req.GetServiceAccountToken())
	if req.GetServiceAccountToken() == "" {
		return issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "service_account_token is empty; upgrade the agent")
	}
	return nil
}

func (h *harness) hasAudit(t *testing.T, op, decision, reasonPart string) bool {
	t.Helper()
	for _, l := range h.auditLines() {
		if l["op"] == op && l["decision"] == decision && strings.Contains(l["reason"].(string), reasonPart) {
			return true
		}
	}
	return false
}

func renew(t *testing.T, c issuerv1.IssuerClient) error {
	t.Helper()
	_, err := c.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
	return err
}

func TestNodeRemovedFromConfigIsRefused(t *testing.T) {
	nodes := &fakeNodes{}
	nodes.set("node-a", "node-b")
	h := newHarness(t, func(c *issuer.Config) { c.Nodes = nodes })
	agent := h.webAgent()
	if err := renew(t, agent); err != nil {
		t.Fatalf("RenewAgent of a listed node: %v", err)
	}

	nodes.set("node-b")
	t.Run("renewal", func(t *testing.T) {
		wantCode(t, renew(t, agent), codes.PermissionDenied)
		if !h.hasAudit(t, "renew", "deny", "not in the CA's nodes") {
			t.Fatalf("no audit line for the refused renewal: %v", h.auditLines())
		}
	})
	t.Run("workloads", func(t *testing.T) {
		_, err := agent.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{workloadItem(t, "r1", webID, 0)}})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("bundle_stream", func(t *testing.T) {
		wantCode(t, firstBundle(ctx(t), agent), codes.PermissionDenied)
		if !h.hasAudit(t, "watch", "deny", "not in the CA's nodes") {
			t.Fatalf("no audit line for the refused stream: %v", h.auditLines())
		}
	})
	t.Run("attestation", func(t *testing.T) {
		_, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
			Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
		})
		wantCode(t, err, codes.PermissionDenied)
	})
}

func TestEvictedNodeIsRefused(t *testing.T) {
	ev := &fakeEvictions{}
	h := newHarness(t, func(c *issuer.Config) { c.Evictions = ev })
	h.authz.grant("node-a", webID)
	old := h.dial(h.attest("node-a"))
	other := h.agent("node-b")
	streamCtx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	stream := watching(t, streamCtx, old)

	h.clock.Advance(time.Minute)
	ev.update(t, func(l eviction.List) (eviction.List, error) { return l.Evict("node-a", h.clock.Now(), time.Time{}) })

	t.Run("open_stream_is_closed", func(t *testing.T) {
		_, err := stream.Recv()
		wantCode(t, err, codes.Unauthenticated)
		if !strings.Contains(status.Convert(err).Message(), "evicted") {
			t.Fatalf("stream error %v does not say evicted", err)
		}
		eventually(t, "audit line of the closed stream", func() bool { return h.hasAudit(t, "watch", "deny", "evicted") })
	})
	t.Run("renewal_and_workloads", func(t *testing.T) {
		wantCode(t, renew(t, old), codes.Unauthenticated)
		if !h.hasAudit(t, "renew", "deny", "before the node was evicted") {
			t.Fatalf("no audit line for the refused renewal: %v", h.auditLines())
		}
		_, err := old.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{workloadItem(t, "r1", webID, 0)}})
		wantCode(t, err, codes.Unauthenticated)
	})
	t.Run("attestation_while_evicted", func(t *testing.T) {
		_, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
			Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
		})
		wantCode(t, err, codes.PermissionDenied)
		if !strings.Contains(err.Error(), "ca agent unevict node-a") {
			t.Fatalf("refusal %v does not say how to lift the eviction", err)
		}
	})
	t.Run("other_nodes_unaffected", func(t *testing.T) {
		if err := renew(t, other); err != nil {
			t.Fatalf("RenewAgent of another node: %v", err)
		}
	})
	t.Run("after_unevict_a_new_attestation_works_the_old_svid_does_not", func(t *testing.T) {
		h.clock.Advance(time.Second)
		ev.update(t, func(l eviction.List) (eviction.List, error) { return l.Unevict("node-a", h.clock.Now()) })
		h.clock.Advance(time.Second)
		fresh := h.agent("node-a")
		if err := renew(t, fresh); err != nil {
			t.Fatalf("RenewAgent after re-attestation: %v", err)
		}
		wantCode(t, renew(t, old), codes.Unauthenticated)
	})
}

func TestEvictionUntilLiftsTheAttestationBlock(t *testing.T) {
	ev := &fakeEvictions{}
	h := newHarness(t, func(c *issuer.Config) { c.Evictions = ev })
	ev.update(t, func(l eviction.List) (eviction.List, error) {
		return l.Evict("node-a", h.clock.Now(), h.clock.Now().Add(time.Hour))
	})
	attest := func() error {
		_, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
			Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
		})
		return err
	}
	wantCode(t, attest(), codes.PermissionDenied)
	h.clock.Advance(time.Hour)
	if err := attest(); err != nil {
		t.Fatalf("AttestAgent after --until: %v", err)
	}
}

func TestRenewalPastMaxAgeMustReattest(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) { c.AgentMaxAge = 2 * time.Hour })
	cert := h.attest("node-a")
	attested := h.clock.Now().Truncate(time.Second)
	// Renew at 50% of each SVID's life: the attestation time is carried on.
	for range 2 {
		h.clock.Advance(50 * time.Minute)
		key := testca.Key(t)
		resp, err := h.dial(cert).RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, key)})
		if err != nil {
			t.Fatalf("RenewAgent within maxAge: %v", err)
		}
		cert = tlsCert(t, resp.GetCertificateChain(), key)
		at, ok, err := pki.AttestedAt(cert.Leaf)
		if err != nil || !ok || !at.Equal(attested) {
			t.Fatalf("renewed SVID attested at %v (%v, %v), want the original %v", at, ok, err, attested)
		}
	}
	h.clock.Advance(30 * time.Minute) // 2h10m after attestation, the SVID still valid
	err := renew(t, h.dial(cert))
	wantCode(t, err, codes.Unauthenticated)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "re-attest") || !strings.Contains(msg, "agents.maxAge") {
		t.Fatalf("refusal %q does not say to re-attest past agents.maxAge", msg)
	}
	if !h.hasAudit(t, "renew", "deny", "re-attest") {
		t.Fatal("no audit line for the refused renewal")
	}
	if _, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
		Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-a"},
	}); err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
}

func TestNegativeMaxAgeIsRefused(t *testing.T) {
	tca := newHarness(t).tca
	_, err := issuer.New(issuer.Config{TrustDomain: tca.TrustDomain, Authority: newFakeAuthority(nil), Attestor: fakeAttestor{}, Authorizer: newFakeAuthorizer(), Rand: strings.NewReader(""), AgentMaxAge: -time.Hour})
	if err == nil || !strings.Contains(err.Error(), "agentMaxAge") {
		t.Fatalf("err = %v, want one naming agentMaxAge", err)
	}
}

func TestRenewalCheckerSeesNodeAndToken(t *testing.T) {
	rc := &fakeRenewal{}
	h := newHarness(t, func(c *issuer.Config) { c.Renewal = rc })
	agent := h.agent("node-a")
	err := renew(t, agent)
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("refusal %v does not say to upgrade", err)
	}
	if _, err := agent.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t)), ServiceAccountToken: "tok"}); err != nil {
		t.Fatalf("RenewAgent with a token: %v", err)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.nodes) != 2 || rc.nodes[1] != "node-a" || rc.tokens[1] != "tok" {
		t.Fatalf("checker saw nodes %v tokens %v", rc.nodes, rc.tokens)
	}
}

func TestAgentThatNeverAcksIsReported(t *testing.T) {
	h := newHarness(t)
	var streams []issuerv1.Issuer_WatchBundleClient
	for _, node := range []string{"node-a", "node-b"} {
		streams = append(streams, watching(t, ctx(t), h.agent(node)))
	}
	if err := streams[0].Send(&issuerv1.BundleAck{Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	h.waitGauges(t, 2, 1)
	if got := h.srv.NotAckedAgents(); len(got) != 0 {
		t.Fatalf("NotAckedAgents within the grace = %v, want none", got)
	}
	h.clock.Advance(time.Minute)
	if got := h.srv.NotAckedAgents(); len(got) != 1 || got[0] != "node-b" {
		t.Fatalf("NotAckedAgents = %v, want [node-b]", got)
	}
	if v := h.gauge("mayfly_ca_agents_not_acked"); v != 1 {
		t.Fatalf("mayfly_ca_agents_not_acked = %v, want 1", v)
	}
	if h.srv.AllAgentsCurrent() {
		t.Fatal("AllAgentsCurrent with an agent that never acked (the authority's Plan bounds this wait by rotation.rootAckWait)")
	}
}

func TestEvictionsNotLoadedRefuseAgents(t *testing.T) {
	ev := &fakeEvictions{}
	h := newHarness(t, func(c *issuer.Config) { c.Evictions = ev })
	agent := h.agent("node-a")
	ev.mu.Lock()
	ev.err = eviction.ErrNotLoaded
	ev.mu.Unlock()
	wantCode(t, renew(t, agent), codes.Unavailable)
	_, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
		Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-b"},
	})
	wantCode(t, err, codes.Unavailable)
}
