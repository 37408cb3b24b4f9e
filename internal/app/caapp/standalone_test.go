package caapp_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// caConfigHead starts the standalone CA configs of these tests; DIR
// stands for the state directory (serveCA fills it in).
const caConfigHead = `
apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: example.org
directory: DIR
healthAddress: "off"
workloads:
  minTTL: 1m
  defaultTTL: 10m
  maxTTL: 1h
`

const standaloneConfig = caConfigHead + `nodes:
  - name: host-a
    allowedIDs: ["spiffe://example.org/demo/*", "spiffe://example.org/exact"]
    allowedDNSNames: ["demo.local"]
  - name: host-b
    allowedIDs: ["spiffe://example.org/b/*"]
`

type runningCA struct {
	addr   string
	dir    string
	logs   *logbuf.Buffer
	bundle []*x509.Certificate
}

// caProcess is a CA that runCA runs in this process.
type caProcess struct {
	cfg    *caapp.Config
	addr   string
	logs   *logbuf.Buffer
	served chan struct{} // closed once the issuer API serves
	exited chan struct{} // closed once Run returned
	err    error         // what Run returned, once exited is closed
	// stop cancels Run's context; errChecked says the test checked err
	// itself (the cleanup then does not).
	stop       context.CancelFunc
	errChecked bool
}

// runCA runs the CA that the config text describes on a new 127.0.0.1
// port until the test ends, logging JSON to its logs; opts adds to the
// options (runCA sets Listener, Logger and Ready). It does not wait for
// the CA to serve.
func runCA(t testing.TB, text string, opts caapp.Options) *caProcess {
	t.Helper()
	cfg, err := caapp.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &caProcess{cfg: cfg, addr: lis.Addr().String(), logs: &logbuf.Buffer{}, served: make(chan struct{}), exited: make(chan struct{})}
	var logOut io.Writer = p.logs
	if _, ok := t.(*testing.B); ok {
		// Benchmarks format every audit line as production does, but do not
		// keep them in memory (the RSS figure would measure the test's buffer).
		logOut = io.Discard
	}
	opts.Listener = lis
	opts.Logger = slog.New(slog.NewJSONHandler(logOut, nil))
	opts.Ready = func(string) { close(p.served) }
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	go func() {
		p.err = caapp.Run(ctx, cfg, opts)
		close(p.exited)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.exited:
			if p.err != nil && !p.errChecked {
				t.Errorf("CA run: %v", p.err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the CA did not stop within 30s")
		}
	})
	return p
}

// serveCA runs the standalone CA that the config text describes, with a
// new state directory for DIR, and returns it once the issuer API serves,
// with the trust bundle it wrote.
func serveCA(t testing.TB, text string) *runningCA {
	t.Helper()
	text = strings.Replace(text, "directory: DIR", "directory: "+filepath.Join(t.TempDir(), "state"), 1)
	p := runCA(t, text, caapp.Options{})
	select {
	case <-p.served:
	case <-p.exited:
		t.Fatal("the CA exited before it served") // cleanup reports its error
	}
	raw, err := os.ReadFile(filepath.Join(p.cfg.Directory, caapp.TrustBundleFile))
	if err != nil {
		t.Fatalf("trust bundle file (CA logs: %s): %v", p.logs.String(), err)
	}
	bundle, err := pki.DecodeCertificates(raw, pki.PEMLimits{})
	if err != nil {
		t.Fatal(err)
	}
	return &runningCA{addr: p.addr, dir: p.cfg.Directory, logs: p.logs, bundle: bundle}
}

// startCA runs the standalone CA of standaloneConfig, with the extra lines
// under workloads, once it serves.
func startCA(t testing.TB, extra ...string) *runningCA {
	t.Helper()
	text := standaloneConfig
	for _, e := range extra {
		text = strings.Replace(text, "workloads:\n", "workloads:\n"+e+"\n", 1)
	}
	return serveCA(t, text)
}

type agent struct {
	client issuerv1.IssuerClient
	cert   *tls.Certificate
	mu     sync.Mutex
}

func (r *runningCA) dial(t testing.TB, a *agent) issuerv1.IssuerClient {
	t.Helper()
	conn, client, err := issuerclient.Dial(issuerclient.Config{
		Address: r.addr, TrustDomain: td,
		Bundle: func() []*x509.Certificate { return r.bundle },
		Certificate: func() *tls.Certificate {
			a.mu.Lock()
			defer a.mu.Unlock()
			return a.cert
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a.client = client
	return client
}

// joinToken creates a join token for node, valid for a minute.
func (r *runningCA) joinToken(t testing.TB, node string) string {
	t.Helper()
	tok, err := hostnodes.NewJoinTokens(r.dir, nil).Create(node, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// attest joins node with a fresh token and returns an agent holding its SVID.
func (r *runningCA) attest(t testing.TB, node string) *agent {
	t.Helper()
	tok := r.joinToken(t, node)
	a := &agent{}
	client := r.dial(t, a)
	key := testca.Key(t)
	resp, err := client.AttestAgent(context.Background(), &issuerv1.AttestAgentRequest{
		Csr: testca.CSR(t, key), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok},
	})
	if err != nil {
		t.Fatalf("AttestAgent: %v", err)
	}
	chain, err := issuerclient.ParseChain(resp.GetCertificateChain())
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.VerifyX509SVID(chain[0], chain[1:], r.bundle, time.Now(), x509.ExtKeyUsageClientAuth)
	if err != nil {
		t.Fatalf("agent SVID does not verify: %v", err)
	}
	if want := "spiffe://example.org/mayfly/agent/" + node; id.String() != want {
		t.Fatalf("agent ID = %s, want %s", id, want)
	}
	a.mu.Lock()
	a.cert = &tls.Certificate{Certificate: resp.GetCertificateChain(), PrivateKey: key, Leaf: chain[0]}
	a.mu.Unlock()
	// A TLS connection keeps the client certificate it was opened with:
	// agents reconnect once they hold (or renewed) their SVID.
	r.dial(t, a)
	return a
}

func TestStandaloneIssuesAgentAndWorkloadSVIDs(t *testing.T) {
	r := startCA(t)
	a := r.attest(t, "host-a")
	ctx := context.Background()

	key := testca.Key(t)
	resp, err := a.client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
		{RequestId: "ok", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/server", TtlSeconds: 120, DnsNames: []string{"demo.local"}},
		{RequestId: "exact", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/exact"},
		{RequestId: "not-allowed", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/b/other"},
		{RequestId: "other-td", Csr: testca.CSR(t, key), SpiffeId: "spiffe://evil.org/demo/server"},
		{RequestId: "bad-dns", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/x", DnsNames: []string{"bank.example.com"}},
		{RequestId: "garbage-csr", Csr: []byte("not a csr"), SpiffeId: "spiffe://example.org/demo/x"},
		{RequestId: "ttl-too-long", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/x", TtlSeconds: 7200},
		{RequestId: "ttl-negative", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/x", TtlSeconds: -1},
		{RequestId: "pod-uid", Csr: testca.CSR(t, key), PodUid: "1234"},
	}})
	if err != nil {
		t.Fatalf("SignWorkloads: %v", err)
	}
	want := map[string]issuerv1.Denial_Code{
		"not-allowed": issuerv1.Denial_PERMISSION_DENIED, "other-td": issuerv1.Denial_PERMISSION_DENIED,
		"bad-dns": issuerv1.Denial_PERMISSION_DENIED, "garbage-csr": issuerv1.Denial_INVALID_ARGUMENT,
		"ttl-too-long": issuerv1.Denial_INVALID_ARGUMENT, "ttl-negative": issuerv1.Denial_INVALID_ARGUMENT,
		"pod-uid": issuerv1.Denial_INVALID_ARGUMENT,
	}
	if len(resp.GetResults()) != 9 {
		t.Fatalf("got %d results, want 9", len(resp.GetResults()))
	}
	for _, res := range resp.GetResults() {
		code, denied := want[res.GetRequestId()]
		switch {
		case denied && res.GetDenial() == nil:
			t.Errorf("%s: issued, want denial %v", res.GetRequestId(), code)
		case denied && res.GetDenial().GetCode() != code:
			t.Errorf("%s: denial %v (%s), want %v", res.GetRequestId(), res.GetDenial().GetCode(), res.GetDenial().GetMessage(), code)
		case !denied && res.GetIssued() == nil:
			t.Errorf("%s: denied (%s), want issued", res.GetRequestId(), res.GetDenial().GetMessage())
		case !denied:
			chain, err := issuerclient.ParseChain(res.GetIssued().GetCertificateChain())
			if err != nil {
				t.Fatal(err)
			}
			id, err := pki.VerifyX509SVID(chain[0], chain[1:], r.bundle, time.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				t.Errorf("%s: does not verify: %v", res.GetRequestId(), err)
			}
			if id.String() != res.GetIssued().GetSpiffeId() {
				t.Errorf("%s: ID %s, response says %s", res.GetRequestId(), id, res.GetIssued().GetSpiffeId())
			}
			if err := pki.CheckSVIDRules(chain[0]); err != nil {
				t.Errorf("%s: %v", res.GetRequestId(), err)
			}
			if !chain[0].PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
				t.Errorf("%s: certificate is not for the CSR's key", res.GetRequestId())
			}
		}
	}
	if res := resp.GetResults()[0].GetIssued(); res != nil {
		if got := time.Until(time.Unix(res.GetNotAfterUnix(), 0)); got > 2*time.Minute+time.Second || got < time.Minute {
			t.Errorf("ttl 120s gave notAfter in %s", got)
		}
	}

	// Every decision is audited, without keys or tokens.
	logs := r.logs.String()
	if n := strings.Count(logs, `"msg":"audit"`); n < 10 {
		t.Errorf("want >= 10 audit lines (1 attest + 9 items), got %d", n)
	}
	for _, secret := range []string{"PRIVATE KEY", "mfjt_", "BEGIN CERTIFICATE"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
}

func TestStandaloneRefusesBadAgents(t *testing.T) {
	r := startCA(t)
	ctx := context.Background()

	t.Run("no_client_certificate", func(t *testing.T) {
		client := r.dial(t, &agent{})
		_, err := client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("err = %v, want Unauthenticated", err)
		}
		_, err = client.RenewAgent(ctx, &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, testca.Key(t))})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("RenewAgent err = %v, want Unauthenticated", err)
		}
	})

	t.Run("client_certificate_of_another_trust_domain", func(t *testing.T) {
		other := testca.New(t, testca.WithTrustDomain("evil.org"))
		id := spiffeid.RequireFromString("spiffe://evil.org/mayfly/agent/host-a")
		chain, key := other.IssueWorkload(t, id, time.Hour)
		der := make([][]byte, len(chain))
		for i, c := range chain {
			der[i] = c.Raw
		}
		a := &agent{cert: &tls.Certificate{Certificate: der, PrivateKey: key}}
		client := r.dial(t, a)
		_, err := client.SignWorkloads(ctx, &issuerv1.SignWorkloadsRequest{})
		if err == nil {
			t.Fatal("a foreign agent certificate was accepted")
		}
	})

	t.Run("join_token_is_single_use", func(t *testing.T) {
		tok := r.joinToken(t, "host-a")
		client := r.dial(t, &agent{})
		req := &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}}
		if _, err := client.AttestAgent(ctx, req); err != nil {
			t.Fatalf("first use: %v", err)
		}
		_, err := client.AttestAgent(ctx, req)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "single-use") {
			t.Fatalf("second use: err = %v, want PermissionDenied saying single-use", err)
		}
	})

	t.Run("bad_inputs", func(t *testing.T) {
		client := r.dial(t, &agent{})
		rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		weakCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
		if err != nil {
			t.Fatal(err)
		}
		good := testca.CSR(t, testca.Key(t))
		flipped := append([]byte(nil), good...)
		flipped[len(flipped)-3] ^= 0xff
		for _, tc := range []struct {
			name string
			req  *issuerv1.AttestAgentRequest
			code codes.Code
			msg  string
		}{
			{"empty_credential", &issuerv1.AttestAgentRequest{Csr: good}, codes.InvalidArgument, "join_token is empty"},
			{"service_account_token_in_standalone_mode", &issuerv1.AttestAgentRequest{Csr: good, Credential: &issuerv1.AttestAgentRequest_ServiceAccountToken{ServiceAccountToken: "eyJ..."}}, codes.InvalidArgument, "standalone"},
			{"unknown_token", &issuerv1.AttestAgentRequest{Csr: good, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "mfjt_bogus"}}, codes.PermissionDenied, "unknown"},
			{"not_a_token", &issuerv1.AttestAgentRequest{Csr: good, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: strings.Repeat("x", 5000)}}, codes.PermissionDenied, "not a mayfly join token"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := client.AttestAgent(ctx, tc.req)
				if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.code, tc.msg)
				}
			})
		}
		for _, tc := range []struct {
			name string
			csr  []byte
			msg  string
		}{
			{"weak_rsa_1024", weakCSR, "2048"},
			{"signature_mismatch", flipped, "signature"},
			{"oversized", make([]byte, 1<<20), "exceed"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tok := r.joinToken(t, "host-a")
				_, err := client.AttestAgent(ctx, &issuerv1.AttestAgentRequest{Csr: tc.csr, Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: tok}})
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("err = %v, want InvalidArgument containing %q", err, tc.msg)
				}
			})
		}
	})
}

func TestStandaloneRenewAndWatchBundle(t *testing.T) {
	r := startCA(t)
	a := r.attest(t, "host-b")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	key := testca.Key(t)
	resp, err := a.client.RenewAgent(ctx, &issuerv1.RenewAgentRequest{Csr: testca.CSR(t, key)})
	if err != nil {
		t.Fatalf("RenewAgent: %v", err)
	}
	chain, err := issuerclient.ParseChain(resp.GetCertificateChain())
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].SerialNumber.Cmp(a.cert.Leaf.SerialNumber) == 0 {
		t.Fatal("renewal returned the same certificate")
	}
	if chain[0].URIs[0].String() != "spiffe://example.org/mayfly/agent/host-b" {
		t.Fatalf("renewed ID %s", chain[0].URIs[0])
	}

	stream, err := a.client.WatchBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := stream.Recv()
	if err != nil {
		t.Fatalf("WatchBundle: %v", err)
	}
	roots, err := issuerclient.ParseBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || !roots[0].Equal(r.bundle[0]) {
		t.Fatalf("bundle has %d roots, want the CA's one root", len(roots))
	}
	if err := stream.Send(&issuerv1.BundleAck{Version: b.GetVersion()}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stream did not end after CloseSend: %v", err)
	}
}
