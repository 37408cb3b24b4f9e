package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// testNow is the fixed time of every test clock in this package.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// testCA is a root and an intermediate made at testNow. It mirrors
// internal/test/testca, which pkg/ may not import (depguard: nothing under
// pkg/ imports internal/, tests included).
type testCA struct {
	Root, Intermediate       *x509.Certificate
	RootKey, IntermediateKey crypto.Signer
}

type caConfig struct {
	td              string
	intermediateTTL time.Duration
	intermediateKey pki.KeyType
}

type caOption func(*caConfig)

func withTrustDomain(td string) caOption { return func(c *caConfig) { c.td = td } }

func withIntermediateKey(kt pki.KeyType) caOption {
	return func(c *caConfig) { c.intermediateKey = kt }
}

func withIntermediateTTL(d time.Duration) caOption {
	return func(c *caConfig) { c.intermediateTTL = d }
}

func newTestCA(t testing.TB, opts ...caOption) *testCA {
	t.Helper()
	cfg := caConfig{td: "example.org", intermediateTTL: 48 * time.Hour, intermediateKey: pki.KeyTypeECDSAP256}
	for _, o := range opts {
		o(&cfg)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.td)
	ca := &testCA{RootKey: mustKey(t, pki.KeyTypeECDSAP256), IntermediateKey: mustKey(t, cfg.intermediateKey)}
	var err error
	if ca.Root, err = pki.SelfSignedRoot(ca.RootKey, td, 365*24*time.Hour, testNow, rand.Reader); err != nil {
		t.Fatal(err)
	}
	s := &pki.Signer{
		Authority: pki.Authority{Cert: ca.Root, Key: ca.RootKey},
		Now:       fixedClock(testNow),
		Rand:      rand.Reader,
		Options:   pki.DefaultIntermediateOptions(),
	}
	ca.Intermediate, _, err = s.Sign(pki.SignRequest{Kind: pki.KindIntermediate, PublicKey: ca.IntermediateKey.Public(), ID: td.ID(), TTL: cfg.intermediateTTL})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Signer returns a signer of the intermediate with the default workload
// policy; now nil means testNow.
func (ca *testCA) Signer(now func() time.Time) *pki.Signer {
	if now == nil {
		now = fixedClock(testNow)
	}
	return &pki.Signer{
		Authority: pki.Authority{Cert: ca.Intermediate, Key: ca.IntermediateKey},
		Now:       now,
		Rand:      rand.Reader,
		Options:   pki.DefaultWorkloadOptions(),
	}
}

// IssueWorkload issues a workload SVID at testNow and returns the chain
// (leaf, intermediate) and the leaf key.
func (ca *testCA) IssueWorkload(t testing.TB, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := mustKey(t, pki.KeyTypeECDSAP256)
	leaf, _, err := ca.Signer(nil).Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: key.Public(), ID: id, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{leaf, ca.Intermediate}, key
}

// Bundle returns the root as a trust bundle.
func (ca *testCA) Bundle() []*x509.Certificate { return []*x509.Certificate{ca.Root} }

func mustKey(t testing.TB, kt pki.KeyType) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(kt, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustRSA1024(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustP521(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rawCSR creates a CSR with the names in tmpl, bypassing pki.CreateCSR.
func rawCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// twoURICSR returns a CSR that claims two SPIFFE IDs and a DNS name.
func twoURICSR(t testing.TB) []byte {
	t.Helper()
	return rawCSR(t, mustKey(t, pki.KeyTypeECDSAP256), &x509.CertificateRequest{
		URIs: []*url.URL{
			{Scheme: "spiffe", Host: "example.org", Path: "/ns/kube-system/sa/admin"},
			{Scheme: "spiffe", Host: "evil.example", Path: "/ns/x/sa/y"},
		},
		DNSNames: []string{"kubernetes.default.svc"},
	})
}

// badSignatureCSR returns a valid CSR whose signature has one byte flipped.
func badSignatureCSR(t testing.TB) []byte {
	t.Helper()
	der := rawCSR(t, mustKey(t, pki.KeyTypeECDSAP256), nil)
	// The signature BIT STRING is the last element; an ECDSA signature ends
	// in the s integer, so flipping the last byte keeps the DER well-formed.
	out := append([]byte(nil), der...)
	out[len(out)-1] ^= 0x01
	return out
}
