package issuer_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

const webID = "spiffe://example.org/ns/default/sa/web"

func TestNewValidatesConfig(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	valid := func() issuer.Config {
		return issuer.Config{TrustDomain: td, Authority: newFakeAuthority(nil), Attestor: fakeAttestor{}, Authorizer: newFakeAuthorizer(), Rand: rand.Reader}
	}
	tests := []struct {
		name    string
		mod     func(*issuer.Config)
		wantErr string
	}{
		{"complete config with defaults is accepted", func(*issuer.Config) {}, ""},
		{"empty trust domain is refused", func(c *issuer.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain"},
		{"missing authority is refused", func(c *issuer.Config) { c.Authority = nil }, "authority"},
		{"missing attestor is refused", func(c *issuer.Config) { c.Attestor = nil }, "attestor"},
		{"missing authorizer is refused", func(c *issuer.Config) { c.Authorizer = nil }, "authorizer"},
		{"missing randomness is refused", func(c *issuer.Config) { c.Rand = nil }, "random"},
		{"default ttl above the maximum is refused", func(c *issuer.Config) { c.DefaultWorkloadTTL = 25 * time.Hour }, "defaultWorkloadTTL"},
		{"default ttl below the minimum is refused", func(c *issuer.Config) { c.DefaultWorkloadTTL = time.Minute }, "defaultWorkloadTTL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid()
			tc.mod(&cfg)
			_, err := issuer.New(cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("New error = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestAttestAgent(t *testing.T) {
	const agentTTL = 30 * time.Minute
	h := newHarness(t, func(c *issuer.Config) { c.AgentTTL = agentTTL })
	client := h.dial(nil)

	tests := []struct {
		name     string
		csr      []byte
		token    string
		wantCode codes.Code
		wantNode string
	}{
		{name: "valid join token yields the node's agent SVID", csr: testca.CSR(t, testca.Key(t)), token: "good-node-a", wantNode: "node-a"},
		{name: "refused join token is permission denied", csr: testca.CSR(t, testca.Key(t)), token: "bad-node-a", wantCode: codes.PermissionDenied},
		{name: "missing credential is permission denied", csr: testca.CSR(t, testca.Key(t)), wantCode: codes.PermissionDenied},
		{name: "garbage csr is invalid argument", csr: []byte("not a csr"), token: "good-node-a", wantCode: codes.InvalidArgument},
		{name: "csr signed by another key is invalid argument", csr: csrSignedByOtherKey(t), token: "good-node-a", wantCode: codes.InvalidArgument},
		{name: "node name that is no ID segment is invalid argument", csr: testca.CSR(t, testca.Key(t)), token: "good-a/b", wantCode: codes.InvalidArgument},
		{name: "attestor failure is internal without its detail", csr: testca.CSR(t, testca.Key(t)), token: "boom", wantCode: codes.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &issuerv1.AttestAgentRequest{Csr: tc.csr}
			if tc.token != "" {
				req.Credential = &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tc.token}
			}
			resp, err := client.AttestAgent(ctx(t), req)
			if tc.wantCode != codes.OK {
				wantCode(t, err, tc.wantCode)
				if strings.Contains(status.Convert(err).Message(), secretAttestorDetail) {
					t.Fatalf("message leaks the internal error: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("AttestAgent: %v", err)
			}
			chain, err := issuerclient.ParseChain(resp.GetCertificateChain())
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			wantID := "spiffe://example.org/mayfly/agent/" + tc.wantNode
			id, err := pki.VerifyX509SVID(leaf, chain[1:], h.tca.Bundle(), h.clock.Now(), x509.ExtKeyUsageClientAuth)
			if err != nil || id.String() != wantID {
				t.Fatalf("VerifyX509SVID = %v, %v; want %s", id, err, wantID)
			}
			if err := pki.CheckSVIDRules(leaf); err != nil {
				t.Fatal(err)
			}
			if want := h.clock.Now().Add(agentTTL); !leaf.NotAfter.Equal(want) {
				t.Fatalf("notAfter %s, want now+AgentTTL %s", leaf.NotAfter, want)
			}
			roots, err := issuerclient.ParseBundle(resp.GetBundle())
			if err != nil || len(roots) != 1 || !roots[0].Equal(h.tca.Root) || resp.GetBundle().GetVersion() != "v1" {
				t.Fatalf("bundle %v (%v), want the test root at v1", resp.GetBundle().GetVersion(), err)
			}
		})
	}
}

func TestAgentSVIDAuthenticatesLaterCalls(t *testing.T) {
	h := newHarness(t)
	h.authz.grant("node-a", webID)
	cert := h.attest("node-a")

	// A TLS connection keeps the client certificate it was opened with:
	// the agent dials anew with its SVID.
	agent := h.dial(cert)
	resp, err := agent.SignWorkloads(ctx(t), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{workloadItem(t, "r1", webID, 0)}})
	if err != nil {
		t.Fatalf("SignWorkloads: %v", err)
	}
	if got := resp.GetResults()[0].GetIssued().GetSpiffeId(); got != webID {
		t.Fatalf("issued %q, want %s (%v)", got, webID, resp.GetResults()[0].GetDenial())
	}

	key := testca.Key(t)
	renewed, err := agent.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, key)})
	if err != nil {
		t.Fatalf("RenewAgent: %v", err)
	}
	newCert := tlsCert(t, renewed.GetCertificateChain(), key)
	if got := newCert.Leaf.URIs[0].String(); got != "spiffe://example.org/mayfly/agent/node-a" {
		t.Fatalf("renewed ID %s", got)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(newCert.Leaf.PublicKey) {
		t.Fatal("renewed SVID does not carry the key of the renewal CSR")
	}
	if newCert.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
		t.Fatal("renewal returned the old certificate")
	}
	if _, err := h.dial(newCert).RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))}); err != nil {
		t.Fatalf("RenewAgent with the renewed SVID: %v", err)
	}
}

func TestRenewAgentRejectsBadCSR(t *testing.T) {
	h := newHarness(t)
	agent := h.agent("node-a")
	for _, tc := range []struct {
		name string
		csr  []byte
	}{
		{"garbage csr", []byte{0x30, 0x03, 0x02, 0x01}},
		{"signature flipped", csrSignatureFlipped(t)},
	} {
		t.Run(tc.name+" is invalid argument", func(t *testing.T) {
			_, err := agent.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: tc.csr})
			wantCode(t, err, codes.InvalidArgument)
		})
	}
}

func TestSignWorkloadsPerItemResults(t *testing.T) {
	h := newHarness(t)
	const dbID = "spiffe://example.org/ns/default/sa/db"
	h.authz.grant("node-a", webID)
	h.authz.grant("node-a", dbID, "db.default.svc")
	// An authorizer (or a node policy) that grants reserved IDs: the
	// signing policy refuses them all the same.
	const otherAgentID, caID = "spiffe://example.org/mayfly/agent/node-b", "spiffe://example.org/mayfly/ca"
	h.authz.grant("node-a", otherAgentID)
	h.authz.grant("node-a", caID)
	agent := h.agent("node-a")

	tests := []struct {
		name     string
		item     *issuerv1.WorkloadRequest
		wantCode issuerv1.Denial_Code // CODE_UNSPECIFIED: issued
		wantRule string               // the policy rule the denial names, if any
		wantTTL  time.Duration
		wantDNS  []string
	}{
		{name: "granted item is issued with its ttl", item: workloadItem(t, "ok-ttl", webID, 600), wantTTL: 10 * time.Minute},
		{name: "zero ttl gets the default ttl", item: workloadItem(t, "ok-default", webID, 0), wantTTL: time.Hour},
		{name: "dns names come from the grant", item: workloadItem(t, "ok-dns", dbID, 0), wantTTL: time.Hour, wantDNS: []string{"db.default.svc"}},
		{
			name:    "names in the csr are ignored",
			item:    &issuerv1.WorkloadRequest{RequestId: "ok-csr-names", Csr: csrWithNames(t, testca.Key(t)), SpiffeId: webID},
			wantTTL: time.Hour,
		},
		{name: "garbage csr is invalid argument", item: &issuerv1.WorkloadRequest{RequestId: "garbage", Csr: []byte("garbage"), SpiffeId: webID}, wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "empty csr is invalid argument", item: &issuerv1.WorkloadRequest{RequestId: "empty", SpiffeId: webID}, wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "csr signed by another key is invalid argument", item: &issuerv1.WorkloadRequest{RequestId: "other-key", Csr: csrSignedByOtherKey(t), SpiffeId: webID}, wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "csr with flipped signature bit is invalid argument", item: &issuerv1.WorkloadRequest{RequestId: "flipped", Csr: csrSignatureFlipped(t), SpiffeId: webID}, wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "ttl above the maximum is invalid argument", item: workloadItem(t, "ttl-long", webID, 25*3600), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "ttl-bounds"},
		{name: "ttl below the minimum is invalid argument", item: workloadItem(t, "ttl-short", webID, 60), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "ttl-bounds"},
		{name: "negative ttl is invalid argument", item: workloadItem(t, "ttl-negative", webID, -1), wantCode: issuerv1.Denial_INVALID_ARGUMENT},
		{name: "ttl that overflows a duration is invalid argument", item: workloadItem(t, "ttl-overflow", webID, 1<<55), wantCode: issuerv1.Denial_INVALID_ARGUMENT, wantRule: "ttl-bounds"},
		{name: "workload posing as another node's agent is permission denied", item: workloadItem(t, "reserved-agent", otherAgentID, 0), wantCode: issuerv1.Denial_PERMISSION_DENIED, wantRule: "reserved-id"},
		{name: "workload posing as the CA is permission denied", item: workloadItem(t, "reserved-ca", caID, 0), wantCode: issuerv1.Denial_PERMISSION_DENIED, wantRule: "reserved-id"},
		{name: "identity not granted to the node is permission denied", item: workloadItem(t, "not-granted", "spiffe://example.org/ns/kube-system/sa/admin", 0), wantCode: issuerv1.Denial_PERMISSION_DENIED},
		{name: "unknown pod is not found", item: workloadItem(t, "not-found", idNotFound, 0), wantCode: issuerv1.Denial_NOT_FOUND},
		{name: "authorizer failure is internal", item: workloadItem(t, "internal", idInternalError, 0), wantCode: issuerv1.Denial_INTERNAL},
	}
	req := &issuerv1.SignWorkloadsRequest{}
	for _, tc := range tests {
		req.Requests = append(req.Requests, tc.item)
	}
	resp, err := agent.SignWorkloads(ctx(t), req)
	if err != nil {
		t.Fatalf("SignWorkloads: %v", err)
	}
	if len(resp.GetResults()) != len(tests) {
		t.Fatalf("%d results for %d items", len(resp.GetResults()), len(tests))
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := resp.GetResults()[i]
			if res.GetRequestId() != tc.item.GetRequestId() {
				t.Fatalf("result %d has request_id %q, want %q", i, res.GetRequestId(), tc.item.GetRequestId())
			}
			if tc.wantCode != issuerv1.Denial_CODE_UNSPECIFIED {
				d := res.GetDenial()
				if d.GetCode() != tc.wantCode {
					t.Fatalf("denial %v (issued %v), want %v", d, res.GetIssued() != nil, tc.wantCode)
				}
				if d.GetMessage() == "" {
					t.Fatal("denial without a message")
				}
				if tc.wantRule != "" && !strings.Contains(d.GetMessage(), "policy: rule "+tc.wantRule+": ") {
					t.Fatalf("denial %q does not name rule %s", d.GetMessage(), tc.wantRule)
				}
				if tc.wantCode == issuerv1.Denial_INTERNAL && strings.Contains(d.GetMessage(), secretAuthorizerDetail) {
					t.Fatalf("INTERNAL message leaks the authorizer's error: %q", d.GetMessage())
				}
				return
			}
			iss := res.GetIssued()
			if iss == nil {
				t.Fatalf("denied: %v", res.GetDenial())
			}
			chain, err := issuerclient.ParseChain(iss.GetCertificateChain())
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			id, err := pki.VerifyX509SVID(leaf, chain[1:], h.tca.Bundle(), h.clock.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil || id.String() != tc.item.GetSpiffeId() || iss.GetSpiffeId() != id.String() {
				t.Fatalf("VerifyX509SVID = %v, %v; response says %s", id, err, iss.GetSpiffeId())
			}
			if err := pki.CheckSVIDRules(leaf); err != nil {
				t.Fatal(err)
			}
			if want := h.clock.Now().Add(tc.wantTTL); !leaf.NotAfter.Equal(want) || iss.GetNotAfterUnix() != want.Unix() {
				t.Fatalf("notAfter %s (response %d), want %s", leaf.NotAfter, iss.GetNotAfterUnix(), want)
			}
			if !slices.Equal(leaf.DNSNames, tc.wantDNS) {
				t.Fatalf("DNS names %v, want %v", leaf.DNSNames, tc.wantDNS)
			}
			if iss.GetSerialNumber() != leaf.SerialNumber.Text(16) {
				t.Fatalf("serial_number %q, certificate has %x", iss.GetSerialNumber(), leaf.SerialNumber)
			}
		})
	}

	t.Run("audit log holds the internal error the client did not get", func(t *testing.T) {
		if !strings.Contains(h.logs.String(), secretAuthorizerDetail) {
			t.Fatal("the authorizer's error is not in the audit log")
		}
	})
}

func TestSignWorkloadsBatchSize(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) { c.MaxBatch = 3 })
	agent := h.webAgent()
	tests := []struct {
		name     string
		n        int
		wantCode codes.Code
	}{
		{"empty batch is served", 0, codes.OK},
		{"batch at MaxBatch is served", 3, codes.OK},
		{"batch above MaxBatch is invalid argument", 4, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := agent.SignWorkloads(ctx(t), batch(t, tc.n, webID))
			wantCode(t, err, tc.wantCode)
			if err == nil && len(resp.GetResults()) != tc.n {
				t.Fatalf("%d results for %d items", len(resp.GetResults()), tc.n)
			}
		})
	}
	t.Run("the refused batch is audited", func(t *testing.T) {
		for _, l := range h.auditLines() {
			if l["decision"] == "deny" && l["reason"] == "batch too large" && l["caller"] == "node node-a" {
				return
			}
		}
		t.Fatalf("no audit line for the refused batch:\n%s", h.logs.String())
	})
}

func TestSignWorkloadsRateLimit(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) { c.NodeRate, c.NodeBurst = rate.Limit(1), 3 })
	h.authz.grant("node-a", webID)
	h.authz.grant("node-b", webID)
	a, b := h.agent("node-a"), h.agent("node-b")

	steps := []struct {
		name     string
		client   issuerv1.IssuerClient
		n        int
		advance  time.Duration
		wantCode codes.Code
	}{
		{name: "batch above the burst is resource exhausted", client: a, n: 4, wantCode: codes.ResourceExhausted},
		{name: "another node is unaffected", client: b, n: 3},
		{name: "a refused batch consumed nothing", client: a, n: 3},
		{name: "an empty bucket refuses the next certificate", client: a, n: 1, wantCode: codes.ResourceExhausted},
		{name: "the bucket refills at NodeRate", client: a, n: 1, advance: time.Second},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.clock.Advance(st.advance)
			resp, err := st.client.SignWorkloads(ctx(t), batch(t, st.n, webID))
			wantCode(t, err, st.wantCode)
			if err != nil {
				msg := status.Convert(err).Message()
				if !strings.Contains(msg, "node-a") || !strings.Contains(msg, "rate limit of 1 ") || !strings.Contains(msg, "burst 3") {
					t.Fatalf("message %q does not name the node and its limit", msg)
				}
				return
			}
			for _, r := range resp.GetResults() {
				if r.GetIssued() == nil {
					t.Fatalf("denied: %v", r.GetDenial())
				}
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	h := newHarness(t)
	h.authz.grant("node-a", webID)
	workloadCert := tlsCertOf(h.tca.IssueWorkload(t, spiffeid.RequireFromString(webID), time.Hour))
	evil := testca.New(t, testca.WithTrustDomain("evil.org"), testca.WithClock(h.clock.Now))
	evilAgent := tlsCertOf(evil.IssueWorkload(t, spiffeid.RequireFromString("spiffe://evil.org/mayfly/agent/node-a"), time.Hour))
	// Same trust domain name, a root we do not trust.
	rogue := testca.New(t, testca.WithClock(h.clock.Now))
	rogueAgent := tlsCertOf(rogue.IssueWorkload(t, spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a"), time.Hour))

	// An SVID of our CA with an agent's ID but without the component
	// policy: what a workload certificate for /mayfly/agent/<node> would
	// be, had a policy ever issued one (or an agent SVID from before the
	// policy existed).
	noPolicy := &pki.Signer{Authority: h.tca.Authority(), Now: h.clock.Now, Rand: rand.Reader}
	impostorKey := testca.Key(t)
	impostor, _, err := noPolicy.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: impostorKey.Public(), ID: spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a"), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	impostorAgent := tlsCertOf([]*x509.Certificate{impostor, h.tca.Intermediate}, impostorKey)

	stolen := h.attest("node-a")
	stolen.PrivateKey = testca.Key(t)
	unauthenticated := []codes.Code{codes.Unauthenticated}
	creds := []struct {
		name   string
		client issuerv1.IssuerClient
		want   []codes.Code
	}{
		{"no client certificate is unauthenticated", h.dial(nil), unauthenticated},
		{"agent SVID of another trust domain is unauthenticated", h.dial(evilAgent), unauthenticated},
		{"agent SVID from an untrusted root of our trust domain is unauthenticated", h.dial(rogueAgent), unauthenticated},
		{"workload SVID of our trust domain is unauthenticated", h.dial(workloadCert), unauthenticated},
		{"agent ID without the component policy is unauthenticated", h.dial(impostorAgent), unauthenticated},
		// The TLS handshake checks possession of the key: the call fails
		// on the connection, before the server sees it.
		{"agent SVID presented without its key fails the handshake", h.dial(stolen), []codes.Code{codes.Unavailable}},
	}
	calls := []struct {
		name string
		call func(issuerv1.IssuerClient) error
	}{
		{"SignWorkloads", func(c issuerv1.IssuerClient) error {
			_, err := c.SignWorkloads(ctx(t), batch(t, 1, webID))
			return err
		}},
		{"RenewAgent", func(c issuerv1.IssuerClient) error {
			_, err := c.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
			return err
		}},
		{"WatchBundle", func(c issuerv1.IssuerClient) error { return firstBundle(ctx(t), c) }},
	}
	for _, cr := range creds {
		for _, call := range calls {
			t.Run(cr.name+"/"+call.name, func(t *testing.T) {
				err := call.call(cr.client)
				if err == nil {
					t.Fatal("call succeeded")
				}
				wantCode(t, err, cr.want...)
			})
		}
	}
	t.Run("nothing was issued to a refused caller", func(t *testing.T) {
		if got := h.issued("workload", "issued") + h.issued("agent", "issued"); got != 1 {
			t.Fatalf("%v certificates issued, want only the agent SVID of the key thief's victim", got)
		}
	})
}

func TestExpiredAgentSVIDOnOpenConnection(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) { c.AgentTTL = 10 * time.Minute })
	agent := h.webAgent()
	if _, err := agent.SignWorkloads(ctx(t), batch(t, 1, webID)); err != nil {
		t.Fatalf("SignWorkloads before expiry: %v", err)
	}
	h.clock.Advance(10*time.Minute + time.Second)
	tests := []struct {
		name string
		call func() error
	}{
		{"SignWorkloads is unauthenticated", func() error {
			_, err := agent.SignWorkloads(ctx(t), batch(t, 1, webID))
			return err
		}},
		{"RenewAgent is unauthenticated", func() error {
			_, err := agent.RenewAgent(ctx(t), &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
			return err
		}},
		{"WatchBundle is unauthenticated", func() error { return firstBundle(ctx(t), agent) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			wantCode(t, err, codes.Unauthenticated)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "expired") {
				t.Fatalf("message %q does not say the SVID expired", msg)
			}
		})
	}
}
