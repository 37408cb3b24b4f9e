package hostnodes_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestJoinTokens(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := t.TempDir()
	j := hostnodes.NewJoinTokens(dir, clock)

	tok, err := j.Create("host-a", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "mfjt_") || len(tok) < 40 {
		t.Fatalf("token %q does not look like a join token", tok)
	}
	raw, err := os.ReadFile(filepath.Join(dir, hostnodes.JoinTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), tok) || strings.Contains(string(raw), tok[5:]) {
		t.Fatal("the token file holds the token itself, not its hash")
	}
	if st, _ := os.Stat(filepath.Join(dir, hostnodes.JoinTokenFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", st.Mode().Perm())
	}

	t.Run("consumed_once", func(t *testing.T) {
		node, err := j.Consume(tok)
		if err != nil || node != "host-a" {
			t.Fatalf("Consume = %q, %v", node, err)
		}
		if _, err := j.Consume(tok); !errors.Is(err, hostnodes.ErrBadToken) || !strings.Contains(err.Error(), "single-use") {
			t.Fatalf("second Consume: %v", err)
		}
	})
	t.Run("expired_token_refused", func(t *testing.T) {
		old, err := j.Create("host-b", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		now = now.Add(2 * time.Minute)
		if _, err := j.Consume(old); !errors.Is(err, hostnodes.ErrBadToken) || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("Consume of an expired token: %v", err)
		}
	})
	t.Run("bad_input", func(t *testing.T) {
		for _, tc := range []struct {
			name, node string
			ttl        time.Duration
			want       string
		}{
			{"empty_node", "", time.Minute, "--node"},
			{"node_with_slash", "a/b", time.Minute, "--node"},
			{"zero_ttl", "host", 0, "--ttl"},
			{"ttl_above_a_day", "host", 25 * time.Hour, "--ttl"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := j.Create(tc.node, tc.ttl); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Create(%q, %s) = %v, want an error naming %s", tc.node, tc.ttl, err, tc.want)
				}
			})
		}
		for _, bad := range []string{"", "nope", "mfjt_" + strings.Repeat("x", 1000), "mfjt_\x00"} {
			if _, err := j.Consume(bad); !errors.Is(err, hostnodes.ErrBadToken) {
				t.Errorf("Consume(%q) = %v, want ErrBadToken", bad, err)
			}
		}
	})
	t.Run("concurrent_consumers_one_wins", func(t *testing.T) {
		tok, err := j.Create("host-c", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := j.Consume(tok); err == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d consumers won, want exactly 1", wins.Load())
		}
	})
	t.Run("corrupt_file_is_reported", func(t *testing.T) {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, hostnodes.JoinTokenFile), []byte("{garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := hostnodes.NewJoinTokens(d, clock).Consume("mfjt_abc")
		if err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("err = %v, want corrupt", err)
		}
	})
}

func TestAttestor(t *testing.T) {
	j := hostnodes.NewJoinTokens(t.TempDir(), nil)
	tok, err := j.Create("host-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a := hostnodes.Attestor{Tokens: j}
	ctx := context.Background()
	node, err := a.AttestAgent(ctx, &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}})
	if err != nil || node != "host-a" {
		t.Fatalf("AttestAgent = %q, %v", node, err)
	}
	for name, req := range map[string]*issuerv1.AttestAgentRequest{
		"reused":                {Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}},
		"empty":                 {},
		"service_account_token": {Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: "x"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := a.AttestAgent(ctx, req)
			var d *issuer.Denial
			if !errors.As(err, &d) {
				t.Fatalf("err = %v, want a *issuer.Denial", err)
			}
		})
	}
}

func TestNodePolicy(t *testing.T) {
	p := hostnodes.NodePolicy{Name: "host-a", AllowedIDs: []string{"spiffe://example.org/web/*", "spiffe://example.org/db"}}
	if err := p.Validate("nodes[0]", td); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"spiffe://example.org/web/a":   true,
		"spiffe://example.org/web/a/b": true,
		"spiffe://example.org/web":     false,
		"spiffe://example.org/webx/a":  false,
		"spiffe://example.org/db":      true,
		"spiffe://example.org/db/x":    false,
	} {
		if got := p.Allows(spiffeid.RequireFromString(id)); got != want {
			t.Errorf("Allows(%s) = %v, want %v", id, got, want)
		}
	}
	for _, tc := range []struct {
		name string
		p    hostnodes.NodePolicy
		want string
	}{
		{"bad_node_name", hostnodes.NodePolicy{Name: "a/b"}, "nodes[0].name"},
		{"other_trust_domain", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://evil.org/x"}}, "nodes[0].allowedIDs[0]"},
		{"whole_trust_domain", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://example.org"}}, "names the whole trust domain"},
		{"whole_trust_domain_wildcard", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://example.org/*"}}, "nodes[0].allowedIDs[0]: spiffe://example.org/* names the whole trust domain"},
		{"reserved_wildcard", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://example.org/svc/*", "spiffe://example.org/mayfly/*"}}, "nodes[0].allowedIDs[1]: spiffe://example.org/mayfly/* covers reserved IDs"},
		{"reserved_agent_id", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://example.org/mayfly/agent/other-node"}}, "nodes[0].allowedIDs[0]: spiffe://example.org/mayfly/agent/other-node is a reserved ID"},
		{"reserved_ca_id", hostnodes.NodePolicy{Name: "h", AllowedIDs: []string{"spiffe://example.org/mayfly/ca"}}, "nodes[0].allowedIDs[0]"},
		{"bad_dns_name", hostnodes.NodePolicy{Name: "h", AllowedDNSNames: []string{"-bad-"}}, "nodes[0].allowedDNSNames[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.p.Validate("nodes[0]", td); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestAuthorizer(t *testing.T) {
	a := hostnodes.NewAuthorizer(td, []hostnodes.NodePolicy{{Name: "host-a", AllowedIDs: []string{"spiffe://example.org/web/*"}, AllowedDNSNames: []string{"web.internal"}}})
	ctx := context.Background()
	g, err := a.AuthorizeWorkload(ctx, "host-a", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/web/1", DnsNames: []string{"web.internal"}})
	if err != nil || g.ID.String() != "spiffe://example.org/web/1" {
		t.Fatalf("grant = %v, %v", g, err)
	}
	for _, tc := range []struct {
		name string
		node string
		req  *issuerv1.WorkloadRequest
		code issuerv1.Denial_Code
	}{
		{"unknown_node", "host-z", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/web/1"}, issuerv1.Denial_PERMISSION_DENIED},
		{"not_allowed", "host-a", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/db"}, issuerv1.Denial_PERMISSION_DENIED},
		{"dns_not_allowed", "host-a", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/web/1", DnsNames: []string{"bank.com"}}, issuerv1.Denial_PERMISSION_DENIED},
		{"malformed_id", "host-a", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/web/../x"}, issuerv1.Denial_INVALID_ARGUMENT},
		{"empty_id", "host-a", &issuerv1.WorkloadRequest{}, issuerv1.Denial_INVALID_ARGUMENT},
		{"pod_uid", "host-a", &issuerv1.WorkloadRequest{PodUid: "u"}, issuerv1.Denial_INVALID_ARGUMENT},
		{"other_trust_domain", "host-a", &issuerv1.WorkloadRequest{SpiffeId: "spiffe://evil.org/web/1"}, issuerv1.Denial_PERMISSION_DENIED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.AuthorizeWorkload(ctx, tc.node, tc.req)
			if err == nil || issuer.DenialOf(err).GetCode() != tc.code {
				t.Fatalf("err = %v, want a denial %v", err, tc.code)
			}
		})
	}
}

func TestCheckNode(t *testing.T) {
	a := hostnodes.NewAuthorizer(td, []hostnodes.NodePolicy{{Name: "host-a", AllowedIDs: []string{"spiffe://example.org/web/*"}}})
	if err := a.CheckNode("host-a"); err != nil {
		t.Fatalf("CheckNode of a listed node: %v", err)
	}
	for _, node := range []string{"host-removed", "", "host-a/../x"} {
		err := a.CheckNode(node)
		if err == nil || issuer.DenialOf(err).GetCode() != issuerv1.Denial_PERMISSION_DENIED || !strings.Contains(err.Error(), "no entry in the CA's nodes") {
			t.Errorf("CheckNode(%q) = %v, want a PERMISSION_DENIED naming the nodes configuration", node, err)
		}
	}
}

func TestRevokeJoinTokens(t *testing.T) {
	j := hostnodes.NewJoinTokens(t.TempDir(), nil)
	a1, _ := j.Create("host-a", time.Minute)
	a2, _ := j.Create("host-a", time.Minute)
	b, err := j.Create("host-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := j.Revoke("host-a"); err != nil || n != 2 {
		t.Fatalf("Revoke = %d, %v; want 2", n, err)
	}
	for _, tok := range []string{a1, a2} {
		if _, err := j.Consume(tok); !errors.Is(err, hostnodes.ErrBadToken) {
			t.Fatalf("a revoked token was accepted: %v", err)
		}
	}
	if node, err := j.Consume(b); err != nil || node != "host-b" {
		t.Fatalf("another node's token: %q, %v", node, err)
	}
}

// TestJoinTokenRefusalDoesNotRewriteFile: a refused token (unknown, used,
// expired or malformed) leaves the token file as it is; only a successful
// consume writes it. Bogus attestations must not make the CA write to disk.
func TestJoinTokenRefusalDoesNotRewriteFile(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	j := hostnodes.NewJoinTokens(dir, func() time.Time { return now })
	good, err := j.Create("host-a", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	short, err := j.Create("host-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, hostnodes.JoinTokenFile)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute) // short has expired
	for name, tok := range map[string]string{
		"unknown":   "mfjt_" + strings.Repeat("A", 43),
		"malformed": "not-a-token",
		"too_long":  "mfjt_" + strings.Repeat("x", 1000),
		"expired":   short,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := j.Consume(tok); !errors.Is(err, hostnodes.ErrBadToken) {
				t.Fatalf("Consume = %v, want ErrBadToken", err)
			}
			after, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
				t.Fatal("a refused token rewrote the token file")
			}
		})
	}
	if node, err := j.Consume(good); err != nil || node != "host-a" {
		t.Fatalf("Consume(good) = %q, %v", node, err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Fatal("a successful consume did not rewrite the token file")
	}
}
