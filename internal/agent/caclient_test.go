package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// joinTokens is a standalone-style attestor: each token attests its node
// once and is consumed.
type joinTokens struct {
	mu       sync.Mutex
	tokens   map[string]string // token -> node
	attested int
}

func (j *joinTokens) create(node string) string {
	j.mu.Lock()
	defer j.mu.Unlock()
	tok := "join-" + rand.Text()
	j.tokens[tok] = node
	return tok
}

func (j *joinTokens) AttestAgent(_ context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	node, ok := j.tokens[req.GetJoinToken()]
	if !ok {
		return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "join token unknown or already used")
	}
	delete(j.tokens, req.GetJoinToken())
	j.attested++
	return node, nil
}

func (j *joinTokens) attestations() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.attested
}

// anyWorkload grants every well-formed workload ID to every agent.
type anyWorkload struct{}

func (anyWorkload) AuthorizeWorkload(_ context.Context, node string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %v", err)
	}
	return issuer.Grant{ID: id, Subject: "node " + node}, nil
}

// caHarness is a real issuer.Server over gRPC/TLS on 127.0.0.1, with the
// same fake clock as the agent under test.
type caHarness struct {
	t      *testing.T
	clk    *rotate.FakeClock
	tca    *testca.CA
	auth   *fakeauthority.Authority
	tokens *joinTokens
	srv    *issuer.Server
	reg    *prometheus.Registry
	addr   string
	acks   chan struct{}
}

func newCAHarness(t *testing.T, mods ...func(*issuer.Config)) *caHarness {
	t.Helper()
	clk := rotate.NewFakeClock(epoch)
	h := &caHarness{
		t: t, clk: clk, reg: prometheus.NewRegistry(),
		tokens: &joinTokens{tokens: map[string]string{}},
		acks:   make(chan struct{}, 64),
	}
	h.tca = testca.New(t, testca.WithClock(clk.Now))
	h.auth = fakeauthority.New(fakeauthority.Loaded(h.tca, "v1"), nil)
	cfg := issuer.Config{
		TrustDomain: h.tca.TrustDomain,
		Authority:   h.auth,
		Attestor:    h.tokens,
		Authorizer:  anyWorkload{},
		OnAck: func() {
			select {
			case h.acks <- struct{}{}:
			default:
			}
		},
		Now:        clk.Now,
		Rand:       rand.Reader,
		Registerer: h.reg,
	}
	for _, m := range mods {
		m(&cfg)
	}
	h.srv, h.addr = issuertest.Serve(t, cfg)
	return h
}

// agentIssued is how many agent SVIDs the CA issued, attestations and
// renewals together.
func (h *caHarness) agentIssued() float64 {
	h.t.Helper()
	return mustSample(h.t, h.reg, "mayfly_ca_certificates_issued_total", "kind=agent", "result=issued")
}

// agentSetup is what a test changes in the agent's configuration.
type agentSetup struct {
	token   string // "" : the credential fails, the agent must not need it
	dataDir string
	// renewalToken, when set, is sent with every renewal (Kubernetes).
	renewalToken RenewalToken
	address      string // "" : the harness
	// joinToken, when set, is the credential instead of token.
	joinToken *JoinToken
	nodeName  string
}

// testAgent is a CAClient under test with what it reported.
type testAgent struct {
	*CAClient
	h         *caHarness
	credCalls atomic.Int32
	svids     chan *x509.Certificate
	reachable chan bool
	logs      *logbuf.Buffer
	rejected  atomic.Int32
}

func (h *caHarness) newAgent(s agentSetup) *testAgent {
	h.t.Helper()
	a := &testAgent{h: h, svids: make(chan *x509.Certificate, 16), reachable: make(chan bool, 256), logs: &logbuf.Buffer{}}
	addr := s.address
	if addr == "" {
		addr = h.addr
	}
	cfg := CAConfig{
		Address:       addr,
		TrustDomain:   h.tca.TrustDomain,
		InitialBundle: h.tca.Bundle(),
		Credential: func(context.Context) (*issuerv1.AttestAgentRequest, error) {
			a.credCalls.Add(1)
			if s.token == "" {
				return nil, errors.New("no join token configured")
			}
			return &issuerv1.AttestAgentRequest{Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: s.token}}, nil
		},
		RenewalToken: s.renewalToken,
		DataDir:      s.dataDir,
		NodeName:     s.nodeName,
		OnRejected:   func(error) { a.rejected.Add(1) },
		Clock:        h.clk,
		Policy:       testPolicy(),
		Logger:       slog.New(slog.NewTextHandler(a.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnReachable: func(ok bool) {
			select {
			case a.reachable <- ok:
			default:
			}
		},
	}
	if s.joinToken != nil {
		cfg.Credential, cfg.OnAttested = s.joinToken.Credential, s.joinToken.Settle
	}
	c, err := NewCAClient(cfg)
	if err != nil {
		h.t.Fatalf("NewCAClient: %v", err)
	}
	a.CAClient = c
	c.Store.OnChange(func(cert *x509.Certificate) { a.svids <- cert })
	return a
}

// start runs the agent until the returned stop (or the test's end).
func (a *testAgent) start() (stop func()) {
	a.h.t.Helper()
	return run(a.h.t, "CAClient.Start", a.Start)
}

func (a *testAgent) waitReady() *x509.Certificate {
	a.h.t.Helper()
	recv(a.h.t, a.Ready(), "the agent to be ready")
	return a.lastSVID()
}

// lastSVID drains the SVIDs reported so far and returns the newest.
func (a *testAgent) lastSVID() *x509.Certificate {
	a.h.t.Helper()
	cert := recv(a.h.t, a.svids, "an agent SVID")
	for {
		select {
		case cert = <-a.svids:
		default:
			return cert
		}
	}
}

// renew triggers a rotation of the agent SVID and waits until it is done.
func (a *testAgent) renew() *x509.Certificate {
	a.h.t.Helper()
	before := a.Rotator().State().Rotations
	a.Rotator().Trigger()
	cert := recv(a.h.t, a.svids, "the renewed agent SVID")
	// The rotator records the rotation after the SVID is in use; the
	// replaced connection's grace timer is pending on the fake clock too,
	// so the number of timers does not tell when.
	eventually(a.h.t, "the rotation to be recorded", func() bool { return a.Rotator().State().Rotations == before+1 })
	return cert
}

// signWorkload asks for one workload SVID through the agent's connection.
func (a *testAgent) signWorkload(id string) *x509.Certificate {
	a.h.t.Helper()
	_, csr := newCSR(a.h.t)
	ctx, cancel := context.WithTimeout(a.h.t.Context(), waitTimeout)
	defer cancel()
	res, err := a.Conn.SignWorkloads(ctx, []*issuerv1.WorkloadRequest{{RequestId: "r1", Csr: csr, SpiffeId: id}})
	if err != nil {
		a.h.t.Fatalf("SignWorkloads: %v", err)
	}
	if len(res) != 1 || res[0].GetIssued() == nil {
		a.h.t.Fatalf("SignWorkloads results %v, want one issued", res)
	}
	leaf, err := x509.ParseCertificate(res[0].GetIssued().GetCertificateChain()[0])
	if err != nil {
		a.h.t.Fatal(err)
	}
	if got := idOf(leaf); got != id {
		a.h.t.Fatalf("workload SVID for %s, want %s", got, id)
	}
	return leaf
}

func agentID(t *testing.T, node string) string {
	t.Helper()
	id, err := pki.AgentID(spiffeid.RequireTrustDomainFromString(testca.DefaultTrustDomain), node)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func TestCAClientAttestsWithJoinTokenThenRenews(t *testing.T) {
	h := newCAHarness(t)
	a := h.newAgent(agentSetup{token: h.tokens.create("node-a")})
	a.start()

	first := a.waitReady()
	if got, want := idOf(first), agentID(t, "node-a"); got != want {
		t.Fatalf("agent SVID %s, want %s", got, want)
	}
	if got := h.tokens.attestations(); got != 1 {
		t.Fatalf("attestations %d, want 1", got)
	}
	if recv(t, a.reachable, "a reachability report") != true {
		t.Error("the agent reported the CA unreachable after attesting")
	}
	a.signWorkload(idWeb)

	// The join token is spent: a second attestation would be refused.
	second := a.renew()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("renewal returned the same SVID")
	}
	if idOf(second) != idOf(first) {
		t.Errorf("renewed SVID has ID %s, want %s", idOf(second), idOf(first))
	}
	if got := h.tokens.attestations(); got != 1 {
		t.Errorf("attestations %d after a renewal, want still 1", got)
	}
	if got := a.credCalls.Load(); got != 1 {
		t.Errorf("the bootstrap credential was read %d times, want once", got)
	}
	if got := h.agentIssued(); got != 2 {
		t.Errorf("CA issued %v agent SVIDs, want 2 (attest + renew)", got)
	}
	if st := a.Rotator().State(); st.Failures != 0 {
		t.Errorf("rotation failures %d (%s), want 0", st.Failures, st.LastError)
	}
	// The connection now presents the renewed SVID and still works.
	a.signWorkload(idDB)
}

func TestCAClientPersistsItsSVID(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) // before the first run
	}{
		{name: "data dir is created 0700", prepare: func(*testing.T, string) {}},
		{name: "an existing 0755 data dir is tightened", prepare: func(t *testing.T, dir string) {
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newCAHarness(t)
			dir := filepath.Join(t.TempDir(), "agent")
			tt.prepare(t, dir)

			a1 := h.newAgent(agentSetup{token: h.tokens.create("node-a"), dataDir: dir})
			stop := a1.start()
			persisted := a1.waitReady()
			stop()

			filemode.Want(t, dir, fs.ModeDir|0o700)
			for _, name := range []string{svidFile, keyFile} {
				filemode.Want(t, filepath.Join(dir, name), 0o600)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				info, err := e.Info()
				if err != nil {
					t.Fatal(err)
				}
				if info.Mode().Perm()&0o022 != 0 || strings.HasSuffix(e.Name(), ".tmp") {
					t.Errorf("data dir holds %s (%s)", e.Name(), info.Mode())
				}
			}

			// A restarted agent has no token left: it must renew.
			a2 := h.newAgent(agentSetup{dataDir: dir})
			if got := recv(t, a2.svids, "the persisted SVID"); got.SerialNumber.Cmp(persisted.SerialNumber) != 0 {
				t.Fatalf("restarted agent starts with serial %x, want the persisted %x", got.SerialNumber, persisted.SerialNumber)
			}
			a2.start()
			renewed := a2.waitReady()
			if renewed.SerialNumber.Cmp(persisted.SerialNumber) == 0 {
				t.Fatal("the restarted agent did not renew")
			}
			if got := a2.credCalls.Load(); got != 0 {
				t.Errorf("the restarted agent read its bootstrap credential %d times, want 0", got)
			}
			if got := h.tokens.attestations(); got != 1 {
				t.Errorf("attestations %d, want 1", got)
			}
			if got := h.agentIssued(); got != 2 {
				t.Errorf("CA issued %v agent SVIDs, want 2 (attest + renew)", got)
			}
			a2.signWorkload(idWeb)
			// The renewed SVID replaced the persisted one.
			chain := pemfile.Certificates(t, filepath.Join(dir, svidFile))
			if chain[0].SerialNumber.Cmp(renewed.SerialNumber) != 0 {
				t.Errorf("persisted serial %x, want the renewed %x", chain[0].SerialNumber, renewed.SerialNumber)
			}
		})
	}
}

// writePersisted writes an agent SVID and key as an earlier run would.
func writePersisted(t *testing.T, dir string, svidPEM, keyPEM []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{svidFile: svidPEM, keyFile: keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// issueAgentSVID returns the PEM of an agent SVID of node and of its key.
func issueAgentSVID(t *testing.T, h *caHarness, node string, ttl time.Duration) (svidPEM, keyPEM []byte) {
	t.Helper()
	id := spiffeid.RequireFromString(agentID(t, node))
	chain, key := h.tca.IssueWorkload(t, id, ttl)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCertificates(chain...), keyPEM
}

func TestCAClientIgnoresUnusablePersistedSVID(t *testing.T) {
	tests := []struct {
		name    string
		write   func(t *testing.T, h *caHarness, dir string)
		wantLog string // "" : ignored silently
	}{
		{
			name: "key file is not PEM",
			write: func(t *testing.T, h *caHarness, dir string) {
				svid, _ := issueAgentSVID(t, h, "node-a", time.Hour)
				writePersisted(t, dir, svid, []byte("not a key\x00\xff"))
			},
			wantLog: "ignoring a corrupt persisted agent key",
		},
		{
			name: "key file is truncated",
			write: func(t *testing.T, h *caHarness, dir string) {
				svid, key := issueAgentSVID(t, h, "node-a", time.Hour)
				writePersisted(t, dir, svid, key[:len(key)/2])
			},
			wantLog: "ignoring a corrupt persisted agent key",
		},
		{
			name: "key belongs to another SVID",
			write: func(t *testing.T, h *caHarness, dir string) {
				svid, _ := issueAgentSVID(t, h, "node-a", time.Hour)
				_, otherKey := issueAgentSVID(t, h, "node-a", time.Hour)
				writePersisted(t, dir, svid, otherKey)
			},
			wantLog: "ignoring a persisted agent key that does not match",
		},
		{
			name: "SVID file is not PEM",
			write: func(t *testing.T, h *caHarness, dir string) {
				_, key := issueAgentSVID(t, h, "node-a", time.Hour)
				writePersisted(t, dir, []byte("garbage"), key)
			},
			wantLog: "ignoring a corrupt persisted agent SVID",
		},
		{
			name: "SVID expired",
			write: func(t *testing.T, h *caHarness, dir string) {
				svid, key := issueAgentSVID(t, h, "node-a", 10*time.Minute)
				writePersisted(t, dir, svid, key)
				h.clk.Advance(time.Hour)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newCAHarness(t)
			dir := filepath.Join(t.TempDir(), "agent")
			tt.write(t, h, dir)

			a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), dataDir: dir})
			if cur := a.Store.AgentSVID(); cur != nil {
				t.Fatalf("the agent took up the unusable persisted SVID %x", cur.Leaf.SerialNumber)
			}
			logs := a.logs.String()
			if tt.wantLog != "" && !strings.Contains(logs, tt.wantLog) {
				t.Errorf("logs %q do not say %q", logs, tt.wantLog)
			}
			if tt.wantLog == "" && logs != "" {
				t.Errorf("unexpected warnings: %s", logs)
			}
			if strings.Contains(logs, "PRIVATE KEY") {
				t.Error("a warning carries key material")
			}

			// It attests anew and overwrites the unusable files.
			a.start()
			cert := a.waitReady()
			if got := h.tokens.attestations(); got != 1 {
				t.Errorf("attestations %d, want 1", got)
			}
			a.signWorkload(idWeb)
			raw, err := os.ReadFile(filepath.Join(dir, svidFile))
			if err != nil {
				t.Fatal(err)
			}
			if chain, err := pki.DecodeCertificates(raw, pki.PEMLimits{}); err != nil || chain[0].SerialNumber.Cmp(cert.SerialNumber) != 0 {
				t.Errorf("persisted SVID not replaced by the new one (err %v)", err)
			}
		})
	}
}

func TestCAClientInstallsAndAcknowledgesBundles(t *testing.T) {
	h := newCAHarness(t)
	dir := filepath.Join(t.TempDir(), "agent")
	a := h.newAgent(agentSetup{token: h.tokens.create("node-a"), dataDir: dir})
	a.start()
	a.waitReady()

	recv(t, h.acks, "the agent's acknowledgement of v1")
	if got := mustSample(t, h.reg, "mayfly_ca_agents_with_current_bundle"); got != 1 {
		t.Errorf("agents_with_current_bundle = %v, want 1", got)
	}
	if !h.srv.AllAgentsCurrent() {
		t.Error("AllAgentsCurrent is false after the agent acknowledged")
	}
	if _, version := a.Bundles.Bundle(); version != "v1" {
		t.Errorf("bundle version %q, want v1", version)
	}

	// The CA publishes a next root: the agent installs and acknowledges it.
	changes, unsubscribe := a.Bundles.SubscribeBundle()
	defer unsubscribe()
	next := testca.New(t, testca.WithClock(h.clk.Now))
	h.auth.Set(fakeauthority.Loaded(h.tca, "v2", h.tca.Root, next.Root), nil)
	recv(t, changes, "a bundle change signal")
	roots, version := a.Bundles.Bundle()
	if version != "v2" || len(roots) != 2 || !roots[1].Equal(next.Root) {
		t.Fatalf("bundle %q with %d roots, want v2 with both roots", version, len(roots))
	}
	for !h.srv.AllAgentsCurrent() {
		recv(t, h.acks, "the agent's acknowledgement of v2")
	}
	if got := mustSample(t, h.reg, "mayfly_ca_agents_with_current_bundle"); got != 1 {
		t.Errorf("agents_with_current_bundle = %v after v2, want 1", got)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatalf("bundle not persisted: %v", err)
	}
	if certs, err := pki.DecodeCertificates(raw, pki.PEMLimits{}); err != nil || len(certs) != 2 {
		t.Errorf("persisted bundle has %d roots (err %v), want 2", len(certs), err)
	}
	// The agent still works against the CA with the new bundle.
	a.signWorkload(idWeb)
}

func TestCAClientWithUnreachableCA(t *testing.T) {
	closed := loopback.FreeAddr(t)
	tests := []struct {
		name          string
		persisted     bool
		wantErr       string
		wantCredCalls int32
		wantTimers    int // the rotator's backoff, and the bundle stream's when it has a connection
	}{
		{name: "first start: attestation fails", wantErr: "attesting to the CA", wantCredCalls: 1, wantTimers: 1},
		{name: "restart with a persisted SVID: renewal fails, the SVID is kept", persisted: true, wantErr: "renewing the agent SVID", wantTimers: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newCAHarness(t) // only for its test CA and clock
			dir := filepath.Join(t.TempDir(), "agent")
			if tt.persisted {
				svid, key := issueAgentSVID(t, h, "node-a", time.Hour)
				writePersisted(t, dir, svid, key)
			}
			a := h.newAgent(agentSetup{token: "join-unused", dataDir: dir, address: closed})
			held := a.Store.AgentSVID()
			a.start()

			if recv(t, a.reachable, "a reachability report") {
				t.Fatal("the agent reported an unreachable CA as reachable")
			}
			ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
			defer cancel()
			if err := h.clk.BlockUntilContext(ctx, tt.wantTimers); err != nil {
				t.Fatalf("waiting for the agent to back off: %v", err)
			}
			st := a.Rotator().State()
			if st.Failures != 1 || !strings.Contains(st.LastError, tt.wantErr) {
				t.Errorf("rotator state failures=%d last error %q, want 1 failure saying %q", st.Failures, st.LastError, tt.wantErr)
			}
			if !st.NextAt.After(h.clk.Now()) {
				t.Errorf("next attempt at %s, want a backoff after now (%s)", st.NextAt, h.clk.Now())
			}
			if got := a.credCalls.Load(); got != tt.wantCredCalls {
				t.Errorf("bootstrap credential read %d times, want %d", got, tt.wantCredCalls)
			}
			select {
			case <-a.Ready():
				t.Error("Ready closed without a new SVID")
			default:
			}
			if a.Store.AgentSVID() != held {
				t.Error("the agent dropped or replaced its SVID while the CA was down")
			}
			_, csr := newCSR(t)
			if _, err := a.Conn.SignWorkloads(ctx, []*issuerv1.WorkloadRequest{{RequestId: "r", Csr: csr, SpiffeId: idWeb}}); status.Code(err) != codes.Unavailable {
				t.Errorf("SignWorkloads = %v, want Unavailable", err)
			}
		})
	}
}
