// Package upstreamtest runs real upstream authorities in-process for
// tests, from their own packages: a step-ca (ca.New) and a cfssl auth-sign
// handler, each over TLS, with the files mayfly's upstream config names.
package upstreamtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// CA is a certificate and its key, made with crypto/x509 as another PKI
// would (no SPIFFE names).
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewLeaf returns a client certificate (digitalSignature) signed by
// parent: a credential for step-ca's X5C provisioner.
func NewLeaf(t testing.TB, name string, parent *CA) *CA {
	t.Helper()
	return newCert(t, name, parent, false, 0)
}

// NewCA returns a CA signed by parent (nil: a self-signed root) with the
// given path length (-1: unlimited).
func NewCA(t testing.TB, name string, parent *CA, pathLen int) *CA {
	t.Helper()
	return newCert(t, name, parent, true, pathLen)
}

func newCert(t testing.TB, name string, parent *CA, isCA bool, pathLen int) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Corp"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
	if !isCA {
		tmpl.IsCA, tmpl.MaxPathLen, tmpl.MaxPathLenZero = false, 0, false
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
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
