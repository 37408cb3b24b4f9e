// Package pemfile reads the certificates a component under test wrote to
// a PEM file (a trust bundle, an SVID chain). Only tests import it.
package pemfile

import (
	"crypto/x509"
	"os"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Certificates returns the certificates of the PEM file at path, decoded
// with pki's default limits; a file that cannot be read or decoded fails
// the test.
func Certificates(t testing.TB, path string) []*x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.DecodeCertificates(raw, pki.PEMLimits{})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}
