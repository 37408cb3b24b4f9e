// Package upstreamtest runs real upstream authorities in-process for
// tests, from their own packages: a step-ca (ca.New) and a cfssl auth-sign
// handler, each over TLS, with the files mayfly's upstream config names.
package upstreamtest

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// CA is a certificate and its key, made with crypto/x509 as another PKI
// would (no SPIFFE names).
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Option changes a certificate made by NewCA or NewLeaf.
type Option func(*certOptions)

type certOptions struct {
	key      crypto.Signer
	notAfter time.Time
	keyUsage x509.KeyUsage
}

// WithKey certifies key instead of a new ECDSA P-256 key (testca.Key).
func WithKey(key crypto.Signer) Option { return func(o *certOptions) { o.key = key } }

// WithNotAfter ends the certificate at t instead of in ten years.
func WithNotAfter(t time.Time) Option { return func(o *certOptions) { o.notAfter = t } }

// WithKeyUsage replaces the key usage (a CA's default: keyCertSign and
// cRLSign; a leaf's: digitalSignature).
func WithKeyUsage(u x509.KeyUsage) Option { return func(o *certOptions) { o.keyUsage = u } }

// NewLeaf returns a client certificate (digitalSignature) signed by
// parent: a credential for step-ca's X5C provisioner.
func NewLeaf(t testing.TB, name string, parent *CA, opts ...Option) *CA {
	t.Helper()
	return newCert(t, name, parent, false, 0, opts)
}

// NewCA returns a CA signed by parent (nil: a self-signed root) with the
// given path length (-1: unlimited).
func NewCA(t testing.TB, name string, parent *CA, pathLen int, opts ...Option) *CA {
	t.Helper()
	return newCert(t, name, parent, true, pathLen, opts)
}

func newCert(t testing.TB, name string, parent *CA, isCA bool, pathLen int, opts []Option) *CA {
	t.Helper()
	o := certOptions{notAfter: time.Now().Add(10 * 365 * 24 * time.Hour), keyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	if !isCA {
		o.keyUsage = x509.KeyUsageDigitalSignature
	}
	for _, opt := range opts {
		opt(&o)
	}
	key := o.key
	if key == nil {
		key = testca.Key(t)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Corp"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              o.notAfter,
		KeyUsage:              o.keyUsage,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = pathLen, pathLen == 0
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if parent == nil {
		parent = &CA{Cert: tmpl, Key: key}
	}
	return &CA{Cert: Sign(t, tmpl, key.Public(), parent), Key: key}
}

// Sign signs tmpl for pub with parent's key, as crypto/x509 does it, and
// returns the parsed certificate.
func Sign(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey, parent *CA) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, pub, parent.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// WriteCert writes certs as PEM to dir/name and returns the path.
func WriteCert(t testing.TB, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	return WriteFile(t, dir, name, pki.EncodeCertificates(certs...))
}

// WriteKey writes key as PEM (0600) to dir/name and returns the path.
func WriteKey(t testing.TB, dir, name string, key crypto.Signer) string {
	t.Helper()
	raw, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return WriteFile(t, dir, name, raw)
}

// WriteFile writes data (0600) to dir/name and returns the path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemCert(c *CA) []byte { return pki.EncodeCertificates(c.Cert) }
