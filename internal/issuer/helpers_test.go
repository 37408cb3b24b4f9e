package issuer_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/issuertest"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// maxRecvMsgSize is what internal/app/caapp sets on the issuer's gRPC server.
const maxRecvMsgSize = 8 << 20

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newFakeAuthority is an AuthoritySource whose Loaded the test replaces
// (Set); with nothing loaded it is not ready.
func newFakeAuthority(l *authority.Loaded) *fakeauthority.Authority {
	if l == nil {
		return fakeauthority.New(nil, errors.New("fake authority: not ready"))
	}
	return fakeauthority.New(l, nil)
}

// secretAttestorDetail is the text of the attestor's internal error; it must
// reach the log only.
const secretAttestorDetail = "tokenreview backend at 10.0.0.7 said 500"

// fakeAttestor accepts join tokens "good-<node>"; "boom" fails internally.
type fakeAttestor struct{}

func (fakeAttestor) AttestAgent(_ context.Context, req *issuerv1.AttestAgentRequest) (string, error) {
	tok := req.GetJoinToken()
	if tok == "boom" {
		return "", errors.New(secretAttestorDetail)
	}
	if node, ok := strings.CutPrefix(tok, "good-"); ok && node != "" {
		return node, nil
	}
	return "", issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "join token refused")
}

// secretAuthorizerDetail is the text of the authorizer's internal error.
const secretAuthorizerDetail = "pod cache: dial tcp 10.96.0.1:443: connection refused"

// fakeAuthorizer grants IDs per node; special IDs fail in given ways.
type fakeAuthorizer struct {
	mu     sync.Mutex
	grants map[string]map[string][]string // node -> spiffe ID -> DNS names
}

func newFakeAuthorizer() *fakeAuthorizer {
	return &fakeAuthorizer{grants: map[string]map[string][]string{}}
}

func (a *fakeAuthorizer) grant(node, id string, dnsNames ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.grants[node] == nil {
		a.grants[node] = map[string][]string{}
	}
	a.grants[node][id] = dnsNames
}

const (
	idInternalError = "spiffe://example.org/authorizer/breaks"
	idNotFound      = "spiffe://example.org/ns/gone/sa/pod"
)

func (a *fakeAuthorizer) AuthorizeWorkload(_ context.Context, node string, req *issuerv1.WorkloadRequest) (issuer.Grant, error) {
	switch req.GetSpiffeId() {
	case idInternalError:
		return issuer.Grant{}, fmt.Errorf("looking up pod %s: %s", req.GetPodUid(), secretAuthorizerDetail)
	case idNotFound:
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_NOT_FOUND, "pod %s not found", req.GetPodUid())
	}
	a.mu.Lock()
	dns, ok := a.grants[node][req.GetSpiffeId()]
	a.mu.Unlock()
	if !ok {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_PERMISSION_DENIED, "node %s may not obtain %s", node, req.GetSpiffeId())
	}
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return issuer.Grant{}, issuer.Deny(issuerv1.Denial_INVALID_ARGUMENT, "spiffe_id: %v", err)
	}
	return issuer.Grant{ID: id, DNSNames: dns, Subject: "pod " + req.GetPodUid()}, nil
}

// harness is an issuer.Server behind real gRPC over TLS on 127.0.0.1.
type harness struct {
	t     testing.TB
	clock *rotate.FakeClock // the server, the test CA and the clients all read it
	tca   *testca.CA
	src   *fakeauthority.Authority
	authz *fakeAuthorizer
	srv   *issuer.Server
	reg   *prometheus.Registry
	logs  *logbuf.Buffer
	addr  string
	acks  atomic.Int32
}

func newHarness(t testing.TB, mods ...func(*issuer.Config)) *harness {
	t.Helper()
	h := &harness{t: t, clock: rotate.NewFakeClock(epoch), authz: newFakeAuthorizer(), reg: prometheus.NewRegistry(), logs: &logbuf.Buffer{}}
	h.tca = testca.New(t, testca.WithClock(h.clock.Now))
	h.src = newFakeAuthority(fakeauthority.Loaded(h.tca, "v1"))
	cfg := issuer.Config{
		TrustDomain:    h.tca.TrustDomain,
		Authority:      h.src,
		Attestor:       fakeAttestor{},
		Authorizer:     h.authz,
		ServerDNSNames: []string{"mayfly-ca.mayfly-system.svc"},
		OnAck:          func() { h.acks.Add(1) },
		Now:            h.clock.Now,
		Rand:           rand.Reader,
		Logger:         slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:     h.reg,
	}
	for _, m := range mods {
		m(&cfg)
	}
	h.srv, h.addr = issuertest.Serve(t, cfg, grpc.MaxRecvMsgSize(maxRecvMsgSize))
	return h
}

// dialConn connects as an agent with cert (nil: none), trusting bundle.
func (h *harness) dialConn(cert *tls.Certificate, bundle []*x509.Certificate) *grpc.ClientConn {
	h.t.Helper()
	conn, _, err := issuerclient.Dial(issuerclient.Config{
		Address:     h.addr,
		TrustDomain: h.tca.TrustDomain,
		Bundle:      func() []*x509.Certificate { return bundle },
		Certificate: func() *tls.Certificate { return cert },
		Now:         h.clock.Now,
	})
	if err != nil {
		h.t.Fatalf("Dial: %v", err)
	}
	h.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (h *harness) dial(cert *tls.Certificate) issuerv1.IssuerClient {
	h.t.Helper()
	return issuerv1.NewIssuerClient(h.dialConn(cert, h.tca.Bundle()))
}

// attest obtains an agent SVID for node over a connection without client
// certificate and returns it as a TLS certificate (chain and key).
func (h *harness) attest(node string) *tls.Certificate {
	h.t.Helper()
	key := testca.Key(h.t)
	resp, err := h.dial(nil).AttestAgent(ctx(h.t), &issuerv1.AttestAgentRequest{
		Csr:        testca.CSR(h.t, key),
		Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-" + node},
	})
	if err != nil {
		h.t.Fatalf("AttestAgent(%s): %v", node, err)
	}
	return tlsCert(h.t, resp.GetCertificateChain(), key)
}

// agent attests node and returns a client on a new connection that
// presents the agent SVID.
func (h *harness) agent(node string) issuerv1.IssuerClient {
	h.t.Helper()
	return h.dial(h.attest(node))
}

// webAgent grants node-a webID and returns node-a's client: the agent of
// the tests that issue one workload.
func (h *harness) webAgent() issuerv1.IssuerClient {
	h.t.Helper()
	h.authz.grant("node-a", webID)
	return h.agent("node-a")
}

func (h *harness) auditLines() []map[string]any {
	h.t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(h.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			h.t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

func tlsCert(t testing.TB, chain [][]byte, key crypto.Signer) *tls.Certificate {
	t.Helper()
	certs, err := issuerclient.ParseChain(chain)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: certs[0]}
}

func tlsCertOf(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func ctx(t testing.TB) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// csrWithNames is a CSR that asks for names the CA must ignore.
func csrWithNames(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	evil, _ := url.Parse("spiffe://example.org/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		DNSNames: []string{"evil.example.org"}, URIs: []*url.URL{evil},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

type csrASN1 struct {
	Info   asn1.RawValue
	SigAlg asn1.RawValue
	Sig    asn1.BitString
}

// csrSignedByOtherKey carries the public key of one key and a signature
// made by another: the requester does not hold the key it claims.
func csrSignedByOtherKey(t *testing.T) []byte {
	t.Helper()
	var claimed, signer csrASN1
	if _, err := asn1.Unmarshal(testca.CSR(t, testca.Key(t)), &claimed); err != nil {
		t.Fatal(err)
	}
	if _, err := asn1.Unmarshal(testca.CSR(t, testca.Key(t)), &signer); err != nil {
		t.Fatal(err)
	}
	claimed.Sig = signer.Sig
	der, err := asn1.Marshal(claimed)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// csrSignatureFlipped is a valid CSR with one bit of its signature flipped.
func csrSignatureFlipped(t *testing.T) []byte {
	t.Helper()
	var c csrASN1
	if _, err := asn1.Unmarshal(testca.CSR(t, testca.Key(t)), &c); err != nil {
		t.Fatal(err)
	}
	sig := bytes.Clone(c.Sig.Bytes)
	sig[len(sig)/2] ^= 0x01
	c.Sig = asn1.BitString{Bytes: sig, BitLength: len(sig) * 8}
	der, err := asn1.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func wantCode(t *testing.T, err error, want ...codes.Code) {
	t.Helper()
	got := status.Code(err)
	for _, w := range want {
		if got == w {
			return
		}
	}
	t.Fatalf("got code %s (%v), want one of %v", got, err, want)
}

// eventually polls cond: server-side effects of a stream (gauges, acks)
// happen after the client's call returns.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.Within(t, what, 10*time.Second, 2*time.Millisecond, cond)
}

func (h *harness) family(name string) *dto.MetricFamily {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

func (h *harness) gauge(name string) float64 {
	h.t.Helper()
	mf := h.family(name)
	if mf == nil || len(mf.GetMetric()) != 1 {
		h.t.Fatalf("gauge %s not gathered", name)
	}
	return mf.GetMetric()[0].GetGauge().GetValue()
}

func (h *harness) issued(kind, result string) float64 {
	h.t.Helper()
	v, ok := promtest.Value(h.t, h.reg, "mayfly_ca_certificates_issued_total", "kind="+kind, "result="+result)
	if !ok {
		h.t.Fatalf("no series mayfly_ca_certificates_issued_total{kind=%s,result=%s}", kind, result)
	}
	return v
}

func workloadItem(t *testing.T, reqID, id string, ttlSeconds int64) *issuerv1.WorkloadRequest {
	t.Helper()
	return &issuerv1.WorkloadRequest{RequestId: reqID, Csr: testca.CSR(t, testca.Key(t)), SpiffeId: id, PodUid: "uid-" + reqID, TtlSeconds: ttlSeconds}
}

func batch(t *testing.T, n int, id string) *issuerv1.SignWorkloadsRequest {
	t.Helper()
	req := &issuerv1.SignWorkloadsRequest{}
	for i := range n {
		req.Requests = append(req.Requests, workloadItem(t, fmt.Sprintf("r%d", i), id, 0))
	}
	return req
}
