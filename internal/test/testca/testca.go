// Package testca is an in-memory CA for tests: a self-signed root and an
// intermediate with fast ECDSA P-256 keys, issuing X.509-SVIDs through the
// same pki.Signer the CA uses.
package testca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// DefaultTrustDomain is the trust domain of a CA made without WithTrustDomain.
const DefaultTrustDomain = "example.org"

// CA is a root and an intermediate of one trust domain, held in memory.
type CA struct {
	// TrustDomain is the CA's trust domain.
	TrustDomain spiffeid.TrustDomain
	// Root is the self-signed root certificate.
	Root *x509.Certificate
	// RootKey is the root's private key.
	RootKey crypto.Signer
	// Intermediate is the issuing intermediate, signed by Root.
	Intermediate *x509.Certificate
	// IntermediateKey is the intermediate's private key.
	IntermediateKey crypto.Signer

	now func() time.Time
}

type config struct {
	td              string
	now             func() time.Time
	rootTTL         time.Duration
	intermediateTTL time.Duration
}

// Option configures New.
type Option func(*config)

// WithTrustDomain sets the trust domain (default example.org).
func WithTrustDomain(td string) Option { return func(c *config) { c.td = td } }

// WithClock sets the clock used to create the CA and, by default, to issue
// (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithRootTTL sets the root's lifetime (default 1 year).
func WithRootTTL(d time.Duration) Option { return func(c *config) { c.rootTTL = d } }

// WithIntermediateTTL sets the intermediate's lifetime (default 48h).
func WithIntermediateTTL(d time.Duration) Option {
	return func(c *config) { c.intermediateTTL = d }
}

// New creates a root and an intermediate; it fails t on any error.
func New(t testing.TB, opts ...Option) *CA {
	t.Helper()
	cfg := config{td: DefaultTrustDomain, now: time.Now, rootTTL: 365 * 24 * time.Hour, intermediateTTL: 48 * time.Hour}
	for _, o := range opts {
		o(&cfg)
	}
	td, err := pki.ParseTrustDomain(cfg.td)
	if err != nil {
		t.Fatalf("testca: %v", err)
	}
	now := cfg.now()
	rootKey := Key(t)
	root, err := pki.SelfSignedRoot(rootKey, td, cfg.rootTTL, now, rand.Reader)
	if err != nil {
		t.Fatalf("testca: root: %v", err)
	}
	interKey := Key(t)
	rootSigner := &pki.Signer{
		Authority: pki.Authority{Cert: root, Key: rootKey},
		Now:       func() time.Time { return now },
		Rand:      rand.Reader,
		Options:   []pki.SignOption{pki.ConstrainToTrustDomain()},
	}
	inter, _, err := rootSigner.Sign(pki.SignRequest{
		Kind:      pki.KindIntermediate,
		PublicKey: interKey.Public(),
		ID:        td.ID(),
		TTL:       cfg.intermediateTTL,
	})
	if err != nil {
		t.Fatalf("testca: intermediate: %v", err)
	}
	return &CA{TrustDomain: td, Root: root, RootKey: rootKey, Intermediate: inter, IntermediateKey: interKey, now: cfg.now}
}

// Key returns a fresh ECDSA P-256 key.
func Key(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatalf("testca: key: %v", err)
	}
	return k
}

// CSR returns a DER certificate request signed by key, as an agent sends.
func CSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	csr, err := pki.CreateCSR(key, rand.Reader)
	if err != nil {
		t.Fatalf("testca: CSR: %v", err)
	}
	return csr
}

// Authority returns the intermediate as the issuing authority.
func (ca *CA) Authority() pki.Authority {
	return pki.Authority{Cert: ca.Intermediate, Key: ca.IntermediateKey}
}

// Signer returns a signer of the intermediate with the default workload
// policy; now nil means the CA's clock.
func (ca *CA) Signer(now func() time.Time) *pki.Signer {
	if now == nil {
		now = ca.now
	}
	return &pki.Signer{
		Authority: ca.Authority(),
		Now:       now,
		Rand:      rand.Reader,
		Options:   pki.DefaultWorkloadOptions(),
	}
}

// IssueWorkload issues an X.509-SVID for id with a new ECDSA P-256 key; the
// kind is agent for /mayfly/agent/ IDs, workload otherwise. It returns the
// chain leaf first, then the intermediate (not the root), and the leaf key.
func (ca *CA) IssueWorkload(t testing.TB, id spiffeid.ID, ttl time.Duration) (certChain []*x509.Certificate, key crypto.Signer) {
	t.Helper()
	key = Key(t)
	kind := pki.KindWorkload
	if _, ok := pki.Agent(id); ok {
		kind = pki.KindAgent
	}
	leaf, _, err := ca.Signer(nil).Sign(pki.SignRequest{Kind: kind, PublicKey: key.Public(), ID: id, TTL: ttl})
	if err != nil {
		t.Fatalf("testca: issue %s: %v", id, err)
	}
	return []*x509.Certificate{leaf, ca.Intermediate}, key
}

// Bundle returns the trust bundle: the root.
func (ca *CA) Bundle() []*x509.Certificate { return []*x509.Certificate{ca.Root} }

// BundlePEM returns the trust bundle (the root) as PEM.
func (ca *CA) BundlePEM() []byte { return pki.EncodeCertificates(ca.Root) }
